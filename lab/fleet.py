"""A fleet of road-warrior clients for the cluster lab (:mod:`lab.cluster`).

One more namespace, ``fleet``, on the front bridge (``FLEET_LAN_IP``) holds N clients in
one client charon with strongSwan's stock settings: each client is its own connection with
its own identity (``cNNNNN@fleet.example.com``), its own source address from the
benchmarking range 198.18.0.0/15 (so charon's per-address limits are not what is measured)
and its own virtual IP. The gateways route that range via the fleet namespace's one address
(one neighbour entry, not one per client: at 1000 per-client entries overflowed the
neighbour table), the server routes the fleet's pool via the backend VIP.

Facts this harness is built on (``shared/lab/strongswan.md``, "Many road-warrior clients"):
every address is added before the client charon starts (charon misses address events
otherwise); probes are bound to their client's virtual IP (unbound traffic would all leave
as the newest client); a round trip counts only when the client's CHILD_SA counters moved
both ways; the client charon's one UDP socket serves the whole fleet, so its receive buffer
is enlarged (a real fleet has a socket per client), as the agent enlarges the gateways' own.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import math
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vici

from lab import cluster
from lab import core as lab

FLEET_LAN_IP = "192.0.2.60"
FLEET_NET = "198.18.0.0/15"
FLEET_FIRST = ipaddress.ip_address("198.18.0.10")
FLEET_POOL = "10.99.0.0/18"  # a private range, room for 16382 leases
# What docs/fleet.md gives the gateways of a fleet (charon's default IKE_SA table is one row behind
# one lock: at about 3000 SAs every lookup walked them all, charon left VICI unanswered for 10 s,
# the monitor failed and Pacemaker's recovery dropped the fleet). The one client charon, which
# holds the whole fleet, gets the same.
FLEET_CHARON_SETTINGS = "ikesa_table_size = 4096\nikesa_table_segments = 16"
FLEET_DPD = "30s"  # the gateways' dpd_delay, as the README's recipe
PSK = "fleet-lab-psk-Xr8vN2qK6tM4wZ9yB3cF7hJ5"
SERVER_ID = "vpn.example.com"
CHILD = "home"
SAMPLE = 20  # clients whose tunnel carries a 20 ms probe the whole time

def gateway_conf(stateful: bool, vip: str = lab.VIP) -> str:
    """The gateways' swanctl.conf for the fleet: the lab's responder with the README's DPD
    interval (the lab's 10 s is 1000 DPD exchanges a second at 10,000 clients, each synced to the
    standby: charon on 2 vCPUs stopped answering VICI), one PSK for every client, and (primitive
    mode) rw-pool sized for the fleet; in stateful mode the pool is the ha plugin's own
    (lab.core.ha_section)."""
    conns = (lab.GATEWAY_CONNS % {"vip": vip}).replace("dpd_delay = 10s", f"dpd_delay = {FLEET_DPD}")
    if FLEET_DPD not in conns:
        raise RuntimeError("lab.GATEWAY_CONNS no longer sets dpd_delay = 10s")
    return conns + ("" if stateful else lab.pools_section(FLEET_POOL)) + lab.any_client_secret(PSK, SERVER_ID)


def client_name(i: int) -> str:
    return f"c{i:05d}"


def client_address(i: int) -> str:
    return str(FLEET_FIRST + i)


def client_conn(i: int, vip: str = lab.VIP) -> dict[str, Any]:
    """Client ``i`` as strongSwan ships it (no DPD, close_action none, keyingtries 1), from its own address."""
    return {client_name(i): {
        "version": "2", "remote_addrs": [vip], "local_addrs": [client_address(i)], "vips": ["0.0.0.0"],
        "local": {"auth": "psk", "id": f"{client_name(i)}@fleet.example.com"},
        "remote": {"auth": "psk", "id": SERVER_ID},
        "children": {CHILD: {"remote_ts": ["198.51.100.0/24"]}},
    }}


# A UDP echo client for the sampled clients: one socket bound to each client's virtual IP
# (read from MAPFILE, "index vip" a line, re-read when it changes: a client that reconnects may
# get another address), a datagram every INTERVAL s from each; prints "index monotonic-time"
# for each answer.
PROBE = r"""
import os, selectors, socket, sys, time
out = open(sys.argv[1], "w", buffering=1)
interval, server, mapfile = float(sys.argv[2]), sys.argv[3], sys.argv[4]
sel = selectors.DefaultSelector()
socks, bound, seen = {}, {}, None

def remap():
    global seen
    try:
        stamp = os.stat(mapfile).st_mtime_ns
    except OSError:
        return
    if stamp == seen:
        return
    seen = stamp
    for line in open(mapfile).read().splitlines():
        i, vip = int(line.split()[0]), line.split()[1]
        if bound.get(i) == vip:
            continue
        if i in socks:
            sel.unregister(socks[i])
            socks.pop(i).close()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((vip, 0))
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks[i], bound[i] = s, vip

nxt = time.monotonic()
while True:
    now = time.monotonic()
    if now >= nxt:
        remap()
        for s in socks.values():
            try:
                s.sendto(b"p", (server, 7))
            except OSError:
                pass
        nxt = max(nxt + interval, now)
    for key, _ in sel.select(max(0.0, nxt - time.monotonic())):
        try:
            while True:
                key.fileobj.recv(64)
                out.write("%d %.4f\n" % (key.data, time.monotonic()))
        except (BlockingIOError, OSError):
            pass
"""

# One echo through each given virtual IP (3 tries); prints the virtual IPs answered.
SWEEP = r"""
import resource, selectors, socket, sys, time
server, vips = sys.argv[1], sys.argv[2:]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per client: 10,000 and more
sel = selectors.DefaultSelector()
socks = {}
for v in vips:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((v, 0))
    except OSError:
        continue
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, v)
    socks[v] = s
answered = set()
for attempt in range(3):
    for v, s in socks.items():
        if v not in answered:
            try:
                s.sendto(b"s", (server, 7))
            except OSError:
                pass
            if len(socks) > 200:
                time.sleep(0.0005)
    end = time.monotonic() + 1.0
    while time.monotonic() < end and len(answered) < len(socks):
        for key, _ in sel.select(0.1):
            try:
                while True:
                    key.fileobj.recv(64)
                    answered.add(key.data)
            except BlockingIOError:
                pass
    if len(answered) == len(socks):
        break
print("\n".join(sorted(answered)))
"""


@dataclass(frozen=True)
class ClientSA:
    """What one client holds: its IKE_SA (by SPIs), virtual IP and CHILD_SA counters."""

    spis: tuple[str, str]
    state: str
    vip: str | None
    child_installed: bool
    bytes_in: int
    bytes_out: int


@dataclass
class EventReport:
    """What an event did to the fleet (see :meth:`Fleet.check`)."""

    label: str
    n: int
    lost_ike: list[str] = field(default_factory=list)      # a different IKE_SA, or none
    no_round_trip: list[str] = field(default_factory=list)
    duplicate_vips: list[str] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)         # sampled clients, seconds
    resumed: list[float] = field(default_factory=list)      # sampled clients: traffic back, s after the event
    vip_moved: float | None = None
    joined: int = 0
    joined_ok: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost_ike or self.no_round_trip or self.duplicate_vips) and self.joined_ok == self.joined

    def summary(self) -> str:
        g = sorted(self.gaps)
        gap = f"gap median {g[len(g) // 2]:.2f} s max {g[-1]:.2f} s" if g else "no sampled gap"
        vip = f"VIP moved after {self.vip_moved:.2f} s, " if self.vip_moved is not None else ""
        return (f"{self.label}: N={self.n}, {vip}{gap}, IKE_SAs lost {len(self.lost_ike)}, "
                f"no round trip {len(self.no_round_trip)}, duplicate virtual IPs {len(self.duplicate_vips)}, "
                f"joined {self.joined_ok}/{self.joined}")


class Fleet:
    """N stock clients in one client charon, in their own namespace on the lab's front bridge."""

    def __init__(self, netns: str, charon: lab.Charon, work: Path, size: int, spare: int, vip: str) -> None:
        self.netns, self.charon, self.work = netns, charon, work
        self.size, self.spare, self.vip = size, spare, vip
        self.members: list[int] = []  # client indexes that were connected
        self._next = size

    # ----------------------------------------------------------------------- building
    @classmethod
    def attach(cls, lan: str, namespaces: list[str], work: Path, size: int, spare: int = 20,
               vip: str = lab.VIP) -> Fleet:
        """Create the fleet namespace on ``lan``'s front bridge with ``size + spare`` client
        addresses (``spare``: clients that join later), and its client charon."""
        ns = lab.add_netns("fleet")
        namespaces.append(ns)
        lab.run(lab.IP, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "qfleet", "netns", lan)
        lab.run(lab.IP, "-n", lan, "link", "set", "qfleet", "master", "brf", "up")
        batch = [f"addr add {FLEET_LAN_IP}/24 dev eth0"]
        batch += [f"addr add {client_address(i)}/32 dev eth0" for i in range(size + spare)]
        batch += ["link set eth0 up"]
        (work / "fleet-addrs.batch").write_text("\n".join(batch) + "\n")
        lab.run(lab.IP, "-n", ns, "-batch", str(work / "fleet-addrs.batch"), timeout=120)
        charon = lab.Charon.start("fleet", netns=ns, extra="".join(
            f"  {line}\n" for line in FLEET_CHARON_SETTINGS.splitlines()))
        fleet = cls(ns, charon, work, size, spare, vip)
        fleet.enlarge_client_buffers()
        return fleet

    def enlarge_client_buffers(self, size: int = 8 << 20) -> None:
        """The lab's one client charon stands for N machines with a socket each: give its
        IKE sockets ``size`` receive buffers, as the agent gives the gateways'."""
        from ipsec_vip import hasock

        hasock.enlarge_ike(self.charon.pid, size)

    @staticmethod
    def server_route(srv_ns: str) -> None:
        lab.run(lab.IP, "-n", srv_ns, "route", "replace", FLEET_POOL, "via", lab.BACK_VIP)

    # ----------------------------------------------------------------------- clients
    def load(self, indexes: Iterable[int]) -> None:
        with self.charon.vici() as s:
            with contextlib.suppress(vici.exception.CommandException):
                s.load_shared({"id": "fleet-psk", "type": "IKE", "data": PSK, "owners": []})
            for i in indexes:
                s.load_conn(client_conn(i, self.vip))

    def _session(self, timeout: float) -> vici.Session:
        """A VICI session to the client charon; many at once can find its listen queue full."""
        for _ in range(100):
            with contextlib.suppress(BlockingIOError):
                return self.charon.session(timeout=timeout)
            time.sleep(0.05)
        return self.charon.session(timeout=timeout)

    def _initiate(self, indexes: Sequence[int]) -> None:
        """Start these clients' IKE_SAs without waiting (a VICI initiate that waits holds one of
        charon's threads for its whole exchange: a few dozen at once starve the client charon)."""
        s = self._session(30)
        try:
            for i in indexes:
                for _ in s.initiate({"child": CHILD, "ike": client_name(i), "timeout": "-1"}):
                    pass
        finally:
            s.transport.close()

    def up(self) -> set[str]:
        """Clients whose IKE_SA is ESTABLISHED with an installed CHILD_SA."""
        return {n for n, sa in self.snapshot().items() if sa.state == "ESTABLISHED" and sa.child_installed}

    def ike_counts(self) -> tuple[int, int]:
        """(IKE_SAs, half-open ones) in the client charon: VICI ``stats``, no listing."""
        with self.charon.vici() as s:
            ikesas = s.stats()["ikesas"]
        return int(ikesas["total"]), int(ikesas["half-open"])

    def connect(self, indexes: Sequence[int], batch: int = 50, log: Any = None, timeout: float = 40) -> list[int]:
        """Load and initiate these clients, ``batch`` at a time, each batch waited for (until the
        client charon holds that many more IKE_SAs, none half-open: listing every SA after each
        batch made 10,000 clients quadratic); a client not up after all batches is retried once.
        Returns those that never came up."""
        self.load(indexes)
        failed: list[int] = []
        for attempt in range(2):
            todo = list(indexes) if attempt == 0 else failed
            if attempt:
                self.terminate(todo)
            for k in range(0, len(todo), batch):
                chunk = todo[k:k + batch]
                before = self.ike_counts()[0]
                self._initiate(chunk)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    total, half_open = self.ike_counts()
                    if total >= before + len(chunk) and not half_open:
                        break
                    time.sleep(0.1)
            up = self.up()
            failed = [i for i in todo if client_name(i) not in up]
            if log is not None:
                log(f"      connect: {len(indexes) - len(failed)}/{len(indexes)} up (attempt {attempt + 1})")
            if not failed:
                break
        self.members += [i for i in indexes if i not in failed]
        return failed

    def terminate(self, indexes: Sequence[int]) -> None:
        """Tear these clients' IKE_SAs down locally (before a retry)."""
        s = self._session(30)
        try:
            for i in indexes:
                with contextlib.suppress(vici.exception.CommandException):
                    for _ in s.terminate({"ike": client_name(i), "force": "yes", "timeout": "-1"}):
                        pass
        finally:
            s.transport.close()

    def connect_all(self, log: Any = None) -> None:
        failed = self.connect(list(range(self.size)), log=log)
        if failed:
            raise RuntimeError(f"{len(failed)} of {self.size} fleet clients could not connect: "
                               f"{[client_name(i) for i in failed[:10]]}")

    def join(self, count: int) -> list[int]:
        """``count`` new clients connect (from the spare addresses); returns their indexes."""
        if self._next + count > self.size + self.spare:
            raise RuntimeError("no spare client addresses left")
        new = list(range(self._next, self._next + count))
        self._next += count
        self.connect(new)
        return new

    def snapshot(self) -> dict[str, ClientSA]:
        """Client name -> what it holds (one list-sas of the client charon). A client that
        holds more than one IKE_SA (after a REDIRECT its old one lingers in DELETING, its DELETE
        unanswered) is represented by its newest ESTABLISHED one with an installed CHILD_SA."""
        from ipsec_vip.vici_session import Vici

        out: dict[str, ClientSA] = {}
        rank: dict[str, tuple[bool, int]] = {}
        with Vici(self.charon.uri, timeout=60) as v:
            events = v.stream("list-sas", "list-sa", {"noblock": "yes"})
        for event in events:
            for name, b in event.items():
                kids = [ch for ch in (b.get("child-sas") or {}).values() if ch.get("state") == "INSTALLED"]
                key = (b.get("state") == "ESTABLISHED" and bool(kids), int(b.get("uniqueid", 0)))
                if name in rank and rank[name] > key:
                    continue
                rank[name] = key
                vips = b.get("local-vips") or []
                out[name] = ClientSA(spis=(b.get("initiator-spi", ""), b.get("responder-spi", "")),
                                     state=b.get("state", ""), vip=vips[0] if vips else None,
                                     child_installed=bool(kids),
                                     bytes_in=sum(int(ch.get("bytes-in", 0)) for ch in kids),
                                     bytes_out=sum(int(ch.get("bytes-out", 0)) for ch in kids))
        return out

    def sample(self) -> list[int]:
        """The sampled clients: evenly spread over the fleet."""
        n = len(self.members)
        if n <= SAMPLE:
            return list(self.members)
        return [self.members[k * n // SAMPLE] for k in range(SAMPLE)]

    def sweep(self, vips: Sequence[str]) -> set[str]:
        """The virtual IPs through which an echo came back from the server."""
        p = lab.in_ns(self.netns, sys.executable, "-c", SWEEP, lab.SERVER_IP, *vips, timeout=120)
        return set(p.stdout.split())

    def round_trips(self, names: Sequence[str] | None = None) -> tuple[dict[str, ClientSA], list[str]]:
        """Send one echo through every client's tunnel; returns the snapshot taken after and the
        clients whose echo did not come back or whose CHILD_SA counters did not move both ways."""
        before = self.snapshot()
        names = list(before) if names is None else list(names)
        vips = [before[n].vip for n in names if n in before and before[n].vip]
        answered = self.sweep([v for v in vips if v])
        after = self.snapshot()
        bad = []
        for n in names:
            b, a = before.get(n), after.get(n)
            if (b is None or a is None or a.vip is None or a.vip not in answered or not a.child_installed
                    or (a.spis == b.spis and (a.bytes_in <= b.bytes_in or a.bytes_out <= b.bytes_out))):
                bad.append(n)
        return after, bad

    # ----------------------------------------------------------------------- probes
    def probe(self) -> Probe:
        """A probe through each sampled client's tunnel, following its virtual IP."""
        return Probe(self, [client_name(i) for i in self.sample()])

    def stop(self) -> None:
        """The client charon stopped (killed if it will not stop) and its directory removed."""
        try:
            self.charon.stop()
        except Exception:  # a charon slow to die with thousands of SAs: kill it, leave nothing behind
            with contextlib.suppress(Exception):
                self.charon.kill()
            shutil.rmtree(self.charon.base, ignore_errors=True)


class Probe:
    """A 20 ms UDP echo through each sampled client's tunnel, for the whole event; a thread
    follows each client's virtual IP (polling the client charon) and the probe re-binds."""

    def __init__(self, fleet: Fleet, names: Sequence[str], interval: float = 0.02) -> None:
        self.fleet, self.names = fleet, list(names)
        stamp = time.monotonic_ns()
        self.file = fleet.work / f"fleet-probe-{stamp}.txt"
        self.map = fleet.work / f"fleet-probe-{stamp}.map"
        self._vips: dict[int, str] = {}
        self._stop = threading.Event()
        self._follow()
        self.proc = subprocess.Popen([lab.IP, "netns", "exec", fleet.netns, sys.executable, "-c", PROBE,
                                      str(self.file), str(interval), lab.SERVER_IP, str(self.map)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        snap = self.fleet.snapshot()
        vips = {i: snap[n].vip for i, n in enumerate(self.names) if n in snap and snap[n].vip}
        if vips != self._vips:
            self._vips = {i: v for i, v in vips.items() if v}
            tmp = self.map.with_suffix(".tmp")
            tmp.write_text("".join(f"{i} {v}\n" for i, v in sorted(self._vips.items())))
            tmp.replace(self.map)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                self._follow()

    def answers(self) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {i: [] for i in range(len(self.names))}
        with contextlib.suppress(FileNotFoundError):
            for line in self.file.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    out[int(parts[0])].append(float(parts[1]))
        return out

    def wait_flowing(self, since: float, timeout: float = 30) -> None:
        """Every sampled client has had answers again after ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len([t for t in ts if t > since]) >= 3 for ts in self.answers().values()):
                return
            time.sleep(0.1)
        late = [self.names[i] for i, ts in self.answers().items() if len([t for t in ts if t > since]) < 3]
        raise TimeoutError(f"no traffic through {len(late)} sampled tunnels {timeout}s after the event: {late[:5]}")

    def gaps(self, since: float) -> tuple[list[float], list[float]]:
        """Per sampled client: its longest silence around ``since``, and when (seconds after
        ``since``) its traffic resumed after that silence."""
        gaps, resumed = [], []
        for got in self.answers().values():
            ts = [t for t in got if t > since - 1]
            if len(ts) < 2:
                gaps.append(float("inf"))
                resumed.append(float("inf"))
                continue
            worst = max(range(len(ts) - 1), key=lambda k: ts[k + 1] - ts[k])
            gaps.append(ts[worst + 1] - ts[worst])
            resumed.append(max(0.0, ts[worst + 1] - since))
        return gaps, resumed

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.proc.kill()
        self.proc.wait()


def duplicates(snap: dict[str, ClientSA]) -> list[str]:
    """Virtual IPs held by more than one client."""
    seen: dict[str, int] = {}
    for sa in snap.values():
        if sa.vip:
            seen[sa.vip] = seen.get(sa.vip, 0) + 1
    return sorted(v for v, k in seen.items() if k > 1)


# A redirected client's old IKE_SA lingers in DELETING on the one client charon (its DELETE goes
# unanswered) with its old virtual IP, which the new holder may give to another client: until it
# times out that client's echoes go astray. Real clients, each on its own machine, cannot meet
# this; a client that fails its round trip is tried again this many seconds later.
RECHECK_AFTER = 10.0


def check_event(fleet: Fleet, report: EventReport, before: dict[str, ClientSA], keep_ike: bool,
                join: int = 5) -> EventReport:
    """After an event: every client's IKE_SA (by SPIs) kept when ``keep_ike``, a round trip
    through every tunnel, no virtual IP held twice; then ``join`` new clients connect and must
    get addresses nobody holds and carry traffic too."""
    after, bad = fleet.round_trips()
    if bad:  # once more, later: see RECHECK_AFTER
        report.extra["round_trip_only_on_recheck"] = len(bad)
        time.sleep(RECHECK_AFTER)
        _, bad = fleet.round_trips(bad)
        report.extra["round_trip_only_on_recheck"] -= len(bad)
    report.no_round_trip = bad
    if keep_ike:
        report.lost_ike = sorted(n for n, b in before.items() if n not in after or after[n].spis != b.spis)
    else:
        report.lost_ike = sorted(n for n in before if n not in after or not after[n].child_installed)
    if join:
        held = {sa.vip for sa in after.values() if sa.vip}
        new = [client_name(i) for i in fleet.join(join)]
        snap, bad_new = fleet.round_trips(new)
        report.joined = join
        report.joined_ok = sum(1 for n in new if n in snap and snap[n].vip and snap[n].vip not in held
                               and n not in bad_new)
        after = snap
    report.duplicate_vips = duplicates(after)
    return report


# --------------------------------------------------------------------------- through Pacemaker
CLONE, PRIMITIVE, VIPS = "vpn-clone", "vpn", "vpn-vip"
_ESTABLISHED = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*<rw\|(\d+)> (?:inbound )?CHILD_SA rw\{\d+\} established")
_ACTIVATED = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*HA segment 1 activated")


def _wall(stamp: str) -> float:
    return datetime.datetime.combine(datetime.date.today(), datetime.time.fromisoformat(stamp)).timestamp()


def log_times(path: Path, pattern: re.Pattern[str], since_wall: float) -> list[tuple[float, str]]:
    """(wall-clock time, the pattern's second group or "") of each line of charon log ``path``
    matching ``pattern`` at or after ``since_wall`` (the lab's gateways log milliseconds)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if m:
                t = _wall(m.group(1))
                if t >= since_wall - 0.001:
                    out.append((t, m.group(2) if pattern.groups > 1 else ""))
    return out


_PCMK = re.compile(r"^\w{3} \d\d (\d\d:\d\d:\d\d\.\d{3}) \S+ pacemaker-controld .*(?:"
                   r"Initiating (\w+) operation vpn_\w+_0 (?:locally )?on (\S+) \|"
                   r"|Result of (\w+) operation for vpn on (\S+): )")


def pacemaker_ops(work: Path, nodes: Iterable[str], since_wall: float) -> dict[str, dict[str, float]]:
    """"op@node" -> {"start": when the DC initiated it, "end": when its result came} (wall
    clock) for the agent's (``vpn``) start/stop/promote/demote since ``since_wall``, from the
    nodes' Pacemaker logs."""
    out: dict[str, dict[str, float]] = {}
    for name in nodes:
        with contextlib.suppress(FileNotFoundError):
            for line in (work / name / "log" / "pacemaker" / "pacemaker.log").read_text(errors="replace").splitlines():
                m = _PCMK.match(line)
                if not m:
                    continue
                t = _wall(m.group(1))
                if t < since_wall:
                    continue
                if m.group(2) in ("start", "stop", "promote", "demote"):
                    out.setdefault(f"{m.group(2)}@{m.group(3)}", {}).setdefault("start", t)
                elif m.group(4) in ("start", "stop", "promote", "demote"):
                    out.setdefault(f"{m.group(4)}@{m.group(5)}", {}).setdefault("end", t)
    return out


def first_per_sa(events: list[tuple[float, str]]) -> dict[str, float]:
    """IKE_SA unique id -> the first time it logged the event."""
    out: dict[str, float] = {}
    for t, ike in events:
        out.setdefault(ike, t)
    return out


@dataclass
class FleetLab:
    """A Pacemaker pair (stateful: the promotable recipe of docs/stateful.md with the pool in
    the ha plugin; primitive: the handoff recipe of docs/handoff.md) and a fleet of N stock clients."""

    c: cluster.Cluster
    fleet: Fleet
    stateful: bool
    log: Any = print
    setup: dict[str, Any] = field(default_factory=dict)  # connect and sync time, charon memory per SA

    @classmethod
    def build(cls, n: int, stateful: bool, spare: int = 40, log: Any = print,
              charon_settings: str = FLEET_CHARON_SETTINGS) -> FleetLab:
        """``charon_settings``: charon options for both gateways (:func:`lab.cluster.gateway_strongswan`)."""
        c = cluster.Cluster.build(("gw1", "gw2"), ha=stateful, ha_pool=FLEET_POOL, charon_settings=charon_settings)
        fleet: Fleet | None = None
        try:
            conf = c.work / "swanctl.conf"
            conf.write_text(gateway_conf(stateful))
            conf.chmod(0o600)
            Fleet.server_route(lab.PREFIX + "srv")
            for node in c.nodes.values():
                route_gateway(node)
            fleet = Fleet.attach(lab.PREFIX + "lan", c.namespaces, c.work, n, spare)
            fl = cls(c, fleet, stateful, log)
            gw1 = c.nodes["gw1"]
            if stateful:
                for cmd in cluster.pcs_stateful_commands(str(conf), str(c.work / "fleet-cib.xml")):
                    gw1.on(*cmd)
                first = c.wait_any(VIPS)
                c.wait_promoted(CLONE, first)
            else:
                for cmd in cluster.pcs_commands(str(conf)):
                    gw1.on(*cmd)
                first = c.wait_any(VIPS)
            rss0 = {name: charon_rss_kb(node) for name, node in c.nodes.items()}
            t = time.monotonic()
            log(f"    connecting {n} stock clients to {first}")
            fleet.connect_all(log=log)
            fl.setup["connect_s"] = round(time.monotonic() - t, 1)
            log(f"    {n} clients up after {fl.setup['connect_s']} s")
            if stateful:
                fl.setup["synced_s"] = round(fl.wait_copies(fl.other(first), timeout=60 + n / 10)
                                             + fl.setup["connect_s"], 1)
            fl.setup["charon_kb_per_sa"] = {
                name: round((charon_rss_kb(node) - rss0[name]) / max(n, 1), 1) for name, node in c.nodes.items()}
            return fl
        except BaseException:  # interrupted or failed: nothing of the lab stays behind
            if fleet is not None:
                fleet.stop()
            c.destroy()
            raise

    def holder(self) -> str:
        where = self.c.locate(VIPS)
        if len(where) != 1:
            raise RuntimeError(f"the VIP runs on {where}")
        return where[0]

    def other(self, name: str) -> str:
        return next(n for n in self.c.nodes if n != name)

    def copies(self, node: str) -> int:
        """PASSIVE copies of fleet IKE_SAs with an installed CHILD_SA on ``node``."""
        return sum(1 for sa in self.c.nodes[node].sas() if sa["name"] == "rw" and sa.get("state") == "PASSIVE"
                   and any(ch.get("state") == "INSTALLED" for ch in (sa.get("child-sas") or {}).values()))

    def wait_copies(self, node: str, timeout: float = 120) -> float:
        """Seconds until ``node`` holds one copy per connected client (raises with the count otherwise)."""
        want, t0, have = len(self.fleet.members), time.monotonic(), -1
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(OSError, RuntimeError):
                have = self.copies(node)
                if have >= want:
                    return time.monotonic() - t0
            time.sleep(0.5)
        raise AssertionError(f"{node} holds {have} of {want} copies after {timeout:.0f}s")

    def event(self, kind: str, join: int = 5) -> EventReport:
        """One event through Pacemaker (stateful: standby, move, crash; primitive: move), measured
        with the sampled probes, checked over the whole fleet, then undone (unstandby / clear /
        reboot and rejoin) with the standby back in sync."""
        c, fleet = self.c, self.fleet
        src = self.holder()
        dst = self.other(src)
        n = len(fleet.members)
        before = fleet.snapshot()
        probe = fleet.probe()
        report = EventReport(f"{'stateful' if self.stateful else 'primitive'} {kind}", n)
        try:
            probe.wait_flowing(time.monotonic() - 5, timeout=30)
            t0, wall0 = time.monotonic(), time.time()
            arrival = cluster.VipArrival(c.nodes[dst])
            gw = c.nodes[dst]
            if kind == "standby":
                gw.on("pcs", "node", "standby", src)
            elif kind == "move":
                gw.on("pcs", "resource", "move", CLONE if self.stateful else PRIMITIVE, dst,
                      *(["--promoted"] if self.stateful else []), timeout=120)
            elif kind == "crash":
                c.crash(src)
            else:
                raise ValueError(kind)
            c.wait_located(VIPS, dst, timeout=120)
            if self.stateful:
                c.wait_promoted(CLONE, dst, timeout=120)
            report.vip_moved = arrival.wait(t0)
            with contextlib.suppress(TimeoutError):
                probe.wait_flowing(t0 + report.vip_moved, timeout=30)
            report.gaps, report.resumed = probe.gaps(t0)
        finally:
            probe.stop()
        self._rekey_times(report, dst, wall0, t0, n)
        check_event(fleet, report, before, keep_ike=self.stateful, join=join)
        self.log(f"    {report.summary()}")
        self._undo(kind, src, dst, report)
        return report

    def _rekey_times(self, report: EventReport, dst: str, wall0: float, t0: float, n: int) -> None:
        """From the new holder's charon log: when each CHILD_SA was (re)established after the
        event (seconds since it) and, in stateful mode, since the segment was taken."""
        log = self.c.work / dst / "charon.log"
        deadline = time.monotonic() + 30
        per_sa: dict[str, float] = {}
        while time.monotonic() < deadline:
            per_sa = first_per_sa(log_times(log, _ESTABLISHED, wall0))
            if len(per_sa) >= n:
                break
            time.sleep(0.5)
        times = sorted(per_sa.values())
        report.extra["established_after_s"] = [round(t - wall0, 3) for t in times]
        for key, span in pacemaker_ops(self.c.work, self.c.nodes, wall0).items():
            report.extra[key] = {k: round(v - wall0, 3) for k, v in span.items()}
        promote = report.extra.get(f"promote@{dst}", {}).get("start")
        if promote is not None and len(times) >= n:
            report.extra["all_rekeyed_after_promote_s"] = round(times[-1] - wall0 - promote, 3)
        if self.stateful:
            act = log_times(log, _ACTIVATED, wall0)
            if act:
                report.extra["segment_taken_after_s"] = round(act[0][0] - wall0, 3)

    def _undo(self, kind: str, src: str, dst: str, report: EventReport) -> None:
        c, gw = self.c, self.c.nodes[dst]
        t = time.monotonic()
        if kind == "standby":
            gw.on("pcs", "node", "unstandby", src)
        elif kind == "move":
            gw.on("pcs", "resource", "clear", CLONE if self.stateful else PRIMITIVE)
        elif kind == "crash":
            c.start_node(src)
            c.wait_ready()
            route_gateway(c.nodes[src])
        if self.stateful:
            self.wait_copies(src, timeout=120 + len(self.fleet.members) / 5)
            report.extra["back_in_sync_s"] = round(time.monotonic() - t, 3)
            report.extra["copies"] = f"{self.copies(src)}/{len(self.fleet.members)}"
        with contextlib.suppress(Exception):
            c.wait_located(VIPS, dst, timeout=30)

    def monitor_costs(self, runs: int = 10) -> dict[str, Any]:
        """The agent's recurring monitor as Pacemaker runs it, timed inside each node, per role
        (promoted / unpromoted, or started): ``median_ms`` of ``runs`` back to back (stateful: the
        cheap looks between two full ones), ``full_ms`` with every SA listed (OCF_CHECK_LEVEL 10,
        which a stateful monitor never skips), and ``mean_ms``, what one monitor costs on average at
        the recipe's intervals with a full look every LOOK_EVERY seconds (the digest included)."""
        from ipsec_vip import promotion

        out: dict[str, Any] = {}
        holder = self.holder()
        for name, node in self.c.nodes.items():
            if not node.alive:
                continue
            role = ("promoted" if name == holder else "unpromoted") if self.stateful else \
                ("started" if name == holder else "stopped")
            interval = 3000 if role == "promoted" else 2000
            env = [f"PYTHONPATH={self.c.work}/root/site", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                   "OCF_ROOT=/usr/lib/ocf", "OCF_RESOURCE_INSTANCE=vpn", f"OCF_RESKEY_vip={lab.VIP}",
                   f"OCF_RESKEY_config={self.c.work / 'swanctl.conf'}", f"OCF_RESKEY_CRM_meta_interval={interval}",
                   "OCF_RESKEY_CRM_meta_timeout=20000", f"OCF_RESKEY_CRM_meta_on_node={name}"]
            if self.stateful:
                env += ["OCF_RESKEY_CRM_meta_promotable=true"]
            timed = {}
            for key, level in (("median_ms", "0"), ("full_ms", "10")):
                p = node.on("env", "-i", *env, f"OCF_CHECK_LEVEL={level}", sys.executable, "-c", _TIME_MONITOR,
                            AGENT_IN_NODE, str(runs), check=False, timeout=300)
                times, codes = [], set()
                for line in p.stdout.split():
                    rc, ms = line.split(":")
                    codes.add(int(rc))
                    times.append(float(ms))
                timed[key] = round(sorted(times)[len(times) // 2], 1) if times else None
                timed.setdefault("rc", sorted(codes))
            every = math.ceil(promotion.LOOK_EVERY * 1000 / interval) if self.stateful else 1
            cheap, full = timed["median_ms"], timed["full_ms"]
            timed["mean_ms"] = round((full + (every - 1) * cheap) / every, 1) if cheap and full else None
            timed["full_every"] = every
            out[role] = timed
        return out

    def destroy(self) -> None:
        self.fleet.stop()
        self.c.destroy()


AGENT_IN_NODE = "/usr/lib/ocf/resource.d/ipsec-vip/strongswan"
# Runs the agent's monitor RUNS times (one warm-up first); prints "rc:ms" for each.
_TIME_MONITOR = r"""
import subprocess, sys, time
agent, runs = sys.argv[1], int(sys.argv[2])
subprocess.run([agent, "monitor"], capture_output=True)
for _ in range(runs):
    t = time.perf_counter()
    p = subprocess.run([agent, "monitor"], capture_output=True)
    print("%d:%.2f" % (p.returncode, (time.perf_counter() - t) * 1000))
"""


def charon_rss_kb(node: cluster.Node) -> int:
    """Resident memory of the node's charon, KiB."""
    status = node.on("cat", f"/proc/{node.charon_pid()}/status").stdout
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def route_gateway(node: cluster.Node, timeout: float = 20) -> None:
    """The fleet's range via the fleet namespace, on a gateway (again after its reboot: its
    routes went with it); waits until the node's front address exists."""
    deadline = time.monotonic() + timeout
    while True:
        p = node.on("ip", "route", "replace", FLEET_NET, "via", FLEET_LAN_IP, check=False)
        if p.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name}: no route to the fleet: {p.stderr.strip()}")
        time.sleep(0.1)
