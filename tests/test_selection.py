"""The selection policy: which connections, pools and secrets belong to a VIP (table-driven)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ipsec_vip import selection, swanctl
from ipsec_vip.errors import ConfigError

VIP = ipaddress.ip_address("192.0.2.100")


def load(tmp_path: Path, text: str) -> swanctl.SwanctlConfig:
    f = tmp_path / "swanctl.conf"
    f.write_text(text)
    return swanctl.load(str(f))


SELECT = """
connections {
 rw { local_addrs = 192.0.2.100
  pools = p1
  local { auth = psk
   id = gw.example.com }
  remote { auth = psk } }
 rw6 { local_addrs = 2001:db8::100, 192.0.2.100
  local { auth = psk }
  remote { auth = psk
   id = *@example.com } }
 other { local_addrs = 192.0.2.200
  pools = p2
  local { auth = psk
   id = other.example.com }
  remote { auth = psk } }
}
pools { p1 { addrs = 203.0.113.0/25 }
 p2 { addrs = 203.0.113.128/25 } }
secrets {
 ike-mine { id = gw.example.com
  secret = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa }
 ike-client { id = alice@example.com
  secret = bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb }
 ike-theirs { id = other.example.com
  secret = cccccccccccccccccccccccccccccccc }
 ike-any { secret = dddddddddddddddddddddddddddddddd }
}
"""


def test_select_by_vip(tmp_path: Path) -> None:
    cfg = load(tmp_path, SELECT)
    sel = selection.select(cfg, VIP)
    assert list(sel.connections) == ["rw", "rw6"]
    assert list(sel.pools) == ["p1"]
    assert [s["id"] for s in sel.secrets] == ["ike-mine", "ike-client", "ike-any"]


def test_select_by_vip_is_exact_not_textual(tmp_path: Path) -> None:
    cfg = load(tmp_path, SELECT.replace("192.0.2.200", "192.0.2.1000, 192.0.2.10"))
    with pytest.raises(ConfigError, match="no connection"):
        selection.select(cfg, ipaddress.ip_address("192.0.2.1"))


def test_select_ipv6_any_spelling(tmp_path: Path) -> None:
    cfg = load(tmp_path, SELECT)
    assert list(selection.select(cfg, ipaddress.ip_address("2001:DB8:0::100")).connections) == ["rw6"]


def test_select_by_name_and_unknown_name(tmp_path: Path) -> None:
    cfg = load(tmp_path, SELECT)
    sel = selection.select(cfg, VIP, ["other"])
    assert list(sel.connections) == ["other"] and list(sel.pools) == ["p2"]
    assert [s["id"] for s in sel.secrets] == ["ike-client", "ike-theirs", "ike-any"]
    with pytest.raises(ConfigError, match="nope"):
        selection.select(cfg, VIP, ["rw", "nope"])


@pytest.mark.parametrize(("value", "on"), [(None, True), ("yes", True), ("no", False), ("false", False),
                                           ("0", False), ("NO", False)])
def test_mobike_default_on(value: str | None, on: bool) -> None:
    body = {} if value is None else {"mobike": value}
    assert selection.mobike_enabled(body) is on



@pytest.mark.parametrize(("entry", "addr", "inside"), [
    ("192.0.2.100", "192.0.2.100", True),
    ("192.0.2.10", "192.0.2.100", False),
    ("192.0.2.0/24", "192.0.2.100", True),
    ("192.0.2.0/25", "192.0.2.200", False),
    ("192.0.2.100/32", "192.0.2.100", True),
    ("192.0.2.1/24", "192.0.2.100", True),  # swanctl takes host bits in a subnet
    ("192.0.2.100-192.0.2.110", "192.0.2.105", True),
    ("192.0.2.100-192.0.2.110", "192.0.2.111", False),
    (" 192.0.2.100 - 192.0.2.110 ", "192.0.2.110", True),
    ("2001:db8::/64", "2001:db8::1", True),
    ("2001:db8::0:1", "2001:db8::1", True),
    ("2001:db8::1-2001:db8::9", "2001:db8::5", True),
    ("192.0.2.0/24", "2001:db8::1", False),
    ("::/0", "192.0.2.100", False),
    ("192.0.2.1-2001:db8::1", "192.0.2.100", False),
    ("vpn.example.com", "192.0.2.100", False),
    ("%any", "192.0.2.100", False),
    ("192.0.2.0/33", "192.0.2.100", False),
    ("fe80::1%eth0", "fe80::1", False),  # a zone id: no address of ours (the one validator, vip.parse_address)
])
def test_local_addrs_entry_covers(entry: str, addr: str, inside: bool) -> None:
    assert selection.covers(entry, ipaddress.ip_address(addr)) is inside


@pytest.mark.parametrize("local_addrs", ["192.0.2.0/24", "192.0.2.99-192.0.2.101", "vpn.example.com, 192.0.2.96/28"])
def test_a_subnet_or_range_holding_the_vip_selects_the_connection(tmp_path: Path, local_addrs: str) -> None:
    cfg = load(tmp_path, f"connections {{ rw {{ local_addrs = {local_addrs}\n local {{ auth = psk }} }} }}\n")
    assert list(selection.select(cfg, VIP).connections) == ["rw"]


@pytest.mark.parametrize(("children", "start", "start_or_trap"), [
    ("", [], []),
    ("c { start_action = none }", [], []),
    ("c { start_action = start }", ["c"], ["c"]),
    ("c { start_action = trap }", [], ["c"]),
    ("c { start_action = trap|start }\n d { }", ["c"], ["c"]),
])
def test_starting_children(tmp_path: Path, children: str, start: list[str], start_or_trap: list[str]) -> None:
    body = load(tmp_path, f"connections {{ x {{ children {{ {children} }} }} }}\n").connections["x"]
    assert selection.starting_children(body) == start
    assert selection.starting_children(body, ("start", "trap")) == start_or_trap
    assert selection.initiators({"x": body}) == (["x"] if start else [])
