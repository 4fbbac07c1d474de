"""Bring a VIP's connections up and down in charon, and judge their health.

This is what the agent's start/stop/monitor and the CLI's up/down do; the OCF
meaning of the outcomes (probes, exit codes) is the agent's business.

Stop never sends a DELETE while this node holds the VIP: a strongSwan client
that receives one re-initiates at once, reaches this node again, is refused and
gives up for good. With the VIP still here, stop unloads the connections (no new
SA can be made) and leaves the existing SAs to carry traffic until the VIP
moves; once the VIP is gone, stop terminates them locally (the DELETE cannot
leave) so nothing of ours is left.
"""

from __future__ import annotations

import contextlib

from ipsec_vip import charon, fallback, sas
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline, target
from ipsec_vip.errors import (
    ConfigError,
    IpsecVipError,
    NotInstalledError,
    StateError,
    ViciCommandError,
    ViciUnreachable,
)
from ipsec_vip.log import log
from ipsec_vip.params import Params
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import Vici, message_size

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ipsec_vip.selection import Selection

_MAX_MESSAGE = 480 * 1024  # charon drops VICI requests over 512 KiB


class NotHeld(IpsecVipError):
    """Start refused: the VIP is not on this node."""


class Health:
    """Outcome of a status check of one started instance."""

    def __init__(self, running: bool, problems: list[str] | None = None) -> None:
        self.running = running
        self.problems: list[str] = problems or []
        self.degraded: list[str] = []


def select(params: Params) -> Selection:
    """Parse the config and pick this VIP's connections, secrets and pools."""
    from ipsec_vip import selection, swanctl  # parsing is only needed by start/validate

    return selection.select(swanctl.load(params.config), params.vip, params.connections)


@contextlib.contextmanager
def _session(uri: str, deadline: Deadline) -> Iterator[Vici]:
    v = Vici(uri, timeout=deadline.left())
    try:
        yield v
    finally:
        v.close()


def _unreachable(uri: str) -> IpsecVipError:
    if not charon.installed():
        return NotInstalledError("strongSwan's charon is not installed on this node")
    return ViciUnreachable(charon.explain_unreachable(uri))


def keep_ike_whole(vici_uri: str) -> None:
    """Enlarge the receive buffers of charon's IKE sockets (:func:`ipsec_vip.hasock.enlarge_ike`):
    after a handoff or a takeover a fleet's datagrams arrive at once. Where the host does not
    allow it, a warning: ``net.core.rmem_default`` does the same (docs/handoff.md)."""
    from ipsec_vip import hasock

    try:
        hasock.enlarge_ike(hasock.charon_pid(vici_uri))
    except hasock.SyncSocketError as e:
        log.warning("%s: a fleet arriving at once may lose datagrams to charon's IKE sockets (set "
                    "net.core.rmem_default = %d instead, docs/handoff.md)", e, hasock.IKE_RCVBUF)


def start(params: Params, instance: str, states: StateDir, deadline: Deadline, *, vip_coming: bool = True) -> str:
    """Load the selection into charon; returns a one-line summary. Idempotent. The fallback
    connections are ended unless the VIP is neither here nor ``vip_coming`` (a watch daemon that
    keeps the connections loaded on every node: :func:`vip_moved` follows the VIP then)."""
    from ipsec_vip import handoff  # start and stop only: off the monitor's path

    selection = select(params)
    held = vipmod.held(params.vip, params.interface)
    if not held and not params.start_without_vip:
        where = f" on {params.interface}" if params.interface else ""
        raise NotHeld(f"this node does not hold VIP {params.vip}{where}; nothing loaded")
    with states.lock(deadline.left(cap=3600)), _session(params.vici_socket, deadline) as v:
        try:
            loaded = set(v.request("get-conns", timeout=deadline.left())["conns"])
        except ViciUnreachable:
            raise _unreachable(params.vici_socket) from None
        keep_ike_whole(params.vici_socket)
        handoff.undrop(str(params.vip))  # a handoff's rule (stop ran here before): accept clients again
        record = states.read(instance)
        if record is not None and set(record.conns) <= loaded and set(selection.connections) <= loaded:
            return f"already started: {len(record.conns)} connections loaded"
        before_secrets = set(v.request("get-shared", timeout=deadline.left()).get("keys", []))
        before_pools = set(v.request("get-pools", timeout=deadline.left()))
        record = _record(params, selection)
        cleared = handoff.clear_leftovers(v, record, deadline.left())
        if cleared:
            log.info("terminated %d IKE_SA(s) left over from an earlier handoff (VIP not held here: "
                     "nothing sent)", cleared)
        states.write(instance, record)  # before loading: a start cut short is undone by stop
        try:
            load(v, selection, deadline)
        except IpsecVipError:
            undo = Record(vip=record.vip, config=record.config,
                          conns=[c for c in record.conns if c not in loaded],
                          secrets=[s for s in record.secrets if s not in before_secrets],
                          pools=[p for p in record.pools if p not in before_pools])
            with contextlib.suppress(IpsecVipError):
                unload(v, undo, states.others(instance), deadline, terminate=True)
            states.remove(instance)
            raise
        now = set(v.request("get-conns", timeout=deadline.left())["conns"])
        missing = [c for c in record.conns if c not in now]
        if missing:
            raise IpsecVipError(f"charon accepted but does not list connection(s) {', '.join(missing)}")
        if held or vip_coming:
            fallback.taking_vip(v, tuple(record.fallbacks), deadline)
    inert = "" if held else " (inert until the VIP arrives)"
    return (f"loaded {len(record.conns)} connections, {len(record.secrets)} secrets, "
            f"{len(record.pools)} pools for VIP {params.vip}{inert}")


def load(v: Vici, selection: Selection, deadline: Deadline) -> None:
    """Load ``selection`` into charon: secrets, then pools, then connections (swanctl's order),
    the connections batched under charon's message limit. A refusal is a ConfigError naming it."""
    for secret in selection.secrets:
        _command(v, "load-shared", secret, f"secret {secret['id']}", deadline)
    for name, body in selection.pools.items():
        _command(v, "load-pool", {name: body}, f"pool {name}", deadline)
    batch: dict[str, Any] = {}
    size = 0
    for name, body in selection.connections.items():
        n = message_size({name: body})
        if batch and size + n > _MAX_MESSAGE:
            _load_conns(v, batch, deadline)
            batch, size = {}, 0
        batch[name] = body
        size += n
    if batch:
        _load_conns(v, batch, deadline)


def _load_conns(v: Vici, batch: dict[str, Any], deadline: Deadline) -> None:
    try:
        v.request("load-conn", batch, timeout=deadline.left())
    except ViciCommandError as e:
        if len(batch) > 1:  # find the one charon refuses, for the message
            for name, body in batch.items():
                _command(v, "load-conn", {name: body}, f"connection {name}", deadline)
        what = f"connection {next(iter(batch))}" if len(batch) == 1 else f"{len(batch)} connections"
        raise ConfigError(f"charon refused {what}: {e.errmsg}") from None


def _command(v: Vici, command: str, message: dict[str, Any], what: str, deadline: Deadline) -> None:
    try:
        v.request(command, message, timeout=deadline.left())
    except ViciCommandError as e:
        raise ConfigError(f"charon refused {what}: {e.errmsg}") from None


def read_record(params: Params | None, instance: str, states: StateDir) -> Record | None:
    """The instance's record; if it is damaged, what the configuration says it would load."""
    try:
        return states.read(instance)
    except StateError as e:
        if params is None:
            raise
        log.warning("%s; falling back to the configuration", e)
        try:
            return _record(params, select(params))
        except IpsecVipError:
            raise e from None


def _record(params: Params, selection: Selection) -> Record:
    """What an instance with ``params`` loads, as its state record says it."""
    from ipsec_vip.selection import initiators

    return Record(vip=str(params.vip), config=params.config, conns=list(selection.connections),
                  secrets=[s["id"] for s in selection.secrets], pools=list(selection.pools),
                  initiators=initiators(selection.connections), vici_socket=params.vici_socket,
                  interface=params.interface or "", handoff=params.handoff,
                  fallbacks=list(dict.fromkeys((*params.fallback_connections, *selection.fallbacks))))


def vip_moved(params: Params, instance: str, states: StateDir, deadline: Deadline, held: bool) -> str:
    """The VIP came or went while our connections stay loaded (start_without_vip under watch): on
    arrival end the fallback connections; on departure terminate our SAs (silently: the VIP, the
    only address they can send from, is gone) and start the fallback connections."""
    record = read_record(params, instance, states)
    if record is None:
        return "not started here"
    uri, _ = target(record, params)
    with states.lock(deadline.left(cap=3600)), _session(uri, deadline) as v:
        try:
            if held:
                fallback.taking_vip(v, tuple(record.fallbacks), deadline)
                return f"VIP {record.vip} arrived: connections stay loaded" + (
                    f", ended {', '.join(record.fallbacks)}" if record.fallbacks else "")
            n = sas.clear(v, record.conns, deadline.left())
            fallback.left_vip(v, tuple(record.fallbacks), deadline)
        except ViciUnreachable:
            raise _unreachable(uri) from None
    return (f"VIP {record.vip} left: connections stay loaded, terminated {n} SA(s) (nothing sent)"
            + (f", initiated {', '.join(record.fallbacks)}" if record.fallbacks else ""))


def stop(params: Params | None, instance: str, states: StateDir, deadline: Deadline, keep_sas: bool = False) -> str:
    """Unload what the instance loaded; terminate its SAs once the VIP is gone (``keep_sas``: never,
    stateful mode leaves its passive copies to the next start)."""
    from ipsec_vip import handoff  # start and stop only: off the monitor's path

    record = read_record(params, instance, states)
    if record is None:
        if params is not None and not vipmod.held(params.vip, params.interface) and handoff.undrop(str(params.vip)):
            return "not started here; removed the drop rule a handoff left"
        return "not started here"
    vip_addr = vipmod.parse_vip(record.vip)
    uri, _ = target(record, params)
    if params is not None:  # a parameter added since start counts too
        record = record._replace(fallbacks=list(dict.fromkeys((*record.fallbacks, *params.fallback_connections))))
    with states.lock(deadline.left(cap=3600)), _session(uri, deadline) as v:
        try:
            loaded = set(v.request("get-conns", timeout=deadline.left())["conns"])
        except ViciUnreachable:
            states.remove(instance)
            return f"charon is not running on {uri}: nothing of ours can be loaded"
        here = vipmod.held(vip_addr)
        with handoff.during_stop(v, record, instance, states, here, deadline) as hand:
            hand.sas = left = unload(v, record, states.others(instance), deadline, terminate=not (here or keep_sas),
                                     loaded=loaded, leases_kept=hand.active, tally=not keep_sas)
            if not here:  # else the sweeper starts them once the VIP has left
                fallback.left_vip(v, tuple(record.fallbacks), deadline)
            still = set(v.request("get-conns", timeout=deadline.left())["conns"]) & set(record.conns)
            if still:
                raise IpsecVipError(f"connection(s) {', '.join(sorted(still))} still loaded after unload")
        states.remove(instance)
    if hand.summary:
        return f"unloaded {len(record.conns)} connections; {hand.summary}"
    if keep_sas:
        return f"unloaded {len(record.conns)} connections, left their SAs in charon"
    if here and left:
        return (f"unloaded {len(record.conns)} connections; VIP {record.vip} still held here, so "
                f"{left} SA(s) are left to carry traffic until it moves (no DELETE sent)")
    return f"unloaded {len(record.conns)} connections, terminated {left} SA(s)"


def unload(v: Vici, record: Record, others: list[Record], deadline: Deadline, *, terminate: bool,
           loaded: set[str] | None = None, leases_kept: bool = False, tally: bool = True) -> int:
    """Unload the record's conns (those in ``loaded``, if given), then (``terminate``) their SAs,
    then the secrets and pools no record in ``others`` uses.

    Returns the number of IKE_SAs terminated (terminate) or left up (not terminate; 0 without
    ``tally``: listing 1000 SAs is a cost on a path Pacemaker may wait for).
    """
    for name in record.conns:
        if loaded is not None and name not in loaded:
            continue
        try:
            v.request("unload-conn", {"name": name}, timeout=deadline.left())
        except ViciCommandError as e:
            if "not found" not in e.errmsg:
                raise
    if terminate:
        count = sas.clear(v, record.conns, deadline.left())
    else:
        count = len(sas.ours(v, record.conns, deadline.left())) if tally else 0
    used_secrets = {s for o in others for s in o.secrets}
    used_pools = {p for o in others for p in o.pools}
    for sid in record.secrets:
        if sid not in used_secrets:
            v.request("unload-shared", {"id": sid}, timeout=deadline.left())
    for pool in record.pools:
        if pool in used_pools:
            continue
        try:
            v.request("unload-pool", {"name": pool}, timeout=deadline.left())
        except ViciCommandError as e:
            if "not found" not in e.errmsg:
                (log.info if leases_kept else log.warning)(
                    "pool %s stays loaded: %s%s", pool, e.errmsg,
                    " (the redirected clients' SAs: cleared once the VIP has left)" if leases_kept else "")
    return count


def check(params: Params, record: Record, level: int, deadline: Deadline) -> Health:
    """Health of a started instance: charon answers, our conns loaded, VIP held (unless the
    resource starts before its VIP: then loaded-without-VIP is its normal inert state, and the
    VIP is IPaddr2's to monitor); at level >= 10 also that initiator connections have an
    established CHILD_SA."""
    health = Health(running=True)
    uri, interface = target(record, params)
    with _session(uri, deadline) as v:
        try:
            loaded = set(v.request("get-conns", timeout=deadline.left())["conns"])
        except ViciUnreachable:
            return Health(running=False, problems=[charon.explain_unreachable(uri)])
        missing = [c for c in record.conns if c not in loaded]
        if len(missing) == len(record.conns):
            return Health(running=False, problems=[
                f"none of the {len(record.conns)} connections are loaded in charon (charon restarted?)"])
        if missing:
            health.problems.append(f"connection(s) vanished from charon: {', '.join(missing[:10])}")
        if not params.start_without_vip and not vipmod.held(params.vip, interface):
            health.problems.append(f"connections loaded but VIP {params.vip} is not held by this node")
        if level >= 10 and record.initiators:
            up = {s.conn for s in sas.ours(v, record.initiators, deadline.left())
                  if s.state == "ESTABLISHED" and s.installed}
            down = [c for c in record.initiators if c not in up]
            if down:
                health.degraded.append(f"initiator connection(s) not established: {', '.join(down[:10])}")
    return health
