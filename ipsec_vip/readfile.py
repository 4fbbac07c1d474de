"""Reading a file an admin names, boundedly: only a regular file, never more than a limit.

A FIFO, a device (``/dev/zero``), a socket or a directory given where a file is expected is
refused at once, without a read that could block or never end; so is a file larger than the
limit (nothing beyond ``limit + 1`` bytes is read).
"""

from __future__ import annotations

import errno
import os
import stat

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class Unreadable(Exception):
    """Why a file cannot be read (one short phrase, no path); ``missing`` when it does not exist."""

    def __init__(self, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def size_text(limit: int) -> str:
    """1048576 -> '1 MiB', 65536 -> '64 KiB'."""
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def read(path: str, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of the regular file ``path`` (raises :class:`Unreadable`); ``follow=False``
    refuses a symlink as the last component."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise Unreadable("a symbolic link (refused)") from None
        raise Unreadable(e.strerror or str(e), missing=e.errno == errno.ENOENT) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise Unreadable(f"{kind}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise Unreadable(e.strerror or str(e)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise Unreadable(f"larger than {size_text(limit)}")
    return b"".join(chunks)
