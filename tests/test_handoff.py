"""The handoff (drop rule + IKEv2 REDIRECT) against real charons, without Pacemaker.

Two gateways in namespaces, the VIP moved by hand the way IPaddr2 moves it, the agent run
as pacemaker-execd runs it, in the order the README's constraints give: stop on the old
holder (VIP still there), VIP off the old holder, VIP on the new one (whose resource was
started before, inert). Clients: a stock strongSwan one (defaults: no DPD, close_action
none, default retransmits) and, where the difference matters, one with follow_redirects = no.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import lab

pytestmark = [pytest.mark.root, pytest.mark.charon, pytest.mark.slow]

PSK = "handoff-psk-Vb7nM2kQ9xR4tW8zL3pH6sD1"
STOCK_IP = "192.0.2.51"
NOREDIR_IP = "192.0.2.52"
CONF = lab.GATEWAY_CONF + """
secrets {
    ike-stock {
        id-gw = vpn.example.com
        id-client = stock@example.com
        secret = "%(psk)s"
    }
    ike-noredir {
        id-gw = vpn.example.com
        id-client = noredir@example.com
        secret = "%(psk)s"
    }
}
"""


class Env:
    def __init__(self, lb: lab.Lab, conf: Path, rsctmp: Path) -> None:
        self.lab, self.conf, self.rsctmp = lb, conf, rsctmp
        self.clients: dict[str, lab.Charon] = {}

    def params(self, gw: str, **extra: str) -> dict[str, str]:
        return {"vip": lab.VIP, "config": str(self.conf), "vici_socket": self.lab.gateways[gw].uri,
                "start_without_vip": "true", **extra}

    def act(self, gw: str, action: str, **extra: str) -> lab.Result:
        return lab.agent(action, self.params(gw, **extra), netns=self.lab.ns(gw), rsctmp=str(self.rsctmp / gw),
                         OCF_RESKEY_CRM_meta_interval="10000" if action == "monitor" else "0")

    def nft(self, gw: str, *args: str, check: bool = True) -> str:
        return lab.in_ns(self.lab.ns(gw), "nft", *args, check=check).stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lb = lab.Lab.build(("gw1", "gw2"))
    d = tmp_path_factory.mktemp("handoff")
    e = Env(lb, d / "swanctl.conf", d)
    e.conf.write_text(CONF % {"vip": lab.VIP, "psk": PSK})
    e.conf.chmod(0o600)
    try:
        e.clients["stock"] = lab.add_client("stock", STOCK_IP, lb.ns("lan"), lb.namespaces)
        e.clients["noredir"] = lab.add_client("noredir", NOREDIR_IP, lb.ns("lan"), lb.namespaces,
                                              extra="  follow_redirects = no\n")
        for name, c in e.clients.items():
            with c.vici() as s:
                s.load_shared({"id": "home-psk", "type": "IKE", "data": PSK, "owners": []})
                s.load_conn(lab.stock_conn(f"{name}@example.com"))
        yield e
    finally:
        for c in e.clients.values():
            c.stop()
        lb.destroy()


def initiate(c: lab.Charon) -> None:
    with c.vici() as s:
        for _ in s.initiate({"child": "home", "ike": "home", "timeout": "5000"}):
            pass


def established_via(c: lab.Charon) -> list[str]:
    return [sa["remote-host"] for sa in c.sas() if sa["state"] == "ESTABLISHED"
            and any(ch.get("state") == "INSTALLED" for ch in (sa.get("child-sas") or {}).values())]


def gw_sas(gw: lab.Charon) -> list[dict[str, Any]]:
    return [sa for sa in gw.sas() if sa["name"] == "rw"]


def move(e: Env, old: str, new: str) -> float:
    """The VIP off ``old`` and onto ``new`` (as IPaddr2 does); the monotonic time it arrived."""
    e.lab.del_vip(old)
    e.lab.add_vip(new)
    return time.monotonic()


def wait_for(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_stop_redirects_the_stock_client_to_the_next_holder(env: Env) -> None:
    """gw1 stops with the VIP: drop rule, REDIRECT; the stock client's retry reaches gw2 one
    retransmit_timeout (4 s) after the REDIRECT; gw1 keeps nothing once its next start ran."""
    e = env
    e.lab.add_vip("gw1")
    assert e.act("gw1", "start").rc == 0
    assert e.act("gw2", "start").rc == 0  # inert until the VIP arrives
    stock, noredir = e.clients["stock"], e.clients["noredir"]
    initiate(stock)
    initiate(noredir)
    assert established_via(stock) == [lab.VIP]
    t0 = time.monotonic()
    r = e.act("gw1", "stop")
    stopped = time.monotonic()
    assert r.rc == 0, r.stderr
    assert "redirected 1 of 2 IKE_SA(s)" in r.stderr, r.stderr
    assert "1 client(s) did not announce REDIRECT support" in r.stderr, r.stderr
    assert f'comment "ipsec-vip handoff {lab.VIP}"' in e.nft("gw1", "list", "table", "inet", "ipsec_vip")
    move(e, "gw1", "gw2")
    back = wait_for(lambda: any(sa["state"] == "ESTABLISHED" for sa in gw_sas(e.lab.gateways["gw2"])
                                if sa["remote-id"] == "stock@example.com"), 20, "stock client on gw2")
    gap = back - t0
    print(f"\nstock client: stop {stopped - t0:.2f}s, back through gw2 {gap:.2f}s after stop began")
    assert gap < 4.0 + 3.0, gap  # one retransmit_timeout plus the stop and the move
    wait_for(lambda: established_via(stock) == [lab.VIP], 5, "stock client's tunnel")
    # follow_redirects = no: left as today (its SA still points at gw1's old SA)
    assert not any(sa["remote-id"] == "noredir@example.com" for sa in gw_sas(e.lab.gateways["gw2"]))


def rule_in_place(e: Env, gw: str) -> bool:
    out = e.nft(gw, "list", "ruleset")
    return f'comment "ipsec-vip handoff {lab.VIP}"' in out and "table inet ipsec_vip" in out


def assert_swept(e: Env, gw: str, timeout: float = 10) -> None:
    """The old holder keeps nothing: no SA of ours, no pool, no drop rule (the sweeper's work)."""
    g = e.lab.gateways[gw]
    wait_for(lambda: not gw_sas(g) and "rw-pool" not in g.pools() and not rule_in_place(e, gw), timeout,
             f"{gw} swept (SAs {[sa['remote-id'] for sa in gw_sas(g)]}, pools {list(g.pools())}, "
             f"rule {rule_in_place(e, gw)})")


def test_moves_back_and_forth_leave_nothing_behind(env: Env) -> None:
    """Four more moves with the stock client: each time it comes back through the new holder,
    the old one is swept (no SA, pool or rule piles up) and its pool unloads. (Five redirects in
    all: a strongSwan client follows at most 5 within 300 s, MAX_REDIRECTS; a sixth planned move
    in that time strands it.)"""
    e = env
    with e.clients["noredir"].vici() as s:  # stranded for good; out of the way
        for ike_id in [body["uniqueid"] for sa in s.list_sas() for body in sa.values()]:
            list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
    assert_swept(e, "gw1")
    holder, other = "gw2", "gw1"
    for n in range(4):
        assert e.act(other, "start").rc == 0
        t0 = time.monotonic()
        r = e.act(holder, "stop")
        assert r.rc == 0 and "redirected 1 of 1" in r.stderr, r.stderr
        move(e, holder, other)
        back = wait_for(lambda g=e.lab.gateways[other]: [sa["remote-id"] for sa in gw_sas(g)
                                 if sa["state"] == "ESTABLISHED"] == ["stock@example.com"], 20,
                        f"move {n}: stock client on {other} alone")
        print(f"move {n} {holder}->{other}: back after {back - t0:.2f}s")
        assert back - t0 < 7.0
        assert_swept(e, holder)
        holder, other = other, holder
    assert len(gw_sas(e.lab.gateways[holder])) == 1
    # the client's own old SAs wait in DELETING: its DELETE went to the VIP, where the new holder does
    # not know them; they end after its retransmits (about 165 s stock), nothing the gateways can help
    states = sorted(sa["state"] for sa in e.clients["stock"].sas())
    assert states.count("ESTABLISHED") == 1 and set(states) <= {"ESTABLISHED", "DELETING"}, states
