"""Typed errors. Each carries the OCF exit code it maps to; only the OCF and CLI
entry points turn them into exit codes. Messages never contain secrets."""

from __future__ import annotations

# OCF exit codes (OCF 1.1 resource agent API, plus Pacemaker's "degraded").
OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_PERM = 4
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7
OCF_RUNNING_PROMOTED = 8
OCF_FAILED_PROMOTED = 9
OCF_DEGRADED = 190


class IpsecVipError(Exception):
    """Base error: message is one line suitable as an OCF exit reason."""

    ocf_code = OCF_ERR_GENERIC


class ConfigError(IpsecVipError):
    """The parameters or the swanctl.conf file are invalid in themselves."""

    ocf_code = OCF_ERR_CONFIGURED


class PermError(IpsecVipError):
    """This node's files or directories do not allow the action safely."""

    ocf_code = OCF_ERR_PERM


class NotInstalledError(IpsecVipError):
    """Software this node needs is missing."""

    ocf_code = OCF_ERR_INSTALLED


class ViciError(IpsecVipError):
    """charon could not be reached, timed out or broke the protocol."""


class ViciUnreachable(ViciError):
    """No charon answers on the socket (absent, not started, refused)."""


class ViciCommandError(ViciError):
    """charon answered a command with success=no; ``errmsg`` is charon's text."""

    def __init__(self, command: str, errmsg: str) -> None:
        super().__init__(f"charon refused {command}: {errmsg}")
        self.command = command
        self.errmsg = errmsg


class Unimplemented(IpsecVipError):
    """An action this kind of resource does not have (promote/demote of a primitive)."""

    ocf_code = OCF_ERR_UNIMPLEMENTED


class FailedPromoted(IpsecVipError):
    """A promoted instance (stateful mode) that no longer does its job here."""

    ocf_code = OCF_FAILED_PROMOTED


class StateError(IpsecVipError):
    """The per-instance state directory or file cannot be used safely."""


class NetlinkError(IpsecVipError):
    """The kernel's netlink answer could not be had or read (refused, timed out, malformed).

    ``errno`` is the kernel's error number when it gave one, else 0.
    """

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class CommandError(IpsecVipError):
    """An external command could not be run or did not finish in time (its exit code is a result)."""
