"""Pieces of ``ipsec-vip check`` that need no daemon: the PSK estimate, include scanning, plugin needs."""

from __future__ import annotations

import os
import secrets

from ipsec_vip import preflight, psk, swanctl


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
    assert files == [os.path.realpath(p) for p in (main, tmp_path / "conf.d" / "a.conf", tmp_path / "other.conf")]


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
