"""`ipsec-vip mesh` at scale: render for a 200-node, 3-network inventory (target < 2 s, whole
process) and load the biggest per-node file into a lab charon (`swanctl --load-all`, and the
library's `ipsec-vip mesh load`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, row, timeit
from lab import core as lab

NODES = 200
NETS = {"internal_api": "172.16.2", "storage": "172.16.1", "storage_mgmt": "172.16.3"}
TARGET_MS = 2000.0


def inventory(nodes: int = NODES) -> dict[str, Any]:
    """Three controllers (holders of one VIP per network), the rest compute; every node on every
    network and no skip_between: the worst case, each node a tunnel to every other on each network."""
    names = [f"controller-{i}" if i < 3 else f"compute-{i - 3}" for i in range(nodes)]
    return {
        "psk_file": "mesh.psk",
        "networks": {net: {"cidr": f"{p}.0/24"} for net, p in NETS.items()},
        "nodes": {n: {"roles": ["controller" if n.startswith("controller") else "compute"],
                      "addresses": {net: f"{p}.{i + 1}" for net, p in NETS.items()}} for i, n in enumerate(names)},
        "vips": {net: {"address": f"{p}.250", "holders": ["controller"]} for net, p in NETS.items()},
    }


def run(runs: int, log: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"{lab.PREFIX}meshbench-"))
    charon = None
    try:
        inv = work / "mesh.yaml"
        inv.write_text(yaml.safe_dump(inventory()))
        cli = [sys.executable, "-m", "ipsec_vip.cli", "mesh"]
        subprocess.run([*cli, "psk", str(inv)], check=True, capture_output=True, cwd=ROOT)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}
        render = timeit([], [*cli, "render", str(inv), "--node", "controller-0", "--out", str(work / "root")],
                        runs + 1, env)["run"]
        rows = [row(render, what=f"mesh render, {NODES} nodes x {len(NETS)} networks, one node (whole process)")]
        t = time.monotonic()
        from ipsec_vip.mesh import inventory as invmod
        from ipsec_vip.mesh import keys
        from ipsec_vip.mesh import render as rendermod

        loaded = invmod.load(str(inv))
        psks = keys.for_inventory(loaded)
        for name in loaded.nodes:
            rendermod.render(loaded, name, psks)
        all_ms = (time.monotonic() - t) * 1000
        rows.append({"what": f"mesh render of all {NODES} nodes' files (in-process, not written)", "n": 1,
                     "median": round(all_ms, 1), "p90": round(all_ms, 1), "errors": 0})
        root = work / "root"
        (root / "etc/swanctl/swanctl.conf").write_text("include conf.d/*.conf\n")
        lab.clean_leftovers()
        charon = lab.Charon.start("meshbench")
        conns = 0
        for how, cmd in (("swanctl --load-all", [lab.SWANCTL, "--load-all", "--file",
                                                 str(root / "etc/swanctl/swanctl.conf"), "--uri", charon.uri]),
                         ("ipsec-vip mesh load", [*cli, "load", "--root", str(root), "--vici-socket", charon.uri])):
            samples = []
            for _ in range(max(3, runs // 4) + 1):
                charon.clear()
                t = time.monotonic()
                p = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
                samples.append(((time.monotonic() - t) * 1000, p.returncode, 0.0))
                if p.returncode != 0:
                    log(f"  {how} failed: {p.stderr.strip()[:300]}")
                conns = len(charon.conns())
            timed = row(samples, what=f"{how} of that node's file ({conns} connections listed)")
            rows.append({k: v for k, v in timed.items() if not k.startswith("cpu_")} | {"conns": conns})
        log(f"  mesh: render {rows[0]['median']:.0f} ms, {conns} connections loaded per node")
        return {"rows": rows, "nodes": NODES, "networks": len(NETS), "target_ms": TARGET_MS}
    finally:
        if charon is not None:
            charon.stop()
        shutil.rmtree(work, ignore_errors=True)
