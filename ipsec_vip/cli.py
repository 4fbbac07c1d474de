"""The ``ipsec-vip`` command: what the agent does, by hand.

``up`` and ``down`` run the agent's start and stop for one VIP and exit with
the agent's codes. The state is kept under the instance name ``cli-<vip>``, so a
later ``down`` undoes exactly what ``up`` loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ipsec_vip import __version__, control
from ipsec_vip.errors import OCF_ERR_CONFIGURED, OCF_ERR_GENERIC, OCF_SUCCESS, IpsecVipError
from ipsec_vip.params import DEFAULT_CONFIG, parse
from ipsec_vip.state import StateDir
from ipsec_vip.vici_session import DEFAULT_SOCKET

log = logging.getLogger("ipsec-vip")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipsec-vip", description="strongSwan connections that follow a VIP")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "load the VIP's connections into charon (the agent's start)"),
                       ("down", "unload them (the agent's stop)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--vip", required=True, help="the floating address")
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"swanctl.conf-format file (default {DEFAULT_CONFIG})")
        p.add_argument("--connections", default="", help="connection names, separated by spaces or commas")
        p.add_argument("--vici-socket", default=DEFAULT_SOCKET, help=f"charon's VICI socket (default {DEFAULT_SOCKET})")
        p.add_argument("--interface", default="", help="the VIP counts only on this interface")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole operation (default 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)
    try:
        params = parse({"vip": args.vip, "config": args.config, "connections": args.connections,
                        "vici_socket": args.vici_socket, "interface": args.interface})
    except IpsecVipError as e:
        print(f"ipsec-vip: {e}", file=sys.stderr)
        return OCF_ERR_CONFIGURED
    instance = f"cli-{params.vip}"
    deadline = control.Deadline(args.timeout)
    try:
        if args.command == "up":
            print(control.start(params, instance, StateDir(), deadline))
        else:
            print(control.stop(params, instance, StateDir(), deadline))
    except IpsecVipError as e:
        print(f"ipsec-vip {args.command}: {e}", file=sys.stderr)
        return e.ocf_code
    except Exception as e:  # a bug: say so briefly, never with secret-bearing detail
        log.debug("%s failed", args.command, exc_info=True)
        print(f"ipsec-vip {args.command}: internal error: {type(e).__name__}", file=sys.stderr)
        return OCF_ERR_GENERIC
    return OCF_SUCCESS


if __name__ == "__main__":
    sys.exit(main())
