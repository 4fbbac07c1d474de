"""``ipsec-vip psk [--write FILE [--name NAME] [--id ID ...]]``: a new random PSK."""

from __future__ import annotations

import argparse

from ipsec_vip import psk
from ipsec_vip.errors import IpsecVipError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "print a new random PSK, or write it as a swanctl.conf secrets snippet"
    p = sub.add_parser("psk", help=text, description=text + " (created 0600, never overwritten; the PSK is "
                       "then not printed: read it from the file for the peer).")
    p.add_argument("--write", metavar="FILE",
                   help="create FILE holding 'secrets { ike-NAME { id-N = ID, secret = ... } }'")
    p.add_argument("--name", default="ipsec-vip", help="secret section name after 'ike-' (default ipsec-vip)")
    p.add_argument("--id", action="append", default=[], metavar="ID",
                   help="an identity the secret belongs to (repeatable; none = any peer)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    key = psk.generate()
    if args.write:
        psk.write(args.write, args.name, args.id, key)
        print(f"wrote {args.write} (mode 0600) with secret ike-{args.name}; include it from your swanctl.conf")
    else:
        if args.id or args.name != "ipsec-vip":
            raise IpsecVipError("--id and --name need --write")
        print(key)
    return 0
