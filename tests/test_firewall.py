"""The firewall part of ``ipsec-vip check`` against real nftables and iptables rulesets,
each in a network namespace of its own. The fix hints are applied as printed and must work."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from lab import core as lab
from tests import firewall_cases

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (shutil.which("nft", path="/usr/sbin") and
                                      shutil.which("iptables-save", path="/usr/sbin")),
                                 reason="nftables and iptables are installed by make deps")]


@pytest.fixture
def ns() -> Iterator[str]:
    name = lab.add_netns(f"fw{os.urandom(2).hex()}")
    try:
        yield name
    finally:
        lab.remove_netns(name)


def firewall(ns: str, *extra: str) -> tuple[list[dict[str, str]], str]:
    """The firewall findings of ``ipsec-vip check`` run inside ``ns``, and --fix-hints' output."""
    base = [lab.IP, "netns", "exec", ns, sys.executable, "-m", "ipsec_vip.cli", "check",
            "--vici-socket", "unix:///nonexistent/charon.vici", "--config", "/nonexistent.conf",
            "--watch-dir", "/nonexistent", *extra]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": "/nonexistent"}
    p = lab.run(*base, "--json", check=False, env=env)
    findings = [f for f in json.loads(p.stdout)["findings"] if f["name"] == "firewall"]
    hints = lab.run(*base, "--fix-hints", check=False, env=env).stdout.split("\n\n", 1)[-1]
    return findings, hints


def levels(findings: list[dict[str, str]]) -> dict[str, str]:
    return {f["message"].split(":")[0]: f["level"] for f in findings}


def nft(ns: str, ruleset: str) -> None:
    lab.in_ns(ns, "nft", "-f", "-", input=ruleset)


def apply_hints(ns: str, hints: str) -> None:
    for line in hints.splitlines():
        if line and not line.startswith("#"):
            lab.in_ns(ns, "/bin/sh", "-c", line)  # exactly as printed, through a shell


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


def test_no_rules_means_accepting(ns):
    findings, _ = firewall(ns)
    assert len(findings) == 3
    assert all(f["level"] == "ok" and "no firewall rules, accepting" in f["message"] for f in findings)


def test_nft_drop_policy_fails_and_the_printed_rules_fix_it(ns):
    nft(ns, DROPPING)
    findings, hints = firewall(ns)
    assert set(levels(findings).values()) == {"fail"}
    assert "policy drop" in findings[0]["message"]
    assert "nft insert rule inet filter input udp dport { 500, 4500 } accept" in hints
    assert "nft insert rule inet filter input meta l4proto esp accept" in hints
    apply_hints(ns, hints)
    findings, _ = firewall(ns)
    assert set(levels(findings).values()) == {"ok"}, findings


def test_nft_sets_jumps_and_source_restrictions(ns):
    (_nft, _f, _stdin, ruleset), = firewall_cases.CASES["nft-sets-jumps-sources"]  # the recorded case
    nft(ns, ruleset)
    findings, _ = firewall(ns)
    lv = levels(findings)
    assert lv["UDP 500 (IKE), IPv4"] == lv["UDP 4500 (NAT-T), IPv4"] == "ok"
    esp = next(f for f in findings if f["message"].startswith("ESP"))
    assert esp["level"] == "fail"
    assert "not from every source address" in esp["message"]  # the restricted accept is named, not trusted


def test_a_rule_it_does_not_understand_is_reported_not_guessed(ns):
    nft(ns, """
table inet filter {
    chain input {
        type filter hook input priority 0; policy accept;
        meta mark 0x00000001 drop
    }
}
""")
    findings, _ = firewall(ns)
    assert set(levels(findings).values()) == {"warn"}
    assert all("meta mark" in f["message"] and "not understood" in f["message"] for f in findings)


def test_iptables_source_port_restriction_is_not_any_source_port(ns):
    for cmd in (["iptables", "-P", "INPUT", "DROP"],
                ["iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                ["iptables", "-A", "INPUT", "-p", "udp", "--sport", "500", "--dport", "500", "-j", "ACCEPT"],
                ["iptables", "-A", "INPUT", "-p", "udp", "-m", "multiport", "--dports", "4500", "-j", "ACCEPT"]):
        lab.in_ns(ns, *cmd)
    findings, hints = firewall(ns)
    lv = levels(findings)
    assert lv["UDP 4500 (NAT-T), IPv4"] == "ok"
    assert lv["UDP 500 (IKE), IPv4"] == "fail"
    assert "source port 500" in next(f["message"] for f in findings if f["message"].startswith("UDP 500"))
    assert lv["ESP, IPv4"] == "fail"
    assert "iptables -I INPUT -p udp -m multiport --dports 500,4500 -j ACCEPT" in hints
    apply_hints(ns, hints)
    findings, _ = firewall(ns)
    assert set(levels(findings).values()) == {"ok"}, findings


def test_ipv6_vip_checks_ip6tables(ns):
    lab.in_ns(ns, "ip6tables", "-P", "INPUT", "DROP")
    lab.in_ns(ns, "ip6tables", "-A", "INPUT", "-p", "udp", "--dport", "500", "-j", "ACCEPT")
    findings, _ = firewall(ns, "--vip", "2001:db8::100")
    lv = levels(findings)
    assert lv == {"UDP 500 (IKE), IPv6": "ok", "UDP 4500 (NAT-T), IPv6": "fail", "ESP, IPv6": "fail"}


@pytest.mark.parametrize("case", sorted(firewall_cases.CASES))
def test_recordings_are_what_the_tools_print_today(ns, case):
    """The fast tier's recorded rulesets (tests/data/firewall) stay what nft/iptables print.
    When this fails after a tools upgrade: python -m tests.firewall_cases (as root)."""
    out = firewall_cases.capture(ns, case)
    for key, name in firewall_cases.FILES.items():
        recorded = (firewall_cases.DATA / case / name).read_text()
        assert firewall_cases.normal(key, out[key]) == firewall_cases.normal(key, recorded), (case, name)
