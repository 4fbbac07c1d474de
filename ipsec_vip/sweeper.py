"""The sweeper: a detached process a stop on the VIP holder leaves behind (``python -m
ipsec_vip.sweeper JSON``, started by :func:`ipsec_vip.handoff.spawn_sweeper`).

After a handoff the old holder keeps the redirected IKE_SAs and their pool leases, and its drop
rule; and its own fallback connections (its tunnel to the VIP, in a mesh) must wait until the VIP
has gone. Once the VIP has left this node, the sweeper terminates those SAs silently (a DELETE
from an address this node no longer has reaches no one), unloads the pools they held, removes
the drop rule and initiates the fallback connections - unless the instance was started here
again meanwhile (its start did all that, and a fallback stays down where the VIP is): then it
ends at once.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ipsec_vip import control, fallback, handoff
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline, target
from ipsec_vip.log import log
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import Vici

SWEEP_WAIT = 120.0  # the sweeper gives the VIP this long to leave


def sweep(record: Record, instance: str, states: StateDir, wait: float = SWEEP_WAIT) -> str:
    """Wait (up to ``wait`` s) for the VIP to leave, then clear what the stop left and start the
    fallback connections."""
    vip = vipmod.parse_vip(record.vip)
    end = time.monotonic() + wait
    again = "started here again meanwhile: nothing to sweep"
    while vipmod.held(vip, record.interface or None):
        if states.started(instance):
            return again
        if time.monotonic() >= end:
            return f"VIP {record.vip} still held {wait:.0f}s after the stop: leftovers stay until the next start"
        time.sleep(0.1)
    deadline = Deadline(30.0)
    with states.lock(deadline.left()):
        if states.started(instance):
            return again
        leftover = record._replace(secrets=[])  # stop unloaded the secrets already
        uri, _ = target(record, None)
        with Vici(uri, timeout=deadline.left()) as v:
            n = control.unload(v, leftover, states.others(instance), deadline, terminate=True)
            fallback.left_vip(v, tuple(record.fallbacks), deadline)
        removed = handoff.undrop(record.vip)
    return (f"VIP {record.vip} has left: terminated {n} IKE_SA(s) the stop left (nothing sent)"
            + (", drop rule removed" if removed else "")
            + (f", initiated {', '.join(record.fallbacks)}" if record.fallbacks else ""))


def main(argv: list[str]) -> int:
    """The process: ``argv[1]`` is the JSON :func:`ipsec_vip.handoff.spawn_sweeper` passes."""
    from ipsec_vip import ocf
    from ipsec_vip.errors import IpsecVipError

    data = json.loads(argv[1])
    ocf.setup_logging(data["instance"], os.environ)
    record = Record.from_json(data["record"])
    states = StateDir(os.path.dirname(data["states"]))
    try:
        log.info("%s", sweep(record, data["instance"], states))
    except IpsecVipError as e:
        log.warning("sweep after handoff: %s; the next start clears what is left", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
