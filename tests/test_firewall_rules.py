"""firewall.evaluate on rulesets recorded from the real tools (tests/firewall_cases.py), as any user.

The root tests in test_firewall.py run the same cases end to end through ``ipsec-vip check``
and check that these recordings are still what the tools print.
"""

from __future__ import annotations

import pytest

from ipsec_vip import firewall
from tests import firewall_cases

IKE, NATT, ESP = 0, 1, 2
A, D, U, N = "accept", "drop", "unknown", None
# case -> (IPv4 verdicts, IPv6 verdicts) for UDP 500, UDP 4500, ESP
EXPECTED = {
    "empty": ((N, N, N), (N, N, N)),
    "nft-drop-policy": ((D, D, D), (D, D, D)),
    "nft-drop-policy-fixed": ((A, A, A), (A, A, A)),
    "nft-sets-jumps-sources": ((A, A, D), (A, A, D)),
    "nft-not-understood": ((U, U, U), (U, U, U)),
    "iptables-source-port": ((D, A, D), (N, N, N)),  # iptables-nft's table is read once, as iptables
    "ip6tables-partial": ((N, N, N), (A, D, D)),
}


def verdicts(case: str, family: int) -> list[firewall.Verdict | None]:
    rules = firewall_cases.load(case)
    return [firewall.evaluate(rules, p) for p in firewall.packets([family])]


def test_every_recorded_case_has_expectations():
    assert set(EXPECTED) == set(firewall_cases.CASES)


@pytest.mark.parametrize("case", sorted(EXPECTED))
@pytest.mark.parametrize("family", [4, 6])
def test_verdicts(case, family):
    got = [v.result if v is not None else None for v in verdicts(case, family)]
    assert tuple(got) == EXPECTED[case][0 if family == 4 else 1]


def test_drop_policy_names_the_chain_and_its_hints_are_the_recorded_fix():
    v = verdicts("nft-drop-policy", 4)[IKE]
    assert v is not None and v.where == "nft inet filter input policy drop"
    assert v.chain == ("nft", "inet", "filter", "input")
    applied = [" ".join(cmd) for cmd in firewall_cases.CASES["nft-drop-policy-fixed"][1:]]
    assert sorted(firewall.fix_hints(v.chain)) == sorted(applied)


def test_source_restricted_accept_is_named_not_trusted():
    v = verdicts("nft-sets-jumps-sources", 4)[ESP]
    assert v is not None and any("203.0.113.0" in n and "not from every source address" in n for n in v.notes)


def test_rule_not_understood_is_reported_not_guessed():
    for v in verdicts("nft-not-understood", 4):
        assert v is not None and "meta mark (not understood)" in v.where


def test_iptables_source_port_restriction_is_not_any_source_port():
    v = verdicts("iptables-source-port", 4)[IKE]
    assert v is not None and v.chain == ("iptables", "", "filter", "INPUT")
    assert any("source port 500" in n for n in v.notes)
    assert "iptables -I INPUT -p udp -m multiport --dports 500,4500 -j ACCEPT" in firewall.fix_hints(v.chain)
