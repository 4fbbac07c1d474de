"""Watch configs as status and check read them (the daemon's own reader): ``key = value``
lines, comment lines, quotes; typos are errors."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec_vip import watchconf
from ipsec_vip.errors import ConfigError


def test_parse_tolerates_comments_blank_lines_and_quotes(tmp_path):
    (tmp_path / "office.conf").write_text(
        "# the office VIP\n\nvip = 192.0.2.100/24\n; old style comment\ncheck_interval = 5\n"
        'config = "/etc/ipsec-vip/office.conf"\nconnections = rw, s2s\nvici-socket = unix:///run/x.vici\n')
    (tmp_path / "notes.txt").write_text("not a watch config")
    assert watchconf.names(str(tmp_path)) == ["office"]
    p = watchconf.load(watchconf.path_of("office", str(tmp_path)))
    assert p.vip == ipaddress.ip_address("192.0.2.100")
    assert p.config == "/etc/ipsec-vip/office.conf"
    assert p.connections == ("rw", "s2s")
    assert p.vici_socket == "unix:///run/x.vici"


@pytest.mark.parametrize("text", ["vip 192.0.2.1\n", "vpi = 192.0.2.1\n", "config = relative.conf\nvip = 192.0.2.1\n",
                                  "config = /x\n"])
def test_bad_watch_configs_are_refused_with_the_file_name(tmp_path, text):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.conf"):
        watchconf.load(str(path))


@pytest.mark.parametrize("name", ["../etc/passwd", ".hidden", "", "a/b"])
def test_names_are_names_not_paths(name):
    with pytest.raises(ConfigError):
        watchconf.path_of(name)
