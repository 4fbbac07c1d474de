"""The drop rules against the real nft, in a network namespace of our own, beside iptables-nft."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import core as lab

pytestmark = [pytest.mark.root]

ROOT = str(Path(__file__).resolve().parent.parent)
CODE = """
import json, sys
from ipsec_vip import droprule
from ipsec_vip.vip import parse_vip
out = []
for step in json.loads(sys.argv[1]):
    op, vip = step.split()
    if op == "list":
        out.append({str(k): v for k, v in droprule.listed().items()})
    else:
        out.append(getattr(droprule, op)(parse_vip(vip)))
print(json.dumps(out))
"""


@pytest.fixture
def ns() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("nft", path="/usr/sbin"):
        pytest.skip("needs root and nft")
    lab.clean_leftovers()
    name = lab.add_netns(f"nft{os.urandom(2).hex()}")
    try:
        yield name
    finally:
        lab.remove_netns(name)


def steps(ns: str, *ops: str) -> list[object]:
    p = subprocess.run([lab.IP, "netns", "exec", ns, sys.executable, "-c", CODE, json.dumps(list(ops))],
                       capture_output=True, text=True, timeout=60, check=True,
                       env={"PYTHONPATH": ROOT, "PATH": "/usr/sbin:/usr/bin"})
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_both_families_beside_iptables_nft(ns: str) -> None:
    if not shutil.which("iptables-nft", path="/usr/sbin"):
        pytest.skip("iptables-nft not installed")
    lab.in_ns(ns, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "500", "-j", "ACCEPT")
    lab.in_ns(ns, "ip6tables-nft", "-A", "INPUT", "-j", "DROP")
    before = lab.in_ns(ns, "iptables-nft-save").stdout.split("\n", 1)[1] + \
        lab.in_ns(ns, "ip6tables-nft-save").stdout.split("\n", 1)[1]
    out = steps(ns, "add 192.0.2.100", "add 2001:db8::100", "add 192.0.2.100", "list -",
                "remove 192.0.2.100", "list -", "remove 2001:db8::100", "remove 2001:db8::100", "list -")
    assert out[:3] == [True, True, False]
    assert sorted(out[3]) == ["192.0.2.100", "2001:db8::100"]  # type: ignore[arg-type]
    assert all(len(h) == 2 for h in out[3].values())  # type: ignore[union-attr]
    assert out[4:] == [True, {"2001:db8::100": out[3]["2001:db8::100"]}, True, False, {}]  # type: ignore[index]
    after = lab.in_ns(ns, "iptables-nft-save").stdout.split("\n", 1)[1] + \
        lab.in_ns(ns, "ip6tables-nft-save").stdout.split("\n", 1)[1]
    strip = [line for line in after.splitlines() if not line.startswith("#")]
    assert strip == [line for line in before.splitlines() if not line.startswith("#")]
    rules = lab.in_ns(ns, "nft", "list", "table", "inet", "ipsec_vip").stdout
    assert "drop" not in rules and "hook input priority filter - 10; policy accept;" in rules


def test_the_rule_drops_only_new_ike_sa_init(ns: str) -> None:
    """Counted by the kernel: an IKE_SA_INIT (responder SPI 0) on 500 and on 4500 is dropped; an
    INFORMATIONAL of an established SA (non-zero responder SPI) and ESP-in-UDP pass."""
    lab.run(lab.IP, "-n", ns, "addr", "add", "192.0.2.100/32", "dev", "lo")
    steps(ns, "add 192.0.2.100")
    lab.in_ns(ns, "nft", "add", "rule", "inet", "ipsec_vip", "input", "ip", "daddr", "192.0.2.100",
              "meta", "l4proto", "udp", "counter", "comment", '"seen"')  # after our two drops
    send = """
import socket, struct
def ike(rspi, port, marker):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hdr = struct.pack("!QQBBBBII", 0x1122334455667788, rspi, 33, 0x20, 34 if rspi == 0 else 37, 8, 0, 28)
    s.sendto((b"\\0\\0\\0\\0" if marker else b"") + hdr, ("192.0.2.100", port))
ike(0, 500, False); ike(0, 4500, True); ike(5, 500, False); ike(5, 4500, True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(struct.pack("!II", 0x1234, 1) + b"x" * 20, ("192.0.2.100", 4500))  # ESP in UDP
"""
    lab.in_ns(ns, sys.executable, "-c", send)
    listing = json.loads(lab.in_ns(ns, "nft", "-j", "list", "table", "inet", "ipsec_vip").stdout)["nftables"]
    counted = [r["rule"] for r in listing if "rule" in r and r["rule"].get("comment") == "seen"]
    packets = next(e["counter"]["packets"] for e in counted[0]["expr"] if "counter" in e)
    assert packets == 3  # 5 sent, the 2 IKE_SA_INIT dropped before the counter
