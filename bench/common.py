"""Shared pieces of the benchmark: statistics, generated configs, whole-process timing."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab import core as lab

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEIT = HERE / "timeit.sh"
SWANCTL_AGENT = HERE / "swanctl-agent.sh"
VIP = "192.0.2.100"
GW_IP = "192.0.2.11"
PSK = "bench-" + "0123456789abcdef" * 3


def summary(samples_ms: list[float]) -> dict[str, Any]:
    """median (mean of the middle two for even n) and p90 (nearest rank) of samples in ms."""
    s = sorted(samples_ms)
    if not s:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None, "samples": []}
    p90 = s[max(math.ceil(0.9 * len(s)), 1) - 1]
    return {"n": len(s), "median": round(statistics.median(s), 3), "p90": round(p90, 3),
            "min": round(s[0], 3), "max": round(s[-1], 3), "samples": [round(x, 3) for x in samples_ms]}


def swanctl_conf(n: int, vip: str = VIP) -> str:
    """n road-warrior responder connections bound to the VIP (rw-0001 ...), one group PSK."""
    out = ["connections {"]
    for i in range(1, n + 1):
        c = f"rw-{i:04d}"
        out.append(f"""    {c} {{
        version = 2
        local_addrs = {vip}
        mobike = no
        local {{
            auth = psk
            id = gw.example
        }}
        remote {{
            auth = psk
            id = {c}.example
        }}
        children {{
            {c} {{
                local_ts = 198.51.100.0/24
            }}
        }}
    }}""")
    out.append("}")
    out.append(f'secrets {{\n    ike-gw {{\n        id = gw.example\n        secret = "{PSK}"\n    }}\n}}\n')
    return "\n".join(out)


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# The interpreter the agent runs under: a venv with the package's dependencies installed normally
# and this tree on sys.path by a plain .pth line -- what an installed package costs at start-up.
# The development venv's editable install adds a setuptools import hook to every interpreter start
# (about 9 ms: pathlib, urllib.parse, fnmatch ...), which no installed agent pays.
CACHE = Path(os.environ.get("IPSEC_VIP_BENCH_CACHE", "/var/cache/ipsec-vip-bench"))
AGENT_VENV = CACHE / "venv"


def agent_venv(log: Any) -> Path:
    """Create (once) the agent's venv with the package's dependencies; point it at this tree."""
    import tomllib

    py = AGENT_VENV / "bin" / "python3"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    marker = AGENT_VENV / ".deps-installed"
    if not marker.exists() or marker.read_text() != "\n".join(deps):
        log(f"  creating {AGENT_VENV} with {', '.join(deps)}")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(AGENT_VENV)], check=True, timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *deps], check=True, timeout=900)
        marker.write_text("\n".join(deps))
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "ipsec-vip-bench.pth").write_text(f"{ROOT}\n")
    return AGENT_VENV / "bin"


def venv_path() -> str:
    """PATH with the agent's interpreter first (ocf/strongswan runs `env python3`)."""
    bindir = AGENT_VENV / "bin"
    if not (bindir / "python3").exists():
        bindir = Path(sys.executable).parent
    return f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"


Run = tuple[float, int, float]  # wall ms, exit code, cpu ms


def timeit(prefix: list[str], cmd: list[str], runs: int, env: dict[str, str], *, actions: str = "",
           between: str = "", script: str = str(TIMEIT), timeout: float = 600) -> dict[str, list[Run]]:
    """Run ``cmd`` ``runs`` times through timeit.sh (behind ``prefix``, e.g. ip netns exec;
    ``script`` is timeit.sh's path as the prefix sees it).

    ``actions`` ("stop start") appends each action in turn; ``between`` runs untimed before each run.
    Returns label -> [(wall ms, rc, cpu ms)]; the label is the action, else "run".
    """
    # the environment goes on the command line: a prefix may start from an empty one (chroot env -i)
    assign = [f"{k}={v}" for k, v in {**env, "TIMEIT_ACTIONS": actions, "TIMEIT_BETWEEN": between}.items()]
    p = subprocess.run([*prefix, "/usr/bin/env", *assign, "/bin/bash", script, str(runs), *cmd],
                       capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                       timeout=timeout, check=True)
    out: dict[str, list[Run]] = {}
    for line in p.stdout.splitlines():
        label, us, rc, cpu = line.split()
        out.setdefault(label, []).append((int(us) / 1000.0, int(rc), int(cpu) / 1000.0))
    return out


def drop_warmup(runs: list[Run], warmup: int = 1) -> tuple[list[float], int]:
    """Wall samples after the warm-up, and how many of them exited non-zero."""
    kept = runs[warmup:]
    return [ms for ms, _, _ in kept], sum(1 for _, rc, _ in kept if rc != 0)


def row(runs: list[Run], **fields: Any) -> dict[str, Any]:
    """A result row: wall statistics, non-zero exits, and the CPU median, after the warm-up."""
    samples, bad = drop_warmup(runs)
    cpu = summary([c for _, _, c in runs[1:]])
    return {**fields, "errors": bad, **summary(samples), "cpu_median": cpu["median"],
            "cpu_samples": cpu["samples"]}


def netns_prefix(netns: str) -> list[str]:
    return [lab.IP, "netns", "exec", netns]
