"""swanctl.conf reader: grammar, conversion, errors, fuzzing, scale."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_vip import selection, swanctl
from ipsec_vip.errors import ConfigError

VIP = ipaddress.ip_address("192.0.2.100")


def load(tmp_path: Path, text: str | bytes, name: str = "swanctl.conf") -> swanctl.SwanctlConfig:
    f = tmp_path / name
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    return swanctl.load(str(f))


def conn(tmp_path: Path, body: str) -> dict[str, Any]:
    return load(tmp_path, f"connections {{\n c {{\n{body}\n }}\n}}\n").connections["c"]


# --------------------------------------------------------------------------- grammar
def test_lists_split_on_commas_and_trimmed(tmp_path: Path) -> None:
    c = conn(tmp_path, "proposals = aes128-sha256-x25519 ,aes256-sha384-ecp384,  default\n"
                       "local_addrs = 192.0.2.100\nversion = 2")
    assert c["proposals"] == ["aes128-sha256-x25519", "aes256-sha384-ecp384", "default"]
    assert c["local_addrs"] == ["192.0.2.100"]
    assert c["version"] == "2"


def test_unquoted_words_join_with_one_space(tmp_path: Path) -> None:
    c = conn(tmp_path, "local {\n id = C=CH,   O=Example,\tCN=two words # comment\n }")
    assert c["local"]["id"] == "C=CH, O=Example, CN=two words"


def test_quoted_values_escapes_and_hash(tmp_path: Path) -> None:
    c = conn(tmp_path, 'local {\n id = "a # not a comment"\n }\nupdown = "tab\\there \\"q\\" \\\\ x"')
    assert c["local"]["id"] == "a # not a comment"
    assert c["updown"] == 'tab\there "q" \\ x'


def test_value_ends_at_closing_brace(tmp_path: Path) -> None:
    cfg = load(tmp_path, "connections { c { local_addrs = 192.0.2.100 }}\n")
    assert cfg.connections["c"]["local_addrs"] == ["192.0.2.100"]


def test_references_own_keys_first_then_left_to_right(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
connections { c : a, b { z = own
  local { auth = psk } } }
a { z = a
  y = a
  local { id = from-a } }
b { y = b
  x = b }
""")
    c = cfg.connections["c"]
    assert list(c) == ["z", "y", "x", "local"]
    assert (c["z"], c["y"], c["x"]) == ("own", "a", "b")
    assert c["local"] == {"auth": "psk", "id": "from-a"}


def test_empty_value_clears_inherited(tmp_path: Path) -> None:
    cfg = load(tmp_path, "t { dpd_delay = 30\n rekey_time = 1h }\nconnections { c : t { dpd_delay =\n } }\n")
    assert cfg.connections["c"] == {"rekey_time": "1h"}


def test_repeated_sections_merge_and_last_value_wins(tmp_path: Path) -> None:
    cfg = load(tmp_path, "connections { c { a = 1\n b = 1 } }\nconnections { c { a = 2\n d = 3 } }\n")
    assert list(cfg.connections["c"].items()) == [("a", "2"), ("b", "1"), ("d", "3")]


def test_include_relative_sorted_glob_and_in_section(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.conf").write_text("second { x = 2 }\n")
    (tmp_path / "d" / "a.conf").write_text("first { x = 1 }\n")
    cfg = load(tmp_path, "connections {\n include d/*.conf\n include none/*.conf\n}\n")
    assert list(cfg.connections) == ["first", "second"]


def test_include_cycle_and_depth(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("include swanctl.conf\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load(tmp_path, "include a.conf\n")


def test_include_of_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "sub.conf").mkdir()  # a directory matches the glob but cannot be read
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path, "include sub.conf\n")


@pytest.mark.parametrize(("text", "match"), [
    ("connections {\n c {\n", "not closed"),
    ("}\n", "unexpected '}'"),
    ("connections {\n = x\n}\n", "unexpected character"),
    ("connections c\n", "expected '=' or '{'"),
    ('x = "open\n', "unterminated"),
    ("connections { c : { } }\n", "invalid section reference"),
    ("connections { c : a..b { } }\n", "invalid section reference"),
    ("connections { c : nothere { } }\n", "does not exist"),
    ("connections { c : connections.c { } }\n", "cycle"),
    ("include \n", "without a file pattern"),
    ("secrets { ike-x { id = a } }\n", "secret missing"),
    ("secrets { ike-x { secret = 0xZZ } }\n", "invalid 0x/0s"),
    ("secrets { foo { secret = abc } }\n", "unknown secret type"),
    ("connections { c { local { certs = 0xZZ } } }\n", "invalid 0x/0s"),
    ("connections { c { local { certs = /nonexistent/x.pem } } }\n", "cannot read"),
])
def test_errors_name_file_and_never_the_value(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        load(tmp_path, text)
    assert "swanctl.conf" in str(e.value)


@pytest.mark.parametrize(("text", "data"), [("0x01:02:03:04", b"\x01\x02\x03\x04"),
                                          ("0x0102:A0b0", b"\x01\x02\xa0\xb0"), ("0x0102", b"\x01\x02")])
def test_hex_secrets_with_colons_between_bytes(tmp_path: Path, text: str, data: bytes) -> None:
    cfg = load(tmp_path, f"secrets {{ ike-x {{ secret = {text} }} }}\n")
    assert cfg.secrets[0]["data"] == data


@pytest.mark.parametrize("text", ["0x1:2", "0x01::02", "0x:0102", "0x0102:", "0x123", "0x01:0g"])
def test_hex_swanctl_would_guess_at_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="invalid 0x/0s"):
        load(tmp_path, f"secrets {{ ike-x {{ secret = {text} }} }}\n")


def test_error_never_quotes_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, 'secrets {\n ike-x { secret = "TopSecret42\n }\n}\n')
    assert "TopSecret42" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "secrets {\n ike-x { secret = 0xTopSecret42 }\n}\n")
    assert "TopSecret42" not in str(e.value)


@pytest.mark.parametrize("raw", [b"connections { c { x = \xff } }\n", b"x = 1\0\n"])
def test_binary_files_refused(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(ConfigError, match=r"UTF-8|NUL"):
        load(tmp_path, raw)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path, "a {" * 5000 + "}" * 5000)


def test_relative_certs_resolve_beside_the_config_like_swanctl_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """swanctl --file looks beside the file, not in $SWANCTL_DIR or /etc/swanctl."""
    monkeypatch.setenv("SWANCTL_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/x509/nope-ipsec-vip.pem")):
        conn(tmp_path, "local { certs = nope-ipsec-vip.pem }")
    (tmp_path / "x509ca").mkdir()
    (tmp_path / "x509ca" / "ca.pem").write_bytes(b"PEM")
    assert conn(tmp_path, "remote { cacerts = ca.pem, 0x0102 }")["remote"]["cacerts"] == [b"PEM", b"\x01\x02"]


# --------------------------------------------------------------------------- secrets
def test_secret_types_blobs_and_owners(tmp_path: Path) -> None:
    cfg = load(tmp_path, """secrets {
 ike-a { id-1 = gw
  id-2 = 192.0.2.5
  secret = "pa ss" }
 eap-b { secret = 0x6869 }
 xauth-c { secret = 0saGk= }
 private-d { file = key.pem
  secret = x }
 token-e { handle = 01 }
}""")
    assert [(s["id"], s["type"], s["data"], s["owners"]) for s in cfg.secrets] == [
        ("ike-a", "ike", b"pa ss", ["gw", "192.0.2.5"]),
        ("eap-b", "eap", b"hi", []),
        ("xauth-c", "xauth", b"hi", []),
    ]


def test_secret_repr_hides_data(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'secrets { ike-a { secret = "hidden-psk-value" } }\n')
    assert "hidden-psk-value" not in repr(cfg)


# --------------------------------------------------------------------------- pools
def test_pools_addrs_single_attributes_lists(tmp_path: Path) -> None:
    cfg = load(tmp_path, "pools { p { addrs = 203.0.113.0/24\n dns = 192.0.2.53, 192.0.2.54 } }\n")
    assert cfg.pools == {"p": {"addrs": "203.0.113.0/24", "dns": ["192.0.2.53", "192.0.2.54"]}}


# --------------------------------------------------------------------------- fuzzing and scale
ALPHABET = st.sampled_from(list('{}:=,.#"\\ \t\n\r') + list("abc_-01xs") + ["include ", "\xff", "\0", "é"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ALPHABET, max_size=80).map("".join))
def test_fuzz_parses_or_config_error(tmp_path: Path, text: str) -> None:
    with contextlib.suppress(ConfigError):
        load(tmp_path, text.encode("utf-8", "surrogateescape"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_fuzz_bytes(tmp_path: Path, raw: bytes) -> None:
    with contextlib.suppress(ConfigError):
        load(tmp_path, raw)


def test_ten_thousand_connections(tmp_path: Path) -> None:
    body = "".join(f" c{i} : t {{ local_addrs = 192.0.2.100\n"
                   f"  children {{ ch {{ local_ts = 10.{i % 250}.0.0/16 }} }} }}\n" for i in range(10_000))
    f = tmp_path / "big.conf"
    f.write_text(f"connections {{\n{body}}}\nt {{ local {{ auth = psk }}\n remote {{ auth = psk }} }}\n")
    t0 = time.process_time()
    cfg = swanctl.load(str(f))
    sel = selection.select(cfg, VIP)
    used = time.process_time() - t0
    assert len(sel.connections) == 10_000
    assert sel.connections["c9999"]["children"]["ch"]["local_ts"] == ["10.249.0.0/16"]
    # A complexity guard, not a benchmark (make bench reports the time): a quadratic
    # reader would take minutes here.
    assert used < 10, used
    os.unlink(f)


def test_files_lists_includes_as_the_reader_follows_them(tmp_path: Path) -> None:
    """Also an include written inside a one-line section, which a line-based search misses."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("a { x = 1 }\n")
    (tmp_path / "s.conf").write_text('secrets { ike-x { secret = "s" } }\ninclude swanctl.conf\n')  # a cycle
    main = tmp_path / "swanctl.conf"
    main.write_text("connections { include conf.d/*.conf }\ninclude s.conf\n")
    real = [str(p.resolve()) for p in (main, tmp_path / "conf.d" / "a.conf", tmp_path / "s.conf")]
    assert swanctl.files(str(main)) == dict(zip(real, (False, False, True)))
    with pytest.raises(ConfigError, match="include cycle"):
        swanctl.load(str(main))
