"""The VICI wrapper: real charon for the normal paths, fake sockets for faults charon cannot make."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_vip.errors import ViciCommandError, ViciError, ViciUnreachable
from ipsec_vip.vici_session import Vici, decode, parse, socket_path
from tests.vici_fakes import FakeServer


def _read_request(c: socket.socket) -> bytes:
    (n,) = struct.unpack("!I", c.recv(4))
    return c.recv(n)


@pytest.fixture
def fake(tmp_path):
    servers = []

    def make(behave):
        s = FakeServer(tmp_path / f"f{len(servers)}.vici", behave)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def test_socket_path_forms():
    assert socket_path("unix:///var/run/charon.vici") == "/var/run/charon.vici"
    assert socket_path("/run/x") == "/run/x"
    with pytest.raises(ValueError):
        socket_path("tcp://127.0.0.1:4502")


def test_missing_socket_is_unreachable(tmp_path):
    with Vici(str(tmp_path / "none.vici")) as v, pytest.raises(ViciUnreachable, match=r"none\.vici"):
        v.request("version")


def test_refused_socket_is_unreachable(tmp_path):
    p = tmp_path / "dead.vici"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()  # a socket file nobody listens on
    with Vici(str(p)) as v, pytest.raises(ViciUnreachable):
        v.request("version")


def test_never_answers_times_out(fake):
    srv = fake(lambda c: time.sleep(30))
    t = time.monotonic()
    with Vici(srv.path) as v, pytest.raises(ViciError, match="did not answer"):
        v.request("version", timeout=0.3)
    assert time.monotonic() - t < 2


def test_stalls_mid_message_times_out(fake):
    def behave(c):
        _read_request(c)
        c.sendall(b"\x00\x00")  # half a length header, then silence
        time.sleep(30)
    srv = fake(behave)
    t = time.monotonic()
    with Vici(srv.path) as v, pytest.raises(ViciError, match="did not answer"):
        v.request("version", timeout=0.3)
    assert time.monotonic() - t < 2


def test_stalls_mid_payload_hits_the_hard_deadline(fake):
    def behave(c):
        _read_request(c)
        c.sendall(struct.pack("!I", 100) + b"\x01")  # promises 100 bytes, sends 1
        time.sleep(30)
    srv = fake(behave)
    t = time.monotonic()
    with Vici(srv.path) as v, pytest.raises(ViciError):
        v.request("version", timeout=0.3)
    assert time.monotonic() - t < 2


@pytest.mark.parametrize("garbage", [b"\x63random", b"\x01\x03\xff", b"\x02"])
def test_garbage_is_a_protocol_error(fake, garbage):
    def behave(c):
        _read_request(c)
        c.sendall(struct.pack("!I", len(garbage)) + garbage)
    srv = fake(behave)
    with Vici(srv.path) as v, pytest.raises(ViciError) as e:
        v.request("version", timeout=1)
    assert not isinstance(e.value, ViciUnreachable)


def test_close_mid_message_is_an_error(fake):
    def behave(c):
        _read_request(c)
        c.sendall(struct.pack("!I", 50) + b"\x01")
        c.close()
    srv = fake(behave)
    with Vici(srv.path) as v, pytest.raises(ViciError):
        v.request("version", timeout=1)


def test_reconnects_after_a_timeout(fake):
    calls = []

    def behave(c):
        calls.append(c)
        _read_request(c)
        if len(calls) == 1:
            time.sleep(30)  # never answers; the test has moved on and closed it
            return
        # an empty CMD_RESPONSE
        c.sendall(struct.pack("!I", 1) + b"\x01")
    srv = fake(behave)
    with Vici(srv.path) as v:
        with pytest.raises(ViciError):
            v.request("version", timeout=0.3)
        assert v.request("version", timeout=1) == {}
    assert len(calls) == 2


@pytest.mark.charon
def test_real_charon_round_trip(charon):
    with Vici(charon.vici_path) as v:
        ver = v.request("version")
        assert ver["version"].startswith("5.") and isinstance(ver["daemon"], str)
        assert isinstance(v.request("get-conns")["conns"], list)
        assert v.stream("list-sas", "list-sa", {"noblock": "yes"}) == []


@pytest.mark.charon
def test_vici_loads_without_its_event_listener_and_completes_on_demand(charon):
    """The agent skips vici/__init__.py (its inspect import costs 5-7 ms per action)."""
    code = ("import sys; from ipsec_vip.vici_session import Vici; v = Vici(sys.argv[1]); "
            "print(v.request('version')['daemon'], 'inspect' in sys.modules, 'vici.event_listener' in sys.modules); "
            "import vici; print(vici.EventListener.__name__, vici.Session.__name__)")
    p = subprocess.run([sys.executable, "-c", code, charon.vici_path], capture_output=True, text=True, timeout=30)
    assert p.stdout.split() == ["charon", "False", "False", "EventListener", "Session"], p.stderr


@pytest.mark.charon
def test_real_charon_errmsg_is_carried(charon):
    with Vici(charon.vici_path) as v, pytest.raises(ViciCommandError) as e:
        v.request("unload-conn", {"name": "no-such-conn"})
    assert "not found" in e.value.errmsg
    assert e.value.command == "unload-conn"


@pytest.mark.charon
def test_real_charon_streamed_error_after_consuming(charon):
    with Vici(charon.vici_path) as v, pytest.raises(ViciCommandError, match="no matching"):
        v.stream("terminate", "control-log", {"ike": "nothing", "force": "yes", "timeout": "-1"})


# --- the streamed-event decoder, against the vici package's own (the oracle) -------------------
_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: len(s.encode()) < 256)
_values = st.one_of(st.text(max_size=40), st.binary(max_size=40))
_messages = st.recursive(
    st.dictionaries(_names, st.one_of(_values, st.lists(_values, max_size=4)), max_size=5),
    lambda inner: st.dictionaries(_names, st.one_of(_values, st.lists(_values, max_size=3), inner), max_size=5),
    max_leaves=30)


@given(_messages)
def test_parse_decodes_as_the_vici_package_does(message):
    from vici.protocol import FiniteStream, Message

    data = Message.serialize(message)
    assert parse(data) == decode(Message.deserialize(FiniteStream(data)))


@pytest.mark.parametrize("data", [
    b"\x03\x03key\x00\x09short",          # value runs past the end
    b"\x01\x03sec\x03\x01k\x00\x01v",      # section never ended
    b"\x02",                               # end without a start
    b"\x04\x01l\x05\x00\x01a",             # list never ended
    b"\x04\x01l\x05\x00\x05a",             # list item past the end
    b"\x09",                               # no such element
])
def test_parse_refuses_malformed_messages(data):
    with pytest.raises((ValueError, IndexError)):
        parse(data)


@pytest.mark.charon
def test_real_charon_stream_matches_the_vici_package(charon):
    """The same list-conns through our decoder and through the package's, on a real charon."""
    charon.swanctl("--load-all", "--file", str(_conf(charon)))
    with Vici(charon.uri) as v:
        ours = v.stream("list-conns", "list-conn")
    with charon.vici() as s:
        theirs = [decode(e) for e in s.streamed_request("list-conns", "list-conn")]
    assert ours == theirs and ours


def _conf(charon):
    path = charon.base / "conns.conf"
    path.write_text("connections {\n" + "".join(
        f"  c{i} {{\n    local_addrs = 192.0.2.{i + 1}\n    remote_addrs = %any\n    local {{ auth = psk }}\n"
        f"    remote {{ auth = psk }}\n"
        f"    children {{ c{i} {{ local_ts = 10.{i}.0.0/16, 10.{i + 1}.0.0/16 }} }}\n  }}\n"
        for i in range(5)) + "}\n")
    return path
