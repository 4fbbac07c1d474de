"""Which connections, secrets and pools of a swanctl.conf belong to one VIP (the policy).

The default: every connection whose ``local_addrs`` contains the VIP, where an entry may be an
address, a CIDR subnet or an ``a-b`` range (what swanctl accepts; DNS names and ``%any`` never
select). Named connections are taken as named. Pools are those the chosen connections use;
secrets are those owned by the chosen connections' identities, or by no identity that only
other connections use, or by none at all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ipsec_vip.errors import ConfigError
from ipsec_vip.swanctl import SwanctlConfig
from ipsec_vip.vip import parse_address, parse_network

if TYPE_CHECKING:
    from ipsec_vip.vip import IPAddress

ID_KEYS = ("id", "eap_id", "xauth_id", "aaa_id")
_SETTING_FALSE = ("no", "false", "disabled", "0")  # strongSwan's settings_value_as_bool


@dataclass(frozen=True)
class Selection:
    """What one VIP's resource loads."""

    connections: dict[str, dict[str, Any]]
    secrets: list[dict[str, Any]] = field(repr=False)
    pools: dict[str, dict[str, Any]]
    fallbacks: tuple[str, ...] = ()  # the config's fallback connections of the chosen ones


def covers(entry: str, addr: IPAddress) -> bool:
    """Does one ``local_addrs`` entry (address, subnet or range) contain ``addr``?"""
    text = entry.strip()
    try:
        if "/" in text:
            return addr in parse_network(text)
        if "-" in text:
            low, high = (parse_address(t.strip()) for t in text.split("-", 1))
            return low.version == high.version == addr.version and low <= addr <= high  # type: ignore[operator]
        return parse_address(text) == addr
    except ValueError:
        return False  # a DNS name, %any or garbage: never the VIP


def bound_to(body: dict[str, Any], addr: IPAddress) -> bool:
    """A connection whose ``local_addrs`` contains ``addr``."""
    values = body.get("local_addrs")
    return isinstance(values, list) and any(covers(str(v), addr) for v in values)


def select(config: SwanctlConfig, vip: IPAddress, names: Sequence[str] = ()) -> Selection:
    """The connections of ``vip`` (or those named), their pools and their secrets."""
    if names:
        unknown = [n for n in names if n not in config.connections]
        if unknown:
            raise ConfigError(f"connection(s) {', '.join(unknown)} not defined in {config.path}")
        chosen = {n: config.connections[n] for n in names}
    else:
        chosen = {n: b for n, b in config.connections.items() if bound_to(b, vip)}
        if not chosen:
            raise ConfigError(f"no connection in {config.path} has {vip} in local_addrs")
    pools = {p: config.pools[p] for body in chosen.values() for p in body.get("pools", []) if p in config.pools}
    mine = set().union(*(_ids(b) for b in chosen.values()))
    theirs = set().union(*(_ids(b) for n, b in config.connections.items() if n not in chosen))
    secrets = [s for s in config.secrets
               if not s["owners"]
               or any(_matches(o, i) for o in s["owners"] for i in mine)
               or not any(o in theirs for o in s["owners"])]
    fallbacks = tuple(dict.fromkeys(f for n in chosen for f in config.fallbacks.get(n, ())))
    loaded_here = [f for f in fallbacks if f in chosen]
    if loaded_here:
        raise ConfigError(f"{config.path}: {loaded_here[0]} is a fallback connection of this VIP's own "
                          "connections and one of them (a fallback runs while the VIP is elsewhere)")
    return Selection(connections=chosen, secrets=secrets, pools=pools, fallbacks=fallbacks)


def _ids(body: dict[str, Any]) -> set[str]:
    return {str(auth[k]) for name, auth in body.items()
            if isinstance(auth, dict) and name.lower().startswith(("local", "remote"))
            for k in ID_KEYS if k in auth}


def _matches(owner: str, ident: str) -> bool:
    if owner == ident:
        return True
    return ident == "%any" or ("*" in ident and fnmatch.fnmatchcase(owner, ident))


def starting_children(body: dict[str, Any], actions: Sequence[str] = ("start",)) -> list[str]:
    """Children of a connection whose ``start_action`` includes one of ``actions``."""
    return [name for name, child in (body.get("children") or {}).items()
            if isinstance(child, dict) and set(actions) & set(str(child.get("start_action", "")).split("|"))]


def initiators(connections: dict[str, dict[str, Any]]) -> list[str]:
    """Connections with a child that charon starts by itself."""
    return [name for name, body in connections.items() if starting_children(body)]


def mobike_enabled(body: dict[str, Any]) -> bool:
    """charon's default is on; only an explicit false value turns it off."""
    return str(body.get("mobike", "yes")).strip().lower() not in _SETTING_FALSE


def mobike_warnings(selection: Selection | SwanctlConfig) -> list[str]:
    """One line per connection that keeps mobike on (clients may follow a node's own address)."""
    return [f"connection {name}: mobike is on; clients may follow this node's own address after a "
            f"failover - set mobike = no" for name, body in selection.connections.items() if mobike_enabled(body)]
