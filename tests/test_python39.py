"""The RHEL 9 promise (Python 3.9): every module imports and the reader, the selection and the
agent's meta-data run under a real 3.9 interpreter where this machine has one (mypy 2.x no
longer type-checks for 3.9; ruff's target-version py39 checks the syntax)."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import glob, importlib, ipaddress, pkgutil, sys
ROOT = sys.argv[1]
sys.path[:0] = [ROOT, ROOT + "/packaging"]
import manpages
sys.meta_path.append(manpages._Stubs())  # vici/psutil need not be installed for 3.9
import ipsec_vip
for m in pkgutil.walk_packages(ipsec_vip.__path__, "ipsec_vip."):
    importlib.import_module(m.name)
from ipsec_vip import agent, selection, swanctl
for f in sorted(glob.glob(ROOT + "/tests/configs/*/swanctl.conf")):
    swanctl.load(f)
cfg = swanctl.load(ROOT + "/tests/configs/secrets/swanctl.conf")
assert selection.select(cfg, ipaddress.ip_address("192.0.2.100")).connections
assert "<resource-agent" in agent.META.xml()
print(sys.version_info[:2])
"""


def _python39() -> str | None:
    """A real 3.9 (pyenv's own build before a PATH entry, which may be pyenv's shim)."""
    for exe in [*sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")), shutil.which("python3.9")]:
        if exe and subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0:
            return exe
    return None


def test_modules_run_under_python_3_9():
    exe = _python39()
    if exe is None:
        pytest.skip("no Python 3.9 interpreter on this machine: 3.9 is untested here")
    p = subprocess.run([exe, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "(3, 9)" in p.stdout
