"""Pieces of ``ipsec-vip check`` that need no daemon: the PSK estimate, include scanning, plugin needs."""

from __future__ import annotations

import os
import secrets

import pytest

from ipsec_vip import preflight, psk, swanctl
from ipsec_vip.params import parse


def test_generated_and_random_psks_are_strong():
    assert preflight.psk_bits(psk.generate().encode()) >= preflight.PSK_MIN_BITS
    assert preflight.psk_bits(secrets.token_hex(16).encode()) >= preflight.PSK_MIN_BITS
    assert preflight.psk_bits(secrets.token_bytes(16)) >= preflight.PSK_MIN_BITS  # a 0x / 0s blob


def test_long_but_repetitive_or_narrow_psks_are_weak():
    for weak in (b"a" * 64, b"passwordpasswordpasswordpassword", b"0123456789" * 3 + b"01", b"\0" * 32,
                 b"abababababababababababababababab12", b"Sommer2024!"):
        assert preflight.psk_bits(weak) < preflight.PSK_MIN_BITS, weak


def test_include_files_follows_globs_and_survives_cycles(tmp_path):
    (tmp_path / "conf.d").mkdir()
    main = tmp_path / "main.conf"
    main.write_text('include conf.d/*.conf  # comment\ninclude "other.conf"\n')
    (tmp_path / "conf.d" / "a.conf").write_text(f"include {main}\n")
    (tmp_path / "other.conf").write_text("secrets { }\n")
    files = preflight.include_files(str(main))
    assert list(files) == [os.path.realpath(p) for p in (main, tmp_path / "conf.d" / "a.conf",
                                                         tmp_path / "other.conf")]


def _ctx(tmp_path, text: str, vip: str = "192.0.2.100") -> preflight.Context:
    conf = tmp_path / "vip.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    target = preflight.Target(label=f"VIP {vip}", config=str(conf), params=parse({"vip": vip, "config": str(conf)}))
    return preflight.Context([target], [], swanctl_conf=str(tmp_path / "none.conf"))


def test_secret_files_sees_a_secret_in_a_one_line_section(tmp_path):
    ctx = _ctx(tmp_path, 'connections { rw { local_addrs = 192.0.2.100 } }\nsecrets { ike-x { secret = "s3cr3t" } }\n')
    findings = preflight.check_secret_files(ctx)
    assert [f.level for f in findings] == [preflight.WARN], findings


def test_secret_files_ignores_the_word_in_a_comment_or_value(tmp_path):
    ctx = _ctx(tmp_path, "connections { rw { local_addrs = 192.0.2.100  # secret = none here\n"
                         " description = secret } }\n")
    assert preflight.check_secret_files(ctx) == []


@pytest.mark.parametrize(("vip", "local_addrs"), [
    ("2001:db8::1", "2001:db8::0:1"), ("2001:db8::1", "2001:DB8::1"), ("192.0.2.100", "192.0.2.0/24"),
    ("192.0.2.100", "192.0.2.90-192.0.2.110"), ("2001:db8::1", "2001:db8::/64")])
def test_connections_check_agrees_with_the_agent_on_the_vip(tmp_path, vip, local_addrs):
    ctx = _ctx(tmp_path, f"connections {{ rw {{ local_addrs = {local_addrs}\n mobike = no }} }}\n", vip)
    findings = preflight.check_connections(ctx)
    assert [f.level for f in findings] == [preflight.OK], findings



def test_auth_methods_name_their_plugins(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("""connections {
  a { local { auth = pubkey } remote { auth = eap-mschapv2 } pools = dhcp
      children { c { updown = /bin/true } } }
  b { remote { auth = xauth } remote-2 { auth = eap } }
}""")
    need = preflight._auth_plugins(swanctl.load(str(conf)).connections)
    assert set(need) == {"x509", "pem", "eap-mschapv2", "dhcp", "updown", "xauth-generic", "eap-identity"}
    assert "connection a remote auth = eap-mschapv2" in need["eap-mschapv2"]
