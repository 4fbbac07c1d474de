"""``python -m bench`` (``make bench``, root): the whole benchmark in one run; see bench/README.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import common, report

T0 = time.monotonic()


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - T0:5.0f}s] {text}", flush=True)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    swan = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "strongswan-charon"], capture_output=True,
                          text=True, check=False).stdout
    return {"cpu": cpu or platform.processor(), "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "strongswan": swan or "?",
            "loadavg_start": os.getloadavg()[0]}


def floors(runs: int) -> list[dict[str, Any]]:
    """Interpreter start-up alone: the floor under every Python agent action."""
    rows = []
    for label, py in (("system python3", "/usr/bin/python3"),
                      ("agent venv python3", str(common.AGENT_VENV / "bin" / "python3")),
                      ("development venv python3 (editable install)", sys.executable)):
        res = common.timeit([], [py, "-c", "pass"], runs + 1, {"PATH": "/usr/bin:/bin"})
        rows.append(common.row(res["run"], what=f"{label} -c pass"))
    res = common.timeit([], ["/bin/sh", "-c", ":"], runs + 1, {"PATH": "/usr/bin:/bin"})
    rows.append(common.row(res["run"], what="/bin/sh -c :"))
    return rows


def section(results: dict[str, Any], key: str, fn: Any, *args: Any) -> None:
    """Run one part; a failure is recorded as 'not measured: reason', never faked."""
    t = time.monotonic()
    try:
        results[key] = fn(*args)
    except Exception as e:
        log(f"  {key} FAILED: {type(e).__name__}: {e}")
        traceback.print_exc()
        results[key] = {"available": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                        "rows": []}
    results.setdefault("section_seconds", {})[key] = round(time.monotonic() - t, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "20")),
                   help="timed runs per measurement, after one warm-up (default 20)")
    p.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "1,100,1000"),
                   help="connection counts (default 1,100,1000)")
    p.add_argument("--failover-reps", type=int, default=int(os.environ.get("BENCH_FAILOVER_REPS", "2")),
                   help="repetitions of each failover scenario (default 2; 0 skips the cluster)")
    p.add_argument("--reaction-runs", type=int, default=int(os.environ.get("BENCH_REACTION_RUNS", "10")),
                   help="runs of the watch / charon-restart measurements (default 10)")
    p.add_argument("--skip", default=os.environ.get("BENCH_SKIP", ""),
                   help="comma-separated parts to skip: agents,upstream,load,reaction,failover,mesh,stateful,takeover,"
                        "vrrp,fleet")
    p.add_argument("--takeover-sas", type=int, default=int(os.environ.get("BENCH_TAKEOVER_SAS", "1000")),
                   help="synced SAs in the stateful takeover measurement (default 1000)")
    p.add_argument("--fleet", default=os.environ.get("FLEET", "1,100,1000"),
                   help="fleet sizes through Pacemaker, stateful and primitive (default 1,100,1000; e.g. "
                        "FLEET=10000 make bench for one pair at 10,000 SAs); 0 skips")
    p.add_argument("--libreswan-root", default=str(common.CACHE / "lsroot"),
                   help="cached Debian root with libreswan (built on first use)")
    p.add_argument("--out", default=str(common.ROOT / "bench" / "results"), help="where latest.md/.json go")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("make bench needs root (network namespaces, chroot, Pacemaker lab)", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    from bench import failover, fleet, keepalived, local, mesh, takeover, upstream

    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "machine": machine(), "runs": args.runs, "sizes": sizes, "skipped": sorted(skip)}
    log(f"ipsec-vip bench: sizes {sizes}, {args.runs} runs after 1 warm-up, failover x{args.failover_reps}")
    log("agent interpreter")
    common.agent_venv(log)
    results["floors"] = floors(args.runs)
    if skip & {"agents", "load", "reaction"} != {"agents", "load", "reaction"}:
        bed = local.Bed()
        try:
            importtime: dict[int, str] = {}
            if "agents" not in skip:
                log("1. agent actions: ocf:ipsec-vip:strongswan and swanctl-agent.sh (lab charon)")
                section(results, "agents", local.agents, bed, sizes, args.runs, log, importtime)
                results["importtime"] = importtime
            if "load" not in skip:
                log("2. load throughput: the library vs swanctl --load-conns")
                section(results, "load", local.load, bed, [s for s in sizes if s > 1] or sizes, args.runs, log)
            if "reaction" not in skip:
                log("3. reaction: ipsec-vip watch, and the keepalived habit (charon restart + swanctl --load-all)")
                rsizes = sorted({sizes[0], sizes[-1]})
                section(results, "watch", local.watch, bed, rsizes, args.reaction_runs, log)
                section(results, "keepalived", local.keepalived, bed, rsizes, args.reaction_runs, log)
        finally:
            bed.close()
    if "upstream" not in skip:
        log("1b. upstream: ocf:heartbeat:ipsec + libreswan (chroot in a namespace)")
        section(results, "upstream", upstream.agents, args.libreswan_root, sizes, args.runs, log)
    if "failover" not in skip and args.failover_reps > 0:
        log(f"4. failover gaps on the Pacemaker lab, {args.failover_reps} of each scenario")
        section(results, "failover", failover.run, args.failover_reps, log)
    if "stateful" not in skip and args.failover_reps > 0:
        reps = max(args.failover_reps, 5)
        log(f"4b. stateful mode (promotable clone + ha plugin), stock and tuned client, {reps} of each scenario")
        section(results, "stateful", failover.run_stateful, reps, log)
    if "vrrp" not in skip and args.failover_reps > 0:
        reps = max(args.failover_reps, 5)
        log(f"4d. the keepalived pair (primitive and stateful watch), stock and tuned client, {reps} of each scenario")
        section(results, "vrrp", keepalived.run, reps, log)
    if "takeover" not in skip and args.takeover_sas > 0:
        log(f"4c. stateful takeover of {args.takeover_sas} synced SAs")
        section(results, "takeover", takeover.run, args.takeover_sas, log)
    fleet_sizes = [int(x) for x in args.fleet.split(",") if x.strip() and int(x) > 0]
    if "fleet" not in skip and fleet_sizes:
        log(f"6. a fleet through Pacemaker: N = {fleet_sizes} stock clients, stateful and primitive")
        section(results, "fleet", fleet.run, fleet_sizes, log)
    if "mesh" not in skip:
        log("5. ipsec-vip mesh at scale: render 200 nodes x 3 networks, load one node's file")
        section(results, "mesh", mesh.run, args.runs, log)
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results["total_seconds"] = round(time.monotonic() - T0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = report.markdown(results)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    pngs = report.plots(results, out)
    print()
    print(md)
    log(f"written {out / 'latest.md'}, {out / 'latest.json'}, {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
