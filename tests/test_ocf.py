"""OCF protocol: meta-data, dispatch, exit codes and reasons, environment, logging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from ipsec_vip import agent, ocf
from ipsec_vip.errors import ConfigError, IpsecVipError, NotInstalledError
from ipsec_vip.log import log
from lab.core import AGENT
from lab.core import agent as run_agent

DTD = "/usr/share/resource-agents/ra-api-1.dtd"


def test_meta_data_is_valid_against_the_dtd(tmp_path):
    r = run_agent("meta-data", {})
    assert r.rc == 0 and r.stderr == ""
    f = tmp_path / "meta.xml"
    f.write_text(r.stdout)
    p = subprocess.run(["xmllint", "--noout", "--dtdvalid", DTD, str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_meta_data_describes_the_contract():
    root = ET.fromstring(agent.META.xml().split("\n", 2)[2])
    assert root.get("name") == "strongswan"
    assert root.findtext("version") == "1.1"
    params = {p.get("name"): p for p in root.iter("parameter")}
    assert set(params) >= {"vip", "config", "connections", "vici_socket"}
    assert params["vip"].get("required") == "1"
    assert params["config"].find("content").get("default") == "/etc/ipsec-vip/swanctl.conf"
    assert params["vici_socket"].find("content").get("default") == "unix:///var/run/charon.vici"
    for p in params.values():
        assert p.findtext("longdesc") and p.findtext("shortdesc")
    actions = {a.get("name") for a in root.iter("action")}
    # only what Pacemaker schedules: pcs copies every advertised action into the resource's CIB
    # entry as an "op" (an advertised usage became "op usage" in every resource)
    assert actions == {"start", "stop", "monitor", "validate-all", "meta-data", "promote", "demote", "notify"}
    assert params["ha_fifo"].find("content").get("default") == "/var/run/charon.ha"


def test_every_exit_code_the_code_can_return_is_in_the_published_table():
    from ipsec_vip import errors, exitcodes

    agent_codes = {code for rows in exitcodes.AGENT.values() for code, _ in rows}
    classes = [errors.IpsecVipError, *(c for c in vars(errors).values()
                                       if isinstance(c, type) and issubclass(c, errors.IpsecVipError))]
    assert {c.ocf_code for c in classes} <= agent_codes
    agent_only = (errors.PermError, errors.Unimplemented, errors.FailedPromoted)  # promote/demote/monitor
    assert {c for c, _ in exitcodes.CLI} >= {c.ocf_code for c in classes if c not in agent_only} | {2}


def test_meta_data_escapes_xml():
    meta = ocf.MetaData("x", "1", "a < b & c", 'say "hi"', (ocf.Parameter("p", "<s>", "&", default='"d"'),))
    root = ET.fromstring(meta.xml().split("\n", 2)[2])
    assert root.findtext("shortdesc") == "a < b & c"
    assert root.find("parameters/parameter/content").get("default") == '"d"'


@pytest.mark.root  # su
def test_meta_data_as_nobody_without_parameters():
    p = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", f"{AGENT} meta-data"],
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert p.returncode == 0, p.stderr
    assert "<resource-agent" in p.stdout


@pytest.mark.parametrize("action", ["promote", "demote", "migrate_to", "reload", "status", "bogus", ""])
def test_unknown_actions_exit_3_with_one_reason(action):
    r = run_agent(action, {"vip": "192.0.2.100"})
    assert r.rc == 3
    assert len(r.reasons) == 1
    assert "Traceback" not in r.stderr


def test_usage_and_help():
    for action in ("usage", "help"):
        r = run_agent(action, {})
        assert r.rc == 0 and "validate-all" in r.stdout and "start" in r.stdout


def test_only_the_first_argument_counts():
    r = subprocess.run([AGENT, "meta-data", "start"], capture_output=True, text=True)
    assert r.returncode == 0 and "<resource-agent" in r.stdout


def _env(**kw: str) -> ocf.Env:
    return ocf.Env.from_environ(["x", kw.pop("action", "monitor")], kw)


def test_env_parsing():
    e = _env(OCF_RESKEY_vip="192.0.2.1", OCF_RESKEY_CRM_meta_interval="10000", OCF_RESKEY_CRM_meta_timeout="20000",
             OCF_RESOURCE_INSTANCE="vpn:1", OCF_CHECK_LEVEL="10")
    assert e.params == {"vip": "192.0.2.1"}
    assert (e.interval_ms, e.timeout_ms, e.check_level, e.instance) == (10000, 20000, 10, "vpn:1")
    assert not e.is_probe


@pytest.mark.parametrize("interval", [None, "", "0"])
def test_probe_is_monitor_with_interval_zero_or_unset(interval):
    kw = {} if interval is None else {"OCF_RESKEY_CRM_meta_interval": interval}
    assert _env(**kw).is_probe
    assert not _env(action="start", **kw).is_probe


def test_garbage_numbers_fall_back():
    e = _env(OCF_RESKEY_CRM_meta_interval="x", OCF_CHECK_LEVEL="deep")
    assert e.interval_ms == 0 and e.check_level == 0 and e.timeout_ms is None


def _run_handler(handler, capsys, **environ):
    meta = ocf.MetaData("t", "1", "s", "l")
    rc = ocf.run(meta, {"start": handler}, ["t", "start"], environ)
    return rc, capsys.readouterr()


@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("bad\nthing"), 6), (NotInstalledError("no charon"), 5), (IpsecVipError("broken"), 1)])
def test_errors_become_codes_and_one_reason_line(capsys, exc, code):
    def handler(env):
        raise exc
    rc, out = _run_handler(handler, capsys)
    assert rc == code
    reasons = [x for x in out.err.splitlines() if x.startswith("ocf-exit-reason:")]
    assert reasons == ["ocf-exit-reason:" + " ".join(str(exc).split())]


def test_unexpected_exception_is_code_1_without_traceback_or_text(capsys):
    def handler(env):
        raise KeyError("secret-value")
    rc, out = _run_handler(handler, capsys)
    assert rc == 1
    assert "secret-value" not in out.err and "Traceback" not in out.err
    assert out.err.count("ocf-exit-reason:") == 1


def test_exit_reason_prefix_from_environment(capsys):
    ocf.exit_reason("x", {"OCF_EXIT_REASON_PREFIX": "REASON:"})
    assert capsys.readouterr().err == "REASON:x\n"


@pytest.mark.parametrize(("value", "level"), [("0", logging.INFO), ("1", logging.DEBUG), (None, logging.INFO),
                                              ("yes", logging.DEBUG), ("", logging.INFO)])
def test_ha_debug_is_read_as_a_string(value, level):
    env = {} if value is None else {"HA_debug": value}
    ocf.setup_logging("vpn", env)
    assert log.threshold == level
    log.info("set the real logger up")
    assert logging.getLogger("ipsec-vip").level == level


def test_logs_go_to_ha_logfile_tagged_with_the_instance(tmp_path):
    f = tmp_path / "ha.log"
    ocf.setup_logging("vpn-a", {"HA_LOGFILE": str(f), "HA_LOGFACILITY": "daemon"})
    log.info("hello")
    text = f.read_text()
    assert "ocf-ipsec-vip(vpn-a)" in text and "hello" in text


def test_stderr_logging_when_run_by_hand(capsys):
    ocf.setup_logging("vpn", {})
    log.debug("not shown")
    log.warning("careful")
    err = capsys.readouterr().err
    assert "not shown" not in err
    assert "careful" in err


def test_a_quiet_action_imports_no_logging(tmp_path):
    """logging costs 5-10 ms to import: an action that logs nothing must not pay for it."""
    code = ("import sys; from ipsec_vip import agent, ocf; "
            "rc = ocf.run(agent.META, agent.HANDLERS, ['strongswan', 'monitor'], "
            "{'OCF_RESKEY_vip': '192.0.2.100', 'HA_RSCTMP': sys.argv[1]}); "
            "print(rc, 'logging' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert p.stdout.split() == ["7", "False"], p.stderr
