"""The watch daemon's decisions with a hand-driven clock, against an in-memory charon, as any user.

``Watcher._reconcile`` is called as the event loop would call it after a wake-up or a timeout;
the clock only moves when the test moves it, so every backoff and check interval is asserted
exactly. The same daemon runs against real charons and real address events in test_watch.py.
"""

from __future__ import annotations

import asyncio
import os
from functools import partialmethod

import pytest

from ipsec_vip import vip as vipmod
from ipsec_vip import watch
from ipsec_vip.params import Params
from ipsec_vip.state import StateDir
from lab.core import GATEWAY_CONF
from tests.vici_fakes import FakeCharon

VIP = "192.0.2.100"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _add(self, level: str, msg: str, *args: object) -> None:
        self.lines.append((level, msg % args))

    debug = partialmethod(_add, "debug")
    info = partialmethod(_add, "info")
    warning = partialmethod(_add, "warning")
    error = partialmethod(_add, "error")

    def count(self, level: str, text: str) -> int:
        return sum(1 for lv, line in self.lines if lv == level and text in line)


class Bed:
    def __init__(self, tmp_path, monkeypatch, check_interval: float = 10.0) -> None:
        self.path = tmp_path / "charon.vici"
        self.charon: FakeCharon | None = None
        conf = tmp_path / "swanctl.conf"
        conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40})
        os.chmod(conf, 0o600)
        self.held = True
        monkeypatch.setattr(vipmod, "held", lambda vip, interface=None: self.held)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        self.log = Log()
        monkeypatch.setattr(watch, "log", self.log)
        self.clock = Clock()
        self.states = StateDir(str(tmp_path / "state"))
        self.states.ensure()
        params = Params(vip=vipmod.parse_vip(VIP), config=str(conf), vici_socket=f"unix://{self.path}")
        self.w = watch.Watcher(params, "w", self.states, check_interval=check_interval, clock=self.clock)
        monkeypatch.setattr(self.w, "_listen", lambda: None)  # address events are test_watch.py's

    def charon_up(self) -> FakeCharon:
        self.charon = FakeCharon(self.path)
        return self.charon

    def charon_down(self) -> None:
        assert self.charon is not None
        self.charon.close()
        os.unlink(self.path)
        self.charon = None

    def step(self, seconds: float = 0.0) -> float | None:
        """Move the clock, run one reconcile; the time until the daemon's next timeout."""
        self.clock.now += seconds
        self.w._reconcile()
        return self.w._timeout()

    def loaded(self) -> set[str]:
        assert self.charon is not None
        return set(self.charon.loaded)


@pytest.fixture
def bed(tmp_path, monkeypatch):
    b = Bed(tmp_path, monkeypatch)
    yield b
    if b.charon is not None:
        b.charon.close()


def in_loop(fn):
    """Run ``fn`` inside an event loop (the watcher registers its charon socket with it)."""
    async def main():
        fn()
    asyncio.run(main())


def test_follows_the_vip_and_checks_every_interval(bed):
    def scenario():
        bed.charon_up()
        assert bed.step() == 10.0  # charon was there at the first look: no settling
        assert bed.loaded() == {"rw"} and bed.w._status == f"VIP {VIP} held here, connections loaded"
        assert bed.step(10.0) == 10.0  # the periodic check finds them loaded
        assert len(bed.charon.sent("load-conn")) == 1
        bed.charon.loaded.clear()  # swanctl --load-all unloaded them behind our back
        assert bed.step(10.0) == 10.0
        assert bed.loaded() == {"rw"} and len(bed.charon.sent("load-conn")) == 2
        assert bed.log.count("warning", "none of the 1 connections are loaded in charon") == 1
        bed.held = False
        assert bed.step() is None  # nothing to check while nothing is loaded
        assert bed.loaded() == set() and bed.states.read("w") is None
        assert bed.w._status == f"VIP {VIP} not held here, nothing loaded"
    in_loop(scenario)


def test_charon_absent_backs_off_then_settles_when_it_appears(bed):
    def scenario():
        waits = [bed.step()]
        for _ in range(8):
            waits.append(bed.step(waits[-1]))
        assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
        assert bed.w._status == f"waiting for charon on unix://{bed.path}"
        assert bed.log.count("warning", "charon is not answering") == 1  # logged once, not per retry
        bed.charon_up()
        assert bed.step(5.0) == pytest.approx(1.0)  # charon appeared after us: swanctl --load-all may follow
        assert bed.loaded() == {"rw"}
        t = 0.0
        while t < 9.0:  # every second for 10 s ...
            assert bed.step(1.0) == pytest.approx(1.0)
            t += 1.0
        assert bed.step(1.0) == pytest.approx(10.0)  # ... then the normal interval
        assert len(bed.charon.sent("load-conn")) == 1
    in_loop(scenario)


def test_charon_exit_is_noticed_and_waited_for(bed):
    def scenario():
        bed.charon_up()
        bed.step()
        bed.charon_down()
        bed.w._charon_readable()  # what the loop calls when the idle connection hits EOF
        assert bed.w._charon is None
        assert bed.step() == pytest.approx(0.1)
        bed.charon_up()
        assert bed.step(0.1) == pytest.approx(1.0) and bed.loaded() == {"rw"}  # a new charon knows nothing of ours
    in_loop(scenario)


def test_failed_action_backs_off_logs_once_and_recovers(bed):
    def scenario():
        bed.charon_up().refuse["load-conn"] = "invalid config"
        waits = [bed.step()]
        for _ in range(3):
            waits.append(bed.step(waits[-1]))
        assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8])
        assert bed.w._status == "error: charon refused connection rw: invalid config"
        assert bed.log.count("error", "charon refused connection rw: invalid config (retrying)") == 1
        del bed.charon.refuse["load-conn"]
        assert bed.step(0.8) == pytest.approx(10.0)
        assert bed.loaded() == {"rw"} and bed.log.count("info", "recovered: connections loaded") == 1
        assert bed.w._failures == 0
    in_loop(scenario)


def test_sighup_checks_every_second_for_a_while_even_with_checks_off(tmp_path, monkeypatch):
    b = Bed(tmp_path, monkeypatch, check_interval=0)

    def scenario():
        b.charon_up()
        assert b.step() is None  # checks off: nothing to wait for
        b.w._reload()
        assert b.step() == pytest.approx(1.0)
        b.charon.loaded.clear()
        assert b.step(1.0) == pytest.approx(1.0) and b.loaded() == {"rw"}
        for _ in range(8):
            b.step(1.0)
        assert b.step(1.0) is None
    try:
        in_loop(scenario)
    finally:
        b.charon.close()


def test_with_checks_off_charons_restart_opens_a_window_and_only_sighup_looks_after_it(tmp_path, monkeypatch):
    """strongswan.service's `swanctl --load-all` after charon's (re)start: even with periodic checks
    off, every second for 10 s after charon appears; past that nobody looks until SIGHUP."""
    b = Bed(tmp_path, monkeypatch, check_interval=0)

    def scenario():
        assert b.step() == pytest.approx(0.1)  # no charon yet
        b.charon_up()
        assert b.step(0.1) == pytest.approx(1.0) and b.loaded() == {"rw"}  # charon appeared after us
        b.charon.loaded.clear()
        assert b.step(1.0) == pytest.approx(1.0) and b.loaded() == {"rw"}  # inside the window: put back
        for _ in range(8):
            b.step(1.0)
        assert b.step(1.0) is None  # past the 10 s: no checks any more
        b.charon.loaded.clear()
        b.clock.now += 3600.0  # nobody looks ...
        assert b.loaded() == set()
        b.w._reload()  # ... until SIGHUP (the unit's ExecReload)
        assert b.step() == pytest.approx(1.0) and b.loaded() == {"rw"}
    try:
        in_loop(scenario)
    finally:
        if b.charon is not None:
            b.charon.close()


def test_a_broken_event_socket_is_replaced_before_the_next_look(bed):
    """An error on the address-event socket (not an overflow) no longer ends the daemon."""
    class Broken:
        def fileno(self) -> int:
            return -1

        def recv(self, size: int) -> bytes:
            raise OSError(9, "Bad file descriptor")

        def close(self) -> None:
            pass

    def scenario():
        bed.w._netlink = Broken()
        bed.w._netlink_readable()
        assert bed.w._netlink is None and bed.log.count("warning", "subscribing again") == 1
        watch.Watcher._listen(bed.w)  # the real subscription (any user may join the address group)
        assert bed.w._netlink is not None and not isinstance(bed.w._netlink, Broken)
        bed.w._unlisten()
    in_loop(scenario)
