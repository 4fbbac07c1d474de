"""Writing rendered files, comparing installed ones, and loading the mesh into charon without
disturbing what others (the agent) loaded."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipsec_vip.errors import IpsecVipError, ViciCommandError
from ipsec_vip.mesh.render import SWANCTL_FILE, File

if TYPE_CHECKING:
    from ipsec_vip.vici_session import Vici

PREFIX = "mesh-"


def write(root: str, files: Sequence[File]) -> list[str]:
    """Write each file under ``root`` atomically (temp file created with its final mode, then
    renamed over the old one); returns the paths written."""
    out = []
    _directories(root, files)
    for f in files:
        path = os.path.join(root, f.path)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, f.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as out_file:
                os.fchmod(out_file.fileno(), f.mode)  # the umask may have taken bits off
                out_file.write(f.text)
                out_file.flush()
                os.fsync(out_file.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise IpsecVipError(f"cannot write {path}: {e.strerror}") from None
        out.append(path)
    return out


def _directories(root: str, files: Sequence[File]) -> None:
    """Create the missing directories for ``files`` (``root`` included): 0700 for one that will
    hold only secret (0600) files and no directory, 0755 for any other, set by chmod after mkdir
    so that no umask (000 made them 0777) decides. Existing directories are left as they are."""
    leaves: dict[str, bool] = {}  # directory -> holds only secret files
    for f in files:
        d = os.path.dirname(os.path.join(os.path.abspath(root), f.path))
        leaves[d] = leaves.get(d, True) and not f.mode & 0o077
    for leaf, secret in leaves.items():
        current = "/"
        for part in leaf.strip("/").split("/"):
            current = os.path.join(current, part)
            inner = current != leaf or any(other.startswith(leaf + "/") for other in leaves)
            mode = 0o700 if secret and not inner else 0o755
            try:
                os.mkdir(current, mode)
                os.chmod(current, mode)
            except FileExistsError:
                continue
            except OSError as e:
                raise IpsecVipError(f"cannot create {current}: {e.strerror}") from None


def file_drift(root: str, files: Sequence[File]) -> list[str]:
    """Differences between the files under ``root`` and what render would write."""
    out = []
    for f in files:
        path = os.path.join(root, f.path)
        try:
            st = os.lstat(path)
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except FileNotFoundError:
            out.append(f"{path}: missing")
            continue
        except OSError as e:
            out.append(f"{path}: cannot read: {e.strerror}")
            continue
        if text != f.text:
            old, new = text.splitlines(), f.text.splitlines()
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            out.append(f"{path}: differs from the rendered file from line {line + 1}")
        if stat.S_IMODE(st.st_mode) != f.mode:
            out.append(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, rendered {f.mode:04o}")
    return out


def loaded_drift(v: Vici, rendered: dict[str, Any], secret_ids: Sequence[str]) -> list[str]:
    """Rendered connections and secrets charon does not have; mesh connections it has that
    render no longer writes."""
    conns = set(v.request("get-conns")["conns"])
    shared = set(v.request("get-shared").get("keys", []))
    out = [f"connection {c}: not loaded in charon" for c in sorted(rendered) if c not in conns]
    out += [f"connection {c}: loaded in charon but no longer rendered"
            for c in sorted(conns) if c.startswith(PREFIX) and c not in rendered]
    out += [f"secret {s}: not loaded in charon" for s in secret_ids if s not in shared]
    return out


def load(v: Vici, root: str, timeout: float = 60.0) -> tuple[int, int, list[str]]:
    """Load the installed mesh file's secrets and connections, replacing ours and unloading mesh
    connections it no longer has (connections and secrets of others stay), then initiate each of
    its started connections that has no IKE_SA at all: a tunnel refused with an error notify (e.g.
    NO_PROPOSAL_CHOSEN from a VIP holder whose responder was not loaded yet) is never retried by
    charon. A tunnel to an address this node holds (its own VIP) is left alone.
    Returns (loaded, unloaded, initiated)."""
    from ipsec_vip import control, sas, swanctl  # the agent's loader: secrets, then conns in batches
    from ipsec_vip.action import Deadline
    from ipsec_vip.selection import Selection

    deadline = Deadline(timeout)
    config = swanctl.load(os.path.join(root, SWANCTL_FILE))
    control.load(v, Selection(config.connections, config.secrets, config.pools), deadline)  # the whole file
    stale = [c for c in v.request("get-conns")["conns"] if c.startswith(PREFIX) and c not in config.connections]
    for name in stale:
        try:
            v.request("unload-conn", {"name": name})
        except ViciCommandError as e:
            if "not found" not in e.errmsg:
                raise
    present = {s.conn for s in sas.ours(v, config.connections, deadline.left())}
    initiated = []
    for name, body in sorted(config.connections.items()):
        children = [c for c, cb in (body.get("children") or {}).items()
                    if "start" in str(cb.get("start_action", "")).split("|")]
        remote = (body.get("remote_addrs") or [""])[0]
        if not children or name in present or _held(remote):
            continue
        try:
            v.stream("initiate", "control-log", {"child": children[0], "ike": name, "timeout": "-1",
                                                 "init-limits": "no"}, timeout=deadline.left())
            initiated.append(name)
        except ViciCommandError as e:
            raise IpsecVipError(f"charon refused to initiate {name}: {e.errmsg}") from None
    return len(config.connections), len(stale), initiated


def _held(address: str) -> bool:
    from ipsec_vip import vip as vipmod

    try:
        return bool(vipmod.held(vipmod.parse_vip(address)))
    except ValueError:
        return False
