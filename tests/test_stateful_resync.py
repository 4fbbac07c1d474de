"""A standby really in sync at fleet size: two lab charons with the ha plugin, one stock client
charon holding N road-warrior IKE_SAs through the VIP (one identity each). The agent's start
gives charon's ha sync socket an 8 MiB receive buffer (the kernel's default lost half of 200
copies in a resync), so the first sync and a resync after the standby's restart leave it
with one PASSIVE copy, with its CHILD_SA installed, of every SA - and no datagram dropped."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import core as lab

pytestmark = [pytest.mark.root, pytest.mark.charon, pytest.mark.slow]

N = 200
PSK = "resync-psk-Qm4vK8nR2tW6yZ1xB5cD9fG3hJ7aa"
CONF = lab.STATEFUL_GATEWAY_CONF.replace("id-client = client1@example.com\n", "")  # one PSK for every client


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[dict[str, Any]]:
    d: Path = tmp_path_factory.mktemp("resync")
    conf = d / "swanctl.conf"
    conf.write_text(CONF % {"vip": lab.VIP, "psk": PSK})
    conf.chmod(0o600)
    lb = lab.Lab.build(("gw1", "gw2"), ha=True, client_extra="")
    env = {"lab": lb, "conf": conf, "rsctmp": {gw: str(d / f"rsctmp-{gw}") for gw in ("gw1", "gw2")}}
    try:
        lb.add_vip("gw1")
        for gw in ("gw1", "gw2"):
            ok(act(env, gw, "start"))
        ok(act(env, "gw1", "promote"))
        connect(lb, N)
        yield env
    finally:
        lb.destroy()


def act(env: dict[str, Any], gw: str, action: str, **extra: str) -> lab.Result:
    c = env["lab"].gateways[gw]
    return lab.agent(action, {"vip": lab.VIP, "config": str(env["conf"]), "vici_socket": c.uri,
                              "ha_fifo": c.ha_fifo}, netns=env["lab"].ns(gw), rsctmp=env["rsctmp"][gw],
                     timeout=120, OCF_RESKEY_CRM_meta_promotable="true", OCF_RESKEY_CRM_meta_timeout="90000", **extra)


def ok(r: lab.Result) -> lab.Result:
    assert r.rc == 0, r.stderr
    return r


def connect(lb: lab.Lab, n: int) -> None:
    """n stock road warriors in the one client charon, each its own identity and IKE_SA."""
    assert lb.client is not None
    with lb.client.vici() as s:
        s.load_shared({"id": "fleet-psk", "type": "IKE", "data": PSK, "owners": []})
        for i in range(n):
            s.load_conn({f"c{i}": lab.stock_conn(f"c{i:04d}@example.com")["home"]})
        for i in range(n):  # one after the other: charon blocks a peer address with > 5 half-open IKE_SAs
            for _ in s.initiate({"child": "home", "ike": f"c{i}", "timeout": "20000"}):
                pass


def copies(lb: lab.Lab, gw: str) -> tuple[int, int, int]:
    """(PASSIVE IKE_SAs, those with an installed CHILD_SA, distinct IKE SPIs among them) on gw."""
    sas = [s for s in lb.gateways[gw].sas() if s["name"] == "rw" and s["state"] == "PASSIVE"]
    ready = [s for s in sas if any(c["state"] == "INSTALLED" for c in (s.get("child-sas") or {}).values())]
    return len(sas), len(ready), len({(s["initiator-spi"], s["responder-spi"]) for s in sas})


def sync_socket(lb: lab.Lab, gw: str, port: int = 4510) -> tuple[int, int, int]:
    """(receive buffer, bytes queued, drops) of the UDP socket on ``port`` in gw's namespace, read
    with ``ss`` (the kernel's view, not the agent's code); with several (IPv4, IPv6), the smallest
    buffer."""
    out = lab.in_ns(lb.ns(gw), "ss", "-uanmH", "sport", "=", f":{port}").stdout
    found = re.findall(r"skmem:\(r(\d+),rb(\d+),.*?,d(\d+)\)", out)
    assert found, out
    return min((int(rb), int(r), int(d)) for r, rb, d in found)


def wait_copies(lb: lab.Lab, gw: str, n: int, timeout: float) -> tuple[int, int, int]:
    end = time.monotonic() + timeout
    while True:
        now = copies(lb, gw)
        if now == (n, n, n) or time.monotonic() > end:
            return now
        time.sleep(1)


class PeakQueue(threading.Thread):
    """The most bytes seen waiting in gw's sync socket while it runs (sampled every 2 ms)."""

    def __init__(self, lb: lab.Lab, gw: str) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{lb.gateways[gw].pid}/net/udp"
        self.peak, self.done = 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            with open(self.path) as f:
                for line in f.read().splitlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(":119E"):
                        self.peak = max(self.peak, int(fields[4].split(":")[1], 16))
            time.sleep(0.002)


def test_start_gives_the_sync_and_ike_sockets_their_buffers_on_both_nodes(fleet):
    """32 MiB for the sync socket, 8 MiB for each IKE socket (a fleet's retries arrive at once)."""
    for gw in ("gw1", "gw2"):
        rcvbuf, _, _ = sync_socket(fleet["lab"], gw)
        assert rcvbuf >= 8 * 1024 * 1024, (gw, rcvbuf)
        for port in (500, 4500):
            rcvbuf, _, _ = sync_socket(fleet["lab"], gw, port)
            assert rcvbuf >= 8 * 1024 * 1024, (gw, port, rcvbuf)


def test_first_sync_of_the_fleet_leaves_every_copy(fleet):
    lb = fleet["lab"]
    assert wait_copies(lb, "gw2", N, timeout=60) == (N, N, N)
    assert sync_socket(lb, "gw2")[2] == 0


def test_a_resync_after_the_standbys_restart_leaves_every_copy_once(fleet):
    """What Pacemaker does when the standby's instance restarts (an unstandby, a rejoin): stop,
    start, and the promoted node's post-start notification resends the state (``*1``)."""
    lb = fleet["lab"]
    ok(act(fleet, "gw2", "stop"))
    ok(act(fleet, "gw2", "start"))
    before = sync_socket(lb, "gw2")[2]
    peak = PeakQueue(lb, "gw2")
    t0 = time.monotonic()
    ok(act(fleet, "gw1", "notify", OCF_RESKEY_CRM_meta_on_node="gw1", OCF_RESKEY_CRM_meta_notify_type="post",
           OCF_RESKEY_CRM_meta_notify_operation="start", OCF_RESKEY_CRM_meta_notify_start_uname="gw2"))
    got = wait_copies(lb, "gw2", N, timeout=90)
    took = time.monotonic() - t0
    peak.done.set()
    peak.join()
    rcvbuf, _, drops = sync_socket(lb, "gw2")
    print(f"resync of {N}: {took:.1f} s, peak {peak.peak} bytes queued of {rcvbuf}, {drops - before} dropped")
    assert got == (N, N, N), f"standby holds {got} (copies, with CHILD_SA, distinct) of {N}"
    assert drops == before, f"{drops - before} sync datagrams dropped"
