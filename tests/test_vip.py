"""VIP ownership against real kernel addresses in a private network namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ipsec_vip.vip import parse_vip
from lab import core as lab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ns():
    lab.clean_leftovers()
    a, b = lab.add_netns("vipa"), lab.add_netns("vipb")
    lab.run(lab.IP, "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
    lab.run(lab.IP, "-n", a, "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # carrier down: DAD waits
    for n, dev in ((a, "v0"), (b, "v1"), (a, "d0")):
        lab.run(lab.IP, "-n", n, "link", "set", dev, "up")
    yield a, b
    lab.remove_netns(a)
    lab.remove_netns(b)


def held(netns: str, *queries: tuple[str, str | None]) -> list[bool]:
    code = ("import json,sys; from ipsec_vip.vip import held, parse_vip; "
            "print(json.dumps([held(parse_vip(v), i) for v, i in json.loads(sys.argv[1])]))")
    p = lab.in_ns(netns, sys.executable, "-c", code, json.dumps(queries), cwd=ROOT)
    return json.loads(p.stdout)  # type: ignore[no-any-return]


@pytest.mark.root
def test_exact_ipv4_match_never_a_substring(ns):
    a, _ = ns
    lab.run(lab.IP, "-n", a, "addr", "add", "192.0.2.10/24", "dev", "v0")
    lab.run(lab.IP, "-n", a, "addr", "add", "192.0.2.100/32", "dev", "v0")
    assert held(a, ("192.0.2.1", None), ("192.0.2.10", None), ("192.0.2.100/24", None),
                ("192.0.2.101", None), ("2.0.2.10", None)) == [False, True, True, False, False]


@pytest.mark.root
def test_interface_restriction(ns):
    a, _ = ns
    lab.run(lab.IP, "-n", a, "addr", "add", "198.51.100.7/24", "dev", "v0")
    assert held(a, ("198.51.100.7", "v0"), ("198.51.100.7", "d0"), ("198.51.100.7", "nosuch0")) == [
        True, False, False]


@pytest.mark.root
def test_ipv6_canonical_forms(ns):
    a, _ = ns
    lab.run(lab.IP, "-n", a, "addr", "add", "2001:db8:0:1::5/64", "dev", "v0", "nodad")
    assert held(a, ("2001:DB8:0:1:0:0:0:5", None), ("2001:db8:0:1::50", None), ("2001:db8:0:1::5/64", "v0")) == [
        True, False, True]


@pytest.mark.root
def test_ipv6_tentative_is_not_held(ns):
    a, _ = ns
    lab.run(lab.IP, "-n", a, "addr", "add", "2001:db8:0:2::5/64", "dev", "d0")  # no carrier: stays tentative
    out = lab.run(lab.IP, "-n", a, "-6", "addr", "show", "dev", "d0").stdout
    assert "tentative" in out
    assert held(a, ("2001:db8:0:2::5", None)) == [False]


@pytest.mark.root
def test_ipv6_dadfailed_is_not_held(ns):
    a, b = ns
    lab.run(lab.IP, "-n", b, "addr", "add", "2001:db8:0:3::9/64", "dev", "v1", "nodad")
    lab.in_ns(a, "sysctl", "-qw", "net.ipv6.conf.v0.accept_dad=1")
    lab.run(lab.IP, "-n", a, "addr", "add", "2001:db8:0:3::9/64", "dev", "v0")
    for _ in range(100):
        if "dadfailed" in lab.run(lab.IP, "-n", a, "-6", "addr", "show", "dev", "v0").stdout:
            break
        time.sleep(0.05)
    else:
        pytest.fail("DAD did not fail")
    assert held(a, ("2001:db8:0:3::9", None)) == [False]
    assert held(b, ("2001:db8:0:3::9", None)) == [True]


@pytest.mark.root
def test_removed_address_is_not_held(ns):
    a, _ = ns
    lab.run(lab.IP, "-n", a, "addr", "add", "203.0.113.77/24", "dev", "v0")
    assert held(a, ("203.0.113.77", None)) == [True]
    lab.run(lab.IP, "-n", a, "addr", "del", "203.0.113.77/24", "dev", "v0")
    assert held(a, ("203.0.113.77", None)) == [False]


@pytest.mark.root
def test_many_addresses_span_several_netlink_messages(ns):
    a, _ = ns
    batch = "".join(f"addr add 203.0.113.{i}/32 dev d0\n" for i in range(1, 255))
    subprocess.run([lab.IP, "-n", a, "-batch", "-"], input=batch, text=True, check=True)
    assert held(a, ("203.0.113.254", None), ("203.0.113.1", None)) == [True, True]


ORACLE = """
import json, socket
from pyroute2 import IPRoute
from ipsec_vip.vip import addresses
ours = [[str(a.address), a.prefixlen, a.ifindex, a.flags] for f in (socket.AF_INET, socket.AF_INET6)
        for a in addresses(f)]
with IPRoute() as ipr:
    theirs = [[m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"), m["prefixlen"], m["index"],
               m.get_attr("IFA_FLAGS") if m.get_attr("IFA_FLAGS") is not None else m["flags"]]
              for m in ipr.get_addr()]
print(json.dumps([sorted(ours), sorted(theirs)]))
"""


@pytest.mark.root
def test_address_list_matches_pyroute2(ns):
    """Our dump reads every address of a namespace (hundreds, tentative IPv6 too) as pyroute2 does."""
    a, _ = ns
    lab.run(lab.IP, "-n", a, "addr", "add", "2001:db8:0:9::1/64", "dev", "d0")  # tentative: d0 has no carrier
    ours, theirs = json.loads(lab.in_ns(a, sys.executable, "-c", ORACLE, cwd=ROOT).stdout)
    assert len(ours) > 250
    assert [tuple(x) for x in ours] == [tuple(x) for x in theirs]


def test_parse_vip_prefix_bounds():
    assert str(parse_vip("2001:db8::1/128")) == "2001:db8::1"
    with pytest.raises(ValueError):
        parse_vip("192.0.2.1/33")
