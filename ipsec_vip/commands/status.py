"""``ipsec-vip status [--json]``: the VIPs of this node, their connections and SAs, charon's version
and uptime. Exit 0, or 1 when a charon does not answer."""

from __future__ import annotations

import argparse
import json

from ipsec_vip import status
from ipsec_vip.commands.common import add_vip_options, params_from
from ipsec_vip.state import StateDir
from ipsec_vip.watchconf import WATCH_DIR


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "the VIPs configured here: held?, connections loaded, SAs up; charon version and uptime"
    p = sub.add_parser("status", help=text, description=text + ". Without --vip: every resource started here "
                       f"and every watch config in {WATCH_DIR}.")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema in README)")
    add_vip_options(p, vip_required=False)
    p.add_argument("--watch-dir", default=WATCH_DIR, help=f"watch configs (default {WATCH_DIR})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per charon (default 5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    explicit = params_from(args) if args.vip else None
    found = status.targets(StateDir(), explicit, args.watch_dir, default_socket=args.vici_socket)
    rep = status.report(found, args.vici_socket, args.timeout)
    print(json.dumps(rep, indent=2, sort_keys=True) if args.json else status.render(rep))
    return 1 if status.unreachable(rep) else 0
