"""The netlink reader on crafted bytes (no root): pyroute2 encodes the messages and is the oracle.

Every fault must come out as NetlinkError: a truncated or oversized message or attribute,
an NLMSG_ERROR too short for its code, an NLMSG_DONE carrying an error, a dump interrupted
more often than the reader redoes it, a timeout.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink import NLM_F_DUMP_INTR, NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, nlmsg, nlmsgerr
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from ipsec_vip import netlink, vip
from ipsec_vip.errors import IpsecVipError, NetlinkError

RTM_NEWADDR = 20
RTM_GETADDR = 22


class donemsg(nlmsg):
    """NLMSG_DONE with its error code, as the kernel sends it (pyroute2 has no class for it)."""

    fields = (("error", "i"),)


def newaddr(address: str, prefixlen: int = 24, index: int = 2, flags: int = 0, *, seq: int = 1,
            local: bool = True, ifa_flags: int | None = None, nlflags: int = NLM_F_MULTI) -> bytes:
    m = ifaddrmsg()
    m["header"]["type"] = RTM_NEWADDR
    m["header"]["flags"] = nlflags
    m["header"]["sequence_number"] = seq
    m["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
    m["prefixlen"] = prefixlen
    m["flags"] = flags & 0xFF
    m["index"] = index
    attrs: list[tuple[str, object]] = [("IFA_ADDRESS", address)]
    if local:
        attrs.append(("IFA_LOCAL", address))
    if ifa_flags is not None:
        attrs.append(("IFA_FLAGS", ifa_flags))
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def done(seq: int = 1, error: int = 0, nlflags: int = NLM_F_MULTI) -> bytes:
    m = donemsg()
    m["header"]["type"] = NLMSG_DONE
    m["header"]["flags"] = nlflags
    m["header"]["sequence_number"] = seq
    m["error"] = error
    m.encode()
    return bytes(m.data)


def error(seq: int = 1, code: int = 0) -> bytes:
    m = nlmsgerr()
    m["header"]["type"] = NLMSG_ERROR
    m["header"]["sequence_number"] = seq
    m["error"] = code
    m.encode()
    return bytes(m.data)


def parse(data: bytes, family: int = socket.AF_INET) -> list[vip.Address]:
    return vip.parse_addresses(netlink.messages(data), family)


class FakeSocket:
    """Answers the n-th request with ``answers[n](seq)``: a list of datagrams."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def settimeout(self, value: float) -> None:
        assert value > 0

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("=IHHII", data)[3]
        self.queue.extend(self.answers.pop(0)(seq))
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise TimeoutError("timed out")
        return self.queue.pop(0)


def dump(sock: FakeSocket, timeout: float = 5.0) -> list[vip.Address]:
    body = struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0)
    return vip.parse_addresses(netlink.exchange(sock, RTM_GETADDR, body, "test dump", time.monotonic() + timeout),
                               socket.AF_INET)


# --------------------------------------------------------------------------- parsing, against pyroute2
v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
entry = st.tuples(st.one_of(v4, v6), st.integers(0, 128), st.integers(1, 2**31 - 1), st.integers(0, 2**32 - 1),
                  st.booleans(), st.booleans())


@given(st.lists(entry, max_size=12), st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_addresses_match_pyroute2(entries, family):
    """Any dump pyroute2 can encode reads as pyroute2 itself decodes it."""
    data = b"".join(newaddr(str(a), p, i, f, local=loc, ifa_flags=f if with_flags else None)
                    for a, p, i, f, loc, with_flags in entries) + done()
    expected = []
    offset = 0
    while offset < len(data):
        length, mtype = struct.unpack_from("=IH", data, offset)
        if mtype == RTM_NEWADDR:
            m = ifaddrmsg(data[offset:offset + length])
            m.decode()
            if m["family"] == family:
                flags = m.get_attr("IFA_FLAGS")
                expected.append((ipaddress.ip_address(m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")),
                                 m["prefixlen"], m["index"], m["flags"] if flags is None else flags))
        offset += length
    assert [tuple(a) for a in parse(data, family)] == expected


def test_local_wins_over_address_and_flags_attribute_over_header():
    """A point-to-point entry: IFA_LOCAL is ours, IFA_ADDRESS the peer; IFA_FLAGS has the 32-bit flags."""
    m = ifaddrmsg()
    m["header"]["type"] = RTM_NEWADDR
    m["family"] = socket.AF_INET
    m["prefixlen"] = 32
    m["index"] = 7
    m["flags"] = 0
    m["attrs"] = [("IFA_ADDRESS", "198.51.100.1"), ("IFA_LOCAL", "192.0.2.9"), ("IFA_FLAGS", 0x200 | 0x40)]
    m.encode()
    [a] = parse(bytes(m.data) + done())
    assert (a.address, a.ifindex, a.flags, a.usable) == (ipaddress.ip_address("192.0.2.9"), 7, 0x240, False)


def test_other_family_and_other_messages_are_skipped():
    assert parse(newaddr("2001:db8::1") + newaddr("192.0.2.1") + done()) == [
        vip.Address(ipaddress.ip_address("192.0.2.1"), 24, 2, 0)]


# --------------------------------------------------------------------------- malformed bytes
def test_message_longer_than_the_datagram():
    data = newaddr("192.0.2.1")
    with pytest.raises(NetlinkError, match="does not fit"):
        netlink.messages(data[:-4])


def test_message_length_below_the_header():
    data = bytearray(newaddr("192.0.2.1"))
    struct.pack_into("=I", data, 0, 8)
    with pytest.raises(NetlinkError, match="does not fit"):
        netlink.messages(bytes(data))


def test_trailing_bytes_shorter_than_a_header():
    with pytest.raises(NetlinkError, match="trailing"):
        netlink.messages(done() + b"\0" * 8)


def test_attribute_longer_than_its_message():
    data = bytearray(newaddr("192.0.2.1", local=False))
    struct.pack_into("=H", data, 16 + 8, 200)  # IFA_ADDRESS's rta_len
    with pytest.raises(NetlinkError, match="attribute length 200"):
        parse(bytes(data))


def test_attribute_length_below_its_header():
    data = bytearray(newaddr("192.0.2.1", local=False))
    struct.pack_into("=H", data, 16 + 8, 2)
    with pytest.raises(NetlinkError, match="attribute length 2"):
        parse(bytes(data))


def test_body_shorter_than_ifaddrmsg():
    data = bytearray(newaddr("192.0.2.1"))[:16 + 4]
    struct.pack_into("=I", data, 0, len(data))
    with pytest.raises(NetlinkError, match="shorter than ifaddrmsg"):
        parse(bytes(data))


@pytest.mark.parametrize("size", [0, 2, 3])
def test_error_message_too_short_for_its_code(size):
    data = bytearray(error(code=-errno.EPERM))[:16 + size]
    struct.pack_into("=I", data, 0, len(data))
    with pytest.raises(NetlinkError, match="too short"):
        dump(FakeSocket(lambda seq: [bytes(data)]))


def test_malformed_errors_are_the_projects_error_type():
    """One type for the callers: the agent's exit reason, status's "held: unknown", watch's backoff."""
    assert issubclass(NetlinkError, IpsecVipError)
    assert not issubclass(NetlinkError, OSError)


# --------------------------------------------------------------------------- the dump loop
def test_dump_over_several_datagrams():
    sock = FakeSocket(lambda seq: [newaddr("192.0.2.1", seq=seq), newaddr("192.0.2.2", seq=seq) + done(seq)])
    assert [str(a.address) for a in dump(sock)] == ["192.0.2.1", "192.0.2.2"]


def test_error_reply_raises_with_its_errno():
    with pytest.raises(NetlinkError, match="test dump failed: Operation not permitted") as e:
        dump(FakeSocket(lambda seq: [error(seq, -errno.EPERM)]))
    assert e.value.errno == errno.EPERM


def test_done_with_an_error_code_is_not_a_complete_dump():
    """Before: the code in NLMSG_DONE was ignored and a failed dump read as "VIP not held"."""
    with pytest.raises(NetlinkError) as e:
        dump(FakeSocket(lambda seq: [newaddr("192.0.2.1", seq=seq) + done(seq, -errno.ENOBUFS)]))
    assert e.value.errno == errno.ENOBUFS


def test_interrupted_dump_is_redone():
    """Before: a dump flagged NLM_F_DUMP_INTR was taken as complete (here it lacks the VIP)."""
    sock = FakeSocket(lambda seq: [newaddr("192.0.2.1", seq=seq, nlflags=NLM_F_MULTI | NLM_F_DUMP_INTR) +
                                   done(seq, nlflags=NLM_F_MULTI | NLM_F_DUMP_INTR)],
                      lambda seq: [newaddr("192.0.2.1", seq=seq) + newaddr("192.0.2.7", seq=seq) + done(seq)])
    assert [str(a.address) for a in dump(sock)] == ["192.0.2.1", "192.0.2.7"]
    assert [struct.unpack_from("=IHHII", s)[3] for s in sock.sent] == [1, 2]


def test_dump_interrupted_every_time_raises():
    always = lambda seq: [done(seq, nlflags=NLM_F_MULTI | NLM_F_DUMP_INTR)]  # noqa: E731
    sock = FakeSocket(*[always] * netlink.DUMP_ATTEMPTS)
    with pytest.raises(NetlinkError, match="interrupted"):
        dump(sock)
    assert len(sock.sent) == netlink.DUMP_ATTEMPTS


def test_replies_to_another_request_are_skipped():
    sock = FakeSocket(lambda seq: [newaddr("192.0.2.66", seq=seq + 5) + done(seq + 5),
                                   newaddr("192.0.2.1", seq=seq) + done(seq)])
    assert [str(a.address) for a in dump(sock)] == ["192.0.2.1"]


def test_timeout_raises():
    with pytest.raises(NetlinkError, match="timed out") as e:
        dump(FakeSocket(lambda seq: [newaddr("192.0.2.1", seq=seq)]))
    assert e.value.errno == errno.ETIMEDOUT


def test_deadline_bounds_the_whole_dump():
    with pytest.raises(NetlinkError, match="timed out"):
        dump(FakeSocket(lambda seq: [newaddr("192.0.2.1", seq=seq)] * 3), timeout=-1)


def test_real_dump_as_any_user():
    """The real kernel answers an address dump without privileges (loopback is always there)."""
    assert ipaddress.ip_address("127.0.0.1") in [a.address for a in vip.addresses(socket.AF_INET)]


# --------------------------------------------------------------------------- one fault, one behaviour in each caller
# (the agent: test_control.py; watch: test_watch_exit.py)
@pytest.fixture
def dump_fails(monkeypatch):
    def fail(*_args, **_kw):
        raise NetlinkError("netlink: the address dump (RTM_GETADDR) timed out", errno=errno.ETIMEDOUT)
    monkeypatch.setattr(netlink, "dump", fail)


def test_status_says_held_unknown_with_the_reason(dump_fails, tmp_path):
    from ipsec_vip import status
    from ipsec_vip.params import Params

    target = status.Target("command-line", "", Params(vip=vip.parse_vip("192.0.2.1"),
                                                       config=str(tmp_path / "none.conf")))
    rep = status.report([target], f"unix://{tmp_path}/charon.vici", timeout=1)
    [v] = rep["vips"]
    assert v["held"] is None
    assert "RTM_GETADDR) timed out" in v["error"]
    assert "held: unknown" in status.render(rep)
