"""``ipsec-vip watch``: the systemd fallback daemon (foreground), see ``ipsec_vip.watch``.

``ipsec-vip watch NAME`` reads ``/etc/ipsec-vip/watch/NAME.conf`` (what
``ipsec-vip-watch@NAME.service`` runs); ``ipsec-vip watch --vip …`` takes the
same settings as options. The state lives under ``/run/ipsec-vip-watch``,
shared by all watchers of the node, as instance ``watch-NAME`` or
``watch-<vip>``.
"""

from __future__ import annotations

import argparse
import logging

from ipsec_vip import control, watch, watchconf
from ipsec_vip.commands.common import add_fallback_option, add_handoff_option, add_vip_options
from ipsec_vip.errors import ConfigError
from ipsec_vip.selection import mobike_warnings
from ipsec_vip.state import StateDir

log = logging.getLogger("ipsec-vip")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "load the VIP's connections while this node holds the VIP (systemd fallback daemon)"
    p = sub.add_parser("watch", help=text, description=text + "; runs in the foreground until SIGTERM")
    p.add_argument("name", nargs="?", help=f"read {watchconf.WATCH_DIR}/NAME.conf instead of options")
    add_vip_options(p, vip_required=False)
    add_handoff_option(p, default=None)
    add_fallback_option(p, default=None)
    p.add_argument("--start-without-vip", default=None, choices=("true", "false"),
                   help="keep the connections loaded whether or not the VIP is here, and only follow the VIP "
                        "(end the fallback connections when it comes, terminate the SAs and start them when it "
                        "goes): a mesh's VIP responders, so no node's tunnel is refused as the VIP arrives")
    p.add_argument("--check-interval", help=f"seconds between checks that our connections are still loaded "
                                            f"(default {watchconf.DEFAULT_CHECK_INTERVAL:g}, 0 = off)")
    p.add_argument("--stateful", action="store_const", const="yes",
                   help="keep the ha plugin's segment where the VIP is (two nodes; docs/keepalived.md)")
    p.add_argument("--ha-local", help="stateful: this node's address on the ha plugin's sync link")
    p.add_argument("--ha-remote", help="stateful: the peer's address on the ha plugin's sync link")
    p.add_argument("--ha-fifo", help="stateful: the ha plugin's control FIFO (default /var/run/charon.ha)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for each load or unload (default 30)")
    p.add_argument("--watch-dir", default=watchconf.WATCH_DIR,
                   help=f"where NAME.conf lives (default {watchconf.WATCH_DIR})")
    p.add_argument("--state-dir", default=watch.STATE_BASE,
                   help=f"base of the state directory (DIR/ipsec-vip), shared by the node's watchers "
                        f"(default {watch.STATE_BASE})")
    p.set_defaults(run=run, config=None, connections=None, vici_socket=None, interface=None, handoff=None,
                   fallback_connections=None, start_without_vip=None, stateful=None)


def run(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in watchconf.KEYS if getattr(args, k) is not None}
    if args.name is not None:
        if given:
            raise ConfigError(f"give either NAME or options, not both (NAME.conf holds {', '.join(watchconf.KEYS)})")
        path = watchconf.path_of(args.name, args.watch_dir)
        values, where = watchconf.read(path), path
    elif "vip" not in given:
        raise ConfigError("give NAME (a watch configuration) or --vip")
    else:
        values, where = {k: str(v) for k, v in given.items()}, ""
    params, interval = watchconf.settings(values, where)
    link = watchconf.stateful(values, where)
    # a config that does not parse is refused now, not at the first VIP event
    for warning in mobike_warnings(control.select(params)):
        log.warning("%s", warning)
    instance = f"watch-{args.name if args.name is not None else params.vip}"
    states = StateDir(args.state_dir)
    if link is not None:
        from ipsec_vip import hawatch

        return hawatch.StatefulWatcher(params, instance, states, link, check_interval=interval,
                                       timeout=args.timeout).run()
    return watch.Watcher(params, instance, states, check_interval=interval, timeout=args.timeout).run()
