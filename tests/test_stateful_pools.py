"""Stateful mode and virtual-IP pools, as any user: a pool from the agent's file (loaded over
VICI) cannot stay correct across a takeover (only charon.plugins.ha.pools learn the migrated
leases), so validate-all and start refuse it with one reason naming the pool and the fix, and
``ipsec-vip check`` says the same; ``status`` shows the virtual IPs in use and a duplicate;
check's ``ha-sync`` finding where charon has no sync socket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipsec_vip import preflight, status
from ipsec_vip import vip as vipmod
from ipsec_vip.params import Params
from lab.core import GATEWAY_CONF, STATEFUL_GATEWAY_CONF
from lab.core import agent as run_agent
from tests.vici_fakes import FakeCharon, Recorder

VIP = "192.0.2.100"
PROMOTABLE = {"OCF_RESKEY_CRM_meta_promotable": "true"}
HA_CONF = """charon {
  plugins {
    ha {
      local = 198.51.100.11
      remote = 198.51.100.12
      pools {
%s      }
    }
  }
}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def in_file(tmp_path: Path) -> Path:
    """The old stateful layout: ``pools = rw-pool`` and its ``pools { }`` section in the agent's file."""
    return write(tmp_path / "swanctl.conf", GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40})


def ha_layout(tmp_path: Path, pool: str = "rw-pool") -> Path:
    """The layout that works: the connection names the pool, the file does not define it."""
    text = STATEFUL_GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40}
    return write(tmp_path / "swanctl.conf", text.replace("pools = rw-pool", f"pools = {pool}"))


def test_stateful_validate_all_refuses_a_pool_from_the_file_with_one_reason(tmp_path):
    conf = in_file(tmp_path)
    r = run_agent("validate-all", {"vip": VIP, "config": str(conf)}, rsctmp=str(tmp_path / "rsc"), **PROMOTABLE)
    assert r.rc == 6, r.stderr
    assert len(r.reasons) == 1
    reason = r.reasons[0]
    assert "rw-pool" in reason and str(conf) in reason
    assert "charon.plugins.ha.pools" in reason and "both nodes" in reason


def test_a_primitive_keeps_its_vici_pool(tmp_path):
    r = run_agent("validate-all", {"vip": VIP, "config": str(in_file(tmp_path))}, rsctmp=str(tmp_path / "rsc"))
    assert r.rc == 0, r.stderr


def test_stateful_validate_all_accepts_the_ha_plugins_pool(tmp_path):
    r = run_agent("validate-all", {"vip": VIP, "config": str(ha_layout(tmp_path))}, rsctmp=str(tmp_path / "rsc"),
                  **PROMOTABLE)
    assert r.rc == 0, r.stderr


def test_stateful_start_refuses_before_it_asks_charon_anything(tmp_path):
    charon = FakeCharon(tmp_path / "charon.vici")
    try:
        r = run_agent("start", {"vip": VIP, "config": str(in_file(tmp_path)), "vici_socket": charon.uri},
                      rsctmp=str(tmp_path / "rsc"), **PROMOTABLE)
        assert r.rc == 6 and len(r.reasons) == 1 and "rw-pool" in r.reasons[0], r.stderr
        assert charon.requests == [] and charon.loaded == {} and charon.pools == {}
    finally:
        charon.close()


# --------------------------------------------------------------------------- ipsec-vip check
def pools_findings(tmp_path: Path, conf: Path, ha_pools: str = "", swanctl: str = "",
                   stateful: bool = True) -> list[preflight.Finding]:
    params = Params(vip=vipmod.parse_vip(VIP), config=str(conf))
    ctx = preflight.Context([preflight.Target(f"VIP {VIP}", str(conf), params)], vici_sockets=[],
                            swanctl_conf=str(tmp_path / "etc-swanctl.conf"))
    ctx.strongswan_conf = str(write(tmp_path / "strongswan.conf", HA_CONF % ha_pools if stateful else "charon {}\n"))
    if swanctl:
        write(tmp_path / "etc-swanctl.conf", swanctl)
    return preflight.check_pools(ctx)


def test_check_fails_a_stateful_pool_from_the_file_with_the_fix(tmp_path):
    found = pools_findings(tmp_path, in_file(tmp_path))
    assert [f.level for f in found] == ["fail"]
    assert "rw-pool" in found[0].message and "charon.plugins.ha.pools" in found[0].fix


def test_check_passes_the_ha_plugins_pool(tmp_path):
    found = pools_findings(tmp_path, ha_layout(tmp_path), ha_pools="        rw-pool = 203.0.113.0/24\n")
    assert [f.level for f in found] == ["ok"] and "rw-pool" in found[0].message


def test_check_says_nothing_of_pools_without_the_ha_plugin(tmp_path):
    assert pools_findings(tmp_path, in_file(tmp_path), stateful=False) == []


def test_check_warns_of_dhcp_and_of_a_pool_defined_nowhere(tmp_path):
    found = pools_findings(tmp_path, ha_layout(tmp_path, "dhcp"))
    assert [f.level for f in found] == ["warn"] and "DHCP server" in found[0].message
    found = pools_findings(tmp_path, ha_layout(tmp_path, "elsewhere"))
    assert [f.level for f in found] == ["warn"] and "neither" in found[0].message
    assert "charon.plugins.ha.pools" in found[0].fix


def test_check_fails_a_pool_that_swanctl_load_all_loads(tmp_path):
    found = pools_findings(tmp_path, ha_layout(tmp_path), swanctl="pools {\n rw-pool {\n addrs = 10.0.0.0/24\n }\n}\n")
    assert [f.level for f in found] == ["fail"] and "--load-all" in found[0].message


# --------------------------------------------------------------------------- ipsec-vip status
def ike(uid: str, spi: str, state: str, vip: str) -> dict[str, object]:
    return {"uniqueid": uid, "state": state, "initiator-spi": spi, "responder-spi": spi[::-1],
            "remote-id": f"client{uid}", "remote-vips": [vip], "child-sas": {}}


def test_status_lists_the_virtual_ips_and_flags_one_held_twice(tmp_path):
    charon = FakeCharon(tmp_path / "charon.vici")
    charon.loaded = {"rw": {}}
    charon.sas = {"rw": [ike("1", "aa01", "ESTABLISHED", "203.0.113.65"),
                         ike("2", "bb02", "ESTABLISHED", "203.0.113.65"),   # another client, same address
                         ike("3", "cc03", "ESTABLISHED", "203.0.113.66"),
                         ike("4", "cc03", "PASSIVE", "203.0.113.66"),       # a copy of #3: the same client
                         ike("5", "dd04", "DELETING", "203.0.113.67")]}      # on its way out
    try:
        params = Params(vip=vipmod.parse_vip(VIP), config=str(ha_layout(tmp_path)), vici_socket=charon.uri)
        rep = status.report([status.Target("command-line", "", params)], charon.uri)
    finally:
        charon.close()
    v = rep["vips"][0]
    assert v["virtual_ips"] == ["203.0.113.65", "203.0.113.66"]
    assert v["duplicate_virtual_ips"] == ["203.0.113.65"]
    text = status.render(rep)
    assert "2 virtual IP(s) in use; DUPLICATE (held by more than one IKE_SA): 203.0.113.65" in text


@pytest.mark.parametrize("sas", [[], [ike("1", "aa01", "ESTABLISHED", "203.0.113.65")]])
def test_status_without_a_duplicate_says_none(tmp_path, sas):
    charon = FakeCharon(tmp_path / "charon.vici")
    charon.loaded = {"rw": {}}
    charon.sas = {"rw": sas}
    try:
        params = Params(vip=vipmod.parse_vip(VIP), config=str(ha_layout(tmp_path)), vici_socket=charon.uri)
        rep = status.report([status.Target("command-line", "", params)], charon.uri)
    finally:
        charon.close()
    assert rep["vips"][0]["duplicate_virtual_ips"] == []
    assert "DUPLICATE" not in status.render(rep)


def test_check_cannot_find_a_sync_socket_where_charon_has_none(tmp_path):
    """The ha plugin listed, but no UDP 4510 socket in the process answering VICI (here: this one)."""
    charon = Recorder(tmp_path / "charon.vici", replies={"stats": {"plugins": ["vici", "ha"]}})
    try:
        (found,) = preflight.check_ha_sync(preflight.Context([], vici_sockets=[charon.uri]))
    finally:
        charon.close()
    assert found.level == "warn" and "no UDP socket on port 4510" in found.message
