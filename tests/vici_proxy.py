"""A VICI proxy in front of a real charon, to inject faults at exact protocol points.

Client→charon packets are parsed just enough to know the command name; a hook runs
before each request is forwarded (it may sleep, kill charon, …). Charon→client packets
can be delayed. Everything else is passed through untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable


def _packet(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    (n,) = struct.unpack("!I", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return head + body


def command_of(packet: bytes) -> str:
    """Name of a request/event-register packet ('' for unnamed ones)."""
    kind, length = packet[4], packet[5] if len(packet) > 5 else 0
    return packet[6:6 + length].decode(errors="replace") if kind in (0, 3, 4) else ""


class Proxy:
    """Listen on ``path``, forward each connection to ``target`` (a unix socket path)."""

    def __init__(self, path: Path, target: str, before: Callable[[str], None] | None = None,
                 reply_delay: float = 0.0) -> None:
        self.path, self.target = str(path), target
        self.before = before or (lambda _command: None)
        self.reply_delay = reply_delay
        self.commands: list[str] = []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def uri(self) -> str:
        return "unix://" + self.path

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(client,), daemon=True).start()

    def _session(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        try:
            upstream.connect(self.target)
        except OSError:
            client.close()
            upstream.close()
            return
        threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()
        try:
            while True:
                packet = _packet(client)
                name = command_of(packet)
                self.commands.append(name)
                self.before(name)
                upstream.sendall(packet)
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            client.close()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                packet = _packet(upstream)
                if self.reply_delay:
                    time.sleep(self.reply_delay)
                client.sendall(packet)
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            upstream.close()

    def close(self) -> None:
        self.srv.close()
