"""``ipsec-vip mesh psk|render|check|load``: encrypt the whole cluster from one inventory
(docs/mesh.md). An invalid inventory exits 6 (ConfigError) before anything is written."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ipsec_vip.vici_session import DEFAULT_SOCKET


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "encrypt the whole cluster from one inventory: node-to-node tunnels, tunnels to every VIP, firewall"
    p = sub.add_parser("mesh", help=text, description=text + " (see docs/mesh.md).")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    psk = verbs.add_parser("psk", help="create or extend the inventory's PSK file (one key per encrypted "
                           "network, 0600, existing keys never rewritten)")
    psk.add_argument("inventory", metavar="INVENTORY")
    psk.set_defaults(run=run_psk)

    render = verbs.add_parser("render", help="write this node's files under DIR and print the pcs commands")
    render.add_argument("inventory", metavar="INVENTORY")
    render.add_argument("--node", required=True, help="this node's name in the inventory")
    render.add_argument("--out", default="/", metavar="DIR", help="root to write under (default /)")
    render.set_defaults(run=run_render)

    check = verbs.add_parser("check", help="compare what is installed under DIR and loaded in charon with "
                             "what render would write (exit 1 on drift)")
    check.add_argument("inventory", metavar="INVENTORY")
    check.add_argument("--node", required=True, help="this node's name in the inventory")
    check.add_argument("--root", default="/", metavar="DIR", help="where the files are installed (default /)")
    check.add_argument("--vici-socket", default=DEFAULT_SOCKET, help=f"charon's VICI socket (default {DEFAULT_SOCKET})")
    check.set_defaults(run=run_check)

    load = verbs.add_parser("load", help="load the installed mesh into charon, leaving every other connection "
                            "(the agent's VIP connections) loaded, and initiate its tunnels that have no IKE_SA "
                            "(charon never retries one refused by its peer); use instead of swanctl --load-all on "
                            "VIP holders, and from a timer for the retries")
    load.add_argument("--root", default="/", metavar="DIR", help="where the files are installed (default /)")
    load.add_argument("--vici-socket", default=DEFAULT_SOCKET, help=f"charon's VICI socket (default {DEFAULT_SOCKET})")
    load.set_defaults(run=run_load)


def run_psk(args: argparse.Namespace) -> int:
    from ipsec_vip.mesh import inventory, keys

    inv = inventory.load(args.inventory)
    added = keys.ensure(inv)
    if added:
        print(f"{inv.psk_file}: new key for {', '.join(added)} (mode 0600); copy the file to every node")
    else:
        print(f"{inv.psk_file}: every encrypted network has a key; nothing changed")
    return 0


def run_render(args: argparse.Namespace) -> int:
    from ipsec_vip.mesh import install, inventory, keys, render

    inv = inventory.load(args.inventory)
    files = render.render(inv, args.node, keys.for_inventory(inv))  # every check before any write
    for path in install.write(args.out, files):
        print(f"# wrote {path}", file=sys.stderr)
    sys.stdout.write(render.pcs_commands(inv))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ipsec_vip import swanctl
    from ipsec_vip.errors import ViciError
    from ipsec_vip.mesh import install, inventory, keys, render
    from ipsec_vip.vici_session import Vici

    inv = inventory.load(args.inventory)
    files = render.render(inv, args.node, keys.for_inventory(inv))
    problems = install.file_drift(args.root, files)
    mesh = next(f for f in files if f.path == render.SWANCTL_FILE)
    with tempfile.TemporaryDirectory() as tmp:  # the rendered connections, read as swanctl reads them
        install.write(tmp, [mesh])
        rendered = swanctl.load(os.path.join(tmp, mesh.path))
    try:
        with Vici(args.vici_socket) as v:
            problems += install.loaded_drift(v, rendered.connections, [s["id"] for s in rendered.secrets])
    except ViciError as e:
        problems.append(f"charon: {e}")
    for p in problems:
        print(p)
    if not problems:
        print(f"node {args.node}: installed and loaded as rendered")
    return 1 if problems else 0


def run_load(args: argparse.Namespace) -> int:
    from ipsec_vip.mesh import install
    from ipsec_vip.vici_session import Vici

    with Vici(args.vici_socket, timeout=60) as v:
        loaded, unloaded, initiated = install.load(v, args.root)
    print(f"loaded {loaded} mesh connections, unloaded {unloaded} stale ones, initiated {len(initiated)} "
          f"that had no IKE_SA{': ' + ', '.join(initiated) if initiated else ''}; other connections untouched")
    return 0
