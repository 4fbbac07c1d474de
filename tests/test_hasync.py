"""Stateful mode's error paths, against fakes (no root, no daemon): a charon without the ha
plugin, a missing or planted FIFO, a promote where the VIP is not, a FIFO nobody reads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ipsec_vip import hasync
from ipsec_vip import vip as vipmod
from ipsec_vip.errors import IpsecVipError, NotInstalledError
from ipsec_vip.params import Params
from ipsec_vip.state import Record, StateDir
from lab import core as lab
from tests.vici_fakes import Recorder

PROMOTABLE = {"OCF_RESKEY_CRM_meta_promotable": "true"}
CONF = lab.STATEFUL_GATEWAY_CONF % {"vip": "192.0.2.199", "psk": "unit-psk-Zq8vK2mN4pR7sT1wX5yB9cD3fG6hJ0"}


@pytest.fixture
def env(tmp_path: Path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text(CONF)
    fifo = tmp_path / "charon.ha"
    os.mkfifo(fifo, 0o600)
    return {"conf": conf, "fifo": fifo, "rsctmp": str(tmp_path / "rsctmp"), "tmp": tmp_path}


def run(env, action: str, uri: str, fifo: Path | None = None, vip: str = "192.0.2.199", **extra: str) -> lab.Result:
    params = {"vip": vip, "config": str(env["conf"]), "vici_socket": uri, "ha_fifo": str(fifo or env["fifo"])}
    return lab.agent(action, params, rsctmp=env["rsctmp"], **PROMOTABLE, **extra)


def charon(env, plugins: list[str]) -> Recorder:
    return Recorder(env["tmp"] / "vici", replies={"stats": {"plugins": plugins}})


def test_start_without_the_ha_plugin_is_5_and_loads_nothing(env):
    fake = charon(env, ["vici", "kernel-libipsec"])
    try:
        r = run(env, "start", fake.uri)
    finally:
        fake.close()
    assert r.rc == 5, r.stderr
    assert "no 'ha' plugin" in r.reasons[-1] and "Traceback" not in r.stderr
    assert not fake.sent("load-conn") and not fake.sent("load-shared")
    assert run(env, "monitor", fake.uri).rc == 7  # not started


@pytest.mark.parametrize("kind", ["missing", "file", "directory"])
def test_start_without_a_usable_fifo_is_5_and_loads_nothing(env, kind):
    bad = env["tmp"] / "not-a-fifo"
    if kind == "file":
        bad.write_text("+1\n")
    elif kind == "directory":
        bad.mkdir()
    fake = charon(env, ["vici", "ha"])
    try:
        r = run(env, "start", fake.uri, fifo=bad)
    finally:
        fake.close()
    assert r.rc == 5, r.stderr
    assert ("is missing" if kind == "missing" else "is not a FIFO") in r.reasons[-1]
    assert not fake.sent("load-conn")
    if kind == "file":
        assert bad.read_text() == "+1\n"


def test_promote_without_the_vip_changes_nothing(env):
    fake = charon(env, ["vici", "ha"])
    reader = os.open(env["fifo"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = run(env, "promote", fake.uri)
        assert r.rc == 1
        assert "does not hold VIP" in r.reasons[-1] and "nothing changed" in r.reasons[-1]
        assert fake.requests == []  # not a single VICI request
        assert os.read(reader, 64) == b""  # nothing written to the FIFO
        assert not os.path.exists(os.path.join(env["rsctmp"], "ipsec-vip", "vpn.promoted"))
    finally:
        os.close(reader)
        fake.close()


def test_a_primitive_has_no_promote_or_demote(env):
    params = {"vip": "192.0.2.199", "config": str(env["conf"])}
    for action in ("promote", "demote"):
        r = lab.agent(action, params, rsctmp=env["rsctmp"])
        assert r.rc == 3 and "promotable clone" in r.reasons[-1]  # ocf-tester: a primitive has neither
    assert lab.agent("notify", params, rsctmp=env["rsctmp"]).rc == 0


def test_send_writes_one_command_the_plugin_reads(env):
    got: list[bytes] = []

    def plugin() -> None:  # ha_ctl.c: open, one read, close
        fd = os.open(env["fifo"], os.O_RDONLY)
        got.append(os.read(fd, 7))
        os.close(fd)

    t = threading.Thread(target=plugin)
    t.start()
    hasync.send(str(env["fifo"]), "+1", timeout=5)
    t.join(5)
    assert got == [b"+1\n"]


def test_send_to_a_fifo_nobody_reads_fails_in_time(env):
    with pytest.raises(IpsecVipError, match="nobody reads"):
        hasync.send(str(env["fifo"]), "-1", timeout=0.2)


def test_send_refuses_a_regular_file(env):
    f = env["tmp"] / "plain"
    f.write_text("")
    with pytest.raises(NotInstalledError, match="not a FIFO"):
        hasync.send(str(f), "+1")
    assert f.read_text() == ""


@pytest.mark.parametrize("swap", ["symlink", "regular file"])
def test_a_fifo_swapped_after_the_check_is_not_written_through(env, monkeypatch, swap):
    """The race: check_fifo sees the plugin's FIFO, then (a writable directory) it is replaced by a
    symlink to a file of root's, or by a file, before send opens it. Nothing may be written."""
    victim = env["tmp"] / "victim"
    victim.write_text("precious\n")
    checked = hasync.check_fifo

    def check_then_swap(path: str) -> None:
        checked(path)
        os.unlink(path)
        if swap == "symlink":
            os.symlink(victim, path)
        else:
            Path(path).write_text("")

    monkeypatch.setattr(hasync, "check_fifo", check_then_swap)
    with pytest.raises(IpsecVipError, match=r"symbolic link|no longer a FIFO"):
        hasync.send(str(env["fifo"]), "+1", timeout=0.5)
    assert victim.read_text() == "precious\n"
    assert swap == "symlink" or env["fifo"].read_text() == ""


def test_ha_settings_follow_strongswan_conf_grammar(tmp_path):
    from ipsec_vip import preflight, swanctl

    d = tmp_path / "strongswan.d"
    d.mkdir()
    (d / "ha.conf").write_text("charon {\n  plugins {\n    ha {\n      monitor = no # Pacemaker decides\n"
                               "      secret = \"s e c\"\n    }\n  }\n}\n")
    main = tmp_path / "strongswan.conf"
    main.write_text("charon {\n  plugins {\n    ha {\n      local = 192.0.2.1\n      monitor = yes\n    }\n  }\n}\n"
                    "include strongswan.d/*.conf\ncharon-systemd {\n  plugins {\n    ha {\n      remote = 192.0.2.2\n"
                    "    }\n  }\n}\n")
    assert swanctl.settings(str(main), "charon.plugins.ha") == {"local": "192.0.2.1", "monitor": "no",
                                                                 "secret": "s e c"}
    assert swanctl.settings(str(main), "charon.plugins.vici") is None
    assert preflight._ha_settings(str(main)) == {"local": "192.0.2.1", "monitor": "no", "secret": "s e c",
                                                 "remote": "192.0.2.2"}


def test_start_destroys_only_the_passive_copies_a_stop_left(env):
    """Stop leaves its passive copies (the peer's promote waits for stop); the next start
    destroys them, and only them, before the resync, wherever the VIP is - a repeated start of
    a started instance keeps its live copies."""
    from ipsec_vip import vip as vipmod
    from ipsec_vip.action import Deadline
    from ipsec_vip.params import Params
    from ipsec_vip.state import Record, StateDir
    from tests.vici_fakes import FakeCharon

    fake = FakeCharon(env["tmp"] / "charon.vici")
    fake.sas = {"rw": [{"uniqueid": "1", "state": "PASSIVE"}, {"uniqueid": "2", "state": "PASSIVE"},
                       {"uniqueid": "3", "state": "ESTABLISHED"}],
                "other": [{"uniqueid": "4", "state": "PASSIVE"}]}
    params = Params(vip=vipmod.parse_vip("192.0.2.199"), config=str(env["conf"]), vici_socket=fake.uri)
    states = StateDir(env["rsctmp"])
    try:
        states.write("vpn", Record(vip="192.0.2.199", config=str(env["conf"]), conns=["rw"]))
        assert hasync.destroy_leftovers(params, "vpn", states, Deadline(10)) == 0
        assert fake.sent("terminate") == []
        states.remove("vpn")
        assert hasync.destroy_leftovers(params, "vpn", states, Deadline(10)) == 2
    finally:
        fake.close()
    assert [m["ike-id"] for m in fake.sent("terminate")] == ["1", "2"]
    assert [s["uniqueid"] for bodies in fake.sas.values() for s in bodies] == ["3", "4"]


def plugin(fifo: Path, reads: int, act: Callable[[bytes], None]) -> tuple[threading.Thread, list[bytes]]:
    """The ha plugin's FIFO reader (ha_ctl.c): open, read one command, close, act on it, and only
    then open again - ``reads`` times; returns the thread and the commands it read."""
    got: list[bytes] = []

    def serve() -> None:
        for _ in range(reads):
            fd = os.open(fifo, os.O_RDONLY)
            got.append(os.read(fd, 7))
            os.close(fd)
            act(got[-1])

    t = threading.Thread(target=serve)
    t.start()
    return t, got


def instance(env, uri: str) -> tuple[Params, StateDir]:
    """A started instance of connection ``rw`` on the charon at ``uri``: its parameters and state dir."""
    params = Params(vip=vipmod.parse_vip("192.0.2.199"), config=str(env["conf"]), vici_socket=uri,
                    ha_fifo=str(env["fifo"]))
    states = StateDir(env["rsctmp"])
    states.write("vpn", Record(vip="192.0.2.199", config=str(env["conf"]), conns=["rw"]))
    return params, states


def test_a_promote_rekeys_only_once_the_plugin_took_the_segment_and_lists_no_sa(env, monkeypatch):
    """10,000 synced SAs could not be listed within a promote's time: the promote failed and the
    fleet was lost. Now nothing lists them: the children to rekey come from the loaded
    connections, and the rekey waits until the plugin is done taking the segment (it reads the
    next command only then) - a rekey of a still PASSIVE IKE_SA does nothing, the client's replay
    window then drops our traffic."""
    from ipsec_vip import promotion
    from ipsec_vip import vip as vipmod
    from ipsec_vip.action import Deadline
    from tests.vici_fakes import FakeCharon

    fake = FakeCharon(env["tmp"] / "charon.vici")
    fake.loaded = {"rw": {"children": {"rw": {}, "rw-v6": {}}}, "other": {"children": {"x": {}}}}
    fake.sas = {"rw": [{"uniqueid": str(n), "state": "PASSIVE",
                        "child-sas": {f"rw-{n}": {"uniqueid": str(n), "name": "rw", "state": "INSTALLED"}}}
                       for n in range(1, 4)]}
    monkeypatch.setattr(vipmod, "held", lambda vip, interface: True)
    monkeypatch.setattr(hasync, "admit_new_clients", lambda vip, admit: None)

    def take(command: bytes) -> None:  # a slow takeover: the next command is read only after it
        if command == b"+1\n":
            threading.Event().wait(0.3)
            for sa in fake.sas["rw"]:
                sa["state"] = "ESTABLISHED"

    waited: dict[str, float] = {}
    send = hasync.send

    def timed_send(path: str, command: str, timeout: float = 5.0) -> None:
        waited[command] = timeout
        send(path, command, timeout)

    monkeypatch.setattr(hasync, "send", timed_send)
    t, got = plugin(env["fifo"], 2, take)
    params, states = instance(env, fake.uri)
    try:
        done, held = hasync.promote(params, "vpn", states, Deadline(60))
    finally:
        t.join(5)
        fake.close()
    assert got == [b"+1\n", b"=1\n"] and promotion.promoted(states, "vpn")
    assert fake.sent("list-sas") == [] and held == 3
    assert sorted((m["ike"], m["child"]) for m in fake.sent("rekey")) == [("rw", "rw"), ("rw", "rw-v6")]
    assert "rekey of 3 CHILD_SA(s) queued" in done, done
    assert waited["=1"] > 50  # the takeover may take the promote's whole time, not a VICI call's 10 s


@pytest.mark.parametrize("busy", [None, "list-sas", "terminate"])
def test_a_demote_drops_the_segment_even_when_charon_is_too_busy_to_list(env, monkeypatch, busy):
    """At 5,000 SAs in a connect storm charon did not answer the demote's list-sas in time: the
    demote failed with the segment still held here, then the stop. The drop goes through the
    FIFO, not VICI: it is sent whatever VICI says, with a warning, and the demote succeeds."""
    from ipsec_vip import promotion
    from ipsec_vip.action import Deadline
    from tests.vici_fakes import FakeCharon

    fake = FakeCharon(env["tmp"] / "charon.vici")
    fake.sas = {"rw": [{"uniqueid": "1", "state": "ESTABLISHED",
                        "child-sas": {"rw-1": {"uniqueid": "5", "name": "rw", "state": "DELETED"}}}]}
    if busy:
        fake.refuse[busy] = "timeout"
    admitted: list[bool] = []
    monkeypatch.setattr(hasync, "admit_new_clients", lambda vip, admit: admitted.append(admit))

    def give_up(command: bytes) -> None:  # the segment given up: the SA becomes a copy
        fake.sas["rw"][0]["state"] = "PASSIVE"

    t, got = plugin(env["fifo"], 1, give_up)
    params, states = instance(env, fake.uri)
    try:
        promotion.set_promoted(states, "vpn", True)
        done = hasync.demote(params, "vpn", states, Deadline(5))
    finally:
        t.join(5)
        fake.close()
    assert got == [b"-1\n"] and admitted == [False] and not promotion.promoted(states, "vpn")
    assert ("IKE_SAs not checked" in done) == bool(busy), done
    if not busy:
        assert [m.get("child-id") for m in fake.sent("terminate")] == ["5"]  # the rekey's leftover
