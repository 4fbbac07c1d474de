"""The upstream peer: ocf:heartbeat:ipsec (resource-agents) driving libreswan's pluto.

Debian's libreswan conflicts with its strongSwan packages, so pluto runs from a Debian 12
root built once by libreswan-root.sh (cached, default /var/cache/ipsec-vip-bench/lsroot),
chrooted inside a namespace of ours; the recipe and its caveats are the lab note
upstream-ipsec.md. The agent manages one tunnel per resource (rw-0001) while pluto holds N.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import GW_IP, HERE, VIP, row, timeit
from lab import core as lab

RA = "/usr/lib/ocf/resource.d/heartbeat/ipsec"
CPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IPSEC_CONF = """# ipsec-vip bench (upstream peer); Debian's default includes /etc/ipsec.d/*.conf
config setup
\tlogfile=/var/log/pluto.log
\tlogappend=no
\tplutodebug=none
include /etc/ipsec.d/*.conf
"""


def build_root(root: str, log: Any) -> None:
    """Build the cached root unless it is ready (about a minute the first time)."""
    if not (Path(root) / ".ipsec-vip-bench-ready").exists():
        log(f"  building the libreswan root {root} (debootstrap, once; about a minute)")
    subprocess.run(["/bin/sh", str(HERE / "libreswan-root.sh"), root], check=True, timeout=1800,
                   stdout=subprocess.DEVNULL)


class Upstream:
    """pluto in the chroot inside namespace PREFIX+lsgw, the VIP on a veth to PREFIX+lspeer."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        lab.clean_leftovers()
        self.gw = lab.add_netns("lsgw")
        self.peer = lab.add_netns("lspeer")
        lab.run(lab.IP, "-n", self.gw, "link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", self.peer)
        lab.run(lab.IP, "-n", self.gw, "addr", "add", f"{GW_IP}/24", "dev", "v0")
        lab.run(lab.IP, "-n", self.gw, "addr", "add", f"{VIP}/24", "dev", "v0")
        lab.run(lab.IP, "-n", self.peer, "addr", "add", "192.0.2.50/24", "dev", "v0")
        lab.run(lab.IP, "-n", self.gw, "link", "set", "v0", "up")
        lab.run(lab.IP, "-n", self.peer, "link", "set", "v0", "up")
        (self.root / "etc" / "ipsec.conf").write_text(IPSEC_CONF)
        (self.root / "opt" / "ipsec-vip-bench").mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "timeit.sh", self.root / "opt" / "ipsec-vip-bench" / "timeit.sh")
        if not (self.root / "var" / "lib" / "ipsec" / "nss" / "cert9.db").exists():
            self.run("ipsec", "initnss")

    @property
    def prefix(self) -> list[str]:
        """Run a command in the chroot inside the gateway namespace (mounts die with the process)."""
        return [lab.IP, "netns", "exec", self.gw, "/bin/sh", "-c",
                'R=$1; P=$2; shift 2; mount -t proc proc "$R/proc" && mount -t sysfs sysfs "$R/sys" && '
                'exec chroot "$R" env -i PATH="$P" HOME=/root LANG=C "$@"', "sh", str(self.root), CPATH]

    def run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return lab.run(*self.prefix, *cmd, check=check, timeout=timeout)

    def gen(self, n: int) -> None:
        """N road-warrior conns rw-0001.. bound to the VIP (auto=add), one PSK each."""
        conf, secrets = [], []
        for i in range(1, n + 1):
            c = f"rw-{i:04d}"
            conf.append(f"conn {c}\n\tleft={VIP}\n\tleftid=@gw.example\n\tright=%any\n\trightid=@{c}.example\n"
                        f"\tauthby=secret\n\tauto=add\n")
            secrets.append(f'@gw.example @{c}.example : PSK "bench-{c}-secret-0123456789abcdef"\n')
        d = self.root / "etc" / "ipsec.d"
        (d / "bench.conf").write_text("\n".join(conf))
        (d / "bench.secrets").write_text("".join(secrets))
        (d / "bench.secrets").chmod(0o600)

    def pluto_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.root / "run" / "pluto" / "pluto.pid").read_text().strip())
            if os.readlink(f"/proc/{pid}/exe") == str(self.root / "usr/libexec/ipsec/pluto"):
                return pid
        return None

    def start_pluto(self, n: int) -> None:
        self.stop_pluto()
        run = self.root / "run" / "pluto"
        run.mkdir(parents=True, exist_ok=True)
        run.chmod(0o700)
        self.run("ipsec", "addconn", "--config", "/etc/ipsec.conf", "--checkconfig")
        self.run("ipsec", "pluto", "--config", "/etc/ipsec.conf")
        deadline = time.monotonic() + 120
        logf = self.root / "var" / "log" / "pluto.log"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if (self.pluto_pid() and (run / "pluto.ctl").exists()
                        and logf.read_text(errors="replace").count("added IKEv2 connection") >= n):
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"pluto did not load {n} conns")
        self.run("ipsec", "whack", "--listen", check=False)

    def stop_pluto(self) -> None:
        pid = self.pluto_pid()
        if pid:
            self.run("ipsec", "whack", "--shutdown", check=False, timeout=30)
            for _ in range(50):
                if not self.pluto_pid():
                    break
                time.sleep(0.1)
            if self.pluto_pid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for f in ("pluto.pid", "pluto.ctl"):
            with contextlib.suppress(FileNotFoundError):
                (self.root / "run" / "pluto" / f).unlink()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_pluto()
        lab.remove_netns(self.gw)
        lab.remove_netns(self.peer)

    def versions(self) -> str:
        return self.run("dpkg-query", "-W", "-f", "${Package} ${Version}, ", "libreswan", "resource-agents",
                        check=False).stdout.strip(" ,")


def agents(root: str, sizes: list[int], runs: int, log: Any) -> dict[str, Any]:
    """monitor, start, stop of ocf:heartbeat:ipsec on tunnel rw-0001 with N conns in pluto."""
    build_root(root, log)
    up = Upstream(root)
    rows = []
    try:
        env = {"OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "bench", "OCF_RESKEY_tunnel": "rw-0001",
               "OCF_RESKEY_vip": VIP, "OCF_RESKEY_CRM_meta_interval": "10000", "PATH": CPATH}
        script = "/opt/ipsec-vip-bench/timeit.sh"
        for n in sizes:
            log(f"  ocf:heartbeat:ipsec, {n} conns in pluto: {runs}+1 monitors, {runs}+1 stop/start pairs")
            up.gen(n)
            up.start_pluto(n)
            res = timeit(up.prefix, [RA, "monitor"], runs + 1, env, script=script)
            rows.append(row(res["run"], agent="ocf:heartbeat:ipsec", action="monitor", conns=n))
            res = timeit(up.prefix, [RA], runs + 1, env, actions="stop start", script=script)
            for action in ("start", "stop"):
                rows.append(row(res[action], agent="ocf:heartbeat:ipsec", action=action, conns=n))
            up.stop_pluto()
        return {"available": True, "versions": up.versions(), "rows": rows}
    finally:
        up.close()
