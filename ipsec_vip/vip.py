"""Does this node hold the VIP? Exact answer from one rtnetlink address dump.

Addresses are compared as parsed ``ipaddress`` objects, never as text, so
192.0.2.1 never matches 192.0.2.10 and IPv6 spellings are canonical. An IPv6
address still in duplicate address detection (tentative) or whose DAD failed is
not held. Optionally the address must sit on one given interface.

Why not pyroute2 here: importing any part of it costs 120-200 ms, and this check
runs in every monitor on every node every few seconds. One RTM_GETADDR dump over
a stdlib netlink socket costs well under a millisecond. The watch daemon reuses
this check after every address event (see ``ipsec_vip.watch`` for why it does not
use pyroute2 either).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_RTM_GETADDR = 22
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
_NLMSG_HDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel refused or broke the address dump."""


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


def parse_vip(text: str) -> IPAddress:
    """Parse ``addr`` or ``addr/prefix`` (the prefix is accepted and ignored)."""
    value = text.strip()
    addr, sep, prefix = value.partition("/")
    if sep and not (prefix.isdigit() and int(prefix) <= (32 if ":" not in addr else 128)):
        raise ValueError(f"{text!r} has an invalid prefix")
    return ipaddress.ip_address(addr)


def plain(addr: IPAddress) -> IPAddress:
    """``addr`` without an IPv6 zone (``fe80::1%eth0`` -> ``fe80::1``), for comparisons."""
    return ipaddress.ip_address(str(addr).split("%")[0])


def _align(n: int) -> int:
    return (n + 3) & ~3


def _parse(data: bytes, family: int) -> Iterator[Address | None]:
    """Yield addresses from one recv() buffer; None marks the end of the dump."""
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size or offset + length > len(data):
            raise NetlinkError(0, "truncated netlink message")
        if msg_type == _NLMSG_DONE:
            yield None
            return
        if msg_type == _NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)
            raise NetlinkError(-err, os.strerror(-err))
        if msg_type == 20:  # RTM_NEWADDR
            body = offset + _NLMSG_HDR.size
            fam, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(data, body)
            attrs: dict[int, bytes] = {}
            pos, end = body + _IFADDRMSG.size, offset + length
            while pos + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, pos)
                if alen < _RTATTR.size:
                    break
                attrs[atype] = data[pos + _RTATTR.size:pos + alen]
                pos += _align(alen)
            if _IFA_FLAGS in attrs and len(attrs[_IFA_FLAGS]) >= 4:
                (flags,) = struct.unpack("=I", attrs[_IFA_FLAGS][:4])
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if fam == family and raw and len(raw) in (4, 16):
                yield Address(ipaddress.ip_address(raw), prefixlen, index, flags)
        offset += _align(length)


def addresses(family: int) -> list[Address]:
    """All addresses of one family in this network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(2.0)
        nl.bind((0, 0))
        request = _NLMSG_HDR.pack(_NLMSG_HDR.size + _IFADDRMSG.size, _RTM_GETADDR,
                                  _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + _IFADDRMSG.pack(family, 0, 0, 0, 0)
        nl.send(request)
        found: list[Address] = []
        while True:
            for item in _parse(nl.recv(1 << 16), family):
                if item is None:
                    return found
                found.append(item)


def holders(vip: IPAddress) -> list[Address]:
    """Every local address entry equal to ``vip`` (usable or not)."""
    family = socket.AF_INET6 if vip.version == 6 else socket.AF_INET
    want = plain(vip)
    return [a for a in addresses(family) if a.address == want]


def held(vip: IPAddress, interface: str | None = None) -> bool:
    """True if this node holds ``vip`` usably (on ``interface`` when given)."""
    entries = [a for a in holders(vip) if a.usable]
    if interface:
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            return False
        entries = [a for a in entries if a.ifindex == index]
    return bool(entries)
