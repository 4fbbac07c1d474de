"""The charon daemon as a process: installed? running in this network namespace?"""

from __future__ import annotations

import os

BINARIES = ("/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon", "/usr/sbin/charon-systemd",
            "/usr/libexec/strongswan/charon", "/usr/sbin/charon")
NAMES = frozenset({"charon", "charon-systemd"})


def installed() -> bool:
    return any(os.access(p, os.X_OK) for p in BINARIES)


def _netns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def running() -> list[int]:
    """PIDs of charon processes in this network namespace (the one whose VICI we would use)."""
    import psutil  # only on the error paths and in long-lived commands

    mine = _netns("self")
    pids = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in NAMES and _netns(p.pid) == mine:
            pids.append(p.pid)
    return pids


def explain_unreachable(socket: str) -> str:
    """Why nobody answers on ``socket``, in words an admin can act on."""
    if not installed():
        return "strongSwan's charon is not installed on this node"
    pids = running()
    if not pids:
        return f"charon is not running (nothing answers on {socket})"
    return (f"charon runs (pid {pids[0]}) but nothing answers on {socket}: is its vici plugin loaded, "
            f"and is vici_socket its socket?")
