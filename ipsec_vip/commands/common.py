"""Options and parsing shared by the sub-commands."""

from __future__ import annotations

import argparse

from ipsec_vip.params import DEFAULT_CONFIG, HANDOFF_MODES, Params, parse
from ipsec_vip.vici_session import DEFAULT_SOCKET


def add_vip_options(p: argparse.ArgumentParser, vip_required: bool = True) -> None:
    """--vip --config --connections --vici-socket --interface, as the agent's parameters."""
    p.add_argument("--vip", required=vip_required, help="the floating address")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"swanctl.conf-format file (default {DEFAULT_CONFIG})")
    p.add_argument("--connections", default="", help="connection names, separated by spaces or commas")
    p.add_argument("--vici-socket", default=DEFAULT_SOCKET, help=f"charon's VICI socket (default {DEFAULT_SOCKET})")
    p.add_argument("--interface", default="", help="the VIP counts only on this interface")


def params_from(args: argparse.Namespace) -> Params:
    """The agent's Params from the options (ConfigError when invalid)."""
    return parse({"vip": args.vip or "", "config": args.config, "connections": args.connections,
                  "vici_socket": args.vici_socket, "interface": args.interface,
                  "fallback_connections": getattr(args, "fallback_connections", None) or "",
                  "start_without_vip": "true" if getattr(args, "start_without_vip", False) else "",
                  "handoff": getattr(args, "handoff", None) or ""})


def add_handoff_option(p: argparse.ArgumentParser, default: str | None = HANDOFF_MODES[0]) -> None:
    """--handoff, as the agent's parameter (what stop does with the clients while the VIP is here)."""
    p.add_argument("--handoff", choices=HANDOFF_MODES, default=default,
                   help="when stopping while this node holds the VIP: redirect = drop new IKE_SA_INIT to the VIP "
                        "here, then IKEv2-REDIRECT each client to the VIP (default); none = leave them to their DPD")


def add_fallback_option(p: argparse.ArgumentParser, default: str | None = "") -> None:
    """--fallback-connections, as the agent's parameter (besides those the config names for its
    connections in its ``ipsec-vip`` section)."""
    p.add_argument("--fallback-connections", default=default, metavar="NAMES",
                   help="connections (loaded by other means, e.g. a mesh node's own tunnel to the VIP) to "
                        "initiate once the VIP has left this node and to terminate when it comes (the agent's "
                        "fallback_connections; added to those the config's ipsec-vip section names)")
