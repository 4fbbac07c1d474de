"""Watch configs: ``/etc/ipsec-vip/watch/NAME.conf``, one ``key = value`` per line.

Keys are the agent's parameters (``vip``, ``config``, ``connections``,
``vici_socket``, ``interface``, ``start_without_vip``); ``#`` and ``;`` start
comments, blank lines are ignored, a value may be wrapped in double quotes.
"""

from __future__ import annotations

import glob
import os

from ipsec_vip.errors import ConfigError
from ipsec_vip.params import Params, parse

WATCH_DIR = "/etc/ipsec-vip/watch"
KEYS = frozenset({"vip", "config", "connections", "vici_socket", "interface", "start_without_vip"})


def parse_text(text: str, where: str) -> dict[str, str]:
    """The key/value pairs of a watch config (ConfigError naming ``where`` and the line)."""
    values: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or key not in KEYS:
            raise ConfigError(f"{where}:{n}: expected one of {', '.join(sorted(KEYS))} = value")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        elif "#" in value:
            value = value.split("#", 1)[0].rstrip()
        values[key] = value
    return values


def load(path: str) -> Params:
    """The Params of one watch config file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    values = parse_text(text, path)
    try:
        return parse(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def path_of(name: str, directory: str = WATCH_DIR) -> str:
    """``NAME`` -> ``/etc/ipsec-vip/watch/NAME.conf`` (a name, never a path)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"watch config name {name!r} is not a plain name")
    return os.path.join(directory, f"{name}.conf")


def names(directory: str = WATCH_DIR) -> list[str]:
    """The names of the watch configs present, sorted."""
    paths = glob.glob(os.path.join(glob.escape(directory), "*.conf"))
    return sorted(os.path.basename(p)[:-len(".conf")] for p in paths)
