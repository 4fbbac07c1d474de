"""Watch configs: ``/etc/ipsec-vip/watch/NAME.conf``, one ``key = value`` per line.

The one reader for both the watch daemon and ``status``/``check``. Keys are the agent's
parameters ``vip``, ``config``, ``connections``, ``vici_socket``, ``interface``, ``handoff``,
``fallback_connections``, ``start_without_vip``, ``ha_fifo`` plus ``check_interval`` and the
stateful mode's ``stateful``, ``ha_local``, ``ha_remote`` (docs/keepalived.md); lines starting
with ``#`` or ``;`` are comments (a ``#`` after a value is part of the value), a value may be
quoted, unknown or repeated keys are errors.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

from ipsec_vip.errors import ConfigError
from ipsec_vip.ocf import crm_boolean
from ipsec_vip.params import Params, parse
from ipsec_vip.vip import parse_address

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import NamedTuple

    from ipsec_vip.vip import IPAddress
else:
    from ipsec_vip.tuples import NamedTuple

WATCH_DIR = "/etc/ipsec-vip/watch"
DEFAULT_CHECK_INTERVAL = 10.0
PARAM_KEYS = ("vip", "config", "connections", "vici_socket", "interface", "handoff", "fallback_connections",
              "start_without_vip", "ha_fifo")
STATEFUL_KEYS = ("stateful", "ha_local", "ha_remote")
KEYS = (*PARAM_KEYS, "check_interval", *STATEFUL_KEYS)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,99}\Z")


def path_of(name: str, directory: str = WATCH_DIR) -> str:
    """``NAME`` -> ``/etc/ipsec-vip/watch/NAME.conf``; NAME is a plain file name (systemd's %i)."""
    if not _NAME.match(name):
        raise ConfigError(f"watch name {name!r} must be letters, digits, '_', '.', '@' or '-'")
    return os.path.join(directory, name + ".conf")


def names(directory: str = WATCH_DIR) -> list[str]:
    """The names of the watch configs present, sorted."""
    paths = glob.glob(os.path.join(glob.escape(directory), "*.conf"))
    return sorted(os.path.basename(p)[:-len(".conf")] for p in paths)


def read(path: str) -> dict[str, str]:
    """The key/value pairs of one file (ConfigError naming the file and line)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError(f"watch configuration {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read watch configuration {path}: {getattr(e, 'strerror', None) or e}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{path}:{number}: expected 'key = value'")
        if key not in KEYS:
            raise ConfigError(f"{path}:{number}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if key in values:
            raise ConfigError(f"{path}:{number}: {key} is set twice")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def settings(values: Mapping[str, str], where: str = "") -> tuple[Params, float]:
    """Params (validated like the agent's) and the check interval; errors name ``where``."""
    try:
        params = parse({k: v for k, v in values.items() if k in PARAM_KEYS})
        text = values.get("check_interval", "").strip()
        try:
            interval = float(text) if text else DEFAULT_CHECK_INTERVAL
        except ValueError:
            raise ConfigError(f"check_interval must be a number of seconds, not {text!r}") from None
        if not 0 <= interval <= 86400:
            raise ConfigError("check_interval must be between 0 (off) and 86400 seconds")
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None
    return params, interval


class HaLink(NamedTuple):
    """Stateful mode: this node's and the peer's address on the ha plugin's sync link."""

    local: IPAddress
    remote: IPAddress


def stateful(values: Mapping[str, str], where: str = "") -> HaLink | None:
    """The sync link of ``stateful = yes`` (both addresses required, one family, two nodes), or None."""
    try:
        text = values.get("stateful", "").strip()
        on = crm_boolean(text) if text else False
        if on is None:
            raise ConfigError(f"stateful must be yes or no, not {text!r}")
        given = [k for k in ("ha_local", "ha_remote") if values.get(k, "").strip()]
        if not on:
            if given:
                raise ConfigError(f"{given[0]} is for stateful = yes only")
            return None
        addrs = []
        for key in ("ha_local", "ha_remote"):
            raw = values.get(key, "").strip()
            if not raw:
                raise ConfigError(f"stateful = yes needs {key} (this node's and the peer's address on the "
                                  "ha plugin's sync link, as charon.plugins.ha.local and remote)")
            try:
                addrs.append(parse_address(raw))
            except ValueError:
                raise ConfigError(f"{key} {raw!r} is not an IPv4 or IPv6 address") from None
        if addrs[0].version != addrs[1].version or addrs[0] == addrs[1]:
            raise ConfigError("ha_local and ha_remote must be two addresses of one family")
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None
    return HaLink(*addrs)


def load(path: str) -> Params:
    """The Params of one watch config file."""
    return settings(read(path), path)[0]
