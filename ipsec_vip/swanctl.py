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
``pools`` are converted; ``authorities`` and private keys are not (yet). Relative
``certs``/``cacerts``/``pubkeys`` names resolve in ``x509``/``x509ca``/``pubkey`` beside the
config file given (``/etc/ipsec-vip/x509/…`` for ``/etc/ipsec-vip/swanctl.conf``), exactly as
``swanctl --file`` resolves them (``$SWANCTL_DIR`` plays no part then).
Every problem raises :class:`~ipsec_vip.errors.ConfigError` naming file and line,
and never quoting a value (a value may be a secret).
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
from dataclasses import dataclass, field
from typing import Any

from ipsec_vip.errors import ConfigError

LIST_KEYS = frozenset({"local_addrs", "remote_addrs", "proposals", "esp_proposals", "ah_proposals",
                       "local_ts", "remote_ts", "vips", "pools", "groups", "cert_policy"})
FILE_LIST_KEYS = {"certs": "x509", "cacerts": "x509ca", "pubkeys": "pubkey"}
SHARED_TYPES = ("eap", "xauth", "ntlm", "ike", "ppk")
OTHER_SECRET_TYPES = ("private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "token")
_SPECIAL = set('#{}:.,="\r\n\t ')
MAX_INCLUDE_DEPTH = 10
MAX_FILE_SIZE = 64 << 20


@dataclass
class _Section:
    name: str
    refs: list[str] = field(default_factory=list)
    settings: dict[str, str | None] = field(default_factory=dict)  # None = cleared
    origins: dict[str, str] = field(default_factory=dict)  # key -> the file that set it last
    sections: dict[str, _Section] = field(default_factory=dict)


@dataclass(frozen=True)
class SwanctlConfig:
    """The VICI message bodies of one swanctl.conf file."""

    path: str
    connections: dict[str, dict[str, Any]]
    secrets: list[dict[str, Any]] = field(repr=False)
    pools: dict[str, dict[str, Any]]


# --------------------------------------------------------------------------- parsing
class _Parser:
    """Recursive-descent parser over one file's text; includes recurse."""

    def __init__(self, path: str, text: str, stack: tuple[str, ...], found: dict[str, bool] | None = None) -> None:
        """``found``: collect the real paths of the files read (-> whether one sets a ``secret``),
        and skip (not refuse) include cycles."""
        self.path, self.text, self.pos, self.line, self.stack, self.found = path, text, 0, 1, stack, found
        if found is not None:
            found.setdefault(stack[-1], False)

    def error(self, what: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line}: {what}")

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
        return self.text[start:self.pos]

    def parse(self, into: _Section, depth: int = 0) -> None:
        self._statements(into, depth, top=True)

    def _statements(self, section: _Section, depth: int, top: bool) -> None:
        while True:
            self._skip()
            if self.pos >= len(self.text):
                if not top:
                    raise self.error(f"section '{section.name}' is not closed")
                return
            if self.text[self.pos] == "}":
                if top:
                    raise self.error("unexpected '}'")
                self.pos += 1
                return
            name = self._name()
            if not name:
                raise self.error(f"unexpected character {self.text[self.pos]!r}")
            if name == "include" and self.pos < len(self.text) and self.text[self.pos] in " \t":
                self._include(section, depth)
                continue
            self._skip(newlines=False)
            c = self.text[self.pos] if self.pos < len(self.text) else ""
            if c == "=":
                self.pos += 1
                value = section.settings[name] = self._value()  # a repeated key keeps its first position
                section.origins[name] = self.path
                if name == "secret" and value is not None and self.found is not None:
                    self.found[self.stack[-1]] = True
            elif c in "{:":
                refs = self._refs() if c == ":" else []
                self._skip()
                if self.pos >= len(self.text) or self.text[self.pos] != "{":
                    raise self.error(f"expected '{{' after section name '{name}'")
                self.pos += 1
                sub = section.sections.setdefault(name, _Section(name))
                sub.refs.extend(r for r in refs if r not in sub.refs)
                self._statements(sub, depth, top=False)
            else:
                raise self.error(f"expected '=' or '{{' after '{name}'")

    def _refs(self) -> list[str]:
        self.pos += 1  # ':'
        refs = []
        while True:
            self._skip()
            start = self.pos
            while self.pos < len(self.text) and (self.text[self.pos] not in _SPECIAL or self.text[self.pos] == "."):
                self.pos += 1
            ref = self.text[start:self.pos]
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
        raise self.error("unterminated quoted string")

    def _include(self, section: _Section, depth: int) -> None:
        pattern = self._value()
        if not pattern:
            raise self.error("include without a file pattern")
        if depth >= MAX_INCLUDE_DEPTH:
            raise self.error(f"includes nested deeper than {MAX_INCLUDE_DEPTH} (include cycle?)")
        base = os.path.dirname(self.path)
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        for path in sorted(glob.glob(full)):
            real = os.path.realpath(path)
            if real in self.stack:
                if self.found is not None:
                    continue
                raise self.error(f"include cycle through {path}")
            sub = _Parser(path, _read(path), (*self.stack, real), self.found)
            sub.parse(section, depth + 1)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError(f"{path} is larger than {MAX_FILE_SIZE >> 20} MiB")
    if b"\0" in raw:
        raise ConfigError(f"{path} is not a text file (NUL byte)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8") from None


# --------------------------------------------------------------------------- references
class _Tree:
    """Effective (reference-resolved) views of sections."""

    def __init__(self, root: _Section, path: str) -> None:
        self.root, self.path = root, path

    def _lookup(self, ref: str) -> _Section:
        node = self.root
        for part in ref.split("."):
            if part not in node.sections:
                raise ConfigError(f"{self.path}: section reference '{ref}' does not exist")
            node = node.sections[part]
        return node

    def chain(self, sections: list[_Section], seen: tuple[int, ...] = ()) -> list[_Section]:
        """Sections and, depth first, what they reference."""
        out: list[_Section] = []
        for s in sections:
            if id(s) in seen:
                raise ConfigError(f"{self.path}: section reference cycle through '{s.name}'")
            out.append(s)
            out.extend(self.chain([self._lookup(r) for r in s.refs], (*seen, id(s))))
        return out

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
            body[key] = [_file_item(tok, FILE_LIST_KEYS[key], where, confdir) for tok in _split(value)]
        else:
            body[key] = value
    for name, sub in tree.subsections(chain).items():
        body[name] = _message(tree, sub, f"{where}.{name}", confdir)
    return body


def _file_item(token: str, subdir: str, where: str, confdir: str) -> bytes:
    try:
        blob = _blob(token)
    except ValueError:
        raise ConfigError(f"{where}: invalid 0x/0s blob") from None
    if blob is not None:
        return blob
    path = token if os.path.isabs(token) else os.path.join(confdir, subdir, token)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None


def _secret(tree: _Tree, name: str, chain: list[_Section], path: str) -> dict[str, Any] | None:
    kind = next((t for t in SHARED_TYPES if name.startswith(t)), None)  # case-sensitive, as swanctl
    if kind is None:
        if name.startswith(OTHER_SECRET_TYPES):
            return None  # private key passphrases, tokens: not loaded by us
        raise ConfigError(f"{path}: secrets.{name}: unknown secret type (swanctl would ignore it)")
    keys = tree.keys(chain)
    if "secret" not in keys:
        raise ConfigError(f"{path}: secrets.{name}: secret missing")
    try:
        data = _blob(keys["secret"])
    except ValueError:
        raise ConfigError(f"{path}: secrets.{name}: secret has an invalid 0x/0s encoding") from None
    return {"id": name, "type": kind, "data": data if data is not None else keys["secret"].encode(),
            "owners": [v for k, v in keys.items() if k.startswith("id")]}


def files(path: str) -> dict[str, bool]:
    """``path`` and every file it includes, recursively, as real paths in reading order (an
    include cycle is listed once, not refused): what ``swanctl --load-all --file`` would read;
    each mapped to whether it sets a ``secret``."""
    found: dict[str, bool] = {}
    try:
        _Parser(os.path.abspath(path), _read(path), (os.path.realpath(path),), found).parse(_Section(""))
    except RecursionError:
        raise ConfigError(f"{path}: sections nested too deeply") from None
    return found


def _tree(path: str) -> _Tree:
    """The whole file ``path`` (absolute), includes followed, as a tree of sections."""
    root = _Section("")
    try:
        _Parser(path, _read(path), (os.path.realpath(path),)).parse(root)
    except RecursionError:
        raise ConfigError(f"{path}: sections nested too deeply") from None
    return _Tree(root, path)


def load(path: str) -> SwanctlConfig:
    """Read a swanctl.conf-format file into VICI message bodies."""
    path = os.path.abspath(path)
    tree = _tree(path)
    confdir = os.path.dirname(path)  # swanctl --file resolves relative certs beside the file
    try:
        conns = {name: _message(tree, chain, f"{path}: connections.{name}", confdir)
                 for name, chain in tree.top("connections").items()}
        pools = {}
        for name, chain in tree.top("pools").items():
            pools[name] = {k: (v if k == "addrs" else _split(v)) for k, v in tree.keys(chain).items()}
        secrets = [s for name, chain in tree.top("secrets").items()
                   if (s := _secret(tree, name, chain, path)) is not None]
    except RecursionError:
        raise ConfigError(f"{path}: sections nested too deeply") from None
    return SwanctlConfig(path=path, connections=conns, secrets=secrets, pools=pools)


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
