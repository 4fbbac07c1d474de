"""``ipsec-vip status`` and ``check`` against a real gateway charon with a real road-warrior client."""

from __future__ import annotations

import json
import secrets
import sys

import pytest

from lab import core as lab
from lab.core import GATEWAY_CONF

pytestmark = pytest.mark.charon

PSK = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def env(gwlab, tmp_path_factory):
    d = tmp_path_factory.mktemp("status")
    conf = d / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    conf.chmod(0o600)
    lab.client_load(gwlab.client, PSK)
    return {"lab": gwlab, "conf": conf, "dir": d, "rsctmp": str(d / "rsctmp")}


def ipsec_vip(env, *args: str, netns: str | None = None) -> lab.Result:
    """The CLI in gw1's namespace, as root runs it."""
    cmd = [lab.IP, "netns", "exec", netns or env["lab"].ns("gw1"), sys.executable, "-m", "ipsec_vip.cli", *args]
    p = lab.run(*cmd, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HA_RSCTMP": env["rsctmp"]})
    assert PSK not in p.stdout + p.stderr
    return lab.Result(p.returncode, p.stdout, p.stderr)


def agent(env, action: str) -> lab.Result:
    gw = env["lab"].gateways["gw1"]
    return lab.agent(action, {"vip": lab.VIP, "config": str(env["conf"]), "vici_socket": gw.uri},
                     netns=env["lab"].ns("gw1"), rsctmp=env["rsctmp"])


def status_json(env, *args: str) -> tuple[int, dict]:
    r = ipsec_vip(env, "status", "--json", *args)
    return r.rc, json.loads(r.stdout)


def findings(env, *args: str) -> tuple[int, list[dict[str, str]]]:
    r = ipsec_vip(env, "check", "--json", *args)
    return r.rc, json.loads(r.stdout)["findings"]


def by_name(found: list[dict[str, str]], name: str) -> list[dict[str, str]]:
    return [f for f in found if f["name"] == name]


def test_status_of_a_started_vip_with_a_connected_client(env):
    lb: lab.Lab = env["lab"]
    gw = lb.gateways["gw1"]
    lb.add_vip("gw1")
    try:
        assert agent(env, "start").rc == 0
        assert lab.client_initiate(lb.client)
        rc, rep = status_json(env)
        assert rc == 0
        assert rep["schema"] == 1
        (charon,) = rep["charons"]
        assert charon["reachable"] and charon["version"] == "5.9.8" and charon["socket"] == gw.uri
        assert isinstance(charon["uptime_seconds"], int) and charon["uptime_seconds"] >= 0
        assert charon["ike_sas"] == 1
        (vip,) = rep["vips"]
        assert (vip["vip"], vip["source"], vip["name"], vip["held"], vip["started"]) == (
            lab.VIP, "resource", "vpn", True, True)
        (conn,) = vip["connections"]
        assert conn["name"] == "rw" and conn["loaded"]
        (ike,) = conn["ike_sas"]
        assert ike["state"] == "ESTABLISHED" and ike["remote_id"] == "client1@example.com"
        assert ike["remote_host"] == lab.CLIENT_IP and ike["local_host"] == lab.VIP
        assert ike["remote_vips"] and ike["remote_vips"][0].startswith("203.0.113.")
        assert ike["children"][0]["state"] == "INSTALLED"
        assert vip["ike_sas_established"] == 1 and vip["child_sas_installed"] == 1
        text = ipsec_vip(env, "status")
        assert text.rc == 0
        assert f"VIP {lab.VIP}: held here, started" in text.stdout
        assert "ESTABLISHED" in text.stdout and "client1@example.com" in text.stdout
        assert "charon 5.9.8" in text.stdout
    finally:
        lb.del_vip("gw1")
        agent(env, "stop")
        gw.clear()


def test_status_of_a_watch_config_not_started_here(env, tmp_path):
    gw = env["lab"].gateways["gw1"]
    (tmp_path / "office.conf").write_text(f"vip = {lab.VIP}\nconfig = {env['conf']}\nvici_socket = {gw.uri}\n")
    rc, rep = status_json(env, "--watch-dir", str(tmp_path))
    assert rc == 0
    (vip,) = rep["vips"]
    assert (vip["source"], vip["name"], vip["held"], vip["started"]) == ("watch", "office", False, False)
    assert vip["connections"] == [{"name": "rw", "loaded": False, "ike_sas": []}]


def test_status_exits_1_when_charon_is_unreachable(env):
    r = ipsec_vip(env, "status", "--vip", lab.VIP, "--config", str(env["conf"]),
                  "--vici-socket", "unix:///nonexistent/charon.vici")
    assert r.rc == 1
    assert "NOT REACHABLE" in r.stdout
    rc, rep = status_json(env, "--vip", lab.VIP, "--vici-socket", "unix:///nonexistent/charon.vici")
    assert rc == 1 and rep["charons"][0]["reachable"] is False


def test_check_passes_on_the_lab_gateway(env):
    gw = env["lab"].gateways["gw1"]
    rc, found = findings(env, "--vip", lab.VIP, "--config", str(env["conf"]), "--vici-socket", gw.uri)
    assert rc == 0, [f for f in found if f["level"] == "fail"]
    names = {f["name"] for f in found}
    assert names >= {"xfrm-netlink", "kernel-esp", "tun", "charon-running", "vici", "plugins", "config",
                     "connections", "psk", "load-all", "secret-files", "firewall"}
    assert by_name(found, "psk")[0]["level"] == "ok"
    assert by_name(found, "xfrm-netlink")[0]["level"] == "ok"


def test_check_reports_missing_kernel_esp_and_advises_libipsec(env):
    """Probed independently here: the lab kernel has XFRM but no ESP."""
    ns = env["lab"].ns("gw1")
    probe = lab.in_ns(ns, "ip", "xfrm", "state", "add", "src", "192.0.2.201", "dst", "192.0.2.202", "proto", "esp",
                      "spi", "0x4242", "mode", "tunnel", "enc", "cbc(aes)", "0x" + "11" * 16,
                      "auth-trunc", "hmac(sha256)", "0x" + "22" * 32, "128", check=False)
    lab.in_ns(ns, "ip", "xfrm", "state", "flush", check=False)
    gw = env["lab"].gateways["gw1"]
    _, found = findings(env, "--vip", lab.VIP, "--config", str(env["conf"]), "--vici-socket", gw.uri)
    (esp,) = by_name(found, "kernel-esp")
    if probe.returncode == 0:
        assert esp["level"] == "ok"
    else:
        assert esp["level"] == "warn"  # the lab's charon runs kernel-libipsec
        assert "refuses ESP" in esp["message"] and "kernel-libipsec" in esp["message"]
        assert "TUN" in esp["message"] and "slower" in esp["message"]


def test_weak_psk_fails_without_printing_it(env, tmp_path):
    weak = "Sommer2024!Sommer2024!"
    conf = tmp_path / "weak.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": weak})
    conf.chmod(0o600)
    gw = env["lab"].gateways["gw1"]
    r = ipsec_vip(env, "check", "--vip", lab.VIP, "--config", str(conf), "--vici-socket", gw.uri)
    assert r.rc == 1
    assert "[FAIL] psk: secrets.ike-client1" in r.stdout and "weak PSK" in r.stdout
    assert "ipsec-vip psk" in r.stdout
    assert weak not in r.stdout + r.stderr
    assert "Sommer" not in r.stdout + r.stderr


def test_secret_file_readable_by_others_warns(env, tmp_path):
    secrets_file = tmp_path / "secrets.conf"
    secrets_file.write_text('secrets {\n    ike-x {\n        secret = "PSK"\n    }\n}\n'.replace("PSK", PSK))
    secrets_file.chmod(0o644)
    conf = tmp_path / "main.conf"
    conf.write_text((GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK}) + "include secrets.conf\n")
    conf.chmod(0o600)
    gw = env["lab"].gateways["gw1"]
    rc, found = findings(env, "--vip", lab.VIP, "--config", str(conf), "--vici-socket", gw.uri)
    assert rc == 0  # a warning, not a failure
    files = {f["message"].split(" ")[0]: f for f in by_name(found, "secret-files")}
    assert files[str(conf)]["level"] == "ok"
    bad = files[str(secrets_file)]
    assert bad["level"] == "warn" and "0644" in bad["message"] and bad["fix"] == f"chmod 600 {secrets_file}"
    secrets_file.chmod(0o600)
    _, found = findings(env, "--vip", lab.VIP, "--config", str(conf), "--vici-socket", gw.uri)
    assert all(f["level"] == "ok" for f in by_name(found, "secret-files"))


def test_config_loaded_by_swanctl_load_all_fails(env, tmp_path):
    etc = tmp_path / "swanctl"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "swanctl.conf").write_text("include conf.d/*.conf\n")
    inside = etc / "conf.d" / "vpn.conf"
    inside.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    inside.chmod(0o600)
    gw = env["lab"].gateways["gw1"]
    common = ("--vip", lab.VIP, "--vici-socket", gw.uri, "--swanctl-conf", str(etc / "swanctl.conf"))
    rc, found = findings(env, "--config", str(inside), *common)
    assert rc == 1 and by_name(found, "load-all")[0]["level"] == "fail"
    # outside /etc/swanctl, but included from swanctl.conf: as bad
    (etc / "swanctl.conf").write_text(f"include conf.d/*.conf\ninclude {env['conf']}\n")
    inside.unlink()
    rc, found = findings(env, "--config", str(env["conf"]), *common)
    assert by_name(found, "load-all")[0]["level"] == "fail"
    (etc / "swanctl.conf").write_text("include conf.d/*.conf\n")
    rc, found = findings(env, "--config", str(env["conf"]), *common)
    assert by_name(found, "load-all")[0]["level"] == "ok"


def test_mobike_unbound_connections_and_missing_eap_plugin(env, tmp_path):
    conf = tmp_path / "eap.conf"
    conf.write_text("""
connections {
    rw {
        local_addrs = VIP
        local { auth = psk
                id = vpn.example.com }
        remote { auth = eap-mschapv2 }
        children { rw { local_ts = 198.51.100.0/24 } }
    }
    anywhere {
        local { auth = psk }
        remote { auth = psk }
        mobike = no
    }
}
""".replace("VIP", lab.VIP))
    gw = env["lab"].gateways["gw1"]
    rc, found = findings(env, "--vip", lab.VIP, "--config", str(conf), "--connections", "rw anywhere",
                         "--vici-socket", gw.uri)
    assert rc == 1
    assert by_name(found, "mobike")[0]["level"] == "warn" and "rw" in by_name(found, "mobike")[0]["message"]
    unbound = [f for f in by_name(found, "connections") if "anywhere" in f["message"]]
    assert unbound and unbound[0]["level"] == "fail" and "local_addrs" in unbound[0]["fix"]
    (plugins,) = by_name(found, "plugins")
    assert plugins["level"] == "fail" and "eap-mschapv2" in plugins["message"]


def test_check_fails_when_charon_is_not_there(env):
    rc, found = findings(env, "--vip", lab.VIP, "--config", str(env["conf"]),
                         "--vici-socket", "unix:///nonexistent/charon.vici")
    assert rc == 1
    (vici,) = by_name(found, "vici")
    assert vici["level"] == "fail" and "/nonexistent/charon.vici" in vici["message"] and vici["fix"]


def test_check_as_non_root_says_so(env):
    cmd = [lab.IP, "netns", "exec", env["lab"].ns("gw1"), "setpriv", "--reuid=65534", "--regid=65534",
           "--clear-groups", sys.executable, "-m", "ipsec_vip.cli", "check", "--json", "--config", "/nonexistent",
           "--watch-dir", "/nonexistent"]
    p = lab.run(*cmd, check=False, env={"PATH": "/usr/bin:/bin", "HA_RSCTMP": str(env["dir"] / "nobody")})
    found = json.loads(p.stdout)["findings"]
    assert by_name(found, "xfrm-netlink")[0]["level"] == "fail"
    assert "root" in by_name(found, "xfrm-netlink")[0]["fix"]


def test_status_shows_a_broken_watch_config_without_failing(env, tmp_path):
    gw = env["lab"].gateways["gw1"]
    (tmp_path / "typo.conf").write_text(f"vpi = {lab.VIP}\n")
    rc, rep = status_json(env, "--watch-dir", str(tmp_path), "--vici-socket", gw.uri)
    assert rc == 0 and rep["charons"][0]["reachable"]
    (vip,) = rep["vips"]
    assert vip["source"] == "watch" and vip["name"] == "typo" and vip["vip"] is None
    assert "typo.conf:1" in vip["error"]
    r = ipsec_vip(env, "status", "--watch-dir", str(tmp_path), "--vici-socket", gw.uri)
    assert r.rc == 0 and "error:" in r.stdout and "typo.conf:1" in r.stdout
