"""Hand a VIP's clients over to the next holder before the VIP leaves (primitive mode).

A stock strongSwan client (no DPD, ``close_action = none``) does not notice that the VIP
moved: it keeps sending into its old SA. Told to go elsewhere it comes back at once, so
the order is what matters (measured, see docs/handoff.md):

1. :func:`drop`: this node silently drops new IKE_SA_INIT requests to the VIP
   (:mod:`ipsec_vip.droprule`), so a client's first retry is lost here, not refused;
2. the caller unloads the connections;
3. :func:`redirect`: an IKEv2 REDIRECT (RFC 5685, VICI ``redirect``) to the VIP for every
   IKE_SA of ours, one request per connection (charon queues a job per IKE_SA and runs the
   exchanges in parallel); we wait, inside the stop deadline, until each client answered, so
   none is still pending when the VIP leaves. The client retries to the VIP; its first
   retransmit (one ``retransmit_timeout`` later) reaches the next holder.

Whether a client announced REDIRECT support, and whether it answered, is not in ``list-sas``;
charon says it in its log ("client does not support IKE redirection", ``ike_sa.c``
``redirect()``; "parsed INFORMATIONAL response" after "redirecting peer to"), which VICI
streams as ``log`` events carrying the IKE_SA's name and unique id, and an SA that goes away
meanwhile raises ``ike-updown``: we listen to those while we redirect, decoding only the
lines that matter. Clients without support are left as without handoff (DPD), and counted.

After the handoff the old node keeps the redirected IKE_SAs (the client's DELETE goes to
the VIP, i.e. to the next holder) and so the pool's leases. They are terminated only where
the VIP is not held (sending from an address this node does not have reaches no one): by a
sweeper process (:func:`spawn_sweeper`, :mod:`ipsec_vip.sweeper`) as soon as the VIP has left, else by the
next start (:func:`clear_leftovers`), which also removes the drop rule first.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ipsec_vip import droprule, sas
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline
from ipsec_vip.errors import ViciCommandError, ViciError
from ipsec_vip.log import log, stderr_is_journal
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import EventListener, Vici

UNSUPPORTED = "client does not support IKE redirection"
_SENT = "redirecting peer to"
_ANSWERED = "parsed INFORMATIONAL response"
_REFUSED = "unable to redirect"
_WAIT_CAP = 10.0  # at most this long for the clients' answers (a vanished client never answers)


class Outcome(NamedTuple):
    """What happened to the IKE_SAs a handoff redirected."""

    sas: int
    answered: int  # REDIRECT acknowledged by the client (or its SA gone meanwhile)
    unsupported: int  # the client did not announce REDIRECT support
    refused: tuple[str, ...]  # charon's reasons for SAs it would not redirect
    unanswered: int  # sent, no answer within the time we had

    def summary(self, vip: str) -> str:
        parts = [f"redirected {self.answered} of {self.sas} IKE_SA(s) to {vip}"]
        if self.unsupported:
            parts.append(f"{self.unsupported} client(s) did not announce REDIRECT support and are left to "
                         "their DPD, as without handoff")
        if self.unanswered:
            parts.append(f"{self.unanswered} did not answer the REDIRECT in time")
        if self.refused:
            parts.append(f"charon would not redirect {len(self.refused)}: {self.refused[0]}")
        return "; ".join(parts)


def drop(record: Record) -> bool:
    """Put the VIP's drop rule in place; False (one warning, today's behaviour) when nft cannot."""
    try:
        droprule.add(vipmod.parse_vip(record.vip))
    except droprule.NftUnavailable as e:
        log.warning("no handoff for VIP %s: %s; clients are left to their DPD", record.vip, e)
        return False
    return True


def undrop(vip: str) -> bool:
    """Remove the VIP's drop rule if there is one; True if removed. nft trouble is logged, never raised:
    where nft is missing no rule of ours can exist."""
    try:
        return droprule.remove(vipmod.parse_vip(vip))
    except droprule.NftUnavailable as e:
        log.warning("cannot check for a drop rule of VIP %s: %s", vip, e)
        return False


class _Answers:
    """The clients' answers to a handoff's REDIRECTs, per IKE_SA of its connections, as charon's
    ``log`` and ``ike-updown`` events tell them (:meth:`on_event` runs in the listener's thread).
    Each event settles at most one IKE_SA, so following 1000 costs 1000 small steps, not a scan
    of every pending SA per look."""

    def __init__(self, conns: Sequence[str]) -> None:
        self._conns = set(conns)
        self._cond = threading.Condition()
        self._expected: set[int] = set()
        self._sent: set[int] = set()
        self.settled: dict[int, str] = {}  # IKE_SA -> "answered", "gone", "unsupported" or charon's refusal

    def expect(self, ids: set[int]) -> None:
        with self._cond:
            self._expected |= ids

    def forget(self, ids: set[int]) -> None:
        """Not waited for after all (charon refused to redirect them)."""
        with self._cond:
            self._expected -= ids
            for ike_id in ids:
                self.settled.pop(ike_id, None)

    def settle(self, ids: Iterable[int], outcome: str) -> None:
        with self._cond:
            for ike_id in ids:
                if ike_id in self._expected:
                    self.settled.setdefault(ike_id, outcome)
            self._cond.notify_all()

    def on_event(self, name: str, event: dict[str, Any]) -> None:
        if name == "ike-updown":  # an SA gone meanwhile needs no answer
            if event.get("up") != "yes":
                self.settle([int(b.get("uniqueid", 0)) for c, b in event.items()
                             if c in self._conns and isinstance(b, dict)], _GONE)
            return
        if event.get("ikesa-name") not in self._conns:
            return
        ike_id, msg = int(event.get("ikesa-uniqueid", 0)), str(event.get("msg", ""))
        if UNSUPPORTED in msg:
            self.settle([ike_id], _UNSUPPORTED)
        elif _REFUSED in msg:
            self.settle([ike_id], msg)
        elif _SENT in msg:
            with self._cond:
                self._sent.add(ike_id)
        elif _ANSWERED in msg and ike_id in self._sent:  # a DPD answered before the REDIRECT is no answer
            self.settle([ike_id], _ANSWERED_OK)

    def wait(self, until: float) -> None:
        """Until every expected IKE_SA is settled, or ``until`` (monotonic)."""
        with self._cond:
            while len(self.settled) < len(self._expected):
                left = until - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


_ANSWERED_OK, _GONE, _UNSUPPORTED = "answered", "gone", "unsupported"
_EVENTS_WANTED = {"log": tuple(m.encode() for m in (UNSUPPORTED, _SENT, _ANSWERED, _REFUSED))}


def redirect(v: Vici, record: Record, deadline: Deadline) -> Outcome:
    """REDIRECT every IKEv2 IKE_SA of the record's connections to the VIP; wait for the answers.

    One VICI ``redirect`` per connection (``ike`` selector): charon walks all its IKE_SAs for
    each request and queues a job per match, so one request per IKE_SA (``ike-id``) made 1000
    SAs a million checkouts, each waiting for SAs busy with earlier REDIRECTs."""
    answers = _Answers(record.conns)
    try:
        listener: EventListener | None = EventListener(v.uri, ("log", "ike-updown"), deadline.left(cap=2.0),
                                                       answers.on_event, _EVENTS_WANTED)
    except ViciError as e:
        log.warning("%s: cannot tell which clients support REDIRECT", e)
        listener = None
    try:
        by_conn: dict[str, set[int]] = {}
        for sa in sas.ours(v, record.conns, deadline.left()):
            if sa.version == "2":
                by_conn.setdefault(sa.conn, set()).add(int(sa.uniqueid))
        ids = set().union(*by_conn.values())
        if not ids:
            return Outcome(0, 0, 0, (), 0)
        answers.expect(ids)
        refused: list[str] = []
        sent: set[int] = set()
        for conn, conn_ids in sorted(by_conn.items()):
            try:
                v.request("redirect", {"ike": conn, "gateway": record.vip}, timeout=deadline.left())
                sent |= conn_ids
            except ViciCommandError as e:
                if "no matching" in e.errmsg:  # gone since the listing
                    answers.settle(conn_ids, _GONE)
                    sent |= conn_ids
                else:
                    answers.forget(conn_ids)
                    refused += [e.errmsg] * len(conn_ids)
        if listener is None:  # no way to tell: count what was sent
            return Outcome(len(ids), len(sent), 0, tuple(refused), 0)
        answers.wait(time.monotonic() + max(deadline.left(cap=_WAIT_CAP) - 1.0, 0.0))
    finally:
        if listener is not None:
            listener.close()
    outcomes = list(answers.settled.values())
    refused += [o for o in outcomes if o not in (_ANSWERED_OK, _GONE, _UNSUPPORTED)]
    return Outcome(len(ids), outcomes.count(_ANSWERED_OK) + outcomes.count(_GONE), outcomes.count(_UNSUPPORTED),
                   tuple(refused), len(sent) - len(outcomes))


def clear_leftovers(v: Vici, record: Record, timeout: float) -> int:
    """Terminate, silently, the IKE_SAs of the record's connections that outlived them (the
    connections are not loaded). Only where the VIP is not held: a DELETE from an address this
    node does not have cannot leave. Returns how many were terminated."""
    if vipmod.held(vipmod.parse_vip(record.vip), record.interface or None):
        return 0
    loaded = set(v.request("get-conns", timeout=timeout)["conns"])
    return sas.clear(v, [c for c in record.conns if c not in loaded], timeout)


class StopReport:
    """What :func:`during_stop` and its caller tell each other: ``active`` (a handoff is under way),
    ``sas`` set by the caller (the IKE_SAs its unload left up or terminated), ``summary`` set by the
    handoff (empty when there was none)."""

    def __init__(self) -> None:
        self.sas = 0
        self.summary = ""
        self.active = False  # the drop rule is in place: the SAs stay for the REDIRECT


@contextlib.contextmanager
def during_stop(v: Vici, record: Record, instance: str, states: StateDir, here: bool,
                deadline: Deadline) -> Iterator[StopReport]:
    """The handoff's part of a primitive's stop, around its unload (the one place control.stop calls):
    with the VIP here and handoff=redirect, the drop rule before, the REDIRECTs and the sweeper after
    (the sweeper also when there are fallback connections to start once the VIP has left); with the
    VIP gone, the removal of a rule left here before and, if a handoff was wanted, the
    note that none was possible. If the unload fails, nothing after it is done (the next start
    removes the rule)."""
    report = StopReport()
    report.active = here and record.handoff == "redirect" and drop(record)
    yield report
    if report.active:
        outcome = redirect(v, record, deadline)
        if outcome.unsupported:
            log.warning("%d client(s) of VIP %s did not announce REDIRECT support: left to their DPD",
                        outcome.unsupported, record.vip)
        report.summary = f"handoff: {outcome.summary(record.vip)}"
    if here and (report.active or record.fallbacks):
        spawn_sweeper(record, instance, states)
    elif not here:
        undrop(record.vip)  # left by an earlier handoff: the VIP has gone, so has its purpose
        if record.handoff == "redirect":
            (log.warning if report.sas else log.info)(
                "VIP %s had already left this node when stop ran: no handoff possible (%d IKE_SA(s)); "
                "order this resource's stop before the VIP's (docs/handoff.md)", record.vip, report.sas)


def spawn_sweeper(record: Record, instance: str, states: StateDir) -> None:
    """Start, detached, :mod:`ipsec_vip.sweeper` for this record: it outlives the stop action (whose
    return lets the VIP leave), holds no pipe of its caller's and ends by itself."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    data = json.dumps({"record": record._asdict(), "instance": instance, "states": states.path})
    try:
        # under systemd (the watch unit) its lines go to the unit's journal; else stdio holds no
        # pipe of the caller's (pacemaker-execd waits for its pipes to close)
        stderr = None if stderr_is_journal() else subprocess.DEVNULL
        subprocess.Popen([sys.executable, "-m", "ipsec_vip.sweeper", data], env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                         close_fds=True, cwd="/")
    except OSError as e:
        log.warning("cannot start the sweeper (%s): what the handoff left is cleared by the next start", e)
