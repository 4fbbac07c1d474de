"""The one way the project runs external commands (pcs's ``CommandRunner`` is the model).

A command is named by its full path (no ``PATH`` lookup), runs with a fixed environment
(nothing inherited from Pacemaker, systemd or a shell), without a shell, with closed
stdin unless input is given, and with a timeout. Each run is logged at debug level with
its argv and its exit code, never its input: no secret may ever be in argv (pass it on
stdin or in a file), so argv is safe to log. Failing to start or to finish in time is a
:class:`~ipsec_vip.errors.CommandError`; an exit code is a result for the caller to judge.

Callers take a ``runner`` argument so tests can pass a fake with the same ``run``.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ipsec_vip.errors import CommandError
from ipsec_vip.log import log

ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


class Result(NamedTuple):
    """What a finished command left: exit code, stdout, stderr (text)."""

    returncode: int
    stdout: str
    stderr: str


class Runner:
    """Runs commands with :data:`ENV` (or the environment given here, never the caller's)."""

    def __init__(self, env: Mapping[str, str] = ENV) -> None:
        self.env = dict(env)

    def run(self, argv: Sequence[str], *, timeout: float, stdin: str | None = None) -> Result:
        """Run ``argv`` (``argv[0]`` a full path) to completion within ``timeout`` seconds."""
        if not argv or not argv[0].startswith("/"):
            raise ValueError(f"commands are run by full path, not {argv[:1]!r}")
        shown = shlex.join(argv)
        log.debug("running: %s%s", shown, f" (with {len(stdin)} characters on stdin)" if stdin else "")
        try:
            p = subprocess.run(list(argv), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=timeout, env=self.env, check=False,
                               close_fds=True)
        except subprocess.TimeoutExpired:
            raise CommandError(f"{shown} did not finish within {timeout:g} s") from None
        except OSError as e:
            raise CommandError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        log.debug("finished: %s: exit code %d", shown, p.returncode)
        return Result(p.returncode, p.stdout, p.stderr)
