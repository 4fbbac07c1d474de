"""charon's UDP sockets seen from outside charon: the ``ha`` plugin's sync socket (find it, size
its receive buffer, count its drops) and the IKE sockets (size their receive buffers).

charon's ``ha`` plugin receives the peer's sync on one UDP socket (port 4510, bound to
``charon.plugins.ha.local``, connected to ``remote``: ``ha_socket.c``) with no option for its
buffer, and a single thread parses and applies each datagram. With the kernel's default
receive buffer (net.core.rmem_default, 212992 bytes) a resync of 200 SAs dropped thousands of
datagrams and left the standby with half its copies (measured, docs/stateful.md). The IKE
sockets (ports 500 and 4500) meet the same default when a fleet arrives at once: 1000 clients
redirected by a handoff retry within tenths of a second, and the kernel dropped up to 286 of
their datagrams, each costing its client a 7 s retransmit (docs/handoff.md). So the agent
enlarges these buffers from outside: it finds charon's pid (the VICI socket's peer
credentials), the sockets' inodes (``/proc/<pid>/net/udp``, by port) and fds
(``/proc/<pid>/fd``), takes a duplicate of each fd (``pidfd_open`` + ``pidfd_getfd``: Linux
5.6, CAP_SYS_PTRACE over charon), sets ``SO_RCVBUFFORCE`` (CAP_NET_ADMIN: beyond rmem_max),
checks it and closes the duplicate (the socket is charon's, shared, never closed by us).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable

from ipsec_vip.errors import IpsecVipError
from ipsec_vip.vici_session import socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see ipsec_vip.tuples)
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from ipsec_vip.tuples import NamedTuple

HA_PORT = 4510  # ha_plugin.h
# What SO_RCVBUFFORCE asks for (the kernel doubles it for its bookkeeping). A resync queues about
# 3.2 KB per SA at its peak (measured: 570 KB at 200 SAs, 3.2 MB at 1000): room for ~20,000 SAs.
# Only what is queued uses memory.
RCVBUF = 32 * 1024 * 1024
IKE_PORTS = (500, 4500)  # charon.port and charon.port_nat_t, charon's defaults
IKE_RCVBUF = 8 * 1024 * 1024  # 8 and 16 MiB both absorbed 1000 clients' retries with 0 drops (docs/handoff.md)
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (every architecture Debian ships but mips/sparc/parisc)
_SYS_PIDFD_GETFD = 438  # one number on every architecture (Linux >= 5.6)


class SyncSocketError(IpsecVipError):
    """The ha socket could not be found or changed; the message says why and what the host needs."""


class SyncSocket(NamedTuple):
    """charon's ha sync socket: where it is and how it fares."""

    pid: int  # charon's
    fd: int  # in charon
    inode: int
    queued: int  # bytes waiting in its receive queue now
    drops: int  # datagrams the kernel dropped on it (a full receive buffer) since charon opened it
    rcvbuf: int | None = None  # SO_RCVBUF as the kernel reports it (twice what was set); None: not read


def charon_pid(vici_uri: str) -> int:
    """The pid of the charon that answers on ``vici_uri`` (the unix socket's peer credentials)."""
    path = socket_path(vici_uri)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError as e:
            raise SyncSocketError(f"cannot reach charon's VICI socket {path}: {e.strerror}") from None
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(pid)


def _udp(pid: int, ports: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """inode -> (bytes queued, drops) of the UDP sockets on ``ports`` in charon's network namespace."""
    out = {}
    for table in ("udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 13 or int(fields[1].rsplit(":", 1)[1], 16) not in ports:
                continue
            out[int(fields[9])] = (int(fields[4].split(":")[1], 16), int(fields[12]))
    return out


def _fds(pid: int, inodes: Iterable[int]) -> dict[int, int]:
    """inode -> charon's fd for those of ``inodes`` that are charon's own sockets."""
    wanted, out = set(inodes), {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError as e:
        raise SyncSocketError(f"cannot list charon's file descriptors (/proc/{pid}/fd): {e.strerror} "
                              "(run as root)") from None
    for name in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and int(target[8:-1]) in wanted:
            out[int(target[8:-1])] = int(name)
    return out


def find(pid: int) -> SyncSocket:
    """charon's own socket on the ha port (its fd among charon's, by inode); rcvbuf not read."""
    candidates = _udp(pid, (HA_PORT,))
    if not candidates:
        raise SyncSocketError(f"charon (pid {pid}) has no UDP socket on port {HA_PORT}: is its ha plugin "
                              "loaded with charon.plugins.ha.local and remote set?")
    for inode, fd in _fds(pid, candidates).items():
        return SyncSocket(pid, fd, inode, *candidates[inode])
    raise SyncSocketError(f"no socket of charon (pid {pid}) is bound to UDP port {HA_PORT}")


def duplicate(pid: int, fd: int) -> socket.socket:
    """A duplicate of process ``pid``'s descriptor ``fd`` in this process (pidfd_getfd)."""
    import ctypes

    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        raise SyncSocketError(f"pidfd_open(charon pid {pid}) failed: {e.strerror} (needs Linux 5.3)") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        dup = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
        if dup < 0:
            err = ctypes.get_errno()
            need = {errno.EPERM: "root with CAP_SYS_PTRACE over charon (kernel.yama.ptrace_scope 3 forbids it)",
                    errno.ENOSYS: "Linux 5.6 or later"}.get(err, "root")
            raise SyncSocketError(f"cannot take charon's socket (pidfd_getfd): {os.strerror(err)}; "
                                  f"needs {need}")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=dup)


def read(pid: int) -> SyncSocket:
    """The ha socket with its receive buffer size (needs what :func:`enlarge` needs, but changes nothing)."""
    found = find(pid)
    with duplicate(pid, found.fd) as s:
        return found._replace(rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def enlarge(pid: int, size: int = RCVBUF) -> SyncSocket:
    """Give charon's ha socket a receive buffer of ``size`` (kernel: twice that), unless it has
    one at least that large; returns the socket as it is afterwards."""
    found = find(pid)
    return found._replace(rcvbuf=_force(pid, found.fd, size, "ha socket"))


def enlarge_ike(pid: int, size: int = IKE_RCVBUF) -> int:
    """Give each of charon's IKE sockets (IKE_PORTS, IPv4 and IPv6) a receive buffer of at least
    ``size``; returns how many sockets there were."""
    fds = _fds(pid, _udp(pid, IKE_PORTS))
    for fd in fds.values():
        _force(pid, fd, size, "IKE socket")
    return len(fds)


def _force(pid: int, fd: int, size: int, what: str) -> int:
    """SO_RCVBUFFORCE ``size`` on charon's ``fd`` unless it has that much; the size afterwards."""
    with duplicate(pid, fd) as s:
        before = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if before < 2 * size:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            except OSError as e:
                raise SyncSocketError(f"cannot enlarge charon's {what} buffer (SO_RCVBUFFORCE): {e.strerror}; "
                                      "needs CAP_NET_ADMIN") from None
        now = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if now < size:
        raise SyncSocketError(f"charon's {what} kept a receive buffer of {now} bytes after asking for {size}")
    return int(now)
