"""control.start/stop/check against an in-memory charon (tests/vici_fakes.FakeCharon), as any user.

The same paths run against real charons in test_agent_charon.py and test_faults.py (root);
these cover the decisions: what is loaded, in which order, what is undone, what stop
terminates, and what the health check reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipsec_vip import agent, control
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline
from ipsec_vip.errors import ConfigError, NetlinkError
from ipsec_vip.params import Params
from ipsec_vip.state import Record, StateDir
from lab.core import GATEWAY_CONF
from tests.vici_fakes import FakeCharon

VIP = "192.0.2.100"
INITIATOR = """
connections {
    site {
        local_addrs = %(vip)s
        remote_addrs = 198.51.100.1
        local { auth = psk }
        remote { auth = psk }
        children { net { start_action = trap|start } }
    }
}
"""


@pytest.fixture
def bed(tmp_path, monkeypatch):
    charon = FakeCharon(tmp_path / "charon.vici")
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40} + INITIATOR % {"vip": VIP})
    os.chmod(conf, 0o600)
    held = {"value": True}
    monkeypatch.setattr(vipmod, "held", lambda vip, interface=None: held["value"])

    class Bed:
        pass

    b = Bed()
    b.charon, b.held, b.states = charon, held, StateDir(str(tmp_path / "rsc"))
    b.params = Params(vip=vipmod.parse_vip(VIP), config=str(conf), vici_socket=charon.uri)
    yield b
    charon.close()


def deadline() -> Deadline:
    return Deadline(10)


def test_start_loads_secrets_pools_then_conns_and_records_them(bed):
    bed.states.ensure()
    summary = control.start(bed.params, "r1", bed.states, deadline())
    assert summary == f"loaded 2 connections, 1 secrets, 1 pools for VIP {VIP}"
    order = [c for c, _ in bed.charon.requests if c.startswith("load-")]
    assert order == ["load-shared", "load-pool", "load-conn"]  # swanctl's order, conns in one batch
    assert set(bed.charon.loaded) == {"rw", "site"} and bed.charon.keys == {"ike-client1"}
    record = bed.states.read("r1")
    assert record is not None and record.conns == ["rw", "site"] and list(record.initiators) == ["site"]
    assert record.vici_socket == bed.charon.uri
    assert control.start(bed.params, "r1", bed.states, deadline()) == "already started: 2 connections loaded"


def test_start_without_the_vip_is_refused_unless_asked(bed):
    bed.states.ensure()
    bed.held["value"] = False
    with pytest.raises(control.NotHeld):
        control.start(bed.params, "r1", bed.states, deadline())
    assert not bed.charon.loaded and bed.states.read("r1") is None
    summary = control.start(bed.params._replace(start_without_vip=True), "r1", bed.states, deadline())
    assert summary.endswith("(inert until the VIP arrives)")


def test_refused_connection_undoes_the_whole_start(bed):
    bed.states.ensure()
    bed.charon.refuse["load-conn:site"] = "invalid value for start_action"
    with pytest.raises(ConfigError, match="charon refused connection site: invalid value"):
        control.start(bed.params, "r1", bed.states, deadline())
    assert not bed.charon.loaded and not bed.charon.keys and not bed.charon.pools
    assert bed.states.read("r1") is None


def test_stop_with_the_vip_here_unloads_and_leaves_sas_to_carry_traffic(bed):
    bed.states.ensure()
    control.start(bed.params, "r1", bed.states, deadline())
    bed.charon.sas["rw"] = [{"uniqueid": "7", "state": "ESTABLISHED"}]
    summary = control.stop(bed.params, "r1", bed.states, deadline())
    assert "still held here" in summary and "1 SA(s) are left" in summary
    assert not bed.charon.sent("terminate")  # no DELETE while the VIP is here
    assert not bed.charon.loaded and not bed.charon.keys and not bed.charon.pools
    assert bed.states.read("r1") is None


def test_stop_after_the_vip_left_terminates_our_sas_only(bed):
    bed.states.ensure()
    control.start(bed.params, "r1", bed.states, deadline())
    bed.charon.sas = {"rw": [{"uniqueid": "7"}], "other": [{"uniqueid": "8"}]}
    bed.held["value"] = False
    assert control.stop(bed.params, "r1", bed.states, deadline()) == \
        "unloaded 2 connections, terminated 1 SA(s)"
    assert [m["ike-id"] for m in bed.charon.sent("terminate")] == ["7"]
    assert bed.charon.sas["other"]


def test_stop_keeps_secrets_and_pools_another_instance_uses(bed):
    bed.states.ensure()
    control.start(bed.params, "r1", bed.states, deadline())
    bed.states.write("r2", Record(vip="192.0.2.200", config="x", conns=["x"], secrets=["ike-client1"],
                                  pools=["rw-pool"]))
    control.stop(bed.params, "r1", bed.states, deadline())
    assert bed.charon.keys == {"ike-client1"} and set(bed.charon.pools) == {"rw-pool"}


def health(bed, level: int = 0) -> control.Health:
    record = bed.states.read("r1")
    assert record is not None
    return control.check(bed.params, record, level, deadline())


def test_health(bed):
    bed.states.ensure()
    control.start(bed.params, "r1", bed.states, deadline())
    h = health(bed)
    assert (h.running, h.problems, h.degraded) == (True, [], [])
    h = health(bed, 10)
    assert h.degraded == ["initiator connection(s) not established: site"]
    bed.charon.sas["site"] = [{"uniqueid": "3", "state": "ESTABLISHED",
                               "child-sas": {"net-1": {"state": "INSTALLED"}}}]
    assert health(bed, 10).degraded == []
    bed.held["value"] = False
    assert health(bed).problems == [f"connections loaded but VIP {VIP} is not held by this node"]
    bed.held["value"] = True
    del bed.charon.loaded["rw"]
    assert health(bed).problems == ["connection(s) vanished from charon: rw"]
    bed.charon.loaded.clear()
    h = health(bed)
    assert not h.running and "none of the 2 connections" in h.problems[0]


def test_agent_monitor_gives_a_netlink_fault_as_its_exit_reason(bed, monkeypatch, capsys):
    """One fault, one behaviour: the monitor exits 1 with the netlink error as its reason."""
    bed.states.ensure()
    control.start(bed.params, "r1", bed.states, deadline())

    def fail(vip, interface=None):
        raise NetlinkError("netlink: the address dump (RTM_GETADDR) timed out")
    monkeypatch.setattr(vipmod, "held", fail)
    env = {"OCF_RESOURCE_INSTANCE": "r1", "HA_RSCTMP": str(Path(bed.states.path).parent),
           "OCF_RESKEY_vip": VIP, "OCF_RESKEY_config": bed.params.config,
           "OCF_RESKEY_vici_socket": bed.charon.uri, "OCF_RESKEY_CRM_meta_interval": "10000"}
    monkeypatch.setattr(os, "environ", {**env, "PATH": "/usr/bin:/bin"})
    assert agent.main(["strongswan", "monitor"], env) == 1
    assert "netlink: the address dump (RTM_GETADDR) timed out" in capsys.readouterr().err


def test_a_started_monitor_imports_no_typing(bed):
    """The monitor runs every few seconds on every node: typing (about 2 ms, and more per
    NamedTuple) stays off its path (ipsec_vip.tuples); so do the parser and the selection."""
    params = bed.params._replace(start_without_vip=True)
    bed.states.ensure()
    control.start(params, "r1", bed.states, deadline())
    env = {"OCF_RESKEY_vip": VIP, "OCF_RESKEY_config": params.config, "OCF_RESKEY_vici_socket": bed.charon.uri,
           "OCF_RESKEY_start_without_vip": "true", "OCF_RESOURCE_INSTANCE": "r1",
           "OCF_RESKEY_CRM_meta_interval": "10000", "HA_RSCTMP": str(Path(bed.states.path).parent)}
    code = ("import os, sys; from ipsec_vip import agent; rc = agent.main(['strongswan', 'monitor'], os.environ); "
            "print(rc, *sorted(m for m in ('typing', 'ipsec_vip.swanctl', 'ipsec_vip.selection') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       env={**env, "PATH": "/usr/bin:/bin"})
    assert p.stdout.split() == ["0"], p.stderr
    assert bed.charon.sent("get-conns")[-1:] == [{}]  # the monitor did ask charon
