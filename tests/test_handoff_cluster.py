"""The handoff in a real two-node Pacemaker cluster set up with docs/handoff.md's pcs recipe.

Clients: stock (strongSwan defaults: no DPD, close_action none, default retransmits), tuned
(the lab's client: DPD 1 s, close_action start, retransmit 0.5 s) and one with
follow_redirects = no. Nobody re-initiates a client during a measured move.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import cluster
from lab import core as lab
from tests.test_failover import holder, other, wait_conns
from tests.test_handoff import CONF, NOREDIR_IP, PSK, STOCK_IP

pytestmark = [pytest.mark.root, pytest.mark.charon, pytest.mark.cluster, pytest.mark.slow]

STOCK_TIMEOUT = 4.0  # strongSwan's default retransmit_timeout
GAPS: dict[str, list[float]] = {}


class Lab:
    def __init__(self, c: cluster.Cluster) -> None:
        self.c = c
        self.clients: dict[str, lab.Charon] = {}


@pytest.fixture(scope="module")
def hl() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    c = cluster.Cluster.build(("gw1", "gw2"))
    h = Lab(c)
    try:
        conf = c.work / "swanctl.conf"
        conf.write_text(CONF % {"vip": lab.VIP, "psk": PSK})
        conf.chmod(0o600)
        for cmd in cluster.pcs_commands(str(conf)):
            c.nodes["gw1"].on(*cmd)
        first = c.wait_any("vpn")
        c.wait_located("vpn-vip", first)
        wait_conns(c, first)
        lan = lab.PREFIX + "lan"
        h.clients["stock"] = lab.add_client("stock", STOCK_IP, lan, c.namespaces)
        h.clients["noredir"] = lab.add_client("noredir", NOREDIR_IP, lan, c.namespaces,
                                              extra="  follow_redirects = no\n")
        for name, cl in h.clients.items():
            with cl.vici() as s:
                s.load_shared({"id": "home-psk", "type": "IKE", "data": PSK, "owners": []})
                s.load_conn(lab.stock_conn(f"{name}@example.com"))
        assert c.client is not None
        lab.client_load(c.client, PSK)
        h.clients["tuned"] = c.client
        connect_all(h)
        yield h
    finally:
        for name, cl in h.clients.items():
            if name != "tuned":
                cl.stop()
        c.destroy()
        for label, gaps in GAPS.items():
            print(f"\n{label}: " + ", ".join(f"{g:.2f}s" for g in gaps))


def connect_all(h: Lab, fresh: tuple[str, ...] = ()) -> None:
    """Set-up only (never during a measured move): every client connected to the VIP; those in
    ``fresh`` (left stranded by an earlier move, their stale SA still ESTABLISHED) anew."""
    for name, cl in h.clients.items():
        if name in fresh:
            with cl.vici() as s:
                for ike_id in [body["uniqueid"] for sa in s.list_sas() for body in sa.values()]:
                    list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
        if not any(sa["state"] == "ESTABLISHED" for sa in cl.sas()):
            assert lab.client_initiate(cl), f"{cl.name} cannot connect"


def probes(h: Lab) -> dict[str, cluster.Probe]:
    return {name: cluster.Probe(h.c.work, netns=cl.netns) for name, cl in h.clients.items()}


def move_and_measure(h: Lab, label: str, event: Any, new: str, wait_back: tuple[str, ...] = ("stock", "tuned"),
                     observe: float = 0.0) -> dict[str, float]:
    """Run ``event`` with traffic from every client; return each client's gap (inf: not back in 30 s,
    or, for the clients not in ``wait_back``, no traffic ``observe`` s after the VIP moved) and
    'vip' = seconds until the VIP ran on ``new``."""
    ps = probes(h)
    try:
        for p in ps.values():
            p.wait_flowing(time.monotonic() - 5, timeout=15)
        t0 = time.monotonic()
        event()
        vip_moved = wait_vip(h.c, new) - t0
        wait_conns(h.c, new)
        out: dict[str, float] = {"vip": vip_moved}
        for name in wait_back:
            try:
                ps[name].wait_flowing(t0 + vip_moved, timeout=30)
                time.sleep(0.3)
                out[name] = ps[name].gap(t0)
            except TimeoutError:
                out[name] = float("inf")
        time.sleep(max(t0 + vip_moved + observe - time.monotonic(), 0))
        for name in set(ps) - set(wait_back):
            out[name] = ps[name].gap(t0) if ps[name].answers() and ps[name].answers()[-1] > t0 + vip_moved + 1 \
                else float("inf")
    finally:
        for p in ps.values():
            p.stop()
    for k, v in out.items():
        GAPS.setdefault(f"{label} {k}", []).append(v)
    print(f"\n{label}: " + ", ".join(f"{k} {v:.2f}s" for k, v in out.items()))
    return out


def wait_vip(c: cluster.Cluster, new: str, timeout: float = 60) -> float:
    """Monotonic time at which the VIP is on ``new`` and on no other node (the addresses
    themselves: crm_resource's view runs ahead of them during a transition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if [n for n, node in c.nodes.items() if node.alive and node.has_address(lab.VIP)] == [new]:
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"VIP not on {new} alone after {timeout}s")


def old_holder_clean(h: Lab, node: str, timeout: float = 15) -> None:
    """The old holder keeps no SA, pool or drop rule once the VIP has left (the sweeper)."""
    n = h.c.nodes[node]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sas = [sa for sa in n.sas() if sa["name"] == "rw"]
        rules = n.on("nft", "list", "ruleset").stdout
        with n.vici() as s:
            pools = list(s.get_pools())
        if not sas and not pools and "ipsec-vip handoff" not in rules:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} not clean: SAs {[sa['remote-id'] for sa in sas]}, pools {pools}, rules:\n{rules}")


def test_recipe_stops_the_agent_before_the_vip_and_starts_it_before(hl: Lab) -> None:
    """crm_simulate on the live CIB with the holder in standby: stop vpn, then stop the VIPs
    there; start vpn on the other node, then start the VIPs there."""
    c = hl.c
    first = holder(c)
    second = other(c, first)
    n = c.nodes[first]
    cib = "/run/handoff-cib.xml"
    n.on("sh", "-c", f"cibadmin -Q > {cib}")
    n.on("sh", "-c", f"CIB_file={cib} crm_attribute -N {first} -n standby -v on")
    graph = n.on("sh", "-c", f"crm_simulate -x {cib} -S -G /run/handoff-graph.xml >/dev/null && "
                             "cat /run/handoff-graph.xml").stdout
    import xml.etree.ElementTree as ET

    root = ET.fromstring(graph)
    inputs: dict[str, set[str]] = {}
    for syn in root.iter("synapse"):
        op = syn.find("action_set/*")
        if op is None:
            continue
        key = f"{op.get('operation_key')}@{op.get('on_node', '')}"
        inputs[key] = {f"{i.get('operation_key')}@{i.get('on_node', '')}" for i in syn.iterfind("inputs/trigger/*")}

    def before(a: str, b: str) -> bool:  # a is (transitively) an input of b
        seen, todo = set(), [b]
        while todo:
            for i in inputs.get(todo.pop(), ()):
                if i == a:
                    return True
                if i not in seen:
                    seen.add(i)
                    todo.append(i)
        return False
    assert before(f"vpn_stop_0@{first}", f"vpn-vip_stop_0@{first}"), inputs
    assert before(f"vpn_start_0@{second}", f"vpn-vip_start_0@{second}"), inputs
    assert before(f"vpn-vip_stop_0@{first}", f"vpn-vip_start_0@{second}"), inputs
    assert not before(f"vpn-vip_stop_0@{first}", f"vpn_stop_0@{first}"), inputs


def test_standby_hands_both_clients_over(hl: Lab) -> None:
    c = hl.c
    first = holder(c)
    second = other(c, first)
    n = c.nodes[first]
    gaps = move_and_measure(hl, "standby (handoff)", lambda: n.on("pcs", "node", "standby", first), second)
    assert gaps["tuned"] < 3.0, gaps
    assert gaps["stock"] < STOCK_TIMEOUT + gaps["vip"] + 0.5, gaps
    assert gaps["noredir"] == float("inf"), "the client that does not follow redirects is left as without handoff"
    old_holder_clean(hl, first)
    n.on("pcs", "node", "unstandby", first)


def test_resource_move_hands_both_clients_over(hl: Lab) -> None:
    c = hl.c
    first = holder(c)
    second = other(c, first)
    n = c.nodes[first]
    connect_all(hl, fresh=("noredir",))
    gaps = move_and_measure(hl, "pcs resource move (handoff)",
                            lambda: n.on("pcs", "resource", "move", cluster.MOVE, second), second)
    assert gaps["tuned"] < 3.0, gaps
    assert gaps["stock"] < STOCK_TIMEOUT + gaps["vip"] + 0.5, gaps
    old_holder_clean(hl, first)
    n.on("pcs", "resource", "clear", cluster.MOVE)


def test_without_handoff_the_stock_client_is_stranded(hl: Lab) -> None:
    """handoff=none: the same move leaves the stock client without traffic (no DPD: it never
    notices), while the tuned one comes back through its DPD - the difference the handoff makes."""
    c = hl.c
    first = holder(c)
    n = c.nodes[first]
    n.on("pcs", "resource", "update", "vpn", "handoff=none")
    c.wait_located("vpn-vip", first, timeout=60)
    wait_conns(c, first)
    connect_all(hl, fresh=("noredir", "stock"))
    second = other(c, first)
    gaps = move_and_measure(hl, "standby (handoff=none)", lambda: n.on("pcs", "node", "standby", first), second,
                            wait_back=("tuned",), observe=15)
    assert gaps["tuned"] < 5.0, gaps
    assert gaps["stock"] == float("inf"), gaps
    n.on("pcs", "node", "unstandby", first)
    n.on("pcs", "resource", "update", "vpn", "handoff=redirect")
