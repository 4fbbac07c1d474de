"""Stateful mode without Pacemaker: the watch daemon keeps the ``ha`` plugin's segment where the VIP is.

Pacemaker's promotable clone decides who is active and tells the active node when its peer
started. Under keepalived nobody does, so the two watch daemons tell each other, over the sync
link: every second (and at once after a change) each sends the other one datagram (UDP
:data:`PORT`, from ``ha_local`` to ``ha_remote``) saying what it is (:class:`Announce`). From
that and the VIP, each daemon decides alone (:func:`role_action`), and acts with the promotable
clone's own code (``ipsec_vip.hasync``):

- the VIP arrives: promote (take the segment, rekey every synced CHILD_SA);
- the VIP leaves: demote (drop the segment; the SAs stay as PASSIVE copies);
- a node whose connections were just loaded into an empty charon (a daemon start, a charon
  restart, a reboot) asks for its state (``want``); the active node resends it (``*1``) once
  per request, as the clone's post-start notification does, and says so (``resynced``). Only
  state that existed before the request can be missing there (later SAs reach it by the live
  sync), so a node that held no state when the request came only says so: a resend would give
  the peer a second copy of every SA (5.9.8 makes one per sync);
- a standby whose copies differ from the active node's digest for 15 s (it missed syncs: the
  sync link was cut) destroys them and asks again.

Split brain (both nodes hold the VIP: VRRP adverts lost between them). The segment goes to the
node that took the VIP last (its promote's ``+1`` takes the segment from the other, as the
plugin does): after a VRRP split the clients' ARP caches point to the newer holder, whose
gratuitous ARPs came last. The other node *yields*: it holds the VIP with PASSIVE copies and
does not take the segment back while the peer says it holds the VIP and is active. When the
split heals keepalived leaves the VIP on one node: if that is the yielded one, the peer's
demote gives the segment back and the yielded node promotes (rekey). A node without the VIP
never keeps the segment, so after the heal each SA is active on one node only. If the sync link
is cut too (a full partition), the peer is silent and both stay active until the heal; the loser
demotes when its VIP leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable

from ipsec_vip import control, hasync, promotion, sas
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline, target
from ipsec_vip.errors import ConfigError, IpsecVipError
from ipsec_vip.params import Params
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import Vici
from ipsec_vip.watch import Watcher, unwatch
from ipsec_vip.watchconf import DEFAULT_CHECK_INTERVAL, HaLink

log = logging.getLogger("ipsec-vip")

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import NamedTuple

    from ipsec_vip.vip import IPAddress
else:
    from ipsec_vip.tuples import NamedTuple

PORT = 4511  # the plugin's sync uses 4510
HELLO = 1.0  # seconds between announcements
PEER_TIMEOUT = 3.5  # a peer silent this long is gone (dead, or the sync link cut)
_MAX = 1024  # an announcement is ~250 bytes


class Announce(NamedTuple):
    """What one daemon tells the other."""

    id: str  # this load of our connections into this charon (a new one after every fresh start)
    held: bool  # the VIP is here
    active: bool  # promoted: the segment is ours
    since: float = 0.0  # when we promoted (wall clock; the later holder keeps the segment)
    digest: str = ""  # our active SAs (promoted) or our passive copies (standby), hasync.digest
    want: str = ""  # our id while we need the active node's state (we started empty)
    resynced: str = ""  # the peer id we last resent our state to (active node)


def new_id() -> str:
    return os.urandom(6).hex()


def encode(vip: str, a: Announce) -> bytes:
    return json.dumps({"ipsec-vip": 1, "vip": vip, **a._asdict()}, separators=(",", ":")).encode()


def decode(vip: str, data: bytes) -> Announce | None:
    """An announcement about our VIP, or None (anything else is ignored: not ours, not valid)."""
    try:
        m = json.loads(data.decode())
        if not isinstance(m, dict) or m.get("ipsec-vip") != 1 or m.get("vip") != vip:
            return None
        return Announce(id=str(m["id"]), held=m["held"] is True, active=m["active"] is True,
                        since=float(m.get("since", 0.0)), digest=str(m.get("digest", "")),
                        want=str(m.get("want", "")), resynced=str(m.get("resynced", "")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def role_action(held: bool, promoted: bool, yielded: bool, taken: bool, peer: Announce | None,
                since: float, me: str) -> str:
    """What to do about the segment: ``promote``, ``demote``, ``yield`` (stop counting as active
    without touching the segment: the peer took it), ``unyield`` (forget a yield: the VIP left)
    or ``""`` (nothing). ``taken``: our SAs turned PASSIVE while promoted; ``peer``: the peer's
    last announcement if it is alive; ``since``/``me``: our promote time and id (ties)."""
    if not held:
        return "demote" if promoted else ("unyield" if yielded else "")
    peer_serves = peer is not None and peer.held and peer.active
    if promoted:
        if taken or (peer_serves and peer is not None and (peer.since, peer.id) > (since, me)):
            return "yield"
        return ""
    if yielded:
        return "" if peer_serves else "promote"
    return "promote"


def resync_due(promoted: bool, peer: Announce | None, resynced: str) -> bool:
    """The active node resends its state to a peer that asks for it, once per request."""
    return promoted and peer is not None and bool(peer.want) and peer.want != resynced and not peer.active


class Channel:
    """The datagram socket on the sync link: bound to ``local``, talking to ``remote`` only."""

    def __init__(self, local: IPAddress, remote: IPAddress, port: int = PORT) -> None:
        family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
        self.remote = (str(remote), port)
        self._failed = False
        try:
            self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        except OSError as e:
            raise ConfigError(f"cannot open a UDP socket for the sync link: {e.strerror or e} (under systemd "
                              "the unit must allow AF_INET/AF_INET6, docs/keepalived.md)") from None
        try:
            self.sock.bind((str(local), port))
        except OSError as e:
            self.sock.close()
            raise ConfigError(f"cannot listen on the sync link at {local} port {port}: {e.strerror or e} "
                              "(ha_local must be this node's address there; one stateful watcher per node)") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        """Best effort: a lost announcement is repeated a second later."""
        try:
            self.sock.sendto(data, self.remote)
        except OSError as e:
            if not self._failed:
                log.warning("cannot send to the peer's watch daemon at %s: %s (under systemd: IPAddressAllow=%s, "
                            "docs/keepalived.md)", self.remote[0], e.strerror or e, self.remote[0])
            self._failed = True
        else:
            self._failed = False

    def receive(self) -> list[bytes]:
        """Every datagram waiting from the peer's address and port (others are dropped)."""
        out: list[bytes] = []
        while True:
            try:
                data, addr = self.sock.recvfrom(_MAX)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            if (socket.inet_pton(self.sock.family, addr[0]), addr[1]) == (
                    socket.inet_pton(self.sock.family, self.remote[0]), self.remote[1]):
                out.append(data)


class PeerView:
    """The peer's last announcement and when it came (monotonic)."""

    def __init__(self) -> None:
        self.last: Announce | None = None
        self.at = 0.0

    def heard(self, a: Announce, now: float | None = None) -> None:
        self.last, self.at = a, time.monotonic() if now is None else now

    def alive(self, now: float) -> Announce | None:
        """The last announcement if the peer spoke within PEER_TIMEOUT, else None."""
        return self.last if self.last is not None and now - self.at < PEER_TIMEOUT else None


# --------------------------------------------------------------------------- the daemon
LOOK = 2.0  # seconds between looks at our SAs (the digest, a segment taken by the peer)
RESYNCED = "resynced"  # the state-dir mark: the peer's id we last resent our state to


def _material(a: Announce) -> tuple[object, ...]:
    """What in an announcement calls for a decision at once (the digest can wait for the next look)."""
    return a.id, a.held, a.active, a.since, a.want, a.resynced


class StatefulWatcher(Watcher):
    """The watch daemon in stateful mode: connections loaded on both nodes whatever the VIP does,
    the segment kept where the VIP is, the peer resynced once per start (module docstring)."""

    def __init__(self, params: Params, instance: str, states: StateDir, link: HaLink,
                 check_interval: float = DEFAULT_CHECK_INTERVAL, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(params._replace(start_without_vip=True, handoff="none"), instance, states,
                         check_interval=check_interval, timeout=timeout, clock=clock)
        self.link = link
        self._channel: Channel | None = None
        self._peer = PeerView()
        self._id = ""  # this load's id
        self._want = False  # we started empty and wait for the active node's state
        self._yielded = False  # we hold the VIP but the peer serves (split brain)
        self._since = 0.0  # wall clock of our last promote
        self._digest = ""
        self._taken = False  # our SAs turned PASSIVE while promoted
        self._copies = 0
        self._held_sas = 0  # IKE_SAs of ours here, active or passive, at the last look
        self._owed: tuple[str, bool] = ("", False)  # the peer's request, and whether we held state then
        self._look_at = 0.0
        self._hello_at = 0.0
        self._sent: Announce | None = None

    # ---------------------------------------------------------------- the sync link
    def _open(self) -> None:
        self._channel = Channel(self.link.local, self.link.remote)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._heard)

    def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            unwatch(channel.sock)

    def _heard(self) -> None:
        if self._channel is None:
            return
        for data in self._channel.receive():
            a = decode(str(self.params.vip), data)
            if a is None:
                continue
            now = self._clock()
            before = self._peer.alive(now)
            if before is None:
                log.info("the peer's watch daemon answers on the sync link (%s)", self.link.remote)
            self._peer.heard(a, now)
            if before is None or _material(before) != _material(a):
                self._poke()

    def _due(self) -> float | None:
        return self._hello_at

    def _announce(self, held: bool, promoted: bool, now: float) -> None:
        a = Announce(id=self._id, held=held, active=promoted, since=self._since if promoted else 0.0,
                     digest=self._digest, want=self._id if self._want and not promoted else "",
                     resynced=self.states.mark(self.instance, RESYNCED) or "")
        if self._channel is not None and (a != self._sent or now >= self._hello_at):
            self._channel.send(encode(str(self.params.vip), a))
            self._sent, self._hello_at = a, now + HELLO

    # ---------------------------------------------------------------- decisions
    def _needs_charon(self, held: bool) -> bool:
        return True  # the connections are loaded on both nodes

    def _act(self, held: bool, deadline: Deadline) -> bool:
        now = self._clock()
        record = self.states.read(self.instance)
        if record is None or (self._verify and not self._healthy(record, deadline)):
            log.info("%s", hasync.start(self.params, self.instance, self.states, deadline))
            record = self.states.read(self.instance)
            if record is None:
                raise IpsecVipError("start recorded nothing")
            self._fresh(record, held, deadline)
        if self._peer.alive(now) is None and self._peer.last is not None and self._peer.at > 0:
            log.warning("the peer's watch daemon is silent on the sync link for %.1fs (peer down, or the "
                        "sync link cut)", now - self._peer.at)
            self._peer.at = 0.0  # said once
        self._segment(held, record, deadline, now)
        promoted = self._promoted()
        self._announce(held, promoted, now)
        return True

    def _promoted(self) -> bool:
        return promotion.promoted(self.states, self.instance)

    def _fresh(self, record: Record, held: bool, deadline: Deadline) -> None:
        """Our connections were just loaded (the start destroyed the copies an earlier stop left): a
        new id; without the VIP, end a promotion left over and ask the active node for its state."""
        self._id, self._yielded, self._look_at = new_id(), False, 0.0
        self.states.set_mark(self.instance, promotion.UNSYNCED, None)
        if held:
            self._want = False
            return
        if self._promoted():  # the VIP left while no daemon watched: these copies predate the request
            log.info("%s", hasync.demote(self.params, self.instance, self.states, deadline))
            gone = hasync.destroy_copies(target(record, self.params)[0], record.conns, deadline)
            log.info("%d passive copies destroyed (every start begins empty)", gone)
        self._want = True
        log.info("asking the peer for its state (load %s)", self._id)

    def _look(self, record: Record, promoted: bool, deadline: Deadline, now: float) -> None:
        with Vici(target(record, self.params)[0], timeout=deadline.left()) as v:
            seen = sas.ours(v, record.conns, deadline.left())
        self._taken = promoted and any(s.passive for s in seen)
        self._digest = promotion.digest([s for s in seen if s.passive != promoted])
        self._copies = sum(1 for s in seen if s.passive)
        self._held_sas = len(seen)
        self._look_at = now + LOOK

    def _segment(self, held: bool, record: Record, deadline: Deadline, now: float) -> None:
        promoted = self._promoted()
        if now >= self._look_at:
            self._look(record, promoted, deadline, now)
        peer = self._peer.alive(now)
        action = role_action(held, promoted, self._yielded, self._taken, peer, self._since, self._id)
        if action == "promote":
            if self._want and peer is not None and peer.active:
                log.warning("taking over VIP %s before the peer resent its state: its clients' SAs are not "
                            "here (they recover by their own means)", self.params.vip)
            log.info("%s", hasync.promote(self.params, self.instance, self.states, deadline)[0])
            self._since, self._yielded, self._want, self._taken, self._look_at = time.time(), False, False, False, 0.0
        elif action == "demote":
            log.info("%s", hasync.demote(self.params, self.instance, self.states, deadline))
            self._look_at = 0.0
        elif action == "yield":
            promotion.set_promoted(self.states, self.instance, False)  # the segment is the peer's already
            hasync.admit_new_clients(str(self.params.vip), False)  # the peer's pools serve them
            self._yielded, self._taken = True, False
            log.warning("split brain: VIP %s is held here and by the peer, which took the segment last; not "
                        "taking it back while the peer serves", self.params.vip)
        elif action == "unyield":
            self._yielded = False
            log.info("split brain over: VIP %s left this node", self.params.vip)
        promoted = self._promoted()
        if peer is not None and peer.want and peer.want != self._owed[0]:
            # what the peer lacks is what existed before it loaded: state held here when it asked
            self._owed = (peer.want, promoted or self._held_sas > 0)
        if peer is not None and resync_due(promoted, peer, self.states.mark(self.instance, RESYNCED) or ""):
            if self._owed[1]:
                log.info("%s (the peer's load %s)", hasync.resync_peer(self.params, self.instance, self.states,
                                                                        deadline), peer.want)
            else:
                log.info("nothing to resend to the peer (load %s): it asked when this node held no state, so "
                         "every SA since reached it by the live sync", peer.want)
            self.states.set_mark(self.instance, RESYNCED, peer.want)
        if peer is None or promoted:
            return
        if self._want and peer.resynced == self._id:
            self._want = False
            log.info("the peer resent its state (load %s)", self._id)
        elif peer.active and not self._want and not promotion.in_sync(self.states, self.instance, self._digest,
                                                                   peer.digest or None):
            gone = hasync.destroy_copies(target(record, self.params)[0], record.conns, deadline)
            self.states.set_mark(self.instance, promotion.UNSYNCED, None)
            self._id, self._want = new_id(), True
            log.warning("standby not in sync with the active node for %.0fs (sync link cut?): %d passive copies "
                        "destroyed, asking for its state again (load %s)", promotion.OUT_OF_SYNC_AFTER, gone, self._id)

    def _describe(self, held: bool, loaded: bool) -> str:
        if self._yielded:
            return f"split brain: VIP {self.params.vip} held here and by the peer, which serves"
        if self._promoted():
            return f"VIP {self.params.vip} held here, segment active"
        state = "waiting for the active node's state" if self._want else f"{self._copies} passive copies"
        return f"VIP {self.params.vip} {'held here' if held else 'not held here'}, standby ({state})"

    def _final_stop(self, deadline: Deadline) -> str:
        """Where the VIP is held and the segment ours, the SAs stay active (the peer has no VIP: a
        demote would leave them served by nobody) and only the connections are unloaded; elsewhere
        the clone's stop (demote, unload; the next start destroys the passive copies)."""
        if self._promoted() and vipmod.held(self.params.vip, self.params.interface):
            log.warning("VIP %s is held here: the segment and the clients' SAs stay active here until it moves "
                        "(stop keepalived first to move them)", self.params.vip)
            return control.stop(self.params, self.instance, self.states, deadline)
        return hasync.stop(self.params, self.instance, self.states, deadline)
