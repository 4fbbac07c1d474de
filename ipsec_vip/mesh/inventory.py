"""The mesh inventory: networks, nodes, VIPs, role pairs left in clear.

Two spellings are read (PyYAML, imported only here): the contract's YAML (top-level
``psk_file networks nodes vips skip_between`` and optional ``fwmark``), and the JSON that
``ansible-inventory --list`` prints, where group ``all``'s vars carry ``ipsec_vip_mesh`` (the
same keys except ``nodes``) and each host's vars carry ``ipsec_vip_roles`` and
``ipsec_vip_addresses``. Every problem raises :class:`ConfigError` as
``FILE: KEY.PATH: reason``; nothing is half-read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipsec_vip.errors import ConfigError
from ipsec_vip.vip import parse_address, parse_network

if TYPE_CHECKING:
    from ipsec_vip.vip import IPAddress, IPNetwork


NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}\Z")
DEFAULT_FWMARK = 0x100000
_TOP_KEYS = {"psk_file", "networks", "nodes", "vips", "skip_between", "fwmark"}
_TRUE = (True, "yes", "true", "on")
_FALSE = (False, "no", "false", "off")


@dataclass(frozen=True)
class Network:
    name: str
    cidr: IPNetwork
    encrypt: bool = True
    fail_closed: bool = False


@dataclass(frozen=True)
class Node:
    name: str
    roles: tuple[str, ...]
    addresses: Mapping[str, IPAddress]


@dataclass(frozen=True)
class Vip:
    network: str
    address: IPAddress
    holders: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    path: str
    psk_file: str
    networks: Mapping[str, Network]
    nodes: Mapping[str, Node]
    vips: Mapping[str, Vip]
    skip_between: frozenset[frozenset[str]]
    fwmark: int = DEFAULT_FWMARK

    def node(self, name: str) -> Node:
        """The node called ``name``, or a ConfigError saying it is not in the inventory."""
        if name not in self.nodes:
            raise ConfigError(f"{self.path}: nodes: no node named {name!r} in the inventory")
        return self.nodes[name]

    def skipped(self, a: Node, b: Node) -> bool:
        """True if a role pair of ``a`` and ``b`` is in skip_between."""
        return any(frozenset((ra, rb)) in self.skip_between for ra in a.roles for rb in b.roles)

    def holders(self, vip: Vip) -> list[Node]:
        """The nodes that may hold ``vip``, by name."""
        return [n for _, n in sorted(self.nodes.items()) if set(n.roles) & set(vip.holders)]


class _Reader:
    """Checks one document, naming the file and key path in every error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, where: str, why: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {why}" if where else f"{self.path}: {why}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping, not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(where, f"key {key!r} must be a string")
        return value

    def name(self, value: str, where: str) -> str:
        if not NAME.match(value):
            raise self.error(where, f"name {value!r}: use 1-48 letters, digits, '-' or '_'")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if isinstance(value, str):
            value = value.lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise self.error(where, "must be true or false")

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(where, "must be a non-empty list of names")
        return tuple(self.name(v, where) for v in value)

    def address(self, value: Any, where: str) -> IPAddress:
        try:
            if not isinstance(value, str):
                raise ValueError("not a string")
            return parse_address(value)
        except ValueError as e:
            raise self.error(where, f"{_shown(value)} is not an IP address ({e})") from None

    def networks(self, value: Any, where: str) -> dict[str, Network]:
        out = {}
        for name, raw in self.mapping(value, where).items():
            at = f"{where}.{self.name(name, where)}"
            body = self.mapping(raw, at)
            unknown = set(body) - {"cidr", "encrypt", "fail_closed"}
            if unknown:
                raise self.error(f"{at}.{sorted(unknown)[0]}", "unknown key")
            if "cidr" not in body:
                raise self.error(f"{at}.cidr", "missing")
            try:
                if not isinstance(body["cidr"], str):
                    raise ValueError("not a string")
                cidr = parse_network(body["cidr"])
            except ValueError as e:
                raise self.error(f"{at}.cidr", f"{_shown(body['cidr'])} is not a network ({e})") from None
            net = Network(name, cidr, self.flag(body.get("encrypt", True), f"{at}.encrypt"),
                          self.flag(body.get("fail_closed", False), f"{at}.fail_closed"))
            if net.fail_closed and not net.encrypt:
                raise self.error(f"{at}.fail_closed", "needs encrypt: true")
            out[name] = net
        if not out:
            raise self.error(where, "no networks")
        return out

    def node(self, name: str, roles: Any, addresses: Any, where: str, keys: tuple[str, str],
             networks: Mapping[str, Network]) -> Node:
        self.name(name, where)
        out: dict[str, IPAddress] = {}
        for net, addr in self.mapping(addresses, f"{where}.{keys[1]}").items():
            at = f"{where}.{keys[1]}.{net}"
            if net not in networks:
                raise self.error(at, f"unknown network {net!r}")
            out[net] = self.address(addr, at)
            if out[net] not in networks[net].cidr:
                raise self.error(at, f"{out[net]} is outside network {net} ({networks[net].cidr})")
        return Node(name, self.strings(roles, f"{where}.{keys[0]}"), out)

    def vips(self, value: Any, where: str, networks: Mapping[str, Network]) -> dict[str, Vip]:
        out = {}
        for net, raw in self.mapping(value, where).items():
            at = f"{where}.{net}"
            if net not in networks:
                raise self.error(at, f"unknown network {net!r}")
            body = self.mapping(raw, at)
            unknown = set(body) - {"address", "holders"}
            if unknown:
                raise self.error(f"{at}.{sorted(unknown)[0]}", "unknown key")
            if "address" not in body:
                raise self.error(f"{at}.address", "missing")
            addr = self.address(body["address"], f"{at}.address")
            if addr not in networks[net].cidr:
                raise self.error(f"{at}.address", f"{addr} is outside network {net} ({networks[net].cidr})")
            out[net] = Vip(net, addr, self.strings(body.get("holders"), f"{at}.holders"))
        return out

    def pairs(self, value: Any, where: str) -> list[frozenset[str]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(where, f"must be a list of role pairs, not {_kind(value)}")
        out = []
        for i, pair in enumerate(value):
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.error(f"{where}[{i}]", "must be a pair of roles, e.g. [compute, compute]")
            out.append(frozenset(self.strings(pair, f"{where}[{i}]")))
        return out


def _shown(value: Any) -> str:
    """A value for a message: a short repr (escapes control characters), never a huge one."""
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else _kind(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty"}.get(type(value),
                                                                                    type(value).__name__)


def load(path: str) -> Inventory:
    """Read and check an inventory file (YAML, or ``ansible-inventory --list`` JSON)."""
    from ipsec_vip.mesh import document

    return parse(document.load(path), path)


def parse(doc: Any, path: str) -> Inventory:
    """Check a parsed document; ``path`` names it in errors and anchors a relative psk_file."""
    r = _Reader(path)
    doc = r.mapping(doc, "")
    all_vars = doc.get("all", {}).get("vars", {}) if isinstance(doc.get("all"), dict) else {}
    if isinstance(all_vars, dict) and "ipsec_vip_mesh" in all_vars:
        top = r.mapping(all_vars["ipsec_vip_mesh"], "all.vars.ipsec_vip_mesh")
        prefix = "all.vars.ipsec_vip_mesh."
        hostvars = r.mapping(r.mapping(doc.get("_meta", {}), "_meta").get("hostvars", {}), "_meta.hostvars")
        raw_nodes = {h: (v.get("ipsec_vip_roles"), v.get("ipsec_vip_addresses"), f"_meta.hostvars.{h}")
                     for h, v in sorted(hostvars.items())
                     if isinstance(v, dict) and ("ipsec_vip_roles" in v or "ipsec_vip_addresses" in v)}
        keys = ("ipsec_vip_roles", "ipsec_vip_addresses")
        if "nodes" in top:
            raise r.error(f"{prefix}nodes", "nodes come from the hosts' ipsec_vip_roles/ipsec_vip_addresses")
    elif "_meta" in doc:
        raise r.error("all.vars.ipsec_vip_mesh", "missing (an ansible-inventory --list document without the mesh)")
    else:
        top, prefix, keys = doc, "", ("roles", "addresses")
        raw_nodes = {}
        for name, raw in r.mapping(doc.get("nodes"), "nodes").items():
            body = r.mapping(raw, f"nodes.{name}")
            unknown = set(body) - {"roles", "addresses"}
            if unknown:
                raise r.error(f"nodes.{name}.{sorted(unknown)[0]}", "unknown key")
            raw_nodes[name] = (body.get("roles"), body.get("addresses"), f"nodes.{name}")
    unknown = set(top) - _TOP_KEYS - ({"nodes"} if not prefix else set())
    if unknown:
        raise r.error(f"{prefix}{sorted(unknown)[0]}", "unknown key")
    if "psk_file" not in top or not isinstance(top["psk_file"], str) or not top["psk_file"]:
        raise r.error(f"{prefix}psk_file", "missing (the file `ipsec-vip mesh psk` writes)")
    psk_file = _confined(r, f"{prefix}psk_file", path, top["psk_file"])
    networks = r.networks(top.get("networks"), f"{prefix}networks")
    if not raw_nodes:
        raise r.error("nodes" if not prefix else "_meta.hostvars", "no nodes")
    nodes = {name: r.node(name, roles, addrs, where, keys, networks)
             for name, (roles, addrs, where) in raw_nodes.items()}
    vips = r.vips(top.get("vips") or {}, f"{prefix}vips", networks)
    skip = r.pairs(top.get("skip_between"), f"{prefix}skip_between")
    _cross_check(r, prefix, keys[1], nodes, vips, skip, {n: raw_nodes[n][2] for n in nodes})
    fwmark = top.get("fwmark", DEFAULT_FWMARK)
    if isinstance(fwmark, bool) or not isinstance(fwmark, int) or not 0 < fwmark < 1 << 32:
        raise r.error(f"{prefix}fwmark", "must be a non-zero 32-bit number, e.g. 0x100000")
    return Inventory(path=path, psk_file=psk_file, networks=networks, nodes=nodes, vips=vips,
                     skip_between=frozenset(skip), fwmark=fwmark)


def _confined(r: _Reader, where: str, path: str, name: str) -> str:
    """``name`` (relative to the inventory's directory, or absolute) as a path inside that
    directory's tree, symlinked directories resolved: ``mesh psk`` creates and appends to it,
    so an inventory from elsewhere must not make it write outside (``../../root/x``)."""
    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    full = os.path.normpath(os.path.join(base, name))
    real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
    if not name.isprintable() or not real.startswith(base + os.sep):
        raise r.error(where, f"{_shown(name)} is outside {base}, the inventory's directory: keep the PSK file "
                      "beside the inventory or below it")
    return real


def _cross_check(r: _Reader, prefix: str, addr_key: str, nodes: Mapping[str, Node], vips: Mapping[str, Vip],
                 skip: list[frozenset[str]], where: Mapping[str, str]) -> None:
    """Addresses unique, VIPs not node addresses, roles named somewhere known."""
    owner: dict[IPAddress, str] = {}
    for name, node in sorted(nodes.items()):
        for net, addr in node.addresses.items():
            if addr in owner:
                raise r.error(f"{where[name]}.{addr_key}.{net}", f"{addr} is also the address of node {owner[addr]}")
            owner[addr] = name
    roles = {role for node in nodes.values() for role in node.roles}
    for net, vip in vips.items():
        if vip.address in owner:
            raise r.error(f"{prefix}vips.{net}.address", f"{vip.address} is the address of node {owner[vip.address]}")
        for role in vip.holders:
            if role not in roles:
                raise r.error(f"{prefix}vips.{net}.holders", f"unknown role {role!r} (no node has it)")
    for i, pair in enumerate(skip):
        for role in sorted(pair):
            if role not in roles:
                raise r.error(f"{prefix}skip_between[{i}]", f"unknown role {role!r} (no node has it)")
