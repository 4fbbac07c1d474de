"""The tunnel follows the VIP: real two-node Pacemaker cluster, real charons, a real client.

The client is configured as the README recommends and is never re-initiated by the
harness: it finds the new holder by itself. Each scenario records the client's
traffic gap (longest time without an answer through the tunnel).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from lab import cluster
from lab import core as lab

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PSK = "failover-psk-Hk3mQ9vT2xW7zR5nB8cD4fG6"
GAPS: dict[str, float] = {}


@pytest.fixture(scope="module")
def cl() -> Iterator[cluster.Cluster]:
    c = cluster.Cluster.build(("gw1", "gw2"))
    try:
        conf = c.work / "swanctl.conf"
        conf.write_text(lab.GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
        conf.chmod(0o600)
        for cmd in cluster.pcs_commands(str(conf)):
            c.nodes["gw1"].on(*cmd)
        c.wait_located("vpn", "gw1")
        wait_conns(c, "gw1")
        assert c.client is not None
        lab.client_load(c.client, PSK)
        assert lab.client_initiate(c.client), "client could not connect at all"
        yield c
    finally:
        c.destroy()
        if GAPS:
            print("\nclient traffic gaps:", ", ".join(f"{k} {v:.2f}s" for k, v in GAPS.items()))


def wait_conns(c: cluster.Cluster, node: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if c.nodes[node].conns() == ["rw"]:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"connections not loaded on {node}")


def holder(c: cluster.Cluster) -> str:
    where = c.locate("vpn")
    assert len(where) == 1, where
    return where[0]


def other(c: cluster.Cluster, name: str) -> str:
    return next(n for n in c.nodes if n != name)


def measure(c: cluster.Cluster, label: str, event, new_holder: str,
            expect_failures: frozenset[str] = frozenset()) -> float:
    """Run ``event`` with traffic flowing; wait for the tunnel on ``new_holder``; return the gap.

    ``expect_failures``: the failed actions the event may cause (at least one of them if any).
    """
    probe = cluster.Probe(c.work)
    try:
        probe.wait_flowing(time.monotonic() - 5, timeout=15)
        t0 = time.monotonic()
        event()
        c.wait_located("vpn", new_holder, timeout=60)
        wait_conns(c, new_holder)
        settled = time.monotonic()
        try:
            probe.wait_flowing(settled, timeout=30)
        except TimeoutError:
            assert c.client is not None
            if "received NO_PROPOSAL_CHOSEN" in c.client.log_tail(200):
                raise AssertionError(f"{label}: {new_holder} refused the client (connections not loaded when "
                                     "its retry arrived): the client gave up") from None
            raise AssertionError(f"{label}: no traffic on {new_holder}; its SAs {c.nodes[new_holder].sas()}; "
                                 f"client log:\n{c.client.log_tail(60)}") from None
        time.sleep(0.3)
        gap = probe.gap(t0)
    finally:
        probe.stop()
    GAPS[label] = gap
    failed = {f.split("@")[0] for f in c.failed_actions()}
    assert failed <= expect_failures, f"unexpected failed actions: {failed - expect_failures}"
    assert bool(failed) == bool(expect_failures), f"failed actions {failed}, expected one of {expect_failures}"
    return gap


def cleanup(c: cluster.Cluster, node: str) -> None:
    """Clear the failure the scenario caused; the resource stays where it is."""
    c.nodes[node].on("pcs", "resource", "cleanup")
    c.wait_located("vpn", node)
    wait_conns(c, node)
    assert c.failed_actions() == []


def assert_clean(c: cluster.Cluster, node: str) -> None:
    """The old holder keeps nothing of the resource: no connections, no SAs."""
    n = c.nodes[node]
    assert n.conns() == []
    deadline = time.monotonic() + 5
    while n.sas() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert n.sas() == []
    assert not n.has_address(lab.VIP)


def test_nodes_run_the_project_as_make_install_installed_it(cl):
    """What pacemaker-execd runs is the `make install` tree, not the checkout."""
    root = cl.work / "root"
    n = cl.nodes[holder(cl)]
    agent = n.on("cat", "/usr/lib/ocf/resource.d/ipsec-vip/strongswan").stdout
    assert agent == (root / "usr/lib/ocf/resource.d/ipsec-vip/strongswan").read_text()
    assert agent.startswith(f"#!{sys.executable}\n")
    pid = n.on("pgrep", "-x", "pacemaker-execd").stdout.split()[0]
    environ = dict(kv.split("=", 1) for kv in n.on("cat", f"/proc/{pid}/environ").stdout.split("\0") if "=" in kv)
    where = n.on("env", "-i", f"PYTHONPATH={environ['PYTHONPATH']}", sys.executable, "-c",
                 "import ipsec_vip.agent; print(ipsec_vip.agent.__file__)").stdout.strip()
    assert where == str(root / "site" / "ipsec_vip" / "agent.py")


def test_planned_move_and_back(cl):
    first = holder(cl)
    second = other(cl, first)
    n = cl.nodes[first]
    measure(cl, "standby", lambda: n.on("pcs", "node", "standby", first), second)
    assert_clean(cl, first)
    n.on("pcs", "node", "unstandby", first)
    m = cl.nodes[second]
    measure(cl, "fail back", lambda: m.on("pcs", "node", "standby", second), first)
    assert_clean(cl, second)
    m.on("pcs", "node", "unstandby", second)


def test_pcs_resource_move(cl):
    first = holder(cl)
    second = other(cl, first)
    n = cl.nodes[first]
    measure(cl, "pcs resource move", lambda: n.on("pcs", "resource", "move", cluster.MOVE, second), second)
    assert_clean(cl, first)
    n.on("pcs", "resource", "clear", cluster.MOVE)


def test_charon_crash_on_the_holder(cl):
    h = holder(cl)
    n = cl.nodes[h]
    pid = n.charon_pid()
    measure(cl, "charon crash", lambda: n.on("kill", "-9", str(pid)), h,
            expect_failures=frozenset({"vpn_monitor_2000"}))
    assert n.charon_pid() != pid
    cleanup(cl, h)


def test_vip_deleted_by_hand(cl):
    h = holder(cl)
    n = cl.nodes[h]

    def delete() -> None:
        n.on("ip", "addr", "del", f"{lab.VIP}/24", "dev", "eth0")
    measure(cl, "VIP deleted", delete, h, expect_failures=frozenset({"vpn-vip_monitor_2000", "vpn_monitor_2000"}))
    assert n.has_address(lab.VIP)
    cleanup(cl, h)


def test_crash_of_the_holder_node(cl):
    h = holder(cl)
    survivor = other(cl, h)
    measure(cl, "holder crash", lambda: cl.crash(h), survivor)
    assert not cl.nodes[h].alive
