"""Stateful mode: strongSwan's ``ha`` plugin driven by a Pacemaker promotable clone.

The ``ha`` plugin copies every IKE_SA and CHILD_SA to the other node of a pair. Which
node is active is a *segment*; with ``monitor = no`` only its control FIFO switches it:
``+1`` (take), ``-1`` (drop: the peer takes it at once), ``*1`` (resend this node's state
and rekey its CHILD_SAs, for a peer that lost its copies). Facts this module is built on
(measured on 5.9.8, see docs/stateful.md):

- Only an active (non-PASSIVE) SA syncs its deletion, and terminating a PASSIVE SA sends
  nothing to the client. So stop first drops the segment, then destroys its PASSIVE copies:
  nothing reaches the peer or the client, and the next start begins empty (one ``*1`` then
  gives exactly one copy; 5.9.8 makes a duplicate for every repeated sync).
- ESP sequence numbers are not synced: the new active node must rekey every CHILD_SA
  right after taking the segment, or the client's replay window drops its packets.
- 5.9.8 never deletes a rekeyed CHILD_SA of a PASSIVE IKE_SA: demote terminates the
  DELETED children first (destroyed locally, nothing sent; the destroy is synced).
- ``*1`` must be written on the *active* node only, once, after the peer loaded the
  connections (a sync for an unknown connection is dropped for good).

The plugin's FIFO reads one command per open (``ha_ctl.c``): :func:`send` writes one and
waits until the plugin has read it, so two commands never merge.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import termios
import time
from collections.abc import Iterable, Sequence

from ipsec_vip import control
from ipsec_vip import vip as vipmod
from ipsec_vip.errors import (
    ConfigError,
    FailedPromoted,
    IpsecVipError,
    NotInstalledError,
    ViciCommandError,
    ViciUnreachable,
)
from ipsec_vip.log import log
from ipsec_vip.params import DEFAULT_HA_FIFO, Params
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import Vici

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from ipsec_vip.runner import Result
else:
    from ipsec_vip.tuples import NamedTuple

SEGMENT = 1
CRM_ATTRIBUTE = "/usr/sbin/crm_attribute"
ATTRD_UPDATER = "/usr/sbin/attrd_updater"
PROMOTED = "promoted"  # the state-dir mark of a promoted instance
SCORE = "score"  # the state-dir mark caching the promotion score last set

# Promotion scores: the promoted node keeps the role (with stickiness), a standby holding
# synced copies comes next, one without any stays promotable (no clients at all, or the
# only node left) but never beats a healthy node in sync.
SCORE_PROMOTED = 100
SCORE_IN_SYNC = 50
SCORE_EMPTY = 5

_REKEY_WORKERS = 8


class Child(NamedTuple):
    uniqueid: str
    name: str
    state: str
    spis: str = ""  # "in/out": the same on the active SA and its synced copy


class IkeSa(NamedTuple):
    """One IKE_SA of our connections as ``list-sas`` shows it."""

    uniqueid: str
    conn: str
    state: str
    children: tuple[Child, ...]
    spis: str = ""  # "initiator/responder"

    @property
    def passive(self) -> bool:
        return self.state == "PASSIVE"

    @property
    def installed(self) -> list[Child]:
        return [c for c in self.children if c.state == "INSTALLED"]


class Sync(NamedTuple):
    """What this node holds of our connections' state."""

    active: int  # IKE_SAs this node serves (segment active here)
    passive: int  # synced copies waiting for a takeover
    passive_ready: int  # copies with an installed CHILD_SA (a takeover keeps their clients)

    @property
    def role(self) -> str:
        if self.active and not self.passive:
            return "active"
        if self.passive and not self.active:
            return "standby"
        return "mixed" if self.active else "empty"


# --------------------------------------------------------------------------- virtual-IP pools
def vici_pool_problem(pools: Iterable[str], config: str) -> tuple[str, str] | None:
    """Why the selected connections' pools defined in ``config`` (loaded over VICI) cannot stay
    correct in stateful mode, and the fix; None when there are none.

    On a takeover the ``ha`` plugin re-reserves each migrated client's virtual IP only in its own
    pools (``charon.plugins.ha.pools``, ``ha_attribute.c``); a VICI pool on the new holder knows
    nothing of those leases and hands them out again (measured: two clients, one address)."""
    names = sorted(set(pools))
    if not names:
        return None
    listed = ", ".join(names)
    what = "pool" if len(names) == 1 else "pools"
    problem = (f"stateful mode: {what} {listed} in {config} would be loaded over VICI, where a takeover does not "
               "see the leases that migrated with their clients (the new holder hands a migrated client's "
               "virtual IP out again)")
    fix = (f"define {listed} under charon.plugins.ha.pools in strongswan.conf on both nodes "
           f"({', '.join(f'{n} = <addresses>' for n in names)}) and remove {'it' if len(names) == 1 else 'them'} "
           f"from {config}'s pools section (the connections keep pools = {listed})")
    return problem, fix


def refuse_vici_pools(pools: Iterable[str], config: str) -> None:
    """Stateful start and validate-all: a pool from the agent's file is a configuration error (6)."""
    found = vici_pool_problem(pools, config)
    if found is not None:
        raise ConfigError(f"{found[0]}: {found[1]}")


# --------------------------------------------------------------------------- plugin and FIFO
def require_plugin(v: Any, timeout: float) -> None:
    """charon must have the ``ha`` plugin loaded (VICI ``stats`` lists plugins)."""
    plugins = v.request("stats", timeout=timeout).get("plugins", [])
    if "ha" not in plugins:
        raise NotInstalledError(
            "charon has no 'ha' plugin loaded (stateful mode needs it): install libcharon-extra-plugins, "
            "add 'ha' to charon's plugins and configure charon.plugins.ha (see docs/stateful.md)")


def check_fifo(path: str) -> None:
    """The plugin's control FIFO must exist and be a FIFO (not a file someone created)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotInstalledError(f"the ha plugin's control FIFO {path} is missing: set "
                                "charon.plugins.ha.fifo_interface = yes (and ha_fifo if it lives elsewhere)") from None
    except OSError as e:
        raise NotInstalledError(f"cannot use the ha plugin's control FIFO {path}: {e.strerror}") from None
    if not stat.S_ISFIFO(st.st_mode):
        raise NotInstalledError(f"{path} is not a FIFO: the ha plugin cannot be controlled through it "
                                "(remove it and restart charon)")


def send(path: str, command: str, timeout: float = 5.0) -> None:
    """Write one command (``+1``, ``-1``, ``*1``) and wait until the plugin has read it."""
    check_fifo(path)
    end = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: the plugin has no reader open (yet, or charon is gone)
                raise IpsecVipError(f"cannot write to the ha plugin's FIFO {path}: {e.strerror}") from None
            if time.monotonic() >= end:
                raise IpsecVipError(f"nobody reads the ha plugin's FIFO {path} (is charon with the ha plugin "
                                    "running?)") from None
            time.sleep(0.01)
    try:
        os.write(fd, (command + "\n").encode())
        while _unread(fd) and time.monotonic() < end:
            time.sleep(0.002)
        if _unread(fd):
            raise IpsecVipError(f"the ha plugin did not read {command!r} from {path} within {timeout:.0f}s")
    finally:
        os.close(fd)


def _unread(fd: int) -> int:
    """Bytes still in the pipe (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


# --------------------------------------------------------------------------- SAs
def ours(v: Any, conns: Iterable[str], timeout: float) -> list[IkeSa]:
    """IKE_SAs (with their children) of the given connections."""
    names = set(conns)
    out = []
    for event in v.stream("list-sas", "list-sa", {"noblock": "yes"}, timeout=timeout):
        for conn, body in event.items():
            if conn not in names or not isinstance(body, dict):
                continue
            children = tuple(Child(str(c.get("uniqueid", "")), str(c.get("name", "")), str(c.get("state", "")),
                                   f"{c.get('spi-in', '')}/{c.get('spi-out', '')}")
                             for c in (body.get("child-sas") or {}).values() if isinstance(c, dict))
            out.append(IkeSa(str(body.get("uniqueid", "")), conn, str(body.get("state", "")), children,
                             f"{body.get('initiator-spi', '')}/{body.get('responder-spi', '')}"))
    return out


def summary(sas: Sequence[IkeSa]) -> Sync:
    passive = [s for s in sas if s.passive]
    return Sync(active=len(sas) - len(passive), passive=len(passive),
                passive_ready=sum(1 for s in passive if s.installed))


def wait_states(v: Any, conns: Sequence[str], passive: bool, seconds: float) -> list[IkeSa]:
    """Poll until every IKE_SA of ours is PASSIVE (or none is); returns the last view."""
    end = time.monotonic() + seconds
    while True:
        sas = ours(v, conns, timeout=max(end - time.monotonic(), 1.0))
        if all(s.passive == passive for s in sas) or time.monotonic() >= end:
            return sas
        time.sleep(0.01)


def rekey_all(uri: str, sas: Sequence[IkeSa], seconds: float) -> int:
    """Rekey every installed CHILD_SA of ``sas``, concurrently; returns how many were queued.

    VICI ``rekey`` by child name queues one rekey job per matching CHILD_SA and charon's
    thread pool runs them in parallel; a ``child-id`` selector instead makes charon walk
    every IKE_SA for each call (1000 SAs: a million checkouts). So: one call per
    (connection, child name), those calls in parallel on their own VICI sessions.
    """
    from concurrent.futures import ThreadPoolExecutor

    pairs = sorted({(s.conn, c.name) for s in sas for c in s.installed})
    if not pairs:
        return 0

    def one(pair: tuple[str, str]) -> int:
        with Vici(uri, timeout=seconds) as v:
            try:
                return int(v.request("rekey", {"ike": pair[0], "child": pair[1]}, timeout=seconds).get("matches", 0))
            except ViciCommandError as e:
                if "no matching" in e.errmsg:
                    return 0
                raise IpsecVipError(f"charon refused to rekey CHILD_SAs {pair[1]} of {pair[0]}: {e.errmsg}; "
                                    "their clients recover only by their own means") from None

    with ThreadPoolExecutor(max_workers=min(_REKEY_WORKERS, len(pairs))) as pool:
        return sum(pool.map(one, pairs))


def terminate(v: Any, selector: dict[str, str], timeout: float) -> None:
    """Terminate one IKE_SA or CHILD_SA; one that vanished meanwhile is fine."""
    try:
        v.stream("terminate", "control-log", {**selector, "force": "yes", "timeout": "-1"}, timeout=timeout)
    except ViciCommandError as e:
        if "no matching" not in e.errmsg:
            raise


def drop_deleted_children(v: Any, sas: Sequence[IkeSa], timeout: float) -> int:
    """Terminate children a rekey left behind (DELETED): a PASSIVE IKE_SA would keep them forever."""
    stale = [c for s in sas for c in s.children if c.state == "DELETED"]
    for child in stale:
        terminate(v, {"child-id": child.uniqueid}, timeout)
    return len(stale)


# --------------------------------------------------------------------------- in sync?
UNSYNCED = "unsynced"  # the state-dir mark: since when (time.time()) the standby's copies differ
DIGEST = "digest"  # the state-dir mark: the digest the promoted node published last
OUT_OF_SYNC_AFTER = 15.0  # seconds a difference must last (a sync, or the next publish, takes a moment)


def digest(sas: Sequence[IkeSa]) -> str:
    """What the active node holds, or its copy on the standby (same SPIs): a short hash.

    Children count in any state but DELETED/DESTROYING: after a rekey the active node lists the
    old CHILD_SA as REKEYED for 5 s (delete_rekeyed_delay) while the copy, which never sees state
    changes, lists it INSTALLED until the deletion is synced."""
    import hashlib

    items = sorted(f"{s.spis}:{','.join(sorted(c.spis for c in s.children if c.state not in _GONE))}"
                   for s in sas)
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


_GONE = ("DELETED", "DESTROYING")


def _attribute(instance: str) -> str:
    return "ipsec-vip-sync-" + instance.split(":", 1)[0]


def publish(instance: str, value: str | None) -> None:
    """The promoted node's digest as a transient node attribute (pacemaker-attrd; None deletes)."""
    _attrd(["-n", _attribute(instance), *(["-D"] if value is None else ["-U", value, "-p"])])


def peer_digest(instance: str, me: str) -> str | None:
    """The digest another node published, or None (none published, attrd not answering)."""
    out = _attrd(["-n", _attribute(instance), "-Q", "-A"])
    for line in (out or "").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        host, value = fields.get("host", "").strip('"'), fields.get("value", "").strip('"')
        if host and host != me and value:
            return value
    return None


def _attrd(args: list[str]) -> str | None:
    """attrd_updater's output, None when it failed (logged, except a query's)."""
    r = _run([ATTRD_UPDATER, *args])
    if r is None or r.returncode != 0:
        if r is not None and "-Q" not in args:
            log.warning("attrd_updater failed: %s", (r.stderr or r.stdout).strip()[:200])
        return None
    return str(r.stdout)


def _run(argv: list[str]) -> Result | None:
    """The project's runner (fixed environment: with the agent's OCF_RESKEY_CRM_meta_on_node,
    attrd_updater would answer a query for this node only, even with --all)."""
    from ipsec_vip.errors import CommandError
    from ipsec_vip.runner import Runner

    try:
        return Runner().run(argv, timeout=10)
    except CommandError as e:
        log.warning("%s", e)
        return None


def in_sync(states: StateDir, instance: str, mine: str, peer: str | None) -> bool:
    """Compare the standby's copies with the promoted node's digest; a difference lasting
    OUT_OF_SYNC_AFTER seconds means the standby missed syncs (link down, peer's plugin gone)."""
    if peer is None or peer == mine:
        states.set_mark(instance, UNSYNCED, None)
        return True
    since = states.mark(instance, UNSYNCED)
    try:
        first = float(since) if since else None
    except ValueError:
        first = None
    if first is None:
        states.set_mark(instance, UNSYNCED, repr(time.time()))
        return True
    return time.time() - first < OUT_OF_SYNC_AFTER


# --------------------------------------------------------------------------- promotion score
def score_for(promoted: bool, sync: Sync) -> int:
    if promoted:
        return SCORE_PROMOTED
    return SCORE_IN_SYNC if sync.passive_ready else SCORE_EMPTY


def set_score(instance: str, score: int | None) -> None:
    """The clone's promotion score on this node (``crm_attribute --promotion``); None deletes."""
    argv = [CRM_ATTRIBUTE, f"--promotion={instance.split(':', 1)[0]}", "-q"]
    r = _run(argv + (["-D"] if score is None else ["-v", str(score)]))
    if r is not None and r.returncode != 0:
        log.warning("crm_attribute --promotion failed: %s", (r.stderr or r.stdout).strip()[:200])


# --------------------------------------------------------------------------- the actions
def start(params: Params, instance: str, states: StateDir, deadline: control.Deadline) -> str:
    """Every node: the plugin and its FIFO must be there, then load as the primitive does
    (with or without the VIP: the standby needs the connections by name for the sync)."""
    buffer = ""
    try:
        with Vici(params.vici_socket, timeout=deadline.left()) as v:
            require_plugin(v, deadline.left())
        check_fifo(params.ha_fifo)
        buffer = keep_sync_whole(params.vici_socket)
    except ViciUnreachable:
        pass  # control.start explains it
    return buffer + control.start(params._replace(start_without_vip=True, handoff="none"), instance, states, deadline)


def keep_sync_whole(vici_uri: str) -> str:
    """Enlarge the receive buffer of charon's ha sync socket (before any resync is asked for);
    returns what was done for the start's summary. Where the host does not allow it, a warning:
    a small fleet syncs fine without, and ``ipsec-vip check`` reports the buffer and its drops."""
    from ipsec_vip import hasock

    try:
        sock = hasock.enlarge(hasock.charon_pid(vici_uri))
    except hasock.SyncSocketError as e:
        log.warning("%s: a resync of many SAs may lose datagrams, and the standby copies", e)
        return ""
    return f"ha sync socket receive buffer {sock.rcvbuf} bytes ({sock.drops} drops so far); "


def promote(params: Params, instance: str, states: StateDir, deadline: control.Deadline) -> str:
    """Take the segment here, then rekey every synced CHILD_SA of ours (ESP sequence numbers
    are not synced). Refused, with nothing changed, where the VIP is not held."""
    if not vipmod.held(params.vip, params.interface):
        raise IpsecVipError(f"this node does not hold VIP {params.vip}: not promoted, nothing changed "
                            "(order the VIP's start before the promote)")
    with states.lock(deadline.left(cap=3600)):
        record = states.read(instance)
        if record is None:
            raise IpsecVipError("promote before start: the connections are not loaded here")
        check_fifo(params.ha_fifo)
        uri, _ = control.target(record, params)
        t0 = time.monotonic()
        with Vici(uri, timeout=deadline.left()) as v:
            send(params.ha_fifo, f"+{SEGMENT}", timeout=deadline.left())
            states.set_mark(instance, PROMOTED, "1")
            sas = wait_states(v, record.conns, passive=False, seconds=deadline.left(cap=5))
            still = [s for s in sas if s.passive]
            if still:
                raise IpsecVipError(f"segment taken but {len(still)} IKE_SA(s) stayed PASSIVE")
            queued = rekey_all(uri, sas, deadline.left())
    return (f"segment {SEGMENT} active here: {len(sas)} synced IKE_SA(s), rekey of {queued} CHILD_SA(s) queued "
            f"in {time.monotonic() - t0:.2f}s")


def demote(params: Params | None, instance: str, states: StateDir, deadline: control.Deadline,
           record: Record | None = None) -> str:
    """Drop the segment here (the peer takes it at once); the SAs stay as PASSIVE copies."""
    with states.lock(deadline.left(cap=3600)):
        return _demote(params, instance, states, deadline, record)


def _demote(params: Params | None, instance: str, states: StateDir, deadline: control.Deadline,
            record: Record | None) -> str:
    record = record or control.read_record(params, instance, states)
    fifo = params.ha_fifo if params else DEFAULT_HA_FIFO
    promoted = states.mark(instance, PROMOTED) is not None
    if record is None:
        states.set_mark(instance, PROMOTED, None)
        return "not started here"
    uri, _ = control.target(record, params)
    try:
        with Vici(uri, timeout=deadline.left()) as v:
            sas = ours(v, record.conns, deadline.left())
            if not promoted and all(s.passive for s in sas):
                return "not promoted here"
            dropped = drop_deleted_children(v, sas, deadline.left())
            send(fifo, f"-{SEGMENT}", timeout=deadline.left())
            states.set_mark(instance, PROMOTED, None)
            sas = wait_states(v, record.conns, passive=True, seconds=deadline.left(cap=5))
    except ViciUnreachable:
        states.set_mark(instance, PROMOTED, None)
        return "charon is not running: nothing to demote"
    active = [s for s in sas if not s.passive]
    if active:
        raise IpsecVipError(f"segment dropped but {len(active)} IKE_SA(s) are still active here")
    return f"segment {SEGMENT} dropped: {len(sas)} IKE_SA(s) kept as passive copies ({dropped} stale children removed)"


def stop(params: Params | None, instance: str, states: StateDir, deadline: control.Deadline) -> str:
    """Demote if promoted, destroy the PASSIVE copies (nothing reaches peer or client), unload."""
    with states.lock(deadline.left(cap=3600)):
        record = control.read_record(params, instance, states)
        done = []
        if record is not None:
            done.append(_demote(params, instance, states, deadline, record))
            uri, _ = control.target(record, params)
            try:
                with Vici(uri, timeout=deadline.left()) as v:
                    copies = [s for s in ours(v, record.conns, deadline.left()) if s.passive]
                    for sa in copies:
                        terminate(v, {"ike-id": sa.uniqueid}, deadline.left())
                done.append(f"{len(copies)} passive copies destroyed")
            except ViciUnreachable:
                pass
        states.set_mark(instance, PROMOTED, None)
        states.set_mark(instance, SCORE, None)
    done.append(control.stop(params, instance, states, deadline))
    return "; ".join(done)


def resync_peer(params: Params, instance: str, states: StateDir, deadline: control.Deadline) -> str:
    """On the active node, after the peer started: resend our state to it (``*1``), once."""
    with states.lock(deadline.left(cap=3600)):
        record = states.read(instance)
        if record is None or states.mark(instance, PROMOTED) is None:
            return "not promoted here: the active node resyncs"
        with Vici(control.target(record, params)[0], timeout=deadline.left()) as v:
            sas = ours(v, record.conns, deadline.left())
        if any(s.passive for s in sas):
            raise IpsecVipError("promoted but holding PASSIVE IKE_SAs: not resyncing from a passive node")
        send(params.ha_fifo, f"*{SEGMENT}", timeout=deadline.left())
    return f"resync of {len(sas)} IKE_SA(s) sent to the peer"


class Status(NamedTuple):
    promoted: bool
    sync: Sync
    health: control.Health
    digest: str = ""


def check(params: Params, instance: str, record: Record, states: StateDir, level: int,
          deadline: control.Deadline) -> Status:
    """Health of a started stateful instance; a promoted one that cannot serve raises FailedPromoted."""
    promoted = states.mark(instance, PROMOTED) is not None
    health = control.check(params._replace(start_without_vip=True), record, level, deadline)
    if not health.running or health.problems:
        if promoted:
            raise FailedPromoted((health.problems or ["charon is not running"])[0])
        return Status(promoted, Sync(0, 0, 0), health)
    uri, interface = control.target(record, params)
    with Vici(uri, timeout=deadline.left()) as v:
        sas = ours(v, record.conns, deadline.left())
    sync = summary(sas)
    if promoted:
        if not vipmod.held(params.vip, interface):
            raise FailedPromoted(f"promoted but VIP {params.vip} is not held by this node")
        if sync.passive:
            raise FailedPromoted(f"promoted but {sync.passive} IKE_SA(s) are PASSIVE here: the peer took the "
                                 "segment (both nodes promoted?)")
    return Status(promoted, sync, health, digest([s for s in sas if s.passive != promoted]))
