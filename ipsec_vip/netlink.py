"""Netlink over a stdlib socket: one framing, one dump loop, every fault a :class:`NetlinkError`.

The reader is total: every length is checked against what was received before it
is used (a message against the datagram, an attribute against its message), an
``NLMSG_ERROR`` too short for its error code, an ``NLMSG_DONE`` carrying an error
(a dump the kernel could not finish) and a dump interrupted by a concurrent change
(``NLM_F_DUMP_INTR``: the kernel says the result may be inconsistent, redone up to
:data:`DUMP_ATTEMPTS` times) never read as a complete answer. Timeouts and socket
errors become :class:`NetlinkError` too, so a caller handles one type.

pyroute2 does all this as well, but its import costs several times the monitor's
whole run (docs/decisions.md); the tests use it as the oracle for this parser.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time

from ipsec_vip.errors import NetlinkError

NETLINK_ROUTE = 0
NETLINK_XFRM = 6
# linux/netlink.h
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, pid
ATTR = struct.Struct("=HH")  # struct rtattr / nlattr: length, type
_INT = struct.Struct("=i")
DUMP_ATTEMPTS = 3
TIMEOUT = 2.0
RECV_SIZE = 1 << 16  # the kernel sends at most a page (or 32 KiB) per datagram


def align(n: int) -> int:
    """NLMSG_ALIGN / RTA_ALIGN: lengths are padded to 4 bytes."""
    return (n + 3) & ~3


class Message:
    """One netlink message: its header fields and its payload (the bytes after the header)."""

    __slots__ = ("flags", "payload", "seq", "type")

    def __init__(self, type_: int, flags: int, seq: int, payload: bytes) -> None:
        self.type = type_
        self.flags = flags
        self.seq = seq
        self.payload = payload

    def __repr__(self) -> str:
        return f"Message(type={self.type}, flags={self.flags:#x}, seq={self.seq}, {len(self.payload)} bytes)"


def messages(data: bytes) -> list[Message]:
    """Split one received datagram into messages; a length that does not fit raises."""
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            raise NetlinkError(f"netlink: {len(data) - offset} trailing bytes, shorter than a message header")
        length, type_, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or length > len(data) - offset:
            raise NetlinkError(f"netlink: message length {length} does not fit the "
                               f"{len(data) - offset} bytes received")
        out.append(Message(type_, flags, seq, data[offset + HEADER.size:offset + length]))
        offset += align(length)
    return out


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes (type -> value; the last wins) in ``data[offset:]``; a length that does not fit raises."""
    attrs: dict[int, bytes] = {}
    while offset < len(data):
        if len(data) - offset < ATTR.size:
            raise NetlinkError(f"netlink: {len(data) - offset} trailing bytes, shorter than an attribute header")
        length, type_ = ATTR.unpack_from(data, offset)
        if length < ATTR.size or length > len(data) - offset:
            raise NetlinkError(f"netlink: attribute length {length} does not fit the {len(data) - offset} "
                               "bytes left in its message")
        attrs[type_ & 0x3FFF] = data[offset + ATTR.size:offset + length]  # without NLA_F_NESTED/NET_BYTEORDER
        offset += align(length)
    return attrs


def error_code(msg: Message) -> int:
    """The errno (positive, 0 = success) in an NLMSG_ERROR or NLMSG_DONE payload."""
    if len(msg.payload) < _INT.size:
        if msg.type == NLMSG_DONE:
            return 0  # a bare NLMSG_DONE (no error code) ends a dump normally
        raise NetlinkError(f"netlink: NLMSG_ERROR with a {len(msg.payload)}-byte payload, too short for its code")
    (code,) = _INT.unpack_from(msg.payload)
    return -int(code)


def _raise(what: str, code: int) -> None:
    try:
        reason = os.strerror(code)
    except ValueError:
        reason = f"error {code}"
    raise NetlinkError(f"netlink: {what} failed: {reason}", errno=code)


def _collect(sock: socket.socket, what: str, seq: int, deadline: float) -> tuple[list[Message], bool]:
    """The replies to request ``seq`` up to the end of the dump; True if the kernel flagged it interrupted."""
    replies: list[Message] = []
    interrupted = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetlinkError(f"netlink: {what} timed out", errno=errno.ETIMEDOUT)
        sock.settimeout(left)
        data = sock.recv(RECV_SIZE)
        if not data:
            raise NetlinkError(f"netlink: {what}: the socket returned no data")
        for msg in messages(data):
            if msg.seq != seq:
                continue  # not an answer to this request
            interrupted = interrupted or bool(msg.flags & NLM_F_DUMP_INTR)
            if msg.type in (NLMSG_ERROR, NLMSG_DONE):
                code = error_code(msg)
                if code:
                    _raise(what, code)
                return replies, interrupted
            if msg.type == NLMSG_OVERRUN:
                raise NetlinkError(f"netlink: {what}: the kernel reported an overrun")
            if msg.type != NLMSG_NOOP:
                replies.append(msg)


def dump(protocol: int, msg_type: int, body: bytes, what: str, timeout: float = TIMEOUT) -> list[Message]:
    """Send one dump request (``msg_type`` with ``body``) and return every reply message.

    ``what`` names the request in errors; the whole call takes at most ``timeout`` seconds.
    """
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol) as sock:
            sock.bind((0, 0))
            return exchange(sock, msg_type, body, what, time.monotonic() + timeout)
    except OSError as e:
        raise NetlinkError(f"netlink: {what} failed: {e.strerror or e}", errno=e.errno or 0) from None


def exchange(sock: socket.socket, msg_type: int, body: bytes, what: str, deadline: float) -> list[Message]:
    """:func:`dump` on an open, bound socket (the tests pass a fake one).

    A dump the kernel flags as interrupted is redone, at most :data:`DUMP_ATTEMPTS` times in all.
    """
    try:
        for seq in range(1, DUMP_ATTEMPTS + 1):
            sock.send(HEADER.pack(HEADER.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            replies, interrupted = _collect(sock, what, seq, deadline)
            if not interrupted:
                return replies
    except socket.timeout:
        raise NetlinkError(f"netlink: {what} timed out", errno=errno.ETIMEDOUT) from None
    except NetlinkError:
        raise
    except OSError as e:
        raise NetlinkError(f"netlink: {what} failed: {e.strerror or e}", errno=e.errno or 0) from None
    raise NetlinkError(f"netlink: {what} was interrupted by concurrent changes {DUMP_ATTEMPTS} times in a row")


def subscribe(groups: int) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket in the multicast ``groups`` (RTMGRP_* bits)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
    except OSError as e:
        raise NetlinkError(f"netlink: cannot open a socket: {e.strerror or e}", errno=e.errno or 0) from None
    try:
        with contextlib.suppress(OSError):  # room for bursts (capped by net.core.rmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
    except OSError as e:
        sock.close()
        raise NetlinkError(f"netlink: cannot subscribe to groups {groups:#x}: {e.strerror or e}",
                           errno=e.errno or 0) from None
    return sock


def drain(sock: socket.socket) -> bool:
    """Read what a :func:`subscribe` socket holds; True if events were lost (ENOBUFS).

    The caller treats any wake-up as "look again", so the events are not parsed.
    """
    overflow = False
    while True:
        try:
            if not sock.recv(RECV_SIZE):
                return overflow
        except BlockingIOError:
            return overflow
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # the kernel dropped events: the caller looks again anyway
                raise NetlinkError(f"netlink: reading address events failed: {e.strerror or e}",
                                   errno=e.errno or 0) from None
            overflow = True
