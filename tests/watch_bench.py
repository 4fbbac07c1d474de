"""Reaction time of ``ipsec-vip watch``: address event -> connections loaded/unloaded in charon.

``measure(rounds)`` starts a charon and a watcher in a namespace of their own, adds and
removes the VIP ``rounds`` times with ``ip addr`` and polls charon's ``get-conns``
(one VICI session, ~0.2 ms a call) until the change shows. A round's time runs from
just after ``ip`` returned (the address exists then) to the first ``get-conns`` that
shows the change; ``ip_ms`` is what the ``ip`` process itself took, the most the
true figure can be larger by. Run as root: ``python -m tests.watch_bench [ROUNDS]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import core as lab
from lab.watch import Watch, conn_conf, watch_args

VIP = "192.0.2.100"


def _until(session: Any, want: bool, limit: float = 10.0) -> float:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if bool(session.get_conns()["conns"]) == want:
            return time.monotonic()
        time.sleep(0.0005)
    raise TimeoutError("the watcher did not react within 10 s")


def measure(rounds: int = 20) -> dict[str, list[float]]:
    """Seconds from each VIP add (remove) to the connection being loaded (unloaded)."""
    lab.clean_leftovers()
    charon = lab.Charon.start("wbench")
    out: dict[str, list[float]] = {"load": [], "unload": [], "ip_ms": []}
    with tempfile.TemporaryDirectory(prefix=lab.PREFIX) as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        conf = d / "swanctl.conf"
        conf.write_text(conn_conf({"bench": VIP}))
        w = Watch(charon.netns, watch_args(charon, VIP, conf, d / "state"), d)
        try:
            w.ready()
            with charon.vici() as s:
                for _ in range(rounds):
                    for action, want, key in (("add", True, "load"), ("del", False, "unload")):
                        before = time.monotonic()
                        lab.run(lab.IP, "-n", charon.netns, "addr", action, f"{VIP}/32", "dev", "lo")
                        after = time.monotonic()
                        out[key].append(_until(s, want) - after)
                        out["ip_ms"].append((after - before) * 1000)
                        time.sleep(0.05)
            if w.terminate() != 0:
                raise RuntimeError(f"watcher did not exit 0:\n{w.log()}")
        finally:
            w.close()
            charon.stop()
    return out


def summary(result: dict[str, list[float]]) -> str:
    def ms(xs: list[float]) -> str:
        xs = sorted(xs)
        return (f"median {statistics.median(xs) * 1000:.1f} ms, p90 {xs[int(len(xs) * 0.9) - 1] * 1000:.1f} ms, "
                f"max {xs[-1] * 1000:.1f} ms")

    return (f"VIP added -> loaded:     {ms(result['load'])}\n"
            f"VIP removed -> unloaded: {ms(result['unload'])}\n"
            f"(ip addr itself: median {statistics.median(result['ip_ms']):.1f} ms, not included)")


if __name__ == "__main__":
    print(summary(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
