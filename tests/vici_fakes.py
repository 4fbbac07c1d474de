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
                c.shutdown(socket.SHUT_RDWR)  # the peer sees EOF even while a thread blocks in recv
            with contextlib.suppress(OSError):
                c.close()


EMPTY: dict[str, dict[str, Any]] = {
    "get-conns": {"conns": []}, "get-shared": {"keys": []}, "get-keys": {"keys": []},
    "get-authorities": {"authorities": []},
}


class Recorder(FakeServer):
    """Answers ``get-*`` with nothing and everything else with success; ``requests`` keeps
    (command, decoded message) in order."""

    def __init__(self, path: Path, replies: dict[str, dict[str, Any]] | None = None) -> None:
        """``replies``: command -> reply, beside (or instead of) the empty defaults."""
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.replies = {**EMPTY, **(replies or {})}
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
                           self.replies.get(command, {} if command.startswith("get-") else {"success": "yes"}))

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
                 reply_delay: float = 0.0, answers: dict[str, dict[str, Any]] | None = None) -> None:
        self.target = target
        self.before = before or (lambda _command: None)
        self.reply_delay = reply_delay
        self.answers = answers or {}  # command -> the reply the proxy gives itself (not forwarded)
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
        lock = threading.Lock()  # one writer at a time towards the client
        threading.Thread(target=self._pump, args=(upstream, client, self.reply_delay, None, lock),
                         daemon=True).start()
        self._pump(client, upstream, 0.0, lambda packet: self._request(packet, client, lock), None)

    def _request(self, packet: bytes, client: socket.socket, lock: threading.Lock) -> bool:
        """Hook on each packet towards charon; True when the proxy answered it itself."""
        name = command_of(packet)
        self.commands.append(name)
        self.before(name)
        if packet[4] == Packet.CMD_REQUEST and name in self.answers:
            payload = struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize(self.answers[name])
            with lock:
                client.sendall(struct.pack("!I", len(payload)) + payload)
            return True
        return False

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float,
              hook: Callable[[bytes], bool] | None, lock: threading.Lock | None) -> None:
        try:
            while True:
                packet = read_packet(src)
                if hook and hook(packet):
                    continue
                if delay:
                    time.sleep(delay)
                with lock or contextlib.nullcontext():
                    dst.sendall(packet)
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            src.close()


class FakeCharon(FakeServer):
    """A charon's VICI state in memory, for the fast tier: what is loaded (``loaded`` conns, shared
    ``keys``, ``pools``), IKE_SAs a test puts in ``sas`` (name -> list of bodies), and refusals a test puts in
    ``refuse`` (command or 'load-conn:<name>' -> errmsg). ``requests`` keeps (command, message).
    ``redirected(name, body)``, if a test sets it, gives the events (name, message) charon raises
    for one IKE_SA a ``redirect`` matched (log lines, ``ike-updown``): they go, after the reply, to
    every connection registered for them, as charon's own do."""

    def __init__(self, path: Path) -> None:
        self.loaded: dict[str, Any] = {}
        self.keys: set[str] = set()
        self.pools: dict[str, Any] = {}
        self.sas: dict[str, list[dict[str, Any]]] = {}
        self.refuse: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.redirected: Callable[[str, dict[str, Any]], list[tuple[str, dict[str, Any]]]] | None = None
        self._lock = threading.Lock()
        self._listeners: dict[socket.socket, tuple[set[str], threading.Lock]] = {}
        super().__init__(path, self._talk)

    def raise_event(self, event: str, body: dict[str, Any]) -> None:
        """Send ``event`` to every connection registered for it."""
        head = struct.pack("!BB", Packet.EVENT, len(event)) + event.encode()
        payload = head + Message.serialize(body)
        with self._lock:
            listeners = [(c, lock) for c, (names, lock) in self._listeners.items() if event in names]
        for conn, lock in listeners:
            with lock, contextlib.suppress(OSError):
                conn.sendall(struct.pack("!I", len(payload)) + payload)

    def sent(self, command: str) -> list[dict[str, Any]]:
        return [m for c, m in self.requests if c == command]

    def _talk(self, conn: socket.socket) -> None:
        events: set[str] = set()
        send = threading.Lock()
        with self._lock:
            self._listeners[conn] = (events, send)
        with conn, contextlib.suppress(EOFError, OSError):
            while True:
                packet = read_packet(conn)
                kind, name = packet[4], command_of(packet)
                if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
                    with self._lock:
                        (events.add if kind == Packet.EVENT_REGISTER else events.discard)(name)
                    with send:
                        Recorder._send(conn, Packet.EVENT_CONFIRM, {})
                    continue
                message = _text(Message.deserialize(FiniteStream(packet[6 + packet[5]:])))
                with self._lock:
                    self.requests.append((name, message))
                    streamed, reply = self._answer(name, message)
                with send:
                    for event, body in streamed:
                        if event in events:
                            head = struct.pack("!BB", Packet.EVENT, len(event)) + event.encode()
                            payload = head + Message.serialize(body)
                            conn.sendall(struct.pack("!I", len(payload)) + payload)
                    Recorder._send(conn, Packet.CMD_RESPONSE, reply)
                if name == "redirect" and self.redirected is not None and reply.get("success") == "yes":
                    for sa_name, body in self._redirect_matches(message):
                        for event, event_body in self.redirected(sa_name, body):
                            self.raise_event(event, event_body)
        with self._lock:
            self._listeners.pop(conn, None)

    def _redirect_matches(self, m: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The IKEv2 SAs a ``redirect`` selects (``ike`` name and/or ``ike-id``), as charon's walk does."""
        return [(n, b) for n, bodies in self.sas.items() for b in bodies
                if b.get("version", "2") == "2" and m.get("ike", n) == n and m.get("ike-id", b.get("uniqueid"))
                == b.get("uniqueid")]

    def _answer(self, command: str, m: dict[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        ok: dict[str, Any] = {"success": "yes"}
        for key in (command, *(f"{command}:{n}" for n in m)):
            if key in self.refuse:
                return [], {"success": "no", "errmsg": self.refuse[key]}
        if command == "version":
            return [], {"daemon": "charon", "version": "5.9.8", "sysname": "Linux"}
        if command == "stats":
            return [], {"ikesas": {"total": str(sum(len(b) for b in self.sas.values())), "half-open": "0"}}
        if command == "get-conns":
            return [], {"conns": list(self.loaded)}
        if command == "get-shared":
            return [], {"keys": sorted(self.keys)}
        if command == "get-pools":
            return [], {n: {"base": b.get("addrs", "")} for n, b in self.pools.items()}
        if command == "load-conn":
            self.loaded.update(m)
        elif command == "load-shared":
            self.keys.add(m["id"])
        elif command == "load-pool":
            self.pools.update(m)
        elif command == "unload-conn":
            if self.loaded.pop(m["name"], None) is None:
                return [], {"success": "no", "errmsg": f"connection '{m['name']}' not found"}
        elif command == "unload-shared":
            self.keys.discard(m["id"])
        elif command == "unload-pool":
            if self.pools.pop(m["name"], None) is None:
                return [], {"success": "no", "errmsg": f"pool '{m['name']}' not found"}
        elif command == "list-sas":
            return [("list-sa", {n: b}) for n, bodies in self.sas.items() for b in bodies
                    if m.get("ike", n) == n and m.get("ike-id", b.get("uniqueid")) == b.get("uniqueid")], {}
        elif command == "list-conns":
            return [("list-conn", {n: b}) for n, b in self.loaded.items() if m.get("ike", n) == n], {}
        elif command == "rekey":  # charon queues a job per child of that name; on a PASSIVE IKE_SA it does nothing
            done = [b for n, bodies in self.sas.items() if m.get("ike", n) == n for b in bodies
                    if b.get("state") != "PASSIVE"
                    for c in (b.get("child-sas") or {}).values() if c.get("name") == m.get("child")]
            if not done:
                return [], {"success": "no", "errmsg": "no matching CHILD_SAs to rekey found", "matches": "0"}
            return [], {**ok, "matches": str(len(done))}
        elif command == "redirect":
            matches = len(self._redirect_matches(m))
            if not matches:
                return [], {"success": "no", "errmsg": "no matching SAs to redirect found", "matches": "0"}
            return [], {**ok, "matches": str(matches)}
        elif command == "terminate":
            def match(n: str, b: dict[str, Any]) -> bool:  # by unique id, or (ike) by connection name
                return b.get("uniqueid") == m["ike-id"] if "ike-id" in m else n == m.get("ike")
            found = [n for n, bodies in self.sas.items() for b in bodies if match(n, b)]
            if not found:
                return [], {"success": "no", "errmsg": "no matching SAs to terminate found"}
            for n in found:
                self.sas[n] = [b for b in self.sas[n] if not match(n, b)]
            return [("control-log", {"msg": "deleting IKE_SA"})], ok
        elif command == "initiate":
            return [("control-log", {"msg": f"initiating CHILD_SA {m.get('child')}"})], ok
        return [], ok


def _text(o: Any) -> Any:
    """A VICI message with every key and value as str (charon's messages are ASCII)."""
    if isinstance(o, dict):
        return {_text(k): _text(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_text(x) for x in o]
    return o.decode() if isinstance(o, bytes) else o
