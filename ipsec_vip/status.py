"""What ``ipsec-vip status`` reports: each VIP configured on this node, whether it is
held here, its connections in charon and their SAs, and each charon's version and uptime.

The VIPs come from the agent's state records (instances started here), from the watch
configs and from the command line. The report is a plain JSON-able dict (schema in
README.md, ``schema`` bumped on incompatible change); rendering is the command's job.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple

from ipsec_vip import control, watchconf
from ipsec_vip import vip as vipmod
from ipsec_vip.errors import IpsecVipError, NetlinkError
from ipsec_vip.params import Params, parse
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import Vici

log = logging.getLogger("ipsec-vip")

SCHEMA = 1


class Target(NamedTuple):
    """One VIP to report on, and where we learnt of it."""

    source: str  # "resource" (a state record), "watch" (a watch config) or "command-line"
    name: str  # resource instance or watch config name; "" for the command line
    params: Params | None  # None when the watch config is broken (see error)
    record: Record | None = None
    error: str | None = None


def _from_record(name: str, rec: Record, default_socket: str) -> Target:
    try:
        params = parse({"vip": rec.vip, "config": rec.config, "vici_socket": rec.vici_socket or default_socket,
                        "interface": rec.interface})
    except IpsecVipError as e:
        return Target("resource", name, None, rec, str(e))
    return Target("resource", name, params, rec)


def targets(states: StateDir, explicit: Params | None = None, watch_dir: str = watchconf.WATCH_DIR,
            default_socket: str = "") -> list[Target]:
    """The VIPs to report: ``explicit`` alone if given, else every state record and watch config."""
    records = states.records()
    out = [_from_record(name, rec, default_socket or (explicit.vici_socket if explicit else ""))
           for name, rec in records.items()]
    if explicit is not None:
        mine = [t for t in out if t.params is not None and t.params.vip == explicit.vip]
        return mine or [Target("command-line", "", explicit)]
    for name in watchconf.names(watch_dir):
        try:
            params = watchconf.load(watchconf.path_of(name, watch_dir))
        except IpsecVipError as e:
            out.append(Target("watch", name, None, None, str(e)))
            continue
        if not any(t.params is not None and t.params.vip == params.vip
                   and os.path.realpath(t.params.config) == os.path.realpath(params.config) for t in out):
            out.append(Target("watch", name, params))
    return out


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _since_seconds(since: str) -> int | None:
    """charon's 'since' (local time, ``%b %d %H:%M:%S %Y``) -> seconds up."""
    try:
        return max(int(time.time() - time.mktime(time.strptime(since, "%b %d %H:%M:%S %Y"))), 0)
    except (ValueError, OverflowError):
        return None


def _charon(uri: str, timeout: float) -> tuple[dict[str, Any], set[str], list[dict[str, Any]]]:
    """Version, uptime and counters of one charon; its loaded conns and IKE_SAs."""
    info: dict[str, Any] = {"socket": uri, "reachable": False, "error": None, "daemon": None, "version": None,
                            "uptime_seconds": None, "since": None, "ike_sas": None, "half_open": None,
                            "ha_plugin": None}
    try:
        with Vici(uri, timeout=timeout) as v:
            version = v.request("version")
            stats = v.request("stats")
            loaded = set(v.request("get-conns").get("conns", []))
            sas = v.stream("list-sas", "list-sa", {"noblock": "yes"})
    except IpsecVipError as e:
        info["error"] = str(e)
        return info, set(), []
    uptime = stats.get("uptime") or {}
    ikesas = stats.get("ikesas") or {}
    info.update(reachable=True, daemon=version.get("daemon"), version=version.get("version"),
                since=uptime.get("since"), uptime_seconds=_since_seconds(str(uptime.get("since", ""))),
                ike_sas=_int(ikesas.get("total")), half_open=_int(ikesas.get("half-open")),
                ha_plugin="ha" in (stats.get("plugins") or []))
    return info, loaded, sas


def _child(body: dict[str, Any]) -> dict[str, Any]:
    return {"name": body.get("name"), "id": _int(body.get("uniqueid")), "state": body.get("state"),
            "mode": body.get("mode"), "protocol": body.get("protocol"), "encap": body.get("encap") == "yes",
            "local_ts": list(body.get("local-ts", [])), "remote_ts": list(body.get("remote-ts", [])),
            "bytes_in": _int(body.get("bytes-in")), "bytes_out": _int(body.get("bytes-out")),
            "installed_seconds": _int(body.get("install-time"))}


def _ike(body: dict[str, Any]) -> dict[str, Any]:
    children = body.get("child-sas") or {}
    return {"id": _int(body.get("uniqueid")), "state": body.get("state"), "version": _int(body.get("version")),
            "local_host": body.get("local-host"), "local_port": _int(body.get("local-port")),
            "local_id": body.get("local-id"), "remote_host": body.get("remote-host"),
            "remote_port": _int(body.get("remote-port")), "remote_id": body.get("remote-id"),
            "remote_eap_id": body.get("remote-eap-id"), "remote_vips": list(body.get("remote-vips", [])),
            "initiator_spi": body.get("initiator-spi"), "responder_spi": body.get("responder-spi"),
            "established_seconds": _int(body.get("established")),
            "children": [_child(c) for c in children.values() if isinstance(c, dict)]}


def _held(t: Target) -> tuple[bool | None, str | None]:
    """(held here?, why unknown): None when there are no parameters or the kernel did not answer."""
    if t.params is None:
        return None, None
    try:
        return vipmod.held(t.params.vip, t.params.interface), None
    except NetlinkError as e:
        return None, str(e)


def _conn_names(t: Target) -> tuple[list[str], str | None]:
    """The target's connections: what its record loaded, else what its config selects."""
    if t.record is not None:
        return list(t.record.conns), None
    if t.params is None:
        return [], t.error
    try:
        return list(control.select(t.params).connections), None
    except IpsecVipError as e:
        return [], str(e)


def report(found: list[Target], default_socket: str, timeout: float = 5.0) -> dict[str, Any]:
    """The status report of ``found`` (JSON-able; see README for the schema)."""
    sockets = [t.params.vici_socket for t in found if t.params is not None] or [default_socket]
    charons: dict[str, tuple[dict[str, Any], set[str], list[dict[str, Any]]]] = {}
    for uri in dict.fromkeys(sockets):
        charons[uri] = _charon(uri, timeout)
    drops = _drop_rules()
    vips = []
    for t in found:
        uri = t.params.vici_socket if t.params is not None else default_socket
        info, loaded, sas = charons.get(uri, ({}, set(), []))
        names, error = _conn_names(t)
        held, held_error = _held(t)
        conns: list[dict[str, Any]] = []
        for name in names:
            ikes = [_ike(body) for sa in sas for n, body in sa.items() if n == name and isinstance(body, dict)]
            conns.append({"name": name, "loaded": name in loaded, "ike_sas": ikes})
        vips.append({
            "vip": str(t.params.vip) if t.params is not None else (t.record.vip if t.record else None),
            "source": t.source, "name": t.name,
            "config": t.params.config if t.params is not None else (t.record.config if t.record else None),
            "vici_socket": uri if t.params is not None else None,
            "interface": t.params.interface if t.params is not None else None,
            "started": t.record is not None, "held": held,
            "error": "; ".join(e for e in (error, held_error) if e) or None,
            "drop_rule": None if drops is None or t.params is None else str(t.params.vip) in drops,
            "connections": conns,
            "ike_sas_established": sum(1 for c in conns for i in c["ike_sas"] if i["state"] == "ESTABLISHED"),
            "child_sas_installed": sum(1 for c in conns for i in c["ike_sas"] for ch in i["children"]
                                       if ch["state"] == "INSTALLED"),
            **_virtual_ips(conns),
            "ha": _ha(conns, t, timeout) if info.get("ha_plugin") else None,
        })
    return {"schema": SCHEMA, "node": os.uname().nodename, "charons": [c[0] for c in charons.values()],
            "vips": vips, "drop_rules": drops}


def _drop_rules() -> list[str] | None:
    """The VIPs whose new IKE_SA_INIT a handoff's rule drops here (None: cannot tell)."""
    from ipsec_vip import droprule

    try:
        return [str(v) for v in sorted(droprule.listed(), key=lambda a: (a.version, a))]
    except droprule.NftUnavailable:
        return None if droprule.installed() else []


_HOLDING = ("ESTABLISHED", "PASSIVE", "REKEYING")  # IKE_SA states whose virtual IP is in use (not yet replaced)


def _virtual_ips(conns: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The clients' virtual IPs in use (the SAs' remote-vips), and those held by more than one IKE_SA
    (by SPIs: a 5.9.8 duplicate copy of one SA is not two clients) - no two clients may share one."""
    import ipaddress

    holders: dict[str, set[tuple[Any, Any]]] = {}
    for ike in (i for c in conns for i in c["ike_sas"] if i["state"] in _HOLDING):
        for addr in ike["remote_vips"]:
            holders.setdefault(addr, set()).add((ike["initiator_spi"], ike["responder_spi"]))

    def order(addr: str) -> tuple[int, Any]:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return (9, addr)
        return (ip.version, ip)

    return {"virtual_ips": sorted(holders, key=order),
            "duplicate_virtual_ips": sorted((a for a, h in holders.items() if len(h) > 1), key=order)}


def _ha(conns: list[dict[str, Any]], t: Target, timeout: float) -> dict[str, Any]:
    """Stateful mode: this node's role in the state sync and how many SAs it holds; for a
    resource started here, what the promoted node published (its IKE_SAs) and the standby's
    repair state."""
    from ipsec_vip.sas import Sync

    ikes = [i for c in conns for i in c["ike_sas"]]
    passive = [i for i in ikes if i["state"] == "PASSIVE"]
    sync = Sync(active=len(ikes) - len(passive), passive=len(passive),
                passive_ready=sum(1 for i in passive if any(ch["state"] == "INSTALLED" for ch in i["children"])))
    out: dict[str, Any] = {"role": sync.role, "active_ike_sas": sync.active, "synced_ike_sas": sync.passive,
                           "synced_ready": sync.passive_ready, "promoted_ike_sas": None,
                           "out_of_sync_since": None, "repairs": 0}
    if t.source == "resource" and t.record is not None:
        out.update(_standing(t.name, timeout))
    return out


def _standing(instance: str, timeout: float) -> dict[str, Any]:
    """What the promoted node published (attrd: only inside a cluster) and the instance's marks."""
    from ipsec_vip import promotion
    from ipsec_vip.action import Deadline

    out: dict[str, Any] = {}
    if os.access(promotion.ATTRD_UPDATER, os.X_OK):
        published = promotion.parse_published(promotion.Attributes(instance, Deadline(timeout)).peer_digest(""))
        out["promoted_ike_sas"] = published.sas if published else None
    states = StateDir()
    since = promotion.unsynced_since(states, instance)
    out["out_of_sync_since"] = _int(since) if since is not None else None
    out["repairs"] = int(states.mark(instance, promotion.REPAIRS) or 0)
    return out


def unreachable(rep: dict[str, Any]) -> bool:
    """True when some charon the report needed did not answer."""
    return any(not c["reachable"] for c in rep["charons"])


def human_duration(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    out: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size or out:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    out.append(f"{seconds}s")
    return "".join(out[:2])


def render(rep: dict[str, Any]) -> str:
    """The report for people."""
    lines = []
    for c in rep["charons"]:
        if c["reachable"]:
            lines.append(f"charon {c['version']} ({c['daemon']}) on {c['socket']}: "
                         f"up {human_duration(c['uptime_seconds'])} since {c['since']}, "
                         f"{c['ike_sas']} IKE_SA(s), {c['half_open']} half-open")
        else:
            lines.append(f"charon on {c['socket']}: NOT REACHABLE ({c['error']})")
    shown = {v["vip"] for v in rep["vips"]}
    for addr in rep.get("drop_rules") or []:
        if addr not in shown:
            lines.append("")
            lines.append(f"VIP {addr}: new IKE_SA_INIT to it dropped here (a handoff's nftables rule, "
                         "table inet ipsec_vip); no resource of it started here")
    if not rep["vips"] and not rep.get("drop_rules"):
        lines.append("no VIP configured on this node (no resource started here, no watch config; try --vip)")
    for v in rep["vips"]:
        held = {True: "held here", False: "not held here", None: "held: unknown"}[v["held"]]
        origin = f"{v['source']} {v['name']}".strip()
        started = "started" if v["started"] else "not started here"
        lines.append("")
        lines.append(f"VIP {v['vip']}: {held}, {started} ({origin}, config {v['config']})")
        if v["error"]:
            lines.append(f"  error: {v['error']}")
        if v["drop_rule"]:
            lines.append("  new IKE_SA_INIT to it dropped here (nftables table inet ipsec_vip: a handoff's rule, or "
                         "a stateful instance's until it is promoted)")
        if v["connections"]:
            lines.append(f"  {v['ike_sas_established']} IKE_SA(s) established, "
                         f"{v['child_sas_installed']} CHILD_SA(s) installed")
        if v["virtual_ips"]:
            dup = v["duplicate_virtual_ips"]
            lines.append(f"  {len(v['virtual_ips'])} virtual IP(s) in use"
                         + (f"; DUPLICATE (held by more than one IKE_SA): {', '.join(dup)}" if dup else ""))
        if v.get("ha"):
            ha = v["ha"]
            lines.append(f"  state sync (ha plugin): {ha['role']}: {ha['active_ike_sas']} active IKE_SA(s), "
                         f"{ha['synced_ike_sas']} synced (passive) copies, {ha['synced_ready']} of them with an "
                         f"installed CHILD_SA")
            if ha.get("promoted_ike_sas") is not None and ha["role"] != "active":
                lines.append(f"  the promoted node published {ha['promoted_ike_sas']} IKE_SA(s): this node holds "
                             f"{ha['synced_ready']} ready copies of them")
            if ha.get("out_of_sync_since"):
                ago = human_duration(max(int(time.time()) - ha["out_of_sync_since"], 0))
                lines.append(f"  copies differ from the promoted node's for {ago} ({ha['repairs']} repair(s) so far)")
        for conn in v["connections"]:
            lines.append(f"  {conn['name']}: {'loaded' if conn['loaded'] else 'NOT loaded'}, "
                         f"{len(conn['ike_sas'])} IKE_SA(s)")
            for ike in conn["ike_sas"]:
                vips = f" virtual IP {', '.join(ike['remote_vips'])}" if ike["remote_vips"] else ""
                eap = f" EAP {ike['remote_eap_id']}" if ike["remote_eap_id"] else ""
                lines.append(f"    #{ike['id']} {ike['state']} {human_duration(ike['established_seconds'])}: "
                             f"{ike['local_host']}[{ike['local_id']}] <-> {ike['remote_host']}:{ike['remote_port']}"
                             f"[{ike['remote_id']}]{eap}{vips}")
                for ch in ike["children"]:
                    lines.append(f"      {ch['name']} #{ch['id']} {ch['state']} {ch['mode']} {ch['protocol']}"
                                 f"{' UDP-encap' if ch['encap'] else ''}: {', '.join(ch['local_ts'])} === "
                                 f"{', '.join(ch['remote_ts'])} ({ch['bytes_in']} B in, {ch['bytes_out']} B out)")
    return "\n".join(lines)

