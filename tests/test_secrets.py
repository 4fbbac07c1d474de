"""Secret hygiene: a known random PSK goes through a whole agent life cycle (real charon, real
client), ``status`` and ``check``, a config charon refuses and one that does not parse, and
must appear in no output, log, exit reason, process argv or environment, or state file.

A sampler scans /proc/*/cmdline and /proc/*/environ of every process while the actions run;
a positive control proves it catches a process carrying the PSK.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import core as lab
from lab.core import GATEWAY_CONF

PSK = secrets.token_urlsafe(32)
NEEDLE = PSK.encode()


class Sampler(threading.Thread):
    """Scans every process's argv and environment until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.leaks: dict[int, str] = {}
        self.seen: set[str] = set()  # command lines seen, to prove the sampler saw our processes
        self.sweeps = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_event.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                for what in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):
                        with open(f"/proc/{entry.name}/{what}", "rb") as f:
                            data = f.read()
                        if what == "cmdline" and (b"ocf/strongswan" in data or b"ipsec_vip.cli" in data):
                            self.seen.add(data.replace(b"\0", b" ").decode(errors="replace"))
                        if NEEDLE in data:
                            self.leaks[int(entry.name)] = what
            self.sweeps += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


@contextlib.contextmanager
def sampling() -> Iterator[Sampler]:
    s = Sampler()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_the_sampler_catches_a_process_carrying_the_psk():
    """Positive control: without it, the absence of leaks below would prove nothing."""
    with sampling() as s:
        p = subprocess.Popen(["/bin/sleep", "0.3"], env={"LEAK": PSK})
        p.wait()
        q = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3", "sh", PSK])
        q.wait()
    assert s.leaks.get(p.pid) == "environ"
    assert s.leaks.get(q.pid) == "cmdline"


@pytest.fixture(scope="module")
def env(gwlab, tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    conf = d / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    conf.chmod(0o600)
    lab.client_load(gwlab.client, PSK)
    return {"lab": gwlab, "conf": conf, "dir": d, "rsctmp": d / "rsctmp", "logfile": d / "ha.log"}


def agent(env, action: str, config: Path | None = None, **extra: str) -> lab.Result:
    gw = env["lab"].gateways["gw1"]
    params = {"vip": lab.VIP, "config": str(config or env["conf"]), "vici_socket": gw.uri}
    return lab.agent(action, params, netns=env["lab"].ns("gw1"), rsctmp=str(env["rsctmp"]),
                     HA_LOGFILE=str(env["logfile"]), HA_debug="1", **extra)


def cli(env, *args: str) -> lab.Result:
    cmd = [lab.IP, "netns", "exec", env["lab"].ns("gw1"), sys.executable, "-m", "ipsec_vip.cli", "-v", *args]
    p = lab.run(*cmd, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": str(env["rsctmp"])})
    return lab.Result(p.returncode, p.stdout, p.stderr)


@pytest.mark.charon
def test_psk_leaks_nowhere_through_a_life_cycle(env, tmp_path):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    refused = tmp_path / "refused.conf"  # parses; charon refuses the connection after the secret was loaded
    refused.write_text((GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK}).replace(
        "version = 2", "version = 2\n        proposals = nonsense-cipher"))
    broken = tmp_path / "broken.conf"  # does not parse: the error is on the secret's own line
    broken.write_text((GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK}).replace(f'"{PSK}"', f'"{PSK}'))
    for f in (refused, broken):
        f.chmod(0o600)
    results: list[tuple[str, lab.Result]] = []
    lb.add_vip("gw1")
    try:
        with sampling() as sampler:
            for action, kw in (("validate-all", {}), ("monitor", {"OCF_RESKEY_CRM_meta_interval": "0"}),
                               ("start", {}), ("monitor", {}), ("monitor", {"OCF_CHECK_LEVEL": "10"}),
                               ("start", {})):
                results.append((action, agent(env, action, **kw)))
            assert lab.client_initiate(lb.client)
            for args in (("status",), ("status", "--json"), ("check",), ("check", "--json", "--fix-hints")):
                results.append((" ".join(args), cli(env, *args, "--vici-socket", gw.uri)))
            results.append(("stop", agent(env, "stop")))
            results.append(("monitor", agent(env, "monitor")))
            for name, conf in (("refused", refused), ("broken", broken)):
                results.append((f"start {name}", agent(env, "start", config=conf)))
                results.append((f"validate {name}", agent(env, "validate-all", config=conf)))
                results.append((f"check {name}", cli(env, "check", "--vip", lab.VIP, "--config", str(conf),
                                                     "--vici-socket", gw.uri)))
                results.append((f"stop {name}", agent(env, "stop", config=conf)))
    finally:
        lb.del_vip("gw1")
        with contextlib.suppress(Exception):
            gw.clear()
    codes = {name: r.rc for name, r in results}
    assert codes["start"] == 0 and codes["monitor"] == 7 and codes["status"] == 0 and codes["check"] == 0, codes
    assert codes["start refused"] == 6 and codes["start broken"] == 6, codes
    assert any("refused connection" in r for name, res in results if name == "start refused" for r in res.reasons)
    # the sampler saw our processes (the agent and the CLI) ...
    assert any("ocf/strongswan start" in c for c in sampler.seen), sampler.seen
    assert any("ipsec_vip.cli -v check" in c for c in sampler.seen), sampler.seen
    # ... and none carried the PSK
    assert sampler.leaks == {}, f"PSK in /proc/<pid>/{sampler.leaks}"
    for name, r in results:
        assert PSK not in r.stdout + r.stderr, name
        assert all(PSK not in reason for reason in r.reasons), name
    log = env["logfile"].read_text()
    assert "start" in log and PSK not in log
    for path in Path(env["rsctmp"]).rglob("*"):
        if path.is_file():
            assert NEEDLE not in path.read_bytes(), path


@pytest.mark.charon
def test_state_dir_is_0700_and_state_files_0600(env):
    lb: lab.Lab = env["lab"]
    lb.add_vip("gw1")
    try:
        assert agent(env, "start").rc == 0
        state = env["rsctmp"] / "ipsec-vip"
        assert stat.S_IMODE(state.lstat().st_mode) == 0o700
        files = list(state.iterdir())
        assert files
        assert all(stat.S_IMODE(f.lstat().st_mode) == 0o600 for f in files), files
    finally:
        agent(env, "stop")
        lb.del_vip("gw1")


@pytest.mark.charon
def test_planted_symlinks_are_not_followed(env, tmp_path):
    lb: lab.Lab = env["lab"]
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = tmp_path / "victim-file"
    victim.write_text("keep me\n")
    lb.add_vip("gw1")
    try:
        # the state directory itself a symlink
        rsctmp = tmp_path / "rsc1"
        rsctmp.mkdir()
        (rsctmp / "ipsec-vip").symlink_to(victim_dir)
        r = agent(dict(env, rsctmp=rsctmp), "start")
        assert r.rc == 1 and "symlink" in r.reasons[0]
        assert list(victim_dir.iterdir()) == []
        # the lock and the state file planted as symlinks in a good directory
        for planted in ("lock", "vpn.json"):
            rsctmp = tmp_path / f"rsc-{planted}"
            (rsctmp / "ipsec-vip").mkdir(parents=True, mode=0o700)
            (rsctmp / "ipsec-vip").chmod(0o700)
            (rsctmp / "ipsec-vip" / planted).symlink_to(victim)
            r = agent(dict(env, rsctmp=rsctmp), "start")
            assert r.rc == 1, (planted, r)
            assert victim.read_text() == "keep me\n"
            assert stat.S_IMODE(victim.stat().st_mode) == 0o644
            assert env["lab"].gateways["gw1"].conns() == []
    finally:
        lb.del_vip("gw1")
