"""The OCF 1.1 protocol: environment, logging, exit reasons, meta-data, dispatch.

Exit codes are decided in exactly one place, :func:`run`: an action returns an
OCF code or raises an :class:`~ipsec_vip.errors.IpsecVipError`, whose
``ocf_code`` and one-line message become the exit code and exit reason.
"""

from __future__ import annotations

import os
import sys
import syslog
from collections.abc import Mapping, Sequence

from ipsec_vip.errors import OCF_ERR_GENERIC, OCF_ERR_UNIMPLEMENTED, OCF_SUCCESS, IpsecVipError
from ipsec_vip.log import DEBUG, INFO, SYSLOG_PRIORITY, journal_formatter, log, stderr_is_journal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    import logging
    from typing import Callable, NamedTuple

    Handler = Callable[["Env"], int]
else:
    from ipsec_vip.tuples import NamedTuple

_FACILITIES = {name: getattr(syslog, "LOG_" + name.upper()) for name in (
    "auth", "authpriv", "cron", "daemon", "kern", "lpr", "mail", "news", "syslog", "user", "uucp",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")}


def escape(text: str) -> str:
    """XML text escaping (xml.sax.saxutils would import urllib: 40 ms per action)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    return '"' + escape(text).replace('"', "&quot;") + '"'


class Env(NamedTuple):
    """What Pacemaker (or a person) handed the agent."""

    action: str
    params: Mapping[str, str]
    instance: str
    interval_ms: int
    timeout_ms: int | None
    check_level: int
    meta: Mapping[str, str] = {}

    @property
    def is_probe(self) -> bool:
        """A monitor with interval 0 (or none): Pacemaker asking "is it running here?"."""
        return self.action == "monitor" and self.interval_ms == 0

    @classmethod
    def from_environ(cls, argv: Sequence[str], environ: Mapping[str, str]) -> Env:
        params = {k[len("OCF_RESKEY_"):]: v for k, v in environ.items()
                  if k.startswith("OCF_RESKEY_") and not k.startswith("OCF_RESKEY_CRM_meta_")}
        return cls(
            action=argv[1] if len(argv) > 1 else "",
            params=params,
            instance=environ.get("OCF_RESOURCE_INSTANCE", "") or "ipsec-vip",
            interval_ms=_int(environ.get("OCF_RESKEY_CRM_meta_interval"), 0),
            timeout_ms=_int(environ.get("OCF_RESKEY_CRM_meta_timeout"), 0) or None,
            check_level=_int(environ.get("OCF_CHECK_LEVEL"), 0),
            meta={k[len("OCF_RESKEY_CRM_meta_"):]: v for k, v in environ.items()
                  if k.startswith("OCF_RESKEY_CRM_meta_")},
        )

    @property
    def promotable(self) -> bool:
        """Run as a promotable clone: stateful mode. Pacemaker hands the clone's meta attributes
        to each instance's actions (``promotable``, and ``promoted_max``/``master_max``)."""
        return bool(crm_boolean(self.meta.get("promotable"))) or any(
            self.meta.get(k) for k in ("promoted_max", "master_max"))

    @property
    def notified(self) -> bool:
        """The clone was created with ``notify=true``: Pacemaker runs the agent's notify action
        around each start, stop, promote and demote (and hands ``notify`` to every action)."""
        return bool(crm_boolean(self.meta.get("notify")))


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def crm_boolean(text: str | None) -> bool | None:
    """A Pacemaker boolean (crm_is_true's spellings); None when ``text`` is none of them."""
    value = (text or "").strip().lower()
    if value in ("1", "yes", "true", "on", "y"):
        return True
    if value in ("0", "no", "false", "off", "n"):
        return False
    return None


def setup_logging(instance: str, environ: Mapping[str, str]) -> None:
    """syslog under the cluster (HA_LOGFACILITY), HA_LOGFILE if set, stderr when run by hand.

    ``HA_debug`` arrives as the string "0" or "1" from Pacemaker. ``logging`` itself is
    imported only if a message is logged (see :mod:`ipsec_vip.log`).
    """
    facility = (environ.get("HA_LOGFACILITY") or "").strip().lower()
    logfile = environ.get("HA_LOGFILE")
    level = DEBUG if crm_boolean(environ.get("HA_debug")) else INFO

    def setup(logger: logging.Logger) -> None:
        import logging

        class Syslog(logging.Handler):
            """syslog(3) through the C module (logging.handlers costs 7 ms to import)."""

            def __init__(self, ident: str, code: int) -> None:
                super().__init__()
                syslog.openlog(ident, syslog.LOG_PID, code)

            def emit(self, record: logging.LogRecord) -> None:
                syslog.syslog(SYSLOG_PRIORITY.get(record.levelno, syslog.LOG_INFO), self.format(record))

        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(level)
        plain = logging.Formatter("%(levelname)s: %(message)s")
        if facility in _FACILITIES:
            handler: logging.Handler = Syslog(f"ocf-ipsec-vip({instance})", _FACILITIES[facility])
            handler.setFormatter(plain)
            logger.addHandler(handler)
        if logfile:
            try:
                handler = logging.FileHandler(logfile)
            except OSError:
                pass
            else:
                tag = f"ocf-ipsec-vip({instance})[{os.getpid()}]"
                handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}: %(levelname)s: %(message)s"))
                logger.addHandler(handler)
        if facility not in _FACILITIES or sys.stderr.isatty():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(journal_formatter() if stderr_is_journal() else plain)  # the sweeper of a unit
            logger.addHandler(handler)

    log.configure(level, setup)


def exit_reason(message: str, environ: Mapping[str, str]) -> None:
    """One ``ocf-exit-reason:`` line on stderr (Pacemaker shows the last one)."""
    prefix = environ.get("OCF_EXIT_REASON_PREFIX") or "ocf-exit-reason:"
    line = " ".join(message.split())
    sys.stderr.write(f"{prefix}{line}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- meta-data
class Parameter(NamedTuple):
    name: str
    shortdesc: str
    longdesc: str
    required: bool = False
    default: str | None = None
    type: str = "string"


class Action(NamedTuple):
    name: str
    timeout: int
    interval: int | None = None
    depth: int | None = None
    role: str | None = None


class MetaData(NamedTuple):
    name: str
    version: str
    shortdesc: str
    longdesc: str
    parameters: Sequence[Parameter] = ()
    actions: Sequence[Action] = ()

    def xml(self) -> str:
        """OCF meta-data; valid against ra-api-1.dtd and pcs's OCF 1.1 schema."""
        out = ['<?xml version="1.0"?>', '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">',
               f"<resource-agent name={quoteattr(self.name)} version={quoteattr(self.version)}>",
               "<version>1.1</version>",
               f'<longdesc lang="en">{escape(self.longdesc)}</longdesc>',
               f'<shortdesc lang="en">{escape(self.shortdesc)}</shortdesc>', "<parameters>"]
        for p in self.parameters:
            default = f" default={quoteattr(p.default)}" if p.default is not None else ""
            out += [f'<parameter name={quoteattr(p.name)} required="{int(p.required)}">',
                    f'<longdesc lang="en">{escape(p.longdesc)}</longdesc>',
                    f'<shortdesc lang="en">{escape(p.shortdesc)}</shortdesc>',
                    f"<content type={quoteattr(p.type)}{default}/>", "</parameter>"]
        out += ["</parameters>", "<actions>"]
        for a in self.actions:
            attrs = f' name="{a.name}" timeout="{a.timeout}s"'
            if a.interval is not None:
                attrs += f' interval="{a.interval}s"'
            if a.depth is not None:
                attrs += f' depth="{a.depth}"'
            if a.role is not None:
                attrs += f' role="{a.role}"'
            out.append(f"<action{attrs}/>")
        out += ["</actions>", "</resource-agent>", ""]
        return "\n".join(out)


def run(meta: MetaData, handlers: Mapping[str, Handler], argv: Sequence[str],
        environ: Mapping[str, str]) -> int:
    """Dispatch one OCF action and return its exit code (the only place errors become codes)."""
    action = argv[1] if len(argv) > 1 else ""
    if action == "meta-data":
        sys.stdout.write(meta.xml())
        return OCF_SUCCESS
    if action in ("usage", "help", "-h", "--help"):
        sys.stdout.write(usage(meta, handlers))
        return OCF_SUCCESS
    handler = handlers.get(action)
    if handler is None:
        sys.stderr.write(usage(meta, handlers))
        exit_reason(f"action {action or '(none)'!r} is not implemented", environ)
        return OCF_ERR_UNIMPLEMENTED
    env = Env.from_environ(argv, environ)
    setup_logging(env.instance, environ)
    try:
        return handler(env)
    except IpsecVipError as e:
        log.error("%s: %s", action, e)
        exit_reason(str(e), environ)
        return e.ocf_code
    except Exception as e:  # a bug: still one clean exit reason, details in the log
        log.debug("%s failed", action, exc_info=True)
        exit_reason(f"internal error in {action}: {type(e).__name__}", environ)
        return OCF_ERR_GENERIC


def usage(meta: MetaData, handlers: Mapping[str, Handler]) -> str:
    actions = "|".join([*handlers, "meta-data", "usage"])
    return f"usage: {meta.name} {{{actions}}}\n"
