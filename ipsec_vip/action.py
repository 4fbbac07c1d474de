"""What every action shares: the one deadline its external calls draw from, and the charon it
talks to (stop and monitor follow the record start wrote, whatever the parameters say now)."""

from __future__ import annotations

import time

from ipsec_vip.vici_session import DEFAULT_SOCKET

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import Protocol

    from ipsec_vip.state import Record

    class Where(Protocol):
        """Where the parameters say charon is (:class:`ipsec_vip.params.Params` is one)."""

        @property
        def vici_socket(self) -> str: ...

        @property
        def interface(self) -> str | None: ...


class Deadline:
    """Time left for the whole action, shared by every VICI call and every external command."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float = 10.0) -> float:
        return max(min(self.end - time.monotonic(), cap), 0.0)


def target(record: Record, params: Where | None) -> tuple[str, str | None]:
    """The VICI socket and interface start used for ``record``: stop and monitor talk to the
    charon that holds our connections, whatever the parameters say now (records written before
    these were kept fall back to the parameters)."""
    if record.vici_socket:
        return record.vici_socket, record.interface or None
    if params is not None:
        return params.vici_socket, params.interface
    return DEFAULT_SOCKET, None
