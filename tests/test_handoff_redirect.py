"""handoff.redirect against an in-memory charon (tests/vici_fakes.FakeCharon), as any user: what
it asks charon, and how it reads each client's answer from the events charon raises.

The real exchange (stock and follow_redirects=no clients, charon refusing) is in
tests/test_handoff.py; at fleet size in lab/fleet.py and bench/fleet.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from ipsec_vip import handoff
from ipsec_vip.action import Deadline
from ipsec_vip.state import Record
from ipsec_vip.vici_session import Vici
from tests.vici_fakes import FakeCharon

VIP = "192.0.2.100"
Event = tuple[str, dict[str, Any]]


def sa(uid: int, version: str = "2") -> dict[str, Any]:
    return {"uniqueid": str(uid), "version": version, "state": "ESTABLISHED", "child-sas": {}}


def line(name: str, uid: str, msg: str) -> Event:
    return ("log", {"group": "IKE", "level": "1", "thread": "7", "ikesa-name": name, "ikesa-uniqueid": uid,
                    "msg": msg})


def stock_client(name: str, body: dict[str, Any]) -> list[Event]:
    """What charon logs for a client that follows the REDIRECT (charon 5.9.8's messages)."""
    uid = body["uniqueid"]
    return [line(name, uid, f"redirecting peer to {VIP}"),
            line(name, uid, "generating INFORMATIONAL request 4 [ N(REDIR) ]"),
            line(name, uid, "sending packet: from 192.0.2.100[4500] to 198.18.0.10[4500] (80 bytes)"),
            line(name, uid, "received packet: from 198.18.0.10[4500] to 192.0.2.100[4500] (80 bytes)"),
            line(name, uid, "parsed INFORMATIONAL response 4 [ ]")]


@pytest.fixture
def fake(tmp_path):
    c = FakeCharon(tmp_path / "charon.vici")
    yield c
    c.close()


def test_one_request_per_connection_however_many_sas(fake: FakeCharon) -> None:
    """charon walks every IKE_SA for each redirect request: one per IKE_SA (ike-id) made 1000
    clients a million checkouts. One per connection (ike name) redirects them all."""
    fake.sas = {"rw": [sa(i) for i in range(1, 1001)] + [sa(1001, version="1")], "other": [sa(2000), sa(2001)]}
    fake.redirected = stock_client
    record = Record(vip=VIP, config="/x", conns=["rw", "other", "idle"])
    with Vici(fake.uri) as v:
        outcome = handoff.redirect(v, record, Deadline(20))
    assert outcome == handoff.Outcome(1002, 1002, 0, (), 0)
    assert fake.sent("redirect") == [{"ike": "other", "gateway": VIP}, {"ike": "rw", "gateway": VIP}]


def test_each_clients_answer_is_read_from_charons_events(fake: FakeCharon) -> None:
    def clients(name: str, body: dict[str, Any]) -> list[Event]:
        uid = body["uniqueid"]
        if uid == "2":
            return [line(name, uid, "client does not support IKE redirection")]
        if uid == "3":  # its client deleted it meanwhile
            return [("ike-updown", {name: {"uniqueid": uid, "state": "DELETING"}})]
        if uid in ("4", "6"):  # a DPD answered just before is no answer to the REDIRECT, nor another SA's answer
            return [line(name, uid, "parsed INFORMATIONAL response 7 [ ]"),
                    line(name, uid, f"redirecting peer to {VIP}"),
                    line("elsewhere", uid, "parsed INFORMATIONAL response 1 [ ]")]
        if uid == "5":
            return [line(name, uid, "unable to redirect IKE_SA in state DELETING")]
        return stock_client(name, body)

    fake.sas = {"rw": [sa(i) for i in range(1, 7)]}
    fake.redirected = clients
    with Vici(fake.uri) as v:
        outcome = handoff.redirect(v, Record(vip=VIP, config="/x", conns=["rw"]), Deadline(2.5))
    assert outcome == handoff.Outcome(6, 2, 1, ("unable to redirect IKE_SA in state DELETING",), 2)


def test_charon_refusing_the_request_counts_every_sa_of_the_connection(fake: FakeCharon) -> None:
    fake.sas = {"rw": [sa(1), sa(2)]}
    fake.refuse["redirect"] = "refused by the test"
    with Vici(fake.uri) as v:
        outcome = handoff.redirect(v, Record(vip=VIP, config="/x", conns=["rw"]), Deadline(5))
    assert outcome == handoff.Outcome(2, 0, 0, ("refused by the test", "refused by the test"), 0)
