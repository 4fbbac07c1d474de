"""Stateful mode in a real two-node Pacemaker cluster, set up with docs/stateful.md's pcs
recipe: both gateways run charon with the ha plugin (sync over the back network), the agent
is a promotable clone, the VIPs follow the Promoted instance. Two clients, a stock one
(strongSwan defaults: no DPD, close_action none) and a tuned one, are never re-initiated:
for a standby, a resource move and a crash of the promoted node (a reboot: processes,
addresses and /run gone, then the node rejoins) each keeps its IKE_SA (same SPIs) and
traffic flows both ways afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab import cluster
from lab import core as lab

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow]

CLONE, VIPS = "vpn-clone", "vpn-vip"
GAPS: list[tuple[str, str, float, float]] = []  # (event, client, gap, VIP moved after)
CLIENTS = cluster.STATEFUL_CLIENTS


@pytest.fixture(scope="module")
def cl() -> Iterator[cluster.Cluster]:
    c = cluster.Cluster.build(("gw1", "gw2"), ha=True)
    try:
        first = cluster.start_stateful(c)
        wait_in_sync(c, other(c, first))
        yield c
    finally:
        c.destroy()
        if GAPS:
            print("\nstateful gaps (event, client, gap s, VIP moved after s):")
            for row in GAPS:
                print(f"  {row[0]:<28} {row[1]:<6} {row[2]:6.2f} {row[3]:6.2f}")


def other(c: cluster.Cluster, name: str) -> str:
    return next(n for n in c.nodes if n != name)


def promoted(c: cluster.Cluster) -> str:
    where = [n for n, role in c.roles(CLONE).items() if role == "Promoted"]
    assert len(where) == 1, c.roles(CLONE)
    return where[0]


def rw_sas(c: cluster.Cluster, node: str) -> list[dict[str, Any]]:
    return [s for s in c.nodes[node].sas() if s["name"] == "rw"]


def wait_in_sync(c: cluster.Cluster, node: str, timeout: float = 30) -> None:
    """``node`` holds exactly one PASSIVE copy with one installed CHILD_SA per client."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while time.monotonic() < deadline:
        try:
            seen = [(s["state"], sorted(ch["state"] for ch in (s.get("child-sas") or {}).values()))
                    for s in rw_sas(c, node)]
        except OSError:
            seen = []
        if seen == [("PASSIVE", ["INSTALLED"])] * len(CLIENTS):
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} not in sync after {timeout}s: {seen}")


def wait_settled(c: cluster.Cluster, active: str, timeout: float = 30) -> None:
    """One ESTABLISHED IKE_SA with one CHILD_SA per client on the active node, the other in sync."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while time.monotonic() < deadline:
        seen = [(s["state"], len(s.get("child-sas") or {})) for s in rw_sas(c, active)]
        if seen == [("ESTABLISHED", 1)] * len(CLIENTS):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"{active} not settled after {timeout}s: {seen}")
    wait_in_sync(c, other(c, active), timeout=max(deadline - time.monotonic(), 5))


def client_spis(client: lab.Charon) -> list[tuple[str, str]]:
    return [(s["initiator-spi"], s["responder-spi"]) for s in client.sas() if s["name"] == "home"]


def measure(c: cluster.Cluster, label: str, event: Callable[[], None], new: str,
            keep: tuple[str, ...] = ("stock", "tuned")) -> None:
    """Run ``event`` with both clients' traffic flowing; both must flow again, those in ``keep``
    with the IKE_SA they had (same SPIs)."""
    assert c.client is not None and c.stock is not None
    clients = {"stock": (c.stock, "stock"), "tuned": (c.client, "client")}
    before = {k: client_spis(ch) for k, (ch, _) in clients.items()}
    assert all(len(v) == 1 for v in before.values()), before
    probes = {k: cluster.Probe(c.work, netns=lab.PREFIX + ns) for k, (_, ns) in clients.items()}
    try:
        for p in probes.values():
            p.wait_flowing(time.monotonic() - 5, timeout=15)
        t0 = time.monotonic()
        arrival = cluster.VipArrival(c.nodes[new])
        event()
        c.wait_located(VIPS, new, timeout=90)
        c.wait_promoted(CLONE, new, timeout=60)
        vip_after = arrival.wait(t0)
        for name, p in probes.items():
            try:
                p.wait_flowing(t0 + vip_after, timeout=30)
            except TimeoutError:
                raise AssertionError(f"{label}: no traffic for the {name} client after the move; "
                                     f"{new}: {rw_sas(c, new)}") from None
        time.sleep(0.3)
        for name, p in probes.items():
            GAPS.append((label, name, p.gap(t0), vip_after))
    finally:
        for p in probes.values():
            p.stop()
    after = {k: client_spis(ch) for k, (ch, _) in clients.items()}
    for k in keep:
        assert after[k] == before[k], f"{label}: the {k} client lost its IKE_SA: {before[k]} -> {after[k]}"
    for k in clients:
        assert len(after[k]) == 1, f"{label}: the {k} client holds {after[k]}"
    assert c.failed_actions() == [], c.failed_actions()


def test_the_vip_holder_is_promoted_and_the_other_in_sync(cl):
    h = promoted(cl)
    assert cl.locate(VIPS) == [h]
    assert cl.roles(CLONE) == {h: "Promoted", other(cl, h): "Unpromoted"}
    wait_settled(cl, h)


def test_standby_and_back(cl):
    first = promoted(cl)
    second = other(cl, first)
    measure(cl, "standby", lambda: cl.nodes[first].on("pcs", "node", "standby", first), second)
    assert cl.nodes[first].conns() == []  # stop unloaded and left its passive copies to the next start
    assert {s["state"] for s in rw_sas(cl, first)} <= {"PASSIVE"}
    cl.nodes[first].on("pcs", "node", "unstandby", first)
    wait_settled(cl, second)  # the rejoined node received the state once
    measure(cl, "standby back", lambda: cl.nodes[second].on("pcs", "node", "standby", second), first)
    cl.nodes[second].on("pcs", "node", "unstandby", second)
    wait_settled(cl, first)


def test_resource_move_and_back(cl):
    first = promoted(cl)
    second = other(cl, first)
    n = cl.nodes[first]
    for src, dst in ((first, second), (second, first)):
        measure(cl, f"move {src}->{dst}",
                lambda d=dst: n.on("pcs", "resource", "move", CLONE, d, "--promoted"), dst)
        n.on("pcs", "resource", "clear", CLONE)
        wait_settled(cl, dst)


def test_crash_of_the_promoted_node_rejoin_and_back(cl):
    h = promoted(cl)
    survivor = other(cl, h)
    # the tuned client's DPD (1 s, 2 retransmits) gives up on the dead node before Pacemaker
    # has noticed the crash and makes a new IKE_SA (its choice); the stock one must keep its own
    measure(cl, "crash of the promoted node", lambda: cl.crash(h), survivor, keep=("stock",))
    cl.start_node(h)  # reboot: fresh namespaces, /run and addresses empty
    cl.wait_ready()
    wait_settled(cl, survivor, timeout=60)
    n = cl.nodes[survivor]
    measure(cl, "move back after the crash", lambda: n.on("pcs", "resource", "move", CLONE, h, "--promoted"), h)
    n.on("pcs", "resource", "clear", CLONE)
    wait_settled(cl, h)


def test_ten_moves_leave_nothing_stale(cl):
    n = cl.nodes[promoted(cl)]
    for _ in range(10):
        src = promoted(cl)
        dst = other(cl, src)
        measure(cl, "repeated move", lambda d=dst: n.on("pcs", "resource", "move", CLONE, d, "--promoted"), dst)
        n.on("pcs", "resource", "clear", CLONE)
        wait_settled(cl, dst)
    for name, node in cl.nodes.items():  # the pool is the ha plugin's: one lease per client, wherever it moved
        held = [v for s in node.sas() if s["name"] == "rw" for v in s.get("remote-vips", [])]
        assert len(held) == len(set(held)) == len(CLIENTS), f"{name} holds virtual IPs {held}"
    vips = []
    for client in (cl.client, cl.stock):
        assert client is not None
        sas = [s for s in client.sas() if s["name"] == "home"]
        assert len(sas) == 1 and len(sas[0]["child-sas"]) == 1, sas
        vips += sas[0]["local-vips"]
    assert len(set(vips)) == 2, vips


def promotion_score(c: cluster.Cluster, node: str) -> str:
    out = c.nodes[node].on("attrd_updater", "-n", f"master-{CLONE.removesuffix('-clone')}", "-Q", "-N", node).stdout
    return out.rsplit("value=", 1)[-1].strip().strip('"')


def wait_score(c: cluster.Cluster, node: str, score: str, timeout: float = 60) -> None:
    """The monitor of ``node`` sets its promotion score to ``score`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and promotion_score(c, node) != score:
        time.sleep(0.5)
    assert promotion_score(c, node) == score


def test_sync_link_cut_is_reported_and_heals_without_a_restart(cl):
    """The sync link to the standby cut while its copies go stale (the client rekeys): once the
    difference lasts the standby's promotion score drops below an in-sync one's, it keeps its
    copies (a resync could not arrive) and its monitor never fails (before: Pacemaker restarted
    it, emptied it, and the resync was lost again, for as long as the cut lasted). With the link
    back, the next sync that arrives shows it: the standby empties itself, asks the promoted node
    for a resync and is in sync again; a takeover then keeps the client's SA."""
    h = promoted(cl)
    s = other(cl, h)
    wait_settled(cl, h)
    wait_score(cl, s, "50", timeout=10)
    standby = cl.nodes[s]
    standby.on("nft", "-f", "-", stdin="table inet cut {\n chain in {\n  type filter hook input priority 0;\n"
               "  udp dport 4510 drop\n }\n}\n")
    assert cl.stock is not None
    try:
        with cl.stock.vici() as v:
            v.rekey({"child": "home"})
        wait_score(cl, s, "10")
        time.sleep(5)  # two more standby monitors with the link still cut
        assert cl.failed_actions() == [], cl.failed_actions()
        log = standby.on("grep", "-rh", "sync", "/var/log/pacemaker", check=False).stdout
        assert [x["state"] for x in rw_sas(cl, s)] == ["PASSIVE"] * len(CLIENTS), log[-3000:]  # copies kept
    finally:
        standby.on("nft", "delete", "table", "inet", "cut", check=False)
    with cl.stock.vici() as v:  # a sync that arrives
        v.rekey({"child": "home"})
    wait_settled(cl, h, timeout=90)
    wait_score(cl, s, "50", timeout=30)
    assert cl.failed_actions() == [], cl.failed_actions()
    n = cl.nodes[h]
    measure(cl, "move after a healed cut", lambda: n.on("pcs", "resource", "move", CLONE, s, "--promoted"), s)
    n.on("pcs", "resource", "clear", CLONE)
    wait_settled(cl, s)


@pytest.fixture(scope="module")
def crmcl() -> Iterator[cluster.Cluster]:
    c = cluster.Cluster.build(("gw1", "gw2"), ha=True)
    try:
        first = cluster.start_stateful(c, "crm")
        wait_in_sync(c, other(c, first))
        yield c
    finally:
        c.destroy()


def test_crm_recipe_standby_keeps_the_sas(crmcl):
    """docs/stateful.md's crm recipe: the same cluster, a standby keeps both clients' IKE_SAs."""
    first = promoted(crmcl)
    second = other(crmcl, first)
    measure(crmcl, "crm standby", lambda: crmcl.nodes[first].on("crm", "node", "standby", first), second)
    crmcl.nodes[first].on("crm", "node", "online", first)
    wait_settled(crmcl, second)
