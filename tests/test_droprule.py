"""The drop rule's text, how our rules are found again, and the handoff parameter (no root, no nft)."""

from __future__ import annotations

import json

import pytest

from ipsec_vip import droprule, handoff
from ipsec_vip.errors import ConfigError
from ipsec_vip.params import parse
from ipsec_vip.vip import parse_vip

REAL_RUN = droprule._run  # conftest keeps nft out of the host's namespace; these tests need no nft at all


def test_rules_match_the_measured_ones() -> None:
    assert droprule.rules_text(parse_vip("192.0.2.100")) == [
        'ip daddr 192.0.2.100 udp dport 500 @th,128,64 0 drop comment "ipsec-vip handoff 192.0.2.100"',
        'ip daddr 192.0.2.100 udp dport 4500 @th,64,32 0 @th,160,64 0 drop comment "ipsec-vip handoff 192.0.2.100"',
    ]
    six = droprule.rules_text(parse_vip("2001:db8::100/64"))
    assert all(r.startswith("ip6 daddr 2001:db8::100 udp dport ") for r in six)


def _listing(rules: list[dict[str, object]]) -> str:
    return json.dumps({"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": "ipsec_vip"}},
                                    *({"rule": r} for r in rules)]})


def test_listed_finds_only_our_comment_in_our_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = [{"chain": "input", "handle": 4, "comment": "ipsec-vip handoff 192.0.2.100"},
             {"chain": "input", "handle": 5, "comment": "ipsec-vip handoff 192.0.2.100"},
             {"chain": "input", "handle": 6, "comment": "ipsec-vip handoff 2001:db8:0::100"},
             {"chain": "input", "handle": 7, "comment": "someone else's"},
             {"chain": "input", "handle": 8},
             {"chain": "other", "handle": 9, "comment": "ipsec-vip handoff 192.0.2.7"},
             {"chain": "input", "handle": 10, "comment": "ipsec-vip handoff not-an-address"}]
    calls: list[list[str]] = []

    def run(args: list[str], stdin: str | None = None, timeout: float = 10.0) -> str:
        calls.append(args)
        return _listing(rules)
    monkeypatch.setattr(droprule, "_run", run)
    assert droprule.listed() == {parse_vip("192.0.2.100"): [4, 5], parse_vip("2001:db8::100"): [6]}
    assert calls == [["-j", "list", "table", "inet", "ipsec_vip"]]  # never the whole ruleset


def test_add_and_remove_are_one_transaction_each(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts: list[str] = []
    present: list[dict[str, object]] = []

    def run(args: list[str], stdin: str | None = None, timeout: float = 10.0) -> str:
        if args[0] == "-j":
            return _listing(present)
        scripts.append(stdin or "")
        return ""
    monkeypatch.setattr(droprule, "_run", run)
    monkeypatch.setattr(droprule, "installed", lambda: True)
    vip = parse_vip("192.0.2.100")
    assert droprule.add(vip) is True
    assert scripts[0].splitlines()[:2] == [
        "add table inet ipsec_vip",
        "add chain inet ipsec_vip input { type filter hook input priority -10; policy accept; }"]
    assert len(scripts[0].splitlines()) == 4
    present[:] = [{"chain": "input", "handle": h, "comment": "ipsec-vip handoff 192.0.2.100"} for h in (2, 3)]
    assert droprule.add(vip) is False  # already there: nothing sent
    assert droprule.remove(vip) is True
    assert scripts[-1] == "delete rule inet ipsec_vip input handle 2\ndelete rule inet ipsec_vip input handle 3\n"
    assert len(scripts) == 2


def test_missing_nft_is_a_specific_error_and_nothing_to_remove(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(droprule, "NFT", "/nonexistent/nft")
    monkeypatch.setattr(droprule, "_run", REAL_RUN)  # stops at the missing binary, before running anything
    with pytest.raises(droprule.NftUnavailable, match="not installed"):
        droprule.add(parse_vip("192.0.2.100"))
    assert droprule.remove(parse_vip("192.0.2.100")) is False


def test_handoff_parameter() -> None:
    assert parse({"vip": "192.0.2.1"}).handoff == "redirect"
    assert parse({"vip": "192.0.2.1", "handoff": "None"}).handoff == "none"
    with pytest.raises(ConfigError, match="handoff must be redirect or none"):
        parse({"vip": "192.0.2.1", "handoff": "delete"})


def test_outcome_summary_counts_what_the_log_told() -> None:
    text = handoff.Outcome(sas=5, answered=3, unsupported=1, refused=("no matching SAs",), unanswered=0).summary("v")
    assert text.startswith("redirected 3 of 5 IKE_SA(s) to v")
    assert "1 client(s) did not announce REDIRECT support" in text and "would not redirect 1" in text
