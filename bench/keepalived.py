"""Failover gaps on the keepalived pair (lab/keepalived.py: Debian's keepalived on two gateways,
``ipsec-vip watch`` beside it, docs/keepalived.md's configuration), beside the Pacemaker rows:
the primitive with the handoff recipe, and the stateful watch, each with a stock and a tuned
client; planned move (``systemctl stop keepalived`` on the holder, the primitive's watch daemon
stopped first) and holder crash (a reboot), at keepalived's default ``advert_int`` (1 s,
multicast) and at 0.2 s (VRRPv3, ``unicast_peer``). The clients are never re-initiated during a
run; between runs a primitive's stock client gets a fresh IKE_SA (it follows at most 5 redirects
in 300 s, and a crash strands it for good)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.common import summary
from lab import core as lab
from lab import keepalived as kad

# (mode, stateful, unicast, advert_int)
SETUPS = (("primitive", False, False, "1"), ("stateful", True, False, "1"), ("stateful", True, True, "0.2"))
SCENARIOS = ("planned move", "holder crash")
STRANDED_AFTER = 15.0  # seconds without traffic after the VIP moved: the client is stranded


def label(mode: str, unicast: bool, advert_int: str) -> str:
    return f"keepalived {mode} (advert_int {advert_int} s, {'unicast' if unicast else 'multicast'})"


def _fresh(pair: kad.Pair, kind: str) -> None:
    """A new IKE_SA for the client (set-up between runs, never during one)."""
    client = pair.clients[kind]
    with client.vici() as s:
        for ike_id in [body["uniqueid"] for sa in s.list_sas() for body in sa.values()]:
            list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
    if not lab.client_initiate(client):
        raise RuntimeError(f"the {kind} client could not connect")


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.1)


def _synced(pair: kad.Pair, node: str) -> bool:
    """The standby holds one PASSIVE copy with an installed CHILD_SA per client."""
    copies = [s for s in pair.base.gateways[node].sas() if s["name"] == "rw" and s["state"] == "PASSIVE"
              and any(c["state"] == "INSTALLED" for c in (s.get("child-sas") or {}).values())]
    return len(copies) == len(pair.clients)


def _ready(pair: kad.Pair, standby: str) -> None:
    """Before each run: the standby in sync (stateful), or both clients with traffic (primitive)."""
    if pair.stateful:
        _wait(lambda: _synced(pair, standby), f"{standby} in sync")
        return
    for kind in pair.clients:
        probe = pair.probe(kind)
        try:
            probe.wait_flowing(time.monotonic(), timeout=3)
        except TimeoutError:
            _fresh(pair, kind)
        finally:
            probe.stop()
    _fresh(pair, "stock")


def setup_runs(mode: str, stateful: bool, unicast: bool, advert_int: str, reps: int,
               log: Any) -> list[dict[str, Any]]:
    pair = kad.Pair.build(stateful=stateful, unicast=unicast, advert_int=advert_int)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for scenario in SCENARIOS:
            for i in range(reps):
                h = pair.holder()
                if h is None:
                    raise RuntimeError(f"no single VIP holder: {pair.logs()}")
                o = next(n for n in kad.NODES if n != h)
                _ready(pair, o)
                log(f"    {label(mode, unicast, advert_int)}: {scenario} {i + 1}/{reps}, {h} -> {o}")
                if scenario == "planned move":
                    got = kad.measure(pair, lambda h=h: pair.planned_move(h), o, timeout=STRANDED_AFTER)
                    pair.rejoin(h)
                else:
                    got = kad.measure(pair, lambda h=h: pair.crash(h), o, timeout=STRANDED_AFTER)
                    pair.boot(h)
                for kind, sample in got.items():
                    runs.setdefault((scenario, kind), []).append(sample)
    finally:
        pair.destroy()
    rows = []
    for (scenario, kind), samples in runs.items():
        gaps = [s["gap_s"] * 1000 for s in samples if s.get("gap_s") is not None]
        rows.append({"setup": label(mode, unicast, advert_int), "mode": mode, "advert_int": float(advert_int),
                     "vrrp": "unicast" if unicast else "multicast", "client": kind, "scenario": scenario,
                     "runs": samples, "gap_s": summary(gaps),
                     "vip_moved_s": summary([s["vip_moved_s"] * 1000 for s in samples])})
    return rows


def run(reps: int, log: Any) -> dict[str, Any]:
    """Every setup; one that fails is reported with its reason, the others still run."""
    t0 = time.monotonic()
    result: dict[str, Any] = {"reps": reps, "rows": [], "failed": []}
    for mode, stateful, unicast, advert_int in SETUPS:
        log(f"  {label(mode, unicast, advert_int)}")
        try:
            result["rows"] += setup_runs(mode, stateful, unicast, advert_int, reps, log)
        except Exception as e:  # recorded as not measured, never estimated
            log(f"    FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            result["failed"].append({"setup": label(mode, unicast, advert_int),
                                     "reason": f"{type(e).__name__}: {str(e)[:300]}"})
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result
