"""New pre-shared keys, and swanctl.conf secrets snippets that hold them.

A PSK is ``secrets.token_urlsafe(32)``: 43 characters of ``A-Z a-z 0-9 - _``
(256 random bits), safe unquoted or inside swanctl.conf double quotes. Snippet
files are created 0600 in the ``open`` call itself (never readable by others, not
even for a moment), never through a symlink and never over an existing file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Sequence

from ipsec_vip.errors import ConfigError, IpsecVipError

PSK_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_ID_BAD = re.compile(r'["\\\x00-\x1f\x7f]')


def generate() -> str:
    """A new random PSK (43 URL-safe characters)."""
    return secrets.token_urlsafe(PSK_BYTES)


def snippet(name: str, ids: Sequence[str], psk: str) -> str:
    """``secrets { ike-NAME { id-1 = ..., secret = "..." } }`` in swanctl.conf format."""
    if not _NAME.match(name):
        raise ConfigError(f"secret name {name!r}: use letters, digits, '-' and '_' only")
    bad = [i for i in ids if not i or _ID_BAD.search(i)]
    if bad:
        raise ConfigError("an --id is empty or contains a quote, backslash or control character")
    lines = ["secrets {", f"    ike-{name} {{"]
    lines += [f'        id-{n} = "{ident}"' for n, ident in enumerate(ids, 1)]
    lines += [f'        secret = "{psk}"', "    }", "}", ""]
    return "\n".join(lines)


def write(path: str, name: str, ids: Sequence[str], psk: str) -> None:
    """Create ``path`` (0600, exclusive, no symlink) holding the snippet; refuse an existing file."""
    text = snippet(name, ids, psk).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise IpsecVipError(f"{path} exists; not overwriting it") from None
    except OSError as e:
        raise IpsecVipError(f"cannot create {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise IpsecVipError(f"cannot write {path}: {e.strerror}") from None
