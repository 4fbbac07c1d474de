"""Faults: a real charon frozen, slowed, restarted mid-start; broken VICI sockets (fakes);
concurrent actions; an unusable HA_RSCTMP; a misbehaving VIP; the config changing on disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab import core as lab
from lab.core import GATEWAY_CONF
from tests.test_agent_charon import PSK
from tests.vici_fakes import FakeServer, Proxy

pytestmark = pytest.mark.charon


@pytest.fixture
def frozen_env(gwlab, tmp_path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    gw = gwlab.gateways["gw1"]
    gwlab.add_vip("gw1")
    env = {"lab": gwlab, "gw": gw, "params": {"vip": lab.VIP, "config": str(conf), "vici_socket": gw.uri},
           "rsctmp": str(tmp_path / "rsctmp")}
    try:
        yield env
    finally:
        gw.signal(signal.SIGCONT)
        gwlab.del_vip("gw1")
        gw.clear()


def run(env, action: str, timeout_ms: int = 5000, interval: str = "10000", promotable: str = "",
        ) -> tuple[lab.Result, float]:
    t0 = time.monotonic()
    meta = {"OCF_RESKEY_CRM_meta_promotable": promotable} if promotable else {}
    r = lab.agent(action, env["params"], netns=env["lab"].ns("gw1"), rsctmp=env["rsctmp"],
                  OCF_RESKEY_CRM_meta_timeout=str(timeout_ms), OCF_RESKEY_CRM_meta_interval=interval, **meta)
    return r, time.monotonic() - t0


def test_frozen_charon_every_action_ends_in_time(frozen_env):
    gw = frozen_env["gw"]
    r, _ = run(frozen_env, "start")
    assert r.rc == 0, r.stderr
    gw.signal(signal.SIGSTOP)
    for action, interval, codes in (("monitor", "10000", {1}), ("monitor", "0", {7}), ("stop", "10000", {1}),
                                    ("start", "10000", {0, 1})):
        r, took = run(frozen_env, action, interval=interval)
        assert took < 5.0, f"{action} took {took:.1f}s with a 5s timeout"
        assert r.rc in codes, (action, r.rc, r.stderr)
        assert len(r.reasons) == (0 if r.rc in (0, 7) else 1), r.stderr
        if r.rc not in (0, 7):
            assert "did not answer" in r.reasons[0] or "charon" in r.reasons[0]
    gw.signal(signal.SIGCONT)
    r, _ = run(frozen_env, "monitor")
    assert r.rc == 0, r.stderr  # nothing was lost: the stop above could not run, and said so
    r, _ = run(frozen_env, "stop")
    assert r.rc == 0 and gw.conns() == []


def test_frozen_charon_probe_of_a_stopped_resource_is_7(frozen_env):
    gw = frozen_env["gw"]
    gw.signal(signal.SIGSTOP)
    r, took = run(frozen_env, "monitor", interval="0")
    assert r.rc == 7 and took < 5.0
    r, took = run(frozen_env, "stop")
    assert r.rc == 0 and took < 5.0  # not started here: nothing of ours can be running


# --------------------------------------------------------------------------- broken VICI sockets
def _hang(c: socket.socket) -> None:
    time.sleep(30)


def _garbage(c: socket.socket) -> None:
    with contextlib.suppress(OSError):
        c.recv(4096)
        c.sendall(struct.pack("!I", 7) + b"\x63random")
        time.sleep(5)


def _close_mid_message(c: socket.socket) -> None:
    with contextlib.suppress(OSError):
        c.recv(4096)
        c.sendall(struct.pack("!I", 50) + b"\x01")
        c.close()


@pytest.mark.parametrize("behave", [_hang, _garbage, _close_mid_message], ids=["hang", "garbage", "close"])
def test_broken_vici_socket_every_action_keeps_its_contract(frozen_env, tmp_path, behave):
    """The socket start used breaks: monitor and stop follow the recorded socket into it."""
    gw = frozen_env["gw"]
    path = tmp_path / "charon.vici"
    proxy = Proxy(path, gw.vici_path)
    frozen_env["params"]["vici_socket"] = proxy.uri
    try:
        r, _ = run(frozen_env, "start")
        assert r.rc == 0, r.stderr
        proxy.close()
        path.unlink()
        srv = FakeServer(path, behave)
        try:
            for action, interval, code in (("monitor", "10000", 1), ("monitor", "0", 7), ("stop", "10000", 1),
                                           ("start", "10000", 1)):
                r, took = run(frozen_env, action, interval=interval)
                assert took < 5.0, f"{action} took {took:.1f}s with a 5s timeout"
                assert r.rc == code, (action, interval, r.rc, r.stderr)
                assert len(r.reasons) == (1 if code not in (0, 7) else 0), r.stderr
                assert "Traceback" not in r.stderr
        finally:
            srv.close()
            path.unlink()
        proxy = Proxy(path, gw.vici_path)
        r, _ = run(frozen_env, "monitor")
        assert r.rc == 0, r.stderr  # the failed stop above said 1: our connections were still there
        assert run(frozen_env, "stop")[0].rc == 0
        assert gw.conns() == []
    finally:
        proxy.close()
        frozen_env["params"]["vici_socket"] = gw.uri


def test_stop_and_monitor_use_the_socket_start_used(frozen_env, tmp_path):
    """A changed (or absent) vici_socket parameter must not orphan what start loaded."""
    gw = frozen_env["gw"]
    assert run(frozen_env, "start")[0].rc == 0
    frozen_env["params"]["vici_socket"] = "unix://" + str(tmp_path / "absent.vici")
    try:
        r, _ = run(frozen_env, "monitor")
        assert r.rc == 0, r.stderr
        r, _ = run(frozen_env, "stop")
        assert r.rc == 0, r.stderr
        assert gw.conns() == [], "stop went to the new socket and left our connections loaded"
        assert run(frozen_env, "monitor")[0].rc == 7
    finally:
        frozen_env["params"]["vici_socket"] = gw.uri


@pytest.mark.parametrize(("delay", "code"), [(0.2, 0), (4.5, 1)], ids=["just-under", "just-over"])
def test_slow_charon(frozen_env, tmp_path, delay, code):
    gw = frozen_env["gw"]
    proxy = Proxy(tmp_path / "slow.vici", gw.vici_path)
    frozen_env["params"]["vici_socket"] = proxy.uri
    try:
        assert run(frozen_env, "start")[0].rc == 0
        proxy.reply_delay = delay  # every later session is slow
        r, took = run(frozen_env, "monitor")
        assert r.rc == code, r.stderr
        assert took < 5.0
        if code:
            assert "did not answer" in r.reasons[0]
        proxy.reply_delay = 0.0
        assert run(frozen_env, "stop")[0].rc == 0
    finally:
        proxy.close()
        frozen_env["params"]["vici_socket"] = gw.uri


# --------------------------------------------------------------------------- charon restarted mid-start
@pytest.mark.parametrize("step", ["load-pool", "load-conn"])
def test_charon_restarted_between_start_steps(frozen_env, tmp_path, step):
    gw = frozen_env["gw"]
    restarted = threading.Event()

    def before(command: str) -> None:
        if command == step and not restarted.is_set():
            try:
                gw.kill()  # the agent sees the connection drop at once
                gw.launch()
            finally:
                restarted.set()

    proxy = Proxy(tmp_path / "p.vici", gw.vici_path, before=before)
    frozen_env["params"]["vici_socket"] = proxy.uri
    try:
        r, _ = run(frozen_env, "start")
        assert r.rc == 1 and len(r.reasons) == 1, r.stderr
        assert restarted.wait(15), proxy.commands
        # the truth: the new charon has nothing of ours
        assert gw.conns() == [] and "ike-client1" not in gw.shared()
        assert run(frozen_env, "monitor")[0].rc == 7
        r, _ = run(frozen_env, "start")
        assert r.rc == 0, r.stderr
        assert gw.conns() == ["rw"] and "ike-client1" in gw.shared() and "rw-pool" in gw.pools()
        assert run(frozen_env, "monitor")[0].rc == 0
        assert run(frozen_env, "stop")[0].rc == 0
    finally:
        proxy.close()
        frozen_env["params"]["vici_socket"] = gw.uri


# --------------------------------------------------------------------------- concurrency
def _parallel(*calls):
    with ThreadPoolExecutor(len(calls)) as ex:
        return [f.result() for f in [ex.submit(c) for c in calls]]


def test_two_starts_at_once_and_monitors_during_start(frozen_env, tmp_path):
    gw = frozen_env["gw"]
    many = tmp_path / "many.conf"  # 500 connections: a load long enough for monitors to land inside it
    many.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK} + "connections {\n" + "".join(
        f" extra{i} : connections.rw {{ }}\n" for i in range(500)) + "}\n")
    frozen_env["params"]["config"] = str(many)

    def monitors() -> list[lab.Result]:
        out = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            out.append(run(frozen_env, "monitor")[0])
        return out

    for _ in range(3):
        starts = _parallel(lambda: run(frozen_env, "start")[0], lambda: run(frozen_env, "start")[0],
                           lambda: [], monitors, monitors)
        results, seen = starts[:2], [m for ms in starts[2:] for m in ms]
        assert [r.rc for r in results] == [0, 0], [r.stderr for r in results]
        assert all(r.rc in (0, 7) for r in seen), [(r.rc, r.stderr) for r in seen if r.rc not in (0, 7)]
        assert len(gw.conns()) == 501
        assert run(frozen_env, "monitor")[0].rc == 0
        assert run(frozen_env, "stop")[0].rc == 0
        assert gw.conns() == []


SHARED_CONF = """\
connections {
    a { local_addrs = %(vip)s
        pools = shared-pool
        local { auth = psk
            id = vpn.example.com }
        remote { auth = psk }
        children { a { local_ts = 198.51.100.0/25 } } }
    b { local_addrs = %(vip2)s
        pools = shared-pool
        local { auth = psk
            id = vpn.example.com }
        remote { auth = psk }
        children { b { local_ts = 198.51.100.128/25 } } }
}
pools { shared-pool { addrs = 203.0.113.0/24 } }
secrets { ike-shared { id = vpn.example.com
    secret = "%(psk)s" } }
"""
VIP2 = "192.0.2.101"


def test_two_resources_sharing_a_pool_and_a_secret(frozen_env, tmp_path):
    lb, gw = frozen_env["lab"], frozen_env["gw"]
    conf = tmp_path / "shared.conf"
    conf.write_text(SHARED_CONF % {"vip": lab.VIP, "vip2": VIP2, "psk": PSK})
    lab.run(lab.IP, "-n", lb.ns("gw1"), "addr", "add", f"{VIP2}/32", "dev", "eth0")

    def act(inst: str, vip: str, action: str) -> lab.Result:
        return lab.agent(action, {"vip": vip, "config": str(conf), "vici_socket": gw.uri},
                         netns=lb.ns("gw1"), rsctmp=frozen_env["rsctmp"], instance=inst,
                         OCF_RESKEY_CRM_meta_interval="10000")
    try:
        for _ in range(3):
            ra, rb = _parallel(lambda: act("res-a", lab.VIP, "start"), lambda: act("res-b", VIP2, "start"))
            assert (ra.rc, rb.rc) == (0, 0), (ra.stderr, rb.stderr)
            assert sorted(gw.conns()) == ["a", "b"]
            assert act("res-a", lab.VIP, "stop").rc == 0
            assert gw.conns() == ["b"]
            assert "shared-pool" in gw.pools() and "ike-shared" in gw.shared()  # b still uses them
            assert act("res-b", VIP2, "monitor").rc == 0
            # stop b while a starts again: neither may take what the other uses
            ra, rb = _parallel(lambda: act("res-a", lab.VIP, "start"), lambda: act("res-b", VIP2, "stop"))
            assert (ra.rc, rb.rc) == (0, 0), (ra.stderr, rb.stderr)
            assert gw.conns() == ["a"]
            assert "shared-pool" in gw.pools() and "ike-shared" in gw.shared()
            assert act("res-a", lab.VIP, "stop").rc == 0
            assert gw.conns() == [] and "shared-pool" not in gw.pools() and "ike-shared" not in gw.shared()
    finally:
        lab.run(lab.IP, "-n", lb.ns("gw1"), "addr", "del", f"{VIP2}/32", "dev", "eth0", check=False)


# --------------------------------------------------------------------------- HA_RSCTMP
@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    lab.run("/usr/bin/mount", "-t", "tmpfs", "-o", options, "ipsec-vip-test", str(path))
    try:
        yield path
    finally:
        lab.run("/usr/bin/umount", "-l", str(path), check=False)


def _nothing_loaded(gw: lab.Charon) -> bool:
    return gw.conns() == [] and "ike-client1" not in gw.shared() and "rw-pool" not in gw.pools()


def test_rsctmp_missing_is_created(frozen_env, tmp_path):
    frozen_env["rsctmp"] = str(tmp_path / "not" / "there")
    assert run(frozen_env, "start")[0].rc == 0
    mode = os.stat(tmp_path / "not" / "there" / "ipsec-vip").st_mode & 0o777
    assert mode == 0o700
    assert run(frozen_env, "stop")[0].rc == 0


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_rsctmp_unusable_start_fails_cleanly(frozen_env, tmp_path, kind):
    gw = frozen_env["gw"]
    with _tmpfs(tmp_path / "rsc", "ro,size=64k" if kind == "read-only" else "size=8k,nr_inodes=64") as d:
        if kind == "full":
            with contextlib.suppress(OSError), open(d / "filler", "wb") as f:
                f.write(b"x" * 64 * 1024)
        frozen_env["rsctmp"] = str(d)
        r, _ = run(frozen_env, "start")
        assert r.rc == 1 and len(r.reasons) == 1, r.stderr
        assert "state" in r.reasons[0]
        assert _nothing_loaded(gw)
        assert run(frozen_env, "monitor", interval="0")[0].rc == 7
        assert run(frozen_env, "stop")[0].rc == 0


def test_planted_symlink_is_not_followed(frozen_env, tmp_path):
    gw = frozen_env["gw"]
    rsc = tmp_path / "rsc"
    rsc.mkdir()
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    (elsewhere / "vpn.json").write_text(json.dumps(
        {"vip": lab.VIP, "config": "/x", "conns": ["victim"], "secrets": ["victim-psk"], "pools": []}))
    (rsc / "ipsec-vip").symlink_to(elsewhere)
    frozen_env["rsctmp"] = str(rsc)
    r, _ = run(frozen_env, "start")
    assert r.rc == 1 and "symlink" in r.reasons[0], r.stderr
    assert _nothing_loaded(gw)
    assert sorted(os.listdir(elsewhere)) == ["vpn.json"]
    r, _ = run(frozen_env, "monitor")
    assert r.rc == 1 and "symlink" in r.reasons[0]
    assert run(frozen_env, "monitor", interval="0")[0].rc == 7
    r, _ = run(frozen_env, "stop")
    assert r.rc == 1 and "symlink" in r.reasons[0]  # cannot lock safely: say so, never follow
    assert sorted(os.listdir(elsewhere)) == ["vpn.json"]


@pytest.mark.parametrize("damage", [b"", b"{\"vip\": ", b"\x00\xff garbage", b"[]"])
def test_damaged_state_file(frozen_env, damage):
    gw = frozen_env["gw"]
    assert run(frozen_env, "start")[0].rc == 0
    state = Path(frozen_env["rsctmp"]) / "ipsec-vip" / "vpn.json"
    state.write_bytes(damage)
    assert run(frozen_env, "monitor")[0].rc == 0  # falls back to what the config loads: the truth
    r, _ = run(frozen_env, "stop")
    assert r.rc == 0, r.stderr
    assert _nothing_loaded(gw)
    assert run(frozen_env, "monitor", interval="0")[0].rc == 7


# --------------------------------------------------------------------------- the VIP misbehaving
def test_vip_flapping_while_start_runs(frozen_env):
    lb, gw = frozen_env["lab"], frozen_env["gw"]
    lb.del_vip("gw1")
    stop_flap = threading.Event()

    def flap() -> None:
        while not stop_flap.is_set():
            lb.add_vip("gw1")
            time.sleep(0.01)
            lb.del_vip("gw1")

    t = threading.Thread(target=flap)
    t.start()
    outcomes = []
    try:
        for _ in range(10):
            r, _ = run(frozen_env, "start")
            assert r.rc in (0, 1), r.stderr
            outcomes.append(r.rc)
            if r.rc == 0:
                assert gw.conns() == ["rw"]
                assert run(frozen_env, "stop")[0].rc == 0
            else:
                assert "does not hold" in r.reasons[0], r.stderr
            assert _nothing_loaded(gw)
    finally:
        stop_flap.set()
        t.join()
        lb.del_vip("gw1")
        lb.add_vip("gw1")


def test_vip_on_the_wrong_interface(frozen_env):
    frozen_env["params"]["interface"] = "eth1"
    r, _ = run(frozen_env, "start")
    assert r.rc == 1 and "eth1" in r.reasons[0], r.stderr
    assert _nothing_loaded(frozen_env["gw"])
    assert run(frozen_env, "monitor", interval="0")[0].rc == 7
    frozen_env["params"]["interface"] = "eth0"
    assert run(frozen_env, "start")[0].rc == 0
    assert run(frozen_env, "stop")[0].rc == 0


VIP6 = "2001:db8:f00::100"


@pytest.mark.parametrize("state", ["tentative", "dadfailed"])
def test_ipv6_vip_not_yet_or_never_ours(frozen_env, tmp_path, state):
    lb, gw = frozen_env["lab"], frozen_env["gw"]
    conf = tmp_path / "v6.conf"
    conf.write_text(GATEWAY_CONF.replace("%(vip)s", VIP6) % {"psk": PSK})
    frozen_env["params"].update(vip=VIP6, config=str(conf))
    gwns, clns = lb.ns("gw1"), lb.ns("client")
    lab.in_ns(gwns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=1")
    if state == "tentative":
        lab.in_ns(gwns, "sysctl", "-qw", "net.ipv6.conf.eth0.dad_transmits=60")
    else:
        lab.run(lab.IP, "-n", clns, "addr", "add", f"{VIP6}/64", "dev", "eth0", "nodad")
    lab.run(lab.IP, "-n", gwns, "addr", "add", f"{VIP6}/64", "dev", "eth0")
    try:
        if state == "dadfailed":
            deadline = time.monotonic() + 10
            while "dadfailed" not in lab.run(lab.IP, "-n", gwns, "-6", "addr", "show", "dev", "eth0").stdout:
                assert time.monotonic() < deadline, "DAD never failed"
                time.sleep(0.1)
        r, _ = run(frozen_env, "start")
        assert r.rc == 1 and "does not hold" in r.reasons[0], r.stderr
        assert _nothing_loaded(gw)
        assert run(frozen_env, "monitor", interval="0")[0].rc == 7
    finally:
        lab.run(lab.IP, "-n", gwns, "addr", "del", f"{VIP6}/64", "dev", "eth0", check=False)
        lab.run(lab.IP, "-n", clns, "addr", "del", f"{VIP6}/64", "dev", "eth0", check=False)
        lab.in_ns(gwns, "sysctl", "-qw", "net.ipv6.conf.eth0.dad_transmits=1")


# --------------------------------------------------------------------------- the config changing on disk
def test_config_renamed_between_start_and_stop(frozen_env):
    gw = frozen_env["gw"]
    conf = Path(frozen_env["params"]["config"])
    assert run(frozen_env, "start")[0].rc == 0
    conf.write_text(conf.read_text().replace("    rw {", "    renamed {", 1))
    r, _ = run(frozen_env, "monitor")
    assert r.rc == 0, r.stderr  # what is loaded is what start loaded
    r, _ = run(frozen_env, "stop")
    assert r.rc == 0, r.stderr
    assert _nothing_loaded(gw)


# --------------------------------------------------------------------------- stateful mode without the ha plugin
def test_promotable_start_on_a_real_charon_without_the_ha_plugin(frozen_env, tmp_path):
    """The lab's ordinary charon loads no ha plugin: a promotable clone's start says so with 5 and
    loads nothing, and its probe stays 7 (the fakes in test_hasync cover the FIFO cases)."""
    gw = frozen_env["gw"]
    fifo = tmp_path / "charon.ha"
    os.mkfifo(fifo)
    conf = tmp_path / "stateful.conf"
    conf.write_text(lab.STATEFUL_GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    conf.chmod(0o600)
    frozen_env["params"].update(ha_fifo=str(fifo), config=str(conf))  # the fixture's config has a VICI pool
    try:
        r, _ = run(frozen_env, "start", promotable="true")
        assert r.rc == 5, r.stderr
        assert len(r.reasons) == 1 and "no 'ha' plugin" in r.reasons[0] and "Traceback" not in r.stderr
        assert _nothing_loaded(gw)
        assert run(frozen_env, "monitor", interval="0", promotable="true")[0].rc == 7
    finally:
        del frozen_env["params"]["ha_fifo"]
