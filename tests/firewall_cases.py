"""Firewall rulesets as the real tools print them, recorded for the fast tier.

Each case is set up in a fresh network namespace and ``nft -j list ruleset``,
``iptables-save`` and ``ip6tables-save`` are recorded into ``tests/data/firewall/<case>/``.
``tests/test_firewall_rules.py`` evaluates the recordings as any user; the root test
``tests/test_firewall.py::test_recordings_are_what_the_tools_print_today`` sets every case up
again and fails when the tools print something else, so the recordings cannot go stale.
Record again (as root): ``python -m tests.firewall_cases``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ipsec_vip import firewall
from lab import core as lab

DATA = Path(__file__).parent / "data" / "firewall"
FILES = {"nft": "nft.json", 4: "iptables-save.txt", 6: "ip6tables-save.txt"}

DROPPING = """
table inet filter {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iifname "lo" accept
        tcp dport 22 accept
    }
}
"""

# name -> list of commands run in the namespace ("nft -f -" takes the text after it on stdin)
CASES: dict[str, list[list[str]]] = {
    "empty": [],
    "nft-drop-policy": [["nft", "-f", "-", DROPPING]],
    "nft-drop-policy-fixed": [["nft", "-f", "-", DROPPING],
                              ["nft", "insert", "rule", "inet", "filter", "input", "udp", "dport", "{ 500, 4500 }",
                               "accept"],
                              ["nft", "insert", "rule", "inet", "filter", "input", "meta", "l4proto", "esp", "accept"]],
    "nft-sets-jumps-sources": [["nft", "-f", "-", """
table inet filter {
    set ike { type inet_service; elements = { 500, 4500 } }
    chain input {
        type filter hook input priority 0; policy drop;
        ct state invalid drop
        udp dport @ike counter accept
        jump vpn
    }
    chain vpn {
        ip saddr 203.0.113.0/24 meta l4proto esp accept
    }
}
"""]],
    "nft-not-understood": [["nft", "-f", "-", """
table inet filter {
    chain input {
        type filter hook input priority 0; policy accept;
        meta mark 0x00000001 drop
    }
}
"""]],
    "iptables-source-port": [
        ["iptables", "-P", "INPUT", "DROP"],
        ["iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["iptables", "-A", "INPUT", "-p", "udp", "--sport", "500", "--dport", "500", "-j", "ACCEPT"],
        ["iptables", "-A", "INPUT", "-p", "udp", "-m", "multiport", "--dports", "4500", "-j", "ACCEPT"]],
    "ip6tables-partial": [
        ["ip6tables", "-P", "INPUT", "DROP"],
        ["ip6tables", "-A", "INPUT", "-p", "udp", "--dport", "500", "-j", "ACCEPT"]],
}


def capture(ns: str, case: str) -> dict[Any, str]:
    """Set ``case`` up in the (fresh) namespace ``ns`` and return what the tools print."""
    for cmd in CASES[case]:
        if cmd[:3] == ["nft", "-f", "-"]:
            lab.in_ns(ns, "nft", "-f", "-", input=cmd[3])
        else:
            lab.in_ns(ns, *cmd)
    out: dict[Any, str] = {"nft": lab.in_ns(ns, firewall.NFT, "-j", "list", "ruleset").stdout}
    for fam, tool in firewall.IPTABLES_SAVE.items():
        out[fam] = lab.in_ns(ns, tool).stdout
    return out


def normal(key: Any, text: str) -> Any:
    """What must stay equal: without nft's metainfo (versions) and iptables-save's dated comments."""
    if key == "nft":
        data = json.loads(text) if text.strip() else {"nftables": []}
        return [item for item in data["nftables"] if "metainfo" not in item]
    return [line for line in text.splitlines() if not line.startswith("#")]


def load(case: str) -> firewall.Ruleset:
    """The recorded ruleset of ``case``, as firewall.read() would have returned it."""
    files = {k: (DATA / case / name).read_text() for k, name in FILES.items()}
    nft = json.loads(files["nft"]) if files["nft"].strip() else {"nftables": []}
    return firewall.Ruleset(nft, {4: files[4], 6: files[6]}, (), ("nft", "iptables-save", "ip6tables-save"))


def record() -> None:
    lab.clean_leftovers()
    for case in CASES:
        ns = lab.add_netns(f"fwrec{os.urandom(2).hex()}")
        try:
            out = capture(ns, case)
        finally:
            lab.remove_netns(ns)
        (DATA / case).mkdir(parents=True, exist_ok=True)
        for key, name in FILES.items():
            (DATA / case / name).write_text(out[key])


if __name__ == "__main__":
    record()
