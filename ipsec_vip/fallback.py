"""Fallback connections: a node's own tunnel to a VIP (e.g. a mesh node's ``mesh-NET-to-vip``),
loaded by other means, that must be up while this node does not hold the VIP and down while it
does (a node that initiates to its own VIP builds an IKE_SA with itself; after the VIP moves away
that SA never comes back, and its traffic to the VIP leaves in clear).

Start terminates them (the VIP is about to arrive, or is here); stop, once the VIP is gone,
initiates them without waiting: their retries (keyingtries = 0) reach the next holder.
"""

from __future__ import annotations

from ipsec_vip.errors import ViciCommandError
from ipsec_vip.log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from ipsec_vip.action import Deadline
    from ipsec_vip.vici_session import Vici


def _each(v: Vici, names: tuple[str, ...], command: str, message: dict[str, str], deadline: Deadline) -> None:
    for name in names:
        try:
            v.stream(command, "control-log", {**message, "ike": name} if command == "terminate"
                     else {**message, "child": name}, timeout=deadline.left())
        except ViciCommandError as e:
            log.info("fallback connection %s: %s", name, e.errmsg)


def taking_vip(v: Vici, names: tuple[str, ...], deadline: Deadline) -> None:
    """Terminate the fallback connections' IKE_SAs, established or still trying."""
    _each(v, names, "terminate", {"force": "yes", "timeout": "-1"}, deadline)


def left_vip(v: Vici, names: tuple[str, ...], deadline: Deadline) -> None:
    """Initiate the fallback connections that have no IKE_SA (another initiate would add a second
    CHILD_SA), not waiting for the outcome."""
    from ipsec_vip import sas

    have = {sa.conn for sa in sas.ours(v, names, deadline.left())} if names else set()
    _each(v, tuple(n for n in names if n not in have), "initiate", {"timeout": "-1", "init-limits": "no"}, deadline)
