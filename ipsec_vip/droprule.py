"""The silent drop of new IKE_SA_INIT requests to a VIP, in an nftables table of our own.

A handoff (see :mod:`ipsec_vip.handoff`) first makes this node ignore new IKE SA
requests to the VIP, so that a client told to reconnect retransmits until its retry
reaches the next holder instead of being refused here (a refused strongSwan client gives
up for good). A new request carries a zero responder SPI; established SAs (DPD, rekeys,
DELETE answers) carry a non-zero one and pass:

    table inet ipsec_vip {
      chain input {
        type filter hook input priority filter - 10; policy accept;
        ip daddr VIP udp dport 500  @th,128,64 0             drop comment "ipsec-vip handoff VIP"
        ip daddr VIP udp dport 4500 @th,64,32 0 @th,160,64 0 drop comment "ipsec-vip handoff VIP"
      }
    }

(port 4500: the four-byte non-ESP marker, then the IKE header). The table is created on
demand and holds only these rules, one pair per VIP, found again by their comment; no other
table or chain is ever read for writing or touched, so it lives beside an admin's nftables
ruleset or iptables-nft's tables. A drop in any base chain is final in nftables, so no
accept elsewhere can undo ours; our chain never accepts anything another table drops.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ipsec_vip.errors import CommandError, IpsecVipError
from ipsec_vip.firewall import NFT, OWN_TABLE
from ipsec_vip.runner import Runner
from ipsec_vip.vip import parse_address

if TYPE_CHECKING:
    from ipsec_vip.vip import IPAddress

FAMILY, TABLE = OWN_TABLE
CHAIN = "input"
PRIORITY = -10  # before the usual filter chains (0), so our drop needs no help from them
_TAG = "ipsec-vip handoff "


class NftUnavailable(IpsecVipError):
    """nft is missing or refused: no drop rule can be put in place (or read back)."""


def installed() -> bool:
    return os.access(NFT, os.X_OK)


def _run(args: list[str], stdin: str | None = None, timeout: float = 10.0) -> str:
    """The one place that runs nft (through the project's runner): its stdout, or NftUnavailable
    saying why not."""
    if not installed():
        raise NftUnavailable(f"{NFT} is not installed (package nftables)")
    try:
        p = Runner().run([NFT, *args], stdin=stdin, timeout=timeout)
    except CommandError as e:
        raise NftUnavailable(str(e)) from None
    if p.returncode != 0:
        raise NftUnavailable(f"nft {' '.join(args)} refused: {' '.join(p.stderr.split())[:300]}")
    return p.stdout


def rules_text(vip: IPAddress) -> list[str]:
    """The two nft rules (``add rule`` arguments) that drop new IKE SA requests to ``vip``."""
    daddr = f"{'ip' if vip.version == 4 else 'ip6'} daddr {vip}"
    comment = f'comment "{_TAG}{vip}"'
    return [f"{daddr} udp dport 500 @th,128,64 0 drop {comment}",
            f"{daddr} udp dport 4500 @th,64,32 0 @th,160,64 0 drop {comment}"]


def _listing() -> list[dict[str, Any]]:
    """Our table's rules as nft -j gives them; [] when the table does not exist."""
    try:
        out = _run(["-j", "list", "table", FAMILY, TABLE])
    except NftUnavailable as e:
        if "No such file or directory" in str(e):
            return []
        raise
    try:
        items = json.loads(out).get("nftables", []) if out.strip() else []
    except ValueError:
        raise NftUnavailable(f"nft -j list table {FAMILY} {TABLE}: output is not JSON") from None
    return [i["rule"] for i in items if isinstance(i, dict) and isinstance(i.get("rule"), dict)]


def _vip_of(rule: dict[str, Any]) -> IPAddress | None:
    comment = rule.get("comment")
    if rule.get("chain") != CHAIN or not isinstance(comment, str) or not comment.startswith(_TAG):
        return None
    try:
        return parse_address(comment[len(_TAG):])
    except ValueError:
        return None


def listed() -> dict[IPAddress, list[int]]:
    """VIP -> handles of its drop rules, for every VIP with a rule in place."""
    out: dict[IPAddress, list[int]] = {}
    for rule in _listing():
        vip = _vip_of(rule)
        if vip is not None:
            out.setdefault(vip, []).append(int(rule["handle"]))
    return out


def add(vip: IPAddress) -> bool:
    """Put the rule pair for ``vip`` in place (table and chain created on demand, in the same
    transaction). False if it was already there."""
    if vip in listed():
        return False
    script = [f"add table {FAMILY} {TABLE}",
              f"add chain {FAMILY} {TABLE} {CHAIN} {{ type filter hook input priority {PRIORITY}; policy accept; }}",
              *(f"add rule {FAMILY} {TABLE} {CHAIN} {rule}" for rule in rules_text(vip))]
    _run(["-f", "-"], stdin="\n".join(script) + "\n")
    return True


def remove(vip: IPAddress) -> bool:
    """Delete the rule pair for ``vip`` (one transaction); False if there was none (also where nft
    is not installed: then no rule of ours can exist)."""
    if not installed():
        return False
    handles = listed().get(vip, [])
    if not handles:
        return False
    _run(["-f", "-"], stdin="".join(f"delete rule {FAMILY} {TABLE} {CHAIN} handle {h}\n" for h in handles))
    return True
