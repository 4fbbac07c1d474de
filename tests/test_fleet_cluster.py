"""A fleet of 100 stock clients (lab/fleet.py) through a real two-node Pacemaker cluster in
stateful mode, set up by docs/stateful.md's pcs recipe with the pool in the ha plugin:
a ``pcs resource move --promoted``, a crash of the promoted node (a reboot, then its rejoin)
and a ``pcs node standby`` / unstandby. After each: every client keeps its IKE_SA (same
SPIs), every tunnel carries an echo both ways (CHILD_SA counters), no virtual IP is held
twice, five new clients get addresses nobody holds, and the standby ends up holding a copy of
every client's SA again (the unstandby's and the rejoin's resync at this size).

The sizes that need minutes (1000 clients and more) and the gaps are ``make bench``'s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import fleet

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow]

N = 100


@pytest.fixture(scope="module")
def fl() -> Iterator[fleet.FleetLab]:
    lab = fleet.FleetLab.build(N, stateful=True, spare=20, log=lambda text: print(text, flush=True))
    try:
        yield lab
    finally:
        lab.destroy()


def assert_kept(r: fleet.EventReport) -> None:
    print(r.summary(), {k: v for k, v in r.extra.items() if k != "established_after_s"})
    assert not r.lost_ike, f"{r.label}: {len(r.lost_ike)} clients lost their IKE_SA, e.g. {r.lost_ike[:5]}"
    assert not r.no_round_trip, f"{r.label}: no round trip through {len(r.no_round_trip)} tunnels, " \
                                f"e.g. {r.no_round_trip[:5]}"
    assert not r.duplicate_vips, f"{r.label}: virtual IPs held twice: {r.duplicate_vips[:5]}"
    assert r.joined_ok == r.joined, f"{r.label}: only {r.joined_ok} of {r.joined} new clients got a free address"
    have, _, want = str(r.extra.get("copies", "0/1")).partition("/")
    assert int(have) >= int(want), f"{r.label}: the standby holds {r.extra.get('copies')} copies"


def test_a_move_keeps_every_client(fl):
    assert_kept(fl.event("move"))


def test_a_crash_of_the_promoted_node_keeps_every_client_and_the_rejoin_resyncs(fl):
    assert_kept(fl.event("crash"))


def test_a_standby_keeps_every_client_and_the_unstandby_resyncs(fl):
    assert_kept(fl.event("standby"))
