"""The mesh's PSK file: one pre-shared key per encrypted network.

Format (text, UTF-8, mode 0600): one line per network, ``NETWORK PSK``, separated by
one space; blank lines and lines starting with ``#`` are ignored. A PSK is
:func:`ipsec_vip.psk.generate`'s 43 URL-safe characters; any PSK of at least 32
characters without white space is accepted, so a key can be set by hand. The file
is created 0600 in the ``open`` call (never through a symlink) and only ever
appended to: an existing key is never rewritten.
"""

from __future__ import annotations

import os
import stat

from ipsec_vip import psk
from ipsec_vip.errors import ConfigError, IpsecVipError
from ipsec_vip.mesh.inventory import Inventory

MIN_LENGTH = 32
HEADER = "# ipsec-vip mesh PSKs, one line per encrypted network: NETWORK PSK (keep 0600)\n"


def read(path: str) -> dict[str, str]:
    """network -> PSK; errors name the file and line, never a key."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{path}: PSK file missing (create it with: ipsec-vip mesh psk INVENTORY)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the PSK file: {e.strerror}") from None
    with os.fdopen(fd, encoding="utf-8", errors="strict") as f:
        if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
            raise ConfigError(f"{path}: PSK file is readable by group or others (chmod 600 it)")
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid UTF-8") from None
    keys: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{path}:{n}: expected 'NETWORK PSK'")
        name, key = parts
        if name in keys:
            raise ConfigError(f"{path}:{n}: network {name} has a second key")
        if len(key) < MIN_LENGTH or '"' in key or "\\" in key:
            raise ConfigError(f"{path}:{n}: the PSK of {name} is shorter than {MIN_LENGTH} characters "
                              "or holds a quote or backslash")
        keys[name] = key
    return keys


def for_inventory(inv: Inventory) -> dict[str, str]:
    """The PSK of every encrypted network; ConfigError naming the file and network if one is missing."""
    keys = read(inv.psk_file)
    for name, net in sorted(inv.networks.items()):
        if net.encrypt and name not in keys:
            raise ConfigError(f"{inv.psk_file}: networks.{name}: no PSK for this network "
                              "(add it with: ipsec-vip mesh psk INVENTORY)")
    return keys


def ensure(inv: Inventory) -> list[str]:
    """Create the PSK file or append the keys it lacks; returns the networks given a new key."""
    wanted = sorted(n for n, net in inv.networks.items() if net.encrypt)
    path = inv.psk_file
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if os.path.lexists(path):
        missing = [n for n in wanted if n not in read(path)]
        flags |= os.O_APPEND
        text = ""
    else:
        missing, text = wanted, HEADER
        flags |= os.O_CREAT | os.O_EXCL
    if not missing:
        return []
    text += "".join(f"{n} {psk.generate()}\n" for n in missing)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise IpsecVipError(f"{path}: cannot write the PSK file: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return missing
