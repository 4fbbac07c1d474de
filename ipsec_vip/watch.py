"""The systemd fallback: load a VIP's connections while this node holds the VIP.

For sites that move the VIP with keepalived or a cloud API instead of Pacemaker.
The daemon uses the agent's own code path: ``control.start`` when the VIP is
held here (and charon answers), ``control.stop`` when it is not, and
``control.stop`` once more on SIGTERM (so the connections never outlive the
daemon; SAs are terminated only where the VIP is gone, as in the agent's stop).

It is event driven and idles in one ``epoll_wait``:

* address changes: an rtnetlink socket bound to the VIP family's address
  group *before* the first look at the addresses, so no change is missed. An
  event only says "look again": the decision always comes from a fresh dump
  (``vip.held``), so coalesced, reordered or lost (ENOBUFS) events cannot leave
  a wrong final state, and an IPv6 VIP counts only once DAD is done (the kernel
  announces that with another RTM_NEWADDR). A plain socket (``ipsec_vip.netlink``), not pyroute2:
  Debian 12 ships pyroute2 0.7.2, whose API differs from 0.9's (no
  AsyncIPRoute), and 0.9's synchronous IPRoute buffers events internally so a
  select() on it lags; the events need no parsing here, and the import of
  pyroute2 would cost more than the monitor's whole run (docs/decisions.md);
* charon: one idle connection to the VICI socket; charon never writes to it, so
  it becomes readable exactly when charon exits. While charon is absent and
  needed (the VIP is here, or something of ours is to be unloaded) the daemon
  retries with a bounded backoff (0.1 s doubling to 5 s);
* ``check_interval`` (default 10 s, 0 = off): while loaded, one ``get-conns``
  to notice connections removed behind our back (``swanctl --load-all`` from
  strongswan.service unloads whatever it did not load itself). For 10 s after
  charon appears (after a restart, or later than the daemon) and after SIGHUP
  (the unit's reload, propagated from strongswan.service's) the check runs
  every second: that is when ``swanctl --load-all`` runs.

Actions that fail (charon refuses, config now broken, the kernel's address dump
fails) are retried with the same backoff; each error is logged once until it changes.
A broken event socket is replaced before the next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator

from ipsec_vip import control, netlink, watchconf
from ipsec_vip import vip as vipmod
from ipsec_vip.action import Deadline
from ipsec_vip.errors import IpsecVipError, NetlinkError, StateError
from ipsec_vip.params import Params
from ipsec_vip.state import Record, StateDir
from ipsec_vip.vici_session import socket_path

log = logging.getLogger("ipsec-vip")

STATE_BASE = "/run/ipsec-vip-watch"
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
_SETTLE = 10.0  # for this long after charon (re)appeared or SIGHUP ...
_SETTLE_CHECK = 1.0  # ... check this often
_RTMGRP_IPV4_IFADDR = 0x10  # linux/rtnetlink.h
_RTMGRP_IPV6_IFADDR = 0x100


# --------------------------------------------------------------------------- systemd
def notify(state: str, wait: float = 2.0) -> bool:
    """sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET`` ('@' = abstract).

    Waits at most ``wait`` seconds for room in the receiver's queue (0: drop at once,
    for STATUS= updates that must never stall the daemon).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a vsock address we do not speak
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(wait if wait > 0 else 0.0)
            s.connect(address)
            s.sendall(state.encode())
    except (BlockingIOError, socket.timeout):
        log.debug("notification queue full, dropped: %s", state.replace("\n", " "))
        return False
    except OSError as e:
        log.warning("cannot notify the service manager on %s: %s", address.lstrip("\0"), e.strerror or e)
        return False
    return True


@contextlib.contextmanager
def _signals_caught() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP logged and otherwise ignored while the final stop runs."""
    def note(sig: int, _frame: object) -> None:
        log.info("%s received: finishing the final stop first", signal.Signals(sig).name)

    saved = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def unwatch(sock: socket.socket) -> None:
    """Stop the running event loop's watching ``sock`` (if it did), then close it."""
    with contextlib.suppress(Exception):
        asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()


# --------------------------------------------------------------------------- the daemon
class Watcher:
    """Keeps one VIP's connections loaded in charon exactly while the VIP is held here."""

    def __init__(self, params: Params, instance: str, states: StateDir,
                 check_interval: float = watchconf.DEFAULT_CHECK_INTERVAL, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.params = params
        self._clock = clock  # every decision's "now" (tests drive it by hand)
        self.instance = instance
        self.states = states
        self.check_interval = check_interval
        self.timeout = timeout
        self._path = socket_path(params.vici_socket)
        self._family = socket.AF_INET6 if params.vip.version == 6 else socket.AF_INET
        self._charon: socket.socket | None = None
        self._charon_seen: bool | None = None  # last logged charon state
        self._held: bool | None = None
        self._moved = False  # the VIP came or went since the last successful action (start_without_vip)
        self._loaded = False
        self._verify = True  # look at charon's conns before trusting a state file
        self._check_at: float | None = None
        self._settle_until = 0.0
        self._first_look = True  # charon running when we start: strongswan.service is done
        self._retry_at: float | None = None
        self._failures = 0
        self._error: str | None = None
        self._status = ""
        self._wake: asyncio.Event | None = None
        self._netlink: socket.socket | None = None
        self._stopping = False
        self._code: int | None = None  # the final stop's outcome, once it ran

    def run(self) -> int:
        """Watch until SIGTERM/SIGINT; 0 after a clean stop, 1 if the final stop failed.

        The final stop runs however the loop ended (an error out of it included), so our
        connections never outlive the daemon; such an error is raised after it. Signals keep
        being caught until it is done: a second SIGTERM or a Ctrl-C during it (seconds, with a
        handoff) killed the daemon half way and left connections or a drop rule behind.
        """
        self.states.ensure()
        self._code = None
        try:
            asyncio.run(self._main())
        finally:
            if self._code is None:  # the loop never reached its own final stop
                with _signals_caught():
                    self._code = self._shutdown()
        return self._code

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            self._open()
            self._reconcile()
            notify(f"READY=1\nSTATUS={self._status}")
            while not self._stopping:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._timeout())
                self._wake.clear()
                if not self._stopping:
                    self._reconcile()
        finally:
            self._close()
            self._unlisten()
            self._disconnect()
            self._code = self._shutdown()  # the loop's handlers still take the signals meanwhile
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        if not self._stopping:
            log.info("stopping (signal received)")
        self._stopping = True
        self._poke()

    def _reload(self) -> None:
        log.info("SIGHUP: checking that our connections are loaded")
        self._verify = True
        self._settle_until = self._clock() + _SETTLE
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _listen(self) -> None:
        """Join the VIP family's address group (RTM_NEWADDR/RTM_DELADDR), unless already in it."""
        if self._netlink is None:
            self._netlink = netlink.subscribe(_RTMGRP_IPV6_IFADDR if self.params.vip.version == 6
                                              else _RTMGRP_IPV4_IFADDR)
            asyncio.get_running_loop().add_reader(self._netlink.fileno(), self._netlink_readable)

    def _unlisten(self) -> None:
        sock, self._netlink = self._netlink, None
        if sock is not None:
            unwatch(sock)

    def _netlink_readable(self) -> None:
        """Any address event means "look again" (the decision comes from a fresh dump, so the
        events need no parsing); so does an overflow (ENOBUFS). A broken socket is replaced
        at the next look."""
        if self._netlink is None:
            return
        try:
            if netlink.drain(self._netlink):
                log.warning("netlink address events overflowed; reading the addresses again")
        except NetlinkError as e:
            log.warning("%s; subscribing again", e)
            self._unlisten()
        log.debug("address event")
        self._poke()

    # ---------------------------------------------------------------- charon liveness
    def _connect(self) -> bool:
        """Hold an idle VICI connection; it turns readable (EOF) when charon goes away."""
        if self._charon is not None:
            return True
        first, self._first_look = self._first_look, False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(1.0)
        try:
            sock.connect(self._path)
        except OSError as e:
            sock.close()
            if self._charon_seen is not False:
                log.warning("charon is not answering on %s (%s); waiting for it", self.params.vici_socket,
                            e.strerror or e)
                self._charon_seen = False
            return False
        sock.setblocking(False)
        self._charon = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._charon_readable)
        if self._charon_seen is not True:
            log.info("charon answers on %s", self.params.vici_socket)
            self._charon_seen = True
        self._verify = True  # a new charon knows none of our connections
        if not first:  # charon (re)started after us: swanctl --load-all may follow
            self._settle_until = self._clock() + _SETTLE
        return True

    def _charon_readable(self) -> None:
        if self._charon is None:
            return
        try:
            data = self._charon.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # charon does not write to an idle client; ignore
        log.warning("charon closed the VICI connection (stopped or restarted)")
        self._charon_seen = None
        self._disconnect()
        self._poke()

    def _disconnect(self) -> None:
        sock, self._charon = self._charon, None
        if sock is not None:
            unwatch(sock)

    # ---------------------------------------------------------------- decisions
    def _timeout(self) -> float | None:
        due = [t for t in (self._retry_at, self._check_at if self._loaded else None, self._due()) if t is not None]
        return max(min(due) - self._clock(), 0.0) if due else None

    def _reconcile(self) -> None:
        """Compare the VIP, charon and what we loaded; call control.start/stop as needed."""
        now = self._clock()
        self._retry_at = None
        try:
            self._listen()  # subscribe first, then look: no change slips between
            held = vipmod.held(self.params.vip, self.params.interface)
        except NetlinkError as e:  # a failed or timed-out address dump: retry like the rest
            self._fail(f"cannot read this node's addresses: {e}", now)
            return
        log.debug("VIP held: %s", held)
        if held != self._held:
            where = f" on {self.params.interface}" if self.params.interface else ""
            log.info("VIP %s %s%s", self.params.vip, "is held here" if held else "is not held here", where)
            self._moved = self._moved or self._held is not None
            self._held = held
        if self._needs_charon(held) and not self._connect():
            self._backoff(now)
            self._set_status(f"waiting for charon on {self.params.vici_socket}")
            return
        if self._check_at is not None and now >= self._check_at:
            self._verify = True
        try:
            want = self._act(held, Deadline(self.timeout))
        except control.NotHeld:
            self._poke()  # the VIP left between our look and start's: look again
            return
        except IpsecVipError as e:
            self._fail(str(e), now)
            return
        if self._error is not None:
            log.info("recovered: %s", "connections loaded" if want else "nothing of ours loaded")
        self._error, self._failures, self._verify = None, 0, False
        self._loaded = want
        interval = self.check_interval
        if now < self._settle_until:
            interval = min(interval, _SETTLE_CHECK) if interval > 0 else _SETTLE_CHECK
        self._check_at = now + interval if want and interval > 0 else None
        self._set_status(self._describe(held, want))

    # ---------------------------------------------------------------- what the mode decides
    def _open(self) -> None:
        """Inside the event loop, before the first look (the primitive needs nothing more)."""

    def _close(self) -> None:
        """Undo :meth:`_open` when the loop ends."""

    def _due(self) -> float | None:
        """When the mode wants to look again regardless of events (the primitive: never)."""
        return None

    def _needs_charon(self, held: bool) -> bool:
        """Charon is needed while our connections should be loaded or something of ours still is."""
        return held or self.params.start_without_vip or self._started()

    def _act(self, held: bool, deadline: Deadline) -> bool:
        """The agent's start where the VIP is held (or always, with start_without_vip), its stop
        elsewhere; with start_without_vip a move of the VIP is followed. True if loaded now."""
        keep = self.params.start_without_vip  # loaded whether or not the VIP is here: only follow it
        want = held or keep
        record = self.states.read(self.instance)
        if want and (record is None or (self._verify and not self._healthy(record, deadline))):
            log.info("%s", control.start(self.params, self.instance, self.states, deadline, vip_coming=held))
        elif not want and record is not None:
            log.info("%s", control.stop(self.params, self.instance, self.states, deadline))
        elif keep and self._moved and record is not None:
            log.info("%s", control.vip_moved(self.params, self.instance, self.states, deadline, held))
        self._moved = False
        return want

    def _describe(self, held: bool, loaded: bool) -> str:
        return (f"VIP {self.params.vip} {'held here' if held else 'not held here'}, "
                f"{'connections loaded' if loaded else 'nothing loaded'}")

    def _started(self) -> bool:
        """A state file exists (a damaged one counts: control.stop cleans it up)."""
        try:
            return self.states.started(self.instance)
        except StateError:
            return True

    def _healthy(self, record: Record, deadline: Deadline) -> bool:
        health = control.check(self.params, record, 0, deadline)
        if health.running and not health.problems:
            return True
        log.warning("%s; loading again", "; ".join(health.problems) or "our connections are not loaded")
        return False

    def _fail(self, message: str, now: float) -> None:
        if message != self._error:
            log.error("%s (retrying)", message)
            self._error = message
        self._backoff(now)
        self._set_status(f"error: {message}")

    def _backoff(self, now: float) -> None:
        self._retry_at = now + min(_BACKOFF_MIN * 2 ** self._failures, _BACKOFF_MAX)
        self._failures = min(self._failures + 1, 16)

    def _set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            notify(f"STATUS={text}", wait=0)

    def _shutdown(self) -> int:
        """On exit: the agent's stop (unload; terminate SAs only where the VIP is gone)."""
        notify("STOPPING=1")
        try:
            log.info("%s", self._final_stop(Deadline(self.timeout)))
        except IpsecVipError as e:
            log.error("stop failed: %s", e)
            return 1
        return 0

    def _final_stop(self, deadline: Deadline) -> str:
        """The mode's stop at exit (primitive: the agent's stop, which terminates SAs only where
        the VIP is gone)."""
        return control.stop(self.params, self.instance, self.states, deadline)
