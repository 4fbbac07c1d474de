"""keepalived moves the VIP, ``ipsec-vip watch`` follows it (lab/keepalived.py: Debian's
keepalived on two gateway namespaces, docs/keepalived.md's configuration, the watch daemon run
as its unit runs it). Clients are stock strongSwan ones (defaults: no DPD, close_action none);
none is ever re-initiated by the test."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lab import core as lab
from lab import keepalived as kad

pytestmark = [pytest.mark.root, pytest.mark.charon, pytest.mark.slow]


@pytest.fixture(scope="module")
def primitive() -> Iterator[kad.Pair]:
    pair = kad.Pair.build(stateful=False, clients=("stock",))
    try:
        yield pair
    finally:
        pair.destroy()


def nothing_left(pair: kad.Pair, node: str) -> bool:
    """The old holder after a handoff: no connection, no SA of ours, no drop rule."""
    gw = pair.base.gateways[node]
    rules = lab.in_ns(pair.base.ns(node), "nft", "list", "ruleset", check=False).stdout
    return not gw.conns() and not [s for s in gw.sas() if s["name"] == "rw"] and "ipsec-vip handoff" not in rules


def wait(cond, what: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_primitive_planned_move_hands_the_stock_client_over(primitive):
    """docs/keepalived.md's planned move: stop the holder's watch daemon (its stop hands the
    clients off while the VIP is still here), then its keepalived; the stock client follows the
    REDIRECT and its first retransmit reaches the new holder. The old node comes back as backup."""
    pair = primitive
    assert pair.holder() == "gw1"

    got = kad.measure(pair, lambda: pair.planned_move("gw1"), "gw2", kinds=("stock",))["stock"]
    assert got["vip_moved_s"] < 2, got
    assert got["gap_s"] < 6.5, (got, pair.logs())  # one retransmit_timeout (4 s) plus the move
    assert pair.base.gateways["gw2"].conns() == ["rw"]
    wait(lambda: nothing_left(pair, "gw1"), "gw1 swept after the VIP left")
    pair.rejoin("gw1")
    time.sleep(3.5)  # more than keepalived's master-down interval: gw1 would have preempted by now
    assert pair.holder() == "gw2", "nopreempt: the node that came back must stay backup"
    assert pair.base.gateways["gw1"].conns() == []
    assert pair.base.client is not None


def test_primitive_crash_strands_the_stock_client_and_the_new_holder_loads(primitive):
    """A crash of the holder: keepalived moves the VIP after its master-down interval, the
    watch daemon on the other node loads the connections at once; the stock client (no DPD) is
    left without traffic, as docs/keepalived.md says (the stateful mode is the cure)."""
    pair = primitive
    old = pair.holder()
    assert old is not None
    new = next(n for n in kad.NODES if n != old)
    probe = pair.probe("stock")
    try:
        probe.wait_flowing(time.monotonic() - 5, timeout=20)
        t0 = time.monotonic()
        pair.crash(old)
        t_vip = pair.wait_holder(new) - t0
        assert 1.9 < t_vip < 5, t_vip  # 3 x advert_int + skew, from the last advert received
        wait(lambda: pair.base.gateways[new].conns() == ["rw"], "connections loaded on the new holder", 5)
        time.sleep(8)
        assert not [t for t in probe.answers() if t > t0 + t_vip], "a stock client without DPD cannot recover"
    finally:
        probe.stop()
    pair.boot(old)
    time.sleep(3.5)
    assert pair.holder() == new
