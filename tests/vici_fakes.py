"""VICI stand-ins for the faults a real charon cannot make on demand, and for watching a client.

- :class:`FakeServer`: a unix socket whose behaviour after ``accept()`` is a test's function.
- :class:`Recorder`: answers like an empty charon and keeps every request, so that what
  ``swanctl --load-all`` sends can be compared with what the library builds.
- :class:`Proxy`: forwards to a real charon, with a hook before each request (sleep, kill
  charon, …) and an optional delay on each reply.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from vici.protocol import FiniteStream, Message, Packet


def read_packet(sock: socket.socket) -> bytes:
    """One whole VICI packet, length header included; EOFError when the peer closes."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data
    head = exactly(4)
    return head + exactly(struct.unpack("!I", head)[0])


def command_of(packet: bytes) -> str:
    """Name of a request / event (un)registration packet, '' for unnamed ones."""
    if len(packet) < 6 or packet[4] not in (Packet.CMD_REQUEST, Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
        return ""
    return packet[6:6 + packet[5]].decode(errors="replace")


class FakeServer:
    """Listen on ``path``; each accepted connection goes to ``behave`` in its own thread."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.path = str(path)
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(8)
        self.behave = behave
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def uri(self) -> str:
        return "unix://" + self.path

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.behave, args=(c,), daemon=True).start()

    def close(self) -> None:
        self.srv.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


EMPTY: dict[str, dict[str, Any]] = {
    "get-conns": {"conns": []}, "get-shared": {"keys": []}, "get-keys": {"keys": []},
    "get-authorities": {"authorities": []},
}


class Recorder(FakeServer):
    """Answers ``get-*`` with nothing and everything else with success; ``requests`` keeps
    (command, decoded message) in order."""

    def __init__(self, path: Path) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        super().__init__(path, self._talk)

    def _talk(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(EOFError, OSError):
            while True:
                packet = read_packet(conn)
                command = command_of(packet)
                if packet[4] != Packet.CMD_REQUEST:
                    self._send(conn, Packet.EVENT_UNKNOWN, {})
                    continue
                self.requests.append((command, _plain(Message.deserialize(FiniteStream(packet[6 + packet[5]:])))))
                self._send(conn, Packet.CMD_RESPONSE,
                           EMPTY.get(command, {} if command.startswith("get-") else {"success": "yes"}))

    @staticmethod
    def _send(conn: socket.socket, kind: int, message: dict[str, Any]) -> None:
        payload = struct.pack("!B", kind) + Message.serialize(message)
        conn.sendall(struct.pack("!I", len(payload)) + payload)

    def sent(self, command: str) -> list[dict[str, Any]]:
        return [m for c, m in self.requests if c == command]


def _plain(o: Any) -> Any:
    if isinstance(o, dict):
        return {k.decode() if isinstance(k, bytes) else k: _plain(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_plain(x) for x in o]
    return o


class Proxy(FakeServer):
    """Forward each connection to the real charon socket ``target``."""

    def __init__(self, path: Path, target: str, before: Callable[[str], None] | None = None,
                 reply_delay: float = 0.0) -> None:
        self.target = target
        self.before = before or (lambda _command: None)
        self.reply_delay = reply_delay
        self.commands: list[str] = []
        super().__init__(path, self._session)

    def _session(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(self.target)
        except OSError:
            client.close()
            upstream.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client, self.reply_delay, None), daemon=True).start()
        self._pump(client, upstream, 0.0, self._request)

    def _request(self, packet: bytes) -> None:
        name = command_of(packet)
        self.commands.append(name)
        self.before(name)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float,
              hook: Callable[[bytes], None] | None) -> None:
        try:
            while True:
                packet = read_packet(src)
                if hook:
                    hook(packet)
                if delay:
                    time.sleep(delay)
                dst.sendall(packet)
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            src.close()
