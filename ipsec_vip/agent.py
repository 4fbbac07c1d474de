"""The actions of ``ocf:ipsec-vip:strongswan``: OCF semantics over :mod:`ipsec_vip.control`.

Probes (monitor with interval 0) answer 7 wherever this resource is not
started, whatever else is wrong; stop succeeds whenever nothing of ours can be
left running, even with a broken configuration or a dead charon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ipsec_vip import __version__, control, ocf
from ipsec_vip.action import Deadline
from ipsec_vip.errors import (
    OCF_DEGRADED,
    OCF_ERR_GENERIC,
    OCF_NOT_RUNNING,
    OCF_RUNNING_PROMOTED,
    OCF_SUCCESS,
    ConfigError,
    IpsecVipError,
    NotInstalledError,
    PermError,
    StateError,
    Unimplemented,
    ViciError,
    ViciUnreachable,
)
from ipsec_vip.log import log
from ipsec_vip.params import DEFAULT_CONFIG, DEFAULT_HA_FIFO, Params, parse
from ipsec_vip.state import StateDir
from ipsec_vip.vici_session import DEFAULT_SOCKET

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from ipsec_vip import hasync
    from ipsec_vip.promotion import Standing, Verdict
    from ipsec_vip.state import Record

    T = TypeVar("T")

DEFAULT_TIMEOUT = {"start": 30, "stop": 30, "monitor": 20, "validate-all": 20, "promote": 30, "demote": 30,
                   "notify": 20}
REPAIR_SPARE = 1.5  # seconds a standby's repair leaves of its monitor (the resync request, the exit)

META = ocf.MetaData(
    name="strongswan",
    version=__version__,
    shortdesc="strongSwan connections that follow a floating IP (VICI)",
    longdesc=(
        "Loads the strongSwan connections, secrets and pools that belong to a floating IP "
        "(VIP) into charon over VICI on the node that holds the VIP, and removes them when "
        "the resource stops. Colocate the VIP's IPaddr2 resource with it and order both its "
        "start and its stop before the VIP's (two orders, symmetrical=false, with "
        "start_without_vip=true), so that it is loaded when the VIP arrives and can hand the "
        "clients over before the VIP leaves. The connections come from a swanctl.conf-format "
        "file that the distribution's "
        "'swanctl --load-all' does not read (default /etc/ipsec-vip/swanctl.conf), so they "
        "are loaded only where the VIP is. Monitor checks that charon answers, that the "
        "connections are loaded and that the VIP is held; at OCF_CHECK_LEVEL 10 it also "
        "reports initiator connections without an established CHILD_SA as degraded. Stop "
        "never tells a client to reconnect while this node would still answer it: with "
        "handoff=redirect (default) it first drops new IKE_SA_INIT to the VIP here, then "
        "REDIRECTs each client to the VIP, so it reconnects through the next holder; SAs "
        "left here are terminated once the VIP is gone (nothing can be sent then). Created as "
        "a promotable clone (stateful mode, two nodes with strongSwan's ha plugin), every node "
        "loads the connections, the VIP's holder is promoted and takes over the synced SAs, so "
        "clients keep them across a move or a crash; colocate the VIP with the Promoted role and "
        "start it before the promote."
    ),
    parameters=(
        ocf.Parameter("vip", "Floating IP address",
                      "The VIP this resource follows, IPv4 or IPv6. A /prefix suffix is accepted and "
                      "ignored. Compared as a parsed address with the node's addresses.", required=True),
        ocf.Parameter("config", "swanctl.conf-format file",
                      "File (with include and 'name : template' references) holding the "
                      "connections, secrets and pools of this VIP. Keep it outside /etc/swanctl so "
                      "that 'swanctl --load-all' does not load it on every node.", default=DEFAULT_CONFIG),
        ocf.Parameter("connections", "Connection names",
                      "Names of the connections in config to load, separated by spaces or commas. "
                      "Empty: every connection whose local_addrs contains the VIP.", default=""),
        ocf.Parameter("vici_socket", "charon's VICI socket",
                      "Where charon's vici plugin listens, as unix:///path.", default=DEFAULT_SOCKET),
        ocf.Parameter("interface", "Interface of the VIP",
                      "If set, the VIP counts as held only on this interface.", default=""),
        ocf.Parameter("start_without_vip", "Load before the VIP arrives",
                      "Start also when this node does not hold the VIP yet: set it when this resource starts "
                      "before the VIP, as in the README's recipe. The connections are inert until the VIP "
                      "arrives, and no client retry can reach the new holder in the moment between the "
                      "VIP's arrival and the connections' loading, when charon would refuse it and a "
                      "strongSwan client would give up for good. Monitor then does not require the VIP "
                      "(the VIP's own monitor watches it). Off: start fails (1) without the VIP.",
                      default="false", type="boolean"),
        ocf.Parameter("fallback_connections", "Connections to the VIP from this node",
                      "Names of connections loaded by other means (e.g. a mesh node's tunnel to this VIP, "
                      "mesh-NET-to-vip) that this node initiates while it does not hold the VIP and "
                      "terminates when it takes the VIP: start terminates them, stop initiates them once "
                      "the VIP has left. Added to those the config names for its connections in its ipsec-vip section "
                      "(mesh-vips.conf does). Separated by spaces or commas; empty: none.", default=""),
        ocf.Parameter("handoff", "What stop does with the clients",
                      "Primitive mode: what stop does with the clients while this node still holds the VIP. "
                      "redirect: silently drop new IKE_SA_INIT to the VIP here (an nftables table "
                      "'inet ipsec_vip' of its own), unload the connections, then send each client an IKEv2 "
                      "REDIRECT to the VIP, so that its retry reaches the next holder one retransmit later "
                      "(needs the resource to stop before the VIP: colocate the VIP with this resource and "
                      "order 'start this then start VIP' and 'stop this then stop VIP', both "
                      "symmetrical=false). Clients that did not announce REDIRECT support are left to their "
                      "DPD and counted in the log. Without nft, as none, with a warning. "
                      "none: leave the clients to their DPD.", default="redirect"),
        ocf.Parameter("ha_fifo", "ha plugin control FIFO",
                      "Stateful mode only (the resource created as a promotable clone): the control FIFO of "
                      "charon's ha plugin (charon.plugins.ha.fifo_interface = yes), through which promote and "
                      "demote move the state-sync segment.", default=DEFAULT_HA_FIFO),
    ),
    actions=(
        ocf.Action("start", DEFAULT_TIMEOUT["start"]),
        ocf.Action("stop", DEFAULT_TIMEOUT["stop"]),
        ocf.Action("monitor", DEFAULT_TIMEOUT["monitor"], interval=10, depth=0),
        ocf.Action("monitor", DEFAULT_TIMEOUT["monitor"], interval=60, depth=10),
        ocf.Action("monitor", DEFAULT_TIMEOUT["monitor"], interval=9, depth=0, role="Promoted"),
        ocf.Action("promote", DEFAULT_TIMEOUT["promote"]),
        ocf.Action("demote", DEFAULT_TIMEOUT["demote"]),
        ocf.Action("notify", DEFAULT_TIMEOUT["notify"]),
        ocf.Action("validate-all", DEFAULT_TIMEOUT["validate-all"]),
        ocf.Action("meta-data", 5),
    ),
)


def _deadline(env: ocf.Env) -> Deadline:
    """Finish well inside Pacemaker's timeout: 80% of it, less 0.5 s for start-up."""
    total = (env.timeout_ms / 1000.0) if env.timeout_ms else DEFAULT_TIMEOUT.get(env.action, 20)
    return Deadline(max(total * 0.8 - 0.5, 0.5))


def _params(env: ocf.Env) -> Params:
    return parse(env.params)


def start(env: ocf.Env) -> int:
    params = _params(env)
    _judge_selection(env, params)
    if env.promotable:
        from ipsec_vip import hasync

        states, deadline = StateDir(), _deadline(env)
        log.info("%s", hasync.start(params, env.instance, states, deadline))
        # without notifications nobody tells the promoted node that this instance started: it
        # asks for the resync itself (the promoted node's next monitor answers); with them the
        # post-start notify resends, and a request too would sync every SA twice (5.9.8: two copies)
        _standing(env, states, deadline).started(hasync.sync_drops(params.vici_socket), ask=not env.notified)
    else:
        log.info("%s", control.start(params, env.instance, StateDir(), _deadline(env)))
    return OCF_SUCCESS


def stop(env: ocf.Env) -> int:
    try:
        params: Params | None = _params(env)
    except ConfigError as e:
        log.warning("stop with invalid parameters (%s): using the recorded state", e)
        params = None
    if env.promotable:  # the unload first: the attributes only with the time left after it
        from ipsec_vip import hasync

        states, deadline = StateDir(), _deadline(env)
        log.info("%s", hasync.stop(params, env.instance, states, deadline))
        _standing(env, states, deadline).stopped()
    else:
        log.info("%s", control.stop(params, env.instance, StateDir(), _deadline(env)))
    return OCF_SUCCESS


def promote(env: ocf.Env) -> int:
    from ipsec_vip import hasync

    _need_promotable(env)
    states, deadline = StateDir(), _deadline(env)
    done, held = hasync.promote(_params(env), env.instance, states, deadline)
    log.info("%s", done)
    _standing(env, states, deadline).promoted(held)
    return OCF_SUCCESS


def demote(env: ocf.Env) -> int:
    from ipsec_vip import hasync

    _need_promotable(env)
    try:
        params: Params | None = _params(env)
    except ConfigError as e:
        log.warning("demote with invalid parameters (%s): using the recorded state", e)
        params = None
    states, deadline = StateDir(), _deadline(env)
    log.info("%s", hasync.demote(params, env.instance, states, deadline))
    _standing(env, states, deadline).demoted()
    return OCF_SUCCESS


def notify(env: ocf.Env) -> int:
    """Post-start: the promoted instance resends its state to a peer that just started (clones
    created with notify=true; without, the starting instance asks through an attribute)."""
    from ipsec_vip import hasync

    if not env.promotable or (env.meta.get("notify_type"), env.meta.get("notify_operation")) != ("post", "start"):
        return OCF_SUCCESS
    me = env.meta.get("on_node", "")
    started = [n for n in env.meta.get("notify_start_uname", "").split() if n != me]
    if started:
        log.info("%s", hasync.resync_peer(_params(env), env.instance, StateDir(), _deadline(env)))
    return OCF_SUCCESS


def _need_promotable(env: ocf.Env) -> None:
    if not env.promotable:
        raise Unimplemented(f"{env.action} is for a promotable clone (stateful mode); this resource is a primitive")


def _standing(env: ocf.Env, states: StateDir, deadline: Deadline) -> Standing:
    """What the instance's marks and Pacemaker attributes become after an action: only an action
    run by Pacemaker (which names the node) has attributes."""
    from ipsec_vip.promotion import Standing

    return Standing(env.instance, states, env.meta.get("on_node", ""), deadline)


def _observe(env: ocf.Env, look: Callable[[Params, Record, StateDir, Deadline], T],
             ) -> tuple[StateDir, Deadline, T] | int:
    """What both monitors share: 7 wherever nothing of ours is started (a probe: also wherever
    nothing can be looked at), else ``look`` at the started instance under the shared lock."""
    try:
        params = _params(env)
    except ConfigError:
        if env.is_probe:
            return OCF_NOT_RUNNING
        raise
    states = StateDir()
    deadline = _deadline(env)
    try:
        if not states.started(env.instance):  # no lock, no record parsed: the common probe
            return OCF_NOT_RUNNING
        with states.lock(deadline.left(), shared=True):  # never see a start or stop half done
            record = control.read_record(params, env.instance, states)
            if record is None:
                return OCF_NOT_RUNNING
            return states, deadline, look(params, record, states, deadline)
    except (ViciError, StateError) as e:
        if env.is_probe:  # charon frozen or broken: a probe says "not running", never "failed"
            log.warning("probe: %s", e)
            return OCF_NOT_RUNNING
        raise


def monitor(env: ocf.Env) -> int:
    if env.promotable:
        return _monitor_stateful(env)
    seen = _observe(env, lambda params, record, _states, deadline:
                    control.check(params, record, env.check_level, deadline))
    if isinstance(seen, int):
        return seen
    health = seen[2]
    if not health.running:
        if env.is_probe:
            return OCF_NOT_RUNNING
        raise IpsecVipError(health.problems[0])
    if health.problems:
        raise IpsecVipError("; ".join(health.problems))
    if health.degraded:
        ocf.exit_reason("; ".join(health.degraded), os.environ)
        return OCF_DEGRADED
    return OCF_SUCCESS


def _monitor_stateful(env: ocf.Env) -> int:
    """7 not started, 0 unpromoted and healthy, 8 promoted and healthy, 1/9 broken; the promoted
    node publishes what it holds, a standby out of sync for long is repaired or reported
    (:func:`_keep_in_sync`, never failed), and the promotion score follows
    (:meth:`ipsec_vip.promotion.Standing.monitored`)."""
    from ipsec_vip import hasync, promotion

    def look(params: Params, record: Record, states: StateDir, deadline: Deadline,
             ) -> tuple[Standing, hasync.Status]:
        standing = _standing(env, states, deadline)
        basis = "" if promotion.promoted(states, env.instance) else standing.published()
        return standing, hasync.check(params, env.instance, record, states, env.check_level, deadline, basis,
                                      full=env.is_probe)

    seen = _observe(env, look)
    if isinstance(seen, int):
        return seen
    standing, status = seen[2]
    health = status.health
    if not health.running or health.problems:
        if env.is_probe and not health.running:
            return OCF_NOT_RUNNING
        raise IpsecVipError("; ".join(health.problems) or "not running")
    if status.looked:  # a look not given (charon too busy since the role changed) judges nothing
        _keep_in_sync(env, standing, standing.monitored(status.promoted, status.sync, status.digest, status.looked),
                      status)
    if health.degraded:
        ocf.exit_reason("; ".join(health.degraded), os.environ)
    return OCF_RUNNING_PROMOTED if status.promoted else OCF_SUCCESS


def _keep_in_sync(env: ocf.Env, standing: Standing, verdict: Verdict, status: hasync.Status) -> None:
    """What a monitor does about the sync: the promoted node answers a standby's request with one
    resync; a standby out of sync repairs itself where a resync can work (its copies destroyed,
    a resync asked for), else - a cut link, or MAX_REPAIRS in a row - is reported and keeps its
    lower promotion score; it never fails its monitor for it (a restart's resync was lost the
    same way again and again)."""
    from ipsec_vip import hasync, promotion

    states, deadline = standing.states, standing.attributes.deadline
    if verdict.resync_for:
        log.info("a standby asked for a resync: %s", hasync.resync_peer(_params(env), env.instance, states, deadline))
        standing.served(verdict.resync_for)
        return
    if not (verdict.out_of_sync or verdict.synced_again):
        return
    params = _params(env)
    drops = hasync.sync_drops(params.vici_socket)
    if verdict.synced_again:
        standing.synced(drops)
        return
    held = f"{status.sync.passive} copies" + (f" of the promoted node's {verdict.peer.sas} IKE_SAs"
                                              if verdict.peer and verdict.peer.sas is not None else "")
    if standing.should_repair(status.digest, drops):
        try:
            destroyed, found = hasync.empty_for_resync(params, env.instance, states, deadline, REPAIR_SPARE)
        except ViciError as e:
            log.warning("standby out of sync with the promoted node (%s): its repair stopped (%s); the next "
                        "monitor goes on", held, e)
            return
        if destroyed < found:
            log.warning("standby out of sync with the promoted node (%s): destroyed %d of its %d copies in this "
                        "monitor's time; the next monitor goes on, then asks for a resync", held, destroyed, found)
            return
        standing.repaired(drops)
        log.warning("standby out of sync with the promoted node for %.0fs (%s, %s sync datagrams dropped): "
                    "destroyed %d copies and asked for a resync (repair %d of %d)", promotion.OUT_OF_SYNC_AFTER,
                    held, "?" if drops is None else drops, destroyed, standing.repairs(), promotion.MAX_REPAIRS)
    else:
        why = (f"{promotion.MAX_REPAIRS} repairs did not bring it in sync" if
               standing.repairs() >= promotion.MAX_REPAIRS else "no sync has arrived since (sync link down?)")
        log.warning("standby not in sync with the promoted node (%s): %s; kept, with promotion score %d, "
                    "until syncs arrive again (ipsec-vip check: ha-sync)", held, why, promotion.SCORE_OUT_OF_SYNC)


def validate(env: ocf.Env) -> int:
    """Level 0: parameters and config only (pcs runs it on any node). Level 10: this host too."""
    params = _params(env)
    _judge_selection(env, params)
    if env.check_level >= 10:
        _validate_host(params, env)
    return OCF_SUCCESS


def _judge_selection(env: ocf.Env, params: Params) -> None:
    """What start and validate-all say of the VIP's selection: mobike warned about; in stateful
    mode a pool from the config refused (6), before anything is loaded."""
    from ipsec_vip.selection import mobike_warnings

    selected = control.select(params)
    for warning in mobike_warnings(selected):
        log.warning("%s", warning)
    if env.promotable:
        from ipsec_vip import hasync

        hasync.refuse_vici_pools(selected.pools, params.config)


def _validate_host(params: Params, env: ocf.Env) -> None:
    from ipsec_vip import charon
    from ipsec_vip.vici_session import Vici

    if not charon.installed():
        raise NotInstalledError("strongSwan's charon is not installed on this node")
    if params.interface and not os.path.exists(f"/sys/class/net/{params.interface}"):
        raise ConfigError(f"interface {params.interface} does not exist on this node")
    try:
        StateDir().ensure()
    except StateError as e:
        raise PermError(str(e)) from None
    try:
        with Vici(params.vici_socket, timeout=_deadline(env).left()) as v:
            v.request("version")
    except ViciError as e:  # validate-all answers 0, 4, 5 or 6 only
        detail = charon.explain_unreachable(params.vici_socket) if isinstance(e, ViciUnreachable) else str(e)
        raise NotInstalledError(detail) from None


HANDLERS: Mapping[str, ocf.Handler] = {
    "start": start,
    "stop": stop,
    "monitor": monitor,
    "validate-all": validate,
    "promote": promote,
    "demote": demote,
    "notify": notify,
}


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    code = ocf.run(META, HANDLERS, argv, environ)
    return code if code is not None else OCF_ERR_GENERIC
