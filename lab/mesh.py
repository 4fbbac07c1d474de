"""A cluster encrypted by `ipsec-vip mesh` in network namespaces (root only; built on lab/core.py).

Four nodes (controller-0/1 may hold the internal_api VIP; compute-0/1), each with its own charon
and three networks on three bridges in namespace ``mbr``: internal_api (encrypted, fail_closed),
storage (encrypted; controllers and compute-0) and tenant (clear). compute-0 and compute-1 are a
``skip_between`` pair. Configured only by ``mesh psk`` + ``mesh render`` + ``swanctl --load-all`` +
``nft -f`` + the agent for the VIP, as docs/mesh.md tells an operator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab import core as lab

NETS = {"internal_api": ("172.16.2", "bapi"), "storage": ("172.16.1", "bsto"), "tenant": ("172.16.0", "bten")}
NODES = {  # name: (roles, host part, networks)
    "controller-0": (["controller"], 10, ("internal_api", "storage", "tenant")),
    "controller-1": (["controller"], 11, ("internal_api", "storage", "tenant")),
    "compute-0": (["compute"], 20, ("internal_api", "storage", "tenant")),
    "compute-1": (["compute"], 21, ("internal_api", "tenant")),
}
VIP = "172.16.2.100"
VIP_CONN = "meshvip-internal_api"
TO_VIP = "mesh-internal_api-to-vip"
MARKER = "IPSECVIPMESHPROB"  # 16 bytes: what ping -p repeats


def addr(node: str, net: str) -> str:
    return f"{NETS[net][0]}.{NODES[node][1]}"


def inventory() -> dict[str, Any]:
    return {
        "psk_file": "mesh.psk",
        "networks": {"internal_api": {"cidr": "172.16.2.0/24", "fail_closed": True},
                     "storage": {"cidr": "172.16.1.0/24"},
                     "tenant": {"cidr": "172.16.0.0/24", "encrypt": False}},
        "nodes": {n: {"roles": r, "addresses": {net: addr(n, net) for net in nets}}
                  for n, (r, _, nets) in NODES.items()},
        "vips": {"internal_api": {"address": VIP, "holders": ["controller"]}},
        "skip_between": [["compute", "compute"]],
    }


_INCLUDES: dict[str, str] = {}


class MeshCharon(lab.Charon):
    """A lab charon whose strongswan.conf includes the node's rendered strongswan.d, as Debian's does."""

    def _write_conf(self) -> None:
        super()._write_conf()
        with open(self.base / "strongswan.conf", "a") as f:
            f.write(f"include {_INCLUDES[self.name]}/etc/strongswan.d/*.conf\n")


ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, netns: str | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``ipsec-vip ARGS`` (in ``netns``; ``env`` added to ours)."""
    cmd = [sys.executable, "-m", "ipsec_vip.cli", *args]
    if netns:
        cmd = [lab.IP, "netns", "exec", netns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise RuntimeError(f"ipsec-vip {' '.join(args)} -> {p.returncode}: {p.stderr}")
    return p


@dataclass
class MeshLab:
    work: Path
    charons: dict[str, lab.Charon] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    holder: str | None = None

    @property
    def inv(self) -> str:
        return str(self.work / "mesh.yaml")

    def root(self, node: str) -> Path:
        return self.work / node

    def ns(self, node: str) -> str:
        return lab.PREFIX + node

    @classmethod
    def build(cls) -> MeshLab:
        lab.clean_leftovers()
        m = cls(work=Path(tempfile.mkdtemp(prefix=f"{lab.PREFIX}mesh-")))
        try:
            m._build()
        except BaseException:
            m.destroy()
            raise
        return m

    def _build(self) -> None:
        br = lab.add_netns("mbr")
        self.namespaces.append(br)
        for _, bridge in NETS.values():
            lab.run(lab.IP, "-n", br, "link", "add", bridge, "type", "bridge")
            lab.run(lab.IP, "-n", br, "link", "set", bridge, "up")
        idx = 0
        for node, (_, _, nets) in NODES.items():
            ns = lab.add_netns(node)
            self.namespaces.append(ns)
            for net in nets:
                idx += 1
                ifname, peer = f"e{net[:3]}", f"m{idx}"
                lab.run(lab.IP, "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", br)
                lab.run(lab.IP, "-n", br, "link", "set", peer, "master", NETS[net][1], "up")
                lab.run(lab.IP, "-n", ns, "addr", "add", f"{addr(node, net)}/24", "dev", ifname)
                lab.run(lab.IP, "-n", ns, "link", "set", ifname, "up")
        (self.work / "mesh.yaml").write_text(yaml.safe_dump(inventory()))
        cli("mesh", "psk", self.inv)
        for node in NODES:
            self.render(node)
            (self.root(node) / "etc/swanctl/swanctl.conf").write_text("include conf.d/*.conf\n")  # as Debian's
            _INCLUDES[node] = str(self.root(node))
            self.charons[node] = MeshCharon.start(node, netns=self.ns(node))
            lab.in_ns(self.ns(node), "nft", "-f", str(self.root(node) / "etc/ipsec-vip/mesh.nft"))
        for node in NODES:
            self.load_all(node)

    def render(self, node: str) -> str:
        return cli("mesh", "render", self.inv, "--node", node, "--out", str(self.root(node))).stdout

    def load_all(self, node: str) -> None:
        """What strongswan.service runs on start and reload."""
        self.charons[node].swanctl("--load-all", "--file", str(self.root(node) / "etc/swanctl/swanctl.conf"))

    def vips_conf(self, node: str) -> str:
        return str(self.root(node) / "etc/ipsec-vip/mesh-vips.conf")

    def agent(self, node: str, action: str, **env: str) -> lab.Result:
        """The printed pcs recipe's agent (its fallback, the node's own tunnel to the VIP, is named
        by mesh-vips.conf itself)."""
        params = {"vip": VIP, "config": self.vips_conf(node), "connections": VIP_CONN, "start_without_vip": "true",
                  "vici_socket": self.charons[node].uri}
        return lab.agent(action, params, netns=self.ns(node), rsctmp=str(self.work / f"rsctmp-{node}"), **env)

    def add_vip(self, node: str) -> None:
        lab.run(lab.IP, "-n", self.ns(node), "addr", "add", f"{VIP}/24", "dev", "eint")
        lab.in_ns(self.ns(node), "arping", "-q", "-U", "-c", "1", "-I", "eint", VIP, check=False)
        self.holder = node

    def del_vip(self) -> None:
        assert self.holder is not None
        lab.run(lab.IP, "-n", self.ns(self.holder), "addr", "del", f"{VIP}/24", "dev", "eint")
        self.holder = None

    def take_vip(self, node: str) -> None:
        """The VIP group's start: the agent (responder loaded, own tunnel to the VIP ended), then the VIP."""
        r = self.agent(node, "start")
        assert r.rc == 0, r.stderr
        self.add_vip(node)

    def release_vip(self) -> None:
        """The VIP group's stop: the VIP first, then the agent (which then starts its tunnel to the VIP)."""
        holder = self.holder
        assert holder is not None
        self.del_vip()
        r = self.agent(holder, "stop")
        assert r.rc == 0, r.stderr

    def by_hand(self, node: str, command: str) -> str:
        """``ipsec-vip up|down`` on ``node`` with the rendered mesh-vips.conf and nothing else (no
        fallback option); ``up`` before the VIP arrives, so no node's tunnel is refused meanwhile."""
        args = [command, "--vip", VIP, "--vici-socket", self.charons[node].uri]
        if command == "up":
            args += ["--config", self.vips_conf(node), "--start-without-vip"]
        return cli(*args, netns=self.ns(node), env={"HA_RSCTMP": str(self.work / f"cli-{node}")}).stdout

    @contextlib.contextmanager
    def watching(self, *nodes: str) -> Iterator[None]:
        """``ipsec-vip watch`` for the VIP on ``nodes``, as docs/mesh.md configures it where keepalived
        moves the VIP (mesh-vips.conf, start_without_vip: the responder loaded on every candidate, so no
        node's tunnel is refused as the VIP arrives); SIGTERM (the unit's stop) at the end."""
        procs = []
        try:
            for node in nodes:
                log = open(self.work / f"watch-{node}.log", "ab")
                procs.append(subprocess.Popen(
                    [lab.IP, "netns", "exec", self.ns(node), sys.executable, "-m", "ipsec_vip.cli", "watch", "--vip",
                     VIP, "--config", self.vips_conf(node), "--start-without-vip", "true",
                     "--vici-socket", self.charons[node].uri,
                     "--state-dir", str(self.work / f"watch-{node}")], stdout=log, stderr=log, cwd=str(ROOT)))
                log.close()
            for node in nodes:  # subscribed and looked once: it says so first
                deadline = time.monotonic() + 20
                while b"VIP " not in (self.work / f"watch-{node}.log").read_bytes():
                    assert time.monotonic() < deadline, (self.work / f"watch-{node}.log").read_text()
                    time.sleep(0.05)
            yield
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)

    @contextlib.contextmanager
    def pinging(self, src: str, dst: str) -> Iterator[None]:
        """``src`` pings ``dst`` without pause (every 0.1 s, MARKER in each) for the whole block."""
        p = subprocess.Popen([lab.IP, "netns", "exec", self.ns(src), "ping", "-i", "0.1", "-W", "1", "-p",
                              MARKER.encode().hex(), dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            p.terminate()
            p.wait(10)

    def expected(self, node: str) -> list[str]:
        """The mesh connections render gave this node (its swanctl.conf)."""
        from ipsec_vip import swanctl

        return sorted(swanctl.load(str(self.root(node) / "etc/swanctl/conf.d/ipsec-vip-mesh.conf")).connections)

    def up(self, node: str) -> set[str]:
        """Connections of this node with an ESTABLISHED IKE_SA and an INSTALLED CHILD_SA."""
        return {sa["name"] for sa in self.charons[node].sas() if sa.get("state") == "ESTABLISHED"
                and any(c.get("state") == "INSTALLED" for c in (sa.get("child-sas") or {}).values())}

    def wait_up(self, want: dict[str, set[str]], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = {n: sorted(c - self.up(n)) for n, c in want.items()}
            missing = {n: c for n, c in missing.items() if c}
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"tunnels not up after {timeout}s: {missing}")
            time.sleep(0.2)

    def ping(self, src: str, dst: str, count: int = 2) -> bool:
        """ICMP whose payload carries MARKER (the plaintext a capture must never show where encrypted)."""
        p = lab.in_ns(self.ns(src), "ping", "-c", str(count), "-i", "0.2", "-W", "2", "-p", MARKER.encode().hex(),
                      dst, check=False)
        return p.returncode == 0

    @contextlib.contextmanager
    def capture(self) -> Any:
        """tcpdump on every bridge port (a bridge device itself sees only what is flooded or addressed
        to it); yields {network: Capture}, complete after the block."""
        f = self.work / f"capture-{int(time.monotonic() * 1000)}.pcap"
        err_path = self.work / "tcpdump.err"
        with open(err_path, "w") as err:
            p = subprocess.Popen([lab.IP, "netns", "exec", self.ns("mbr"), "tcpdump", "-i", "any", "-n", "-U",
                                  "--immediate-mode", "-Z", "root", "-s", "512", "-w", str(f)],
                                 stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while "listening on" not in err_path.read_text():
            assert p.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        try:
            yield {net: Capture(f, f"net {prefix}.0/24") for net, (prefix, _) in NETS.items()}
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(10)

    def destroy(self) -> None:
        for c in self.charons.values():
            with contextlib.suppress(Exception):
                c.stop()
        for ns in reversed(self.namespaces):
            lab.remove_netns(ns)
        self.namespaces.clear()
        import shutil

        shutil.rmtree(self.work, ignore_errors=True)


@dataclass
class Capture:
    """The packets of one network in a capture of every bridge port (each seen on two ports)."""

    path: Path
    net: str

    def _filter(self, expr: str) -> str:
        return f"({self.net}) and ({expr})" if expr else self.net

    def text(self, expr: str = "") -> str:
        """tcpdump's text (headers and ASCII payload) of the packets matching ``expr``."""
        return lab.run("tcpdump", "-r", str(self.path), "-n", "-A", self._filter(expr)).stdout

    def count(self, expr: str = "") -> int:
        out = lab.run("tcpdump", "-r", str(self.path), "-n", "-q", self._filter(expr)).stdout
        return len([line for line in out.splitlines() if line.strip()])
