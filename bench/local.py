"""Measurements on one lab charon (lab/core.py) in its own namespace, which holds the VIP:
the agents' actions, load throughput, watch reaction and the keepalived-notify habit."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    AGENT_VENV,
    ROOT,
    SWANCTL_AGENT,
    VIP,
    netns_prefix,
    row,
    summary,
    swanctl_conf,
    timeit,
    venv_path,
    write_private,
)
from lab import core as lab

AGENT = ROOT / "ocf" / "strongswan"


class Bed:
    """A charon in a fresh namespace whose veth carries the VIP; files in a private temp dir."""

    def __init__(self) -> None:
        lab.clean_leftovers()
        self.charon = lab.Charon.start("bench")
        self.netns = self.charon.netns
        self.dir = Path(tempfile.mkdtemp(prefix=f"{lab.PREFIX}bench-"))
        lab.run(lab.IP, "-n", self.netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        for dev in ("v0", "v1"):
            lab.run(lab.IP, "-n", self.netns, "link", "set", dev, "up")
        self.add_vip()

    def add_vip(self) -> None:
        lab.run(lab.IP, "-n", self.netns, "addr", "add", f"{VIP}/24", "dev", "v0")

    def del_vip(self) -> None:
        lab.run(lab.IP, "-n", self.netns, "addr", "del", f"{VIP}/24", "dev", "v0")

    def conf(self, n: int) -> Path:
        return write_private(self.dir / f"swanctl-{n}.conf", swanctl_conf(n))

    def rsctmp(self, name: str) -> str:
        d = self.dir / name
        d.mkdir(exist_ok=True)
        return str(d)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.charon.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _ocf_env(bed: Bed, conf: Path, rsctmp: str) -> dict[str, str]:
    """What pacemaker-execd gives a recurring monitor (plus the resource's parameters)."""
    return {"PATH": venv_path(), "LANG": "C.UTF-8", "OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "bench",
            "OCF_RA_VERSION_MAJOR": "1", "OCF_RA_VERSION_MINOR": "1", "HA_RSCTMP": rsctmp,
            "OCF_RESKEY_vip": VIP, "OCF_RESKEY_config": str(conf), "OCF_RESKEY_vici_socket": bed.charon.uri,
            "OCF_RESKEY_CRM_meta_interval": "10000", "OCF_RESKEY_CRM_meta_timeout": "20000"}


def agents(bed: Bed, sizes: list[int], runs: int, log: Any, importtime: dict[int, str]) -> list[dict[str, Any]]:
    """monitor, start, stop of ours and of the swanctl shell agent, N conns per resource.
    ``importtime`` receives ours' monitor import profile at the largest size."""
    rows = []
    prefix = netns_prefix(bed.netns)
    for name, path in (("ipsec-vip", AGENT), ("swanctl-agent", SWANCTL_AGENT)):
        for n in sizes:
            conf = bed.conf(n)
            env = _ocf_env(bed, conf, bed.rsctmp(f"{name}-{n}"))
            log(f"  {name}, {n} conns: start, {runs}+1 monitors, {runs}+1 stop/start pairs")
            first = timeit(prefix, [str(path), "start"], 1, env)["run"][0]
            if first[1] != 0:
                raise RuntimeError(f"{name} start with {n} conns failed: rc {first[1]}")
            loaded = len(bed.charon.conns())
            if loaded != n:
                raise RuntimeError(f"{name} start loaded {loaded} conns, expected {n}")
            if name == "ipsec-vip":
                res = timeit(prefix, [str(path), "meta-data"], runs + 1, env)
                rows.append(row(res["run"], agent=name, action="meta-data", conns=n))
            res = timeit(prefix, [str(path), "monitor"], runs + 1, env)
            rows.append(row(res["run"], agent=name, action="monitor", conns=n))
            if name == "ipsec-vip" and n == sizes[-1]:
                importtime[n] = python_importtime(env, bed.netns)
            res = timeit(prefix, [str(path)], runs + 1, env, actions="stop start")
            for action in ("start", "stop"):
                rows.append(row(res[action], agent=name, action=action, conns=n))
            if timeit(prefix, [str(path), "stop"], 1, env)["run"][0][1] != 0 or bed.charon.conns():
                raise RuntimeError(f"{name} stop with {n} conns left connections loaded")
    return rows


def load(bed: Bed, sizes: list[int], runs: int, log: Any) -> list[dict[str, Any]]:
    """Connections loaded per second: the library in-process vs swanctl --load-conns of the same file."""
    rows = []
    empty = write_private(bed.dir / "empty.conf", "connections {\n}\n")
    for n in sizes:
        conf = bed.conf(n)
        log(f"  {n} conns: library (control.start in-process) and swanctl --load-conns, {runs}+1 each")
        env = {"PATH": venv_path(), "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
        p = lab.in_ns(bed.netns, sys.executable, "-m", "bench.loadworker", str(conf), bed.charon.uri,
                      str(runs + 1), bed.rsctmp("load"), env=env, cwd=str(ROOT), timeout=600)
        got = json.loads(p.stdout)
        for key, what in (("parse_ms", "library: parse + select"), ("start_ms", "library: control.start"),
                          ("stop_ms", "library: control.stop")):
            rows.append({"what": what, "conns": n, "process": "in-process", **summary(got[key][1:])})
        uri = bed.charon.uri
        res = timeit(netns_prefix(bed.netns), ["/usr/sbin/swanctl", "--load-conns", "--file", str(conf), "--uri", uri],
                     runs + 1, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                     between=f"/usr/sbin/swanctl --load-conns --file {empty} --uri {uri}")
        rows.append(row(res["run"], what="swanctl --load-conns", conns=n, process="whole process"))
        lab.run(lab.SWANCTL, "--load-conns", "--file", str(empty), "--uri", uri)
    for r in rows:
        r["conns_per_s"] = round(r["conns"] / (r["median"] / 1000.0)) if r["median"] else None
    return rows


def watch_command() -> list[str] | None:
    """The watch daemon's command line, if this tree has one (another branch writes it)."""
    if importlib.util.find_spec("ipsec_vip.commands.watch") is None:
        return None
    p = subprocess.run([sys.executable, "-m", "ipsec_vip.cli", "--help"], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=30, check=False)
    if "watch" not in p.stdout:
        return None
    return [sys.executable, "-m", "ipsec_vip.cli", "watch"]


def _watch_options(cmd: list[str], state: str) -> list[str]:
    """Options this watch understands beyond the contract's: a private state directory."""
    p = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=str(ROOT), timeout=30, check=False)
    return ["--state-dir", state] if "--state-dir" in p.stdout else []


def _wait_conns(bed: Bed, want: int, timeout: float, poll: float = 0.002) -> float | None:
    """Monotonic time when charon lists ``want`` conns (get-conns on one session), or None."""
    end = time.monotonic() + timeout
    with bed.charon.vici() as s:
        while time.monotonic() < end:
            if len(s.get_conns()["conns"]) == want:
                return time.monotonic()
            time.sleep(poll)
    return None


def watch(bed: Bed, sizes: list[int], runs: int, log: Any) -> dict[str, Any]:
    """Address event -> connections loaded, through ``ipsec-vip watch`` (if it exists)."""
    cmd = watch_command()
    if cmd is None:
        return {"available": False, "reason": "ipsec-vip watch does not exist in this tree", "rows": []}
    rows = []
    for n in sizes:
        conf = bed.conf(n)
        bed.del_vip()
        log(f"  watch, {n} conns: {runs}+1 VIP add/delete cycles")
        env = {"PATH": venv_path(), "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8",
               "HA_RSCTMP": bed.rsctmp(f"watch-{n}")}
        with open(bed.dir / f"watch-{n}.log", "wb") as out:
            proc = subprocess.Popen([*netns_prefix(bed.netns), *cmd, "--vip", VIP, "--config", str(conf),
                                     "--vici-socket", bed.charon.uri,
                                     *_watch_options(cmd, bed.rsctmp(f"watch-state-{n}"))],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        react, gone, problems = [], [], []
        try:
            time.sleep(1.5)  # let it start and settle (no VIP: nothing loaded)
            if proc.poll() is not None:
                return {"available": False, "reason": f"ipsec-vip watch exited {proc.returncode}: "
                        + (bed.dir / f"watch-{n}.log").read_text(errors="replace")[-300:], "rows": []}
            for _ in range(runs + 1):
                t0 = time.monotonic()
                bed.add_vip()
                t1 = _wait_conns(bed, n, 30)
                if t1 is None:
                    problems.append("connections not loaded 30 s after the VIP arrived")
                    break
                react.append((t1 - t0) * 1000)
                t0 = time.monotonic()
                bed.del_vip()
                t1 = _wait_conns(bed, 0, 30)
                if t1 is None:
                    problems.append("connections still loaded 30 s after the VIP left")
                    break
                gone.append((t1 - t0) * 1000)
                time.sleep(0.2)
        finally:
            proc.terminate()
            try:
                rc = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            with contextlib.suppress(Exception):
                bed.add_vip()
        rows.append({"what": "watch: VIP added -> conns loaded", "conns": n, **summary(react[1:])})
        rows.append({"what": "watch: VIP deleted -> conns unloaded", "conns": n, **summary(gone[1:])})
        if problems or rc != 0:
            rows[-1]["problems"] = [*problems, *([f"exit {rc} on SIGTERM"] if rc != 0 else [])]
    return {"available": True, "command": " ".join(cmd[1:]), "rows": rows}


def keepalived(bed: Bed, sizes: list[int], runs: int, log: Any) -> list[dict[str, Any]]:
    """The keepalived notify habit: restart the whole charon, then swanctl --load-all; until conns listed."""
    rows = []
    for n in sizes:
        conf = bed.conf(n)
        log(f"  charon restart + swanctl --load-all, {n} conns: {runs}+1 times")
        samples = []
        for _ in range(runs + 1):
            t0 = time.monotonic()
            proc = bed.charon.proc
            if proc is None:
                raise RuntimeError("charon is not running")
            proc.terminate()
            proc.wait(30)
            bed.charon.launch()
            lab.run(lab.SWANCTL, "--load-all", "--noprompt", "--file", str(conf), "--uri", bed.charon.uri,
                    timeout=120)
            t1 = _wait_conns(bed, n, 30)
            if t1 is None:
                raise RuntimeError("swanctl --load-all did not load the connections")
            samples.append((t1 - t0) * 1000)
        rows.append({"what": "charon restart + swanctl --load-all -> conns loaded", "conns": n,
                     **summary(samples[1:])})
        lab.run(lab.SWANCTL, "--load-all", "--noprompt", "--file", str(bed.dir / "empty.conf"), "--uri",
                bed.charon.uri, check=False)
    return rows


def python_importtime(env: dict[str, str], netns: str) -> str:
    """The agent's monitor under python -X importtime: the 12 most expensive imports (cumulative)."""
    python = AGENT_VENV / "bin" / "python3"
    p = lab.in_ns(netns, str(python if python.exists() else sys.executable), "-X", "importtime", str(AGENT),
                  "monitor", env=env, check=False)
    rows = []
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [x.strip() for x in line[len("import time:"):].split("|")]
            with contextlib.suppress(ValueError):
                rows.append((int(parts[1]), parts[2]))
    top = sorted(rows, reverse=True)[:12]
    return "\n".join(f"{us / 1000:7.1f} ms  {name}" for us, name in top)
