"""The agent as the cluster tools see it: ocf-tester, crm_resource, pcs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lab import core as lab
from lab.core import GATEWAY_CONF
from tests.test_agent_charon import PSK

pytestmark = pytest.mark.charon

PYBIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def setup(gwlab, tmp_path_factory):
    d = tmp_path_factory.mktemp("tester")
    conf = d / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    conf.chmod(0o600)
    agents = d / "agents" / "ipsec-vip"
    agents.mkdir(parents=True)
    (agents / "strongswan").symlink_to(lab.AGENT)
    gw = gwlab.gateways["gw1"]
    return {"lab": gwlab, "conf": str(conf), "dir": d, "agents": str(d / "agents"), "gw": gw}


def _env(setup) -> dict[str, str]:
    return {"PATH": f"{PYBIN}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "HA_RSCTMP": str(setup["dir"] / "rsctmp")}


def test_ocf_tester_passes(setup):
    lb = setup["lab"]
    lb.add_vip("gw1")
    try:
        p = lab.in_ns(lb.ns("gw1"), "ocf-tester", "-n", "vpntest", "-o", f"vip={lab.VIP}",
                      "-o", f"config={setup['conf']}", "-o", f"vici_socket={setup['gw'].uri}", lab.AGENT,
                      check=False, env=_env(setup), timeout=120)
    finally:
        lb.del_vip("gw1")
        setup["gw"].clear()
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "passed all tests" in out
    problems = [line for line in out.splitlines() if line.startswith("* ") and "(optional)" not in line]
    assert problems == [], out


def _with_agent(setup, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command that sees the agent as ocf:ipsec-vip:strongswan, in a private mount namespace."""
    script = ('mount -t overlay ipsec-vip-ocf -o "lowerdir=$1:/usr/lib/ocf/resource.d" /usr/lib/ocf/resource.d '
              '&& shift && exec "$@"')
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", setup["agents"], *cmd],
                          capture_output=True, text=True, env=_env(setup), timeout=120)


@pytest.mark.skipif(shutil.which("crm_resource") is None, reason="pacemaker-cli-utils missing")
def test_crm_resource_validate(setup):
    base = ["crm_resource", "--validate", "--class", "ocf", "--provider", "ipsec-vip", "--agent", "strongswan"]
    p = _with_agent(setup, *base, "--option", f"vip={lab.VIP}", "--option", f"config={setup['conf']}")
    assert p.returncode == 0, p.stdout + p.stderr
    p = _with_agent(setup, *base, "--option", "vip=10.0.0.256")
    assert p.returncode == 6, p.stdout + p.stderr


@pytest.mark.skipif(shutil.which("pcs") is None, reason="pcs missing")
def test_pcs_accepts_the_agent(setup):
    p = _with_agent(setup, "pcs", "resource", "describe", "ocf:ipsec-vip:strongswan")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "vici_socket" in p.stdout
    cib = setup["dir"] / "cib.xml"
    cib.write_text(subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout)
    p = _with_agent(setup, "pcs", "-f", str(cib), "resource", "create", "vpn", "ocf:ipsec-vip:strongswan",
                    f"vip={lab.VIP}", f"config={setup['conf']}", "--agent-validation")
    assert p.returncode == 0, p.stdout + p.stderr
    text = cib.read_text()
    assert 'type="strongswan"' in text and 'provider="ipsec-vip"' in text
    p = _with_agent(setup, "pcs", "-f", str(cib), "resource", "create", "bad", "ocf:ipsec-vip:strongswan",
                    "vip=not-an-ip", "--agent-validation")
    assert p.returncode != 0
