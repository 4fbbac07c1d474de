"""Does this node hold the VIP? Exact answer from one rtnetlink address dump.

Addresses are compared as parsed ``ipaddress`` objects, never as text, so
192.0.2.1 never matches 192.0.2.10 and IPv6 spellings are canonical. An IPv6
address still in duplicate address detection (tentative) or whose DAD failed is
not held. Optionally the address must sit on one given interface.

Why not pyroute2 here: its import costs several times the monitor's whole run
(docs/decisions.md), and this check runs in every monitor on every node every few
seconds. One RTM_GETADDR dump (:mod:`ipsec_vip.netlink`) costs well under a
millisecond. The watch daemon reuses this check after every address event (see
``ipsec_vip.watch`` for why it does not use pyroute2 either).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from ipsec_vip import netlink
from ipsec_vip.errors import NetlinkError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import NamedTuple, Union

    IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
else:
    from ipsec_vip.tuples import NamedTuple

_RTM_NEWADDR = 20  # linux/rtnetlink.h
_RTM_GETADDR = 22
_IFA_ADDRESS = 1  # linux/if_addr.h
_IFA_LOCAL = 2
_IFA_FLAGS = 8
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


class Address(NamedTuple):
    """One address of this node as the kernel reports it."""

    address: IPAddress
    prefixlen: int
    ifindex: int
    flags: int

    @property
    def usable(self) -> bool:
        """False while DAD runs or after it failed."""
        return not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def _plain_text(text: str) -> str:
    """``text`` if it can only be an address's spelling: ASCII, no white space or control
    character, no IPv6 zone id ('%eth0'): none of our addresses is link-local, and a zone id is
    free text that would reach configs, firewall rules and commands verbatim."""
    if not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError("holds white space, a control or non-ASCII character")
    if "%" in text:
        raise ValueError("has a zone id ('%...'), which no address here may have")
    return text


def parse_address(text: str) -> IPAddress:
    """The one address validator: a plain IPv4 or IPv6 address (ValueError otherwise)."""
    return ipaddress.ip_address(_plain_text(text))


def parse_network(text: str) -> IPNetwork:
    """A network (host bits allowed) under the rules of :func:`parse_address`."""
    return ipaddress.ip_network(_plain_text(text), strict=False)


def parse_vip(text: str) -> IPAddress:
    """Parse ``addr`` or ``addr/prefix`` (the prefix is accepted and ignored)."""
    value = text.strip()
    addr, sep, prefix = value.partition("/")
    if sep and not (prefix.isascii() and prefix.isdigit() and int(prefix) <= (32 if ":" not in addr else 128)):
        raise ValueError(f"{text!r} has an invalid prefix")
    return parse_address(addr)


def parse_addresses(replies: list[netlink.Message], family: int) -> list[Address]:
    """The ``family`` addresses in the replies to an RTM_GETADDR dump (other messages skipped)."""
    found = []
    for msg in replies:
        if msg.type != _RTM_NEWADDR:
            continue
        if len(msg.payload) < _IFADDRMSG.size:
            raise NetlinkError(f"netlink: RTM_NEWADDR with a {len(msg.payload)}-byte body, shorter than ifaddrmsg")
        fam, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(msg.payload)
        attrs = netlink.attributes(msg.payload, _IFADDRMSG.size)
        if len(attrs.get(_IFA_FLAGS, b"")) == 4:
            (flags,) = struct.unpack("=I", attrs[_IFA_FLAGS])
        raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
        if fam == family and raw and len(raw) == (16 if family == socket.AF_INET6 else 4):
            found.append(Address(ipaddress.ip_address(raw), prefixlen, index, flags))
    return found


def addresses(family: int) -> list[Address]:
    """All addresses of one family in this network namespace (raises NetlinkError)."""
    replies = netlink.dump(netlink.NETLINK_ROUTE, _RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0),
                           "the address dump (RTM_GETADDR)")
    return parse_addresses(replies, family)


def holders(vip: IPAddress) -> list[Address]:
    """Every local address entry equal to ``vip`` (usable or not)."""
    family = socket.AF_INET6 if vip.version == 6 else socket.AF_INET
    return [a for a in addresses(family) if a.address == vip]


def held(vip: IPAddress, interface: str | None = None) -> bool:
    """True if this node holds ``vip`` usably (on ``interface`` when given); NetlinkError if the
    kernel's answer could not be had."""
    entries = [a for a in holders(vip) if a.usable]
    if interface:
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            return False
        entries = [a for a in entries if a.ifindex == index]
    return bool(entries)
