"""A stateful instance's standing, in one place: its marks in the state dir and the Pacemaker
node attributes they mirror.

- ``promoted``: this node holds the segment (set by :mod:`ipsec_vip.hasync`'s promote, cleared
  by its demote and stop);
- the clone's promotion score (``crm_attribute --promotion``) and ``score``, the value last set
  (setting it costs a fork and a CIB round trip, so it is set only when it changes);
- the promoted node's sync digest, SA count and when it looked (an attrd transient attribute,
  ``count:digest:time``) and ``digest``, the value last published; on a standby, ``unsynced``:
  since when its copies differ from it, and ``peer-look``: the promoted node's look time last
  seen and when it was first seen;
- ``look``: the monitor's last full look at our SAs (:class:`Look`), which the monitors until the
  next one reuse;
- a standby's repair of its copies: ``repairs`` (how many since it was last in sync),
  ``episode`` (its digest when it was found out of sync),
  ``sync-drops`` (its sync socket's drop count when it started, repaired or was last in sync),
  ``asked`` (the token of its resync request, an attrd attribute the promoted node answers
  with ``*1``, remembering it in ``served``).

The agent asks :class:`Standing` after each action; only an instance run by Pacemaker (which
names the node) has attributes. Every command draws from the action's one deadline: with less
than :data:`MIN_LEFT` seconds left an attribute is skipped, with a warning, so a stop that runs
short of time still unloads and never overruns its timeout for an attribute (Pacemaker fences a
node whose stop times out; attrd that does not answer must not cost a node).
"""

from __future__ import annotations

import time

from ipsec_vip.errors import CommandError
from ipsec_vip.log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NamedTuple

    from ipsec_vip.action import Deadline
    from ipsec_vip.runner import Result, Runner
    from ipsec_vip.sas import IkeSa, Sync
    from ipsec_vip.state import StateDir
else:
    from ipsec_vip.tuples import NamedTuple

CRM_ATTRIBUTE = "/usr/sbin/crm_attribute"
ATTRD_UPDATER = "/usr/sbin/attrd_updater"
MIN_LEFT = 0.5  # seconds: with less left, an attribute is skipped

PROMOTED = "promoted"  # the state-dir mark of a promoted instance
SCORE = "score"  # the state-dir mark caching the promotion score last set
UNSYNCED = "unsynced"  # the state-dir mark: since when (time.time()) the standby's copies differ (in_sync)
DIGEST = "digest"  # the state-dir mark: the digest the promoted node published last
PEER_LOOK = "peer-look"  # the state-dir mark: the promoted node's look time last seen, and since when (standby)
OUT_OF_SYNC_AFTER = 15.0  # seconds a difference must last (a sync, or the next publish, takes a moment)
REPAIRS, EPISODE, SYNC_DROPS = "repairs", "episode", "sync-drops"  # a standby's repair (above)
ASKED, SERVED = "asked", "served"  # the resync request a standby made, the last one the promoted node answered
MAX_REPAIRS = 3  # in a row without reaching sync: then the standby is reported, never repaired in a loop
LOOK = "look"  # the state-dir mark: the monitor's last full look (Look)
LOOK_EVERY = 8.0  # seconds a full look stands while nothing else says it is stale
LOOK_DUTY = 10  # a full look that took t seconds is not repeated within LOOK_DUTY * t (role changes aside)

# Promotion scores: the promoted node keeps the role (with stickiness), a standby holding
# synced copies comes next, one without any stays promotable (no clients at all, or the
# only node left) but never beats a healthy node in sync.
SCORE_PROMOTED = 100
SCORE_IN_SYNC = 50
SCORE_OUT_OF_SYNC = 10  # holds copies, but not all: beats an empty node, never one in sync
SCORE_EMPTY = 5

_GONE = ("DELETED", "DESTROYING")


# --------------------------------------------------------------------------- the promoted mark
def promoted(states: StateDir, instance: str) -> bool:
    return states.mark(instance, PROMOTED) is not None


def set_promoted(states: StateDir, instance: str, value: bool) -> None:
    states.set_mark(instance, PROMOTED, "1" if value else None)


# --------------------------------------------------------------------------- policies
def score_for(is_promoted: bool, sync: Sync) -> int:
    if is_promoted:
        return SCORE_PROMOTED
    return SCORE_IN_SYNC if sync.passive_ready else SCORE_EMPTY


def digest(sas: Sequence[IkeSa]) -> str:
    """What the active node holds, or its copy on the standby (same SPIs): a short hash.

    Children count in any state but DELETED/DESTROYING: after a rekey the active node lists the
    old CHILD_SA as REKEYED for 5 s (delete_rekeyed_delay) while the copy, which never sees state
    changes, lists it INSTALLED until the deletion is synced."""
    import hashlib

    items = sorted(f"{s.spis}:{','.join(sorted(c.spis for c in s.children if c.state not in _GONE))}"
                   for s in sas)
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def in_sync(states: StateDir, instance: str, mine: str, peer: str | None, peer_fresh: bool = True,
            mine_at: float | None = None) -> bool:
    """Compare the standby's copies with the promoted node's digest. A difference means the
    standby missed syncs (link down, peer's plugin gone, datagrams lost) only when it lasts
    OUT_OF_SYNC_AFTER seconds and is not churn: the two digests are snapshots taken up to a
    monitor interval apart, so while clients connect, leave or rekey they differ although every
    sync arrives. So the verdict needs the promoted node's digest to have stayed the same (a
    quiet fleet: a real difference), or this node's copies not to have changed at all while it
    moved (no sync arriving). Both moving is churn with the sync alive: the clock starts again.
    (A 10,000-client connect storm was judged out of sync, repaired and resynced without it.)
    So does a digest that is not ``peer_fresh``: the promoted node, too busy to look again
    (:func:`look_stands`), republished an old one, which says nothing of the sync. And ``mine``,
    when it comes from a look taken at ``mine_at`` and reused since, shows the difference only
    until then: it must have lasted OUT_OF_SYNC_AFTER by that look (at 10,000 SAs the standby's
    own dear look stood while the promoted node's moved: "no sync arriving", wrongly)."""
    if peer is None or peer == mine:
        states.set_mark(instance, UNSYNCED, None)
        return True
    now = time.time()
    fields = (states.mark(instance, UNSYNCED) or "").split(" ")
    try:
        since, first_peer, first_mine = float(fields[0]), fields[1], fields[2]
        peer_moved, mine_moved = fields[3] == "1", fields[4] == "1"
    except (ValueError, IndexError):  # none yet (or an older agent's mark): the difference starts now
        since, first_peer, first_mine, peer_moved, mine_moved = now, peer, mine, False, False
    peer_moved = peer_moved or peer != first_peer
    mine_moved = mine_moved or mine != first_mine
    if (peer_moved and mine_moved) or not peer_fresh:  # churn, the sync arriving (or no news): start again
        since, first_peer, first_mine, peer_moved, mine_moved = now, peer, mine, False, False
    states.set_mark(instance, UNSYNCED, f"{since!r} {first_peer} {first_mine} {int(peer_moved)} {int(mine_moved)}")
    return min(now, mine_at or now) - since < OUT_OF_SYNC_AFTER


def unsynced_since(states: StateDir, instance: str) -> float | None:
    """Since when (time.time()) this standby's copies have differed from the promoted node's, or None."""
    try:
        return float((states.mark(instance, UNSYNCED) or "").split(" ")[0])
    except ValueError:
        return None


class Look(NamedTuple):
    """A monitor's full look at our SAs: every IKE_SA listed and the digest taken. ``list-sas``
    of 1000 IKE_SAs costs charon and the agent about 90 ms, more than the rest of a monitor;
    the monitors in between ask charon only how many IKE_SAs it holds (VICI ``stats``, 1 ms)
    and reuse this one while it stands (:func:`look_stands`)."""

    at: float  # time.time() of the look
    promoted: bool
    total: int  # IKE_SAs in charon then, all connections (the count ``stats`` gives)
    basis: str  # standby: the value the promoted node had published then ("" none)
    sync: Sync
    digest: str
    sample: str = ""  # one of our IKE_SAs then, "uniqueid:state" ("" none): the segment's witness
    cost: float = 0.0  # seconds the listing took (or a failed one spent)
    tried: float = 0.0  # time.time() a full look was last tried, whether it was given or not (0: at)


def look_stands(look: Look, promoted: bool, total: int, basis: str, sample: str, now: float) -> bool:
    """A full look stands for LOOK_EVERY seconds while the role, charon's IKE_SA count, (on a
    standby) the promoted node's published value and the state of the look's sample SA are as
    they were: an SA added or gone, a promote or demote, a new digest to compare with, the
    segment taken or given up (all our SAs change state with it: one shows it), each calls for a
    new look at once. Rekeys, which the count does not show, wait for the next full look, at
    most LOOK_EVERY seconds: a standby is found out of sync only after OUT_OF_SYNC_AFTER anyway.
    A dear look (10,000 SAs on a busy charon took more than 10 s) is not repeated for LOOK_DUTY
    times what it cost, whatever the count does: only a role or segment change overrides that.
    A sample charon did not tell in time (``?``) is no change: on a busy charon it forced a full
    look at every monitor, each given up after 15 s and listed by charon all the same, until
    charon answered nothing at all."""
    age = now - look.at
    if look.promoted != promoted or sample not in (look.sample, "?") or age < 0:
        return False
    if now - (look.tried or look.at) < LOOK_DUTY * look.cost:  # a failed look counts from when it was tried
        return True
    return (look.total, look.basis, look.sample) == (total, basis, sample) and age < LOOK_EVERY


def last_look(states: StateDir, instance: str) -> Look | None:
    from ipsec_vip.sas import Sync

    fields = (states.mark(instance, LOOK) or "").split(" ")
    try:
        at, promoted, total, active, passive, ready, digest, sample, cost, tried, basis = fields
        return Look(float(at), promoted == "1", int(total), basis, Sync(int(active), int(passive), int(ready)),
                    digest, sample, float(cost), float(tried))
    except ValueError:  # none, or from another version: look again
        return None


def keep_look(states: StateDir, instance: str, look: Look | None) -> None:
    states.set_mark(instance, LOOK, None if look is None else " ".join(map(str, (
        repr(look.at), int(look.promoted), look.total, *look.sync, look.digest, look.sample, round(look.cost, 3),
        repr(look.tried), look.basis))))


class Published(NamedTuple):
    """What the promoted node published: its IKE_SAs of ours, its digest and when (its clock) it
    took them (None: from an older agent)."""

    sas: int | None
    digest: str
    looked: int | None = None


def parse_published(value: str | None) -> Published | None:
    if not value:
        return None
    fields = value.split(":")
    if len(fields) == 1:
        return Published(None, value)
    count, digest = (int(fields[0]) if fields[0].isdigit() else None), fields[1]
    return Published(count, digest, int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None)


def publishable(sync: Sync, mine: str, looked: float) -> str:
    """The promoted node's value: ``count:digest:time`` (time: of the look, whole seconds)."""
    return f"{sync.active}:{mine}:{int(looked)}"


class Verdict(NamedTuple):
    """What a monitor's look at the sync asks of the agent."""

    resync_for: str = ""  # promoted: a standby's request token, to answer with one ``*1``
    out_of_sync: bool = False  # standby: its copies differ from the promoted node's for long
    synced_again: bool = False  # standby: in sync again after a difference or a repair
    peer: Published | None = None  # standby: what the promoted node published


# --------------------------------------------------------------------------- Pacemaker's attributes
class Attributes:
    """The instance's node attributes, through the project's runner, within ``deadline``."""

    def __init__(self, instance: str, deadline: Deadline, runner: Runner | None = None) -> None:
        self.resource = instance.split(":", 1)[0]
        self.deadline = deadline
        self.runner = runner

    def set_score(self, score: int | None) -> None:
        """The clone's promotion score on this node; None deletes. A failure is logged."""
        r = self._run([CRM_ATTRIBUTE, f"--promotion={self.resource}", "-q",
                       *(["-D"] if score is None else ["-v", str(score)])])
        if r is not None and r.returncode != 0:
            log.warning("crm_attribute --promotion failed: %s", (r.stderr or r.stdout).strip()[:200])

    def publish(self, value: str | None) -> None:
        """The promoted node's digest (None deletes it). A failure is logged."""
        self._attrd(["-n", self._digest_name(), *(["-D"] if value is None else ["-U", value, "-p"])])

    def peer_digest(self, me: str) -> str | None:
        """The digest another node published, or None (none published, attrd not answering)."""
        out = self._attrd(["-n", self._digest_name(), "-Q", "-A"])
        return _other_value(out, me)

    def ask_resync(self, token: str | None) -> None:
        """This standby's request for a resync (None withdraws it)."""
        self._attrd(["-n", self._request_name(), *(["-D"] if token is None else ["-U", token, "-p"])])

    def resync_request(self, me: str) -> str | None:
        """Another node's pending resync request token, or None."""
        out = self._attrd(["-n", self._request_name(), "-Q", "-A"])
        return _other_value(out, me)

    def _digest_name(self) -> str:
        return "ipsec-vip-sync-" + self.resource

    def _request_name(self) -> str:
        return "ipsec-vip-resync-" + self.resource

    def _attrd(self, args: list[str]) -> str | None:
        """attrd_updater's output, None when it failed (logged, except a query's)."""
        r = self._run([ATTRD_UPDATER, *args])
        if r is None or r.returncode != 0:
            if r is not None and "-Q" not in args:
                log.warning("attrd_updater failed: %s", (r.stderr or r.stdout).strip()[:200])
            return None
        return r.stdout

    def _run(self, argv: list[str]) -> Result | None:
        """The project's runner (fixed environment: with the agent's OCF_RESKEY_CRM_meta_on_node,
        attrd_updater would answer a query for this node only, even with --all), given what is
        left of the deadline; None (logged) when too little is left or the command failed."""
        left = self.deadline.left()
        if left < MIN_LEFT:
            log.warning("%s %s skipped: %.1fs left of the action's time", argv[0].rsplit("/", 1)[-1],
                        " ".join(argv[1:3]), left)
            return None
        if self.runner is None:
            from ipsec_vip.runner import Runner  # typing: off the monitor's path until needed

            self.runner = Runner()
        try:
            return self.runner.run(argv, timeout=left)
        except CommandError as e:
            log.warning("%s", e)
            return None


def _other_value(out: str | None, me: str) -> str | None:
    """The value another node than ``me`` has in attrd_updater's ``-Q -A`` output, or None."""
    for line in (out or "").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        host, value = fields.get("host", "").strip('"'), fields.get("value", "").strip('"')
        if host and host != me and value:
            return value
    return None


# --------------------------------------------------------------------------- what the agent asks
class Standing:
    """The marks of ``instance`` in ``states`` and, where Pacemaker runs the action (``node``, the
    node's name, is not empty), the attributes that mirror them."""

    def __init__(self, instance: str, states: StateDir, node: str, deadline: Deadline,
                 runner: Runner | None = None) -> None:
        self.instance, self.states, self.node = instance, states, node
        self.attributes = Attributes(instance, deadline, runner)
        self._published: tuple[str | None] | None = None  # asked once per action

    def published(self) -> str:
        """The value the promoted node published, as this node sees it ("": none, or not run by
        Pacemaker); asked of attrd once per action."""
        if self._published is None:
            self._published = (self.attributes.peer_digest(self.node) if self.node else None,)
        return self._published[0] or ""

    def started(self, drops: int | None = None, ask: bool = False) -> None:
        """``drops``: the sync socket's drop count now, the baseline a later loss is seen against.
        ``ask``: this instance, started empty with its connections loaded, asks the promoted node
        for a resync (its next monitor answers; a node promoted later answers it too, unless it
        took nothing over). Not a repair: the repairs in a row start from zero."""
        if ask and self.node:
            for mark in (REPAIRS, EPISODE):
                self.states.set_mark(self.instance, mark, None)
            self._ask_resync()
        else:
            self._forget_repairs()
        self.states.set_mark(self.instance, SYNC_DROPS, None if drops is None else str(drops))
        keep_look(self.states, self.instance, None)
        self._score(SCORE_EMPTY)

    def promoted(self, held: int) -> None:
        """``held``: the IKE_SAs this node took over. None: every SA from now on reaches a started
        standby by the live sync, so a request it made before this promote is owed nothing (a
        ``*1`` would give a copy twice of any SA synced before it)."""
        self._forget_repairs()
        keep_look(self.states, self.instance, None)
        if held == 0 and self.node:
            token = self.attributes.resync_request(self.node)
            if token:
                self.served(token)
                log.info("a standby's resync request (%s) needs nothing resent: this node took over no SA", token)
        self._score(SCORE_PROMOTED)

    def demoted(self) -> None:
        self._unpublish()
        self.states.set_mark(self.instance, UNSYNCED, None)  # the standby's comparison starts afresh
        self.states.set_mark(self.instance, SERVED, None)
        keep_look(self.states, self.instance, None)
        self._score(SCORE_IN_SYNC)

    def stopped(self) -> None:
        """After the unload (which cleared the promoted mark): the other marks go, and the
        attributes when there is time left for them."""
        self._unpublish()
        self._forget_repairs()
        for mark in (UNSYNCED, SCORE, SERVED, SYNC_DROPS, LOOK, PEER_LOOK):
            self.states.set_mark(self.instance, mark, None)
        if self.node:
            self.attributes.set_score(None)

    def monitored(self, is_promoted: bool, sync: Sync, mine: str, looked: float = 0.0) -> Verdict:
        """The promoted node publishes what it holds (``mine``, how many IKE_SAs, and when it
        ``looked``) and says when a standby asked for a resync; the standby compares its copies
        with what was published. Then the promotion score follows what this node holds: a
        standby out of sync never beats one in sync."""
        verdict = self._sync_check(is_promoted, sync, mine, looked) if self.node else Verdict()
        self._published = None  # this monitor's answer used: the next one asks again
        score = score_for(is_promoted, sync)
        if verdict.out_of_sync and score == SCORE_IN_SYNC:
            score = SCORE_OUT_OF_SYNC
        self._score(score)
        return verdict

    def _sync_check(self, is_promoted: bool, sync: Sync, mine: str, looked: float) -> Verdict:
        if is_promoted:
            self.states.set_mark(self.instance, UNSYNCED, None)  # a difference seen while standby is history
            value = publishable(sync, mine, looked)
            if self.states.mark(self.instance, DIGEST) != value:
                self.attributes.publish(value)
                self.states.set_mark(self.instance, DIGEST, value)
            token = self.attributes.resync_request(self.node)
            return Verdict(resync_for=token if token and token != self.states.mark(self.instance, SERVED) else "")
        peer = parse_published(self.published())
        if not in_sync(self.states, self.instance, mine, peer.digest if peer else None, self._peer_fresh(peer),
                       looked or None):
            if self.states.mark(self.instance, EPISODE) is None:  # what it held when found out of sync
                self.states.set_mark(self.instance, EPISODE, mine)
            return Verdict(out_of_sync=True, peer=peer)
        if self.states.mark(self.instance, UNSYNCED) is not None:  # differs, not for long yet
            return Verdict(peer=peer)
        return Verdict(synced_again=self._forget_repairs(), peer=peer)

    def _peer_fresh(self, peer: Published | None) -> bool:
        """Whether the promoted node looked at its SAs again within OUT_OF_SYNC_AFTER, by this
        node's clock (the two clocks are never compared): when its look time last changed."""
        if peer is None or peer.looked is None:
            return True
        now = time.time()
        last, _, since = (self.states.mark(self.instance, PEER_LOOK) or "").partition(" ")
        if last == str(peer.looked):
            try:
                return now - float(since) < OUT_OF_SYNC_AFTER
            except ValueError:
                pass
        self.states.set_mark(self.instance, PEER_LOOK, f"{peer.looked} {now!r}")  # a new look
        return True

    def should_repair(self, mine: str, drops: int | None) -> bool:
        """An out-of-sync standby repairs itself only where a resync can work: its sync socket
        dropped datagrams since it was last whole (the sync arrives, but not all of it), or its
        copies changed since it was found out of sync (syncs arrive again after a cut) - and at most
        MAX_REPAIRS times in a row. A cut link changes nothing here: the copies are kept and the
        standby reported, not emptied for a resync that cannot arrive."""
        repairs = int(self.states.mark(self.instance, REPAIRS) or 0)
        if repairs >= MAX_REPAIRS:
            return False
        base = self.states.mark(self.instance, SYNC_DROPS)
        lost = drops is not None and base is not None and drops > int(base)
        episode = self.states.mark(self.instance, EPISODE)
        return lost or (episode is not None and episode != mine)

    def repaired(self, drops: int | None) -> None:
        """After the standby destroyed its copies: ask the promoted node for a resync."""
        repairs = int(self.states.mark(self.instance, REPAIRS) or 0) + 1
        self._ask_resync()
        self.states.set_mark(self.instance, REPAIRS, str(repairs))
        self.states.set_mark(self.instance, EPISODE, None)
        self.states.set_mark(self.instance, UNSYNCED, None)  # the resync gets its OUT_OF_SYNC_AFTER too
        keep_look(self.states, self.instance, None)  # the copies were just destroyed
        self.states.set_mark(self.instance, SYNC_DROPS, None if drops is None else str(drops))

    def _ask_resync(self) -> None:
        """A fresh request (the promoted node answers each token once), remembered to withdraw."""
        token = f"{time.time():.3f}"
        self.attributes.ask_resync(token)
        self.states.set_mark(self.instance, ASKED, token)

    def served(self, token: str) -> None:
        self.states.set_mark(self.instance, SERVED, token)

    def synced(self, drops: int | None) -> None:
        """In sync again: the drops so far are history."""
        self.states.set_mark(self.instance, SYNC_DROPS, None if drops is None else str(drops))

    def repairs(self) -> int:
        return int(self.states.mark(self.instance, REPAIRS) or 0)

    def _forget_repairs(self) -> bool:
        """Clear a standby's repair marks and withdraw its request; True if there was any."""
        had = [m for m in (REPAIRS, EPISODE, ASKED) if self.states.mark(self.instance, m) is not None]
        if self.states.mark(self.instance, ASKED) is not None and self.node:
            self.attributes.ask_resync(None)
        for mark in had:
            self.states.set_mark(self.instance, mark, None)
        return bool(had)

    def _unpublish(self) -> None:
        if self.states.mark(self.instance, DIGEST) is not None:
            if self.node:
                self.attributes.publish(None)
            self.states.set_mark(self.instance, DIGEST, None)

    def _score(self, score: int) -> None:
        """Set the promotion score if it changed."""
        if not self.node or self.states.mark(self.instance, SCORE) == str(score):
            return
        self.attributes.set_score(score)
        self.states.set_mark(self.instance, SCORE, str(score))
