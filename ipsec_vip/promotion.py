"""A stateful instance's standing, in one place: its marks in the state dir and the Pacemaker
node attributes they mirror.

- ``promoted``: this node holds the segment (set by :mod:`ipsec_vip.hasync`'s promote, cleared
  by its demote and stop);
- the clone's promotion score (``crm_attribute --promotion``) and ``score``, the value last set
  (setting it costs a fork and a CIB round trip, so it is set only when it changes);
- the promoted node's sync digest (an attrd transient attribute) and ``digest``, the value
  last published; ``unsynced``: since when a standby's copies differ from it.

The agent asks :class:`Standing` after each action; only an instance run by Pacemaker (which
names the node) has attributes. Every command draws from the action's one deadline: with less
than :data:`MIN_LEFT` seconds left an attribute is skipped, with a warning, so a stop that runs
short of time still unloads and never overruns its timeout for an attribute (Pacemaker fences a
node whose stop times out; attrd that does not answer must not cost a node).
"""

from __future__ import annotations

import time

from ipsec_vip.errors import CommandError, IpsecVipError
from ipsec_vip.log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ipsec_vip.action import Deadline
    from ipsec_vip.runner import Result, Runner
    from ipsec_vip.sas import IkeSa, Sync
    from ipsec_vip.state import StateDir

CRM_ATTRIBUTE = "/usr/sbin/crm_attribute"
ATTRD_UPDATER = "/usr/sbin/attrd_updater"
MIN_LEFT = 0.5  # seconds: with less left, an attribute is skipped

PROMOTED = "promoted"  # the state-dir mark of a promoted instance
SCORE = "score"  # the state-dir mark caching the promotion score last set
UNSYNCED = "unsynced"  # the state-dir mark: since when (time.time()) the standby's copies differ
DIGEST = "digest"  # the state-dir mark: the digest the promoted node published last
OUT_OF_SYNC_AFTER = 15.0  # seconds a difference must last (a sync, or the next publish, takes a moment)

# Promotion scores: the promoted node keeps the role (with stickiness), a standby holding
# synced copies comes next, one without any stays promotable (no clients at all, or the
# only node left) but never beats a healthy node in sync.
SCORE_PROMOTED = 100
SCORE_IN_SYNC = 50
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


def in_sync(states: StateDir, instance: str, mine: str, peer: str | None) -> bool:
    """Compare the standby's copies with the promoted node's digest; a difference lasting
    OUT_OF_SYNC_AFTER seconds means the standby missed syncs (link down, peer's plugin gone)."""
    if peer is None or peer == mine:
        states.set_mark(instance, UNSYNCED, None)
        return True
    since = states.mark(instance, UNSYNCED)
    try:
        first = float(since) if since else None
    except ValueError:
        first = None
    if first is None:
        states.set_mark(instance, UNSYNCED, repr(time.time()))
        return True
    return time.time() - first < OUT_OF_SYNC_AFTER


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
        for line in (out or "").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            host, value = fields.get("host", "").strip('"'), fields.get("value", "").strip('"')
            if host and host != me and value:
                return value
        return None

    def _digest_name(self) -> str:
        return "ipsec-vip-sync-" + self.resource

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


# --------------------------------------------------------------------------- what the agent asks
class Standing:
    """The marks of ``instance`` in ``states`` and, where Pacemaker runs the action (``node``, the
    node's name, is not empty), the attributes that mirror them."""

    def __init__(self, instance: str, states: StateDir, node: str, deadline: Deadline,
                 runner: Runner | None = None) -> None:
        self.instance, self.states, self.node = instance, states, node
        self.attributes = Attributes(instance, deadline, runner)

    def started(self) -> None:
        self._score(SCORE_EMPTY)

    def promoted(self) -> None:
        self._score(SCORE_PROMOTED)

    def demoted(self) -> None:
        self._unpublish()
        self.states.set_mark(self.instance, UNSYNCED, None)  # the standby's comparison starts afresh
        self._score(SCORE_IN_SYNC)

    def stopped(self) -> None:
        """After the unload (which cleared the promoted mark): the other marks go, and the
        attributes when there is time left for them."""
        self._unpublish()
        self.states.set_mark(self.instance, UNSYNCED, None)
        self.states.set_mark(self.instance, SCORE, None)
        if self.node:
            self.attributes.set_score(None)

    def monitored(self, is_promoted: bool, sync: Sync, mine: str) -> None:
        """The promoted node publishes what it holds (``mine``); the standby compares its copies
        with it and fails (Pacemaker restarts it: the restart's resync repairs it) once they
        differ for long. Then the promotion score follows what this node holds."""
        if self.node:
            self._sync_check(is_promoted, mine)
        self._score(score_for(is_promoted, sync))

    def _sync_check(self, is_promoted: bool, mine: str) -> None:
        if is_promoted:
            self.states.set_mark(self.instance, UNSYNCED, None)  # a difference seen while standby is history
            if self.states.mark(self.instance, DIGEST) != mine:
                self.attributes.publish(mine)
                self.states.set_mark(self.instance, DIGEST, mine)
            return
        peer = self.attributes.peer_digest(self.node)
        if not in_sync(self.states, self.instance, mine, peer):
            raise IpsecVipError(f"standby not in sync with the promoted node for {OUT_OF_SYNC_AFTER:.0f}s "
                                "(sync link down?); a restart of this instance resyncs it")

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
