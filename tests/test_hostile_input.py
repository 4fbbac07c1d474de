"""Hostile or careless input fed to the real commands (issue 20 items 3, 5 and 8): each is refused
with a clear error (exit 6 for a configuration problem, one reason) in bounded time and memory,
and nothing is written. Fast tier: no daemon (each command fails before it would talk to charon)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lab import core as lab

VIP = "192.0.2.100"
MEMORY = 512 << 20  # address space allowed to each command (prlimit --as)
PASS_ON = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}  # the code under test, as pytest has it
LIMIT = ("prlimit", f"--as={MEMORY}", "--")


def agent(action: str, tmp: Path, **params: str) -> tuple[lab.Result, float]:
    """The OCF agent under a memory limit; -> (result, seconds)."""
    start = time.monotonic()
    r = lab.agent(action, {"vip": VIP, "vici_socket": f"unix://{tmp}/none.vici", **params},
                  rsctmp=str(tmp / "rsctmp"), timeout=20, wrap=LIMIT, **PASS_ON)
    return r, time.monotonic() - start


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HA_RSCTMP": str(tmp / "rsctmp"), "LANG": "C.UTF-8",
           **PASS_ON}
    return subprocess.run([*LIMIT, sys.executable, "-m", "ipsec_vip.cli", *args], capture_output=True, text=True,
                          timeout=20, env=env)


def refused(r: lab.Result, *words: str) -> str:
    """Exit 6 with exactly one reason holding ``words``; returns it."""
    assert r.rc == 6, (r.rc, r.stderr)
    assert len(r.reasons) == 1, r.stderr
    assert all(w in r.reasons[0] for w in words), r.reasons
    assert "Traceback" not in r.stderr
    return r.reasons[0]


def nothing_written(tmp: Path) -> None:
    states = tmp / "rsctmp" / "ipsec-vip"
    assert not states.exists() or not [p for p in states.iterdir() if p.suffix == ".json"]


# --------------------------------------------------------------------------- item 8: the config file
def conn(extra: str = "") -> str:
    return (f"connections {{\n  rw {{\n    local_addrs = {VIP}\n    local {{ auth = pubkey\n{extra}\n    }}\n"
            "    remote { auth = psk }\n  }\n}\n")


def test_a_fifo_given_as_config_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "swanctl.conf"
    os.mkfifo(fifo)
    for action in ("validate-all", "start"):
        r, took = agent(action, tmp_path, config=str(fifo), start_without_vip="true")
        refused(r, str(fifo), "a FIFO, not a regular file")
        assert took < 10
    p = cli("up", "--vip", VIP, "--config", str(fifo), tmp=tmp_path)
    assert p.returncode == 6 and "a FIFO" in p.stderr
    nothing_written(tmp_path)


def test_a_certificate_that_never_ends_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn("      certs = /dev/zero"))
    r, took = agent("validate-all", tmp_path, config=str(conf))
    refused(r, "connections.rw.local.certs", "/dev/zero", "a character device")
    assert took < 10


def test_a_huge_certificate_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x509").mkdir()
    (tmp_path / "x509" / "big.pem").write_bytes(b"A" * (2 << 20))
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn("      certs = big.pem"))
    r, _ = agent("validate-all", tmp_path, config=str(conf))
    refused(r, "big.pem", "larger than 1 MiB")


def exponential(levels: int) -> str:
    """Each level references the one below twice: 2**levels sections from under 1 KB."""
    out = ["t0 { a = 1 }"]
    out += [f"t{i} {{ x : t{i - 1} {{ }} y : t{i - 1} {{ }} }}" for i in range(1, levels + 1)]
    return "\n".join([*out, f"connections {{ c : t{levels} {{ local_addrs = {VIP} }} }}", ""])


def test_exponential_section_references_are_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(exponential(25))
    assert conf.stat().st_size < 1300
    for action in ("validate-all", "start"):
        r, took = agent(action, tmp_path, config=str(conf), start_without_vip="true")
        refused(r, str(conf), "section references expand to too many sections")
        assert took < 10, f"{action} took {took:.1f}s"
    nothing_written(tmp_path)


def test_moderate_reference_use_still_loads(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(exponential(8))  # 256 sections: fine
    r, _ = agent("validate-all", tmp_path, config=str(conf))
    assert r.rc == 0, r.stderr
