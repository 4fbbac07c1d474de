"""Stateful mode's standing (ipsec_vip.promotion): the promotion score, the sync digest and its
comparison, and the Pacemaker attributes drawing from the action's one deadline - a stop whose
attrd does not answer still unloads and returns within its timeout (issue 20 item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipsec_vip import agent, control, ocf, promotion
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline
from ipsec_vip.errors import OCF_RUNNING_PROMOTED, OCF_SUCCESS
from ipsec_vip.params import Params
from ipsec_vip.runner import Result
from ipsec_vip.sas import Child, IkeSa, Sync
from ipsec_vip.state import StateDir
from lab.core import GATEWAY_CONF, STATEFUL_GATEWAY_CONF
from tests.vici_fakes import FakeCharon

VIP = "192.0.2.199"


def test_promotion_scores_prefer_a_standby_in_sync():
    empty, synced = Sync(0, 0, 0), Sync(0, 3, 3)
    assert promotion.score_for(True, Sync(3, 0, 0)) > promotion.score_for(False, synced) > \
        promotion.score_for(False, empty) > 0
    assert promotion.score_for(False, Sync(0, 2, 0)) == promotion.score_for(False, empty)  # copies without CHILD_SAs
    assert synced.role == "standby" and Sync(3, 0, 0).role == "active" and empty.role == "empty"


def test_a_standby_is_out_of_sync_only_when_the_difference_lasts(tmp_path, monkeypatch):
    states = StateDir(str(tmp_path))
    now = [1000.0]
    monkeypatch.setattr(promotion.time, "time", lambda: now[0])
    assert promotion.in_sync(states, "vpn", "aaa", None)  # nothing published: no verdict
    assert promotion.in_sync(states, "vpn", "aaa", "aaa")
    assert promotion.in_sync(states, "vpn", "aaa", "bbb")  # a sync or a publish may be on its way
    now[0] += promotion.OUT_OF_SYNC_AFTER - 1
    assert promotion.in_sync(states, "vpn", "aaa", "bbb")
    now[0] += 2
    assert not promotion.in_sync(states, "vpn", "aaa", "bbb")
    assert promotion.in_sync(states, "vpn", "bbb", "bbb")  # caught up: the clock restarts
    now[0] += 100
    assert promotion.in_sync(states, "vpn", "bbb", "ccc")


def test_churn_is_not_out_of_sync_but_a_cut_link_is(tmp_path, monkeypatch):
    """Clients connecting, leaving or rekeying change both digests between two snapshots: never a
    verdict while both move (a 10,000-client connect storm was repaired and resynced into a
    failure). A standby whose copies stay the same while the promoted node's digest moves
    receives no sync: out of sync after OUT_OF_SYNC_AFTER, as a lasting difference on a quiet fleet is."""
    states = StateDir(str(tmp_path))
    now = [1000.0]
    monkeypatch.setattr(promotion.time, "time", lambda: now[0])
    for k in range(20):  # 40 s of churn, sync alive: never equal, never out of sync
        assert promotion.in_sync(states, "vpn", f"mine{k}", f"peer{k}")
        now[0] += 2
    assert promotion.unsynced_since(states, "vpn") is not None
    for k in range(9):  # the link is cut: the copies freeze while the promoted node's digest moves
        assert promotion.in_sync(states, "vpn", "frozen", f"cut{k}") == (k * 2 < promotion.OUT_OF_SYNC_AFTER), k
        now[0] += 2
    assert promotion.in_sync(states, "vpn", "same", "same") and promotion.unsynced_since(states, "vpn") is None


def test_a_standbys_own_old_look_is_no_verdict(tmp_path, monkeypatch):
    """At 10,000 SAs the standby's own dear look stands (look_stands) while the promoted node's
    digest moves with a connect storm: its copies seemed not to change, "no sync arriving", and it
    was repaired. The difference counts only as far as its own looks saw it."""
    states = StateDir(str(tmp_path))
    now = [1000.0]
    monkeypatch.setattr(promotion.time, "time", lambda: now[0])
    for k in range(15):  # 30 s: the promoted node's digest moves, this node's look of t=1000 stands
        assert promotion.in_sync(states, "vpn", "old-look", f"peer{k}", mine_at=1000.0), k
        now[0] += 2
    assert promotion.in_sync(states, "vpn", "new-look", "peerX", mine_at=now[0])  # it moved: churn, start again
    verdicts = []
    for k in range(10):  # then a cut link: fresh looks, frozen copies
        now[0] += 2
        verdicts.append(promotion.in_sync(states, "vpn", "new-look", f"cut{k}", mine_at=now[0]))
    assert verdicts == [2 * (k + 1) < promotion.OUT_OF_SYNC_AFTER for k in range(10)]
    assert not all(verdicts)


def test_digest_is_the_same_for_an_sa_and_its_synced_copy():
    child = Child("7", "rw", "INSTALLED", "c1/c2")
    active = IkeSa("3", "rw", "ESTABLISHED", (child, Child("5", "rw", "DELETED", "o1/o2")), "i/r")
    copy = IkeSa("9", "rw", "PASSIVE", (Child("1", "rw", "INSTALLED", "c1/c2"),), "i/r")
    assert promotion.digest([active]) == promotion.digest([copy])
    stale = copy._replace(children=(Child("1", "rw", "INSTALLED", "o1/o2"),))
    assert promotion.digest([stale]) != promotion.digest([active])
    rekeying = active._replace(children=(child, Child("5", "rw", "REKEYED", "o1/o2")))
    copy_of_both = copy._replace(children=(*copy.children, Child("2", "rw", "INSTALLED", "o1/o2")))
    assert promotion.digest([rekeying]) == promotion.digest([copy_of_both])  # the 5 s before the old one goes


class Answers:
    """A runner answering attrd_updater's query from a table (the project's runner's interface)."""

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout
        self.calls: list[list[str]] = []

    def run(self, argv, *, timeout, stdin=None):
        self.calls.append(list(argv))
        return Result(0, self.stdout, "")


def test_peer_digest_reads_the_other_nodes_value():
    runner = Answers('name="ipsec-vip-sync-vpn" host="gw1" value="mine"\n'
                     'name="ipsec-vip-sync-vpn" host="gw2" value="theirs"\n')
    assert promotion.Attributes("vpn:1", Deadline(5), runner).peer_digest("gw1") == "theirs"
    assert runner.calls == [[promotion.ATTRD_UPDATER, "-n", "ipsec-vip-sync-vpn", "-Q", "-A"]]
    runner = Answers('name="ipsec-vip-sync-vpn" host="gw1" value=""\n')
    assert promotion.Attributes("vpn", Deadline(5), runner).peer_digest("gw1") is None


def test_an_attribute_draws_from_the_deadline_and_is_skipped_without_time():
    runner = Answers("")
    spent = Deadline(0.0)
    promotion.Attributes("vpn", spent, runner).set_score(None)
    assert runner.calls == []  # nothing left: not even started

    class Timed(Answers):
        def run(self, argv, *, timeout, stdin=None):
            self.timeout = timeout
            return super().run(argv, timeout=timeout, stdin=stdin)

    runner = Timed("")
    promotion.Attributes("vpn", Deadline(3.0), runner).publish("abc")
    assert 2.0 < runner.timeout <= 3.0  # what is left of the action's time, not a fixed 10 s


def fake_attrd_tools(tmp_path, monkeypatch, then: str = ""):
    """crm_attribute and attrd_updater that print nothing and run ``then``, run by the project's
    runner; each call leaves its argv in the returned file."""
    calls = tmp_path / "calls"
    calls.touch()
    for name in ("crm_attribute", "attrd_updater"):
        tool = tmp_path / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{then}\n')
        tool.chmod(0o755)
        monkeypatch.setattr(promotion, name.upper(), str(tool))
    return calls


@pytest.fixture
def hanging_attrd(tmp_path, monkeypatch):
    """crm_attribute and attrd_updater that never answer (attrd hung)."""
    return fake_attrd_tools(tmp_path, monkeypatch, then="exec sleep 600")


def test_stateful_stop_without_attrd_unloads_within_its_timeout(tmp_path, monkeypatch, capsys, hanging_attrd):
    """Stop of a started stateful instance that had published its digest, in a cluster whose
    attrd does not answer: the unload happens, the attributes get only what is left of the
    deadline (the second is skipped) and stop returns 0 inside its 4 s timeout. Before, each of
    the two commands had a fixed 10 s: about 20 s."""
    charon = FakeCharon(tmp_path / "charon.vici")
    try:
        conf = tmp_path / "swanctl.conf"
        conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40})
        conf.chmod(0o600)
        monkeypatch.setattr(vipmod, "held", lambda vip, interface=None: False)  # the VIP left first
        states = StateDir(str(tmp_path / "rsc"))
        states.ensure()
        params = Params(vip=vipmod.parse_vip(VIP), config=str(conf), vici_socket=charon.uri,
                        ha_fifo=str(tmp_path / "charon.ha"))
        control.start(params._replace(start_without_vip=True, handoff="none"), "vpn", states, Deadline(10))
        states.set_mark("vpn", promotion.DIGEST, "0123456789abcdef")  # published while promoted
        states.set_mark("vpn", promotion.SCORE, str(promotion.SCORE_IN_SYNC))
        charon.sas = {"rw": [{"uniqueid": "2", "state": "PASSIVE", "version": "2"}]}  # a synced copy
        env = {"OCF_RESOURCE_INSTANCE": "vpn", "HA_RSCTMP": str(tmp_path / "rsc"), "OCF_RESKEY_vip": VIP,
               "OCF_RESKEY_config": str(conf), "OCF_RESKEY_vici_socket": charon.uri,
               "OCF_RESKEY_ha_fifo": str(tmp_path / "charon.ha"), "OCF_RESKEY_CRM_meta_promotable": "true",
               "OCF_RESKEY_CRM_meta_on_node": "gw1", "OCF_RESKEY_CRM_meta_timeout": "4000"}
        monkeypatch.setattr(os, "environ", {**env, "PATH": "/usr/bin:/bin"})
        t0 = time.monotonic()
        rc = agent.main(["strongswan", "stop"], env)
        took = time.monotonic() - t0
    finally:
        charon.close()
    err = capsys.readouterr().err
    assert rc == 0, err
    assert took < 4.0, f"stop took {took:.1f}s against a 4 s timeout"
    assert charon.loaded == {} and not charon.keys and not charon.pools
    assert [s["uniqueid"] for s in charon.sas["rw"]] == ["2"]  # the passive copy stays for the next start
    assert not states.started("vpn")
    assert hanging_attrd.read_text().splitlines() == ["attrd_updater -n ipsec-vip-sync-vpn -D"]
    assert "did not finish within" in err and "crm_attribute --promotion=vpn -q skipped" in err, err
    assert states.mark("vpn", promotion.DIGEST) is None and states.mark("vpn", promotion.SCORE) is None


def started(tmp_path, charon: FakeCharon) -> tuple[Path, StateDir, Params]:
    """A primitive-style start (connections loaded, no VIP) of instance ``vpn`` on ``charon``, as a
    stateful start leaves it: the config, the state dir and the parameters."""
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40})
    conf.chmod(0o600)
    states = StateDir(str(tmp_path / "rsc"))
    states.ensure()
    params = Params(vip=vipmod.parse_vip(VIP), config=str(conf), vici_socket=charon.uri)
    control.start(params._replace(start_without_vip=True, handoff="none"), "vpn", states, Deadline(10))
    return conf, states, params


@pytest.mark.parametrize("trouble", ["none", "busy", "short"])
def test_a_standbys_repair_never_fails_its_monitor(tmp_path, monkeypatch, capsys, trouble):
    """A standby out of sync destroys its copies, then asks for a resync. One terminate per copy:
    at 3,600 copies on a busy charon the repair ran out of the monitor's time, the monitor failed
    and Pacemaker restarted the standby. Now a charon that refuses (busy) or a monitor too short to
    destroy them all (short) leaves a warning and the rest to the next monitor, with no resync
    asked for before the copies are gone - and the monitor succeeds."""
    from ipsec_vip import hasync

    charon = FakeCharon(tmp_path / "charon.vici")
    try:
        conf, states, _params = started(tmp_path, charon)
        charon.sas["rw"] = [{"uniqueid": str(n), "state": "PASSIVE", "initiator-spi": f"a{n}", "responder-spi": "b",
                             "child-sas": {}} for n in range(1, 4)]
        looked = int(time.time())
        calls = fake_attrd_tools(tmp_path, monkeypatch, then=(
            'case "$*" in *ipsec-vip-sync-vpn*-Q*) '
            f'echo \'name="ipsec-vip-sync-vpn" host="gw1" value="2:ddd:{looked}"\';; esac'))
        states.set_mark("vpn", promotion.UNSYNCED, f"{time.time() - 100!r} ddd before 0 1")  # long, not churn
        states.set_mark("vpn", promotion.EPISODE, "before")  # the copies changed since: syncs arrive
        monkeypatch.setattr(hasync, "sync_drops", lambda uri: None)
        if trouble == "busy":
            charon.refuse["terminate"] = "timed out"
        if trouble == "short":
            monkeypatch.setattr(agent, "REPAIR_SPARE", 3600.0)
        env = {"OCF_RESOURCE_INSTANCE": "vpn", "HA_RSCTMP": str(tmp_path / "rsc"), "OCF_RESKEY_vip": VIP,
               "OCF_RESKEY_config": str(conf), "OCF_RESKEY_vici_socket": charon.uri,
               "OCF_RESKEY_CRM_meta_promotable": "true", "OCF_RESKEY_CRM_meta_on_node": "gw2",
               "OCF_RESKEY_CRM_meta_interval": "3000", "OCF_RESKEY_CRM_meta_timeout": "20000"}
        monkeypatch.setattr(os, "environ", {**env, "PATH": "/usr/bin:/bin"})
        rc = agent.main(["strongswan", "monitor"], env)
    finally:
        charon.close()
    err = capsys.readouterr().err
    assert rc == 0, err
    asked = [c for c in calls.read_text().splitlines() if "ipsec-vip-resync-vpn -U" in c]
    left = len(charon.sas["rw"])
    if trouble == "none":
        assert left == 0 and len(asked) == 1 and "destroyed 3 copies and asked for a resync" in err, err
    else:
        assert left == 3 and asked == [], err
        assert ("its repair stopped" if trouble == "busy" else "destroyed 0 of its 3 copies") in err, err


def test_a_started_stateful_monitor_imports_no_typing(tmp_path, monkeypatch):
    """The stateful monitor's path holds like the primitive's (test_control): no typing, no parser,
    no selection, no runner for an instance run outside Pacemaker."""
    charon = FakeCharon(tmp_path / "charon.vici")
    try:
        conf, _states, _params = started(tmp_path, charon)
        env = {"OCF_RESKEY_vip": VIP, "OCF_RESKEY_config": str(conf), "OCF_RESKEY_vici_socket": charon.uri,
               "OCF_RESOURCE_INSTANCE": "vpn", "OCF_RESKEY_CRM_meta_promotable": "true",
               "OCF_RESKEY_CRM_meta_interval": "10000", "HA_RSCTMP": str(tmp_path / "rsc")}
        code = ("import os, sys; from ipsec_vip import agent; rc = agent.main(['strongswan', 'monitor'], os.environ); "
                "print(rc, *sorted(m for m in ('typing', 'ipsec_vip.swanctl', 'ipsec_vip.selection', "
                "'ipsec_vip.runner', 'subprocess') if m in sys.modules))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                           env={**env, "PATH": "/usr/bin:/bin"})
        assert p.stdout.split() == ["0"], p.stderr  # 0: started, not promoted, healthy
        assert charon.sent("list-sas"), "the stateful monitor did look at the SAs"
    finally:
        charon.close()


def test_the_stateful_monitor_lists_the_sas_only_when_its_last_look_is_stale(tmp_path, monkeypatch):
    """Between two full looks (every SA listed, the digest taken) a monitor asks charon only how
    many IKE_SAs it holds and the state of one of them; an SA more or less, a new published value on
    a standby, a role change, the segment changing hands, LOOK_EVERY seconds, a deep check or a
    probe each make it list again - and what a cheap look reports is what the last full one saw."""
    from ipsec_vip import hasync

    charon = FakeCharon(tmp_path / "charon.vici")
    now = [5000.0]
    monkeypatch.setattr(hasync.time, "time", lambda: now[0])
    try:
        _conf, states, params = started(tmp_path, charon)
        record = states.read("vpn")
        copy = {"uniqueid": "1", "state": "PASSIVE", "initiator-spi": "a1", "responder-spi": "b1",
                "child-sas": {"rw-1": {"uniqueid": "1", "name": "rw", "state": "INSTALLED", "spi-in": "c1",
                                       "spi-out": "d1"}}}
        charon.sas["rw"] = [copy]

        def full_looks():  # list-sas of every SA, not the one sample's
            return sum(1 for m in charon.sent("list-sas") if "ike-id" not in m)

        def lists(basis="p1", level=0, full=False):  # a monitor a second after the last
            now[0] += 1
            before = full_looks()
            status = hasync.check(params, "vpn", record, states, level, Deadline(10), basis, full=full)
            return full_looks() - before, status._replace(health=None)

        listed, first = lists()
        assert listed == 1 and first.sync == Sync(0, 1, 1) and first.digest and not first.promoted
        now[0] += 1
        assert lists() == (0, first)  # nothing changed: the count only
        charon.sas["rw"] = [copy, {**copy, "uniqueid": "2", "initiator-spi": "a2"}]
        listed, second = lists()
        assert listed == 1 and second.sync == Sync(0, 2, 2) and second.digest != first.digest
        assert lists()[0] == 0
        assert lists(basis="p2")[0] == 1  # the promoted node published something new
        assert lists(basis="p2", level=10)[0] == 1 and lists(basis="p2", full=True)[0] == 1
        now[0] += promotion.LOOK_EVERY
        assert lists(basis="p2")[0] == 1  # rekeys do not change the count: a full look now and then
        assert lists(basis="p2")[0] == 0
        charon.sas["rw"][0] = {**copy, "state": "ESTABLISHED"}  # the segment taken here behind our back
        listed, taken = lists(basis="p2")
        assert listed == 1 and taken.sync == Sync(1, 1, 1)
        charon.sas["rw"][0] = copy
        assert lists(basis="p2")[0] == 1
        promotion.set_promoted(states, "vpn", True)
        with pytest.raises(hasync.FailedPromoted):  # listed again at once: the copies are PASSIVE here
            hasync.check(params, "vpn", record, states, 0, Deadline(10), "p2")
        promotion.set_promoted(states, "vpn", False)
        promotion.Standing("vpn", states, "", Deadline(10)).repaired(None)  # copies destroyed: look again
        assert lists(basis="p2")[0] == 1
        last = lists(basis="p2", full=True)[1]
        charon.sas["rw"].append({**copy, "uniqueid": "3", "initiator-spi": "a3"})
        charon.refuse["list-sas"] = "too busy"  # a charon that cannot list in time, answering the rest
        assert lists(basis="p2")[1] == last  # the last look stands: no failed monitor
        promotion.keep_look(states, "vpn", None)  # none to fall back on (the role changed): a look not given
        listed, pending = lists(basis="p2")
        assert listed == 1 and pending.looked == 0 and pending.digest == "" and pending.sync == Sync(0, 0, 0)
        assert lists(basis="p2")[1].looked == 0  # tried again (it cost nothing): still none
        del charon.refuse["list-sas"]
        listed, given = lists(basis="p2")
        assert listed == 1 and given.looked and given.sync == Sync(0, 3, 3)
    finally:
        charon.close()


@pytest.mark.parametrize("role", ["promoted", "unpromoted"])
def test_the_first_monitor_after_a_role_change_on_a_charon_too_busy_to_list_succeeds(tmp_path, monkeypatch,
                                                                                      capsys, role):
    """After a move of 10,000 SAs the first monitor could not list them within 13 s and failed:
    Pacemaker recovered the instance and the fleet was lost. A charon that answers the health
    check but cannot list our SAs yet is not a failed monitor: nothing is published or judged
    until a look is given, and the promotion score stays as the promote or demote set it."""
    charon = FakeCharon(tmp_path / "charon.vici")
    try:
        conf, states, _params = started(tmp_path, charon)
        promotion.set_promoted(states, "vpn", role == "promoted")
        monkeypatch.setattr(vipmod, "held", lambda vip, interface: role == "promoted")
        charon.sas["rw"] = [{"uniqueid": "1", "state": "ESTABLISHED" if role == "promoted" else "PASSIVE",
                             "child-sas": {}}]
        charon.refuse["list-sas"] = "timed out"
        calls = fake_attrd_tools(tmp_path, monkeypatch)
        env = {"OCF_RESOURCE_INSTANCE": "vpn", "HA_RSCTMP": str(tmp_path / "rsc"), "OCF_RESKEY_vip": VIP,
               "OCF_RESKEY_config": str(conf), "OCF_RESKEY_vici_socket": charon.uri,
               "OCF_RESKEY_CRM_meta_promotable": "true", "OCF_RESKEY_CRM_meta_on_node": "gw1",
               "OCF_RESKEY_CRM_meta_interval": "3000", "OCF_RESKEY_CRM_meta_timeout": "20000"}
        monkeypatch.setattr(os, "environ", {**env, "PATH": "/usr/bin:/bin"})
        rc = agent.main(["strongswan", "monitor"], env)
    finally:
        charon.close()
    err = capsys.readouterr().err
    assert rc == (OCF_RUNNING_PROMOTED if role == "promoted" else OCF_SUCCESS), err
    assert "not judged until they are" in err, err
    changed = [c for c in calls.read_text().splitlines() if " -Q" not in c]
    assert changed == [], changed  # nothing published, no score set, no resync asked or answered


def test_a_dear_full_look_is_not_repeated_before_its_duty_cycle_allows():
    """A look that took 2 s stands 20 s whatever the count does; a role or segment change still
    calls for a new one at once; a cheap look (0.05 s) follows the count as before."""
    dear = promotion.Look(100.0, False, 10000, "p", Sync(0, 10000, 10000), "d", "7:PASSIVE", 2.0)
    assert promotion.look_stands(dear, False, 10001, "q", "7:PASSIVE", 119.0)
    assert not promotion.look_stands(dear, False, 10001, "p", "7:PASSIVE", 121.0)
    assert not promotion.look_stands(dear, True, 10000, "p", "7:PASSIVE", 101.0)
    assert not promotion.look_stands(dear, False, 10000, "p", "7:ESTABLISHED", 101.0)
    cheap = dear._replace(cost=0.05)
    assert not promotion.look_stands(cheap, False, 10001, "p", "7:PASSIVE", 101.0)
    assert promotion.look_stands(cheap, False, 10000, "p", "7:PASSIVE", 101.0)
    # a sample charon did not tell in time: no change within the duty cycle (busy charons, at every
    # monitor, were asked for a full look they could not give), a full look after it
    assert promotion.look_stands(dear, False, 10001, "q", "?", 119.0)
    assert not promotion.look_stands(dear, False, 10000, "p", "?", 121.0)
    assert not promotion.look_stands(cheap, False, 10000, "p", "?", 101.0)
    # a full look given up after 11 s at t=200 (the last one given at t=100) is not tried again before t=310
    failed = dear._replace(cost=11.0, tried=200.0)
    assert promotion.look_stands(failed, False, 10001, "q", "?", 309.0)
    assert not promotion.look_stands(failed, False, 10001, "q", "?", 311.0)


class Attrd:
    """attrd for two nodes in memory: each node's runner answers attrd_updater (-U/-D for itself,
    -Q -A for all) and records crm_attribute's promotion scores."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.scores: dict[str, str | None] = {}

    def node(self, name: str) -> object:
        attrd = self

        class Runner:
            def run(self, argv, *, timeout, stdin=None):
                if argv[0] == promotion.CRM_ATTRIBUTE:
                    attrd.scores[name] = None if "-D" in argv else argv[argv.index("-v") + 1]
                    return Result(0, "", "")
                attr = argv[argv.index("-n") + 1]
                if "-U" in argv:
                    attrd.values[(attr, name)] = argv[argv.index("-U") + 1]
                elif "-D" in argv:
                    attrd.values.pop((attr, name), None)
                out = "".join(f'name="{a}" host="{h}" value="{v}"\n' for (a, h), v in attrd.values.items() if a == attr)
                return Result(0, out, "")

        return Runner()


def pair(tmp_path) -> tuple[Attrd, promotion.Standing, promotion.Standing]:
    """One attrd, and the standings of gw1's and gw2's instances in it."""
    attrd = Attrd()
    active = promotion.Standing("vpn:0", StateDir(str(tmp_path / "gw1")), "gw1", Deadline(30), attrd.node("gw1"))
    standby = promotion.Standing("vpn:1", StateDir(str(tmp_path / "gw2")), "gw2", Deadline(30), attrd.node("gw2"))
    return attrd, active, standby


def test_an_out_of_sync_standby_is_repaired_only_where_a_resync_can_work(tmp_path, monkeypatch):
    """The standby whose copies differ for long keeps a lower score and is never failed; it asks
    for a resync (the promoted node answers once per request) only when its sync socket dropped
    datagrams or syncs arrive again after a cut, at most MAX_REPAIRS times in a row; in sync again,
    it withdraws the request and its score comes back."""
    now = [1000.0]
    monkeypatch.setattr(promotion.time, "time", lambda: now[0])
    attrd, active, standby = pair(tmp_path)
    standby.started(drops=0)
    assert active.monitored(True, Sync(3, 0, 0), "ddd", now[0]) == promotion.Verdict()
    assert attrd.values[("ipsec-vip-sync-vpn", "gw1")] == "3:ddd:1000"

    copies = Sync(0, 2, 2)
    v = standby.monitored(False, copies, "old")
    assert not v.out_of_sync and v.peer == promotion.Published(3, "ddd", 1000)
    now[0] += promotion.OUT_OF_SYNC_AFTER + 1
    active.monitored(True, Sync(3, 0, 0), "ddd", now[0] - 2)  # the promoted node keeps looking
    v = standby.monitored(False, copies, "old")
    assert v.out_of_sync and attrd.scores["gw2"] == str(promotion.SCORE_OUT_OF_SYNC)
    assert not standby.should_repair("old", drops=0)  # a cut link: nothing arrives, nothing dropped
    assert standby.should_repair("old", drops=7)  # the sync arrives but overflowed the socket
    assert standby.should_repair("newer", drops=0)  # syncs arrive again

    for n in range(1, promotion.MAX_REPAIRS + 1):
        standby.repaired(drops=7)
        token = attrd.values[("ipsec-vip-resync-vpn", "gw2")]
        v = active.monitored(True, Sync(3, 0, 0), "ddd")
        assert v.resync_for == token  # the promoted node writes *1 once for it
        active.served(token)
        assert active.monitored(True, Sync(3, 0, 0), "ddd").resync_for == ""
        assert standby.repairs() == n
        now[0] += 1
    assert not standby.should_repair("other", drops=99)  # MAX_REPAIRS in a row: reported from now on

    v = standby.monitored(False, Sync(0, 3, 3), "ddd")
    assert v.synced_again and standby.repairs() == 0
    assert ("ipsec-vip-resync-vpn", "gw2") not in attrd.values
    assert attrd.scores["gw2"] == str(promotion.SCORE_IN_SYNC)
    assert not standby.monitored(False, Sync(0, 3, 3), "ddd").synced_again  # once


def test_a_busy_promoted_nodes_old_digest_is_no_verdict(tmp_path, monkeypatch):
    """At 10,000 SAs in a connect storm the promoted node's full look is dear and not repeated
    (look_stands), so it publishes nothing new while the standby's copies move with the sync: the
    standby was judged out of sync, repaired and restarted. An old digest says nothing; once the
    promoted node looks again, a lasting difference counts again."""
    now = [1000.0]
    monkeypatch.setattr(promotion.time, "time", lambda: now[0])
    _, active, standby = pair(tmp_path)
    standby.started(drops=0)
    active.monitored(True, Sync(3000, 0, 0), "busy", now[0])
    for k in range(20):  # 40 s: copies arrive, the promoted node's look stays the one of t=1000
        assert not standby.monitored(False, Sync(0, 3000 + k, 3000 + k), f"copies{k}").out_of_sync, k
        now[0] += 2
    verdicts = []
    for _ in range(10):  # it looks again each monitor, quiet; the copies stay short of it
        active.monitored(True, Sync(3000, 0, 0), "quiet", now[0])
        verdicts.append(standby.monitored(False, Sync(0, 2990, 2990), "short").out_of_sync)
        now[0] += 2
    assert verdicts == [False] * 8 + [True] * 2


def test_published_values_from_older_agents_still_compare():
    assert promotion.parse_published("12:abc:1700") == promotion.Published(12, "abc", 1700)
    assert promotion.parse_published("12:abc") == promotion.Published(12, "abc")
    assert promotion.parse_published("abc") == promotion.Published(None, "abc")
    assert promotion.parse_published("") is None


@pytest.fixture
def recording_attrd(tmp_path, monkeypatch):
    """crm_attribute and attrd_updater that answer at once with nothing."""
    return fake_attrd_tools(tmp_path, monkeypatch)


@pytest.mark.parametrize("notify", [None, "false", "true"])
def test_a_stateful_start_asks_for_a_resync_only_without_notifications(tmp_path, monkeypatch, recording_attrd,
                                                                       notify):
    """A clone without notify=true: nobody tells the promoted node that this instance started, so
    its start asks for the resync itself (a fresh token in the resync attribute) - not as a
    repair. With notify=true the post-start notify resends and start must not ask too: 5.9.8
    would hold two copies of every SA."""
    from ipsec_vip import hasync

    conf = tmp_path / "swanctl.conf"
    conf.write_text(STATEFUL_GATEWAY_CONF % {"vip": VIP, "psk": "p" * 40})
    conf.chmod(0o600)
    monkeypatch.setattr(hasync, "start", lambda params, instance, states, deadline: "loaded")
    monkeypatch.setattr(hasync, "sync_drops", lambda uri: 0)
    monkeypatch.setenv("HA_RSCTMP", str(tmp_path / "rsc"))
    environ = {"OCF_RESOURCE_INSTANCE": "vpn:1", "OCF_RESKEY_vip": VIP, "OCF_RESKEY_config": str(conf),
               "OCF_RESKEY_CRM_meta_promotable": "true", "OCF_RESKEY_CRM_meta_on_node": "gw2",
               **({"OCF_RESKEY_CRM_meta_notify": notify} if notify else {})}
    env = ocf.Env.from_environ(["strongswan", "start"], environ)
    assert agent.start(env) == 0
    states = StateDir(str(tmp_path / "rsc"))
    asks = [c for c in recording_attrd.read_text().splitlines() if "ipsec-vip-resync-vpn" in c]
    if notify == "true":
        assert asks == [] and states.mark("vpn:1", promotion.ASKED) is None
    else:
        token = states.mark("vpn:1", promotion.ASKED)
        assert token and asks == [f"attrd_updater -n ipsec-vip-resync-vpn -U {token} -p"]
    standing = promotion.Standing("vpn:1", states, "gw2", Deadline(5))
    assert standing.repairs() == 0 and standing.should_repair("x", drops=0) is False
    assert "crm_attribute --promotion=vpn -q -v 5" in recording_attrd.read_text().splitlines()


def test_a_start_request_is_answered_once_and_not_counted_as_a_repair(tmp_path, monkeypatch):
    """The standby that started asks; the promoted node's next monitor answers with one resync; the
    standby in sync withdraws the request, with no repair counted. A node promoted after the
    request that took over no SA (a fresh cluster) owes it nothing: every SA since reached the
    standby by the live sync, and a ``*1`` would give each a second copy; one that took SAs over
    (the standby restarted while nothing was promoted) answers it."""
    now = [1000.0]
    monkeypatch.setattr(promotion.time, "time", lambda: now[0])
    attrd, active, standby = pair(tmp_path)

    # a fresh cluster: both start and ask, one is promoted holding nothing
    active.started(drops=0, ask=True)
    standby.started(drops=0, ask=True)
    now[0] += 1
    active.promoted(held=0)
    assert ("ipsec-vip-resync-vpn", "gw1") not in attrd.values  # its own request withdrawn
    assert active.monitored(True, Sync(2, 0, 0), "ddd").resync_for == ""  # clients came since: synced live
    v = standby.monitored(False, Sync(0, 2, 2), "ddd")
    assert v.synced_again and standby.repairs() == 0
    assert ("ipsec-vip-resync-vpn", "gw2") not in attrd.values

    # the standby restarted while nothing was promoted; the node promoted next took SAs over
    active.demoted()
    standby.stopped()
    standby.started(drops=0, ask=True)
    token = attrd.values[("ipsec-vip-resync-vpn", "gw2")]
    now[0] += 1
    active.promoted(held=2)
    assert active.monitored(True, Sync(2, 0, 0), "ddd").resync_for == token
    active.served(token)
    assert active.monitored(True, Sync(2, 0, 0), "ddd").resync_for == ""  # once

    # an unstandby: the standby starts while the peer is promoted
    standby.stopped()
    now[0] += 1
    standby.started(drops=0, ask=True)
    token = attrd.values[("ipsec-vip-resync-vpn", "gw2")]
    assert standby.monitored(False, Sync(0, 0, 0), "empty").peer == promotion.Published(2, "ddd", 0)
    assert active.monitored(True, Sync(2, 0, 0), "ddd").resync_for == token
    active.served(token)
    v = standby.monitored(False, Sync(0, 2, 2), "ddd")
    assert v.synced_again and standby.repairs() == 0 and ("ipsec-vip-resync-vpn", "gw2") not in attrd.values
