"""Hand a VIP's clients over to the next holder before the VIP leaves (primitive mode).

A stock strongSwan client (no DPD, ``close_action = none``) does not notice that the VIP
moved: it keeps sending into its old SA. Told to go elsewhere it comes back at once, so
the order is what matters (measured, see docs/handoff.md):

1. :func:`drop`: this node silently drops new IKE_SA_INIT requests to the VIP
   (:mod:`ipsec_vip.droprule`), so a client's first retry is lost here, not refused;
2. the caller unloads the connections;
3. :func:`redirect`: an IKEv2 REDIRECT (RFC 5685, VICI ``redirect``) to the VIP for every
   IKE_SA of ours, all queued at once (charon runs the exchanges in parallel); we wait,
   inside the stop deadline, until each client answered, so none is still pending when the
   VIP leaves. The client retries to the VIP; its first retransmit (one
   ``retransmit_timeout`` later) reaches the next holder.

Whether a client announced REDIRECT support is not in ``list-sas``; charon says it in its
log ("client does not support IKE redirection", ``ike_sa.c`` ``redirect()``), which VICI
streams as ``log`` events carrying the IKE_SA's unique id: we listen to those while we
redirect. Such clients are left as without handoff (DPD), and counted in the log.

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
import time
from collections.abc import Iterator
from typing import NamedTuple

from ipsec_vip import droprule, sas
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline
from ipsec_vip.errors import ViciCommandError, ViciError
from ipsec_vip.log import log, stderr_is_journal
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import LogListener, Vici

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


def _ids(v: Vici, record: Record, deadline: Deadline) -> set[int]:
    return {int(s.uniqueid) for s in sas.ours(v, record.conns, deadline.left()) if s.version == "2"}


def redirect(v: Vici, record: Record, deadline: Deadline) -> Outcome:
    """REDIRECT every IKEv2 IKE_SA of the record's connections to the VIP; wait for the answers."""
    ids = _ids(v, record, deadline)
    if not ids:
        return Outcome(0, 0, 0, (), 0)
    try:
        listener: LogListener | None = LogListener(v.uri, deadline.left(cap=2.0))
    except ViciError as e:
        log.warning("%s: cannot tell which clients support REDIRECT", e)
        listener = None
    refused: list[str] = []
    pending = set()
    try:
        for ike_id in ids:
            try:
                v.request("redirect", {"ike-id": str(ike_id), "gateway": record.vip}, timeout=deadline.left())
                pending.add(ike_id)
            except ViciCommandError as e:
                refused.append(e.errmsg)
        unsupported: set[int] = set()
        answered: set[int] = set()
        end = time.monotonic() + max(deadline.left(cap=_WAIT_CAP) - 1.0, 0.0)
        next_look = time.monotonic() + 0.5
        while pending and listener is not None:
            for ike_id in list(pending):
                lines = listener.of(ike_id)
                if any(UNSUPPORTED in line for line in lines):
                    unsupported.add(ike_id)
                elif any(_REFUSED in line for line in lines):
                    refused.append(next(line for line in lines if _REFUSED in line))
                elif any(_SENT in line for line in lines) and any(_ANSWERED in line for line in lines):
                    answered.add(ike_id)
                else:
                    continue
                pending.discard(ike_id)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(0.02)
            if time.monotonic() >= next_look:  # an SA gone meanwhile needs no answer
                next_look = time.monotonic() + 0.5
                gone = pending - {int(s.uniqueid) for s in sas.ours(v, record.conns, deadline.left())}
                answered |= gone
                pending -= gone
    finally:
        if listener is not None:
            listener.close()
    if listener is None:  # no way to tell: count what was sent
        return Outcome(len(ids), len(pending), 0, tuple(refused), 0)
    return Outcome(len(ids), len(answered), len(unsupported), tuple(refused), len(pending))


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
