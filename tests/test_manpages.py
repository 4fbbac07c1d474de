"""Man pages come from the code (agent meta-data, CLI parser); packaging files agree with the code."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from ipsec_vip import __version__, agent, cli, selection, swanctl

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "packaging" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


manpages = _load("manpages")


def _render(roff: str, tmp_path: Path) -> str:
    """The page as man shows it (no hyphenation or justification tricks)."""
    if not shutil.which("man"):
        pytest.skip("man-db not installed")
    f = tmp_path / "page.1"
    f.write_text(roff)
    p = subprocess.run(["man", "--warnings", "-l", str(f)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "MANWIDTH": "200", "LC_ALL": "C.UTF-8"}, timeout=30)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return p.stdout


def _meta_xml() -> str:
    return agent.META.xml()


def test_ocf_page_lists_every_parameter_and_action(tmp_path):
    root = ET.fromstring(_meta_xml().split("\n", 2)[2])
    text = _render(manpages.ocf_page(_meta_xml()), tmp_path)
    assert "ocf_ipsec-vip_strongswan - " in text
    params = [p.get("name") for p in root.iter("parameter")]
    assert params and "vip" in params
    for name in params:
        assert re.search(rf"^\s+{re.escape(name)} \(", text, re.M), name
    for action in {a.get("name") for a in root.iter("action")}:
        assert re.search(rf"^\s+{re.escape(action)}(\s|$)", text, re.M), action
    assert "vip (string, required)" in text
    assert "config (string, default: /etc/ipsec-vip/swanctl.conf)" in text


def test_cli_page_lists_every_subcommand_and_option(tmp_path):
    p = cli.parser()
    text = _render(manpages.cli_page(p, __version__), tmp_path)
    subs = list(manpages._subcommands(p))
    assert {"up", "down"} <= {name for name, _, _ in subs}
    for name, _, sub in subs:
        assert re.search(rf"^   {re.escape(name)}$", text, re.M), name
        for action in sub._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in text, (name, opt)
    assert "--verbose" in text and __version__ in text


def test_a_new_subcommand_appears_without_touching_the_generator(tmp_path):
    p = cli.parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    new = sub.add_parser("frobnicate", help="a sub-command added after the generator was written")
    new.add_argument("--widget-count", type=int, help="how many widgets")
    text = _render(manpages.cli_page(p, __version__), tmp_path)
    assert re.search(r"^   frobnicate$", text, re.M)
    assert "--widget-count WIDGET_COUNT" in text and "how many widgets" in text


def test_roff_escaping():
    assert manpages.esc(".starts with a dot") == "\\&.starts with a dot"
    assert manpages.esc("a-b \\ c") == "a\\-b \\e c"


def test_the_example_config_is_one_the_agent_accepts():
    cfg = swanctl.load(str(ROOT / "packaging" / "examples" / "swanctl.conf"))
    sel = selection.select(cfg, ipaddress.ip_address("192.0.2.100"))
    assert list(sel.connections) == ["rw"] and list(sel.pools) == ["rw-pool"] and len(sel.secrets) == 1


def test_the_rpm_spec_has_the_package_version():
    spec = (ROOT / "packaging" / "rpm" / "ipsec-vip.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(__version__)}$", spec, re.M)
    assert re.search(rf"^\* .* - {re.escape(__version__)}-1$", spec, re.M)


def test_sitelib_prefers_the_distribution_path():
    sitelib = _load("sitelib")
    assert sitelib.sitelib("/nonexistent-prefix").startswith("/nonexistent-prefix/lib/python3")
