"""A fleet through the failover (``make bench``, part 6): N stock road-warrior clients
(:mod:`lab.fleet`) through a two-node Pacemaker cluster set up by the docs' recipes.

For each N: stateful mode (promotable clone + ha plugin, the pool in ``charon.plugins.ha.pools``)
through ``pcs node standby`` (then unstandby), ``pcs resource move --promoted`` (then clear) and
a crash of the promoted node (then its reboot and rejoin); primitive mode with
``handoff=redirect`` through ``pcs resource move``. After each event every client's IKE_SA, a
round trip through every tunnel and the virtual IPs are checked, and new clients join. Each row
keeps the sampled gaps, when each client's CHILD_SA was (re)established on the new holder (the
timeline), the Pacemaker operations' times and, stateful, how long the standby took to hold
every copy again."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from lab import fleet as fleetlab

STATEFUL_EVENTS = ("move", "standby", "crash")
CAPACITY = 1000  # above this N, one pair's capacity only: sync, memory per SA, takeover by a planned move


def _row(n: int, mode: str, r: fleetlab.EventReport) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d.update({"n": n, "mode": mode, "scenario": r.label.split(" ", 1)[1], "ok": r.ok,
              "lost_ike": len(r.lost_ike), "no_round_trip": len(r.no_round_trip),
              "duplicate_vips": len(r.duplicate_vips),
              "examples": {"lost_ike": r.lost_ike[:5], "no_round_trip": r.no_round_trip[:5],
                           "duplicate_vips": r.duplicate_vips[:5]}})
    return d


def _scenario(n: int, stateful: bool, events: tuple[str, ...], log: Any) -> list[dict[str, Any]]:
    mode = "stateful" if stateful else "primitive"
    t = time.monotonic()
    log(f"  N={n}, {mode}: building the cluster and connecting the fleet")
    fl = fleetlab.FleetLab.build(n, stateful, spare=5 * len(events) + 5, log=log)
    rows = []
    try:
        setup = round(time.monotonic() - t, 1)
        for kind in events:
            try:
                r = fl.event(kind)
            except Exception as e:  # the figures of the setup still stand; the cluster is no base for more
                log(f"    N={n} {mode} {kind} FAILED: {type(e).__name__}: {e}")
                rows.append({**_failed(n, mode, kind, e), "setup_s": setup, "setup": fl.setup})
                break
            row = _row(n, mode, r)
            row["setup_s"] = setup
            row["setup"] = fl.setup
            if kind == "move":  # the verdict's row; the same steady state after the others
                row["monitor"] = fl.monitor_costs()
            rows.append(row)
    finally:
        fl.destroy()
    return rows


def run(sizes: list[int], log: Any) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for n in sizes:
        plan = ((True, STATEFUL_EVENTS), (False, ("move",))) if n <= CAPACITY else ((True, ("move",)),)
        for stateful, events in plan:
            try:
                rows += _scenario(n, stateful, events, log)
            except Exception as e:  # one size failing must not hide the others
                mode = "stateful" if stateful else "primitive"
                log(f"    N={n} {mode} FAILED: {type(e).__name__}: {e}")
                rows.append(_failed(n, mode, "all", e))
    return {"rows": rows, "sizes": sizes, "sample": fleetlab.SAMPLE}


def _failed(n: int, mode: str, scenario: str, e: Exception) -> dict[str, Any]:
    return {"n": n, "mode": mode, "scenario": scenario, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
