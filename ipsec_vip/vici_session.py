"""A VICI session with real timeouts, built on strongSwan's ``vici`` package.

``vici.Session`` has no timeouts, no close, returns bytes and raises generic
exceptions. This wrapper gives every call a hard deadline (a watchdog shuts the
socket down, so even a peer that stalls mid-message cannot hang us), drops the
connection after any timeout or protocol error (the stream is out of step
then; the next call reconnects), consumes streamed replies fully, decodes values
to ``str`` and raises the project's typed errors carrying charon's ``errmsg``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
import time
import types

from ipsec_vip.errors import ViciCommandError, ViciError, ViciUnreachable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, TypeVar

    import vici

    T = TypeVar("T")

DEFAULT_SOCKET = "unix:///var/run/charon.vici"
MAX_PACKET = 64 << 20  # far above anything charon sends (one event per SA; requests are under 512 KiB)


def socket_path(uri: str) -> str:
    """``unix:///path`` or ``/path`` -> ``/path``; anything else is not a VICI socket we use."""
    path = uri[len("unix://"):] if uri.startswith("unix://") else uri
    if not path.startswith("/"):
        raise ValueError(f"vici_socket must be unix:///absolute/path, not {uri!r}")
    return path


def check_peer(sock: socket.socket, uri: str) -> None:
    """The process that serves the socket (SO_PEERCRED: who listened, as the kernel saw it at
    connect, so no file can be swapped in between) must be root's, or ours: charon runs as root,
    and anyone else listening there (a socket planted in a writable directory, a charon started
    by another user) would receive the secrets we load."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        raise ViciError(f"refusing {uri}: it is served by uid {uid} (pid {pid}), not root: not charon's socket, "
                        "or charon runs as another user")


def decode(value: Any) -> Any:
    """VICI bytes -> str, recursively."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    return value


def _session_class() -> Any:
    """``vici.Session``, if possible without running ``vici/__init__.py``.

    That file imports ``vici.event_listener``, whose ``inspect`` import costs 5-7 ms: a fifth
    of a whole monitor, for a class the agent never uses. The package is registered bare
    (its submodules import as usual) and completes itself on first access to anything else
    (PEP 562). Any surprise in the package's layout falls back to the plain import.
    """
    if "vici" not in sys.modules:
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec("vici")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("vici")
            package.__spec__, package.__file__ = spec, spec.origin
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["vici"] = package
            try:
                from vici.session import Session
            except Exception:
                for name in [m for m in sys.modules if m == "vici" or m.startswith("vici.")]:
                    del sys.modules[name]
            else:
                package.Session = Session  # type: ignore[attr-defined]
                setattr(package, "__getattr__", _complete_vici)  # noqa: B010 (PEP 562 hook on a module)
                return Session
    import vici

    return vici.Session


def _complete_vici(name: str) -> Any:
    """What ``vici/__init__.py`` would have defined, on demand."""
    import importlib

    event_listener = importlib.import_module("vici.event_listener")
    if hasattr(event_listener, name):
        return getattr(event_listener, name)
    raise AttributeError(f"module 'vici' has no attribute {name!r}")


class Vici:
    """One connection to charon's VICI socket; use as a context manager."""

    def __init__(self, uri: str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.uri = uri
        self.path = socket_path(uri)
        self.timeout = timeout
        self._session: vici.Session | None = None
        self._sock: socket.socket | None = None
        self._watchdog: _Watchdog | None = None

    def __enter__(self) -> Vici:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        sock, self._sock, self._session = self._sock, None, None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _connect(self, timeout: float) -> vici.Session:
        if self._session is None:
            session_class = _session_class()  # on first use: meta-data and usage never pay for it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(timeout, 0.001))
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                raise ViciUnreachable(f"charon is not answering on {self.uri} ({e.strerror})") from None
            except OSError as e:
                sock.close()
                raise ViciError(f"cannot connect to charon on {self.uri}: {e.strerror or e}") from None
            try:
                check_peer(sock, self.uri)
            except ViciError:
                sock.close()
                raise
            self._sock, self._session = sock, session_class(sock)
        return self._session

    def _run(self, command: str, fn: Callable[[vici.Session], T], timeout: float | None) -> T:
        _session_class()  # the package, loaded the cheap way, before its exceptions
        from vici.exception import CommandException, DeserializationException, SessionException

        limit = self.timeout if timeout is None else timeout
        if limit <= 0:
            raise ViciError(f"no time left for VICI {command} on {self.uri}")
        start = time.monotonic()
        session = self._connect(limit)
        sock = self._sock
        if sock is None:
            raise ViciError(f"no connection to {self.uri}")
        sock.settimeout(max(limit - (time.monotonic() - start), 0.001))
        if self._watchdog is None:
            self._watchdog = _Watchdog(sock)
        watchdog = self._watchdog
        call = watchdog.arm(start + limit)
        try:
            return fn(session)
        except CommandException as e:
            text = str(e)
            errmsg = text[len("Command failed: "):] if text.startswith("Command failed: ") else text
            raise ViciCommandError(command, errmsg) from None
        except ViciError:
            self.close()
            raise
        except (TimeoutError, socket.timeout):
            self.close()
            raise ViciError(f"charon did not answer VICI {command} within {limit:.1f}s on {self.uri}") from None
        except (OSError, SessionException, DeserializationException,
                struct.error, KeyError, ValueError, IndexError, UnicodeDecodeError) as e:
            self.close()
            if watchdog.fired(call):
                raise ViciError(f"charon did not answer VICI {command} within {limit:.1f}s on {self.uri}") from None
            raise ViciError(f"VICI {command} failed on {self.uri}: {type(e).__name__}: {e}") from None
        finally:
            watchdog.disarm()

    def request(self, command: str, message: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """A plain command; returns the decoded reply."""
        reply = self._run(command, lambda s: s.request(command, message), timeout)
        return decode(reply)  # type: ignore[no-any-return]

    def stream(self, command: str, event: str, message: dict[str, Any] | None = None,
               timeout: float | None = None) -> list[dict[str, Any]]:
        """A streamed command; returns every decoded event, consumed fully."""
        return self._run(command, lambda s: _streamed(s, command, event, message), timeout)


def _streamed(session: vici.Session, command: str, event: str,
              message: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``vici.Session.streamed_request``, read in large chunks and each event decoded by
    :func:`parse`. The package reads two ``recv`` per event and decodes through a BytesIO,
    then :func:`decode` walks it all again: 150 ms for ``list-sas`` of 1000 IKE_SAs, several
    times a whole monitor; this path reads the same bytes in a fraction of that
    (docs/decisions.md). The package still frames the requests and is the tests' oracle."""
    from vici.exception import CommandException, SessionException
    from vici.protocol import Message, Packet

    packets = _Packets(session.transport.socket)

    def confirm(packet: bytes) -> None:
        session.transport.send(packet)
        kind, _ = packets.next()
        while kind == Packet.EVENT:  # a late event of an earlier registration
            kind, _ = packets.next()
        if kind != Packet.EVENT_CONFIRM:
            raise SessionException(f"VICI event {event!r}: registration answered with type {kind}")

    confirm(Packet.register_event(event))
    events = []
    try:
        session.transport.send(Packet.request(command, Message.serialize(message) if message is not None else None))
        while True:
            kind, body = packets.next()
            if kind != Packet.EVENT:
                break
            events.append(parse(body[1 + body[0]:]))  # after the event's name
        if kind != Packet.CMD_RESPONSE:
            raise SessionException(f"VICI {command}: answered with type {kind}")
        result = parse(body)
    finally:
        confirm(Packet.unregister_event(event))
    if result.get("success", "yes") != "yes":
        raise CommandException(f"Command failed: {result.get('errmsg', '')}")
    return events


class _Packets:
    """VICI packets (u32 length, u8 type, body) from a socket, read in large chunks."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._buf, self._at = sock, b"", 0

    def next(self) -> tuple[int, bytes]:
        while True:
            buf, at = self._buf, self._at
            if len(buf) - at >= 4:
                length = int.from_bytes(buf[at:at + 4], "big")
                if length > MAX_PACKET:
                    raise ValueError(f"a VICI packet of {length} bytes (more than {MAX_PACKET >> 20} MiB)")
                end = at + 4 + length
                if end <= len(buf) and end > at + 4:
                    self._at = end
                    return buf[at + 4], buf[at + 5:end]
            chunk = self._sock.recv(1 << 18)
            if not chunk:
                raise ConnectionResetError("charon closed the VICI connection")
            self._buf, self._at = buf[at:] + chunk, 0


_KEYS: dict[bytes, str] = {}  # decoded names: a list-sas repeats the same few dozen keys per IKE_SA


def parse(data: bytes) -> dict[str, Any]:
    """One VICI message (sections, key/values, lists) -> nested dicts of ``str``, as
    ``vici.protocol.Message.deserialize`` followed by :func:`decode` gives it, in one pass.
    Malformed input raises ValueError (or IndexError)."""
    root: dict[str, Any] = {}
    section, stack, i, end, keys = root, [], 0, len(data), _KEYS
    while i < end:
        kind = data[i]
        if kind == 3:  # KEY_VALUE: u8 name length, name, u16 value length, value
            j = i + 2 + data[i + 1]
            k = j + 2 + (data[j] << 8 | data[j + 1])
            if k > end:
                raise ValueError(f"VICI value past the end at {i}")
            raw = data[i + 2:j]
            key = keys.get(raw)
            if key is None:
                key = keys[raw] = raw.decode("utf-8", "replace")
            value = data[j + 2:k]
            section[key] = value.decode() if value.isascii() else value.decode("utf-8", "replace")
            i = k
        elif kind == 1:  # SECTION_START: u8 name length, name
            j = i + 2 + data[i + 1]
            new: dict[str, Any] = {}
            section[data[i + 2:j].decode("utf-8", "replace")] = new
            stack.append(section)
            section, i = new, j
        elif kind == 2:  # SECTION_END
            if not stack:
                raise ValueError(f"VICI section end without a start at {i}")
            section, i = stack.pop(), i + 1
        elif kind == 4:  # LIST_START: u8 name length, name, then LIST_ITEMs (u16 length, value), LIST_END
            j = i + 2 + data[i + 1]
            name, items = data[i + 2:j].decode("utf-8", "replace"), []
            while data[j] == 5:
                k = j + 3 + (data[j + 1] << 8 | data[j + 2])
                if k > end:
                    raise ValueError(f"VICI list item past the end at {j}")
                items.append(data[j + 3:k].decode("utf-8", "replace"))
                j = k
            if data[j] != 6:
                raise ValueError(f"VICI list {name!r} not ended at {j}")
            section[name], i = items, j + 1
        else:
            raise ValueError(f"unknown VICI element {kind} at {i}")
    if stack:
        raise ValueError("VICI section not ended")
    return root


def message_size(message: dict[str, Any]) -> int:
    """Bytes of ``message`` as a VICI request body (charon drops requests over 512 KiB)."""
    _session_class()  # the package, loaded the cheap way
    from vici.protocol import Message

    return len(Message.serialize(message))


class EventListener:
    """Events charon raises (``log``, ``ike-updown``, ...) on a connection of their own, read by a
    thread that hands each to ``handle(name, event)``.

    ``wanted`` (event name -> byte strings): an event of that name is decoded only if its raw
    message contains one of them. A handoff of 1000 clients makes charon log some 6000 lines;
    the few that matter must not queue behind the rest (charon buffers what we have not read,
    without bound), and decoding every one cost more than the whole exchange.

    The registrations must be confirmed within ``timeout`` however slowly the other end writes
    (a watchdog shuts the socket down: a per-recv timeout was reset by each byte); packets are
    bounded (:data:`MAX_PACKET`)."""

    def __init__(self, uri: str, events: Sequence[str], timeout: float,
                 handle: Callable[[str, dict[str, Any]], None],
                 wanted: dict[str, tuple[bytes, ...]] | None = None) -> None:
        _session_class()  # the package, loaded the cheap way
        from vici.protocol import Packet

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(max(timeout, 0.1))
        self._handle, self._wanted = handle, dict(wanted or {})
        self._stopped = False
        self._packets = _Packets(self._sock)
        watchdog = _Watchdog(self._sock)
        call = watchdog.arm(time.monotonic() + max(timeout, 0.1))
        try:
            self._sock.connect(socket_path(uri))
            check_peer(self._sock, uri)
            for name in events:
                packet = Packet.register_event(name)
                self._sock.sendall(len(packet).to_bytes(4, "big") + packet)
                kind, _ = self._packets.next()
                while kind == Packet.EVENT:  # one registered before raised already
                    kind, _ = self._packets.next()
                if kind != Packet.EVENT_CONFIRM:
                    raise ViciError(f"charon does not offer {name!r} events over VICI")
        except (OSError, ValueError, ViciError) as e:
            self._sock.close()
            why = "no confirmation in time" if watchdog.fired(call) else str(e)
            raise ViciError(f"cannot listen to charon's events on {uri}: {why}") from None
        finally:
            watchdog.stop()
        self._sock.settimeout(None)  # the thread waits for events; close() wakes it
        self._thread = threading.Thread(target=self._loop, name="vici-events", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from vici.protocol import Packet

        while not self._stopped:
            try:
                kind, body = self._packets.next()
            except (OSError, ValueError):
                return
            if kind != Packet.EVENT or not body:
                continue
            name, payload = body[1:1 + body[0]].decode("ascii", "replace"), body[1 + body[0]:]
            wanted = self._wanted.get(name)
            if wanted is not None and not any(w in payload for w in wanted):
                continue
            with contextlib.suppress(ValueError, IndexError, TypeError):  # one odd event is skipped
                self._handle(name, parse(payload))

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(1.0)
        self._sock.close()


class _Watchdog:
    """Shuts the connection's socket down when a call outlives its deadline.

    One thread per connection, armed and disarmed per call: a ``threading.Timer``
    per call cost a thread start each (about 0.1 ms, far more on a busy node),
    which made unloading 1000 connections several times slower.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._call = 0
        self._fired_call = -1
        self._stopped = False
        self._waiting_until: float | None = None
        threading.Thread(target=self._loop, name="vici-watchdog", daemon=True).start()

    def arm(self, deadline: float) -> int:
        """Start watching a call that must end by ``deadline`` (monotonic); returns its number."""
        with self._cond:
            self._call += 1
            self._deadline = deadline
            if self._waiting_until is None or deadline < self._waiting_until:
                self._cond.notify()
            return self._call

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def fired(self, call: int) -> bool:
        """Did the watchdog shut the socket down during call number ``call``?"""
        with self._cond:
            return self._fired_call == call

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._waiting_until = None
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._waiting_until = self._deadline
                    self._cond.wait(left)
                    continue
                self._fired_call, self._deadline = self._call, None
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
