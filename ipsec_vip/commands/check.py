"""``ipsec-vip check [--fix-hints] [--json]``: preflight of this node, each problem with its fix.
Exit 0 when nothing failed (warnings allowed), 1 otherwise."""

from __future__ import annotations

import argparse
import json
import os

from ipsec_vip import firewall, preflight, status
from ipsec_vip.commands.common import add_vip_options, params_from
from ipsec_vip.errors import StateError
from ipsec_vip.state import StateDir
from ipsec_vip.watchconf import WATCH_DIR

_TAGS = {preflight.OK: "[ OK ]", preflight.WARN: "[WARN]", preflight.FAIL: "[FAIL]"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = ("preflight: kernel XFRM/ESP/TUN, charon and VICI, plugins, configs, PSK strength, "
            "swanctl --load-all, firewall, secret file modes")
    p = sub.add_parser("check", help=text, description=text + ". Without --vip: every resource started here, "
                       f"every watch config in {WATCH_DIR}, else --config.")
    add_vip_options(p, vip_required=False)
    p.add_argument("--watch-dir", default=WATCH_DIR, help=f"watch configs (default {WATCH_DIR})")
    p.add_argument("--swanctl-conf", default=preflight.SWANCTL_CONF,
                   help=f"the distribution's swanctl.conf (default {preflight.SWANCTL_CONF})")
    p.add_argument("--strongswan-conf", default=preflight.STRONGSWAN_CONF,
                   help=f"charon's settings, for the ha plugin's (default {preflight.STRONGSWAN_CONF})")
    p.add_argument("--fix-hints", action="store_true", help="print the firewall rules to add")
    p.add_argument("--json", action="store_true", help="findings as JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per VICI call (default 5)")
    p.set_defaults(run=run)


def context(args: argparse.Namespace) -> preflight.Context:
    """What to check, from the state records, the watch configs and the options."""
    explicit = params_from(args) if args.vip else None
    early = []
    try:
        found = status.targets(StateDir(), explicit, args.watch_dir, default_socket=args.vici_socket)
    except StateError as e:  # e.g. not root: check what the options name
        early.append(preflight.Finding("state", preflight.WARN, f"{e}; resources started here are not checked",
                                       "run ipsec-vip check as root"))
        found = [] if explicit is None else [status.Target("command-line", "", explicit)]
    targets = [preflight.Target(f"VIP {t.params.vip} ({t.source} {t.name})".replace(" )", ")"),
                                t.params.config, t.params) for t in found if t.params is not None]
    if not targets and os.path.exists(args.config):
        targets = [preflight.Target(args.config, args.config, None)]
    sockets = list(dict.fromkeys(t.params.vici_socket for t in targets if t.params is not None)) or [args.vici_socket]
    families = {t.params.vip.version for t in targets if t.params is not None} or {4}
    ctx = preflight.Context(targets, sockets, args.timeout, args.swanctl_conf, families, early)
    ctx.strongswan_conf = args.strongswan_conf
    return ctx


def run(args: argparse.Namespace) -> int:
    ctx = context(args)
    findings = preflight.run(ctx)
    failed = any(f.level == preflight.FAIL for f in findings)
    hints = [line for chain in ctx.firewall_chains for line in firewall.fix_hints(chain)]
    if args.json:
        doc: dict[str, object] = {"ok": not failed, "findings": [f._asdict() for f in findings]}
        if args.fix_hints:
            doc["fix_hints"] = hints
        print(json.dumps(doc, indent=2))
    else:
        for f in findings:
            print(f"{_TAGS[f.level]} {f.name}: {f.message}")
            if f.level != preflight.OK and f.fix:
                print(f"       fix: {f.fix}")
    if args.fix_hints and not args.json:
        print()
        if hints:
            print("# let IKE, NAT-T and ESP in (rules go first in the chain that drops them):")
            print("\n".join(hints))
        else:
            print("# the firewall already lets IKE and ESP in; for a new nftables ruleset:")
            print("\n".join(firewall.fix_hints(())))
    return 1 if failed else 0
