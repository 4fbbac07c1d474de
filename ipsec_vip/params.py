"""The resource's parameters, checked once and typed (shared by the agent and the CLI)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ipsec_vip.errors import ConfigError
from ipsec_vip.ocf import crm_boolean
from ipsec_vip.vici_session import DEFAULT_SOCKET, socket_path
from ipsec_vip.vip import parse_vip

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import NamedTuple

    from ipsec_vip.vip import IPAddress
else:
    from ipsec_vip.tuples import NamedTuple

DEFAULT_CONFIG = "/etc/ipsec-vip/swanctl.conf"
DEFAULT_HA_FIFO = "/var/run/charon.ha"
_BAD_NAME = re.compile(r'[#{}:.="\s]')
# what the kernel accepts (no '/', ':' or white space, under 16 bytes, not '.' or '..') less what
# no real interface needs and a path, a message or a command must not see: ASCII words only
_IFNAME = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9_.@+=-]{1,15}\Z")
HANDOFF_MODES = ("redirect", "none")  # the first is the default


class Params(NamedTuple):
    """What one resource instance manages."""

    vip: IPAddress
    config: str = DEFAULT_CONFIG
    connections: tuple[str, ...] = ()
    vici_socket: str = DEFAULT_SOCKET
    interface: str | None = None
    start_without_vip: bool = False
    fallback_connections: tuple[str, ...] = ()
    handoff: str = "redirect"
    ha_fifo: str = DEFAULT_HA_FIFO


def split_names(text: str, what: str = "connections") -> tuple[str, ...]:
    """'a, b c' -> ('a', 'b', 'c'); names must be valid swanctl.conf section names."""
    names = tuple(n for n in re.split(r"[\s,]+", text.strip()) if n)
    bad = [n for n in names if _BAD_NAME.search(n)]
    if bad:
        raise ConfigError(f"{what}: {bad[0]!r} is not a valid connection name")
    if len(set(names)) != len(names):
        raise ConfigError(f"{what}: a connection is named twice")
    return names


def parse(values: Mapping[str, str]) -> Params:
    """Build Params from name -> value (OCF_RESKEY_ prefix already removed)."""
    raw_vip = values.get("vip", "").strip()
    if not raw_vip:
        raise ConfigError("parameter vip is required")
    try:
        vip = parse_vip(raw_vip)
    except ValueError as e:
        raise ConfigError(f"vip {raw_vip!r} is not an IPv4 or IPv6 address ({e})") from None
    config = values.get("config", "").strip() or DEFAULT_CONFIG
    if not config.startswith("/"):
        raise ConfigError(f"config {config!r} must be an absolute path")
    uri = values.get("vici_socket", "").strip() or DEFAULT_SOCKET
    try:
        socket_path(uri)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    interface = values.get("interface", "").strip() or None
    if interface is not None and not _IFNAME.match(interface):
        raise ConfigError(f"interface {interface!r} is not a valid interface name (1 to 15 letters, digits or "
                          "'_.@+=-', not '.' or '..')")
    handoff = values.get("handoff", "").strip().lower() or HANDOFF_MODES[0]
    if handoff not in HANDOFF_MODES:
        raise ConfigError(f"handoff must be {' or '.join(HANDOFF_MODES)}, not {handoff!r}")
    ha_fifo = values.get("ha_fifo", "").strip() or DEFAULT_HA_FIFO
    if not ha_fifo.startswith("/"):
        raise ConfigError(f"ha_fifo {ha_fifo!r} must be an absolute path")
    return Params(vip=vip, config=config, connections=split_names(values.get("connections", "")),
                  vici_socket=uri, interface=interface,
                  start_without_vip=_boolean("start_without_vip", values.get("start_without_vip", "")),
                  fallback_connections=split_names(values.get("fallback_connections", ""), "fallback_connections"),
                  handoff=handoff, ha_fifo=ha_fifo)


def _boolean(name: str, text: str) -> bool:
    value = crm_boolean(text) if text.strip() else False
    if value is None:
        raise ConfigError(f"{name} must be true or false, not {text!r}")
    return value
