"""Stateful takeover of many synced SAs (no Pacemaker: the agent's actions by hand, as the
cluster would run them): N road-warrior IKE_SAs from one client charon to gw1, synced to gw2
by the ha plugin; then gw1 demotes and stops, the VIP moves, gw2 promotes. Measured: the
promote action, and the time from the promote's start until every synced CHILD_SA on gw2 has
been replaced by its rekeyed successor (one CREATE_CHILD_SA round trip each; until then the
client drops gw2's ESP as replays), and a sample of the clients' tunnels carrying traffic both
ways afterwards."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from lab import core as lab

PSK = "bench-takeover-Qm4vK8nR2tW6yZ1xB5cD9fG3hJ7"
POOL = "10.99.0.0/20"  # private range; room for 4094 leases
def _act(lb: lab.Lab, gw: str, action: str, conf: Path, rsctmp: str) -> tuple[float, lab.Result]:
    c = lb.gateways[gw]
    t = time.monotonic()
    r = lab.agent(action, {"vip": lab.VIP, "config": str(conf), "vici_socket": c.uri, "ha_fifo": c.ha_fifo},
                  netns=lb.ns(gw), rsctmp=f"{rsctmp}-{gw}", timeout=300,
                  OCF_RESKEY_CRM_meta_promotable="true", OCF_RESKEY_CRM_meta_timeout="120000")
    if r.rc != 0:
        raise RuntimeError(f"{action} on {gw} -> {r.rc}: {r.stderr.strip()[-300:]}")
    return time.monotonic() - t, r


def _children(c: lab.Charon) -> dict[str, set[str]]:
    """IKE_SA (by its SPIs) -> unique ids of its INSTALLED CHILD_SAs."""
    out: dict[str, set[str]] = {}
    for sa in c.sas():
        if sa["name"] == "rw":
            out[sa["initiator-spi"]] = {ch["uniqueid"] for ch in (sa.get("child-sas") or {}).values()
                                        if ch["state"] == "INSTALLED"}
    return out


def _connect(lb: lab.Lab, n: int, log: Any, timeout: float = 600) -> None:
    if lb.client is None:
        raise RuntimeError("the lab has no client")
    with lb.client.vici() as s:
        s.load_shared({"id": "home-psk", "type": "IKE", "data": PSK, "owners": []})
        for i in range(n):
            conn = lab.stock_conn(f"c{i:05d}@example.com")
            s.load_conn({f"home{i}": conn["home"]})
        for i in range(n):  # one after the other: charon blocks a peer with > 5 half-open IKE_SAs
            for _ in s.initiate({"child": "home", "ike": f"home{i}", "timeout": "20000"}):
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = sum(1 for v in _children(lb.gateways["gw2"]).values() if v)
        log(f"      {up}/{n} synced to gw2")
        if up >= n:
            return
        time.sleep(5)
    raise TimeoutError(f"only {up} of {n} SAs synced after {timeout}s")


def run(n: int, log: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"{lab.PREFIX}takeover-"))
    conf = work / "swanctl.conf"
    conf.write_text(lab.GATEWAY_CONNS % {"vip": lab.VIP} + lab.any_client_secret(PSK))
    conf.chmod(0o600)
    rsctmp = str(work / "rsctmp")
    log(f"  {n} synced SAs: building two ha gateways and a client")
    lb = lab.Lab.build(("gw1", "gw2"), ha=True, client_extra="", ha_pool=POOL)  # rw-pool: the ha plugin's own
    try:
        lab.run(lab.IP, "-n", lb.ns("srv"), "route", "add", POOL, "via", lab.BACK_VIP)
        lb.add_vip("gw1")
        for gw in ("gw1", "gw2"):
            _act(lb, gw, "start", conf, rsctmp)
        _act(lb, "gw1", "promote", conf, rsctmp)
        log(f"    connecting {n} clients")
        _connect(lb, n, log)
        old = _children(lb.gateways["gw2"])
        demote_s, _ = _act(lb, "gw1", "demote", conf, rsctmp)
        lb.del_vip("gw1")
        lb.add_vip("gw2")
        stop_s, _ = _act(lb, "gw1", "stop", conf, rsctmp)  # a standby: Pacemaker promotes after this stop
        start = time.monotonic()
        promote_s, r = _act(lb, "gw2", "promote", conf, rsctmp)
        done, polls, poll_s = None, 0, 0.0
        while time.monotonic() - start < 120:
            t_poll = time.monotonic()
            now = _children(lb.gateways["gw2"])
            polls, poll_s = polls + 1, time.monotonic() - t_poll
            if all(now.get(spi) and not (now[spi] & ids) for spi, ids in old.items()):
                done = time.monotonic() - start  # seen by a list-sas that took poll_s itself
                break
            time.sleep(0.05)
        sample = [i * (n // 5) for i in range(5)] if n >= 5 else list(range(n))
        vips = {sa["name"]: sa["local-vips"][0] for sa in lb.client.sas() if sa.get("local-vips")} \
            if lb.client else {}
        both = sum(1 for i in sample if f"home{i}" in vips and lab.in_ns(
            lb.ns("client"), "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", vips[f"home{i}"], lab.SERVER_IP,
            check=False).returncode == 0)
        log(f"    demote {demote_s:.2f} s, stop {stop_s:.2f} s, promote {promote_s:.2f} s, "
            f"all {n} rekeyed after {done if done is not None else 'never'} s, "
            f"{both}/{len(sample)} sampled tunnels carry traffic both ways")
        return {"n": n, "demote_s": round(demote_s, 3), "stop_s": round(stop_s, 3), "promote_s": round(promote_s, 3),
                "all_rekeyed_s": None if done is None else round(done, 3),
                "polls": polls, "last_poll_s": round(poll_s, 3),
                "traffic_sample": f"{both}/{len(sample)}", "promote_log": r.stderr.strip().splitlines()[-1:],
                "seconds": round(time.monotonic() - t0, 1)}
    finally:
        lb.destroy()
