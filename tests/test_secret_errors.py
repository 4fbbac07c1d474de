"""No value of a secrets section leaks through an error (issue 20 item 1): every error path of the
swanctl.conf reader, with a secret nearby, fed to the real commands (``ipsec-vip check``, ``status
--json``, ``up``, the agent's validate-all and start): exit 6 (check: its config finding fails), one
reason, file and line named, the secret nowhere in stdout, stderr, the exit reason or the log, and
nothing written. Fast tier: no daemon (the VICI socket does not exist; each command fails on the
config before it would talk to charon)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ipsec_vip import swanctl
from ipsec_vip.errors import ConfigError
from lab import core as lab

SECRET = "Sup3rS3cr3tPsk"  # noqa: S105 (appears in every case; must appear in no output)
VIP = "192.0.2.100"
CONN = ("connections {\n  rw {\n    local_addrs = " + VIP
        + "\n    local { auth = psk }\n    remote { auth = psk }\n  }\n}\n")


def secrets(body: str) -> str:
    return CONN + "secrets {\n  ike-rw {\n    id = vpn.example.com\n" + body + "\n  }\n}\n"


# name -> (swanctl.conf text, extra files {relative path: text}, what the message says)
CASES: dict[str, tuple[str, dict[str, str], str]] = {
    "secret on its own line": (secrets(f"    secret =\n      {SECRET}"), {}, "has no value"),
    "unquoted } in the secret": (secrets(f"    secret = ab}}{SECRET}"), {}, "unquoted '}'"),
    "unquoted } then {": (secrets(f"    secret = ab}}{SECRET}{{x"), {}, r"expected '=' or '\{' after a name"),
    "unterminated quote": (secrets(f'    secret = "{SECRET}'), {}, "unterminated quoted string"),
    "quoted secret on its own line": (secrets(f'    secret =\n      "{SECRET}"'), {}, "unexpected character"),
    "own line opens a section": (secrets(f"    secret =\n      {SECRET}{{"), {}, "is not closed"),
    "own line with a colon": (secrets(f"    secret =\n      {SECRET}:x\n"), {}, r"expected '\{' after a section"),
    "own line with an empty reference": (secrets(f"    secret =\n      {SECRET}:,"), {}, "invalid section reference"),
    "reference to nothing after a }": (secrets(f"    secret = a}}\n  ike-y : {SECRET} {{ secret = b"), {},
                                       "does not exist"),
    "reference to itself after a }": (secrets(f"    secret = a}}\n  {SECRET} : secrets.{SECRET} {{ secret = b"),
                                      {}, "reference cycle"),
    "unknown secret type": (secrets(f"    secret = ab}}\n  {SECRET} {{ secret = x"), {}, "unknown secret type"),
    "secret missing": (secrets(f"    secret = ok\n  }}\n  ike-{SECRET} {{\n    id = x"), {}, "secret missing"),
    "bad 0x secret": (secrets(f"    secret = 0x{SECRET}"), {}, "invalid 0x/0s"),
    "include of a directory from a secret": (secrets(f"    secret =\n    include {SECRET}.d"),
                                             {f"{SECRET}.d/x": ""}, "a directory"),
    "include cycle from a secret": (secrets(f"    secret =\n    include {SECRET}.conf"),
                                    {f"{SECRET}.conf": "include swanctl.conf\n"}, "include cycle"),
    "included secrets file, own line": (CONN + "secrets {\n  include secrets.d/*.conf\n}\n",
                                        {"secrets.d/a.conf": f"ike-a {{\n  secret =\n    {SECRET}\n}}\n"},
                                        "has no value"),
    "included secrets file, unquoted }": (CONN + "secrets {\n  include secrets.d/*.conf\n}\n",
                                          {"secrets.d/a.conf": f"ike-a {{\n  secret = x}}{SECRET}\n}}\n"},
                                          "unquoted '}'"),
    "included file holding a secret key": (CONN + "include other.conf\n",
                                           {"other.conf": f"plugins {{\n  ha {{\n    secret =\n      {SECRET}\n"},
                                           "has no value"),
    "included secrets file not UTF-8": (CONN + "secrets {\n  include secrets.d/*.conf\n}\n",
                                        {"secrets.d/a.conf": f"ike-a {{ secret = {SECRET}\udcff }}\n"}, "UTF-8"),
    "a FIFO as an included secrets file": (CONN + "secrets {\n  include secrets.d/*.conf\n}\n",
                                           {"secrets.d/a.conf": "FIFO"}, "a FIFO"),
}


def write_case(d: Path, name: str) -> Path:
    text, extra, _ = CASES[name]
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "swanctl.conf"
    conf.write_text(text)
    for rel, content in extra.items():
        f = d / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        if content == "FIFO":
            os.mkfifo(f)
        else:
            f.write_bytes(content.encode(errors="surrogateescape"))
    return conf


@pytest.fixture
def bounded() -> Iterator[None]:
    """A read that blocks (a FIFO, on the old code) fails the test instead of hanging it."""
    def expire(*_: object) -> None:
        raise TimeoutError("the reader blocked")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.usefixtures("bounded")
@pytest.mark.parametrize("name", CASES)
def test_reader_error_names_the_place_never_the_secret(tmp_path: Path, name: str) -> None:
    conf = write_case(tmp_path, name)
    with pytest.raises(ConfigError, match=CASES[name][2]) as e:
        swanctl.load(str(conf))
    message = str(e.value)
    assert SECRET not in message
    assert str(tmp_path) in message  # the file is named ...
    assert "\n" not in message


@pytest.mark.usefixtures("bounded")
@pytest.mark.parametrize("name", [n for n in CASES if "own line" in n or "unquoted" in n])
def test_the_message_says_which_line(tmp_path: Path, name: str) -> None:
    conf = write_case(tmp_path, name)
    with pytest.raises(ConfigError) as e:
        swanctl.load(str(conf))
    assert any(f":{n}:" in str(e.value) or f"line {n}" in str(e.value) for n in range(2, 20))


def test_names_are_still_quoted_where_no_secret_was_read(tmp_path: Path) -> None:
    """Hiding is not blanket: a connection's mistake before any secret is named as it is."""
    with pytest.raises(ConfigError, match=r"swanctl.conf:2: expected '=' or '\{' after 'oops'"):
        swanctl.load(str(write_raw(tmp_path, "connections {\n  oops\n}\nsecrets { ike-x { secret = x } }\n")))


def write_raw(d: Path, text: str) -> Path:
    f = d / "swanctl.conf"
    f.write_text(text)
    return f


PASS_ON = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}  # the code under test, as pytest has it


def cli(*args: str, rsctmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HA_RSCTMP": str(rsctmp), "LANG": "C.UTF-8", **PASS_ON}
    return subprocess.run([sys.executable, "-m", "ipsec_vip.cli", *args], capture_output=True, text=True,
                          timeout=20, env=env)


def run_commands(d: Path) -> dict[str, tuple[int, str, str]]:
    """Every command that reads the config, on ``d``/swanctl.conf; -> name: (rc, stdout, stderr)."""
    conf, rsctmp, sock = str(d / "swanctl.conf"), d / "rsctmp", f"unix://{d}/none.vici"
    opts = ("--vip", VIP, "--config", conf, "--vici-socket", sock)
    params = {"vip": VIP, "config": conf, "vici_socket": sock, "start_without_vip": "true"}
    agent_env = {"HA_LOGFILE": str(d / "agent.log"), **PASS_ON}
    jobs = {
        "check": lambda: cli("check", "--json", *opts, rsctmp=rsctmp),
        "status": lambda: cli("status", "--json", *opts, rsctmp=rsctmp),
        "up": lambda: cli("up", *opts, rsctmp=rsctmp),
        "validate-all": lambda: lab.agent("validate-all", params, rsctmp=str(rsctmp), timeout=20, **agent_env),
        "start": lambda: lab.agent("start", params, rsctmp=str(rsctmp), timeout=20, **agent_env),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    out = {}
    for name, f in futures.items():
        r = f.result()
        out[name] = (r.returncode, r.stdout, r.stderr) if isinstance(r, subprocess.CompletedProcess) \
            else (r.rc, r.stdout, r.stderr)
    return out


@pytest.mark.parametrize("name", CASES)
def test_no_command_shows_the_secret(tmp_path: Path, name: str) -> None:
    write_case(tmp_path, name)
    results = run_commands(tmp_path)
    for command, (_rc, stdout, stderr) in results.items():
        assert SECRET not in stdout + stderr, f"{command} showed the secret"
        assert "Traceback" not in stderr, command
    log = tmp_path / "agent.log"
    assert not log.exists() or SECRET not in log.read_text(errors="replace")
    for command in ("up", "validate-all", "start"):
        assert results[command][0] == 6, (command, results[command])
    for command in ("validate-all", "start"):
        reasons = [line for line in results[command][2].splitlines() if line.startswith("ocf-exit-reason:")]
        assert len(reasons) == 1 and str(tmp_path) in reasons[0], reasons
    rc, stdout, _ = results["check"]
    config = [f for f in json.loads(stdout)["findings"] if f["name"] == "config"]
    assert rc == 1 and config[0]["level"] == "fail"
    (vip,) = json.loads(results["status"][1])["vips"]
    assert vip["error"] and str(tmp_path) in vip["error"]
    states = tmp_path / "rsctmp" / "ipsec-vip"
    assert not states.exists() or not [p for p in states.iterdir() if p.suffix == ".json"], "state written"
