"""A real failover lab: Pacemaker + corosync gateway nodes, a road-warrior client, a server.

Each gateway node is its own pid/mount/uts/net namespace (``unshare``) running
corosync, pacemakerd and charon (kernel-libipsec) with private /run, /dev/shm and
state, the project installed by ``make install`` into the lab's own root (the agent
appears under ``/usr/lib/ocf/resource.d/ipsec-vip`` through an overlay, the library on
the daemons' ``PYTHONPATH``; the host's tree is untouched), and a clean environment for
the daemons as systemd would give them. charon is restarted by the node if it dies, as systemd's
``Restart=`` would. The client (its own charon) and the server live in named
namespaces; all of them meet on two bridges in the ``lan`` namespace:

    client 192.0.2.50 --- brf --- gw1 eth0 192.0.2.11 / gw2 eth0 192.0.2.12   (VIP 192.0.2.100)
    srv 198.51.100.10 --- brb --- gw1 eth1 198.51.100.11 / gw2 eth1 198.51.100.12 (backend VIP .1)

Names carry the driver's pid; a leftover of a killed run is removed by the next one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import core as lab

ROOT = Path(__file__).resolve().parent.parent
NODE_IPS = {"gw1": ("192.0.2.11", "198.51.100.11"), "gw2": ("192.0.2.12", "198.51.100.12"),
            "gw3": ("192.0.2.13", "198.51.100.13")}

NODE_SCRIPT = r"""#!/bin/bash
# PID 1 of one gateway node. Args: NAME WORKDIR
NAME=$1 W=$2 ND=$2/$1
set -u
hostname "$NAME"
for d in /run /etc/corosync /var/lib/pacemaker /var/lib/corosync /var/lib/heartbeat /var/lib/pcsd /dev/shm; do
    [ -d "$d" ] && mount -n -t tmpfs -o mode=0755 "tmpfs-$NAME" "$d"
done
chmod 1777 /dev/shm
mount -n -t sysfs "sysfs-$NAME" /sys
mkdir -p /var/lib/pacemaker/cib /var/lib/pacemaker/pengine /var/lib/pacemaker/blackbox /var/lib/pacemaker/cores \
         /run/lock /run/resource-agents /var/lib/heartbeat/cores /var/lib/heartbeat/lrm /var/lib/heartbeat/trace_ra
chown -R hacluster:haclient /var/lib/pacemaker
chmod 750 /var/lib/pacemaker/*
mount -n --bind "$ND/log/pacemaker" /var/log/pacemaker
mount -n --bind "$ND/log/corosync" /var/log/corosync
mount -n -t overlay "ocf-$NAME" -o "lowerdir=$W/root/usr/lib/ocf/resource.d:/usr/lib/ocf/resource.d" \
    /usr/lib/ocf/resource.d
mount -n --bind "$W/hosts" /etc/hosts
mount -n --bind "$ND/strongswan.conf" /etc/strongswan.conf
install -m 0644 "$W/corosync.conf" /etc/corosync/corosync.conf
install -o hacluster -g haclient -m 0600 "$W/seed-cib.xml" /var/lib/pacemaker/cib/cib.xml
ip link set lo up
for _ in $(seq 200); do ip link show eth1 >/dev/null 2>&1 && break; sleep 0.05; done
ip addr add "$(cat "$ND/ip")/24" dev eth0
ip addr add "$(cat "$ND/backip")/24" dev eth1
ip link set eth0 up
ip link set eth1 up
sysctl -qw net.ipv4.ip_forward=1
# PYTHONPATH: the library as `make install` put it (its dependencies come from the interpreter's own)
CLEAN=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONPATH="$W/root/site")
charon_loop() {   # like systemd's Restart=: charon comes back 0.5 s after it dies
    while [ ! -e "$ND/no-charon-restart" ]; do
        rm -f /run/charon.pid
        "${CLEAN[@]}" /usr/lib/ipsec/charon >>"$ND/charon.log" 2>&1
        echo "charon exited $? $(date +%s.%N)" >>"$ND/events"
        sleep 0.5
    done
}
charon_loop &
CL=$!
"${CLEAN[@]}" bash -c 'exec corosync -f' >"$ND/log/corosync/stdout.log" 2>&1 &
CS=$!
for _ in $(seq 200); do corosync-cfgtool -s >/dev/null 2>&1 && break; sleep 0.05; done
"${CLEAN[@]}" bash -c 'exec pacemakerd' >"$ND/log/pacemaker/pacemakerd.stdout" 2>&1 &
PM=$!
echo "started $(date +%s.%N)" >>"$ND/events"
stop_node() {
    trap - TERM INT
    pacemakerd --shutdown >/dev/null 2>&1
    for _ in $(seq 300); do kill -0 $PM 2>/dev/null || break; sleep 0.1; done
    corosync-cfgtool -H --force >/dev/null 2>&1
    for _ in $(seq 100); do kill -0 $CS 2>/dev/null || break; sleep 0.1; done
    touch "$ND/no-charon-restart"; kill $CL 2>/dev/null
    [ -r /run/charon.pid ] && kill "$(cat /run/charon.pid)" 2>/dev/null
    echo "stopped $(date +%s.%N)" >>"$ND/events"
    exit 0
}
trap stop_node TERM INT
while :; do sleep 1 & wait $!; done
"""

GATEWAY_STRONGSWAN = """charon {
  load = random nonce openssl kdf pem pkcs1 x509 pubkey attr counters kernel-libipsec kernel-netlink socket-default vici
  plugins {
    vici { socket = unix:///run/charon.vici }
  }
  filelog {
    stderr {
      time_format = %H:%M:%S
      time_add_ms = yes
      default = 1
      ike_name = yes
    }
  }
}
"""


def gateway_strongswan(settings: str = "") -> str:
    """GATEWAY_STRONGSWAN with ``settings`` (charon options, one ``key = value`` a line, e.g.
    ``threads = 32``) added to its charon section: what an experiment varies, charon's defaults otherwise."""
    lines = "".join(f"  {line.strip()}\n" for line in settings.splitlines() if line.strip())
    return GATEWAY_STRONGSWAN.replace("  plugins {\n", lines + "  plugins {\n", 1)


def gateway_strongswan_ha(name: str, peer: str, pool: str = lab.POOL, settings: str = "") -> str:
    """:func:`gateway_strongswan` with the ha plugin syncing over the back network (docs/stateful.md),
    the clients' pool ``rw-pool`` (``pool``: its addresses) the plugin's own."""
    ha = lab.ha_section(NODE_IPS[name][1], NODE_IPS[peer][1], pool)
    return gateway_strongswan(settings).replace(" vici\n", " vici ha\n", 1).replace(
        "  plugins {\n", "  plugins {\n" + ha, 1)


def seed_cib(path: Path) -> None:
    """An empty CIB with a short DC election and no fencing (a lab without STONITH)."""
    xml = subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout
    path.write_text(xml)
    env = {**os.environ, "CIB_file": str(path)}
    for name, value in (("dc-deadtime", "2s"), ("stonith-enabled", "false"), ("shutdown-escalation", "60s"),
                        ("cluster-recheck-interval", "1min")):
        subprocess.run(["crm_attribute", "-t", "crm_config", "-n", name, "-v", value], env=env, check=True,
                       capture_output=True)
    subprocess.run(["cibadmin", "--create", "--scope", "configuration", "--xml-text",
                    '<rsc_defaults><meta_attributes id="rsc-options"><nvpair id="rsc-options-resource-stickiness" '
                    'name="resource-stickiness" value="100"/></meta_attributes></rsc_defaults>'],
                   env=env, check=True, capture_output=True)


def corosync_conf(names: list[str], token_ms: int) -> str:
    nodes = "".join(f"    node {{\n        name: {n}\n        nodeid: {i + 1}\n        ring0_addr: {NODE_IPS[n][0]}\n"
                    f"    }}\n" for i, n in enumerate(names))
    quorum = "    two_node: 1\n" if len(names) == 2 else ""
    return (f"totem {{\n    version: 2\n    cluster_name: ipsecvip\n    transport: knet\n    crypto_cipher: none\n"
            f"    crypto_hash: none\n    token: {token_ms}\n}}\n"
            "logging {\n    to_stderr: no\n    to_syslog: no\n    to_logfile: yes\n"
            "    logfile: /var/log/corosync/corosync.log\n    timestamp: on\n}\n"
            f"quorum {{\n    provider: corosync_votequorum\n{quorum}}}\n"
            f"nodelist {{\n{nodes}}}\n")


def install(root: Path) -> None:
    """``make install`` into ``root``, for this interpreter (it has vici and psutil): the agent
    with its shebang rewritten, the library under ``root/site``, as the packages install them."""
    lab.run("make", "-s", "-C", str(ROOT), "install", f"DESTDIR={root}", f"SYSTEM_PYTHON={sys.executable}",
            "PYTHON_SITELIB=/site", "PREFIX=/usr", timeout=300,
            env={"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


@dataclass
class Node:
    """One gateway: a pid/mount/uts/net namespace with corosync, pacemaker and charon."""

    name: str
    work: Path
    proc: subprocess.Popen[bytes]
    init: int = 0

    def on(self, *cmd: str, check: bool = True, timeout: float = 60, stdin: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node, as pacemaker would see it."""
        p = subprocess.run(["nsenter", "-t", str(self.init), "-m", "-u", "-n", "-p", "--", *cmd],
                           capture_output=True, text=True, timeout=timeout, input=stdin,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and p.returncode != 0:
            out = p.stderr.strip() or p.stdout.strip()
            raise RuntimeError(f"{self.name}: {' '.join(cmd)} -> {p.returncode}: {out}")
        return p

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def vici_path(self) -> str:
        return f"/proc/{self.init}/root/run/charon.vici"

    @contextlib.contextmanager
    def vici(self) -> Any:
        import socket

        import vici

        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(self.vici_path)
        s = vici.Session(sock)
        try:
            yield s
        finally:
            s.transport.close()

    def conns(self) -> list[str]:
        with self.vici() as s:
            return [lab.decode(c) for c in s.get_conns()["conns"]]

    def sas(self) -> list[dict[str, Any]]:
        with self.vici() as s:
            return [dict(lab.decode(b), name=n) for sa in s.list_sas() for n, b in sa.items()]

    def charon_pid(self) -> int:
        return int(Path(f"/proc/{self.init}/root/run/charon.pid").read_text().strip())

    def has_address(self, addr: str) -> bool:
        return f" {addr}/" in self.on("ip", "-o", "addr", "show").stdout


@dataclass
class Cluster:
    """Gateways in a Pacemaker cluster, plus client and server (see module docstring)."""

    names: list[str]
    work: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    client: lab.Charon | None = None
    echo: subprocess.Popen[bytes] | None = None
    ha: bool = False
    ha_pool: str = lab.POOL  # the addresses of rw-pool, the ha plugin's pool (stateful labs)
    stock: lab.Charon | None = None  # a second client with strongSwan's defaults (ha clusters)
    charon_settings: dict[str, str] = field(default_factory=dict)  # node -> its extra charon options

    @classmethod
    def build(cls, names: tuple[str, ...] = ("gw1", "gw2"), token_ms: int = 1000,
              client_extra: str = lab.CLIENT_RETRANSMIT, ha: bool = False, ha_pool: str = lab.POOL,
              charon_settings: str = "") -> Cluster:
        """``ha``: stateful mode's lab: charon with the ha plugin (sync over the back network)
        on both gateways, and a second, stock client (:data:`STOCK_IP`) beside the tuned one.
        ``charon_settings``: extra charon options for every gateway (:func:`gateway_strongswan`)."""
        lab.clean_leftovers()
        work = Path(tempfile.mkdtemp(prefix=f"{lab.PREFIX}cluster-"))
        os.chmod(work, 0o755)
        c = cls(names=list(names), work=work, ha=ha, ha_pool=ha_pool,
                charon_settings={n: charon_settings for n in names})
        try:
            c._build(token_ms, client_extra)
        except BaseException:
            c.destroy()
            raise
        return c

    def _build(self, token_ms: int, client_extra: str) -> None:
        w = self.work
        (w / "node.sh").write_text(NODE_SCRIPT)
        (w / "node.sh").chmod(0o755)
        (w / "corosync.conf").write_text(corosync_conf(self.names, token_ms))
        (w / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{NODE_IPS[n][0]} {n}\n" for n in self.names))
        seed_cib(w / "seed-cib.xml")
        (w / "seed-cib.xml").chmod(0o644)
        install(w / "root")
        for name in ("lan", "client", "srv"):
            self.namespaces.append(lab.add_netns(name))
        lan = lab.PREFIX + "lan"
        for br in ("brf", "brb"):
            lab.run(lab.IP, "-n", lan, "link", "add", br, "type", "bridge", "forward_delay", "0")
            lab.run(lab.IP, "-n", lan, "link", "set", br, "up")
        links = [(lab.PREFIX + "client", "eth0", "brf", lab.CLIENT_IP, "pc"),
                 (lab.PREFIX + "srv", "eth1", "brb", lab.SERVER_IP, "ps")]
        if self.ha:
            self.namespaces.append(lab.add_netns("stock"))
            links.append((lab.PREFIX + "stock", "eth0", "brf", STOCK_IP, "pk"))
        for ns, ifname, br, addr, port in links:
            lab.run(lab.IP, "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", lan)
            lab.run(lab.IP, "-n", lan, "link", "set", port, "master", br, "up")
            lab.run(lab.IP, "-n", ns, "addr", "add", addr + "/24", "dev", ifname)
            lab.run(lab.IP, "-n", ns, "link", "set", ifname, "up")
        lab.run(lab.IP, "-n", lab.PREFIX + "srv", "route", "add", lab.POOL, "via", lab.BACK_VIP)
        for name in self.names:
            self.start_node(name)
        self.client = lab.Charon.start("client", netns=lab.PREFIX + "client", extra=client_extra)
        if self.ha:
            self.stock = lab.Charon.start("stock", netns=lab.PREFIX + "stock")
        self.echo = subprocess.Popen([lab.IP, "netns", "exec", lab.PREFIX + "srv", sys.executable, "-c", ECHO],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def start_node(self, name: str) -> Node:
        """Launch (or relaunch after a crash) one gateway node and plug its two links."""
        nd = self.work / name
        for sub in ("log/pacemaker", "log/corosync"):
            (nd / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(nd / "log" / "pacemaker", "hacluster", "haclient")
        (nd / "log" / "pacemaker").chmod(0o770)
        (nd / "ip").write_text(NODE_IPS[name][0])
        (nd / "backip").write_text(NODE_IPS[name][1])
        self._write_strongswan_conf(name)
        with contextlib.suppress(FileNotFoundError):
            (nd / "no-charon-restart").unlink()
        out = open(nd / "node.out", "ab")  # handed to the child
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--uts", "--net", "--pid",
                                 "--fork", "--mount-proc", "--kill-child", str(self.work / "node.sh"), name,
                                 str(self.work)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        node = Node(name=name, work=nd, proc=proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not node.init:
            with contextlib.suppress(OSError, ValueError):
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                node.init = int(kids[0]) if kids else 0
            time.sleep(0.01)
        if not node.init:
            raise RuntimeError(f"{name}: no init process")
        lan = lab.PREFIX + "lan"
        idx = self.names.index(name) + 1
        for ifname, br in (("eth0", "brf"), ("eth1", "brb")):
            port = f"g{idx}{ifname[-1]}{os.getpid() % 10000}"[:15]
            # a fixed MAC per node and link, as a rebooted machine keeps its NIC's: with a new one
            # the peer's ARP entry would send the first seconds of sync traffic into the void
            mac = f"02:00:5e:00:{idx:02x}:{int(ifname[-1]):02x}"
            lab.run(lab.IP, "link", "add", "name", ifname, "address", mac, "netns", str(node.init), "type", "veth",
                    "peer", "name", port, "netns", lan)
            lab.run(lab.IP, "-n", lan, "link", "set", port, "master", br, "up")
        self.nodes[name] = node
        return node

    def _write_strongswan_conf(self, name: str) -> None:
        """The node's strongswan.conf (bind-mounted into the node: rewritten in place, never replaced)."""
        peer = next((n for n in self.names if n != name), name)
        settings = self.charon_settings.get(name, "")
        conf = gateway_strongswan_ha(name, peer, self.ha_pool, settings) if self.ha else gateway_strongswan(settings)
        (self.work / name / "strongswan.conf").write_text(conf)

    def set_charon_settings(self, name: str, settings: str, timeout: float = 20) -> None:
        """Give node ``name``'s charon other extra options (:func:`gateway_strongswan`) and restart
        it, as an admin would (its SAs and loaded configuration go with it: for a node that holds
        nothing, e.g. the one a primitive moves to); returns once the new charon answers on VICI."""
        node = self.nodes[name]
        self.charon_settings[name] = settings
        self._write_strongswan_conf(name)
        old = node.charon_pid()  # a pid of the node's own pid namespace
        node.on("kill", str(old))  # the node's loop starts it again, reading the new file
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if node.charon_pid() != old:
                    node.conns()
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name}: charon not back on VICI {timeout}s after its restart")

    def wait_ready(self, timeout: float = 90) -> None:
        """Every live node online and a DC elected."""
        deadline = time.monotonic() + timeout
        live = [n for n in self.nodes.values() if n.alive]
        while time.monotonic() < deadline:
            p = live[0].on("crm_mon", "-1", "--output-as=xml", check=False)
            with contextlib.suppress(ET.ParseError):
                root = ET.fromstring(p.stdout)
                dc = root.find(".//current_dc")
                online = {n.get("name") for n in root.iter("node") if n.get("online") == "true"}
                if dc is not None and dc.get("present") == "true" and {n.name for n in live} <= online:
                    return
            time.sleep(0.1)
        raise RuntimeError("cluster not ready: " + live[0].on("crm_mon", "-1", check=False).stdout)

    def any_node(self) -> Node:
        return next(n for n in self.nodes.values() if n.alive)

    def locate(self, rsc: str) -> list[str]:
        out = self.any_node().on("crm_resource", "--locate", "-r", rsc, "-Q", check=False).stdout
        return out.split()

    def wait_located(self, rsc: str, node: str, timeout: float = 60) -> float:
        """Seconds until ``rsc`` runs (only) on ``node``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.locate(rsc) == [node]:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"{rsc} not on {node} after {timeout}s: {self.locate(rsc)}")

    def wait_any(self, rsc: str, timeout: float = 60) -> str:
        """The node ``rsc`` starts on, once it runs on exactly one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            where = self.locate(rsc)
            if len(where) == 1:
                return where[0]
            time.sleep(0.05)
        raise TimeoutError(f"{rsc} not running after {timeout}s")

    def roles(self, clone: str) -> dict[str, str]:
        """Node -> role (Promoted, Unpromoted, Started...) of each active instance of ``clone``."""
        xml = self.any_node().on("crm_mon", "-1", "--output-as=xml", check=False).stdout
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            return {}
        out = {}
        for c in root.iter("clone"):
            if c.get("id") == clone:
                for r in c.iter("resource"):
                    for n in r.iter("node"):
                        if r.get("active") == "true" and r.get("failed") != "true":
                            out[str(n.get("name"))] = str(r.get("role"))
        return out

    def wait_promoted(self, clone: str, node: str, timeout: float = 60) -> float:
        """Seconds until ``node``'s instance of ``clone`` is the one promoted."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            roles = self.roles(clone)
            if roles.get(node) == "Promoted" and list(roles.values()).count("Promoted") == 1:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"{clone} not promoted on {node} after {timeout}s: {self.roles(clone)}")

    def failed_actions(self) -> list[str]:
        """(resource, node, task) of each failed action crm_mon reports."""
        xml = self.any_node().on("crm_mon", "-1", "--output-as=xml", check=False).stdout
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            return [xml]
        return [f"{f.get('op_key')}@{f.get('node')}" for f in root.iter("failure")]

    def crash(self, name: str) -> None:
        """The node dies at once: every process of it, its links gone."""
        node = self.nodes[name]
        os.kill(node.init, signal.SIGKILL)
        node.proc.wait(20)

    def destroy(self) -> None:
        for node in self.nodes.values():
            if node.alive and node.init:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.init, signal.SIGTERM)
        for node in self.nodes.values():
            try:
                node.proc.wait(40)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.init, signal.SIGKILL)
                node.proc.wait(10)
        if self.echo is not None:
            self.echo.kill()
            self.echo.wait()
        for client in (self.client, self.stock):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.stop()
        for ns in reversed(self.namespaces):
            lab.remove_netns(ns)
        if os.environ.get("IPSEC_VIP_KEEP_LAB") != "1":
            shutil.rmtree(self.work, ignore_errors=True)


class VipArrival(threading.Thread):
    """Polls ``node`` for the VIP from now on: when did it arrive (pcs move returns only after
    the move, so the cluster's view after the event says nothing)?"""

    def __init__(self, node: Node, address: str = lab.VIP) -> None:
        super().__init__(daemon=True)
        self.node, self.address, self.at = node, address, 0.0
        self.start()

    def run(self) -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end and not self.at:
            with contextlib.suppress(Exception):
                if self.node.alive and self.node.has_address(self.address):
                    self.at = time.monotonic()
            time.sleep(0.01)

    def wait(self, t0: float) -> float:
        self.join(130)
        assert self.at, "the VIP never arrived"
        return self.at - t0


STOCK_IP = "192.0.2.51"

# A UDP echo server on the server (port 7), for the gap probe.
ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

# The client's probe: one datagram every INTERVAL s through the tunnel; prints the
# monotonic time of each answer, one per line, until killed.
PROBE = """
import socket, sys, time
interval = float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
seq = 0
out = open(sys.argv[1], "w", buffering=1)
next_send = time.monotonic()
while True:
    now = time.monotonic()
    if now >= next_send:
        seq += 1
        try:
            s.sendto(str(seq).encode(), (sys.argv[3], 7))
        except OSError:
            pass
        next_send = now + interval
    try:
        while True:
            s.recv(64)
            out.write("%.4f\\n" % time.monotonic())
    except BlockingIOError:
        pass
    time.sleep(0.002)
"""


class Probe:
    """Traffic from the client to the server through the tunnel; measures the gap."""

    def __init__(self, work: Path, interval: float = 0.02, netns: str = lab.PREFIX + "client") -> None:
        self.file = work / f"probe-{time.monotonic_ns()}.txt"
        self.proc = subprocess.Popen([lab.IP, "netns", "exec", netns, sys.executable, "-c", PROBE,
                                      str(self.file), str(interval), lab.SERVER_IP],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self) -> list[float]:
        with contextlib.suppress(FileNotFoundError):
            return [float(x) for x in self.file.read_text().split()]
        return []

    def wait_flowing(self, since: float, timeout: float = 30) -> float:
        """Monotonic time of the first answer after ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [t for t in self.answers() if t > since]
            if len(later) >= 3:
                return later[0]
            time.sleep(0.05)
        raise TimeoutError(f"no traffic through the tunnel {timeout}s after the event")

    def gap(self, since: float) -> float:
        """Longest time without an answer after ``since`` (the outage the client saw)."""
        ts = [t for t in self.answers() if t > since - 1]
        return max((b - a for a, b in zip(ts, ts[1:])), default=float("inf"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()




# The resource the others follow: what `pcs resource move` / `crm resource move` name.
MOVE = "vpn"


def pcs_commands(conf: str, **params: str) -> list[list[str]]:
    """The README's pcs commands (docs/handoff.md), plus the backend VIP the server routes through:
    the agent starts before the VIPs and stops before them too, so its stop can hand the clients
    over while the VIP is still here. The VIPs are created disabled and enabled once the
    constraints exist, so they never start anywhere else first."""
    extra = [f"{k}={v}" for k, v in params.items()]
    return [
        ["pcs", "resource", "create", "vpn", "ocf:ipsec-vip:strongswan", f"vip={lab.VIP}", f"config={conf}",
         "start_without_vip=true", *extra, "op", "monitor", "interval=2s", "timeout=20s"],
        ["pcs", "resource", "create", "vpn-vip", "ocf:heartbeat:IPaddr2", f"ip={lab.VIP}", "cidr_netmask=24",
         "nic=eth0", "op", "monitor", "interval=2s", "--group", "vpn-vips", "--disabled"],
        ["pcs", "resource", "create", "vpn-backvip", "ocf:heartbeat:IPaddr2", f"ip={lab.BACK_VIP}",
         "cidr_netmask=24", "nic=eth1", "op", "monitor", "interval=2s", "--group", "vpn-vips", "--disabled"],
        ["pcs", "constraint", "colocation", "add", "vpn-vips", "with", "vpn", "INFINITY"],
        ["pcs", "constraint", "order", "start", "vpn", "then", "start", "vpn-vips", "symmetrical=false"],
        ["pcs", "constraint", "order", "stop", "vpn", "then", "stop", "vpn-vips", "symmetrical=false"],
        ["pcs", "resource", "enable", "vpn-vip"],
        ["pcs", "resource", "enable", "vpn-backvip"],
    ]


def crm_configure(conf: str) -> str:
    """The README's crm configuration (docs/handoff.md), plus the backend VIP."""
    return f"""primitive vpn ocf:ipsec-vip:strongswan \\
    params vip={lab.VIP} config={conf} start_without_vip=true op monitor interval=2s timeout=20s
primitive vpn-vip ocf:heartbeat:IPaddr2 params ip={lab.VIP} cidr_netmask=24 nic=eth0 op monitor interval=2s
primitive vpn-backvip ocf:heartbeat:IPaddr2 params ip={lab.BACK_VIP} cidr_netmask=24 nic=eth1 \\
    op monitor interval=2s
group vpn-vips vpn-vip vpn-backvip
colocation vpn-vips-with-vpn inf: vpn-vips vpn
order vpn-starts-first Mandatory: vpn:start vpn-vips:start symmetrical=false
order vpn-stops-first Mandatory: vpn:stop vpn-vips:stop symmetrical=false
commit
"""


# --------------------------------------------------------------------------- stateful mode
def pcs_stateful_commands(conf: str, cib: str) -> list[list[str]]:
    """docs/stateful.md's pcs recipe: the agent as a promotable clone without notifications (a
    starting instance asks for its resync through an attribute), the VIP placed with the
    Promoted instance, started before the promote and stopped after the demote (the rekeys
    need it as their source address). The lab's back VIP (the server's route) is ordered the
    same way, on its own: unordered, a move took it to the new node before the promote and the
    server's replies met the new node's stale ESP sequence numbers (0.8 s of silence); in a
    group with the VIP it would start in series. Built in a CIB file ``cib`` and pushed
    at once: created one by one, the clone would be promoted before the VIP and its
    constraints exist (promote refuses without the VIP)."""
    f = ["pcs", "-f", cib]
    return [
        ["pcs", "cluster", "cib", cib],
        [*f, "resource", "create", "vpn", "ocf:ipsec-vip:strongswan", f"vip={lab.VIP}", f"config={conf}",
         "op", "monitor", "interval=2s", "role=Unpromoted", "timeout=20s",
         "op", "monitor", "interval=3s", "role=Promoted", "timeout=20s",
         "promotable"],
        [*f, "resource", "create", "vpn-vip", "ocf:heartbeat:IPaddr2", f"ip={lab.VIP}", "cidr_netmask=24",
         "nic=eth0", "op", "monitor", "interval=2s"],
        [*f, "constraint", "colocation", "add", "vpn-vip", "with", "Promoted", "vpn-clone", "INFINITY"],
        [*f, "constraint", "order", "start", "vpn-vip", "then", "promote", "vpn-clone"],
        [*f, "resource", "create", "vpn-backvip", "ocf:heartbeat:IPaddr2", f"ip={lab.BACK_VIP}",
         "cidr_netmask=24", "nic=eth1", "op", "monitor", "interval=2s"],
        [*f, "constraint", "colocation", "add", "vpn-backvip", "with", "Promoted", "vpn-clone", "INFINITY"],
        [*f, "constraint", "order", "start", "vpn-backvip", "then", "promote", "vpn-clone"],
        ["pcs", "cluster", "cib-push", cib, "--config"],
    ]


def crm_stateful_configure(conf: str) -> str:
    """docs/stateful.md's crm recipe (the same cluster as :func:`pcs_stateful_commands`)."""
    return f"""primitive vpn ocf:ipsec-vip:strongswan \\
    params vip={lab.VIP} config={conf} \\
    op monitor interval=2s role=Unpromoted timeout=20s \\
    op monitor interval=3s role=Promoted timeout=20s
clone vpn-clone vpn meta promotable=true
primitive vpn-vip ocf:heartbeat:IPaddr2 params ip={lab.VIP} cidr_netmask=24 nic=eth0 op monitor interval=2s
primitive vpn-backvip ocf:heartbeat:IPaddr2 params ip={lab.BACK_VIP} cidr_netmask=24 nic=eth1 \\
    op monitor interval=2s
colocation vpn-vip-with-promoted inf: vpn-vip vpn-clone:Promoted
order vpn-vip-before-promote Mandatory: vpn-vip:start vpn-clone:promote
colocation vpn-backvip-with-promoted inf: vpn-backvip vpn-clone:Promoted
order vpn-backvip-before-promote Mandatory: vpn-backvip:start vpn-clone:promote
commit
"""


STATEFUL_PSK = "stateful-cluster-psk-Vb7nM3qK9tR2wX6yZ4cF8"
STATEFUL_CLIENTS = {"stock": "client2@example.com", "tuned": "client1@example.com"}


def stateful_conf(template: str = lab.STATEFUL_GATEWAY_CONF) -> str:
    """lab.STATEFUL_GATEWAY_CONF (the pool in the ha plugin's settings) plus the stock client's secret
    (``template``: lab.GATEWAY_CONF for the same clients of a primitive, the pool in the file)."""
    conf = template % {"vip": lab.VIP, "psk": STATEFUL_PSK}
    second = (f'    ike-client2 {{\n        id-gw = vpn.example.com\n        id-client = {STATEFUL_CLIENTS["stock"]}\n'
              f'        secret = "{STATEFUL_PSK}"\n    }}\n')
    return conf.replace("secrets {\n", "secrets {\n" + second, 1)


def start_stateful(c: Cluster, recipe: str = "pcs", clients: tuple[str, ...] = ("tuned", "stock"),
                   show: Any = None) -> str:
    """Configure a cluster built with ``ha=True`` by docs/stateful.md's ``recipe`` (pcs or crm;
    ``show`` sees each pcs command first), wait for the Promoted instance, connect ``clients``;
    returns the promoted node."""
    conf = c.work / "swanctl.conf"
    conf.write_text(stateful_conf())
    conf.chmod(0o600)
    if recipe == "crm":
        c.nodes["gw1"].on("crm", "configure", stdin=crm_stateful_configure(str(conf)))
    else:
        for cmd in pcs_stateful_commands(str(conf), str(c.work / "stateful-cib.xml")):
            if show is not None:
                show(cmd)
            c.nodes["gw1"].on(*cmd)
    first = c.wait_any("vpn-vip")
    c.wait_promoted("vpn-clone", first)
    for kind in clients:
        client = c.stock if kind == "stock" else c.client
        if client is None:
            raise RuntimeError(f"the lab has no {kind} client")
        lab.client_load(client, STATEFUL_PSK, stock=kind == "stock", identity=STATEFUL_CLIENTS[kind])
        if not lab.client_initiate(client):
            raise RuntimeError(f"the {kind} client could not connect at all")
    return first
