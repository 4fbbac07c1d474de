"""Does the local firewall let IKE (UDP 500, 4500 from any source port) and ESP in?

Reads nftables (``nft -j list ruleset``) and iptables (``iptables-save``,
``ip6tables-save``) and walks the input path for a first packet from an unknown
peer: any source address and port, a non-loopback interface, conntrack state
``new``. The walk understands the common matches (protocol, ports, sets and
ranges, conntrack state, loopback interface, address family) and verdicts (accept,
drop, reject, jump, goto, return); anything else makes the rule "not understood"
and is reported as such, never guessed. Only the filter hook ``input`` is walked.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from typing import Any, NamedTuple

from ipsec_vip.errors import CommandError
from ipsec_vip.runner import Runner

NFT = "/usr/sbin/nft"
IPTABLES_SAVE = {4: "/usr/sbin/iptables-save", 6: "/usr/sbin/ip6tables-save"}
PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58,
             "icmpv6": 58, "sctp": 132, "udplite": 136, "all": 0}
_TIMEOUT = 15.0
OWN_TABLE = ("inet", "ipsec_vip")  # the handoff's drop rules (ipsec_vip.droprule): judged by their own check


class Packet(NamedTuple):
    """A first packet from an unknown peer."""

    label: str
    proto: int
    dport: int | None  # None: no ports (ESP)
    family: int  # 4 or 6


def packets(families: Iterable[int] = (4,)) -> list[Packet]:
    """IKE, NAT-T and ESP for each address family."""
    return [Packet(label, proto, port, fam) for fam in sorted(set(families))
            for label, proto, port in ((f"UDP 500 (IKE), IPv{fam}", 17, 500),
                                       (f"UDP 4500 (NAT-T), IPv{fam}", 17, 4500),
                                       (f"ESP, IPv{fam}", 50, None))]


class Verdict(NamedTuple):
    """What the firewall does with a packet: 'accept', 'drop' or 'unknown' (with why)."""

    result: str
    where: str  # the rule or policy that decided, or that was not understood
    notes: tuple[str, ...] = ()
    chain: tuple[str, ...] = ()  # (tool, family, table, chain) of the base chain that drops: for fix hints


class Ruleset(NamedTuple):
    """The rule sources found on this node."""

    nft: dict[str, Any] | None  # nft -j output, None when nft is missing
    iptables: dict[int, str]  # family -> iptables-save output (missing tools left out)
    errors: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()  # the tools found installed


def read(runner: Runner | None = None) -> Ruleset:
    """Run the tools that are installed (with ``runner``, default :class:`~ipsec_vip.runner.Runner`)."""
    run = (runner or Runner()).run
    errors: list[str] = []
    tools = [t for t in (NFT, *IPTABLES_SAVE.values()) if os.access(t, os.X_OK)]
    nft = None
    if NFT in tools:
        try:
            rc, out, err = run([NFT, "-j", "list", "ruleset"], timeout=_TIMEOUT)
        except CommandError as e:
            rc, out, err = -1, "", str(e)
        if rc == 0:
            try:
                nft = json.loads(out) if out.strip() else {"nftables": []}
            except ValueError:
                errors.append("nft -j list ruleset: output is not JSON")
        else:
            errors.append(f"nft -j list ruleset failed: {' '.join(err.split())[:200]}")
    ipt: dict[int, str] = {}
    for fam, tool in IPTABLES_SAVE.items():
        if tool in tools:
            try:
                rc, out, err = run([tool], timeout=_TIMEOUT)
            except CommandError as e:
                rc, out, err = -1, "", str(e)
            if rc == 0:
                ipt[fam] = out
            else:
                errors.append(f"{os.path.basename(tool)} failed: {err.strip()[:200]}")
    return Ruleset(nft, ipt, tuple(errors), tuple(os.path.basename(t) for t in tools))


# --------------------------------------------------------------------------- three-valued logic
def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _not(a: bool | None) -> bool | None:
    return None if a is None else not a


class _Walk:
    """State of one walk: notes about what was not understood or matches only some packets."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.partial_drop = False


# --------------------------------------------------------------------------- nftables
def _proto_number(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return PROTOCOLS.get(value.lower(), int(value) if value.isdigit() else None)
    return None


class _Nft:
    def __init__(self, data: dict[str, Any]) -> None:
        self.chains: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.sets: dict[tuple[str, str, str], dict[str, Any]] = {}
        for item in data.get("nftables", []):
            if "chain" in item:
                c = item["chain"]
                self.chains[(c["family"], c["table"], c["name"])] = c
            elif "rule" in item:
                r = item["rule"]
                self.rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
            elif "set" in item:
                s = item["set"]
                self.sets[(s["family"], s["table"], s["name"])] = s

    def base_chains(self, family: int, skip: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
        fams = ("inet", "ip") if family == 4 else ("inet", "ip6")
        found = [(c.get("prio", 0), key) for key, c in self.chains.items()
                 if key[0] in fams and c.get("hook") == "input" and c.get("type", "filter") == "filter"
                 and (key[0], key[1]) not in skip]
        return [key for _, key in sorted(found, key=lambda x: (x[0] if isinstance(x[0], int) else 0, x[1]))]

    # values -----------------------------------------------------------------------------------
    def _elements(self, right: Any, chain: tuple[str, str, str]) -> list[Any] | None:
        """The values a right-hand side stands for (list of scalars / ("range", a, b)), None if unknown."""
        if isinstance(right, (int, str)) and not (isinstance(right, str) and right.startswith("@")):
            return [right]
        if isinstance(right, str):  # named set
            s = self.sets.get((chain[0], chain[1], right[1:]))
            if s is None:
                return None
            return self._elements({"set": s.get("elem", [])}, chain)
        if isinstance(right, list):
            right = {"set": right}
        if isinstance(right, dict):
            if "set" in right:
                out: list[Any] = []
                items = right["set"] if isinstance(right["set"], list) else [right["set"]]
                for item in items:
                    val = item["elem"].get("val") if isinstance(item, dict) and "elem" in item else item
                    sub = self._elements(val, chain)
                    if sub is None:
                        return None
                    out.extend(sub)
                return out
            if "range" in right and isinstance(right["range"], list) and len(right["range"]) == 2:
                return [("range", right["range"][0], right["range"][1])]
        return None

    def _compare(self, value: Any, op: str, right: Any, chain: tuple[str, str, str],
                 convert: Any = None) -> bool | None:
        elems = self._elements(right, chain)
        if elems is None:
            return None
        hit = False
        for e in elems:
            if isinstance(e, tuple):
                lo, hi = (convert(e[1]), convert(e[2])) if convert else (e[1], e[2])
                if lo is None or hi is None:
                    return None
                hit = hit or lo <= value <= hi
            else:
                v = convert(e) if convert else e
                if v is None:
                    return None
                hit = hit or v == value
        if op in ("==", "in"):
            return hit
        if op == "!=":
            return not hit
        return None

    # matches ----------------------------------------------------------------------------------
    def match(self, m: dict[str, Any], pkt: Packet, chain: tuple[str, str, str]) -> tuple[bool | None, str]:
        """(does the match hold for pkt, what was not understood)."""
        left, right, op = m.get("left"), m.get("right"), m.get("op", "==")
        if op not in ("==", "!=", "in"):
            return None, f"operator {op}"
        if isinstance(left, dict) and "payload" in left:
            return self._payload(left["payload"], op, right, pkt, chain)
        if isinstance(left, dict) and "meta" in left:
            key = left["meta"].get("key")
            if key in ("l4proto", "protocol", "nfproto"):
                if key == "l4proto":
                    return self._compare(pkt.proto, op, right, chain, _proto_number), "meta l4proto"
                if key == "nfproto":
                    fam = "ipv4" if pkt.family == 4 else "ipv6"
                    return self._compare(fam, op, right, chain), "meta nfproto"
                eth = "ip" if pkt.family == 4 else "ip6"
                return self._compare(eth, op, right, chain), "meta protocol"
            if key in ("iif", "iifname"):
                elems = self._elements(right, chain)
                if elems is not None and all(e == "lo" for e in elems):
                    return (op == "!="), ""
                return None, f"input interface {right}"
            if key == "pkttype":
                return self._compare("host", op, right, chain), "meta pkttype"
            return None, f"meta {key}"
        if isinstance(left, dict) and "ct" in left:
            key = left["ct"].get("key")
            if key == "state":
                elems = self._elements(right, chain)
                if elems is None:
                    return None, "ct state set"
                hit = "new" in elems
                if op == "!=":
                    return not hit, ""
                return hit, ""
            return None, f"ct {key}"
        if isinstance(left, dict) and "fib" in left:
            res = left["fib"].get("result")
            if res == "type":
                return self._compare("local", op, right, chain), "fib type"
            return None, "fib"
        return None, f"match on {next(iter(left), '?') if isinstance(left, dict) else left}"

    def _payload(self, p: dict[str, Any], op: str, right: Any, pkt: Packet,
                 chain: tuple[str, str, str]) -> tuple[bool | None, str]:
        proto, field = p.get("protocol"), p.get("field")
        if proto in ("ip", "ip6"):
            if (proto == "ip") != (pkt.family == 4):
                return False, ""
            if field in ("protocol", "nexthdr"):
                return self._compare(pkt.proto, op, right, chain, _proto_number), f"{proto} {field}"
            if field in ("saddr", "daddr"):
                return None, f"{proto} {field} {_brief(right)}"
            return None, f"{proto} {field}"
        if proto == "th" or proto in ("udp", "tcp", "sctp", "dccp", "udplite"):
            if proto != "th" and PROTOCOLS.get(proto) != pkt.proto:
                return False, ""
            if pkt.dport is None:
                return False, ""  # ESP has no transport header
            if field == "dport":
                return self._compare(pkt.dport, op, right, chain), "dport"
            if field == "sport":
                return None, f"source port {_brief(right)}"
            return None, f"{proto} {field}"
        if proto in PROTOCOLS:  # icmp, esp, ah ...: the header is there only for that protocol
            if PROTOCOLS[proto] != pkt.proto:
                return False, ""
            return None, f"{proto} {field}"
        return None, f"payload {proto} {field}"

    # walking ----------------------------------------------------------------------------------
    def walk(self, key: tuple[str, str, str], pkt: Packet, w: _Walk, depth: int = 0) -> tuple[str, str]:
        """('accept'|'drop'|'return', where) for one chain; 'return' = fell off the end."""
        if depth > 16:
            w.notes.append(f"chains nested too deeply at {key[2]}")
            return "return", ""
        for n, rule in enumerate(self.rules.get(key, []), 1):
            where = f"nft {key[0]} {key[1]} {key[2]} rule {n} (handle {rule.get('handle')})"
            state: bool | None = True
            why: list[str] = []
            for e in rule.get("expr", []):
                kind, arg = next(iter(e.items())) if isinstance(e, dict) and len(e) == 1 else ("?", None)
                if kind == "match" and isinstance(arg, dict):
                    r, what = self.match(arg, pkt, key)
                    if r is None:
                        why.append(what)
                    state = _and(state, r)
                    if state is False:
                        break
                elif kind in ("counter", "log", "comment", "notrack", "meta", "mangle"):
                    continue  # counting, logging and marking do not decide
                elif kind in ("limit", "quota", "meter"):
                    state = _and(state, None)
                    why.append(kind)
                elif kind in ("accept", "drop", "reject", "jump", "goto", "return"):
                    out = self._verdict(kind, arg, state, why, where, pkt, w, key, depth)
                    if out is not None:
                        return out
                    break
                else:
                    state = _and(state, None)
                    why.append(f"statement {kind}")
        return "return", ""

    def _verdict(self, kind: str, arg: Any, state: bool | None, why: list[str], where: str, pkt: Packet,
                 w: _Walk, key: tuple[str, str, str], depth: int) -> tuple[str, str] | None:
        if state is False:
            return None
        if kind in ("jump", "goto"):
            target = (key[0], key[1], arg.get("target", "") if isinstance(arg, dict) else "")
            result, at = self.walk(target, pkt, w, depth + 1)
            if state is None:
                if result != "return":
                    self._partial(result, at, why, where, w)
                return None
            if result == "return":
                return ("return", "") if kind == "goto" else None
            return result, at
        result = {"accept": "accept", "drop": "drop", "reject": "drop", "return": "return"}[kind]
        if state is None:
            self._partial(result, where, why, where, w)
            return None
        return result, where

    @staticmethod
    def _partial(result: str, at: str, why: list[str], where: str, w: _Walk) -> None:
        text = ", ".join(dict.fromkeys(why)) or "a condition"
        if result == "drop":
            w.partial_drop = True
            w.notes.append(f"{at} may drop it, depending on {text} (not understood)")
        elif result == "accept":
            w.notes.append(f"{where} accepts it only depending on {text}, not from every source address and port")


def _brief(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))[:60]


# --------------------------------------------------------------------------- iptables
class _Ipt:
    """The filter table of one iptables-save output."""

    def __init__(self, text: str) -> None:
        self.policies: dict[str, str] = {}
        self.rules: dict[str, list[list[str]]] = {}
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif table != "filter" or not line or line.startswith("#"):
                continue
            elif line.startswith(":"):
                parts = line[1:].split()
                self.policies[parts[0]] = parts[1] if len(parts) > 1 else "-"
            elif line.startswith("-A "):
                try:
                    words = shlex.split(line)
                except ValueError:
                    words = line.split()
                self.rules.setdefault(words[1], []).append(words[2:])

    @property
    def empty(self) -> bool:
        return not self.rules and all(p in ("ACCEPT", "-") for p in self.policies.values())

    def walk(self, chain: str, pkt: Packet, w: _Walk, tool: str, depth: int = 0) -> tuple[str, str]:
        if depth > 16:
            w.notes.append(f"chains nested too deeply at {chain}")
            return "return", ""
        for n, words in enumerate(self.rules.get(chain, []), 1):
            where = f"{tool} -A {chain} rule {n}: {' '.join(words)[:100]}"
            state, why, target, goto = self._rule(words, pkt)
            if state is False or target is None:
                continue
            if target in ("ACCEPT", "DROP", "REJECT", "RETURN"):
                result = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "drop", "RETURN": "return"}[target]
            elif target in self.rules or target in self.policies:
                result, sub_where = self.walk(target, pkt, w, tool, depth + 1)
                if result == "return":
                    if goto and state is True:
                        return "return", ""
                    continue
                where = sub_where
            elif target in ("LOG", "NFLOG", "MARK", "CONNMARK", "CT", "NOTRACK", "TRACE", "AUDIT"):
                continue
            else:
                state = None
                why.append(f"target {target}")
                result = "drop"
            if state is None:
                _Nft._partial(result, where, why, where, w)
                continue
            return result, where
        return "return", ""

    @staticmethod
    def _rule(words: list[str], pkt: Packet) -> tuple[bool | None, list[str], str | None, bool]:
        """(match state, not understood, target, is goto) of one rule's words."""
        state: bool | None = True
        why: list[str] = []
        target: str | None = None
        goto = False
        i = 0
        neg = False
        while i < len(words):
            w = words[i]
            arg = words[i + 1] if i + 1 < len(words) else ""
            if w == "!":
                neg = True
                i += 1
                continue
            r: bool | None = True
            step = 2
            if w in ("-p", "--protocol"):
                num = _proto_number(arg)
                r = None if num is None else (num in (0, pkt.proto))
                if num is None:
                    why.append(f"protocol {arg}")
            elif w in ("--dport", "--destination-port", "--dports", "--destination-ports"):
                r = False if pkt.dport is None else _ports(arg, pkt.dport)
                if r is None:
                    why.append(f"{w} {arg}")
            elif w in ("--sport", "--source-port", "--sports", "--source-ports"):
                r = False if pkt.dport is None else None
                why.append(f"source port {arg}")
            elif w in ("-s", "--source", "-d", "--destination"):
                r = None
                why.append(f"{w} {arg}")
            elif w in ("-i", "--in-interface"):
                r = None if arg != "lo" else False
                if arg != "lo":
                    why.append(f"input interface {arg}")
            elif w in ("--ctstate", "--state"):
                r = "NEW" in arg.upper().split(",")
            elif w == "-m":
                r = True  # the module's own options are judged one by one
            elif w in ("--comment", "--log-prefix", "--log-level", "--reject-with", "--set-mark",
                       "--nflog-group", "--nflog-prefix"):
                r = True
            elif w in ("-j", "--jump", "-g", "--goto"):
                target, goto = arg, w in ("-g", "--goto")
                r = True
            elif w.startswith("-"):
                r, step = None, 2 if arg and not arg.startswith("-") else 1
                why.append(f"option {w}")
            else:
                r, step = True, 1
            if neg:
                r = _not(r)
                neg = False
            state = _and(state, r)
            i += step
        return state, why, target, goto


def _ports(spec: str, port: int) -> bool | None:
    """Is ``port`` in an iptables port list like ``500,4500`` or ``1024:``?"""
    try:
        for part in spec.split(","):
            if ":" in part:
                lo, hi = part.split(":", 1)
                low, high = int(lo or 0), int(hi or 65535)
            else:
                low = high = int(part)
            if low <= port <= high:
                return True
    except ValueError:
        return None
    return False


# --------------------------------------------------------------------------- verdict
def evaluate(rules: Ruleset, pkt: Packet) -> Verdict | None:
    """What the firewall does with ``pkt``; None when there are no rules at all."""
    w = _Walk()
    decided: list[tuple[str, str, tuple[str, ...]]] = []
    ipt_text = rules.iptables.get(pkt.family, "")
    skip: set[tuple[str, str]] = {OWN_TABLE}
    if "(nf_tables)" in ipt_text or "-nft-save" in ipt_text:  # iptables-nft: these tables also show up in nft
        skip |= {("ip", "filter"), ("ip6", "filter")}
    if rules.nft is not None:
        nft = _Nft(rules.nft)
        for key in nft.base_chains(pkt.family, skip):
            result, where = nft.walk(key, pkt, w)
            if result == "return":
                policy = nft.chains[key].get("policy", "accept")
                result, where = policy, f"nft {key[0]} {key[1]} {key[2]} policy {policy}"
            decided.append((result, where, ("nft", *key)))
    ipt = _Ipt(ipt_text)
    if ipt_text and not ipt.empty:
        tool = "iptables" if pkt.family == 4 else "ip6tables"
        result, where = ipt.walk("INPUT", pkt, w, tool)
        if result == "return":
            policy = ipt.policies.get("INPUT", "ACCEPT")
            result, where = ("drop" if policy in ("DROP", "REJECT") else "accept"), f"{tool} INPUT policy {policy}"
        decided.append((result, where, (tool, "", "filter", "INPUT")))
    if not decided:
        return None
    for result, where, chain in decided:
        if result == "drop":
            return Verdict("drop", where, tuple(w.notes), chain)
    if w.partial_drop:
        return Verdict("unknown", "; ".join(w.notes), tuple(w.notes), decided[0][2])
    return Verdict("accept", "; ".join(where for _, where, _ in decided), tuple(w.notes))


def fix_hints(chain: tuple[str, ...], proto: int | None = None) -> list[str]:
    """Commands that let IKE/NAT-T (proto 17), ESP (50) or both (None) in at the top of ``chain``
    (as in Verdict.chain); an nftables.conf snippet when no chain is given."""
    rules = []
    if chain and chain[0] == "nft":
        where = shlex.join(["nft", "insert", "rule", *chain[1:4]])  # names from the ruleset: quoted
        rules = [(50, f"{where} meta l4proto esp accept"), (17, f"{where} udp dport {{ 500, 4500 }} accept")]
    elif chain and chain[0] in ("iptables", "ip6tables"):
        rules = [(50, f"{chain[0]} -I INPUT -p esp -j ACCEPT"),
                 (17, f"{chain[0]} -I INPUT -p udp -m multiport --dports 500,4500 -j ACCEPT")]
    else:
        return ["# /etc/nftables.conf, in your input chain (table inet filter, chain input):",
                "udp dport { 500, 4500 } accept", "meta l4proto esp accept"]
    return [text for p, text in rules if proto in (None, p)]
