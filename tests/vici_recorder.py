"""A VICI server that records what a client sends: to see exactly what swanctl would load.

It answers every ``get-*`` command with an empty result and every other command with
``success = yes``, so ``swanctl --load-all`` runs to the end against it and each of its
requests (command name + decoded message, in order) is kept for comparison.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path
from typing import Any

from vici.protocol import FiniteStream, Message, Packet

EMPTY = {
    "get-conns": {"conns": []},
    "get-shared": {"keys": []},
    "get-keys": {"keys": []},
    "get-authorities": {"authorities": []},
}


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _send(conn: socket.socket, kind: int, message: dict[str, Any]) -> None:
    payload = struct.pack("!B", kind) + Message.serialize(message)
    conn.sendall(struct.pack("!I", len(payload)) + payload)


class Recorder:
    """Serve VICI on ``path``; ``requests`` lists (command, message) as received."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return "unix://" + self.path

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn:
                try:
                    self._talk(conn)
                except (EOFError, OSError):
                    continue

    def _talk(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!I", _recv(conn, 4))
            data = _recv(conn, length)
            kind = data[0]
            name_len = data[1]
            command = data[2:2 + name_len].decode()
            if kind != Packet.CMD_REQUEST:
                _send(conn, Packet.EVENT_UNKNOWN, {})
                continue
            message = Message.deserialize(FiniteStream(data[2 + name_len:]))
            self.requests.append((command, _plain(message)))
            _send(conn, Packet.CMD_RESPONSE, EMPTY.get(command, {} if command.startswith("get-")
                                                       else {"success": "yes"}))

    def sent(self, command: str) -> list[dict[str, Any]]:
        return [m for c, m in self.requests if c == command]

    def close(self) -> None:
        self.srv.close()


def _plain(o: Any) -> Any:
    """OrderedDicts to dicts (order kept), bytes kept as bytes."""
    if isinstance(o, dict):
        return {k.decode() if isinstance(k, bytes) else k: _plain(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_plain(x) for x in o]
    return o
