"""The project's logger ("ipsec-vip"), with ``logging`` imported only when a message is due.

Importing ``logging`` costs 5-10 ms, a large share of a monitor that logs nothing. Messages
below :attr:`LazyLogger.threshold` cost a comparison; the first message at or above it imports
``logging``, runs the setup given to :meth:`LazyLogger.configure` and hands the message on.
Without ``configure`` every message goes to ``logging`` (the CLI configures that itself).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any

NAME = "ipsec-vip"
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
# logging levels as syslog(3) priorities (LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR, LOG_CRIT)
SYSLOG_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, 50: 2}


def stderr_is_journal() -> bool:
    """stderr is connected to systemd's journal: $JOURNAL_STREAM names its device:inode
    (systemd.exec(5)), so a "<N>" prefix sets a line's priority (sd-daemon(3))."""
    import os

    try:
        st = os.fstat(2)
    except OSError:
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def journal_formatter(fmt: str = "%(message)s") -> logging.Formatter:
    """For stderr under systemd (:func:`stderr_is_journal`): each line starts with its priority as an
    sd-daemon(3) prefix, so `journalctl -p warning` finds the warnings; no level name needed."""
    import logging

    class Journal(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"

    return Journal(fmt)


class LazyLogger:
    def __init__(self) -> None:
        self.threshold = 0
        self._setup: Callable[[logging.Logger], None] | None = None
        self._logger: logging.Logger | None = None

    def configure(self, threshold: int, setup: Callable[[logging.Logger], None]) -> None:
        """Drop messages below ``threshold``; ``setup`` prepares the real logger on first use."""
        self.threshold, self._setup, self._logger = threshold, setup, None

    def _real(self) -> logging.Logger:
        if self._logger is None:
            import logging

            logger = logging.getLogger(NAME)
            if self._setup is not None:
                self._setup(logger)
            self._logger = logger
        return self._logger

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if level >= self.threshold:
            self._real().log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(ERROR, msg, *args, **kwargs)


log = LazyLogger()
