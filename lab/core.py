"""A lab of real strongSwan charons in network namespaces (root only).

Every charon runs in its own network namespace with a private ``/run`` and its own
``strongswan.conf`` bind-mounted over ``/etc/strongswan.conf`` (charon's pid file is
hard-coded), using the userland ``kernel-libipsec`` plugin because this kernel has no
ESP. Names carry the creating process id, so parallel runs never collide and a
leftover of a killed run is recognised (its pid is dead) and removed.

Addresses come only from the documentation ranges and exist only inside namespaces
made here; nothing is added to the host's namespace.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vici

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "/usr/sbin/swanctl"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
PREFIX = f"ipv{os.getpid()}-"
_LEFTOVER = re.compile(r"^ipv(\d+)-")

PLUGINS = (
    "random nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey revocation constraints "
    "attr counters kernel-libipsec kernel-netlink socket-default vici"
)


def run(*cmd: str, check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command without a shell; raise with its output on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_netns(name: str) -> None:
    """Kill what runs in a namespace of ours, then delete it."""
    pids = run(IP, "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(100):
        if not run(IP, "netns", "pids", name, check=False).stdout.split():
            break
        time.sleep(0.02)
    run(IP, "netns", "del", name, check=False)


def clean_leftovers() -> list[str]:
    """Delete namespaces left by lab runs whose process is gone."""
    removed = []
    for line in run(IP, "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _LEFTOVER.match(name)
        if m and not _alive(int(m.group(1))):
            remove_netns(name)
            removed.append(name)
    return removed


def add_netns(short: str) -> str:
    """Create namespace PREFIX+short with lo up; return its full name."""
    name = PREFIX + short
    if name in run(IP, "netns", "list").stdout.split():
        remove_netns(name)
    run(IP, "netns", "add", name)
    run(IP, "-n", name, "link", "set", "lo", "up")
    return name


def in_ns(netns: str, *cmd: str, check: bool = True, timeout: float = 30,
          **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace."""
    return run(IP, "netns", "exec", netns, *cmd, check=check, timeout=timeout, **kw)


@dataclass
class Charon:
    """One charon daemon in its own namespace."""

    name: str
    netns: str
    base: Path
    extra: str = ""
    own_netns: bool = False
    load: str = PLUGINS
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def vici_path(self) -> str:
        return str(self.base / "run" / "charon.vici")

    @property
    def uri(self) -> str:
        return "unix://" + self.vici_path

    @property
    def ha_fifo(self) -> str:
        """The ha plugin's control FIFO (/var/run/charon.ha inside the charon's private /run)."""
        return str(self.base / "run" / "charon.ha")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @classmethod
    def start(cls, name: str, netns: str | None = None, extra: str = "", load: str = PLUGINS) -> Charon:
        """Start a charon; in a fresh namespace unless ``netns`` is given; ``load``: its plugins."""
        own = netns is None
        ns = add_netns(name) if netns is None else netns
        base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name}-"))
        os.chmod(base, 0o755)
        (base / "run").mkdir()
        c = cls(name=name, netns=ns, base=base, extra=extra, own_netns=own, load=load)
        c._write_conf()
        c.launch()
        return c

    def _write_conf(self) -> None:
        (self.base / "strongswan.conf").write_text(
            "charon {\n"
            f"  load = {self.load}\n"
            "  plugins {\n    vici { socket = unix:///run/charon.vici }\n  }\n"
            f"{self.extra}\n"
            "  filelog {\n    stderr {\n      time_format = %H:%M:%S\n      default = 1\n"
            "      ike_name = yes\n    }\n  }\n}\n"
        )

    def launch(self) -> None:
        """(Re)start the daemon and wait until VICI answers."""
        for stale in ("charon.pid", "charon.vici"):
            with contextlib.suppress(FileNotFoundError):
                (self.base / "run" / stale).unlink()
        log = open(self.base / "charon.log", "ab")
        script = ('mount -n --bind "$1/run" /run && '
                  'mount -n --bind "$1/strongswan.conf" /etc/strongswan.conf && exec "$2"')
        self.proc = subprocess.Popen(
            [IP, "netns", "exec", self.netns, "sh", "-c", script, "sh", str(self.base), CHARON],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon {self.name} exited: {self.log_tail()}")
            with contextlib.suppress(OSError):
                s = self.session()
                try:
                    s.version()
                    return
                finally:
                    s.transport.close()
            time.sleep(0.01)
        raise RuntimeError(f"charon {self.name} did not answer VICI: {self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.base / "charon.log").read_text(errors="replace").splitlines()[-n:])
        return ""

    def session(self, timeout: float = 10) -> vici.Session:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.vici_path)
        except OSError:
            sock.close()
            raise
        return vici.Session(sock)

    @contextlib.contextmanager
    def vici(self) -> Iterator[vici.Session]:
        s = self.session()
        try:
            yield s
        finally:
            s.transport.close()

    def swanctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(SWANCTL, *args, "--uri", self.uri, check=check)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (a crash)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.own_netns:
            remove_netns(self.netns)
        shutil.rmtree(self.base, ignore_errors=True)

    # --- state queries, decoded to str -------------------------------------------------
    def conns(self) -> list[str]:
        with self.vici() as s:
            return [decode(n) for n in s.get_conns()["conns"]]

    def sas(self) -> list[dict[str, Any]]:
        """One dict per IKE_SA: conn name under 'name', list-sas fields decoded."""
        out = []
        with self.vici() as s:
            for sa in s.list_sas():
                for conn, body in sa.items():
                    d = decode(body)
                    d["name"] = conn
                    out.append(d)
        return out

    def pools(self) -> dict[str, Any]:
        with self.vici() as s:
            return decode(s.get_pools())  # type: ignore[no-any-return]

    def shared(self) -> list[str]:
        with self.vici() as s:
            return [decode(k) for k in s.get_shared()["keys"]]

    def clear(self) -> None:
        """Unload everything VICI-loaded (terminating SAs first)."""
        with self.vici() as s:
            for sa in list(s.list_sas()):
                for body in sa.values():
                    list(s.terminate({"ike-id": body["uniqueid"], "force": "yes", "timeout": "-1"}))
            for n in s.get_conns()["conns"]:
                s.unload_conn({"name": n})
            for n in s.get_pools():
                s.unload_pool({"name": n})
            for k in s.get_shared()["keys"]:
                s.unload_shared({"id": k})


def decode(o: Any) -> Any:
    """bytes -> str, recursively (VICI values are bytes)."""
    if isinstance(o, bytes):
        return o.decode(errors="replace")
    if isinstance(o, list):
        return [decode(x) for x in o]
    if isinstance(o, dict):
        return {k: decode(v) for k, v in o.items()}
    return o


# --------------------------------------------------------------------------- topology
GW_IPS = {"gw1": "192.0.2.11", "gw2": "192.0.2.12"}
GW_BACK = {"gw1": "198.51.100.11", "gw2": "198.51.100.12"}
CLIENT_IP = "192.0.2.50"
SERVER_IP = "198.51.100.10"
VIP = "192.0.2.100"
BACK_VIP = "198.51.100.1"
POOL = "203.0.113.0/24"
CLIENT_RETRANSMIT = (
    "  retransmit_timeout = 0.5\n  retransmit_base = 1.0\n  retransmit_tries = 2\n"
)


@dataclass
class Lab:
    """Gateways, a road-warrior client and a server behind the gateways.

    ``lan`` holds the two bridges: front (gateways + client, 192.0.2.0/24) and back
    (gateways + server, 198.51.100.0/24). The server routes the client pool via
    the backend VIP, which moves together with the VIP.
    """

    gateways: dict[str, Charon] = field(default_factory=dict)
    client: Charon | None = None
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, gateways: tuple[str, ...] = ("gw1",), ha: bool = False, client_extra: str = CLIENT_RETRANSMIT,
              ha_pool: str = POOL) -> Lab:
        """``ha``: the gateways run strongSwan's ha plugin, syncing over the back network, with the
        pool rw-pool (``ha_pool``) in its settings (:func:`ha_settings`); ``client_extra``: the
        client's charon settings ("" = stock)."""
        clean_leftovers()
        lab = cls()
        try:
            lab._build(gateways, ha, client_extra, ha_pool)
        except BaseException:
            lab.destroy()
            raise
        return lab

    def ns(self, short: str) -> str:
        return PREFIX + short

    def _build(self, gateways: tuple[str, ...], ha: bool = False, client_extra: str = CLIENT_RETRANSMIT,
               ha_pool: str = POOL) -> None:
        for short in ("lan", "client", "srv", *gateways):
            self.namespaces.append(add_netns(short))
        lan = self.ns("lan")
        for br in ("brf", "brb"):
            run(IP, "-n", lan, "link", "add", br, "type", "bridge")
            run(IP, "-n", lan, "link", "set", br, "up")
        idx = 0

        def plug(short: str, ifname: str, bridge: str, addr: str) -> None:
            nonlocal idx
            idx += 1
            peer = f"p{idx}"
            run(IP, "-n", self.ns(short), "link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", lan)
            run(IP, "-n", lan, "link", "set", peer, "master", bridge, "up")
            run(IP, "-n", self.ns(short), "addr", "add", addr, "dev", ifname)
            run(IP, "-n", self.ns(short), "link", "set", ifname, "up")

        for gw in gateways:
            plug(gw, "eth0", "brf", GW_IPS[gw] + "/24")
            plug(gw, "eth1", "brb", GW_BACK[gw] + "/24")
            in_ns(self.ns(gw), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        plug("client", "eth0", "brf", CLIENT_IP + "/24")
        plug("srv", "eth1", "brb", SERVER_IP + "/24")
        run(IP, "-n", self.ns("srv"), "route", "add", POOL, "via", BACK_VIP)
        for gw in gateways:
            if ha:
                peer = next(g for g in GW_BACK if g != gw)
                self.gateways[gw] = Charon.start(gw, netns=self.ns(gw), load=PLUGINS + " ha",
                                                 extra=ha_settings(GW_BACK[gw], GW_BACK[peer], ha_pool))
            else:
                self.gateways[gw] = Charon.start(gw, netns=self.ns(gw))
        self.client = Charon.start("client", netns=self.ns("client"), extra=client_extra)

    def add_vip(self, gw: str, vip: str = VIP, dev: str = "eth0", prefix: int = 24) -> None:
        """What IPaddr2 does: the VIP and the backend VIP, then gratuitous ARP."""
        run(IP, "-n", self.ns(gw), "addr", "add", f"{vip}/{prefix}", "dev", dev)
        run(IP, "-n", self.ns(gw), "addr", "add", f"{BACK_VIP}/24", "dev", "eth1")
        for ifname, addr in ((dev, vip), ("eth1", BACK_VIP)):
            in_ns(self.ns(gw), "arping", "-q", "-U", "-c", "1", "-I", ifname, addr, check=False)

    def del_vip(self, gw: str, vip: str = VIP, dev: str = "eth0", prefix: int = 24) -> None:
        run(IP, "-n", self.ns(gw), "addr", "del", f"{vip}/{prefix}", "dev", dev, check=False)
        run(IP, "-n", self.ns(gw), "addr", "del", f"{BACK_VIP}/24", "dev", "eth1", check=False)

    def ping_server(self, count: int = 2) -> bool:
        """True if the client reaches the server (only possible through the tunnel)."""
        p = in_ns(self.ns("client"), "ping", "-c", str(count), "-i", "0.2", "-W", "1", SERVER_IP, check=False)
        return p.returncode == 0

    def destroy(self) -> None:
        for c in [*self.gateways.values(), *([self.client] if self.client else [])]:
            with contextlib.suppress(Exception):
                c.stop()
        for ns in reversed(self.namespaces):
            remove_netns(ns)
        self.namespaces.clear()


def add_client(short: str, addr: str, lan: str, namespaces: list[str], extra: str = "") -> Charon:
    """Another client on the front bridge of the lab whose ``lan`` namespace is given: its own
    namespace (appended to ``namespaces`` for the lab's cleanup) and charon (``extra`` settings)."""
    ns = add_netns(short)
    namespaces.append(ns)
    port = f"q{short}"[:15]
    run(IP, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", lan)
    run(IP, "-n", lan, "link", "set", port, "master", "brf", "up")
    run(IP, "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
    run(IP, "-n", ns, "link", "set", "eth0", "up")
    return Charon.start(short, netns=ns, extra=extra)


def stock_conn(identity: str, vip: str = VIP) -> dict[str, Any]:
    """A road-warrior client as strongSwan ships it: no DPD, close_action none, keyingtries 1."""
    return {"home": {"version": "2", "remote_addrs": [vip], "vips": ["0.0.0.0"],
                     "local": {"auth": "psk", "id": identity},
                     "remote": {"auth": "psk", "id": "vpn.example.com"},
                     "children": {"home": {"remote_ts": ["198.51.100.0/24"]}}}}


def ha_section(local: str, remote: str, pool: str = POOL) -> str:
    """strongswan.conf ``charon.plugins.ha`` for a Pacemaker-driven pair (docs/stateful.md),
    with the clients' pool ``rw-pool`` (``pool``: its addresses) as the plugin's own (the only
    pools a takeover keeps right), without ``secret``: with kernel-libipsec the plugin cannot
    route its protected sync (the sync stays in clear anyway, docs/stateful.md)."""
    return ("    ha {\n"
            f"      local = {local}\n      remote = {remote}\n"
            "      segment_count = 1\n      monitor = no\n      fifo_interface = yes\n      resync = no\n"
            f"      pools {{\n        rw-pool = {pool}\n      }}\n"
            "    }\n")


def ha_settings(local: str, remote: str, pool: str = POOL) -> str:
    """:func:`ha_section` inside its ``plugins`` section (for :class:`Charon`'s ``extra``)."""
    return "  plugins {\n" + ha_section(local, remote, pool) + "  }\n"


def client_conn(vip: str = VIP, identity: str = "client1@example.com",
                server_id: str = "vpn.example.com") -> dict[str, Any]:
    """A road-warrior client with the settings the README recommends."""
    return {
        "home": {
            "version": "2", "remote_addrs": [vip], "vips": ["0.0.0.0"],
            "dpd_delay": "1s", "keyingtries": "0",
            "local": {"auth": "psk", "id": identity},
            "remote": {"auth": "psk", "id": server_id},
            "children": {"home": {"remote_ts": ["198.51.100.0/24"], "dpd_action": "restart", "close_action": "start"}},
        }
    }


def client_load(client: Charon, psk: str, stock: bool = False, **kw: Any) -> None:
    with client.vici() as s:
        s.load_shared({"id": "home-psk", "type": "IKE", "data": psk, "owners": []})
        s.load_conn(stock_conn(**kw) if stock else client_conn(**kw))


def client_initiate(client: Charon, timeout_ms: int = 5000) -> bool:
    """Initiate the client's tunnel; True when it came up."""
    with client.vici() as s:
        try:
            for _ in s.initiate({"child": "home", "ike": "home", "timeout": str(timeout_ms), "init-limits": "no"}):
                pass
        except vici.exception.CommandException:
            return False
    return True


# The gateway side of the lab: a VIP-bound road-warrior responder (%(vip)s) taking its virtual IPs
# from rw-pool, and the secret of the lab's client (%(psk)s).
GATEWAY_CONNS = """\
connections {
    rw {
        version = 2
        local_addrs = %(vip)s
        pools = rw-pool
        mobike = no
        dpd_delay = 10s
        local {
            auth = psk
            id = vpn.example.com
        }
        remote {
            auth = psk
        }
        children {
            rw {
                local_ts = 198.51.100.0/24
            }
        }
    }
}
"""
_GATEWAY_SECRETS = """\
secrets {
    ike-client1 {
        id-gw = vpn.example.com
        id-client = client1@example.com
        secret = "%(psk)s"
    }
}
"""
def pools_section(addrs: str = POOL) -> str:
    """The primitive's ``pools { }``: rw-pool with ``addrs`` (stateful mode keeps it in ha_section)."""
    return f"pools {{\n    rw-pool {{\n        addrs = {addrs}\n    }}\n}}\n"


def any_client_secret(psk: str, server_id: str = "vpn.example.com") -> str:
    """A ``secrets`` section: one PSK for every client that names the gateway ``server_id``."""
    return f'secrets {{\n    ike-any {{\n        id = {server_id}\n        secret = "{psk}"\n    }}\n}}\n'


GATEWAY_CONF = GATEWAY_CONNS + pools_section() + _GATEWAY_SECRETS
# Stateful mode: the pool rw-pool lives in charon.plugins.ha.pools (ha_section), not in the agent's file.
STATEFUL_GATEWAY_CONF = GATEWAY_CONNS + _GATEWAY_SECRETS


# --------------------------------------------------------------------------- the agent
AGENT = str(Path(__file__).resolve().parent.parent / "ocf" / "strongswan")


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def reasons(self) -> list[str]:
        return [line[len("ocf-exit-reason:"):] for line in self.stderr.splitlines()
                if line.startswith("ocf-exit-reason:")]


def agent(action: str, params: dict[str, str], netns: str | None = None, rsctmp: str | None = None,
          instance: str = "vpn", timeout: float = 60, wrap: tuple[str, ...] = (), **env: str) -> Result:
    """Run ocf/strongswan like pacemaker-execd would: clean environment, one action (``wrap``: a
    command prefix inside the namespace, e.g. to hide a tool)."""
    bindir = os.path.dirname(os.path.realpath(sys.executable))
    environ = {
        "PATH": f"{os.path.dirname(sys.executable)}:{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8", "OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": instance,
        "OCF_RA_VERSION_MAJOR": "1", "OCF_RA_VERSION_MINOR": "1",
        "OCF_EXIT_REASON_PREFIX": "ocf-exit-reason:",
    }
    if rsctmp:
        environ["HA_RSCTMP"] = rsctmp
    environ.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    environ.update(env)
    cmd = [*wrap, sys.executable, AGENT, action]
    if netns:
        cmd = [IP, "netns", "exec", netns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)
    return Result(p.returncode, p.stdout, p.stderr)
