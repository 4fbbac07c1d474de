"""Fallback connections (a mesh node's own tunnel to the VIP) named by the config itself, in its
``ipsec-vip`` section, followed by every path that moves the VIP: the agent, ``ipsec-vip up``/
``down`` and the watch daemon all run control.start/stop, and a stop on the VIP holder leaves the
starting of them to the sweeper, once the VIP has left. An in-memory charon (tests/vici_fakes),
as any user; the same on the wire in tests/test_mesh_lab.py."""

from __future__ import annotations

import os
import time

import pytest

from ipsec_vip import control, handoff, selection, swanctl, sweeper, watchconf
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline
from ipsec_vip.errors import ConfigError
from ipsec_vip.params import Params
from ipsec_vip.state import Record, StateDir
from lab.core import GATEWAY_CONF
from tests.vici_fakes import FakeCharon

VIP = "192.0.2.100"
OWN = """
ipsec-vip {
    rw {
        fallback_connections = own-to-vip, other-to-vip
    }
}
"""


@pytest.fixture
def bed(tmp_path, monkeypatch):
    charon = FakeCharon(tmp_path / "charon.vici")
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40} + OWN)
    os.chmod(conf, 0o600)
    held = {"value": True}
    monkeypatch.setattr(vipmod, "held", lambda vip, interface=None: held["value"])
    spawned: list[Record] = []
    monkeypatch.setattr(handoff, "spawn_sweeper", lambda record, instance, states: spawned.append(record))

    class Bed:
        pass

    b = Bed()
    b.charon, b.held, b.spawned, b.conf = charon, held, spawned, conf
    b.states = StateDir(str(tmp_path / "rsc"))
    b.states.ensure()
    b.params = Params(vip=vipmod.parse_vip(VIP), config=str(conf), vici_socket=charon.uri, handoff="none")
    yield b
    charon.close()


def test_the_config_names_fallbacks_per_connection(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40} + OWN)
    cfg = swanctl.load(str(conf))
    assert cfg.fallbacks == {"rw": ["own-to-vip", "other-to-vip"]}
    sel = selection.select(cfg, vipmod.parse_vip(VIP))
    assert sel.fallbacks == ("own-to-vip", "other-to-vip")


@pytest.mark.parametrize(("section", "error"), [
    ("ipsec-vip {\n nope {\n fallback_connections = x\n }\n}\n", r"c\.conf:\d+: ipsec-vip\.nope: no such connection"),
    ("ipsec-vip {\n rw {\n fallback = x\n }\n}\n", r"ipsec-vip\.rw: only fallback_connections is known here"),
    ("ipsec-vip {\n fallback_connections = x\n}\n", r"ipsec-vip holds one section per connection"),
    ("ipsec-vip {\n rw {\n fallback_connections = rw\n }\n}\n", r"rw is a fallback connection of this VIP's own"),
])
def test_a_wrong_ipsec_vip_section_is_a_config_error(tmp_path, section, error):
    conf = tmp_path / "c.conf"
    conf.write_text(section + GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40})
    with pytest.raises(ConfigError, match=error):
        selection.select(swanctl.load(str(conf)), vipmod.parse_vip(VIP))


def test_after_a_secret_the_error_names_the_place_not_the_section(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40} + "ipsec-vip {\n nope {\n}\n}\n")
    with pytest.raises(ConfigError, match=r"c\.conf:\d+: a section of ipsec-vip: no such connection") as e:
        swanctl.load(str(conf))
    assert "nope" not in str(e.value)  # read after the secrets section: it could be part of a secret


def test_start_ends_them_and_records_them_with_the_parameters(bed):
    params = bed.params._replace(fallback_connections=("by-param", "own-to-vip"))
    control.start(params, "r1", bed.states, Deadline(10))
    assert [m["ike"] for m in bed.charon.sent("terminate")] == ["by-param", "own-to-vip", "other-to-vip"]
    record = bed.states.read("r1")
    assert record is not None and list(record.fallbacks) == ["by-param", "own-to-vip", "other-to-vip"]


def test_stop_after_the_vip_left_starts_them_without_being_told(bed):
    """`ipsec-vip down` (or the watch daemon) with no fallback option: the record has them."""
    control.start(bed.params, "r1", bed.states, Deadline(10))
    bed.held["value"] = False
    control.stop(bed.params, "r1", bed.states, Deadline(10))
    assert [m["child"] for m in bed.charon.sent("initiate")] == ["own-to-vip", "other-to-vip"]
    assert not bed.spawned


def test_stop_on_the_vip_holder_leaves_them_to_the_sweeper(bed):
    """Without a handoff, too: the sweeper exists to start them once the VIP has gone."""
    control.start(bed.params, "r1", bed.states, Deadline(10))
    control.stop(bed.params, "r1", bed.states, Deadline(10))
    assert not bed.charon.sent("initiate")  # the VIP is still here: its own tunnel would reach itself
    assert [list(r.fallbacks) for r in bed.spawned] == [["own-to-vip", "other-to-vip"]]


def test_the_sweeper_starts_them_once_the_vip_has_left(bed):
    record = Record(vip=VIP, config=str(bed.conf), conns=["rw"], vici_socket=bed.charon.uri, handoff="none",
                    fallbacks=["own-to-vip"])
    bed.held["value"] = False
    message = sweeper.sweep(record, "r1", bed.states, wait=5)
    assert message.endswith("initiated own-to-vip"), message
    assert [m["child"] for m in bed.charon.sent("initiate")] == ["own-to-vip"]


def test_the_sweeper_ends_at_once_when_started_again_while_the_vip_stays(bed):
    """A restart on the VIP holder (systemctl restart, an upgrade): the new start did the sweeper's
    job, and a fallback must stay down where the VIP is; the sweeper used to wait its 120 s."""
    record = Record(vip=VIP, config=str(bed.conf), conns=["rw"], vici_socket=bed.charon.uri, fallbacks=["own-to-vip"])
    bed.states.write("r1", record)
    t0 = time.monotonic()
    assert sweeper.sweep(record, "r1", bed.states, wait=5) == "started here again meanwhile: nothing to sweep"
    assert time.monotonic() - t0 < 1
    assert not bed.charon.sent("initiate")


def test_watch_configs_and_old_records_take_them():
    params, _ = watchconf.settings({"vip": VIP, "fallback_connections": "a, b"})
    assert params.fallback_connections == ("a", "b")
    old = Record.from_json({"vip": VIP, "config": "/x", "conns": ["rw"]})  # written before records had them
    assert list(old.fallbacks) == []


def test_kept_loaded_under_watch_they_follow_the_vip(bed):
    """start_without_vip under watch: loaded on every candidate node, so start ends the fallbacks
    only where the VIP is; vip_moved ends them when it comes, and when it goes terminates our SAs
    (nothing can be sent) and starts those not already up."""
    bed.held["value"] = False
    params = bed.params._replace(start_without_vip=True)
    control.start(params, "w", bed.states, Deadline(10), vip_coming=False)
    assert not bed.charon.sent("terminate")
    bed.held["value"] = True
    assert control.vip_moved(params, "w", bed.states, Deadline(10), True).endswith("ended own-to-vip, other-to-vip")
    assert [m["ike"] for m in bed.charon.sent("terminate")] == ["own-to-vip", "other-to-vip"]
    bed.charon.sas = {"rw": [{"uniqueid": "7", "state": "ESTABLISHED"}],
                      "other-to-vip": [{"uniqueid": "9", "state": "CONNECTING"}]}
    bed.held["value"] = False
    summary = control.vip_moved(params, "w", bed.states, Deadline(10), False)
    assert summary.startswith(f"VIP {VIP} left: connections stay loaded, terminated 1 SA(s)"), summary
    assert [m["child"] for m in bed.charon.sent("initiate")] == ["own-to-vip"]  # the other has an IKE_SA
    assert set(bed.charon.loaded) == {"rw"}
