"""A keepalived pair: Debian's keepalived (2.2.7) on the lab's two gateways, ``ipsec-vip watch``
beside it on each, as ``docs/keepalived.md`` configures them (root only).

The gateways, client and server are :class:`lab.core.Lab`'s (gw1/gw2 on the front and back
bridges, the ``ha`` plugin syncing over the back one when stateful), plus a stock client beside
the lab's tuned one and the UDP echo the gap probe talks to. keepalived runs in each gateway's
namespace (``ip netns exec``, never the host's) with its own configuration and pid files, in
the foreground, logging to a file: VRRP on the front link (multicast, or ``unicast_peer``), the
VIP and the inside VIP in ``virtual_ipaddress``. The watch daemon runs as its unit runs it
(``ipsec-vip watch vpn`` reading ``vpn.conf``), with the lab's state and config directories.

A crash is a reboot: every process of the node killed, its links down (a dead machine answers
no ARP), its ``/run`` (charon's, the watch state), firewall and addresses gone; :meth:`Pair.boot`
brings it back (same MACs) and starts charon, keepalived and the watch daemon again.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import cluster
from lab import core as lab
from lab.watch import Watch

KEEPALIVED = "/usr/sbin/keepalived"
NODES = ("gw1", "gw2")
PRIORITY = {"gw1": 250, "gw2": 240}
PSK = cluster.STATEFUL_PSK
CLIENTS = cluster.STATEFUL_CLIENTS  # kind -> identity
CLIENT_NS = {"tuned": "client", "stock": "stock"}
HA_PORT = 4511


def vrrp_config(node: str, unicast: bool = False, advert_int: str = "1") -> str:
    """keepalived.conf of ``node`` as docs/keepalived.md shows it (gw1's is the page's block word
    for word; gw2 differs in its priority): multicast VRRPv2 with ``advert_int 1`` by default;
    ``unicast``: adverts to the other node's address; a sub-second ``advert_int``: VRRPv3 (VRRPv2
    rounds it to whole seconds), which has no authentication."""
    other = next(n for n in NODES if n != node)
    lines = ["vrrp_instance VPN {", "    state BACKUP", "    interface eth0", "    virtual_router_id 51"]
    if unicast:
        lines += [f"    unicast_src_ip {lab.GW_IPS[node]}     # this node's address (the other node: its own)",
                  "    unicast_peer {", f"        {lab.GW_IPS[other]}                # the other node's", "    }"]
    lines += [f"    priority {PRIORITY[node]}              # {PRIORITY[other]} on the other node",
              "    nopreempt                 # a node that comes back stays backup",
              "    higher_prio_send_advert   # after a split brain the holder announces itself again",
              f"    advert_int {advert_int}"]
    if float(advert_int) < 1:
        lines += ["    version 3                 # sub-second adverts need VRRPv3 (no authentication)"]
    else:
        lines += ["    authentication {", "        auth_type PASS", "        auth_pass changeme", "    }"]
    lines += ["    virtual_ipaddress {", f"        {lab.VIP}/24 dev eth0",
              f"        {lab.BACK_VIP}/24 dev eth1", "    }", "}"]
    return "\n".join(lines) + "\n"


def watch_config(charon: lab.Charon, conf: Path, stateful: bool, node: str) -> str:
    """``/etc/ipsec-vip/watch/vpn.conf`` as docs/keepalived.md shows it, with the lab's paths
    (each charon's VICI socket and FIFO live in its private /run)."""
    text = f"vip = {lab.VIP}\nconfig = {conf}\nvici_socket = {charon.uri}\n"
    if stateful:
        other = next(n for n in NODES if n != node)
        text += (f"stateful = yes\nha_fifo = {charon.ha_fifo}\n"
                 f"ha_local = {lab.GW_BACK[node]}\nha_remote = {lab.GW_BACK[other]}\n")
    return text


@dataclass
class Keepalived:
    """One keepalived in a gateway's namespace: its own config, pid files and log."""

    node: str
    netns: str
    work: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for name in ("keepalived.pid", "vrrp.pid", "checkers.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.work / name).unlink()
        with open(self.work / "keepalived.log", "ab") as out:
            self.proc = subprocess.Popen(
                [lab.IP, "netns", "exec", self.netns, KEEPALIVED, "-f", str(self.work / "keepalived.conf"),
                 "-p", str(self.work / "keepalived.pid"), "-r", str(self.work / "vrrp.pid"),
                 "-c", str(self.work / "checkers.pid"), "-n", "-l", "-G", "-D"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """``systemctl stop keepalived``: SIGTERM; keepalived releases the VIP and sends priority 0."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def reload(self) -> None:
        """``systemctl reload keepalived``: SIGHUP, the configuration is read again."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "keepalived.log").read_text(errors="replace")
        return ""


@dataclass
class Pair:
    """Two gateways with keepalived and the watch daemon, a tuned and a stock client, a server."""

    base: lab.Lab
    work: Path
    stateful: bool
    unicast: bool
    advert_int: str
    keepalived: dict[str, Keepalived] = field(default_factory=dict)
    watches: dict[str, Watch] = field(default_factory=dict)
    clients: dict[str, lab.Charon] = field(default_factory=dict)
    echo: subprocess.Popen[bytes] | None = None
    _starts: int = 0

    @classmethod
    def build(cls, stateful: bool = False, unicast: bool = False, advert_int: str = "1",
              clients: tuple[str, ...] = ("stock", "tuned")) -> Pair:
        """The pair with the VIP on gw1 (keepalived started there first) and ``clients`` connected."""
        base = lab.Lab.build(NODES, ha=stateful)
        work = Path(tempfile.mkdtemp(prefix=f"{lab.PREFIX}keepalived-"))
        os.chmod(work, 0o755)
        p = cls(base=base, work=work, stateful=stateful, unicast=unicast, advert_int=advert_int)
        try:
            p._build(clients)
        except BaseException:
            p.destroy()
            raise
        return p

    def _build(self, clients: tuple[str, ...]) -> None:
        conf = self.work / "swanctl.conf"
        conf.write_text(cluster.stateful_conf() if self.stateful else cluster.stateful_conf(lab.GATEWAY_CONF))
        conf.chmod(0o600)
        assert self.base.client is not None
        if "tuned" in clients:  # the lab's own client, tuned (the only kind it builds)
            self.clients["tuned"] = self.base.client
        if "stock" in clients:
            self.clients["stock"] = lab.add_client("stock", cluster.STOCK_IP, self.base.ns("lan"),
                                                   self.base.namespaces)
        self.echo = subprocess.Popen([lab.IP, "netns", "exec", self.base.ns("srv"), sys.executable, "-c",
                                      cluster.ECHO], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for node in NODES:
            d = self.work / node
            (d / "watch").mkdir(parents=True)
            (d / "keepalived.conf").write_text(vrrp_config(node, self.unicast, self.advert_int))
            (d / "watch" / "vpn.conf").write_text(watch_config(self.base.gateways[node], conf, self.stateful, node))
            (d / "watch" / "vpn.conf").chmod(0o600)
            self.keepalived[node] = Keepalived(node, self.base.ns(node), d)
            self.start_watch(node)
        self.keepalived["gw1"].start()
        self.wait_holder("gw1", timeout=30)
        self.keepalived["gw2"].start()
        for kind in clients:
            lab.client_load(self.clients[kind], PSK, stock=kind == "stock", identity=CLIENTS[kind])
            if not lab.client_initiate(self.clients[kind]):
                raise RuntimeError(f"the {kind} client could not connect")

    # ---------------------------------------------------------------- the watch daemon
    def start_watch(self, node: str) -> Watch:
        """``systemctl start ipsec-vip-watch@vpn`` on ``node``: ready once it has acted on the VIP."""
        self._starts += 1
        d = self.work / node
        w = Watch(self.base.ns(node), ["vpn", "--watch-dir", str(d / "watch"), "--state-dir", str(d / "state")],
                  d, name=f"watch-{self._starts}")
        self.watches[node] = w
        return w.ready()

    def stop_watch(self, node: str) -> int:
        """``systemctl stop ipsec-vip-watch@vpn``: SIGTERM, its exit code."""
        w = self.watches.pop(node)
        try:
            return w.terminate()
        finally:
            w.close()

    # ---------------------------------------------------------------- the VIP
    def has_vip(self, node: str) -> bool:
        out = lab.run(lab.IP, "-n", self.base.ns(node), "-o", "addr", "show", "dev", "eth0", check=False).stdout
        return f" {lab.VIP}/" in out

    def holder(self) -> str | None:
        held = [n for n in NODES if self.has_vip(n)]
        return held[0] if len(held) == 1 else None

    def wait_holder(self, node: str, timeout: float = 30) -> float:
        """Monotonic time at which ``node`` alone holds the VIP."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.has_vip(node) and not any(self.has_vip(n) for n in NODES if n != node):
                return time.monotonic()
            time.sleep(0.005)
        raise TimeoutError(f"the VIP is not on {node} alone after {timeout}s: "
                           f"{[n for n in NODES if self.has_vip(n)]}")

    # ---------------------------------------------------------------- events
    def planned_move(self, node: str) -> None:
        """docs/keepalived.md's planned move away from ``node``: the primitive first stops the watch
        daemon (its stop hands the clients off while the VIP is still here), then keepalived."""
        if not self.stateful:
            assert self.stop_watch(node) == 0
        self.keepalived[node].stop()

    def rejoin(self, node: str) -> None:
        """``node`` back after a planned move: keepalived (it stays backup: nopreempt) and the watch daemon."""
        self.keepalived[node].start()
        if node not in self.watches:
            self.start_watch(node)

    def cut(self, vrrp: bool = True, sync: bool = False) -> None:
        """Drop between the two nodes (both directions): ``vrrp``, the adverts (a VRRP split brain:
        each takes the VIP); ``sync``, the ha plugin's sync and the watch daemons' announcements
        (UDP 4510 and 4511 on the back link). Nothing else: clients and the server still reach
        both. ``cut()`` with both False heals everything."""
        rules = (["ip protocol vrrp drop"] if vrrp else []) + (["udp dport { 4510, 4511 } drop"] if sync else [])
        for node in NODES:
            ns = self.base.ns(node)
            lab.in_ns(ns, "nft", "delete", "table", "inet", "kadlab", check=False)
            if rules:
                body = "".join(f"  {r}\n" for r in rules)
                lab.in_ns(ns, "nft", "-f", "-", input="table inet kadlab {\n chain input {\n"
                          f"  type filter hook input priority -20; policy accept;\n{body} }}\n}}\n")

    def crash(self, node: str) -> None:
        """The node dies: every process in its namespace killed, links down, /run and firewall gone."""
        ns = self.base.ns(node)
        for pid in lab.run(lab.IP, "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for ifname in ("eth0", "eth1"):
            lab.run(lab.IP, "-n", ns, "link", "set", ifname, "down")
        w = self.watches.pop(node, None)
        if w is not None:
            w.close()
        charon = self.base.gateways[node]
        if charon.proc is not None:
            charon.proc.wait(10)
        k = self.keepalived[node]
        if k.proc is not None:
            k.proc.wait(10)
            k.proc = None
        for ifname, addrs in (("eth0", (lab.VIP,)), ("eth1", (lab.BACK_VIP,))):
            for addr in addrs:
                lab.run(lab.IP, "-n", ns, "addr", "del", f"{addr}/24", "dev", ifname, check=False)
        lab.in_ns(ns, "nft", "flush", "ruleset", check=False)
        for d in (charon.base / "run", self.work / node / "state"):
            shutil.rmtree(d, ignore_errors=True)
        (charon.base / "run").mkdir()

    def boot(self, node: str) -> None:
        """The crashed node comes back: links up, charon, the watch daemon, keepalived (backup)."""
        ns = self.base.ns(node)
        for ifname in ("eth0", "eth1"):
            lab.run(lab.IP, "-n", ns, "link", "set", ifname, "up")
        self.base.gateways[node].launch()
        self.start_watch(node)
        self.keepalived[node].start()

    def probe(self, kind: str) -> cluster.Probe:
        return cluster.Probe(self.work, netns=self.base.ns(CLIENT_NS[kind]))

    def client_spis(self, kind: str) -> list[tuple[str, str]]:
        return [(s["initiator-spi"], s["responder-spi"]) for s in self.clients[kind].sas() if s["name"] == "home"]

    def logs(self) -> str:
        """Every daemon's log tail, for a failure message."""
        parts = []
        for node in NODES:
            parts.append(f"--- keepalived {node}\n" + "\n".join(self.keepalived[node].log().splitlines()[-15:]))
            for f in sorted((self.work / node).glob("watch-*.log")):
                parts.append(f"--- {node} {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(parts)

    def destroy(self) -> None:
        for node in list(self.watches):
            with contextlib.suppress(Exception):
                self.stop_watch(node)
        for k in self.keepalived.values():
            with contextlib.suppress(Exception):
                k.stop()
        if self.echo is not None:
            self.echo.kill()
            self.echo.wait()
        stock = self.clients.get("stock")
        if stock is not None:
            with contextlib.suppress(Exception):
                stock.stop()
        self.base.destroy()
        if os.environ.get("IPSEC_VIP_KEEP_LAB") != "1":
            shutil.rmtree(self.work, ignore_errors=True)


class Arrival(threading.Thread):
    """Polls from now on until ``to`` alone holds the VIP (the event itself may take longer:
    ``systemctl stop keepalived`` returns once keepalived has exited)."""

    def __init__(self, pair: Pair, to: str) -> None:
        super().__init__(daemon=True)
        self.pair, self.to, self.at = pair, to, 0.0
        self.start()

    def run(self) -> None:
        with contextlib.suppress(TimeoutError):
            self.at = self.pair.wait_holder(self.to, timeout=60)

    def wait(self) -> float:
        self.join(70)
        if not self.at:
            raise TimeoutError(f"the VIP never reached {self.to} alone")
        return self.at


def measure(pair: Pair, event: Any, to: str, kinds: tuple[str, ...] = ("stock", "tuned"),
            timeout: float = 40) -> dict[str, dict[str, Any]]:
    """One event with each client sending through the tunnel: its gap (longest silence of a
    20 ms UDP echo, from the event on), when the VIP was on ``to`` alone, and whether the client
    kept its IKE_SA (same SPIs). A client without traffic ``timeout`` s after the VIP moved is
    ``stranded`` (gap None)."""
    before = {k: pair.client_spis(k) for k in kinds}
    probes = {k: pair.probe(k) for k in kinds}
    try:
        for p in probes.values():
            p.wait_flowing(time.monotonic() - 5, timeout=20)
        arrival = Arrival(pair, to)
        t0 = time.monotonic()
        event()
        t_vip = arrival.wait() - t0
        out: dict[str, dict[str, Any]] = {}
        for k, p in probes.items():
            out[k] = {"vip_moved_s": round(t_vip, 3)}
            try:
                out[k]["traffic_back_s"] = round(p.wait_flowing(t0 + t_vip, timeout=timeout) - t0, 3)
            except TimeoutError:
                out[k].update(stranded=True, gap_s=None)
        time.sleep(0.3)
        for k, p in probes.items():
            if not out[k].get("stranded"):
                out[k]["gap_s"] = round(p.gap(t0), 3)
            out[k]["kept_ike_sa"] = pair.client_spis(k) == before[k]
        return out
    finally:
        for p in probes.values():
            p.stop()
