"""Stateful mode: strongSwan's ``ha`` plugin driven by a Pacemaker promotable clone.

The ``ha`` plugin copies every IKE_SA and CHILD_SA to the other node of a pair. Which
node is active is a *segment*; with ``monitor = no`` only its control FIFO switches it:
``+1`` (take), ``-1`` (drop: the peer takes it at once), ``*1`` (resend this node's state
and rekey its CHILD_SAs, for a peer that lost its copies). Facts this module is built on
(measured on 5.9.8, see docs/stateful.md):

- Only an active (non-PASSIVE) SA syncs its deletion, and terminating a PASSIVE SA sends
  nothing to the client. So stop drops the segment and returns (a standby's promote on the
  peer waits for it); the next start destroys the PASSIVE copies it left before anything asks
  for a resync: nothing reaches the peer or the client, and every start begins empty (one
  ``*1`` then gives exactly one copy; 5.9.8 makes a duplicate for every repeated sync).
- ESP sequence numbers are not synced: the new active node must rekey every CHILD_SA
  right after taking the segment, or the client's replay window drops its packets.
- 5.9.8 never deletes a rekeyed CHILD_SA of a PASSIVE IKE_SA: demote terminates the
  DELETED children first (destroyed locally, nothing sent; the destroy is synced).
- ``*1`` must be written on the *active* node only, once, after the peer loaded the
  connections (a sync for an unknown connection is dropped for good).
- The plugin's pools (``charon.plugins.ha.pools``, the only ones a takeover keeps right) hand
  out addresses only where the segment is active: a client reaching the VIP on a node not yet
  promoted (after a crash, between the VIP's arrival and the promote) got INTERNAL_ADDRESS_FAILURE
  and no CHILD_SA. So an unpromoted instance drops new IKE_SA_INIT to the VIP silently (the
  handoff's nftables rule): the client's retransmit reaches the promoted node.

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

from ipsec_vip import control, promotion, sas
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline, target
from ipsec_vip.errors import (
    ConfigError,
    FailedPromoted,
    IpsecVipError,
    NotInstalledError,
    ViciError,
    ViciUnreachable,
)
from ipsec_vip.log import log
from ipsec_vip.params import DEFAULT_HA_FIFO, Params
from ipsec_vip.sas import IkeSa, Sync
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import Vici

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from ipsec_vip.tuples import NamedTuple

SEGMENT = 1
WITNESS_WITHIN = 2.0  # seconds for the sample SA's state: a charon slower than that is too busy to list all
LOOK_SPARE = 2.0  # seconds a full look leaves of its monitor (publish, answer a resync request)
DEMOTE_SPARE = 2.0  # seconds a demote keeps from listing its SAs for the segment's drop (FIFO, no VICI)


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
def require_plugin(v: Vici, timeout: float) -> None:
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
    """Write one command (``+1``, ``-1``, ``*1``, or the no-op ``=1``) and wait until the plugin has read it.

    What is written to is what was opened, checked on the open descriptor: never through a
    symlink (O_NOFOLLOW), only a FIFO owned by root (or by us), so a file swapped in after the
    check (a race in a writable directory) is never written to."""
    check_fifo(path)
    end = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
            break
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IpsecVipError(f"{path} became a symbolic link: not writing to it") from None
            if e.errno != errno.ENXIO:  # ENXIO: the plugin has no reader open (yet, or charon is gone)
                raise IpsecVipError(f"cannot write to the ha plugin's FIFO {path}: {e.strerror}") from None
            if time.monotonic() >= end:
                raise IpsecVipError(f"nobody reads the ha plugin's FIFO {path} (is charon with the ha plugin "
                                    "running?)") from None
            time.sleep(0.01)
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid not in (0, os.geteuid()):
            raise IpsecVipError(f"{path} is no longer a FIFO of root's (replaced?): not writing to it")
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
def wait_states(v: Vici, conns: Sequence[str], passive: bool, seconds: float) -> list[IkeSa]:
    """Poll until every IKE_SA of ours is PASSIVE (or none is); returns the last view."""
    end = time.monotonic() + seconds
    while True:
        seen = sas.ours(v, conns, timeout=max(end - time.monotonic(), 1.0))
        if all(s.passive == passive for s in seen) or time.monotonic() >= end:
            return seen
        time.sleep(0.01)


def drop_deleted_children(v: Vici, seen: Sequence[IkeSa], timeout: float) -> int:
    """Terminate children a rekey left behind (DELETED): a PASSIVE IKE_SA would keep them forever."""
    stale = [c for s in seen for c in s.children if c.state == "DELETED"]
    for child in stale:
        sas.terminate(v, {"child-id": child.uniqueid}, timeout)
    return len(stale)


# --------------------------------------------------------------------------- the actions
def start(params: Params, instance: str, states: StateDir, deadline: Deadline) -> str:
    """Every node: the plugin and its FIFO must be there; the sync socket gets its buffer and the
    copies an earlier stop left are destroyed; then load as the primitive does (with or without
    the VIP: the standby needs the connections by name for the sync)."""
    done = ""
    try:
        with Vici(params.vici_socket, timeout=deadline.left()) as v:
            require_plugin(v, deadline.left())
        check_fifo(params.ha_fifo)
        done = keep_sync_whole(params.vici_socket)
        destroyed = destroy_leftovers(params, instance, states, deadline)
        if destroyed:
            done += f"{destroyed} passive copies left by the last stop destroyed; "
    except ViciUnreachable:
        pass  # control.start explains it
    done += control.start(params._replace(start_without_vip=True, handoff="none"), instance, states, deadline)
    if not promotion.promoted(states, instance):  # a repeated start of the promoted instance admits them
        admit_new_clients(str(params.vip), False)
    return done


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


def promote(params: Params, instance: str, states: StateDir, deadline: Deadline) -> tuple[str, int]:
    """Take the segment here, then rekey every synced CHILD_SA of ours (ESP sequence numbers
    are not synced); returns what was done and how many IKE_SAs charon holds now. Refused, with
    nothing changed, where the VIP is not held.

    Nothing here lists the SAs (10,000 of them took longer than a promote may): the plugin has
    taken the segment once it reads the next command (:func:`settle`), and the rekey goes by
    the connections' child names; a SA left PASSIVE is the monitor's to see."""
    if not vipmod.held(params.vip, params.interface):
        raise IpsecVipError(f"this node does not hold VIP {params.vip}: not promoted, nothing changed "
                            "(order the VIP's start before the promote)")
    with states.lock(deadline.left(cap=3600)):
        record = states.read(instance)
        if record is None:
            raise IpsecVipError("promote before start: the connections are not loaded here")
        check_fifo(params.ha_fifo)
        uri, _ = target(record, params)
        t0 = time.monotonic()
        with Vici(uri, timeout=deadline.left()) as v:
            children = sas.child_names(v, record.conns, deadline.left())
            send(params.ha_fifo, f"+{SEGMENT}", timeout=deadline.left())
            promotion.set_promoted(states, instance, True)
            settle(params.ha_fifo, deadline.left(cap=3600))  # all the promote's time: 10,000 copies took 85 s
            held = ike_sa_count(v, deadline)
            try:
                queued = sas.rekey_all(uri, children, deadline.left())
            finally:
                admit_new_clients(str(params.vip), True)  # the pools serve here now
    return (f"segment {SEGMENT} active here: {held} IKE_SA(s) held, rekey of {queued} CHILD_SA(s) queued "
            f"in {time.monotonic() - t0:.2f}s"), held


def settle(path: str, timeout: float) -> None:
    """Return once the plugin has carried out the last command sent: it reads the next one only
    then (``ha_ctl.c`` reads, acts, and reopens), so a no-op it has read says so."""
    send(path, f"={SEGMENT}", timeout=timeout)


def demote(params: Params | None, instance: str, states: StateDir, deadline: Deadline,
           record: Record | None = None) -> str:
    """Drop the segment here (the peer takes it at once); the SAs stay as PASSIVE copies."""
    with states.lock(deadline.left(cap=3600)):
        return _demote(params, instance, states, deadline, record)


def _demote(params: Params | None, instance: str, states: StateDir, deadline: Deadline,
            record: Record | None) -> str:
    record = record or control.read_record(params, instance, states)
    fifo = params.ha_fifo if params else DEFAULT_HA_FIFO
    promoted = promotion.promoted(states, instance)
    if record is None:
        promotion.set_promoted(states, instance, False)
        return "not started here"
    uri, _ = target(record, params)
    dropped = -1  # the segment not dropped yet

    def drop_segment() -> None:
        send(fifo, f"-{SEGMENT}", timeout=deadline.left())
        promotion.set_promoted(states, instance, False)
        admit_new_clients(record.vip, False)

    try:
        with Vici(uri, timeout=deadline.left()) as v:
            seen = sas.ours(v, record.conns, max(deadline.left() - DEMOTE_SPARE, 0.1))
            if not promoted and all(s.passive for s in seen):
                return "not promoted here"
            dropped = drop_deleted_children(v, seen, max(deadline.left() - DEMOTE_SPARE, 0.1))
            drop_segment()
            seen = wait_states(v, record.conns, passive=True, seconds=deadline.left(cap=5))
    except ViciUnreachable:
        promotion.set_promoted(states, instance, False)
        return "charon is not running: nothing to demote"
    except ViciError as e:  # charon too busy to answer (a connect storm at 5,000 SAs): the FIFO needs no VICI
        if dropped < 0:
            drop_segment()
        log.warning("segment %s dropped; its IKE_SAs not checked: %s", SEGMENT, e)
        return f"segment {SEGMENT} dropped (charon did not answer: its IKE_SAs not checked)"
    active = [s for s in seen if not s.passive]
    if active:  # clients arriving while the segment moved (seen at 10,000): not worth a failed demote or stop,
        # which Pacemaker answers with a recovery (or, for a stop, fencing); the VIP leaves with the demote
        log.warning("segment %s dropped but %d IKE_SA(s) are still active here (clients connecting while it "
                    "moved); left to charon", SEGMENT, len(active))
    return (f"segment {SEGMENT} dropped: {len(seen) - len(active)} IKE_SA(s) kept as passive copies ({dropped} "
            "stale children removed)")


def stop(params: Params | None, instance: str, states: StateDir, deadline: Deadline) -> str:
    """Demote if promoted, then unload and return: the PASSIVE copies stay in charon until the
    next start destroys them (a standby's promote on the peer waits for this stop; destroying
    1000 copies here took 1.3-1.5 s)."""
    with states.lock(deadline.left(cap=3600)):
        record = control.read_record(params, instance, states)
        done = []
        if record is not None:
            done.append(_demote(params, instance, states, deadline, record))
        promotion.set_promoted(states, instance, False)
    done.append(control.stop(params, instance, states, deadline, keep_sas=True))
    if record is not None:
        admit_new_clients(record.vip, True)
    return "; ".join(done)


def admit_new_clients(vip: str, admit: bool) -> None:
    """Accept new IKE_SA_INIT to the VIP here (promoted), or drop them silently (started, not
    promoted: the ha pools would answer INTERNAL_ADDRESS_FAILURE). Without nft, a warning."""
    from ipsec_vip import droprule

    try:
        if admit:
            droprule.remove(vipmod.parse_vip(vip))
        else:
            droprule.add(vipmod.parse_vip(vip))
    except droprule.NftUnavailable as e:
        if not admit:
            log.warning("new clients of VIP %s that reach this node before it is promoted will get no virtual "
                        "IP (INTERNAL_ADDRESS_FAILURE): cannot drop them until then: %s", vip, e)


def destroy_leftovers(params: Params, instance: str, states: StateDir, deadline: Deadline) -> int:
    """A start on a node whose instance is not started: destroy the PASSIVE copies of our
    connections an earlier stop left (nothing reaches the peer or the client: only an active SA
    syncs its deletion), so that the resync that follows gives exactly one copy of each SA
    (5.9.8 adds a copy for every repeated sync). Active SAs are never touched."""
    with states.lock(deadline.left(cap=3600)):
        if states.started(instance):
            return 0  # a repeated start: the copies are the live ones
        return destroy_copies(params.vici_socket, list(control.select(params).connections), deadline)[0]


def destroy_copies(uri: str, conns: Sequence[str], deadline: Deadline, spare: float | None = None,
                   ) -> tuple[int, int]:
    """Terminate our PASSIVE IKE_SAs (nothing reaches the peer or the client: only an active SA
    syncs its deletion), so that the next resync gives exactly one copy; returns how many were
    destroyed, and of how many. With ``spare``, it stops while ``spare`` seconds of the action
    are left (one terminate each: thousands of them outlast a monitor)."""
    done = 0
    with Vici(uri, timeout=deadline.left()) as v:
        copies = [s for s in sas.ours(v, conns, deadline.left()) if s.passive]
        for sa in copies:
            if spare is not None and deadline.left() <= spare:
                break
            sas.terminate(v, {"ike-id": sa.uniqueid}, deadline.left())
            done += 1
    return done, len(copies)


def empty_for_resync(params: Params, instance: str, states: StateDir, deadline: Deadline, spare: float,
                     ) -> tuple[int, int]:
    """A started standby out of sync: destroy its copies so that the resync it asks for gives one
    copy of each SA (5.9.8 adds a copy for every repeated sync); never on a promoted node. As many
    as the action's time allows, keeping ``spare`` seconds: (destroyed, of how many)."""
    with states.lock(deadline.left(cap=3600)):
        record = states.read(instance)
        if record is None or promotion.promoted(states, instance):
            return 0, 0
        return destroy_copies(target(record, params)[0], record.conns, deadline, spare)


def sync_drops(vici_uri: str) -> int | None:
    """Datagrams charon's ha sync socket dropped since it opened (None: cannot tell)."""
    from ipsec_vip import hasock

    try:
        return hasock.find(hasock.charon_pid(vici_uri)).drops
    except hasock.SyncSocketError:
        return None


def resync_peer(params: Params, instance: str, states: StateDir, deadline: Deadline) -> str:
    """On the active node, after the peer started: resend our state to it (``*1``), once. Not
    from a node whose last look found PASSIVE SAs (both promoted?); no listing of its own: at
    10,000 SAs one outlasted the monitor that answers a standby's request."""
    with states.lock(deadline.left(cap=3600)):
        record = states.read(instance)
        if record is None or not promotion.promoted(states, instance):
            return "not promoted here: the active node resyncs"
        look = promotion.last_look(states, instance)
        if look is not None and look.promoted and look.sync.passive:
            raise IpsecVipError("promoted but holding PASSIVE IKE_SAs: not resyncing from a passive node")
        send(params.ha_fifo, f"*{SEGMENT}", timeout=deadline.left())
    held = f"{look.sync.active} IKE_SA(s) at the last look" if look is not None and look.promoted else "our IKE_SAs"
    return f"resync of {held} sent to the peer"


def _full_look(v: Vici, conns: Sequence[str], last: promotion.Look | None, promoted: bool, total: int, basis: str,
               deadline: Deadline) -> promotion.Look:
    """Every SA of ours listed (with all the action's time left), the digest taken. A charon too
    busy to list them in time (a resync and a connect storm at 3000 SAs took more than 10 s; the
    first look after a move of 10,000, 13 s) but answering the health check is not a failed
    monitor: the last look stands, with a warning; with none in this role, a look *not given*
    (``at`` 0, no digest): nothing is published or judged from it, and its cost keeps the
    next try off for the duty cycle (:func:`ipsec_vip.promotion.look_stands`)."""
    t0 = time.monotonic()
    try:
        seen = sas.ours(v, conns, max(deadline.left(cap=3600) - LOOK_SPARE, 0.1))
    except ViciError as e:
        if last is None or last.promoted != promoted or not last.at:
            log.warning("%s: our SAs not listed since this node's role changed; the sync is not judged until they "
                        "are", e)
            return promotion.Look(0.0, promoted, total, basis, Sync(0, 0, 0), "", "", time.monotonic() - t0,
                                  time.time())
        log.warning("%s: the last look at our SAs (%.0fs old) stands", e, time.time() - last.at)
        return last._replace(cost=max(last.cost, time.monotonic() - t0), tried=time.time())  # not again at once
    return promotion.Look(time.time(), promoted, total, basis, sas.summary(seen),
                          promotion.digest([s for s in seen if s.passive != promoted]),
                          f"{seen[0].uniqueid}:{seen[0].state}" if seen else "", time.monotonic() - t0)


def _witness(v: Vici, conns: Sequence[str], sample: str, deadline: Deadline) -> str:
    """The sample SA of the last look as it is now, "uniqueid:state" ("" none, or gone; "?" not told)."""
    uniqueid = sample.partition(":")[0]
    if not uniqueid:
        return ""
    try:
        now = sas.ours(v, conns, deadline.left(cap=WITNESS_WITHIN), ike_id=uniqueid)
    except ViciError:  # not told: a full look decides, if the duty cycle allows one (look_stands)
        return "?"
    return f"{now[0].uniqueid}:{now[0].state}" if now else ""


def ike_sa_count(v: Vici, deadline: Deadline) -> int:
    """How many IKE_SAs charon holds, of every connection (VICI ``stats``; -1: not told)."""
    try:
        return int(v.request("stats", timeout=deadline.left())["ikesas"]["total"])
    except (KeyError, TypeError, ValueError):
        return -1


class Status(NamedTuple):
    promoted: bool
    sync: Sync
    health: control.Health
    digest: str = ""
    looked: float = 0.0  # time.time() of the full look the sync and digest come from (0: none given)


def check(params: Params, instance: str, record: Record, states: StateDir, level: int, deadline: Deadline,
          basis: str = "", full: bool = False) -> Status:
    """Health of a started stateful instance; a promoted one that cannot serve raises FailedPromoted.

    Our SAs are listed (the digest taken) when ``full``, at ``level`` 10, or when the last look no longer
    stands (:func:`ipsec_vip.promotion.look_stands`; ``basis``: on a standby, what the promoted
    node published); otherwise charon is asked only how many IKE_SAs it holds."""
    promoted = promotion.promoted(states, instance)
    health = control.check(params._replace(start_without_vip=True), record, level, deadline)
    if not health.running or health.problems:
        if promoted:
            raise FailedPromoted((health.problems or ["charon is not running"])[0])
        return Status(promoted, Sync(0, 0, 0), health)
    uri, interface = target(record, params)
    basis = "" if promoted else basis
    with Vici(uri, timeout=deadline.left()) as v:
        total = ike_sa_count(v, deadline)
        look = promotion.last_look(states, instance)
        if full or level >= 10 or look is None or not promotion.look_stands(
                look, promoted, total, basis, _witness(v, record.conns, look.sample, deadline), time.time()):
            look = _full_look(v, record.conns, look, promoted, total, basis, deadline)
            promotion.keep_look(states, instance, look)
    if promoted:
        if not vipmod.held(params.vip, interface):
            raise FailedPromoted(f"promoted but VIP {params.vip} is not held by this node")
        if look.sync.passive:
            raise FailedPromoted(f"promoted but {look.sync.passive} IKE_SA(s) are PASSIVE here: the peer took the "
                                 "segment (both nodes promoted?)")
    return Status(promoted, look.sync, health, look.digest, look.at)
