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


# --------------------------------------------------------------------------- the ha plugin's secret
class _Answers:
    """A runner whose ping of the ha peer answers (no daemon, no network needed)."""

    def run(self, argv, *, timeout, stdin=None):
        from ipsec_vip.runner import Result

        return Result(0, "", "")


HA_SECRET = psk.generate()  # strong: 43 random characters


def _ha_check(tmp_path, ha_body: str, *, main_mode: int = 0o600, part_mode: int | None = None,
              libipsec: bool = False) -> tuple[list[preflight.Finding], str]:
    """check_ha on a strongswan.conf whose charon.plugins.ha is ``ha_body``, in the main file or (with
    ``part_mode``) in an included strongswan.d/charon/ha.conf as Debian ships it. Returns the findings
    and everything check would print for them."""
    conf = tmp_path / "strongswan.conf"
    settings = ("local = 127.0.0.1\nremote = 127.0.0.2\nsegment_count = 1\nmonitor = no\n"
                "fifo_interface = yes\nresync = no\n" + ha_body)
    if part_mode is None:
        conf.write_text("charon {\n  plugins {\n    ha {\n" + settings + "    }\n  }\n}\n")
    else:
        (tmp_path / "strongswan.d" / "charon").mkdir(parents=True)
        part = tmp_path / "strongswan.d" / "charon" / "ha.conf"
        part.write_text("ha {\n" + settings + "}\n")
        part.chmod(part_mode)
        conf.write_text("charon {\n  plugins {\n    include strongswan.d/charon/*.conf\n  }\n}\n")
    conf.chmod(main_mode)
    ctx = preflight.Context([], ["unix:///nonexistent/charon.vici"], runner=_Answers())  # type: ignore[arg-type]
    ctx.strongswan_conf = str(conf)
    if libipsec:
        ctx.plugins = lambda uri: ["kernel-libipsec", "ha", "vici"]  # type: ignore[method-assign]
    findings = preflight.check_ha(ctx)
    return findings, "\n".join(f"{f.message} {f.fix}" for f in findings)


def test_ha_secret_in_a_file_others_can_read_fails_naming_the_file(tmp_path):
    findings, text = _ha_check(tmp_path, f"secret = {HA_SECRET}\n", main_mode=0o644)
    assert [f.level for f in findings] == [preflight.FAIL], findings
    assert f"the secret is in {tmp_path / 'strongswan.conf'}, mode 0644" in text
    assert f"chmod 600 {tmp_path / 'strongswan.conf'}" in text
    assert HA_SECRET not in text


def test_ha_secret_judged_in_the_included_file_that_sets_it(tmp_path):
    """Debian's layout: strongswan.conf (0644, no secret) includes strongswan.d/charon/ha.conf."""
    part = tmp_path / "strongswan.d" / "charon" / "ha.conf"
    findings, text = _ha_check(tmp_path, f'secret = "{HA_SECRET}"\n', main_mode=0o644, part_mode=0o640)
    assert [(f.level, f.fix) for f in findings] == [(preflight.FAIL, f"chmod 600 {part}")], findings
    assert HA_SECRET not in text
    (tmp_path / "ok").mkdir()
    findings, _ = _ha_check(tmp_path / "ok", f"secret = {HA_SECRET}\n", main_mode=0o644, part_mode=0o600)
    assert [f.level for f in findings] == [preflight.OK], findings
    assert findings[0].message.endswith("peer 127.0.0.2 answers")


@pytest.mark.parametrize("weak", ["x", "haPassword2024!", "abababababababababababababababababab"])
def test_ha_secret_strength_judged_as_a_psk_and_never_printed(tmp_path, weak):
    findings, text = _ha_check(tmp_path, f"secret = {weak}\n")
    assert [f.level for f in findings] == [preflight.FAIL], findings
    assert "charon.plugins.ha: secret: weak PSK (" in findings[0].message
    assert "ipsec-vip psk" in findings[0].fix
    assert weak not in text


def test_ha_without_secret_names_both_risks_and_the_firewall_rule(tmp_path):
    findings, text = _ha_check(tmp_path, "")
    assert [f.level for f in findings] == [preflight.FAIL], findings
    assert "the SA keys cross the sync link in clear" in text and "forge sync messages" in text
    assert "limit UDP 4510 to the peer" in findings[0].fix


def test_ha_secret_with_kernel_libipsec_still_has_no_effect(tmp_path):
    findings, text = _ha_check(tmp_path, f"secret = {HA_SECRET}\n", libipsec=True)
    assert [f.level for f in findings] == [preflight.FAIL], findings
    assert "secret has no effect with kernel-libipsec" in text and "installing trap failed" in text
    assert HA_SECRET not in text
