"""``ipsec-vip psk``: random PSKs and the 0600 secrets snippet, loaded by real swanctl into a real charon."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

from ipsec_vip import psk, swanctl
from ipsec_vip.errors import ConfigError, IpsecVipError


def cli(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsec_vip.cli", *args], capture_output=True, text=True,
                          timeout=30, preexec_fn=lambda: os.umask(umask))


def test_printed_psk_is_long_random_and_quote_safe():
    first, second = cli("psk"), cli("psk")
    assert first.returncode == second.returncode == 0
    a, b = first.stdout.strip(), second.stdout.strip()
    assert a != b
    for key in (a, b):
        assert len(key) >= 32
        assert re.fullmatch(r"[A-Za-z0-9_-]+", key)


def test_write_creates_0600_even_with_a_permissive_umask(tmp_path):
    path = tmp_path / "psk.conf"
    p = cli("psk", "--write", str(path), "--name", "client1", "--id", "vpn.example.com",
            "--id", "client1@example.com", umask=0)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = swanctl.load(str(path))
    (secret,) = cfg.secrets
    assert secret["id"] == "ike-client1"
    assert secret["owners"] == ["vpn.example.com", "client1@example.com"]
    assert len(secret["data"]) >= 32
    assert secret["data"].decode() not in p.stdout + p.stderr  # --write never prints the key


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "psk.conf"
    path.write_text("keep me\n")
    p = cli("psk", "--write", str(path))
    assert p.returncode == 1
    assert "not overwriting" in p.stderr
    assert path.read_text() == "keep me\n"


def test_write_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    link = tmp_path / "psk.conf"
    link.symlink_to(victim)
    with pytest.raises(IpsecVipError):
        psk.write(str(link), "x", [], psk.generate())
    assert not victim.exists()
    dangling_to_existing = tmp_path / "other.conf"
    victim.write_text("keep me\n")
    dangling_to_existing.symlink_to(victim)
    with pytest.raises(IpsecVipError):
        psk.write(str(dangling_to_existing), "x", [], psk.generate())
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("bad", ['a"b', "a\\b", "a\nb", ""])
def test_identities_that_would_break_the_file_are_refused(bad):
    with pytest.raises(ConfigError):
        psk.snippet("x", [bad], psk.generate())


@pytest.mark.charon
def test_snippet_loads_into_a_real_charon(charon, tmp_path):
    path = tmp_path / "psk.conf"
    psk.write(str(path), "lab", ["vpn.example.com"], psk.generate())
    charon.swanctl("--load-creds", "--noprompt", "--file", str(path))
    assert "ike-lab" in charon.shared()
