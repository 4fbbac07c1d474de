"""The README's own commands, for the tests that execute them word for word."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section(heading: str, text: str | None = None) -> str:
    """The body of the `## heading…` section (the heading given by its start)."""
    text = README.read_text() if text is None else text
    m = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no section '## {heading}'"
    return m[1]


def blocks(body: str) -> list[tuple[str, str]]:
    """(info string, content) of each fenced code block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", body, re.M | re.S)]


def commands(block: str) -> list[str]:
    """The command lines of a shell block, for sh: continuations joined, comments dropped."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in block.replace("\\\n", " ").splitlines())
    return [re.sub(r"\s+", " ", line) for line in lines if line]


def debian_install() -> list[str]:
    """"Install from packages", Debian 12: the build and the apt command."""
    sh = [c for info, c in blocks(section("Install from packages")) if info == "sh" and "apt " in c]
    assert sh, "README 'Install from packages' has no sh block with an apt command"
    return commands(sh[0])


def watch_setup() -> tuple[str, str, list[str]]:
    """"Without Pacemaker": (NAME, NAME.conf's text, the sh block that enables the unit)."""
    body = section("Without Pacemaker")
    m = re.search(r"`/etc/ipsec-vip/watch/([\w.-]+)\.conf`", body)
    assert m, "README 'Without Pacemaker' names no /etc/ipsec-vip/watch/NAME.conf"
    found = blocks(body[m.end():])
    conf = next(c for info, c in found if info == "")
    sh = next(c for info, c in found if info == "sh" and "systemctl enable" in c)
    return m[1], conf, commands(sh)


def pcs_create() -> list[str]:
    """"Create the resource": the pcs commands."""
    sh = [c for info, c in blocks(section("Create the resource")) if info == "sh" and "pcs resource create" in c]
    assert sh, "README 'Create the resource' has no sh block with pcs resource create"
    return commands(sh[0])
