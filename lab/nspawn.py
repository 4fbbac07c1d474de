"""A booted Debian 12 in a systemd-nspawn container (systemd as PID 1), for the installed-system
tests. Recipe and gotchas: the project's lab notes on systemd-nspawn.

The host runs no systemd and no system bus: nspawn needs `--register=no --keep-unit`, and
commands reach the container with `nsenter` into its PID 1's namespaces (systemctl then talks
to PID 1 over its private socket). `--private-network`: the container has its own network
namespace with `lo` only, so addresses the tests add never touch the host's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lab.debroot import ENV, remove_tree, run

PREFIX = f"ipsec-vip-booted-{os.getpid()}-"
_LEFTOVER = re.compile(r"^ipsec-vip-booted-(\d+)-")
BASE = Path("/var/tmp")
STALL = 30  # seconds after basic.target without multi-user.target: a stalled boot, test on


class BootError(Exception):
    """The container did not boot far enough to test in (the message says how far it got)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _nspawn_pids(root: Path) -> list[int]:
    """systemd-nspawn processes running the root at root (ours, or a dead run's)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"systemd-nspawn") and str(root).encode() in argv:
                found.append(int(proc.name))
    return found


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _kill_container(nspawn_pid: int) -> None:
    """SIGKILL the container's PID 1 (which ends its PID namespace), then nspawn."""
    for pid in [*_children(nspawn_pid), nspawn_pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def clean_leftovers() -> None:
    """Remove the containers, roots and console logs of runs whose process is gone."""
    for path in BASE.glob("ipsec-vip-booted-*"):
        m = _LEFTOVER.match(path.name)
        if not m or _alive(int(m[1])):
            continue
        if path.suffix == ".console":
            path.unlink(missing_ok=True)
            continue
        for pid in _nspawn_pids(path):
            _kill_container(pid)
        remove_root(path)


class Container:
    """One booted container; exec() runs a command inside it."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.root = root
        self.proc = proc
        self.log = log
        self.pid1 = 0

    @classmethod
    def boot(cls, root: Path, timeout: float = 90) -> Container:
        """Boot root; return once the boot is done. A boot stalled after basic.target (seen when
        dbus-daemon could not set up inotify: multi-user.target never came) is accepted after
        STALL seconds, the tests start the units they need. BootError if not even basic.target
        came within timeout."""
        log = console_log(root)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network", "-b", "-D", str(root)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        c = cls(root, proc, log)
        try:
            c._wait_booted(timeout)
        except BaseException:
            c.stop()
            raise
        return c

    def _wait_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.pid1:
            if self.proc.poll() is not None:
                raise BootError(f"systemd-nspawn exited {self.proc.returncode}: {self.console_tail()}")
            if time.monotonic() > deadline:
                raise BootError(f"no systemd in the container after {timeout:.0f} s: {self.console_tail()}")
            for child in _children(self.proc.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        self.pid1 = child
            time.sleep(0.1)
        state, basic_at = "", None
        while time.monotonic() < deadline:
            state = self.exec("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return
            if basic_at is None and self.exec("systemctl", "is-active", "basic.target", check=False,
                                              timeout=10).stdout.strip() == "active":
                basic_at = time.monotonic()
            if basic_at is not None and time.monotonic() - basic_at > STALL:
                break
            time.sleep(0.2)
        if basic_at is None:
            raise BootError(f"basic.target not reached after {timeout:.0f} s (system state {state!r}): "
                            f"{self.console_tail()}")
        jobs = self.exec("systemctl", "list-jobs", "--no-pager", check=False, timeout=10).stdout
        print(f"\nboot stalled after basic.target (state {state!r}), testing on; pending jobs:\n{jobs}")

    def console_tail(self, n: int = 15) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines)

    def exec(self, *cmd: str, check: bool = True, timeout: float = 120, cwd: str = "/root",
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """cmd inside the container (all its namespaces and its root), a clean environment."""
        full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
                "TERM": "dumb", **(env or {})}
        return run(["nsenter", "-t", str(self.pid1), "-a", "env", "-i", "-C", cwd,
                    *(f"{k}={v}" for k, v in full.items()), *cmd], timeout=timeout, check=check)

    def sh(self, script: str, check: bool = True, timeout: float = 120,
           cwd: str = "/root") -> subprocess.CompletedProcess[str]:
        """A shell command line inside the container, as an admin would type it."""
        return self.exec("sh", "-c", script, check=check, timeout=timeout, cwd=cwd)

    def stop(self, timeout: float = 60) -> None:
        """Power off through PID 1 (SIGRTMIN+4, what `systemctl poweroff` asks for; it needs
        neither logind nor dbus, which hung the poweroff once), else end the nspawn process."""
        if self.proc.poll() is None and not self.pid1:
            _kill_container(self.proc.pid)
        elif self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGRTMIN + 4)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"\ncontainer did not power off in {timeout:.0f} s, killed: {self.console_tail()}")
            _kill_container(self.proc.pid)
            self.proc.wait(30)


def remove_root(path: Path) -> None:
    """A root of new_root() and its console log."""
    remove_tree(path)
    console_log(path).unlink(missing_ok=True)


def console_log(root: Path) -> Path:
    return root.parent / f"{root.name}.console"


def new_root() -> Path:
    """An empty directory for a root of this run (cleaned by clean_leftovers once we are gone)."""
    clean_leftovers()
    return Path(tempfile.mkdtemp(prefix=PREFIX, dir=BASE))
