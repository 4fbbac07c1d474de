"""Print where this Python finds pure-Python packages under a prefix (make install's default).

Debian's own packages use /usr/lib/python3/dist-packages, a local install under /usr/local
uses .../python3.X/dist-packages, Fedora .../python3.X/site-packages: take the sys.path entry
under the prefix, and sysconfig's answer for prefixes Python does not search."""

from __future__ import annotations

import sys
import sysconfig


def sitelib(prefix: str) -> str:
    under = [d for d in sys.path if d.startswith(prefix.rstrip("/") + "/") and d.endswith("-packages")]
    ranked = sorted(under, key=lambda d: (not d.endswith("python3/dist-packages"), "/lib64/" in d))
    return ranked[0] if ranked else sysconfig.get_path("purelib", "posix_prefix", vars={"base": prefix})


if __name__ == "__main__":
    print(sitelib(sys.argv[1] if len(sys.argv) > 1 else "/usr"))
