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

from lab import core as lab

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
    assert "INFO: pool rw-pool stays loaded" in r.stderr and "WARNING: pool" not in r.stderr, r.stderr  # swept later
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
    return f'comment "ipsec-vip handoff {lab.VIP}"' in e.nft(gw, "list", "table", "inet", "ipsec_vip", check=False)


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


# --------------------------------------------------------------------------- faults and reports
HIDE_NFT = ("unshare", "-m", "sh", "-c", 'mount --bind /dev/null /usr/sbin/nft && exec "$@"', "sh")


def setup_holder(e: Env, gw: str, **params: str) -> lab.Charon:
    """Nothing of ours anywhere, then the VIP and the resource on ``gw``, and the stock client
    connected afresh (a fresh IKE_SA: a client follows at most 5 redirects in 300 s)."""
    for g in ("gw1", "gw2"):
        e.lab.del_vip(g)
    for g in ("gw1", "gw2"):
        assert e.act(g, "stop").rc == 0
    e.lab.add_vip(gw)
    r = e.act(gw, "start", **params)
    assert r.rc == 0, r.stderr
    stock = e.clients["stock"]
    with stock.vici() as s:
        for ike_id in [body["uniqueid"] for sa in s.list_sas() for body in sa.values()]:
            list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
    initiate(stock)
    assert established_via(stock) == [lab.VIP]
    return stock


def client_ids(c: lab.Charon) -> list[str]:
    return sorted(sa["uniqueid"] for sa in c.sas())


def test_vip_gone_before_stop_says_no_handoff_was_possible(env: Env) -> None:
    """The former group recipe stops the VIP first: stop notices and says so."""
    e = env
    setup_holder(e, "gw1")
    e.lab.del_vip("gw1")
    r = e.act("gw1", "stop")
    assert r.rc == 0, r.stderr
    assert "had already left this node when stop ran: no handoff possible (1 IKE_SA(s))" in r.stderr, r.stderr
    assert not gw_sas(e.lab.gateways["gw1"]) and not rule_in_place(e, "gw1")


def test_without_nft_stop_behaves_as_before_with_one_warning(env: Env) -> None:
    e = env
    stock = setup_holder(e, "gw1")
    before = client_ids(stock)
    r = lab.agent("stop", e.params("gw1"), netns=e.lab.ns("gw1"), rsctmp=str(e.rsctmp / "gw1"), wrap=HIDE_NFT)
    assert r.rc == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "no handoff for VIP" in line]
    assert len(warnings) == 1 and "/usr/sbin/nft is not installed" in warnings[0], r.stderr
    assert "left to carry traffic until it moves (no DELETE sent)" in r.stderr, r.stderr
    time.sleep(1)
    assert client_ids(stock) == before, "the client was told to reconnect"
    assert not rule_in_place(e, "gw1")


def test_foreign_tables_are_never_touched(env: Env) -> None:
    """A foreign table with a drop-all chain, an accept for the VIP and our comment, and another
    family's table under our name: the handoff works beside them and leaves them as they were."""
    e = env
    setup_holder(e, "gw1")
    e.act("gw2", "start")
    foreign = f"""table inet foreign {{
  chain dropall {{
    drop
  }}
  chain input {{
    type filter hook input priority 10; policy accept;
    ip daddr {lab.VIP} udp dport 500 accept comment "ipsec-vip handoff {lab.VIP}"
  }}
}}
table ip ipsec_vip {{
  chain input {{
    type filter hook input priority 0; policy accept;
  }}
  chain dropall {{
    drop
  }}
}}
"""
    lab.in_ns(e.lab.ns("gw1"), "nft", "-f", "-", input=foreign)
    try:
        def snapshot() -> str:
            return e.nft("gw1", "list", "table", "inet", "foreign") + e.nft("gw1", "list", "table", "ip", "ipsec_vip")
        before = snapshot()
        r = e.act("gw1", "stop")
        assert r.rc == 0 and "redirected 1 of 1" in r.stderr, r.stderr
        assert rule_in_place(e, "gw1")
        move(e, "gw1", "gw2")
        wait_for(lambda: [sa["remote-id"] for sa in gw_sas(e.lab.gateways["gw2"]) if sa["state"] == "ESTABLISHED"]
                 == ["stock@example.com"], 15, "stock client on gw2")
        assert_swept(e, "gw1")
        assert snapshot() == before
    finally:
        e.nft("gw1", "delete", "table", "inet", "foreign", check=False)
        e.nft("gw1", "delete", "table", "ip", "ipsec_vip", check=False)


def test_our_table_name_taken_nft_refuses_stop_behaves_as_before(env: Env) -> None:
    """Someone's own `inet ipsec_vip` with a chain we cannot use: nft refuses, stop succeeds as
    without handoff (one warning) and leaves that table alone."""
    e = env
    stock = setup_holder(e, "gw1")
    e.nft("gw1", "delete", "table", "inet", "ipsec_vip", check=False)  # ours, empty, kept since the last handoff
    lab.in_ns(e.lab.ns("gw1"), "nft", "-f", "-",
              input="table inet ipsec_vip {\n  chain input { type filter hook output priority 0; policy accept; }\n}\n")
    try:
        before = e.nft("gw1", "list", "table", "inet", "ipsec_vip")
        ids = client_ids(stock)
        r = e.act("gw1", "stop")
        assert r.rc == 0, r.stderr
        assert sum("no handoff for VIP" in line and "refused" in line for line in r.stderr.splitlines()) == 1, r.stderr
        time.sleep(1)
        assert client_ids(stock) == ids
        assert e.nft("gw1", "list", "table", "inet", "ipsec_vip") == before
    finally:
        e.nft("gw1", "delete", "table", "inet", "ipsec_vip", check=False)


def test_charon_refusing_redirect(env: Env, tmp_path: Path) -> None:
    from tests.vici_fakes import Proxy

    e = env
    proxy = Proxy(tmp_path / "p.vici", e.lab.gateways["gw1"].vici_path,
                  answers={"redirect": {"success": "no", "errmsg": "refused by the test"}})
    try:
        stock = setup_holder(e, "gw1", vici_socket=proxy.uri)
        ids = client_ids(stock)
        r = e.act("gw1", "stop", vici_socket=proxy.uri)
        assert r.rc == 0, r.stderr
        assert "redirected 0 of 1 IKE_SA(s)" in r.stderr and "charon would not redirect 1: refused by the test" \
            in r.stderr, r.stderr
        assert "redirect" in proxy.commands
        time.sleep(1)
        assert client_ids(stock) == ids
    finally:
        proxy.close()


def test_stop_killed_halfway_next_start_cleans_up(env: Env, tmp_path: Path) -> None:
    """Stop killed after the drop rule and the unload, in its REDIRECT: the next start removes
    the rule and loads again, so new clients get in."""
    import subprocess
    import threading

    from tests.vici_fakes import Proxy

    e = env
    release = threading.Event()

    def hang(command: str) -> None:
        if command == "redirect":
            release.wait(30)
    proxy = Proxy(tmp_path / "p.vici", e.lab.gateways["gw1"].vici_path, before=hang)
    try:
        setup_holder(e, "gw1", vici_socket=proxy.uri)
        with pytest.raises(subprocess.TimeoutExpired):
            lab.agent("stop", e.params("gw1", vici_socket=proxy.uri), netns=e.lab.ns("gw1"),
                      rsctmp=str(e.rsctmp / "gw1"), timeout=3)
        assert rule_in_place(e, "gw1")
        assert e.lab.gateways["gw1"].conns() == []
        release.set()
        r = e.act("gw1", "start", vici_socket=proxy.uri)
        assert r.rc == 0, r.stderr
        assert not rule_in_place(e, "gw1")
        assert e.lab.gateways["gw1"].conns() == ["rw"]
        noredir = e.clients["noredir"]
        with noredir.vici() as s:
            for ike_id in [body["uniqueid"] for sa in s.list_sas() for body in sa.values()]:
                list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
        initiate(noredir)  # a new client gets in
        assert established_via(noredir) == [lab.VIP]
    finally:
        release.set()
        proxy.close()


def cli(e: Env, gw: str, *args: str) -> lab.Result:
    import subprocess
    import sys

    p = subprocess.run([lab.IP, "netns", "exec", e.lab.ns(gw), sys.executable, "-m", "ipsec_vip.cli", *args],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(Path(lab.AGENT).parent.parent),
                            "HA_RSCTMP": str(e.rsctmp / gw)})
    return lab.Result(p.returncode, p.stdout, p.stderr)


def test_status_shows_and_check_reports_the_rule(env: Env) -> None:
    e = env
    setup_holder(e, "gw1")
    r = e.act("gw1", "stop")
    assert r.rc == 0, r.stderr
    opts = ("--vip", lab.VIP, "--config", str(e.conf), "--vici-socket", e.lab.gateways["gw1"].uri)
    st = cli(e, "gw1", "status", *opts)
    assert "new IKE_SA_INIT to it dropped here" in st.stdout, st.stdout + st.stderr
    ck = cli(e, "gw1", "check", *opts)
    assert "[WARN] handoff: new IKE_SA_INIT to VIP" in ck.stdout, ck.stdout
    # a leftover on a node without the VIP (as if the sweeper had been killed)
    e.lab.del_vip("gw1")
    lab.in_ns(e.lab.ns("gw2"), "nft", "-f", "-", input="add table inet ipsec_vip\nadd chain inet ipsec_vip input "
              "{ type filter hook input priority -10; policy accept; }\n" + "".join(
                  f"add rule inet ipsec_vip input {rule}\n" for rule in lab_rules()))
    ck = cli(e, "gw2", "check", *opts[:4], "--vici-socket", e.lab.gateways["gw2"].uri)
    assert ck.rc == 1 and f"[FAIL] handoff: leftover drop rule of a handoff for VIP {lab.VIP}" in ck.stdout, ck.stdout
    assert "nft delete rule inet ipsec_vip input handle" in ck.stdout
    dn = cli(e, "gw2", "down", *opts[:4], "--vici-socket", e.lab.gateways["gw2"].uri)
    assert dn.rc == 0 and "removed the drop rule a handoff left" in dn.stdout, dn.stdout + dn.stderr
    assert not rule_in_place(e, "gw2")


def lab_rules() -> list[str]:
    from ipsec_vip import droprule
    from ipsec_vip.vip import parse_vip

    return droprule.rules_text(parse_vip(lab.VIP))
