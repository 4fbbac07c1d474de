"""docs/stateful.md's UDP 4510 rule, as printed there, against the real nft in namespaces of our own:
the ha peer's sync datagrams (from its address and port 4510, on the sync link) reach the node;
the same address and port forged on another link, another source port, and another host of the
sync link do not. Without the rule every one of them arrives (what the rule is for)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import core as lab

pytestmark = [pytest.mark.root]

ROOT = Path(__file__).resolve().parent.parent
NODE, PEER, STRANGER, FORGER = "198.51.100.11", "198.51.100.12", "198.51.100.13", "192.0.2.66"
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4510))
s.settimeout(10)
print("ready", flush=True)
while True:
    data, src = s.recvfrom(2048)
    print(data.decode(), flush=True)
    if data == b"end":
        break
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(sys.argv[3].encode(), (sys.argv[4], 4510))
"""


def documented_rule() -> str:
    text = (ROOT / "docs" / "stateful.md").read_text()
    blocks = [b for b in re.findall(r"```\n(.*?)```", text, re.S) if "table inet ipsec_vip_ha" in b]
    assert len(blocks) == 1, "docs/stateful.md gives the UDP 4510 rule once"
    return blocks[0]


@pytest.fixture
def sync_link() -> Iterator[dict[str, str]]:
    """node: eth1 on the sync link (a bridge, with the peer and a stranger on it), eth0 on another
    link (a forger sending from the peer's address)."""
    if os.geteuid() != 0 or not shutil.which("nft", path="/usr/sbin"):
        pytest.skip("needs root and nft")
    lab.clean_leftovers()
    names = {short: lab.add_netns(f"ha4510{short}") for short in ("br", "node", "peer", "stranger", "forger")}
    try:
        lab.run(lab.IP, "-n", names["br"], "link", "add", "br0", "type", "bridge")
        lab.run(lab.IP, "-n", names["br"], "link", "set", "br0", "up")
        for i, (short, addr) in enumerate((("node", f"{NODE}/24"), ("peer", f"{PEER}/24"),
                                           ("stranger", f"{STRANGER}/24"))):
            link = "eth1" if short == "node" else "x"
            lab.run(lab.IP, "-n", names[short], "link", "add", link, "type", "veth", "peer", "name", f"p{i}",
                    "netns", names["br"])
            lab.run(lab.IP, "-n", names["br"], "link", "set", f"p{i}", "master", "br0", "up")
            lab.run(lab.IP, "-n", names[short], "addr", "add", addr, "dev", link)
            lab.run(lab.IP, "-n", names[short], "link", "set", link, "up")
        lab.run(lab.IP, "-n", names["node"], "link", "add", "eth0", "type", "veth", "peer", "name", "x",
                "netns", names["forger"])
        lab.run(lab.IP, "-n", names["node"], "link", "set", "eth0", "up")
        lab.run(lab.IP, "-n", names["forger"], "addr", "add", f"{PEER}/32", "dev", "x")  # the peer's address, forged
        lab.run(lab.IP, "-n", names["forger"], "link", "set", "x", "up")
        lab.run(lab.IP, "-n", names["forger"], "route", "add", f"{NODE}/32", "dev", "x")
        for conf in ("all", "default", "eth0", "eth1"):  # the firewall, not reverse-path filtering, must do it
            lab.in_ns(names["node"], "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
        yield names
    finally:
        for ns in reversed(names.values()):
            lab.remove_netns(ns)


def received(names: dict[str, str]) -> list[str]:
    """Send one datagram to the node's UDP 4510 from each source; what the node's socket received."""
    listener = subprocess.Popen([lab.IP, "netns", "exec", names["node"], sys.executable, "-c", LISTEN],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        for ns, src, sport, what in (("peer", PEER, "4510", "peer"), ("peer", PEER, "4511", "peer-other-port"),
                                     ("stranger", STRANGER, "4510", "stranger"), ("forger", PEER, "4510", "forged"),
                                     ("peer", PEER, "4510", "end")):
            lab.in_ns(names[ns], sys.executable, "-c", SEND, src, sport, what, NODE)
        out, _ = listener.communicate(timeout=15)
    finally:
        if listener.poll() is None:
            listener.kill()
    return out.split()


def test_the_documented_rule_lets_only_the_peer_reach_the_sync_port(sync_link: dict[str, str]) -> None:
    assert received(sync_link) == ["peer", "peer-other-port", "stranger", "forged", "end"]  # without it
    lab.in_ns(sync_link["node"], "nft", "-f", "-", input=documented_rule())
    assert received(sync_link) == ["peer", "end"]
