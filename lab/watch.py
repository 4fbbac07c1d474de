"""Run ``ipsec-vip watch`` as a real daemon inside a lab namespace (root only).

The daemon is started through ``ip netns exec`` (which execs, so the Popen pid is
the daemon's own pid) with a NOTIFY_SOCKET the test owns, so the test knows when
it is subscribed and ready (READY=1) and sees every STATUS= it sends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import core as lab

ROOT = str(Path(__file__).resolve().parent.parent)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``pred`` until truthy; return its value or raise TimeoutError."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= end:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Watch:
    """One ``ipsec-vip watch`` process in ``netns``."""

    def __init__(self, netns: str, args: list[str], workdir: Path, name: str = "w",
                 prefix: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.notify_path = workdir / f"{name}.notify"
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read_notifications, daemon=True).start()
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": ROOT,
                   "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        with open(self.log_path, "wb") as log:  # one log per watcher: a later one starts it afresh
            self.proc = subprocess.Popen(
                [lab.IP, "netns", "exec", netns, *prefix, sys.executable, "-m", "ipsec_vip.cli", "-v", "watch", *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _read_notifications(self) -> None:
        """Drain the socket like systemd does (a full queue would block the daemon's sends)."""
        while True:
            try:
                text = self.notify.recv(4096).decode()
            except OSError:
                return
            if not text:  # shut down by close()
                return
            with self._cond:
                self.messages.append(text)
                self._cond.notify_all()

    def wait_notify(self, field: str, timeout: float = 15.0) -> str:
        """Wait for a notification containing the line ``field`` (e.g. READY=1)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for text in self.messages:
                    if field in text.split("\n"):
                        return text
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._cond.wait(0.2)):
                    raise AssertionError(f"no {field} from the watcher; rc={self.proc.poll()} log:\n{self.log()}")
                self._cond.wait(min(left, 0.2))

    def ready(self) -> Watch:
        self.wait_notify("READY=1")
        return self

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.notify.shutdown(socket.SHUT_RDWR)
        self.notify.close()
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()

    # ---------------------------------------------------------------- /proc
    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def cpu_ticks(self) -> int:
        """utime + stime in clock ticks."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])


def watch_args(charon: lab.Charon, vip: str, conf: Path, state: Path, *extra: str) -> list[str]:
    return ["--vip", vip, "--config", str(conf), "--vici-socket", charon.uri, "--state-dir", str(state), *extra]


def conn_conf(conns: dict[str, str], secrets: str = "") -> str:
    """swanctl.conf with one minimal PSK responder per name -> local address."""
    body = "".join(
        f"    {name} {{\n        local_addrs = {addr}\n        mobike = no\n"
        f"        local {{\n            auth = psk\n            id = {name}.example.com\n        }}\n"
        f"        remote {{\n            auth = psk\n        }}\n"
        f"        children {{\n            {name} {{\n                local_ts = 198.51.100.0/24\n            }}\n"
        f"        }}\n    }}\n" for name, addr in conns.items())
    return f"connections {{\n{body}}}\n" + (f"secrets {{\n{secrets}}}\n" if secrets else "")


def addr(netns: str, action: str, cidr: str, dev: str = "lo", *extra: str) -> None:
    lab.run(lab.IP, "-n", netns, "addr", action, cidr, "dev", dev, *extra)
