"""The stateful watch's decisions and its announcements on the sync link (no root: loopback only)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ipsec_vip import hawatch
from ipsec_vip.errors import ConfigError
from ipsec_vip.hawatch import Announce, role_action

VIP = "192.0.2.100"


def peer(held: bool = True, active: bool = True, since: float = 0.0, **kw: str) -> Announce:
    return Announce(id=kw.pop("id", "p"), held=held, active=active, since=since, **kw)


def test_announcements_round_trip_and_foreign_ones_are_ignored():
    a = Announce(id="ab12", held=True, active=False, since=12.5, digest="d", want="ab12", resynced="")
    assert hawatch.decode(VIP, hawatch.encode(VIP, a)) == a
    assert hawatch.decode("192.0.2.101", hawatch.encode(VIP, a)) is None  # another VIP's pair
    for junk in (b"", b"\xff", b"[]", b'{"ipsec-vip": 2}', b'{"ipsec-vip": 1, "vip": "192.0.2.100"}',
                 b'{"ipsec-vip": 1, "vip": "192.0.2.100", "id": "x", "held": true, "active": true, "since": "x"}'):
        assert hawatch.decode(VIP, junk) is None
    loose = hawatch.decode(VIP, b'{"ipsec-vip":1,"vip":"192.0.2.100","id":"x","held":"yes","active":1}')
    assert loose is not None and not loose.held and not loose.active  # only JSON true counts


@pytest.mark.parametrize(("held", "promoted", "yielded", "taken", "the_peer", "expected"), [
    # the VIP arrives / leaves: promote / demote, whatever the peer says
    (True, False, False, False, None, "promote"),
    (True, False, False, False, peer(since=50.0), "promote"),  # split brain: the newer holder takes it
    (False, True, False, False, None, "demote"),
    (False, True, False, False, peer(held=False, active=False), "demote"),
    (False, False, False, False, peer(), ""),
    (False, False, True, False, peer(), "unyield"),
    # promoted, VIP here
    (True, True, False, False, None, ""),
    (True, True, False, False, peer(held=False, active=False), ""),
    (True, True, False, False, peer(since=5.0), ""),  # the peer promoted before us: we keep it
    (True, True, False, False, peer(since=20.0), "yield"),  # it promoted after us: it holds the segment
    (True, True, False, True, None, "yield"),  # our SAs turned PASSIVE: the segment is gone
    # yielded, VIP here
    (True, False, True, False, peer(since=20.0), ""),  # the peer still serves: stay out of its way
    (True, False, True, False, peer(held=False, active=False), "promote"),  # it let go: take over
    (True, False, True, False, peer(held=True, active=False), "promote"),
    (True, False, True, False, None, "promote"),  # it went silent: someone must serve
])
def test_role_action(held, promoted, yielded, taken, the_peer, expected):
    assert role_action(held, promoted, yielded, taken, the_peer, since=10.0, me="m") == expected


def test_equal_promote_times_yield_on_one_side_only():
    a = role_action(True, True, False, False, peer(since=10.0, id="b"), since=10.0, me="a")
    b = role_action(True, True, False, False, peer(since=10.0, id="a"), since=10.0, me="b")
    assert sorted([a, b]) == ["", "yield"]


def test_resync_once_per_request_only_from_the_active_node():
    asking = peer(held=False, active=False, want="n1")
    assert hawatch.resync_due(True, asking, resynced="")
    assert not hawatch.resync_due(True, asking, resynced="n1")  # done for this start of the peer
    assert hawatch.resync_due(True, asking._replace(want="n2"), resynced="n1")  # it started again
    assert not hawatch.resync_due(False, asking, resynced="")  # never from a standby
    assert not hawatch.resync_due(True, asking._replace(want=""), resynced="")
    assert not hawatch.resync_due(True, asking._replace(active=True), resynced="")
    assert not hawatch.resync_due(True, None, resynced="")


def test_peer_is_gone_after_the_timeout():
    view = hawatch.PeerView()
    assert view.alive(100.0) is None
    view.heard(peer(), now=100.0)
    assert view.alive(100.0 + hawatch.PEER_TIMEOUT - 0.1) == peer()
    assert view.alive(100.0 + hawatch.PEER_TIMEOUT) is None


def test_channel_takes_datagrams_from_the_peer_only():
    lo = ipaddress.ip_address("127.0.0.1")
    a = hawatch.Channel(lo, lo, port=0)  # port 0: any free port, for the test
    try:
        port = a.sock.getsockname()[1]
        a.remote = ("127.0.0.1", port)  # talking to itself stands in for the peer
        a.send(b"one")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"forged", ("127.0.0.1", port))
        assert a.receive() == [b"one"]
        assert a.receive() == []
    finally:
        a.sock.close()


def test_channel_refuses_an_address_that_is_not_ours():
    with pytest.raises(ConfigError, match="ha_local must be this node's address"):
        hawatch.Channel(ipaddress.ip_address("192.0.2.254"), ipaddress.ip_address("192.0.2.253"))


def test_stateful_watch_settings():
    from ipsec_vip import watchconf

    on = {"vip": VIP, "stateful": "yes", "ha_local": "198.51.100.11", "ha_remote": "198.51.100.12"}
    link = watchconf.stateful(on)
    assert link is not None and (str(link.local), str(link.remote)) == ("198.51.100.11", "198.51.100.12")
    assert watchconf.stateful({"vip": VIP}) is None
    assert watchconf.stateful({"vip": VIP, "stateful": "no"}) is None
    for values, error in (({**on, "stateful": "maybe"}, "stateful must be yes or no"),
                          ({"vip": VIP, "ha_local": "198.51.100.11"}, "ha_local is for stateful = yes only"),
                          ({**on, "ha_remote": ""}, "needs ha_remote"),
                          ({**on, "ha_remote": "2001:db8::2"}, "two addresses of one family"),
                          ({**on, "ha_remote": "198.51.100.11"}, "two addresses of one family"),
                          ({**on, "ha_local": "198.51.100.11%eth1"}, "not an IPv4 or IPv6 address")):
        with pytest.raises(ConfigError, match=error):
            watchconf.stateful(values, "vpn.conf")
    params, _ = watchconf.settings({**on, "ha_fifo": "/run/x/charon.ha"})
    assert params.ha_fifo == "/run/x/charon.ha"
