"""``ipsec-vip check``: one function per check, each returning Findings with the fix.

The checks run in :data:`CHECKS` order over a :class:`Context` that fetches each fact
(charon's plugins, the parsed configs, the firewall rules) once. A finding never
quotes a secret: PSKs are judged by length and an entropy estimate and named by
their section only.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shlex
import stat
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from ipsec_vip import charon, control, firewall, netlink, swanctl
from ipsec_vip.errors import CommandError, ConfigError, IpsecVipError, NetlinkError
from ipsec_vip.params import Params
from ipsec_vip.runner import Runner
from ipsec_vip.vici_session import Vici

if TYPE_CHECKING:
    from ipsec_vip.vip import IPAddress

OK, WARN, FAIL = "ok", "warn", "fail"
SWANCTL_CONF = "/etc/swanctl/swanctl.conf"
STRONGSWAN_CONF = "/etc/strongswan.conf"
PING = next((p for p in ("/usr/bin/ping", "/bin/ping") if os.path.exists(p)), "/usr/bin/ping")
IP = next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip", "/usr/bin/ip") if os.path.exists(p)), "/usr/sbin/ip")
UNSHARE = next((p for p in ("/usr/bin/unshare", "/bin/unshare") if os.path.exists(p)), "/usr/bin/unshare")
PSK_MIN_CHARS = 32
PSK_MIN_BITS = 128
LIBIPSEC_LIMITS = ("kernel-libipsec: ESP done in userland inside the one charon process, through a TUN device "
                   "(ipsec0), always UDP-encapsulated on port 4500, much slower than the kernel and buffering "
                   "packets in memory; strongSwan does not recommend it for gateways")
_XFRM_MSG_GETSA = 0x12  # linux/xfrm.h


class Finding(NamedTuple):
    """One result: ``level`` is ok, warn or fail; ``fix`` says what to do (empty when ok)."""

    name: str
    level: str
    message: str
    fix: str = ""


class Target(NamedTuple):
    """A configuration to check: the VIP's parameters, or a config file without a VIP."""

    label: str
    config: str
    params: Params | None


class Context:
    """The facts the checks share, each fetched once."""

    def __init__(self, targets: list[Target], vici_sockets: list[str], timeout: float = 5.0,
                 swanctl_conf: str = SWANCTL_CONF, families: Iterable[int] = (4,),
                 early: Iterable[Finding] = (), runner: Runner | None = None) -> None:
        self.targets = targets
        self.runner = runner or Runner()
        self.early = list(early)  # findings made while gathering the targets
        self.vici_sockets = vici_sockets
        self.timeout = timeout
        self.swanctl_conf = swanctl_conf
        self.families = sorted(set(families))
        self._plugins: dict[str, list[str] | str] = {}
        self._selections: dict[int, Any] = {}
        self._esp: tuple[bool | None, str] | None = None
        self.firewall_chains: list[tuple[str, ...]] = []
        self.strongswan_conf = STRONGSWAN_CONF

    def plugins(self, uri: str) -> list[str] | str:
        """charon's loaded plugins (VICI ``stats``), or why they are unknown."""
        if uri not in self._plugins:
            try:
                with Vici(uri, timeout=self.timeout) as v:
                    self._plugins[uri] = list(v.request("stats").get("plugins", []))
            except IpsecVipError as e:
                self._plugins[uri] = str(e)
        return self._plugins[uri]

    def libipsec(self) -> bool:
        return any(isinstance(p, list) and "kernel-libipsec" in p for p in map(self.plugins, self.vici_sockets))

    def selection(self, t: Target) -> Any:
        """The target's connections/secrets/pools (a Selection or SwanctlConfig); raises ConfigError."""
        key = id(t)
        if key not in self._selections:
            try:
                self._selections[key] = (control.select(t.params) if t.params is not None
                                         else swanctl.load(t.config))
            except IpsecVipError as e:
                self._selections[key] = e
        sel = self._selections[key]
        if isinstance(sel, IpsecVipError):
            raise sel
        return sel

    def selections(self) -> list[tuple[Target, Any]]:
        out = []
        for t in self.targets:
            with contextlib.suppress(IpsecVipError):
                out.append((t, self.selection(t)))
        return out

    def kernel_esp(self) -> tuple[bool | None, str]:
        """(ESP in the kernel?, detail), probed once."""
        if self._esp is None:
            self._esp = self._probe_esp()
        return self._esp

    def _probe_esp(self) -> tuple[bool | None, str]:
        """Add and delete an ESP SA in a throw-away network namespace."""
        batch = ("xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 mode tunnel "
                 "enc cbc(aes) 0x000102030405060708090a0b0c0d0e0f "
                 "auth-trunc hmac(sha256) 0x000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f 128\n"
                 "xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000\n")
        try:
            p = self.runner.run([UNSHARE, "--net", "--", IP, "-batch", "-"], stdin=batch, timeout=10)
        except CommandError as e:
            return None, str(e)
        err = " ".join(p.stderr.split())
        if p.returncode == 0:
            return True, "an ESP SA was added and deleted in a temporary network namespace"
        if "Requested type not found" in err or "Protocol not supported" in err:
            return False, "the kernel refuses ESP SAs (no esp4/esp6 support)"
        return None, f"probe failed: {err[:200]}"


# --------------------------------------------------------------------------- kernel
def check_xfrm_netlink(ctx: Context) -> list[Finding]:
    """Open a NETLINK_XFRM socket and dump the SAs (XFRM_MSG_GETSA)."""
    name = "xfrm-netlink"
    try:
        netlink.dump(netlink.NETLINK_XFRM, _XFRM_MSG_GETSA, b"", "the XFRM SA dump (XFRM_MSG_GETSA)")
    except NetlinkError as e:
        fix = "load the xfrm_user module (modprobe xfrm_user) or use a kernel with CONFIG_XFRM_USER"
        if e.errno in (errno.EPERM, errno.EACCES):
            fix = "run ipsec-vip check as root"
        return [Finding(name, FAIL, f"cannot use the XFRM netlink interface: {e}", fix)]
    return [Finding(name, OK, "XFRM netlink answers a dump of the SAs")]


def check_kernel_esp(ctx: Context) -> list[Finding]:
    """Probe ESP by adding and deleting an SA in a temporary network namespace."""
    name = "kernel-esp"
    esp, detail = ctx.kernel_esp()
    if esp:
        return [Finding(name, OK, f"ESP available in the kernel ({detail})")]
    if esp is None:
        return [Finding(name, WARN, f"could not tell whether the kernel has ESP: {detail}",
                        "run as root with util-linux unshare and iproute2 installed")]
    if ctx.libipsec():
        return [Finding(name, WARN, f"{detail}; charon uses kernel-libipsec instead ({LIBIPSEC_LIMITS})",
                        "for kernel speed load esp4/esp6 (CONFIG_INET_ESP, CONFIG_INET6_ESP) and drop kernel-libipsec")]
    return [Finding(name, FAIL, f"{detail}: charon cannot install SAs",
                    "load esp4/esp6 (modprobe esp4 esp6) or use a kernel with CONFIG_INET_ESP; else load "
                    f"charon's kernel-libipsec plugin (Debian: libcharon-extra-plugins) and know its limits: "
                    f"{LIBIPSEC_LIMITS}")]


def check_tun(ctx: Context) -> list[Finding]:
    """/dev/net/tun must open (kernel-libipsec needs it)."""
    name = "tun"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as e:
        needed = ctx.libipsec() or ctx.kernel_esp()[0] is False
        return [Finding(name, FAIL if needed else WARN, f"/dev/net/tun does not open: {e.strerror}"
                        + ("; kernel-libipsec needs it" if needed else ""),
                        "modprobe tun (CONFIG_TUN); in a container, pass /dev/net/tun through")]
    return [Finding(name, OK, "/dev/net/tun opens")]


# --------------------------------------------------------------------------- charon
def check_charon_running(ctx: Context) -> list[Finding]:
    """A charon (or charon-systemd) process runs in this network namespace."""
    pids = charon.running()
    if not pids:
        return [Finding("charon-running", FAIL, "no charon process runs",
                        "systemctl enable --now strongswan (Debian; charon-systemd) on every node")]
    return [Finding("charon-running", OK, f"charon runs (pid {', '.join(map(str, pids[:5]))})")]


def check_vici(ctx: Context) -> list[Finding]:
    """Each VICI socket in use answers ``version``."""
    out = []
    for uri in ctx.vici_sockets:
        try:
            with Vici(uri, timeout=ctx.timeout) as v:
                ver = v.request("version")
            out.append(Finding("vici", OK, f"{uri} answers: {ver.get('daemon')} {ver.get('version')}"))
        except IpsecVipError as e:
            out.append(Finding("vici", FAIL, str(e), "start charon with the vici plugin loaded and its socket at "
                               f"{uri} (strongswan.conf charon.plugins.vici.socket)"))
    return out


def _auth_plugins(conns: dict[str, dict[str, Any]]) -> dict[str, str]:
    """plugin -> why the config needs it."""
    need: dict[str, str] = {}
    for cname, body in conns.items():
        for sect, auth in body.items():
            if not (isinstance(auth, dict) and sect.lower().startswith(("local", "remote"))):
                continue
            method = str(auth.get("auth", "pubkey")).lower()
            where = f"connection {cname} {sect} auth = {method}"
            if method.startswith("eap-"):
                need.setdefault(method.split(":")[0], where)
            elif method == "eap":
                need.setdefault("eap-identity", where)
            elif method.startswith("xauth"):
                need.setdefault("xauth-generic" if method == "xauth" else method, where)
            elif method in ("pubkey", "rsa", "ecdsa") or method.startswith(("rsa", "ecdsa", "pubkey")):
                need.setdefault("x509", where)
                need.setdefault("pem", where)
        pools = body.get("pools", [])
        if "dhcp" in pools:
            need.setdefault("dhcp", f"connection {cname} pools = dhcp")
        if "radius" in pools:
            need.setdefault("eap-radius", f"connection {cname} pools = radius")
        for child, cbody in (body.get("children") or {}).items():
            if isinstance(cbody, dict) and cbody.get("updown"):
                need.setdefault("updown", f"connection {cname} child {child} updown")
    return need


def check_plugins(ctx: Context) -> list[Finding]:
    """charon's plugins (VICI ``stats``) cover what every node and the configs need."""
    out = []
    conns: dict[str, dict[str, Any]] = {}
    for _, sel in ctx.selections():
        conns.update(sel.connections)
    for uri in ctx.vici_sockets:
        loaded = ctx.plugins(uri)
        if isinstance(loaded, str):
            out.append(Finding("plugins", FAIL, f"cannot list charon's plugins: {loaded}", "start charon"))
            continue
        need = {"vici": "the agent talks VICI", "kernel-netlink": "addresses, routes and (kernel) SAs",
                "nonce": "IKE nonces"}
        if not {"socket-default", "socket-dynamic"} & set(loaded):
            need["socket-default"] = "IKE on UDP 500/4500"
        if ctx.kernel_esp()[0] is False:
            need["kernel-libipsec"] = "the kernel has no ESP"
        if not {"openssl", "gcrypt", "botan", "wolfssl"} & set(loaded) and not {"aes", "sha2", "hmac"} <= set(loaded):
            need["openssl"] = "IKE crypto (or aes + sha2 + hmac)"
        need.update({k: v for k, v in _auth_plugins(conns).items() if k not in need})
        missing = {p: why for p, why in need.items() if p not in loaded}
        if missing:
            out.append(Finding("plugins", FAIL, "charon lacks plugin(s): " + "; ".join(
                f"{p} ({why})" for p, why in missing.items()),
                "install them (Debian: libstrongswan-standard-plugins, libcharon-extra-plugins) and add them to "
                "charon { load = ... } in strongswan.conf, or drop load = to load all installed ones"))
        else:
            out.append(Finding("plugins", OK, f"{uri}: needed plugins loaded ({', '.join(need)})"))
    return out


# --------------------------------------------------------------------------- configuration
def check_config(ctx: Context) -> list[Finding]:
    """Each configuration parses and, for a VIP, selects connections."""
    if not ctx.targets:
        return [Finding("config", WARN, "no VIP configured here (no resource started, no watch config, "
                        "no config file)", "pass --vip and --config, or create /etc/ipsec-vip/swanctl.conf")]
    out = []
    for t in ctx.targets:
        try:
            sel = ctx.selection(t)
        except IpsecVipError as e:
            out.append(Finding("config", FAIL, f"{t.label}: {e}", f"correct {t.config} (the agent refuses it, "
                               "exit 6)"))
            continue
        out.append(Finding("config", OK, f"{t.label}: {t.config} parses: {len(sel.connections)} connection(s), "
                           f"{len(sel.secrets)} secret(s), {len(sel.pools)} pool(s)"))
    return out


def check_connections(ctx: Context) -> list[Finding]:
    """Connections are bound to the VIP (local_addrs), answer rather than start, and have mobike off."""
    from ipsec_vip import selection

    out: list[Finding] = []
    for t, sel in ctx.selections():
        before = len(out)
        for name, body in sel.connections.items():
            addrs = [str(v) for v in body.get("local_addrs") or []]
            where = f"{t.label}: connection {name}"
            vip = t.params.vip if t.params is not None else None
            if not addrs or any(a in ("%any", "%any4", "%any6", "0.0.0.0", "::") for a in addrs):  # noqa: S104
                out.append(Finding("connections", FAIL, f"{where} has no fixed local_addrs: it would answer on "
                                   "every address of the node", f"set local_addrs = {vip or 'the VIP'}"))
            elif vip is not None and not selection.bound_to(body, vip):
                out.append(Finding("connections", WARN, f"{where}: local_addrs {', '.join(addrs)} lacks the VIP "
                                   f"{vip}", f"add {vip} to local_addrs"))
            starts = selection.starting_children(body, ("start", "trap"))
            if starts:
                out.append(Finding("connections", WARN, f"{where}: child(ren) {', '.join(starts)} initiate "
                                   "(start_action start/trap) from the VIP", "fine for site-to-site; for road "
                                   "warriors use start_action = none (the default)"))
        sel_warnings = selection.mobike_warnings(sel)
        out += [Finding("mobike", WARN, f"{t.label}: {w}", "set mobike = no in the connection") for w in sel_warnings]
        if len(out) == before:
            out.append(Finding("connections", OK, f"{t.label}: {len(sel.connections)} VIP-bound responder "
                               "connection(s), mobike off"))
    return out


def psk_bits(data: bytes) -> float:
    """Entropy estimate: 8 bits per byte of a binary (0x/0s) secret; for text, length x log2 of the
    alphabet of the character classes used. 0 when the secret compresses (repeats itself) or
    uses fewer than 10 distinct characters."""
    if len(set(data)) < min(10, len(data)) or len(zlib.compress(data, 9)) < len(data):
        return 0.0
    if not all(32 < b < 127 for b in data):
        return 8.0 * len(data)
    pool = (26 * any(97 <= b <= 122 for b in data) + 26 * any(65 <= b <= 90 for b in data)
            + 10 * any(48 <= b <= 57 for b in data) + 32 * any(not chr(b).isalnum() for b in data))
    return len(data) * math.log2(max(pool, 2))


def check_psk_strength(ctx: Context) -> list[Finding]:
    """IKE PSKs have >= 32 characters and >= 128 bits estimated entropy (never printed)."""
    out = []
    seen: set[tuple[str, str]] = set()
    for t, sel in ctx.selections():
        for s in sel.secrets:
            if s.get("type") not in ("ike", "ppk") or (t.config, s["id"]) in seen:
                continue
            seen.add((t.config, s["id"]))
            out.append(_psk_finding("psk", f"secrets.{s['id']} in {t.config}", s.get("data", b""),
                                    "replace it with the output of 'ipsec-vip psk' (43 random characters) on "
                                    "both ends"))
    return out


def _psk_finding(name: str, where: str, data: bytes, fix: str) -> Finding:
    """A PSK judged by its length and entropy estimate (the value is never printed)."""
    binary = not all(32 <= b < 127 for b in data)
    bits = psk_bits(data)
    size = f"{len(data)} bytes" if binary else f"{len(data)} characters"
    if bits < PSK_MIN_BITS or (not binary and len(data) < PSK_MIN_CHARS):
        why = "repeats itself or has few distinct characters" if bits == 0 else f"about {bits:.0f} bits"
        return Finding(name, FAIL, f"{where}: weak PSK ({size}, {why})", fix)
    return Finding(name, OK, f"{where}: {size}, about {bits:.0f} bits")


def include_files(path: str) -> dict[str, bool]:
    """``path`` and every file it includes (the reader's own include rules, cycles listed once),
    each mapped to whether it sets a ``secret``; only ``path`` itself (holding none that we can
    tell: the config check reports the parse error) if the files do not parse, none if it cannot
    be read."""
    try:
        return swanctl.files(path)
    except ConfigError:
        return {os.path.realpath(path): False} if os.path.isfile(path) else {}


def check_not_load_all(ctx: Context) -> list[Finding]:
    """The managed config is neither under /etc/swanctl nor included from swanctl.conf."""
    base = os.path.dirname(ctx.swanctl_conf)
    loaded_by_all = set(include_files(ctx.swanctl_conf))
    out = []
    for config in dict.fromkeys(t.config for t in ctx.targets):
        files = list(include_files(config)) or [os.path.realpath(config)]
        inside = [f for f in files if f.startswith(os.path.realpath(base) + os.sep)]
        shared = [f for f in files if f in loaded_by_all]
        if inside or shared:
            what = ", ".join(dict.fromkeys(inside + shared))
            out.append(Finding("load-all", FAIL, f"{config}: {what} is loaded by 'swanctl --load-all' "
                               f"(under {base} or included from {ctx.swanctl_conf}) on every node, and "
                               "'--load-all' unloads what the agent loaded",
                               f"move it to /etc/ipsec-vip/ and remove any include of it from {ctx.swanctl_conf}"))
        else:
            out.append(Finding("load-all", OK, f"{config}: not loaded by 'swanctl --load-all'"))
    return out


def check_secret_files(ctx: Context) -> list[Finding]:
    """Files of the configs that hold secrets are not readable or writable by group or others."""
    out = []
    done: set[str] = set()
    for config in dict.fromkeys(t.config for t in ctx.targets):
        for path, holds in include_files(config).items():
            if path in done:
                continue
            done.add(path)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if holds and st.st_mode & 0o077:
                out.append(Finding("secret-files", WARN, f"{path} holds secrets and is mode "
                                   f"{stat.S_IMODE(st.st_mode):04o} (group/others may read it)",
                                   f"chmod 600 {shlex.quote(path)}"))
            elif holds:
                out.append(Finding("secret-files", OK, f"{path} holds secrets, mode {stat.S_IMODE(st.st_mode):04o}"))
    return out


# --------------------------------------------------------------------------- firewall
def check_firewall(ctx: Context) -> list[Finding]:
    """nftables and iptables let UDP 500, UDP 4500 (any source port) and ESP in."""
    rules = firewall.read(ctx.runner)
    out = [Finding("firewall", WARN, e, "run as root") for e in rules.errors]
    ctx.firewall_chains = []
    for pkt in firewall.packets(ctx.families):
        v = firewall.evaluate(rules, pkt)
        notes = f" ({'; '.join(v.notes)})" if v is not None and v.notes else ""
        if v is None and rules.errors:
            out.append(Finding("firewall", WARN, f"{pkt.label}: cannot tell, the rules could not be read",
                               "run ipsec-vip check as root"))
        elif v is None:
            out.append(Finding("firewall", OK, f"{pkt.label}: no firewall rules, accepting"
                               + ("" if rules.tools else " (neither nft nor iptables-save is installed)")))
        elif v.result == "accept":
            out.append(Finding("firewall", OK, f"{pkt.label}: accepted by {v.where}{notes}"))
        else:
            esp_libipsec = pkt.proto == 50 and ctx.libipsec()
            level = WARN if v.result == "unknown" or esp_libipsec else FAIL
            if v.chain and v.chain not in ctx.firewall_chains:
                ctx.firewall_chains.append(v.chain)
            text = (f"{pkt.label}: dropped by {v.where}{notes}" if v.result == "drop"
                    else f"{pkt.label}: not sure it is accepted: {v.where}")
            if esp_libipsec:
                text += " (kernel-libipsec only uses UDP-encapsulated ESP on 4500, so this does not matter now)"
            out.append(Finding("firewall", level, text, "; ".join(firewall.fix_hints(v.chain, pkt.proto))
                               + " (ipsec-vip check --fix-hints prints the rules)"))
    return out


def check_handoff_rules(ctx: Context) -> list[Finding]:
    """No drop rule of a handoff (ipsec_vip.droprule) outlives it: the sweeper removes it once the
    VIP has left, the next start before loading; one on a node without the VIP is a leftover -
    but for a stateful instance started and not promoted here, which holds new clients back until
    its promote (the ha plugin's pools serve only the promoted node)."""
    from ipsec_vip import droprule
    from ipsec_vip import vip as vipmod

    standby = _unpromoted_vips() if _ha_loaded(ctx) else set()

    if not droprule.installed():
        return []
    try:
        rules = droprule.listed()
    except droprule.NftUnavailable as e:
        return [Finding("handoff", WARN, f"cannot read the handoff's drop rules: {e}", "run as root")]
    if not rules:
        return [Finding("handoff", OK, f"no drop rule of a handoff in nftables table "
                                       f"{droprule.FAMILY} {droprule.TABLE}")]
    out = []
    for vip, handles in sorted(rules.items(), key=lambda kv: (kv[0].version, kv[0])):
        fix = "; ".join(shlex.join(["nft", "delete", "rule", droprule.FAMILY, droprule.TABLE, droprule.CHAIN,
                                    "handle", str(h)]) for h in handles)
        if vip in standby:
            out.append(Finding("handoff", OK, f"new IKE_SA_INIT to VIP {vip} are dropped until this node's "
                               "stateful instance is promoted (the ha plugin's pools give no address before)"))
        elif vipmod.held(vip):
            out.append(Finding("handoff", WARN, f"new IKE_SA_INIT to VIP {vip}, held here, are dropped by a "
                               "handoff's rule: right for the moment between stop and the VIP's departure, "
                               "else no new client can connect", f"{fix} (or start the resource: start removes it)"))
        else:
            out.append(Finding("handoff", FAIL, f"leftover drop rule of a handoff for VIP {vip}, which this node "
                               "does not hold: new clients would be dropped if the VIP came back without the "
                               "resource's start", fix))
    return out


def _unpromoted_vips() -> set[IPAddress]:
    """The VIPs of the instances started here and not promoted (stateful: the promoted mark)."""
    from ipsec_vip import promotion
    from ipsec_vip import vip as vipmod
    from ipsec_vip.state import StateDir

    states = StateDir()
    try:
        records = states.records()
    except IpsecVipError:
        return set()
    out = set()
    for name, record in records.items():
        with contextlib.suppress(IpsecVipError):
            if not promotion.promoted(states, name):
                out.add(vipmod.parse_vip(record.vip))
    return out


_TRUE = ("1", "yes", "true", "on", "enabled")


def _ha_settings(path: str) -> dict[str, str] | None:
    """charon's ha plugin settings; charon-systemd reads its own section, falling back to charon's."""
    found = [swanctl.settings(path, f"{ns}.plugins.ha") for ns in ("charon", "charon-systemd")]
    if found == [None, None]:
        return None
    return {**(found[0] or {}), **(found[1] or {})}


def _ha_loaded(ctx: Context) -> bool:
    return any(isinstance(p, list) and "ha" in p for p in map(ctx.plugins, ctx.vici_sockets))


def _stateful(ctx: Context, ha: dict[str, str] | None) -> bool:
    """charon runs the ha plugin, or strongswan.conf configures it (Debian ships an ha section of
    commented-out defaults: that alone is not stateful)."""
    return _ha_loaded(ctx) or bool(ha and (ha.get("local") or ha.get("remote")))


def check_ha(ctx: Context) -> list[Finding]:
    """Stateful mode: strongswan.conf's charon.plugins.ha fits a Pacemaker-driven pair."""
    loaded = _ha_loaded(ctx)
    try:
        ha = _ha_settings(ctx.strongswan_conf)
    except ConfigError as e:
        return [Finding("ha", FAIL if loaded else WARN, str(e), f"fix {ctx.strongswan_conf}")] if loaded else []
    if not _stateful(ctx, ha):
        return []
    if ha is None:
        return [Finding("ha", FAIL, f"charon runs the ha plugin but {ctx.strongswan_conf} has no "
                        "charon.plugins.ha section", "configure it as docs/stateful.md shows")]
    where = f"{ctx.strongswan_conf} charon.plugins.ha"
    out = []
    if ha.get("monitor", "yes").lower() in _TRUE:
        out.append(Finding("ha", FAIL, f"{where}: monitor is on: the plugin's heartbeat moves the segment "
                           "behind Pacemaker's back", "set monitor = no"))
    if ha.get("segment_count", "1").strip() != "1":
        out.append(Finding("ha", FAIL, f"{where}: segment_count = {ha.get('segment_count')}: an active/passive "
                           "pair has one segment", "set segment_count = 1"))
    if ha.get("fifo_interface", "yes").lower() not in _TRUE:
        out.append(Finding("ha", FAIL, f"{where}: fifo_interface is off: promote/demote cannot move the segment",
                           "set fifo_interface = yes"))
    if not ha.get("secret"):
        out.append(Finding("ha", FAIL, f"{where}: no secret: the SA keys cross the sync link in clear, and "
                           "whoever can send UDP 4510 from the peer's address can forge sync messages",
                           "set secret = <ipsec-vip psk> (the same on both nodes); limit UDP 4510 to the peer "
                           "(docs/stateful.md)"))
    else:
        out += _ha_secret(ctx.strongswan_conf, where, ha["secret"])
        if ctx.libipsec():
            out.append(Finding("ha", FAIL, f"{where}: secret has no effect with kernel-libipsec: the plugin "
                               "protects the sync with a transport-mode IPsec policy, which kernel-libipsec "
                               "cannot install ('installing trap failed'); the SA keys cross the sync link in "
                               "clear and sync messages are not authenticated",
                               "use kernel ESP, or a sync link nobody else can reach (a cable between the two "
                               "nodes) and the UDP 4510 rule of docs/stateful.md"))
    if ha.get("resync", "yes").lower() in _TRUE:
        out.append(Finding("ha", WARN, f"{where}: resync is on: a request 1 s after charon starts races the "
                           "connections' loading and can leave duplicate passive SAs",
                           "set resync = no (the agent resyncs a rejoining node)"))
    local, remote = ha.get("local", ""), ha.get("remote", "")
    out += _ha_addresses(ctx, where, local, remote)
    if not out:
        out.append(Finding("ha", OK, f"{where}: monitor = no, one segment, FIFO, secret, local {local}, "
                           f"peer {remote} answers"))
    return out


def _ha_secret(conf: str, where: str, secret: str) -> list[Finding]:
    """The problems of the ha plugin's secret: weak (judged as a PSK: it is the PSK of the plugin's
    own IKE_SA), or in a file group or others may read (the value is never printed)."""
    out = []
    strength = _psk_finding("ha", f"{where}: secret", secret.encode(),
                            "set secret = the output of 'ipsec-vip psk' (the same on both nodes)")
    if strength.level != OK:
        out.append(strength)
    path = next(filter(None, (swanctl.setting_file(conf, f"{ns}.plugins.ha", "secret")
                              for ns in ("charon-systemd", "charon"))), conf)
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            out.append(Finding("ha", FAIL, f"{where}: the secret is in {path}, mode {mode:04o}: other users of "
                               "this node can read it and, with it, forge sync messages",
                               f"chmod 600 {shlex.quote(path)}"))
    return out


def _ha_addresses(ctx: Context, where: str, local: str, remote: str) -> list[Finding]:
    from ipsec_vip import vip as vipmod

    out = []
    try:
        mine = vipmod.parse_address(local)
    except ValueError:
        return [Finding("ha", FAIL, f"{where}: local {local!r} is not an address", "set local = this node's "
                        "address on the sync link")]
    if not vipmod.holders(mine):
        out.append(Finding("ha", FAIL, f"{where}: local {local} is not an address of this node",
                           "set local to this node's address on the sync link"))
    try:
        vipmod.parse_address(remote)
    except ValueError:
        return [*out, Finding("ha", FAIL, f"{where}: remote {remote!r} is not an address",
                              "set remote = the peer's address on the sync link")]
    try:
        answered = ctx.runner.run([PING, "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", remote],
                                  timeout=10).returncode == 0
    except CommandError as e:
        return [*out, Finding("ha", WARN, f"{where}: cannot ping the peer {remote}: {e}", "install iputils-ping")]
    if not answered:
        out.append(Finding("ha", FAIL, f"{where}: the peer {remote} does not answer on the sync link",
                           "check the link and the firewall (the plugin uses UDP 4510)"))
    return out


def check_ha_sync(ctx: Context) -> list[Finding]:
    """Stateful mode: charon's ha sync socket has the receive buffer the agent's start gives it
    (a resync of many SAs overflows the kernel's default) and has dropped nothing."""
    from ipsec_vip import hasock

    out = []
    for uri in ctx.vici_sockets:
        loaded = ctx.plugins(uri)
        if not (isinstance(loaded, list) and "ha" in loaded):
            continue
        try:
            sock = hasock.read(hasock.charon_pid(uri))
        except hasock.SyncSocketError as e:
            out.append(Finding("ha-sync", WARN, f"cannot read charon's ha sync socket: {e}",
                               "run ipsec-vip check as root on Linux 5.6 or later"))
            continue
        where = f"charon's ha sync socket (UDP {hasock.HA_PORT}, pid {sock.pid})"
        size = f"receive buffer {sock.rcvbuf} bytes"
        before = len(out)
        if sock.rcvbuf is not None and sock.rcvbuf < 2 * hasock.RCVBUF:
            out.append(Finding("ha-sync", WARN, f"{where}: {size}: a resync of many SAs overflows it (the "
                               "kernel's default lost half of 200 SAs' copies)", "start the stateful resource (its "
                               f"start sets {hasock.RCVBUF} bytes with SO_RCVBUFFORCE; it needs root, "
                               "CAP_SYS_PTRACE over charon and Linux 5.6); where it cannot, set "
                               f"net.core.rmem_default = {hasock.RCVBUF} before charon starts"))
        if sock.drops:
            out.append(Finding("ha-sync", WARN, f"{where}: {sock.drops} sync datagram(s) dropped since charon "
                               "started (a full receive buffer): this node may lack copies",
                               "compare the copies 'ipsec-vip status' shows on both nodes; restart this "
                               "node's instance (pcs resource restart) to resync it"))
        if len(out) == before:
            out.append(Finding("ha-sync", OK, f"{where}: {size}, {sock.drops} drops, {sock.queued} bytes queued"))
    return out


def _ha_pools(path: str) -> set[str]:
    """Pool names under charon(-systemd).plugins.ha.pools: the only pools a takeover keeps right."""
    return {name for ns in ("charon", "charon-systemd")
            for name in swanctl.settings(path, f"{ns}.plugins.ha.pools") or {}}


_SERVER_POOLS = {"dhcp": "a DHCP server (dhcp plugin)", "radius": "the RADIUS server (eap-radius plugin)"}


def check_pools(ctx: Context) -> list[Finding]:
    """Stateful mode: every pool of the VIPs' connections survives a takeover, i.e. lives in
    charon.plugins.ha.pools (failover.md, "Virtual-IP pools with the ha plugin")."""
    from ipsec_vip import hasync

    try:
        ha = _ha_settings(ctx.strongswan_conf)
        ha_pools = _ha_pools(ctx.strongswan_conf)
    except ConfigError:
        return []  # check_ha reports it
    if not _stateful(ctx, ha):
        return []
    try:
        load_all = set(swanctl.load(ctx.swanctl_conf).pools) if os.path.exists(ctx.swanctl_conf) else set()
    except IpsecVipError:
        load_all = set()
    out, seen = [], set()
    for t, sel in ctx.selections():
        used = {p: c for c, body in sel.connections.items() for p in body.get("pools", [])}
        seen |= set(used)
        found = hasync.vici_pool_problem([p for p in used if p in sel.pools], t.config)
        if found is not None:
            out.append(Finding("pools", FAIL, f"{t.label}: {found[0]}", found[1]))
        for pool, conn in used.items():
            where = f"{t.label}: connection {conn} pools = {pool}"
            if pool in sel.pools or pool in ha_pools:
                continue
            if pool in load_all:
                out.append(Finding("pools", FAIL, f"{where} is defined in {ctx.swanctl_conf}, loaded over VICI "
                                   "by 'swanctl --load-all': a takeover does not see the leases that migrated "
                                   "with their clients", f"define {pool} under charon.plugins.ha.pools in "
                                   f"{ctx.strongswan_conf} on both nodes and remove it from {ctx.swanctl_conf}"))
            elif pool in _SERVER_POOLS:
                out.append(Finding("pools", WARN, f"{where}: addresses come from {_SERVER_POOLS[pool]}, which "
                                   "keeps a lease until it is released or expires; the ha plugin does not move "
                                   "these leases, so a takeover should not hand one out twice (plausible, not "
                                   "verified by ipsec-vip)", "make sure the server never reuses a lease "
                                   "before it expires; or use charon.plugins.ha.pools"))
            else:
                out.append(Finding("pools", WARN, f"{where} is defined neither in {ctx.strongswan_conf} "
                                   f"charon.plugins.ha.pools nor in {t.config}: if another provider hands it out "
                                   "(attr-sql, a pool loaded by other means), a takeover keeps its leases only "
                                   "if that provider shares them between the nodes",
                                   f"define {pool} under charon.plugins.ha.pools in {ctx.strongswan_conf} on "
                                   "both nodes"))
    if not out:
        out.append(Finding("pools", OK, f"stateful mode: pool(s) {', '.join(sorted(seen))} in "
                           "charon.plugins.ha.pools (a takeover keeps their leases)" if seen
                           else "stateful mode: no connection uses a virtual-IP pool"))
    return out


CHECKS: tuple[Callable[[Context], list[Finding]], ...] = (
    check_xfrm_netlink, check_kernel_esp, check_tun, check_charon_running, check_vici, check_plugins,
    check_config, check_connections, check_psk_strength, check_not_load_all, check_secret_files, check_firewall,
    check_handoff_rules,
    check_ha, check_ha_sync, check_pools,
)


def run(ctx: Context) -> list[Finding]:
    """Every check, in order; a check that breaks becomes a failure, never a traceback."""
    out: list[Finding] = list(ctx.early)
    for check in CHECKS:
        try:
            out += check(ctx)
        except Exception as e:  # a bug in one check must not hide the others
            out.append(Finding(check.__name__[len("check_"):].replace("_", "-"), FAIL,
                               f"the check itself failed: {type(e).__name__}", "report this as a bug"))
    return out
