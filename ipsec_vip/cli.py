"""The ``ipsec-vip`` command. Parsing lives in ``ipsec_vip.commands``, one module per
sub-command; errors become exit codes here only (the agent's codes)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ipsec_vip import __version__
from ipsec_vip.errors import OCF_ERR_GENERIC, IpsecVipError
from ipsec_vip.log import journal_formatter, stderr_is_journal

log = logging.getLogger("ipsec-vip")

COMMANDS = ("updown", "status", "check", "psk", "watch", "mesh")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipsec-vip", description="strongSwan connections that follow a floating IP")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ipsec_vip.commands.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    journal = stderr_is_journal()
    err = "<3>" if journal else ""  # the error lines below, at priority err in the journal
    if journal:
        handler = logging.StreamHandler()
        handler.setFormatter(journal_formatter())
        logging.basicConfig(handlers=[handler], level=level)
    else:
        logging.basicConfig(format="%(levelname)s: %(message)s", level=level)
    try:
        return int(args.run(args))
    except IpsecVipError as e:
        print(f"{err}ipsec-vip {args.command}: {e}", file=sys.stderr)
        return e.ocf_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so briefly, never with secret-bearing detail
        log.debug("%s failed", args.command, exc_info=True)
        print(f"{err}ipsec-vip {args.command}: internal error: {type(e).__name__}", file=sys.stderr)
        return OCF_ERR_GENERIC


if __name__ == "__main__":
    sys.exit(main())
