"""The README commands tests/test_booted.py executes word for word are found where it looks
(fast: fails on a README edit long before the booted-system tests run)."""

from __future__ import annotations

import re

from ipsec_vip import watchconf
from tests import readme


def test_install_from_packages_is_make_deb_then_apt():
    cmds = readme.debian_install()
    assert cmds[0] == "make deb", cmds
    assert len(cmds) == 2 and re.fullmatch(r"apt install \./dist/ipsec-vip_\S*\.deb \./dist/python3-vici_\S*\.deb",
                                           cmds[1]), cmds


def test_without_pacemaker_config_and_commands(tmp_path):
    name, conf, cmds = readme.watch_setup()
    assert name == "vpn"
    path = tmp_path / f"{name}.conf"
    path.write_text(conf)
    params, _ = watchconf.settings(watchconf.read(str(path)), str(path))
    assert str(params.vip) == "192.0.2.100" and params.config == "/etc/ipsec-vip/swanctl.conf"
    assert cmds[0] == f"systemctl enable --now ipsec-vip-watch@{name}", cmds


def test_pcs_recipe_orders_the_agent_before_its_vips_both_ways():
    """docs/handoff.md: the agent starts before the VIPs and stops before them (the handoff)."""
    cmds = readme.pcs_create()
    assert cmds[0].startswith("pcs resource create vpn ocf:ipsec-vip:strongswan vip=192.0.2.100 "), cmds
    assert "start_without_vip=true" in cmds[0], cmds
    for must in ("pcs constraint colocation add vpn-vips with vpn INFINITY",
                 "pcs constraint order start vpn then start vpn-vips symmetrical=false",
                 "pcs constraint order stop vpn then stop vpn-vips symmetrical=false"):
        assert must in cmds, cmds
