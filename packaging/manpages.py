"""Generate the man pages from the code, so that they cannot drift from it.

``manpages.py ocf META-DATA.xml`` writes ocf_ipsec-vip_strongswan(7) from the agent's own
meta-data (what resource-agents' XSL does for the ocf_heartbeat_* pages);
``manpages.py cli`` writes ipsec-vip(8) from ``ipsec_vip.cli.parser()``, every sub-command
included. The date comes from SOURCE_DATE_EPOCH when set (reproducible package builds).
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import sys
import time
import types
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.machinery import ModuleSpec

PROVIDER = "ipsec-vip"


def esc(text: str) -> str:
    """Roff-escape running text: backslashes, hyphens, and a leading control character."""
    text = " ".join(text.split()).replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def date() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))


def th(name: str, section: int, version: str, manual: str) -> str:
    return f'.TH "{name.upper()}" "{section}" "{date()}" "{PROVIDER} {version}" "{manual}"\n.ad l\n.nh'


def ocf_page(xml_text: str) -> str:
    """ocf_<provider>_<agent>(7) from an agent's OCF meta-data and the exit-code table."""
    from ipsec_vip import exitcodes

    root = ET.fromstring(xml_text)  # noqa: S314 -- our own agent's meta-data, read at build time
    agent = root.get("name", "")
    page = f"ocf_{PROVIDER}_{agent}"
    out = [th(page, 7, root.get("version", ""), "OCF resource agents"),
           ".SH NAME", f"{esc(page)} \\- {esc(root.findtext('shortdesc', ''))}",
           ".SH SYNOPSIS",
           f"\\fB{esc(agent)}\\fR [{' | '.join(sorted({a.get('name', '') for a in root.iter('action')}))}]",
           ".SH DESCRIPTION", esc(root.findtext("longdesc", "")),
           ".SH SUPPORTED PARAMETERS"]
    for p in root.iter("parameter"):
        content = p.find("content")
        facts = [content.get("type", "string") if content is not None else "string"]
        if p.get("required") == "1":
            facts.append("required")
        elif content is not None and content.get("default", "") != "":
            facts.append(f"default: {content.get('default')}")
        out += [".TP", f"\\fB{esc(p.get('name', ''))}\\fR ({esc(', '.join(facts))})",
                f"{esc(p.findtext('shortdesc', ''))}.", ".br", esc(p.findtext("longdesc", ""))]
    out.append(".SH SUPPORTED ACTIONS")
    out.append("This resource agent supports the following actions (operations):")
    for a in root.iter("action"):
        attrs = ", ".join(f"{k}={v}" for k, v in a.attrib.items() if k != "name")
        out += [".TP", f"\\fB{esc(a.get('name', ''))}\\fR", esc(f"suggested minimum: {attrs}" if attrs else "")]
    out.append(".SH EXIT STATUS")
    for action, codes in exitcodes.AGENT.items():
        out += [".TP", f"\\fB{esc(action)}\\fR", *(f"{code}: {esc(text)}.\n.br" for code, text in codes)]
    required = " ".join(f"{p.get('name')}=..." for p in root.iter("parameter") if p.get("required") == "1")
    out += [".SH EXAMPLE CRM SHELL", ".nf",
            esc(f"primitive p_{agent} ocf:{PROVIDER}:{agent} params {required} op monitor interval=10s timeout=20s"),
            ".fi", ".SH EXAMPLE PCS", ".nf",
            esc(f"pcs resource create p_{agent} ocf:{PROVIDER}:{agent} {required} op monitor interval=10s timeout=20s"),
            ".fi", ".SH FILES",
            ".TP", esc(f"/usr/lib/ocf/resource.d/{PROVIDER}/{agent}"), "the agent",
            ".TP", esc(f"/usr/share/doc/{PROVIDER}/examples/swanctl.conf"), "an example config",
            ".SH SEE ALSO", "\\fBipsec\\-vip\\fR(8), \\fBswanctl.conf\\fR(5), \\fBcrm_resource\\fR(8), \\fBpcs\\fR(8)"]
    return "\n".join(out) + "\n"


def _subcommands(p: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _options(p: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for a in p._actions:
        if isinstance(a, (argparse._SubParsersAction, argparse._HelpAction)) or a.help == argparse.SUPPRESS:
            continue
        metavar = a.metavar or (a.dest.upper() if a.option_strings else a.dest)
        if isinstance(metavar, tuple):
            metavar = " ".join(metavar)
        takes = a.nargs != 0
        names = ", ".join(f"\\fB{esc(o)}\\fR" + (f" \\fI{esc(str(metavar))}\\fR" if takes else "")
                          for o in a.option_strings) or f"\\fI{esc(str(metavar))}\\fR"
        text = (a.help or "") % {"default": a.default, "prog": p.prog} if a.help else ""
        out += [".TP", names, esc(text)]
    return out


def _usage(p: argparse.ArgumentParser) -> list[str]:
    os.environ["COLUMNS"] = "78"  # argparse wraps the usage to this width
    lines = p.format_usage().removeprefix("usage: ").rstrip().splitlines()
    return [esc(line) if i == 0 else "\\ \\ " + esc(line) for i, line in enumerate(lines)]


def cli_page(p: argparse.ArgumentParser, version: str) -> str:
    """ipsec-vip(8) from the argparse parser and the exit-code table."""
    from ipsec_vip import exitcodes

    prog = p.prog
    commands = list(_subcommands(p))
    out = [th(prog, 8, version, "System Administration"),
           ".SH NAME", f"{esc(prog)} \\- {esc(p.description or '')}",
           ".SH SYNOPSIS", f"\\fB{esc(prog)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
           ".SH DESCRIPTION",
           esc(f"{prog} loads and unloads the strongSwan connections that belong to a floating IP (VIP), by hand or "
               "as a systemd fallback daemon, and reports on them. Under Pacemaker, the resource agent "
               f"ocf:{PROVIDER}:strongswan does the same; both share one implementation."),
           ".SH OPTIONS", *_options(p), ".SH COMMANDS"]
    for name, text, sub in commands:
        out += [f'.SS "{esc(name)}"', ".nf", *_usage(sub), ".fi", esc(sub.description or text)]
        opts = _options(sub)
        if opts:
            out += [".PP", "Options:", ".RS", *opts, ".RE"]
    out.append(".SH EXIT STATUS")
    for code, text in exitcodes.CLI:
        out += [".TP", f"\\fB{code}\\fR", f"{esc(text)}."]
    out += [".SH FILES",
            ".TP", "\\fI/etc/ipsec\\-vip/swanctl.conf\\fR",
            "the default config: connections, secrets and pools of the VIPs, in swanctl.conf format",
            ".TP", "\\fI/etc/ipsec\\-vip/watch/NAME.conf\\fR",
            "the settings of \\fBipsec\\-vip\\-watch@NAME.service\\fR",
            ".TP", "\\fI/usr/share/doc/ipsec\\-vip/examples/swanctl.conf\\fR", "an example config",
            ".SH SEE ALSO",
            f"\\fBocf_{esc(PROVIDER)}_strongswan\\fR(7), \\fBswanctl.conf\\fR(5), \\fBswanctl\\fR(8), "
            "\\fBsystemd.service\\fR(5)"]
    return "\n".join(out) + "\n"


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for run-time dependencies missing where the packages are built (Debian 12
    has no vici): the parser never needs them, a command module may import them at the top."""

    NAMES = ("vici", "psutil")

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        top = name.partition(".")[0]
        return ModuleSpec(name, self, is_package=True) if top in self.NAMES else None

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = lambda attr: type(attr, (Exception,), {})  # type: ignore[method-assign]
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "ocf":
        with open(argv[2], encoding="utf-8") as f:
            sys.stdout.write(ocf_page(f.read()))
        return 0
    if len(argv) == 2 and argv[1] == "cli":
        sys.meta_path.append(_Stubs())
        from ipsec_vip import __version__, cli

        sys.stdout.write(cli_page(cli.parser(), __version__))
        return 0
    print("usage: manpages.py ocf META-DATA.xml | manpages.py cli", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
