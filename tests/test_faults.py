"""Faults a real charon can be made to show: frozen (SIGSTOP) during each action."""

from __future__ import annotations

import signal
import time

import pytest

from tests import lab
from tests.test_agent_charon import GATEWAY_CONF, PSK


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


def run(env, action: str, timeout_ms: int = 5000, interval: str = "10000") -> tuple[lab.Result, float]:
    t0 = time.monotonic()
    r = lab.agent(action, env["params"], netns=env["lab"].ns("gw1"), rsctmp=env["rsctmp"],
                  OCF_RESKEY_CRM_meta_timeout=str(timeout_ms), OCF_RESKEY_CRM_meta_interval=interval)
    return r, time.monotonic() - t0


def test_frozen_charon_every_action_ends_in_time(frozen_env):
    gw = frozen_env["gw"]
    r, _ = run(frozen_env, "start")
    assert r.rc == 0, r.stderr
    gw.signal(signal.SIGSTOP)
    for action, interval, codes in (("monitor", "10000", {1}), ("monitor", "0", {1}), ("stop", "10000", {1}),
                                    ("start", "10000", {0, 1})):
        r, took = run(frozen_env, action, interval=interval)
        assert took < 5.0, f"{action} took {took:.1f}s with a 5s timeout"
        assert r.rc in codes, (action, r.rc, r.stderr)
        assert len(r.reasons) <= 1
        if r.rc:
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
