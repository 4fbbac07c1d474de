"""The one runner for external commands: full paths, fixed environment, timeouts, logged argv (not stdin)."""

from __future__ import annotations

import pytest

from ipsec_vip import firewall, preflight, runner
from ipsec_vip.errors import CommandError


def test_full_path_required():
    with pytest.raises(ValueError, match="full path"):
        runner.Runner().run(["env"], timeout=5)


def test_environment_is_fixed_not_inherited(monkeypatch):
    monkeypatch.setenv("IPSEC_VIP_LEAK", "x")
    out = runner.Runner().run(["/usr/bin/env"], timeout=5).stdout
    assert sorted(out.splitlines()) == sorted(f"{k}={v}" for k, v in runner.ENV.items())


def test_stdin_closed_unless_given():
    assert runner.Runner().run(["/bin/cat"], timeout=5) == (0, "", "")
    assert runner.Runner().run(["/bin/cat"], stdin="abc\n", timeout=5).stdout == "abc\n"


def test_exit_code_is_a_result():
    assert runner.Runner().run(["/bin/sh", "-c", "echo no >&2; exit 3"], timeout=5) == (3, "", "no\n")


def test_timeout_and_missing_program_are_command_errors():
    with pytest.raises(CommandError, match=r"/bin/sleep 5 did not finish within 0.2 s"):
        runner.Runner().run(["/bin/sleep", "5"], timeout=0.2)
    with pytest.raises(CommandError, match="cannot run /nonexistent/tool: No such file"):
        runner.Runner().run(["/nonexistent/tool"], timeout=5)


class Log:
    def __init__(self):
        self.lines = []

    def debug(self, msg, *args):
        self.lines.append(msg % args)


def test_argv_logged_stdin_never(monkeypatch):
    log = Log()
    monkeypatch.setattr(runner, "log", log)  # the project's logger may be configured by other tests
    runner.Runner().run(["/bin/cat", "a b"], stdin="s3cret-psk", timeout=5)
    text = "\n".join(log.lines)
    assert "running: /bin/cat 'a b' (with 10 characters on stdin)" in text
    assert "exit code 1" in text
    assert "s3cret" not in text


class Fake:
    """Answers each argv from a table; raises what the table holds as an exception."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def run(self, argv, *, timeout, stdin=None):
        self.calls.append(list(argv))
        answer = self.answers[argv[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_firewall_read_takes_the_runner(monkeypatch):
    monkeypatch.setattr(firewall.os, "access", lambda path, mode: True)
    fake = Fake({firewall.NFT: runner.Result(0, '{"nftables": []}', ""),
                 firewall.IPTABLES_SAVE[4]: CommandError("/usr/sbin/iptables-save did not finish within 15 s"),
                 firewall.IPTABLES_SAVE[6]: runner.Result(1, "", "ip6tables-save: permission denied\n")})
    rules = firewall.read(fake)
    assert rules.nft == {"nftables": []}
    assert rules.iptables == {}
    assert rules.errors == ("iptables-save failed: /usr/sbin/iptables-save did not finish within 15 s",
                            "ip6tables-save failed: ip6tables-save: permission denied")
    assert fake.calls[0] == [firewall.NFT, "-j", "list", "ruleset"]


def test_esp_probe_takes_the_runner():
    ctx = preflight.Context([], [], runner=Fake({preflight.UNSHARE: runner.Result(
        2, "", "Error: RTNETLINK answers: Protocol not supported\n")}))
    assert ctx.kernel_esp() == (False, "the kernel refuses ESP SAs (no esp4/esp6 support)")
    ctx = preflight.Context([], [], runner=Fake({preflight.UNSHARE: CommandError("cannot run /usr/bin/unshare: x")}))
    assert ctx.kernel_esp() == (None, "cannot run /usr/bin/unshare: x")
