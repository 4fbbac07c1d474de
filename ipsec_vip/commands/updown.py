"""``ipsec-vip up|down``: the agent's start and stop, by hand.

The state is kept under the instance name ``cli-<vip>``, so a later ``down``
undoes exactly what ``up`` loaded.
"""

from __future__ import annotations

import argparse

from ipsec_vip import control
from ipsec_vip.action import Deadline
from ipsec_vip.commands.common import add_fallback_option, add_handoff_option, add_vip_options, params_from
from ipsec_vip.state import StateDir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (("up", "load the VIP's connections into charon (the agent's start)"),
                       ("down", "unload them (the agent's stop)")):
        p = sub.add_parser(name, help=text, description=text)
        add_vip_options(p)
        add_fallback_option(p)
        if name == "up":  # down follows what up recorded
            add_handoff_option(p)
            p.add_argument("--start-without-vip", action="store_true",
                           help="load even though this node does not hold the VIP yet (the agent's "
                                "start_without_vip): add the VIP after up, so no client is refused meanwhile")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole operation (default 30)")
        p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    params = params_from(args)
    instance = f"cli-{params.vip}"
    deadline = Deadline(args.timeout)
    if args.command == "up":
        print(control.start(params, instance, StateDir(), deadline))
    else:
        print(control.stop(params, instance, StateDir(), deadline))
    return 0
