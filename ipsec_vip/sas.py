"""The IKE_SAs of our connections, as every caller needs them: list, terminate, rekey.

One decision on ``list-sas``: a *look* (monitor, status, a handoff's progress, stateful mode's
views) passes ``noblock``, so an IKE_SA that charon is working on at that moment is skipped
rather than waited for (a monitor never stalls behind a busy SA); :func:`clear`, which must
leave none of ours behind, lists without it and so also waits for the busy ones.

Terminating is always local and quiet: ``force`` (no DELETE exchange awaited), ``timeout -1``
(not waiting for the outcome), and an SA that vanished meanwhile ("no matching") is fine.
"""

from __future__ import annotations

from ipsec_vip.errors import IpsecVipError, ViciCommandError
from ipsec_vip.vici_session import Vici

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, NamedTuple
else:
    from ipsec_vip.tuples import NamedTuple

_REKEY_WORKERS = 8


class Child(NamedTuple):
    uniqueid: str
    name: str
    state: str
    spis: str = ""  # "in/out": the same on the active SA and its synced copy


class IkeSa(NamedTuple):
    """One IKE_SA of our connections as ``list-sas`` shows it."""

    uniqueid: str
    conn: str
    state: str
    children: tuple[Child, ...]
    spis: str = ""  # "initiator/responder"
    version: str = ""  # IKE version, "1" or "2"

    @property
    def passive(self) -> bool:
        return self.state == "PASSIVE"

    @property
    def installed(self) -> list[Child]:
        return [c for c in self.children if c.state == "INSTALLED"]


class Sync(NamedTuple):
    """What this node holds of our connections' state (stateful mode)."""

    active: int  # IKE_SAs this node serves (segment active here)
    passive: int  # synced copies waiting for a takeover
    passive_ready: int  # copies with an installed CHILD_SA (a takeover keeps their clients)

    @property
    def role(self) -> str:
        if self.active and not self.passive:
            return "active"
        if self.passive and not self.active:
            return "standby"
        return "mixed" if self.active else "empty"


def _parse(conn: str, body: dict[str, Any]) -> IkeSa:
    children = tuple(Child(str(c.get("uniqueid", "")), str(c.get("name", "")), str(c.get("state", "")),
                           f"{c.get('spi-in', '')}/{c.get('spi-out', '')}")
                     for c in (body.get("child-sas") or {}).values() if isinstance(c, dict))
    return IkeSa(str(body.get("uniqueid", "")), conn, str(body.get("state", "")), children,
                 f"{body.get('initiator-spi', '')}/{body.get('responder-spi', '')}", str(body.get("version", "")))


def _list(v: Vici, conns: Iterable[str], timeout: float, noblock: bool, ike_id: str = "") -> list[IkeSa]:
    names = set(conns)
    message = {**({"noblock": "yes"} if noblock else {}), **({"ike-id": ike_id} if ike_id else {})}
    return [_parse(conn, body)
            for event in v.stream("list-sas", "list-sa", message, timeout=timeout)
            for conn, body in event.items() if conn in names and isinstance(body, dict)]


def ours(v: Vici, conns: Iterable[str], timeout: float, ike_id: str = "") -> list[IkeSa]:
    """A look at the IKE_SAs (with their children) of the connections ``conns`` (``noblock``);
    ``ike_id``: only the one with that unique id."""
    return _list(v, conns, timeout, noblock=True, ike_id=ike_id)


def summary(sas: Sequence[IkeSa]) -> Sync:
    passive = [s for s in sas if s.passive]
    return Sync(active=len(sas) - len(passive), passive=len(passive),
                passive_ready=sum(1 for s in passive if s.installed))


def terminate(v: Vici, selector: dict[str, str], timeout: float) -> None:
    """Terminate one IKE_SA or CHILD_SA (``ike-id``/``child-id``) locally; one that vanished is fine."""
    try:
        v.stream("terminate", "control-log", {**selector, "force": "yes", "timeout": "-1"}, timeout=timeout)
    except ViciCommandError as e:
        if "no matching" not in e.errmsg:
            raise


def clear(v: Vici, conns: Iterable[str], timeout: float) -> int:
    """Terminate every IKE_SA of the connections ``conns``, busy ones too; returns how many."""
    sas = _list(v, conns, timeout, noblock=False)
    for sa in sas:
        terminate(v, {"ike-id": sa.uniqueid}, timeout)
    return len(sas)


def child_names(v: Vici, conns: Iterable[str], timeout: float) -> list[tuple[str, str]]:
    """(connection, child name) of every CHILD_SA config of the loaded connections ``conns``
    (``list-conns``: a few configs, however many SAs there are)."""
    names = set(conns)
    return sorted((conn, child) for event in v.stream("list-conns", "list-conn", {}, timeout=timeout)
                  for conn, body in event.items() if conn in names and isinstance(body, dict)
                  for child in (body.get("children") or {}))


def rekey_all(uri: str, pairs: Sequence[tuple[str, str]], seconds: float) -> int:
    """Rekey every CHILD_SA of each (connection, child name) in ``pairs``, concurrently; returns
    how many were queued.

    VICI ``rekey`` by child name queues one rekey job per matching CHILD_SA and charon's
    thread pool runs them in parallel; a ``child-id`` selector instead makes charon walk
    every IKE_SA for each call (1000 SAs: a million checkouts). So: one call per
    (connection, child name), those calls in parallel on their own VICI sessions. A child
    no longer installed (rekeyed, deleted) is skipped by charon's rekey itself.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not pairs:
        return 0

    def one(pair: tuple[str, str]) -> int:
        with Vici(uri, timeout=seconds) as v:
            try:
                return int(v.request("rekey", {"ike": pair[0], "child": pair[1]}, timeout=seconds).get("matches", 0))
            except ViciCommandError as e:
                if "no matching" in e.errmsg:
                    return 0
                raise IpsecVipError(f"charon refused to rekey CHILD_SAs {pair[1]} of {pair[0]}: {e.errmsg}; "
                                    "their clients recover only by their own means") from None

    with ThreadPoolExecutor(max_workers=min(_REKEY_WORKERS, len(pairs))) as pool:
        return sum(pool.map(one, pairs))
