"""Per-instance state and the node-wide lock, under ``$HA_RSCTMP/ipsec-vip``.

The state file records what a resource instance loaded into charon (written
before loading, so a start cut short is still undone by stop). Its presence
means "started here". The directory is 0700, owned by us and never followed
through a symlink; files are opened with O_NOFOLLOW and replaced atomically.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence

from ipsec_vip.errors import StateError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from ipsec_vip.tuples import NamedTuple

DEFAULT_RSCTMP = "/run/resource-agents"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Record(NamedTuple):
    """What one instance loaded into charon."""

    vip: str
    config: str
    conns: list[str]
    secrets: Sequence[str] = ()
    pools: Sequence[str] = ()
    initiators: Sequence[str] = ()
    vici_socket: str = ""
    interface: str = ""
    handoff: str = "redirect"
    fallbacks: Sequence[str] = ()  # initiated once the VIP has left, terminated when it comes

    @classmethod
    def from_json(cls, data: Any) -> Record:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        rec = cls(vip=str(data["vip"]), config=str(data["config"]),
                  conns=_strings(data["conns"]), secrets=_strings(data.get("secrets", [])),
                  pools=_strings(data.get("pools", [])),
                  initiators=_strings(data.get("initiators", [])),
                  vici_socket=str(data.get("vici_socket", "")), interface=str(data.get("interface", "")),
                  handoff=str(data.get("handoff", "redirect")), fallbacks=_strings(data.get("fallbacks", [])))
        return rec


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return list(value)


class StateDir:
    """The project's directory under HA_RSCTMP."""

    def __init__(self, rsctmp: str | None = None) -> None:
        base = rsctmp or os.environ.get("HA_RSCTMP") or DEFAULT_RSCTMP
        self.path = os.path.join(base, "ipsec-vip")

    def ensure(self) -> None:
        """Create the directory (0700) or check the existing one is safe."""
        base = os.path.dirname(self.path)
        try:
            os.makedirs(base, mode=0o755, exist_ok=True)
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise StateError(f"cannot create state directory {self.path}: {e.strerror}") from None
        self._check()

    def _check(self) -> None:
        try:
            st = os.lstat(self.path)
        except OSError as e:
            raise StateError(f"cannot use state directory {self.path}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {self.path} is not a directory (symlink or file planted?)")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StateError(f"state directory {self.path} is writable by others or not ours; remove it")

    def _file(self, instance: str, suffix: str) -> str:
        return os.path.join(self.path, _UNSAFE.sub("_", instance) + suffix)

    def read(self, instance: str) -> Record | None:
        """The instance's record, or None when it is not started here."""
        if not self._exists():
            return None
        return self._read_path(self._file(instance, ".json"))

    def started(self, instance: str) -> bool:
        """A record exists, damaged or not: the cheap answer to "not started here"."""
        return self._exists() and os.path.lexists(self._file(instance, ".json"))

    def _exists(self) -> bool:
        """True if the directory exists and is safe; a planted symlink or file raises."""
        try:
            os.lstat(self.path)
        except FileNotFoundError:
            return False
        except OSError:
            pass  # _check reports it
        self._check()
        return True

    def _read_path(self, path: str) -> Record | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise StateError(f"cannot read state file {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(1 << 24)
        try:
            return Record.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise StateError(f"state file {path} is damaged; stop the resource to clean up") from None

    def write(self, instance: str, record: Record) -> None:
        """Replace the record atomically."""
        self.ensure()
        final = self._file(instance, ".json")
        tmp = final + f".{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({k: v if isinstance(v, str) else list(v) for k, v in record._asdict().items()}, f)
            os.replace(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StateError(f"cannot write state file {final}: {e.strerror}") from None

    def mark(self, instance: str, name: str) -> str | None:
        """The content of the instance's small side file ``name`` (e.g. a role), or None."""
        path = self._file(instance, "." + name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            return f.read(4096).decode("utf-8", "replace")

    def set_mark(self, instance: str, name: str, value: str | None) -> None:
        """Write (or with None remove) the side file ``name``; directory checks as for records."""
        path = self._file(instance, "." + name)
        if value is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        self.ensure()
        tmp = path + f".{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StateError(f"cannot write {path}: {e.strerror}") from None

    def remove(self, instance: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(instance, ".json"))

    def others(self, instance: str) -> list[Record]:
        """Records of every other instance on this node (damaged ones skipped)."""
        mine = _UNSAFE.sub("_", instance)
        return [rec for name, rec in self.records().items() if name != mine]

    def records(self) -> dict[str, Record]:
        """Instance (file) name -> record, for every instance started here (damaged ones skipped)."""
        out: dict[str, Record] = {}
        if not self._exists():
            return out
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StateError(f"cannot list state directory {self.path}: {e.strerror}") from None
        for name in sorted(names):
            if name.endswith(".json"):
                with contextlib.suppress(StateError):
                    rec = self._read_path(os.path.join(self.path, name))
                    if rec is not None:
                        out[name[:-len(".json")]] = rec
        return out

    @contextlib.contextmanager
    def lock(self, timeout: float, shared: bool = False) -> Iterator[None]:
        """Node-wide lock, waited for at most ``timeout`` s: exclusive around changes to
        charon, shared around a monitor (so it never sees a start or stop half done)."""
        self.ensure()
        path = os.path.join(self.path, "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StateError(f"cannot open lock {path}: {e.strerror}") from None
        try:
            end = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        raise StateError(f"another action held {path} for {timeout:.1f}s") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)
