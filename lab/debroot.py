"""Clean Debian 12 roots for the package tests, cached between runs.

`base_tarball()` is `debootstrap --variant=minbase bookworm` from the host's own Debian mirror
(never a hard-coded host name), `booted_tarball()` the same root plus systemd and the
distribution's daemons (for `tests/test_booted.py`). Both are cached as tarballs, with the
downloaded .debs, under $IPSEC_VIP_TEST_CACHE (default /var/cache/ipsec-vip-test) and rebuilt
monthly or when what goes into them changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CACHE = Path(os.environ.get("IPSEC_VIP_TEST_CACHE", "/var/cache/ipsec-vip-test"))
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
       **{k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}}
MAX_CACHE_AGE = 30 * 86400  # rebuild the roots monthly: apt then upgrades little in them


def run(cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def host_sources() -> list[tuple[str, str, str]]:
    """(uri, suite, components) of the host's bookworm Debian entries (one-line and deb822)."""
    found: list[tuple[str, str, str]] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text()
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                    found += [(u, s, fields.get("Components", "main"))
                              for u in fields.get("URIs", "").split() for s in fields.get("Suites", "").split()]
        elif f.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line.strip())
                if m:
                    found.append((m[1], m[2], m[3]))
    return [(u.rstrip("/"), s, c) for u, s, c in found if s.startswith("bookworm")]


def mirror() -> str:
    main = [u for u, s, _ in host_sources() if s == "bookworm"]
    assert main, "the host's apt sources name no bookworm mirror"
    return main[0]


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p == str(path) or p.startswith(f"{path}/")), reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below path, then delete it without crossing file systems."""
    for point in mounts_under(path):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)
    assert not mounts_under(path), f"still mounted under {path}"
    run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _cached(tar: Path, lock_name: str, build: Callable[[Path], None]) -> Path:
    """tar, built by build(tmpdir) unless a fresh one exists; one builder at a time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists() and time.time() - tar.stat().st_mtime > MAX_CACHE_AGE:
            tar.unlink()
        if not tar.exists():
            tmp = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
            try:
                t0 = time.monotonic()
                build(tmp)
                run(["tar", "-C", str(tmp), "-cf", f"{tar}.part", "."])
                os.rename(f"{tar}.part", tar)
                (CACHE / f"{tar.stem}.build-seconds").write_text(f"{time.monotonic() - t0:.0f}\n")
                print(f"\n{tar.name} built in {time.monotonic() - t0:.0f} s")
            finally:
                remove_tree(tmp)
    return tar


def base_tarball() -> Path:
    """The cached minbase root; built by the first run on a machine."""
    def build(tmp: Path) -> None:
        run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), mirror()], timeout=1200)
    return _cached(CACHE / "bookworm-minbase.tar", "lock", build)


def booted_tarball(packages: tuple[str, ...], disabled: tuple[str, ...]) -> Path:
    """The minbase root plus packages (from the distribution, installed without recommends) and
    systemd as init, with the units in disabled left off at boot; apt's lists are kept, so apt
    inside the booted (offline) container resolves dependencies against them."""
    key = hashlib.sha256(" ".join((*packages, "/", *disabled)).encode()).hexdigest()[:12]
    base = base_tarball()

    def build(tmp: Path) -> None:
        root = unpack(base, tmp)
        try:
            root.run("apt-get", "-q", "update", timeout=300)
            root.apt("install", *packages)
            root.run("systemctl", "disable", *disabled)
        finally:
            root.release()
    for old in CACHE.glob("bookworm-booted-*.tar"):
        if old.name != f"bookworm-booted-{key}.tar":
            old.unlink(missing_ok=True)
    return _cached(CACHE / f"bookworm-booted-{key}.tar", "booted.lock", build)


class Chroot:
    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *cmd: str, env: dict[str, str] | None = None, user: str | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        pre = ["chroot", *([f"--userspec={user}"] if user else []), str(self.path)]
        full_env = {**ENV, "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        return run([*pre, *cmd], env=full_env, check=check, timeout=timeout)

    def apt(self, *args: str) -> None:
        """apt-get in the root; one run at a time, since roots of parallel runs share the .deb cache."""
        with open(CACHE / "archives.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.run("apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "--no-install-recommends", *args, timeout=900)

    def release(self) -> None:
        """Undo unpack()'s mounts and daemon block (the root stays)."""
        for point in mounts_under(self.path):
            run(["umount", point], check=False)
        (self.path / "usr/sbin/policy-rc.d").unlink(missing_ok=True)


def unpack(tar: Path, path: Path) -> Chroot:
    """The root of tar at path, ready for apt: the host's sources and resolver, the shared .deb
    cache bind-mounted, /proc, and packages never starting daemons (Chroot.release undoes it)."""
    run(["tar", "-C", str(path), "-xf", str(tar)])
    path.chmod(0o755)  # "/" of the root (mkdtemp made it 0700): other users run commands in it too
    (path / "etc/apt/sources.list").write_text("".join(f"deb {u} {s} {c}\n" for u, s, c in host_sources()))
    shutil.copy("/etc/resolv.conf", path / "etc/resolv.conf")
    policy = path / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    archives = CACHE / "archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(archives), str(path / "var/cache/apt/archives")])
    run(["mount", "-t", "proc", "proc", str(path / "proc")])
    return Chroot(path)
