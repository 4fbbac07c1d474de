"""Parameter parsing."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec_vip.errors import ConfigError
from ipsec_vip.params import DEFAULT_CONFIG, parse, split_names
from ipsec_vip.vici_session import DEFAULT_SOCKET


def test_defaults():
    p = parse({"vip": "192.0.2.100"})
    assert p.vip == ipaddress.ip_address("192.0.2.100")
    assert (p.config, p.connections, p.vici_socket, p.interface) == (DEFAULT_CONFIG, (), DEFAULT_SOCKET, None)


@pytest.mark.parametrize(("text", "addr"), [
    ("192.0.2.100/24", "192.0.2.100"), (" 192.0.2.1 ", "192.0.2.1"),
    ("2001:DB8::0:1", "2001:db8::1"), ("2001:db8::1/64", "2001:db8::1")])
def test_vip_forms(text, addr):
    assert parse({"vip": text}).vip == ipaddress.ip_address(addr)


@pytest.mark.parametrize("bad", ["", "  ", "10.0.0.256", "vpn.example.com", "2001:db8:::1", "192.0.2.1/33",
                                 "192.0.2.1/x", "192.0.2", "2001:db8::1/129", "::ffff:1.2.3.4.5"])
def test_bad_vips(bad):
    with pytest.raises(ConfigError):
        parse({"vip": bad})


def test_names_split_on_spaces_and_commas():
    assert split_names(" a, b  c,d ") == ("a", "b", "c", "d")
    assert split_names("") == ()


@pytest.mark.parametrize("bad", ["a.b", "a{", "x=y", "dup dup", 'q"'])
def test_bad_names(bad):
    with pytest.raises(ConfigError):
        split_names(bad)


@pytest.mark.parametrize(("key", "value"), [("config", "relative/swanctl.conf"), ("vici_socket", "tcp://1.2.3.4"),
                                           ("vici_socket", "relative.sock"), ("interface", "eth0/x"),
                                           ("interface", "a" * 16)])
def test_bad_other_params(key, value):
    with pytest.raises(ConfigError):
        parse({"vip": "192.0.2.1", key: value})


def test_socket_forms():
    assert parse({"vip": "192.0.2.1", "vici_socket": "/run/x.vici"}).vici_socket == "/run/x.vici"


@pytest.mark.parametrize(("text", "value"), [("", False), ("true", True), ("YES", True), ("0", False), ("off", False)])
def test_start_without_vip(text, value):
    assert parse({"vip": "192.0.2.1", "start_without_vip": text}).start_without_vip is value


def test_start_without_vip_rejects_junk():
    with pytest.raises(ConfigError):
        parse({"vip": "192.0.2.1", "start_without_vip": "maybe"})
