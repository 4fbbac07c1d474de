"""Stateful mode against two real charons with the ha plugin (sync over the back network)
and a stock road-warrior client (no DPD, close_action none): the agent's start, promote,
demote, stop and notify move the segment, and the client keeps its IKE_SA (same SPIs)
with traffic both ways, without ever being re-initiated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import core as lab

pytestmark = [pytest.mark.root, pytest.mark.charon, pytest.mark.slow]

PSK = "stateful-psk-Qm4vK8nR2tW6yZ1xB5cD9fG3hJ7"
PROMOTABLE = {"OCF_RESKEY_CRM_meta_promotable": "true"}
LATE = "late@example.com"


@pytest.fixture(scope="module")
def halab(tmp_path_factory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("stateful")
    conf = d / "swanctl.conf"
    second = (f'    ike-late {{\n        id-gw = vpn.example.com\n        id-client = {LATE}\n'
              f'        secret = "{PSK}"\n    }}\n')  # a second client, for the pool test
    text = lab.STATEFUL_GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK}
    conf.write_text(text.replace("secrets {\n", "secrets {\n" + second))
    conf.chmod(0o600)
    lb = lab.Lab.build(("gw1", "gw2"), ha=True, client_extra="")
    try:
        yield {"lab": lb, "conf": conf, "rsctmp": {gw: str(d / f"rsctmp-{gw}") for gw in ("gw1", "gw2")}}
    finally:
        lb.destroy()


def act(env: dict[str, Any], gw: str, action: str, interval: str = "10000", uri: str = "", **extra: str,
        ) -> lab.Result:
    charon = env["lab"].gateways[gw]
    params = {"vip": lab.VIP, "config": str(env["conf"]), "vici_socket": uri or charon.uri,
              "ha_fifo": charon.ha_fifo}
    return lab.agent(action, params, netns=env["lab"].ns(gw), rsctmp=env["rsctmp"][gw],
                     OCF_RESKEY_CRM_meta_interval=interval, **PROMOTABLE, **extra)


def ok(r: lab.Result) -> lab.Result:
    assert r.rc == 0, r.stderr
    return r


def client_ike(lb: lab.Lab) -> list[dict[str, Any]]:
    assert lb.client is not None
    return [s for s in lb.client.sas() if s["name"] == "home"]


def gw_state(lb: lab.Lab, gw: str) -> list[tuple[str, list[str]]]:
    """(IKE state, [child states]) of each rw IKE_SA on ``gw``."""
    return [(s["state"], [c["state"] for c in (s.get("child-sas") or {}).values()])
            for s in lb.gateways[gw].sas() if s["name"] == "rw"]


def wait(cond, what: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def traffic(lb: lab.Lab) -> bool:
    """Client -> server -> client through the tunnel, enough packets to move ESP sequence numbers."""
    p = lab.in_ns(lb.ns("client"), "ping", "-c", "30", "-i", "0.01", "-W", "1", lab.SERVER_IP, check=False)
    return p.returncode == 0 and " 0% packet loss" in p.stdout


def flows(lb: lab.Lab, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lb.ping_server(count=1):
            return
    raise AssertionError("no traffic through the tunnel")


def move(env: dict[str, Any], old: str, new: str) -> None:
    """What Pacemaker does on a standby of ``old`` (crm_simulate): demote, VIP stop, VIP start,
    stop, promote."""
    lb: lab.Lab = env["lab"]
    ok(act(env, old, "demote"))
    assert all(state == "PASSIVE" for state, _ in gw_state(lb, old)), gw_state(lb, old)
    lb.del_vip(old)
    lb.add_vip(new)
    ok(act(env, old, "stop"))  # unloads and returns: the passive copy stays for the next start to destroy
    assert lb.gateways[old].conns() == [] and gw_state(lb, old) == [("PASSIVE", ["INSTALLED"])]
    ok(act(env, new, "promote"))


def rejoin(env: dict[str, Any], node: str, active: str) -> None:
    """The node's instance starts again; the active node's post-start notification resyncs it."""
    lb: lab.Lab = env["lab"]
    ok(act(env, node, "start"))
    notify = {"OCF_RESKEY_CRM_meta_notify_type": "post", "OCF_RESKEY_CRM_meta_notify_operation": "start",
              "OCF_RESKEY_CRM_meta_notify_start_uname": node}
    ok(act(env, node, "notify", OCF_RESKEY_CRM_meta_on_node=node, **notify))  # not promoted: nothing
    ok(act(env, active, "notify", OCF_RESKEY_CRM_meta_on_node=active, **notify))
    wait(lambda: gw_state(lb, node) == [("PASSIVE", ["INSTALLED"])], f"one synced copy on {node}")


def test_start_promote_move_and_back(halab):
    env, lb = halab, halab["lab"]
    assert lb.client is not None
    for gw in ("gw1", "gw2"):
        assert act(env, gw, "monitor", interval="0").rc == 7
    lb.add_vip("gw1")
    r = act(env, "gw2", "promote")  # not started there, and no VIP: refused, nothing changed
    assert r.rc == 1 and "does not hold VIP" in r.reasons[-1]
    for gw in ("gw1", "gw2"):
        ok(act(env, gw, "start"))
        assert lb.gateways[gw].conns() == ["rw"]
        assert act(env, gw, "monitor").rc == 0
    r = act(env, "gw2", "promote")
    assert r.rc == 1 and "nothing changed" in r.reasons[-1]
    assert act(env, "gw2", "monitor").rc == 0
    ok(act(env, "gw1", "promote"))
    assert act(env, "gw1", "monitor").rc == 8

    lab.client_load(lb.client, PSK, stock=True, identity="client1@example.com")
    assert lab.client_initiate(lb.client)
    first = client_ike(lb)
    assert len(first) == 1
    spis = (first[0]["initiator-spi"], first[0]["responder-spi"])
    assert traffic(lb)
    wait(lambda: gw_state(lb, "gw2") == [("PASSIVE", ["INSTALLED"])], "the synced copy on gw2")

    for old, new in (("gw1", "gw2"), ("gw2", "gw1")):
        assert traffic(lb)  # the old node's ESP sequence numbers run ahead of the new node's
        move(env, old, new)
        flows(lb)
        assert traffic(lb), f"after the move to {new}: {gw_state(lb, new)}"
        now = client_ike(lb)
        assert [(s["initiator-spi"], s["responder-spi"]) for s in now] == [spis], "the client lost its IKE_SA"
        assert act(env, new, "monitor").rc == 8
        assert act(env, old, "monitor").rc == 7
        rejoin(env, old, active=new)  # start destroyed the copy the stop left: the resync gives one
        ok(act(env, old, "start"))  # a repeated start keeps the live copy
        assert gw_state(lb, old) == [("PASSIVE", ["INSTALLED"])]
        assert act(env, old, "monitor").rc == 0
        wait(lambda n=new: gw_state(lb, n) == [("ESTABLISHED", ["INSTALLED"])], f"one SA on {new}")


def test_faults_on_a_promoted_pair(halab):
    """VIP lost on the promoted node, both nodes promoted by hand, charon restarted on the
    standby: each is reported (9 or 1, one reason) and recovers by the normal actions."""
    env, lb = halab, halab["lab"]
    active = next(gw for gw in ("gw1", "gw2") if act(env, gw, "monitor").rc == 8)
    standby = "gw2" if active == "gw1" else "gw1"
    assert act(env, standby, "monitor").rc == 0

    lb.del_vip(active)
    r = act(env, active, "monitor")
    assert r.rc == 9 and "VIP" in r.reasons[-1] and "Traceback" not in r.stderr
    lb.add_vip(active)
    assert act(env, active, "monitor").rc == 8

    lb.add_vip(standby)  # split brain: both hold the VIP, an admin promotes the standby
    ok(act(env, standby, "promote"))
    r = act(env, active, "monitor")
    assert r.rc == 9 and "PASSIVE" in r.reasons[-1]
    assert act(env, standby, "monitor").rc == 8
    ok(act(env, standby, "demote"))  # the peer takes the segment back
    lb.del_vip(standby)
    lb.del_vip(active)  # re-added: gratuitous ARP takes the client's and the server's traffic back
    lb.add_vip(active)
    assert act(env, active, "monitor").rc == 8
    assert act(env, standby, "monitor").rc == 0
    assert traffic(lb)

    charon = lb.gateways[standby]
    charon.kill()
    charon.launch()
    r = act(env, standby, "monitor")
    assert r.rc == 1 and "none of the" in r.reasons[-1]
    ok(act(env, standby, "stop"))
    rejoin(env, standby, active)
    assert act(env, standby, "monitor").rc == 0
    assert traffic(lb)


def cli(env: dict[str, Any], gw: str, *args: str) -> lab.Result:
    """``ipsec-vip`` in the gateway's namespace, as root runs it."""
    import sys

    p = lab.in_ns(env["lab"].ns(gw), sys.executable, "-m", "ipsec_vip.cli", *args, check=False,
                  env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": env["rsctmp"][gw]})
    return lab.Result(p.returncode, p.stdout, p.stderr)


def test_status_shows_role_and_synced_sas_and_check_reads_the_ha_section(halab):
    import json

    env, lb = halab, halab["lab"]
    roles = {}
    for gw in ("gw1", "gw2"):
        r = cli(env, gw, "status", "--json", "--vici-socket", lb.gateways[gw].uri)
        assert r.rc == 0, r.stderr
        (vip,) = json.loads(r.stdout)["vips"]
        roles[gw] = vip["ha"]
    assert sorted(h["role"] for h in roles.values()) == ["active", "standby"], roles
    standby = next(h for h in roles.values() if h["role"] == "standby")
    assert standby["synced_ike_sas"] == standby["synced_ready"] == 1
    text = cli(env, "gw1", "status", "--vici-socket", lb.gateways["gw1"].uri).stdout
    assert "state sync (ha plugin):" in text

    charon = lb.gateways["gw1"]
    r = cli(env, "gw1", "check", "--json", "--strongswan-conf", str(charon.base / "strongswan.conf"),
            "--vici-socket", charon.uri, "--config", str(env["conf"]))
    ha = [f for f in json.loads(r.stdout)["findings"] if f["name"] == "ha"]
    assert [f["message"].split(": ", 1)[1] for f in ha] == [
        "no secret: the SA keys cross the sync link in clear, and whoever can send UDP 4510 from the peer's "
        "address can forge sync messages"], ha  # the lab's sync runs without one
    pools = [f for f in json.loads(r.stdout)["findings"] if f["name"] == "pools"]
    assert [(f["level"], "rw-pool" in f["message"]) for f in pools] == [("ok", True)], pools
    sync = [f for f in json.loads(r.stdout)["findings"] if f["name"] == "ha-sync"]  # the agent's start enlarged it
    assert [(f["level"], "receive buffer 67108864 bytes, 0 drops" in f["message"]) for f in sync] == [("ok", True)]
    assert r.rc == 1

    wrong = charon.base / "wrong.conf"
    wrong.write_text("charon {\n  plugins {\n    ha {\n      local = 198.51.100.99\n      remote = 198.51.100.98\n"
                     "      secret = x\n      segment_count = 2\n    }\n  }\n}\n")
    wrong.chmod(0o644)
    r = cli(env, "gw1", "check", "--json", "--strongswan-conf", str(wrong), "--vici-socket", charon.uri,
            "--config", str(env["conf"]))
    text = " | ".join(f["message"] for f in json.loads(r.stdout)["findings"] if f["name"] == "ha")
    for problem in ("monitor is on", "segment_count = 2", "resync is on", "local 198.51.100.99 is not an address",
                    "198.51.100.98 does not answer", "secret: weak PSK (1 characters",
                    f"the secret is in {wrong}, mode 0644"):
        assert problem in text, text


def test_a_client_connecting_after_a_move_gets_an_address_nobody_holds(halab):
    """The pool in charon.plugins.ha.pools: the new holder knows the migrated client's lease, so a
    client connecting after the move gets another address (with the pool loaded over VICI it got
    the same one: failover.md), and status on the holder shows both, no duplicate."""
    import json

    env, lb = halab, halab["lab"]
    assert lb.client is not None
    active = next(gw for gw in ("gw1", "gw2") if act(env, gw, "monitor").rc == 8)
    new = "gw2" if active == "gw1" else "gw1"
    move(env, active, new)
    flows(lb)
    migrated = client_ike(lb)[0]["local-vips"]
    with lb.client.vici() as s:
        s.load_conn({"late": lab.stock_conn(LATE)["home"]})
    try:
        with lb.client.vici() as s:
            for _ in s.initiate({"child": "home", "ike": "late", "timeout": "5000", "init-limits": "no"}):
                pass
        (late,) = [sa for sa in lb.client.sas() if sa["name"] == "late"]
        assert late["local-vips"] and late["local-vips"] != migrated, (late["local-vips"], migrated)
        r = cli(env, new, "status", "--json", "--vici-socket", lb.gateways[new].uri)
        (vip,) = json.loads(r.stdout)["vips"]
        assert sorted(vip["virtual_ips"]) == sorted(migrated + late["local-vips"])
        assert vip["duplicate_virtual_ips"] == []
        assert traffic(lb)
    finally:
        with lb.client.vici() as s:
            for _ in s.terminate({"ike": "late", "timeout": "5000"}):
                pass
            s.unload_conn({"name": "late"})
    wait(lambda: len(gw_state(lb, new)) == 1, f"the late client's SA gone from {new}")


def test_a_stop_with_attrd_hung_unloads_within_its_timeout(halab, tmp_path):
    """Pacemaker's move with the old holder's attrd not answering (crm_attribute and
    attrd_updater hang, bind-mounted over the real ones): its stop still demotes and unloads
    (leaving its passive copy to the next start), and returns 0 inside its 6 s timeout - the
    promotion score is skipped for lack of time, never waited for (before: a fixed 10 s for each
    command, past the timeout: Pacemaker fences a node whose stop times out). The new holder
    takes the client over."""
    env, lb = halab, halab["lab"]
    active = next(gw for gw in ("gw1", "gw2") if act(env, gw, "monitor").rc == 8)
    new = "gw2" if active == "gw1" else "gw1"
    if act(env, new, "monitor").rc == 7:  # stopped by the test before: the peer first
        rejoin(env, new, active)
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    mounts = " && ".join(f"mount --bind {hang} /usr/sbin/{tool}" for tool in ("crm_attribute", "attrd_updater"))
    hung = ("unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh")
    ok(act(env, active, "demote"))
    lb.del_vip(active)
    lb.add_vip(new)
    charon = lb.gateways[active]
    params = {"vip": lab.VIP, "config": str(env["conf"]), "vici_socket": charon.uri, "ha_fifo": charon.ha_fifo}
    t0 = time.monotonic()
    r = lab.agent("stop", params, netns=lb.ns(active), rsctmp=env["rsctmp"][active], wrap=hung,
                  OCF_RESKEY_CRM_meta_timeout="6000", OCF_RESKEY_CRM_meta_on_node=active, **PROMOTABLE)
    took = time.monotonic() - t0
    assert r.rc == 0, r.stderr
    assert took < 6.0, f"stop took {took:.1f}s against its 6 s timeout"
    assert "crm_attribute" in r.stderr and "did not finish within" in r.stderr, r.stderr
    assert charon.conns() == [] and gw_state(lb, active) == [("PASSIVE", ["INSTALLED"])]
    ok(act(env, new, "promote"))
    flows(lb)
    assert traffic(lb)
    rejoin(env, active, new)


def test_a_client_reaching_the_vip_before_the_promote_waits_for_it(halab):
    """A crash of the promoted node: the VIP arrives on the standby before its promote, and the ha
    plugin's pools give no address until the segment is active there (the client got
    INTERNAL_ADDRESS_FAILURE and an IKE_SA without CHILD_SA, for good). The unpromoted instance
    drops new IKE_SA_INIT to the VIP (check says why), so the client's retransmit reaches the
    promoted node and gets an address and a CHILD_SA; the migrated client keeps its SA."""
    import json
    import shutil
    import threading

    env, lb = halab, halab["lab"]
    assert lb.client is not None
    active = next(gw for gw in ("gw1", "gw2") if act(env, gw, "monitor").rc == 8)
    new = "gw2" if active == "gw1" else "gw1"
    r = cli(env, new, "check", "--json", "--vici-socket", lb.gateways[new].uri, "--config", str(env["conf"]))
    held = [f for f in json.loads(r.stdout)["findings"] if f["name"] == "handoff"]
    assert [(f["level"], "until this node's stateful instance is promoted" in f["message"]) for f in held] == [
        ("ok", True)], held
    spis = [(s["initiator-spi"], s["responder-spi"]) for s in client_ike(lb)]
    lb.gateways[active].kill()  # the crash
    lb.del_vip(active)
    lb.add_vip(new)
    with lb.client.vici() as s:
        s.load_conn({"late": lab.stock_conn(LATE)["home"]})
    failed: list[BaseException] = []

    def initiate() -> None:
        try:
            with lb.client.vici() as s:
                for _ in s.initiate({"child": "home", "ike": "late", "timeout": "20000", "init-limits": "no"}):
                    pass
        except BaseException as e:  # reported by the test below
            failed.append(e)

    joiner = threading.Thread(target=initiate)
    joiner.start()
    try:
        wait(lambda: any(sa["name"] == "late" for sa in lb.client.sas()), "the late client's IKE_SA_INIT sent")
        ok(act(env, new, "promote"))
        joiner.join(30)
        assert not failed, failed
        (late,) = [sa for sa in lb.client.sas() if sa["name"] == "late"]
        assert late["local-vips"] and late["child-sas"], late
        assert all(state == "ESTABLISHED" and children for state, children in gw_state(lb, new)), gw_state(lb, new)
        flows(lb)
        assert traffic(lb)
        assert [(s["initiator-spi"], s["responder-spi"]) for s in client_ike(lb)] == spis
    finally:
        joiner.join(30)
        with lb.client.vici() as s:
            for _ in s.terminate({"ike": "late", "timeout": "5000"}):
                pass
            s.unload_conn({"name": "late"})
    wait(lambda: len(gw_state(lb, new)) == 1, f"the late client's SA gone from {new}")
    shutil.rmtree(env["rsctmp"][active])  # a crash is a reboot: /run is gone
    lb.gateways[active].launch()
    rejoin(env, active, new)


def test_a_rekey_charon_refuses(halab, tmp_path):
    """The takeover's rekey refused: promote says so (1, one reason, no traceback); the segment
    is taken (monitor 8), and Pacemaker's retry of the promote brings the traffic back. The
    standby's instance runs through a proxy (actions use the socket start recorded)."""
    from tests.vici_fakes import Proxy

    env, lb = halab, halab["lab"]
    active = next(gw for gw in ("gw1", "gw2") if act(env, gw, "monitor").rc == 8)
    new = "gw2" if active == "gw1" else "gw1"
    proxy = Proxy(tmp_path / "refusing.vici", lb.gateways[new].vici_path,
                  answers={"rekey": {"success": "no", "errmsg": "rekey refused by test"}})
    try:
        ok(act(env, new, "stop"))
        ok(act(env, new, "start", uri=proxy.uri))
        ok(act(env, active, "notify", OCF_RESKEY_CRM_meta_on_node=active, OCF_RESKEY_CRM_meta_notify_type="post",
               OCF_RESKEY_CRM_meta_notify_operation="start", OCF_RESKEY_CRM_meta_notify_start_uname=new))
        wait(lambda: gw_state(lb, new) == [("PASSIVE", ["INSTALLED"])], f"one synced copy on {new}")
        assert traffic(lb)
        ok(act(env, active, "demote"))
        lb.del_vip(active)
        lb.add_vip(new)
        ok(act(env, active, "stop"))
        r = act(env, new, "promote", uri=proxy.uri)
        assert r.rc == 1 and "Traceback" not in r.stderr
        assert r.reasons == [r.reasons[-1]] and "rekey refused by test" in r.reasons[-1]
        assert act(env, new, "monitor", uri=proxy.uri).rc == 8
        proxy.answers.clear()
        ok(act(env, new, "promote", uri=proxy.uri))
        flows(lb)
        assert traffic(lb)
        rejoin(env, active, new)
    finally:
        proxy.close()

