"""Under systemd the command's stderr is the journal: each line then carries its priority."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from ipsec_vip.log import journal_formatter

ROOT = Path(__file__).resolve().parent.parent


def _stderr(tmp_path: Path, journal: bool) -> str:
    out = tmp_path / "stderr"
    with open(out, "w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        p = subprocess.run([sys.executable, "-m", "ipsec_vip.cli", "watch", "--vip", "192.0.2.300"],
                           stderr=f, env=env, timeout=60)
    assert p.returncode == 6
    return out.read_text()


def test_errors_carry_priority_err_only_on_the_journal(tmp_path):
    assert _stderr(tmp_path, journal=True).startswith("<3>ipsec-vip watch: ")
    assert _stderr(tmp_path, journal=False).startswith("ipsec-vip watch: ")


def test_journal_formatter_prefixes_the_syslog_priority():
    fmt = journal_formatter()
    line = {level: fmt.format(logging.LogRecord("ipsec-vip", level, __file__, 1, "m", None, None))
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)}
    assert line == {logging.DEBUG: "<7>m", logging.INFO: "<6>m", logging.WARNING: "<4>m", logging.ERROR: "<3>m"}
