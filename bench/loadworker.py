"""In-process load throughput of the library (run inside the bench namespace, which holds the VIP).

Usage: python -m bench.loadworker CONFIG VICI_URI RUNS RSCTMP -> JSON on stdout:
parse_ms (swanctl.load + select) and start_ms (control.start: parse, load, verify) per run,
each start undone by control.stop (untimed). The first run is the warm-up.
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import VIP
from ipsec_vip import control
from ipsec_vip.action import Deadline
from ipsec_vip.params import Params
from ipsec_vip.state import StateDir
from ipsec_vip.vip import parse_vip


def main(argv: list[str]) -> int:
    config, uri, runs, rsctmp = argv[1], argv[2], int(argv[3]), argv[4]
    params = Params(vip=parse_vip(VIP), config=config, vici_socket=uri)
    states = StateDir(rsctmp)
    parse_ms, start_ms, stop_ms = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        control.select(params)
        t1 = time.perf_counter()
        control.start(params, "load", states, Deadline(300))
        t2 = time.perf_counter()
        control.stop(params, "load", states, Deadline(300))
        t3 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1000)
        start_ms.append((t2 - t1) * 1000)
        stop_ms.append((t3 - t2) * 1000)
    json.dump({"parse_ms": parse_ms, "start_ms": start_ms, "stop_ms": stop_ms}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
