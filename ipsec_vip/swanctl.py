"""swanctl.conf reader: the file format of strongswan.conf(5), turned into the VICI
messages that ``swanctl --load-all --file`` would send.

Grammar: sections ``name { }``, settings ``key = value``, ``include`` globs
(relative to the including file, sorted, none matching is fine, content lands in
the enclosing section), references ``name : a, b.c { }`` (absolute paths from the
top, forward references allowed; own keys first, then each reference's, recursively;
same-named subsections merge), ``key =`` clearing an inherited value, comments
``#``, quoted values with ``\\n \\r \\t \\<char>`` escapes, repeated sections merged,
a repeated key keeping its first position with the last value.

Only ``connections``, ``secrets`` (the shared ones: eap, xauth, ntlm, ike, ppk) and
``pools`` are converted; ``authorities`` and private keys are not (yet). A top-level
``ipsec-vip`` section, which swanctl ignores, is ours: ``ipsec-vip { CONN { fallback_connections
= A, B } }`` names, per connection, the fallback connections of the resource that loads CONN
(what ``mesh render`` writes into ``mesh-vips.conf``). Relative
``certs``/``cacerts``/``pubkeys`` names resolve in ``x509``/``x509ca``/``pubkey`` beside the
config file given (``/etc/ipsec-vip/x509/…`` for ``/etc/ipsec-vip/swanctl.conf``), exactly as
``swanctl --file`` resolves them (``$SWANCTL_DIR`` plays no part then).

Every problem raises :class:`~ipsec_vip.errors.ConfigError` naming file and line. No message
quotes a value, nor any word read after the first value of a ``secrets`` section or of a
secret-bearing key (``secret``…) in the same file: a secret on its own line or holding an
unquoted ``}`` is read as names, so from there on names are replaced by their file and line.
Only regular files are read (a FIFO or a device is refused, never waited on), each with a
size bound; references that expand beyond a bound proportional to the file are refused.
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ipsec_vip import readfile
from ipsec_vip.errors import ConfigError

LIST_KEYS = frozenset({"local_addrs", "remote_addrs", "proposals", "esp_proposals", "ah_proposals",
                       "local_ts", "remote_ts", "vips", "pools", "groups", "cert_policy"})
FILE_LIST_KEYS = {"certs": "x509", "cacerts": "x509ca", "pubkeys": "pubkey"}
SHARED_TYPES = ("eap", "xauth", "ntlm", "ike", "ppk")
OTHER_SECRET_TYPES = ("private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "token")
# keys whose value is secret wherever they appear (strongswan.conf: ha, eap-radius, sql URIs)
SECRET_KEYS = frozenset({"secret", "pin", "password", "passphrase", "database"})
_SPECIAL = set('#{}:.,="\r\n\t ')
OWN_SECTION = "ipsec-vip"
MAX_INCLUDE_DEPTH = 10
MAX_FILE_SIZE = 64 << 20
MAX_CERT_SIZE = 1 << 20  # charon takes no VICI message over 512 KiB anyway
EXPANSION_PER_SECTION = 50  # reference expansion allowed per section written (and at least:)
MIN_EXPANSION = 100_000


@dataclass
class _Section:
    name: str
    where: str = ""  # FILE:LINE of its first definition
    secret: bool = False  # in a top-level secrets section: every value is secret
    refs: list[tuple[str, str]] = field(default_factory=list)  # (reference, FILE:LINE of its header)
    settings: dict[str, str | None] = field(default_factory=dict)  # None = cleared
    origins: dict[str, str] = field(default_factory=dict)  # key -> the file that set it last
    sections: dict[str, _Section] = field(default_factory=dict)


@dataclass
class _Shared:
    """What the parsers of one file and its includes share."""

    hidden: set[str] = field(default_factory=set)  # words read after a secret: never quoted
    sections: int = 0
    found: dict[str, bool] | None = None  # files() only: real path -> sets a secret


@dataclass(frozen=True)
class SwanctlConfig:
    """The VICI message bodies of one swanctl.conf file."""

    path: str
    connections: dict[str, dict[str, Any]]
    secrets: list[dict[str, Any]] = field(repr=False)
    pools: dict[str, dict[str, Any]]
    fallbacks: dict[str, list[str]] = field(default_factory=dict)  # connection -> its fallback connections


# --------------------------------------------------------------------------- parsing
class _Parser:
    """Recursive-descent parser over one file's text; includes recurse."""

    def __init__(self, path: str, text: str, stack: tuple[str, ...], shared: _Shared, label: str = "") -> None:
        """``shared.found``: collect the real paths of the files read (-> whether one sets a
        ``secret``), and skip (not refuse) include cycles. ``label``: how errors name the file
        (its path unless that came from a hidden include pattern)."""
        self.path, self.text, self.pos, self.line, self.stack = path, text, 0, 1, stack
        self.label = label or path
        self.shared = shared
        self.hidden = False  # a secret was read before this point of this file
        self.last_value: tuple[int, str] = (0, "")  # (line, "empty" | "brace") of the last suspicious value
        if shared.found is not None:
            shared.found.setdefault(stack[-1], False)

    def error(self, what: str, line: int = 0) -> ConfigError:
        return ConfigError(f"{self.label}:{line or self.line}: {what}")

    def _word(self, token: str) -> str:
        """Read ``token``; hidden from every message if read after a secret."""
        if self.hidden:
            self.shared.hidden.add(token)
        return token

    def _say(self, token: str, instead: str) -> str:
        return instead if token in self.shared.hidden else f"'{token}'"

    def _skip(self, newlines: bool = True) -> None:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif c == "\n" and newlines:
                self.line += 1
                self.pos += 1
            elif c in " \t\r":
                self.pos += 1
            else:
                return

    def _name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SPECIAL:
            self.pos += 1
        return self._word(self.text[start:self.pos])

    def parse(self, into: _Section, depth: int = 0) -> None:
        self._statements(into, depth, opened=0)

    def _statements(self, section: _Section, depth: int, opened: int) -> None:
        """The body of ``section``, up to its '}' (``opened``: the line of its '{'; 0: the top)."""
        while True:
            self._skip()
            if self.pos >= len(self.text):
                if opened:
                    what = self._say(section.name, "")
                    raise self.error(f"section {what + ' ' if what else ''}opened here is not closed", opened)
                return
            if self.text[self.pos] == "}":
                if not opened:
                    raise self.error("unexpected '}'")
                self.pos += 1
                return
            name = self._name()
            if not name:
                c = self.text[self.pos]
                raise self.error("unexpected character" + ("" if self.hidden else f" {c!r}") + self._hint())
            if name == "include" and self.pos < len(self.text) and self.text[self.pos] in " \t":
                self._include(section, depth)
                continue
            self._skip(newlines=False)
            c = self.text[self.pos] if self.pos < len(self.text) else ""
            if c == "=":
                self.pos += 1
                self._setting(section, name)
            elif c in "{:":
                line = self.line
                refs = self._refs() if c == ":" else []
                self._skip()
                if self.pos >= len(self.text) or self.text[self.pos] != "{":
                    raise self.error(f"expected '{{' after {self._say(name, 'a section name')}" + self._hint(), line)
                self.pos += 1
                sub = section.sections.get(name)
                if sub is None:
                    secret = section.secret or (not section.name and name == "secrets")
                    sub = section.sections[name] = _Section(name, f"{self.label}:{line}", secret)
                    self.shared.sections += 1
                sub.refs.extend((r, f"{self.label}:{line}") for r in refs if r not in (x for x, _ in sub.refs))
                self._statements(sub, depth, opened=line)
            else:
                raise self.error(f"expected '=' or '{{' after {self._say(name, 'a name')}" + self._hint())

    def _setting(self, section: _Section, key: str) -> None:
        line = self.line
        if section.secret or key in SECRET_KEYS:
            self.hidden = True  # the value, and whatever a mistake in it makes of the rest
        value = section.settings[key] = self._value()  # a repeated key keeps its first position
        section.origins[key] = self.path
        if value is not None:
            self._word(value)
        if self.hidden:
            end = self.text[self.pos] if self.pos < len(self.text) else ""
            if value is None and end in ("\n", ""):
                self.last_value = (line, "empty")
            elif end == "}":
                self.last_value = (line, "brace")
        if key == "secret" and value is not None and self.shared.found is not None:
            self.shared.found[self.stack[-1]] = True

    def _hint(self) -> str:
        """Why a secret's mistake may have caused this error, without saying anything of it."""
        line, kind = self.last_value
        if kind == "empty" and line < self.line:
            return (f" (the key on line {line} has no value: a value must be on the same line as its key; "
                    "if it is a secret, it was read as what follows)")
        if kind == "brace" and line == self.line:
            return (" (an unquoted '}' ended a secret value on this line: quote values holding '}' or '#', "
                    "e.g. secret = \"...\")")
        return ""

    def _refs(self) -> list[str]:
        self.pos += 1  # ':'
        refs = []
        while True:
            self._skip()
            start = self.pos
            while self.pos < len(self.text) and (self.text[self.pos] not in _SPECIAL or self.text[self.pos] == "."):
                self.pos += 1
            ref = self._word(self.text[start:self.pos])
            if not ref or ref.startswith(".") or ref.endswith(".") or ".." in ref:
                raise self.error("invalid section reference")
            refs.append(ref)
            self._skip()
            if self.pos < len(self.text) and self.text[self.pos] == ",":
                self.pos += 1
                continue
            return refs

    def _value(self) -> str | None:
        """Parts up to newline, '#' or '}' joined by one space; None if empty (clears)."""
        parts: list[str] = []
        text = self.text
        while True:
            self._skip(newlines=False)
            if self.pos >= len(text) or text[self.pos] in "\n}#":
                break
            if text[self.pos] == '"':
                parts.append(self._quoted())
            else:
                start = self.pos
                while self.pos < len(text) and text[self.pos] not in ' \t\r\n}#"':
                    self.pos += 1
                parts.append(text[start:self.pos])
        return " ".join(parts) if parts else None

    def _quoted(self) -> str:
        self.pos += 1
        out: list[str] = []
        text = self.text
        start_line = self.line
        while self.pos < len(text):
            c = text[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\" and self.pos + 1 < len(text):
                nxt = text[self.pos + 1]
                self.pos += 2
                if nxt == "\n":
                    self.line += 1
                    continue
                out.append({"n": "\n", "r": "\r", "t": "\t"}.get(nxt, nxt))
                continue
            if c == "\n":
                self.line += 1
            out.append(c)
            self.pos += 1
        self.line = start_line
        raise self.error("unterminated quoted string (a '\"' opened here is never closed)")

    def _include(self, section: _Section, depth: int) -> None:
        line = self.line
        pattern = self._value()
        if not pattern:
            raise self.error("include without a file pattern")
        self._word(pattern)
        if depth >= MAX_INCLUDE_DEPTH:
            raise self.error(f"includes nested deeper than {MAX_INCLUDE_DEPTH} (include cycle?)")
        hidden = pattern in self.shared.hidden
        base = os.path.dirname(self.path)
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        for path in sorted(glob.glob(full)):
            real = os.path.realpath(path)
            if real in self.stack:
                if self.shared.found is not None:
                    continue
                raise self.error("include cycle" + ("" if hidden else f" through {path}"), line)
            label = f"{self.label}:{line}'s include" if hidden else ""
            sub = _Parser(path, _read(path, label or path), (*self.stack, real), self.shared, label)
            sub.parse(section, depth + 1)


def _read(path: str, label: str) -> str:
    """The text of one file; errors name it as ``label``."""
    try:
        raw = readfile.read(path, MAX_FILE_SIZE)
    except readfile.Unreadable as e:
        raise ConfigError(f"cannot read {label}: {e.reason}") from None
    if b"\0" in raw:
        raise ConfigError(f"{label} is not a text file (NUL byte)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{label}:{line}: not valid UTF-8") from None


# --------------------------------------------------------------------------- references
class _Tree:
    """Effective (reference-resolved) views of sections; the expansion is bounded."""

    def __init__(self, root: _Section, path: str, shared: _Shared) -> None:
        self.root, self.path, self.hidden = root, path, shared.hidden
        self.budget = max(MIN_EXPANSION, EXPANSION_PER_SECTION * shared.sections)

    def name(self, name: str, section: _Section) -> str:
        """``name`` for a message, or where its section is when the name is hidden."""
        return f"<the section on {section.where}>" if name in self.hidden else name

    def _lookup(self, ref: str, where: str) -> _Section:
        node = self.root
        for part in ref.split("."):
            if part not in node.sections:
                what = "a section reference" if ref in self.hidden else f"section reference '{ref}'"
                raise ConfigError(f"{where}: {what} does not exist")
            node = node.sections[part]
        return node

    def chain(self, sections: list[_Section]) -> list[_Section]:
        """Sections and, depth first, what they reference (each section once)."""
        out: list[_Section] = []
        self._expand(sections, (), out, set())
        return out

    def _expand(self, sections: list[_Section], path: tuple[int, ...], out: list[_Section], seen: set[int]) -> None:
        for s in sections:
            if id(s) in path:
                raise ConfigError(f"{s.where}: section reference cycle through {self.name(s.name, s)}")
            if id(s) in seen:  # a diamond: its keys and subsections are in already
                continue
            seen.add(id(s))
            out.append(s)
            self.budget -= 1
            if self.budget < 0:
                raise ConfigError(f"{self.path}: section references expand to too many sections (more than "
                                  f"{EXPANSION_PER_SECTION} per section written): references of references?")
            self._expand([self._lookup(r, w) for r, w in s.refs], (*path, id(s)), out, seen)

    def keys(self, chain: list[_Section]) -> dict[str, str]:
        out: dict[str, str] = {}
        seen: set[str] = set()
        for s in chain:
            for k, v in s.settings.items():
                if k not in seen:
                    seen.add(k)
                    if v is not None:
                        out[k] = v
        return out

    def subsections(self, chain: list[_Section]) -> dict[str, list[_Section]]:
        out: dict[str, list[_Section]] = {}
        for s in chain:
            for name, sub in s.sections.items():
                out.setdefault(name, []).append(sub)
        return {name: self.chain(subs) for name, subs in out.items()}

    def top(self, name: str) -> dict[str, list[_Section]]:
        section = self.root.sections.get(name)
        return self.subsections(self.chain([section])) if section else {}


# --------------------------------------------------------------------------- conversion
def _split(value: str) -> list[str]:
    return [t.strip(" ") for t in value.split(",") if t.strip(" ")]


def _blob(token: str) -> bytes | None:
    """0x hex (bytes optionally separated by ':', as swanctl takes them) / 0s base64 -> bytes;
    None for anything else. What swanctl would guess at (odd digits, a ':' inside a byte) is
    refused."""
    prefix = token[:2].lower()
    try:
        if prefix == "0x":
            groups = token[2:].split(":")
            if len(groups) > 1 and any(len(g) % 2 or not g for g in groups):
                raise ValueError("':' only between whole bytes")
            return binascii.unhexlify("".join(groups))
        if prefix == "0s":
            return base64.b64decode(token[2:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid 0x/0s encoding") from None
    return None


def _message(tree: _Tree, chain: list[_Section], where: str, confdir: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in tree.keys(chain).items():
        if key in LIST_KEYS:
            body[key] = _split(value)
        elif key in FILE_LIST_KEYS:
            named = value not in tree.hidden
            body[key] = [_file_item(tok, FILE_LIST_KEYS[key], f"{where}.{key}", confdir, named)
                         for tok in _split(value)]
        else:
            body[key] = value
    for name, sub in tree.subsections(chain).items():
        body[name] = _message(tree, sub, f"{where}.{tree.name(name, sub[0])}", confdir)
    return body


def _file_item(token: str, subdir: str, where: str, confdir: str, named: bool) -> bytes:
    """A certificate or key: a 0x/0s blob, or a file (``named``: its name may be quoted)."""
    try:
        blob = _blob(token)
    except ValueError:
        raise ConfigError(f"{where}: invalid 0x/0s blob") from None
    if blob is not None:
        return blob
    path = token if os.path.isabs(token) else os.path.join(confdir, subdir, token)
    try:
        return readfile.read(path, MAX_CERT_SIZE)
    except readfile.Unreadable as e:
        raise ConfigError(f"{where}: cannot read {path if named else 'a file it names'}: {e.reason}") from None


def _secret(tree: _Tree, name: str, chain: list[_Section], path: str) -> dict[str, Any] | None:
    kind = next((t for t in SHARED_TYPES if name.startswith(t)), None)  # case-sensitive, as swanctl
    where = f"{path}: secrets.{tree.name(name, chain[0])}"
    if kind is None:
        if name.startswith(OTHER_SECRET_TYPES):
            return None  # private key passphrases, tokens: not loaded by us
        raise ConfigError(f"{where}: unknown secret type (swanctl would ignore it)")
    keys = tree.keys(chain)
    if "secret" not in keys:
        raise ConfigError(f"{where}: secret missing")
    try:
        data = _blob(keys["secret"])
    except ValueError:
        raise ConfigError(f"{where}: secret has an invalid 0x/0s encoding") from None
    return {"id": name, "type": kind, "data": data if data is not None else keys["secret"].encode(),
            "owners": [v for k, v in keys.items() if k.startswith("id")]}


def _parse(path: str, shared: _Shared) -> _Section:
    """The whole file ``path`` (absolute), includes followed, as a tree of sections."""
    root = _Section("")
    try:
        _Parser(path, _read(path, path), (os.path.realpath(path),), shared).parse(root)
    except RecursionError:
        raise ConfigError(f"{path}: sections nested too deeply") from None
    return root


def files(path: str) -> dict[str, bool]:
    """``path`` and every file it includes, recursively, as real paths in reading order (an
    include cycle is listed once, not refused): what ``swanctl --load-all --file`` would read;
    each mapped to whether it sets a ``secret``."""
    shared = _Shared(found={})
    _parse(os.path.abspath(path), shared)
    return shared.found or {}


def _tree(path: str) -> _Tree:
    shared = _Shared()
    return _Tree(_parse(path, shared), path, shared)


def load(path: str) -> SwanctlConfig:
    """Read a swanctl.conf-format file into VICI message bodies."""
    path = os.path.abspath(path)
    tree = _tree(path)
    confdir = os.path.dirname(path)  # swanctl --file resolves relative certs beside the file
    try:
        conns = {name: _message(tree, chain, f"{path}: connections.{tree.name(name, chain[0])}", confdir)
                 for name, chain in tree.top("connections").items()}
        pools = {}
        for name, chain in tree.top("pools").items():
            pools[name] = {k: (v if k == "addrs" else _split(v)) for k, v in tree.keys(chain).items()}
        secrets = [s for name, chain in tree.top("secrets").items()
                   if (s := _secret(tree, name, chain, path)) is not None]
        fallbacks = _own(tree, path, conns)
    except RecursionError:
        raise ConfigError(f"{path}: sections nested too deeply") from None
    return SwanctlConfig(path=path, connections=conns, secrets=secrets, pools=pools, fallbacks=fallbacks)


def _own(tree: _Tree, path: str, conns: dict[str, Any]) -> dict[str, list[str]]:
    """Our top-level section: connection -> its ``fallback_connections`` (nothing else is known)."""
    top = tree.root.sections.get(OWN_SECTION)
    if top is None:
        return {}
    chain = tree.chain([top])
    if tree.keys(chain):
        raise ConfigError(f"{top.where}: {OWN_SECTION} holds one section per connection, no settings")
    out = {}
    for name, sub in tree.subsections(chain).items():
        shown = f"a section of {OWN_SECTION}" if name in tree.hidden else f"{OWN_SECTION}.{name}"
        where = f"{sub[0].where}: {shown}"
        if name not in conns:
            raise ConfigError(f"{where}: no such connection in {path}")
        keys = tree.keys(sub)
        if set(keys) - {"fallback_connections"} or tree.subsections(sub):
            raise ConfigError(f"{where}: only fallback_connections is known here")
        names = [n for n in re.split(r"[\s,]+", keys.get("fallback_connections", "")) if n]
        if any(set(n) & _SPECIAL for n in names):
            raise ConfigError(f"{where}.fallback_connections: not a list of connection names")
        out[name] = names
    return out


def _section(path: str, section: str) -> tuple[_Tree, list[_Section]] | None:
    """The tree of ``path`` and the chain of the dotted ``section``; None when it is absent."""
    tree = _tree(os.path.abspath(path))
    chain: list[_Section] = [tree.root]
    for part in section.split("."):
        chain = tree.subsections(chain).get(part, [])
        if not chain:
            return None
    return tree, chain


def settings(path: str, section: str) -> dict[str, str] | None:
    """The settings of the dotted ``section`` (e.g. ``charon.plugins.ha``) of a file in this
    grammar (strongswan.conf is one, includes and all); None when the section is absent."""
    found = _section(path, section)
    return None if found is None else found[0].keys(found[1])


def setting_file(path: str, section: str, key: str) -> str | None:
    """The file (``path`` or one it includes) whose ``key`` in ``section`` :func:`settings` returns;
    None when the key is not set there."""
    found = _section(path, section)
    for s in found[1] if found else ():
        if key in s.settings:
            return s.origins[key] if s.settings[key] is not None else None
    return None
