"""The agent's life cycle against a real gateway charon and a real road-warrior client."""

from __future__ import annotations

import time

import pytest

from lab import core as lab
from lab.core import GATEWAY_CONF

pytestmark = pytest.mark.charon

PSK = "test-psk-Zq8vK2mN4pR7sT1wX5yB9cD3fG6hJ0"



@pytest.fixture(scope="module")
def env(gwlab, tmp_path_factory):
    d = tmp_path_factory.mktemp("agent")
    conf = d / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    lab.client_load(gwlab.client, PSK)
    return {"lab": gwlab, "conf": conf, "rsctmp": str(d / "rsctmp")}


def params(env) -> dict[str, str]:
    gw = env["lab"].gateways["gw1"]
    # these scenarios are about unloading without a handoff; the handoff has its own (test_handoff.py)
    return {"vip": lab.VIP, "config": str(env["conf"]), "vici_socket": gw.uri, "handoff": "none"}


def act(env, action, interval="10000", **kw):
    extra = {} if interval is None else {"OCF_RESKEY_CRM_meta_interval": interval}
    extra.update(kw)
    return lab.agent(action, params(env), netns=env["lab"].ns("gw1"), rsctmp=env["rsctmp"], **extra)


def client_sa(client: lab.Charon):
    sas = [s for s in client.sas() if s["name"] == "home"]
    return sas[0] if sas else None


def test_life_cycle(env):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    assert act(env, "monitor", interval="0").rc == 7  # probe, nothing anywhere
    lb.add_vip("gw1")
    try:
        assert act(env, "monitor", interval="0").rc == 7  # probe with the VIP, not started
        r = act(env, "start")
        assert r.rc == 0, r.stderr
        assert gw.conns() == ["rw"]
        assert "ike-client1" in gw.shared() and "rw-pool" in gw.pools()
        assert act(env, "monitor").rc == 0
        assert act(env, "monitor", interval="0").rc == 0  # probe of a started resource

        assert lab.client_initiate(lb.client)
        sa = client_sa(lb.client)
        assert sa and sa["state"] == "ESTABLISHED"
        assert sa["local-vips"][0].startswith("203.0.113.")
        assert lb.ping_server()

        r = act(env, "start")  # again: nothing disturbed
        assert r.rc == 0, r.stderr
        again = client_sa(lb.client)
        assert again and again["uniqueid"] == sa["uniqueid"]
        assert lb.ping_server()

        r = act(env, "stop")  # VIP still here: unload, but send no DELETE
        assert r.rc == 0, r.stderr
        assert gw.conns() == []
        assert "ike-client1" not in gw.shared()
        assert act(env, "monitor").rc == 7
        held = client_sa(lb.client)
        assert held and held["uniqueid"] == sa["uniqueid"], "client was told to reconnect"

        lb.client.clear()
        lab.client_load(lb.client, PSK)
        assert not lab.client_initiate(lb.client, timeout_ms=2000)  # stopped: no connection possible
        assert not lb.ping_server(count=1)

        assert act(env, "stop").rc == 0
        assert act(env, "monitor").rc == 7
        assert act(env, "monitor", interval="0").rc == 7
    finally:
        lb.del_vip("gw1")
        lb.client.clear()
        lab.client_load(lb.client, PSK)
        gw.clear()


def test_stop_after_the_vip_left_terminates_sas(env):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    lb.add_vip("gw1")
    try:
        assert act(env, "start").rc == 0
        assert lab.client_initiate(lb.client)
        assert [s["name"] for s in gw.sas()] == ["rw"]
        lb.del_vip("gw1")
        assert act(env, "monitor").rc == 1  # conns loaded, VIP gone
        r = act(env, "stop")
        assert r.rc == 0, r.stderr
        assert gw.sas() == [] and gw.conns() == [] and "rw-pool" not in gw.pools()
    finally:
        lb.del_vip("gw1")
        lb.client.clear()
        lab.client_load(lb.client, PSK)
        gw.clear()


def test_monitor_fails_when_charon_restarts_underneath(env):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    lb.add_vip("gw1")
    try:
        assert act(env, "start").rc == 0
        gw.kill()
        r = act(env, "monitor")
        assert r.rc == 1 and len(r.reasons) == 1 and "charon" in r.reasons[0]
        assert act(env, "monitor", interval="0").rc == 7  # a probe: nothing of ours runs
        gw.launch()
        r = act(env, "monitor")
        assert r.rc == 1 and "charon restarted" in r.reasons[0]
        assert act(env, "stop").rc == 0
        assert act(env, "start").rc == 0  # recovery
        assert act(env, "monitor").rc == 0
        gw.kill()
        assert act(env, "stop").rc == 0  # charon dead: stop still succeeds
        assert act(env, "monitor").rc == 7
    finally:
        if gw.proc is None or gw.proc.poll() is not None:
            gw.launch()
        lb.del_vip("gw1")
        gw.clear()


def test_degraded_initiator_at_check_level_10(env, tmp_path):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    conf = tmp_path / "s2s.conf"
    conf.write_text(f"""connections {{
  s2s {{
    local_addrs = {lab.VIP}
    remote_addrs = 192.0.2.222
    mobike = no
    keyingtries = 1
    local {{
      auth = psk
      id = gw.example.com
    }}
    remote {{
      auth = psk
      id = hq.example.com
    }}
    children {{
      net {{
        local_ts = 198.51.100.0/24
        remote_ts = 203.0.113.0/24
        start_action = start
      }}
    }}
  }}
}}
""")
    p = {"vip": lab.VIP, "config": str(conf), "vici_socket": gw.uri}
    lb.add_vip("gw1")
    try:
        def run(action: str, **kw: str) -> lab.Result:
            return lab.agent(action, p, netns=lb.ns("gw1"), rsctmp=env["rsctmp"], instance="s2s",
                             OCF_RESKEY_CRM_meta_interval="10000", **kw)

        assert run("start").rc == 0
        assert run("monitor").rc == 0
        r = run("monitor", OCF_CHECK_LEVEL="10")
        assert r.rc == 190 and "s2s" in r.reasons[-1]
        assert run("stop").rc == 0
    finally:
        lb.del_vip("gw1")
        gw.clear()


@pytest.mark.slow
def test_thousand_connections(env, tmp_path):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    conns = "".join(
        f"  c{i} {{\n    local_addrs = {lab.VIP}\n    mobike = no\n    local {{\n      auth = psk\n"
        f"      id = gw{i}.example.com\n    }}\n    remote {{\n      auth = psk\n      id = u{i}@example.com\n"
        f"    }}\n    children {{\n      c{i} {{\n        local_ts = 198.51.100.0/24\n      }}\n    }}\n  }}\n"
        for i in range(1000))
    conf = tmp_path / "big.conf"
    conf.write_text("connections {\n" + conns + "}\n")
    p = {"vip": lab.VIP, "config": str(conf), "vici_socket": gw.uri}
    lb.add_vip("gw1")
    try:
        timings = {}
        for action in ("start", "monitor", "stop"):
            t = time.monotonic()
            r = lab.agent(action, p, netns=lb.ns("gw1"), rsctmp=env["rsctmp"], instance="big",
                          OCF_RESKEY_CRM_meta_interval="10000")
            timings[action] = time.monotonic() - t
            assert r.rc == 0, r.stderr
            if action == "start":
                assert len(gw.conns()) == 1000
        assert gw.conns() == []
        print("1000 conns:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    finally:
        lb.del_vip("gw1")
        gw.clear()


def test_start_without_vip_loads_inert_connections(env):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    p = dict(params(env), start_without_vip="true")

    def run(action: str) -> lab.Result:
        return lab.agent(action, p, netns=lb.ns("gw1"), rsctmp=env["rsctmp"], OCF_RESKEY_CRM_meta_interval="10000")
    try:
        r = run("start")
        assert r.rc == 0, r.stderr
        assert gw.conns() == ["rw"]
        assert run("monitor").rc == 0  # loaded and waiting for the VIP
        lb.add_vip("gw1")
        assert lab.client_initiate(lb.client)  # answered the moment the VIP is here
        assert lb.ping_server()
        lb.del_vip("gw1")
        assert run("stop").rc == 0  # after the VIP left: SAs terminated quietly
        assert gw.conns() == [] and gw.sas() == []
    finally:
        lb.del_vip("gw1")
        lb.client.clear()
        lab.client_load(lb.client, PSK)
        gw.clear()
