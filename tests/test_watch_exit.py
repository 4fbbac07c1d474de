"""The watch daemon's exits, without root: the final stop always runs, and a failed look at the
addresses is retried like any other failure (netlink errors cannot be produced on demand)."""

from __future__ import annotations

import pytest

from ipsec_vip import control, watch
from ipsec_vip import vip as vipmod
from ipsec_vip.errors import NetlinkError
from ipsec_vip.params import parse
from ipsec_vip.state import StateDir


@pytest.fixture
def watcher(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    stops: list[str] = []
    monkeypatch.setattr(control, "stop", lambda params, instance, states, deadline: stops.append(instance) or "ok")
    w = watch.Watcher(parse({"vip": "192.0.2.100", "vici_socket": f"unix://{tmp_path}/none.vici"}), "t",
                      StateDir(str(tmp_path / "rsctmp")))
    return w, stops


def test_an_error_out_of_the_event_loop_still_stops(watcher, monkeypatch):
    w, stops = watcher

    async def broken_loop() -> None:
        raise OSError(105, "No buffer space available")

    monkeypatch.setattr(w, "_main", broken_loop)
    with pytest.raises(OSError):
        w.run()
    assert stops == ["t"], "the daemon exited without its final stop"


def test_a_failed_address_dump_backs_off_instead_of_crashing(watcher, monkeypatch):
    w, _ = watcher

    def broken_dump(vip, interface=None):
        raise NetlinkError("netlink: the address dump (RTM_GETADDR) timed out")  # every fault of vip.held

    monkeypatch.setattr(vipmod, "held", broken_dump)
    monkeypatch.setattr(w, "_listen", lambda: None)  # no event loop here
    w._reconcile()
    assert w._retry_at is not None and "addresses" in (w._error or "")
    assert w._status == "error: cannot read this node's addresses: netlink: the address dump (RTM_GETADDR) timed out"
    w._reconcile()
    assert w._failures == 2  # the backoff grows like any other failure's
