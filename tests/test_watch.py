"""``ipsec-vip watch`` (the systemd fallback) against a real charon in a network namespace.

The daemon runs as a subprocess in the charon's namespace; VIPs are added and removed
there with ``ip addr``; what is loaded is read from charon over VICI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipsec_vip import cli, watch, watchconf
from ipsec_vip.errors import ConfigError
from lab import core as lab
from lab.core import GATEWAY_CONF
from lab.watch import CLK_TCK, Watch, addr, conn_conf, wait_for, watch_args
from tests.test_agent_charon import PSK, client_sa

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "systemd" / "ipsec-vip-watch@.service"
VIP1, VIP2 = "192.0.2.100", "192.0.2.101"
VIP6 = "2001:db8:77::100"
SECRETS = """\
    ike-shared {
        secret = "a-shared-secret-for-both-vips-0123456789"
    }
"""


# --------------------------------------------------------------------------- no root needed
def test_config_file(tmp_path):
    f = tmp_path / "vpn.conf"
    f.write_text("# the VIP keepalived moves\nvip = 192.0.2.100/24\n\nconfig = /etc/ipsec-vip/swanctl.conf\n"
                 'connections = "rw, rw2"\nvici-socket = unix:///run/charon.vici\ninterface = eth0\n'
                 "check_interval = 5\n")
    assert watchconf.path_of("vpn", str(tmp_path)) == str(f)
    params, interval = watchconf.settings(watchconf.read(str(f)))
    assert (str(params.vip), params.connections, params.interface, interval) == (
        "192.0.2.100", ("rw", "rw2"), "eth0", 5.0)
    assert watchconf.settings({"vip": "2001:db8::1"})[1] == watchconf.DEFAULT_CHECK_INTERVAL


@pytest.mark.parametrize(("text", "error"), [
    ("vip 192.0.2.1\n", "expected 'key = value'"),
    ("vip = 192.0.2.1\nha_port = 4511\n", "unknown key 'ha_port'"),
    ("vip = 192.0.2.1\nstart_without_vip = maybe\n", "start_without_vip must be true or false"),
    ("vip = 192.0.2.1\nvip = 192.0.2.2\n", "set twice"),
    ("vip = 192.0.2.1  # trailing comment\n", "not an IPv4 or IPv6 address"),
    ("config = /x\n", "vip is required"),
    ("vip = 192.0.2.1\ncheck_interval = often\n", "check_interval"),
    ("vip = 192.0.2.1\nconfig = relative.conf\n", "absolute path"),
])
def test_config_file_errors(tmp_path, text, error):
    f = tmp_path / "bad.conf"
    f.write_text(text)
    with pytest.raises(ConfigError, match=error):
        watchconf.settings(watchconf.read(str(f)))


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200])
def test_watch_name_is_a_plain_file_name(name):
    with pytest.raises(ConfigError):
        watchconf.path_of(name)


@pytest.mark.parametrize(("argv", "error"), [
    (["watch"], "give NAME"),
    (["watch", "vpn", "--vip", VIP1], "either NAME or options"),
    (["watch", "--vip", "not-an-address"], "not an IPv4 or IPv6 address"),
    (["watch", "--vip", VIP1, "--config", "/nonexistent/swanctl.conf"], "swanctl.conf"),
])
def test_cli_refuses_bad_settings_before_watching(argv, error, tmp_path, capsys):
    assert cli.main([*argv, "--state-dir", str(tmp_path), "--watch-dir", str(tmp_path)]) == 6
    assert error in capsys.readouterr().err


def test_cli_missing_watch_config(tmp_path, capsys):
    assert cli.main(["watch", "nosuch", "--watch-dir", str(tmp_path)]) == 6
    assert f"{tmp_path}/nosuch.conf does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("abstract", [True, False])
def test_notify_reaches_path_and_abstract_sockets(tmp_path, monkeypatch, abstract):
    name = f"@ipsec-vip-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name[1:] if abstract else name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        assert watch.notify("READY=1\nSTATUS=x")
        assert s.recv(100) == b"READY=1\nSTATUS=x"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not watch.notify("READY=1")


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing: `make deps` installs the systemd package")
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecStart=/usr/bin/ipsec-vip watch %i", "Restart=on-failure",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_ADMIN",
                 "KillMode=process", "RestrictAddressFamilies=AF_UNIX AF_NETLINK", "RuntimeDirectory=ipsec-vip-watch"):
        assert line in text.splitlines(), line
    assert "strongswan.service" in next(x for x in text.splitlines() if x.startswith("After="))
    # verify checks that ExecStart exists: point it at this checkout's entry point
    exe = Path(sys.executable).parent / "ipsec-vip"
    if not exe.exists():
        pytest.skip(f"{exe} missing (install the package into this interpreter's environment)")
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("ExecStart=/usr/bin/ipsec-vip", f"ExecStart={exe}"))
    # verify also checks Documentation=man:ipsec-vip(8): the page as the packages build it
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True)
    page = subprocess.run([sys.executable, str(ROOT / "packaging" / "manpages.py"), "cli"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    (man8 / "ipsec-vip.8").write_text(page)
    env = {**os.environ, "MANPATH": str(tmp_path / "man")}
    p = subprocess.run([analyze, "verify", str(tmp_path / "ipsec-vip-watch@vpn.service")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr  # warnings (unknown keys, bad values) go to stderr
    broken = tmp_path / "broken@.service"
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    p = subprocess.run([analyze, "verify", str(tmp_path / "broken@vpn.service")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert "notifyy" in p.stderr  # the check above can fail


# --------------------------------------------------------------------------- real charon
@pytest.fixture(scope="module")
def env(charon, tmp_path_factory):
    d = tmp_path_factory.mktemp("watch")
    os.chmod(d, 0o755)
    conf = d / "swanctl.conf"
    conf.write_text(conn_conf({"one": VIP1, "two": VIP2, "six": VIP6}, SECRETS))
    conf.chmod(0o600)
    # a veth pair with both ends up: IPv6 DAD runs (and finishes) on it
    lab.run(lab.IP, "-n", charon.netns, "link", "add", "w6a", "type", "veth", "peer", "name", "w6b")
    for dev in ("w6a", "w6b"):
        lab.run(lab.IP, "-n", charon.netns, "link", "set", dev, "up")
    lab.in_ns(charon.netns, "sysctl", "-qw", "net.ipv6.conf.w6a.dad_transmits=2")
    return {"charon": charon, "conf": conf, "dir": d, "state": d / "state"}


@pytest.fixture
def watchers(env):
    started: list[Watch] = []
    yield started
    for w in started:
        w.close()
    c: lab.Charon = env["charon"]
    if c.proc is None or c.proc.poll() is not None:
        c.launch()
    for cidr, dev in ((f"{VIP1}/32", "lo"), (f"{VIP2}/32", "lo"), (f"{VIP6}/64", "w6a")):
        lab.run(lab.IP, "-n", c.netns, "addr", "del", cidr, "dev", dev, check=False)
    c.clear()
    shutil.rmtree(env["state"], ignore_errors=True)


def start(env, watchers, vip=VIP1, *extra, name="w", **kw) -> Watch:
    w = Watch(env["charon"].netns, watch_args(env["charon"], vip, env["conf"], env["state"], *extra),
              env["dir"], name=name, **kw)
    watchers.append(w)
    return w.ready()


def loaded(env) -> set[str]:
    return set(env["charon"].conns())


def settled(env, expected: set[str], timeout: float = 10) -> None:
    """Wait for charon to show exactly ``expected``, then check it stays so."""
    wait_for(lambda: loaded(env) == expected, timeout)
    time.sleep(0.3)
    assert loaded(env) == expected


@pytest.mark.charon
def test_ready_then_sigterm_exits_0(env, watchers):
    w = start(env, watchers)
    assert "STATUS=VIP 192.0.2.100 not held here, nothing loaded" in w.wait_notify("READY=1").split("\n")
    assert loaded(env) == set()
    assert w.terminate() == 0
    w.wait_notify("STOPPING=1", timeout=2)


@pytest.mark.charon
def test_vip_added_loads_removed_unloads(env, watchers):
    c: lab.Charon = env["charon"]
    w = start(env, watchers)
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one"})
    assert "ike-shared" in c.shared()
    assert json.loads((env["state"] / "ipsec-vip" / "watch-192.0.2.100.json").read_text())["conns"] == ["one"]
    addr(c.netns, "del", f"{VIP1}/32")
    settled(env, set())
    assert c.shared() == []
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one"})
    assert w.terminate() == 0  # SIGTERM on the VIP holder: the agent's stop, nothing left loaded
    assert loaded(env) == set()
    assert c.shared() == []
    log = w.log()
    assert log.count("is held here") == 2
    assert log.count("INFO: loaded 1 connections") == 2


# What the unit's sandbox amounts to for the daemon: a private mount namespace where everything
# is read-only but the state directory (ProtectSystem=strict + the RuntimeDirectory), and root
# without any capability (CapabilityBoundingSet= empty, NoNewPrivileges=yes). "remount,bind,ro"
# changes only this namespace's mount flags, never the file system.
SANDBOX = ('unshare', '-m', '--propagation', 'private', 'sh', '-c',
           'mount --bind "$1" "$1" && mount -o remount,bind,ro / && shift && exec "$@"', 'sh')
NO_CAPS = ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs")


@pytest.mark.charon
def test_named_config_in_the_units_sandbox(env, watchers):
    """``ipsec-vip watch NAME`` as the unit runs it: config from NAME.conf, read-only file system
    but for the state directory, no capabilities."""
    c: lab.Charon = env["charon"]
    (env["dir"] / "vpn.conf").write_text(
        f"vip = {VIP1}\nconfig = {env['conf']}\nvici_socket = {c.uri}\nconnections = one\n")
    env["state"].mkdir()
    w = Watch(c.netns, ["vpn", "--watch-dir", str(env["dir"]), "--state-dir", str(env["state"])], env["dir"],
              prefix=(*SANDBOX, str(env["state"]), *NO_CAPS))
    watchers.append(w)
    w.ready()
    with open(f"/proc/{w.pid}/status") as f:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in f) if k.startswith("Cap")}
    assert caps["CapEff"] == caps["CapBnd"] == "0000000000000000"
    with open(f"/proc/{w.pid}/mountinfo") as f:
        root = next(line.split() for line in f if line.split()[4] == "/")
    assert "ro" in root[5].split(",")
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one"})
    assert (env["state"] / "ipsec-vip" / "watch-vpn.json").exists()
    addr(c.netns, "del", f"{VIP1}/32")
    settled(env, set())
    assert w.terminate() == 0
    assert "ERROR" not in w.log()


@pytest.mark.charon
def test_charon_restart_and_absent_at_start(env, watchers):
    c: lab.Charon = env["charon"]
    addr(c.netns, "add", f"{VIP1}/32")
    w = start(env, watchers)
    settled(env, {"one"})
    c.kill()  # a crash; then the service manager starts it again
    w.wait_notify(f"STATUS=waiting for charon on {c.uri}")
    c.launch()
    settled(env, {"one"})
    # charon absent when the VIP arrives; loaded once charon is back
    c.kill()
    addr(c.netns, "del", f"{VIP1}/32")
    time.sleep(0.5)
    addr(c.netns, "add", f"{VIP1}/32")
    time.sleep(0.5)
    c.launch()
    settled(env, {"one"})
    assert w.proc.poll() is None
    # each crash is logged once; a reconnect that lands in a dying charon's backlog (a loaded
    # machine) may add one more, but retries are never logged one by one
    assert 2 <= w.log().count("charon closed the VICI connection") <= 3, w.log()
    assert w.terminate() == 0


@pytest.mark.charon
def test_frozen_charon_never_hangs_the_daemon(env, watchers):
    """charon stopped (SIGSTOP) while the VIP leaves: the stop times out, the daemon stays
    responsive and finishes the job once charon runs again; SIGTERM still ends it in time."""
    c: lab.Charon = env["charon"]
    addr(c.netns, "add", f"{VIP1}/32")
    w = start(env, watchers)
    settled(env, {"one"})
    c.signal(signal.SIGSTOP)
    try:
        addr(c.netns, "del", f"{VIP1}/32")
        wait_for(lambda: "did not answer" in w.log(), 30)
        assert w.proc.poll() is None
    finally:
        c.signal(signal.SIGCONT)
    settled(env, set(), timeout=30)  # retried with backoff: unloaded after all
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one"})
    c.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        rc = w.proc.wait(70)  # the unit's TimeoutStopSec
        took = time.monotonic() - t0
    finally:
        c.signal(signal.SIGCONT)
    assert rc == 1, w.log()  # the final stop could not reach charon: said so, not 0
    assert took < 65
    assert "Traceback" not in w.log()


@pytest.mark.charon
def test_charon_absent_at_boot(env, watchers):
    c: lab.Charon = env["charon"]
    c.kill()
    addr(c.netns, "add", f"{VIP1}/32")
    w = start(env, watchers)  # READY although charon is not there yet
    assert f"STATUS=waiting for charon on {c.uri}" in w.wait_notify("READY=1").split("\n")
    c.launch()
    settled(env, {"one"})
    assert w.terminate() == 0


@pytest.mark.charon
def test_connections_unloaded_behind_its_back_come_back(env, watchers):
    c: lab.Charon = env["charon"]
    addr(c.netns, "add", f"{VIP1}/32")
    w = start(env, watchers, VIP1, "--check-interval", "1")
    settled(env, {"one"})
    with c.vici() as s:  # what `swanctl --load-all` does to connections it did not load
        s.unload_conn({"name": "one"})
    assert loaded(env) == set()
    settled(env, {"one"}, timeout=5)
    assert "loading again" in w.log()


@pytest.mark.charon
def test_swanctl_load_all_after_charon_restart_and_reload(env, watchers):
    """strongswan.service runs `swanctl --load-all` right after charon starts and on reload; it
    unloads what it did not load. Even with periodic checks off, the real daemon puts them back
    after charon's restart, and SIGHUP (the unit's ExecReload) reaches it and makes it look; the
    timing (10 s of checks, then none until SIGHUP) is test_watch_machine's, on a fake clock."""
    c: lab.Charon = env["charon"]
    addr(c.netns, "add", f"{VIP1}/32")
    w = start(env, watchers, VIP1, "--check-interval", "0")
    settled(env, {"one"})
    c.kill()
    c.launch()
    settled(env, {"one"})
    with c.vici() as s:
        s.unload_conn({"name": "one"})
    settled(env, {"one"}, timeout=5)
    os.kill(w.pid, signal.SIGHUP)
    wait_for(lambda: "SIGHUP: checking" in w.log(), timeout=3)
    settled(env, {"one"}, timeout=3)
    assert w.terminate() == 0


@pytest.mark.charon
def test_flapping_vip_ends_right_without_leaks(env, watchers):
    c: lab.Charon = env["charon"]
    w = start(env, watchers)
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one"})
    time.sleep(0.5)
    fds, threads = w.fds(), w.threads()
    add, delete = f"address add {VIP1}/32 dev lo\n", f"address del {VIP1}/32 dev lo\n"
    lab.run(lab.IP, "-n", c.netns, "-batch", "-", input=(delete + add) * 50 + delete)  # 101 changes
    settled(env, set())
    lab.run(lab.IP, "-n", c.netns, "-batch", "-", input=(add + delete) * 50 + add)
    settled(env, {"one"})
    assert w.proc.poll() is None
    wait_for(lambda: (w.fds(), w.threads()) == (fds, threads), timeout=5)  # VICI watchdog timers end


def _netlink_drops(pid: int) -> int:
    """Messages the kernel dropped for the process's rtnetlink sockets (overflow)."""
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    with open(f"/proc/{pid}/net/netlink") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(int(r[8]) for r in rows if r[1] == "0" and f"socket:[{r[9]}]" in inodes)


@pytest.mark.charon
def test_event_overflow_is_resynchronised(env, watchers):
    """More changes than the socket buffer holds while the daemon is stopped (ENOBUFS):
    it reads the addresses again instead of trusting the events."""
    c: lab.Charon = env["charon"]
    w = start(env, watchers)
    add, delete = f"address add {VIP1}/32 dev lo\n", f"address del {VIP1}/32 dev lo\n"
    for first, then, expected in ((add, delete, {"one"}), (delete, add, set())):
        os.kill(w.pid, signal.SIGSTOP)
        try:
            lab.run(lab.IP, "-n", c.netns, "-batch", "-", input=(first + then) * 1500 + first, timeout=60)
        finally:
            os.kill(w.pid, signal.SIGCONT)
        settled(env, expected)
    assert _netlink_drops(w.pid) > 0  # the overflow really happened
    assert "netlink address events overflowed" in w.log()
    assert w.terminate() == 0


@pytest.mark.charon
def test_two_watchers_stay_independent(env, watchers):
    c: lab.Charon = env["charon"]
    a = start(env, watchers, VIP1, name="a")
    b = start(env, watchers, VIP2, name="b")
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one"})
    addr(c.netns, "add", f"{VIP2}/32")
    settled(env, {"one", "two"})
    addr(c.netns, "del", f"{VIP1}/32")
    settled(env, {"two"})
    assert "ike-shared" in c.shared()  # still used by b's connections
    addr(c.netns, "add", f"{VIP1}/32")
    settled(env, {"one", "two"})
    assert b.terminate() == 0
    assert loaded(env) == {"one"}
    assert "ike-shared" in c.shared()  # a still needs it
    assert a.proc.poll() is None
    assert a.terminate() == 0
    assert loaded(env) == set()
    assert c.shared() == []


@pytest.mark.charon
def test_idle_daemon_uses_no_cpu(env, watchers):
    c: lab.Charon = env["charon"]
    addr(c.netns, "add", f"{VIP1}/32")
    w = start(env, watchers)  # default check interval (10 s)
    settled(env, {"one"})
    time.sleep(0.5)
    before = w.cpu_ticks()
    time.sleep(5)
    spent = w.cpu_ticks() - before
    assert spent <= 2, f"{spent} ticks of {1 / CLK_TCK:.3f}s in 5 s idle"


def _tentative(netns: str, address: str) -> bool | None:
    out = lab.run(lab.IP, "-n", netns, "-j", "-6", "addr", "show", "dev", "w6a").stdout
    for a in (x for link in json.loads(out) for x in link.get("addr_info", [])):
        if a.get("local") == address:
            return bool(a.get("tentative"))
    return None


@pytest.mark.charon
def test_ipv6_vip_counts_only_after_dad(env, watchers):
    c: lab.Charon = env["charon"]
    w = start(env, watchers, VIP6)
    addr(c.netns, "add", f"{VIP6}/64", "w6a")
    samples = 0
    while True:
        conns = loaded(env)  # first charon, then the flag: loaded-while-tentative cannot hide
        if not _tentative(c.netns, VIP6):
            break
        assert conns == set(), "loaded while the address is still tentative (DAD running)"
        samples += 1
        time.sleep(0.05)
    assert samples >= 5  # DAD really ran for a while (dad_transmits=2: ~2 s)
    settled(env, {"six"})
    addr(c.netns, "del", f"{VIP6}/64", "w6a")
    settled(env, set())
    addr(c.netns, "add", f"{VIP6}/64", "w6a", "nodad")  # without DAD: loaded at once
    settled(env, {"six"}, timeout=2)
    assert w.terminate() == 0


@pytest.mark.charon
def test_reaction_bench_runs():
    """tests/watch_bench.py (used by `make bench`) measures something sensible."""
    from tests import watch_bench

    result = watch_bench.measure(rounds=3)
    assert len(result["load"]) == len(result["unload"]) == 3
    assert all(0 < t < 5 for t in result["load"] + result["unload"])


@pytest.mark.charon
@pytest.mark.slow
def test_road_warrior_through_the_watcher(gwlab, tmp_path):
    """End to end: a real client gets in once the VIP is here; the VIP leaving ends its SA; SIGTERM on
    the VIP holder with handoff none unloads the connection but sends the client no DELETE (the
    agent's stop; the default handoff is test_sigterm_on_the_holder_hands_the_client_over)."""
    tmp_path.chmod(0o755)
    lb: lab.Lab = gwlab
    gw = lb.gateways["gw1"]
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    lab.client_load(lb.client, PSK)
    w = Watch(lb.ns("gw1"), watch_args(gw, lab.VIP, conf, tmp_path / "state", "--handoff", "none"), tmp_path)
    try:
        w.ready()
        lb.add_vip("gw1")
        wait_for(lambda: gw.conns() == ["rw"])
        assert lab.client_initiate(lb.client)
        assert lb.ping_server()
        lb.del_vip("gw1")
        wait_for(lambda: gw.conns() == [] and gw.sas() == [])  # VIP gone: SAs terminated locally
        lb.add_vip("gw1")
        wait_for(lambda: gw.conns() == ["rw"])
        lb.client.clear()  # the client never heard of the SA's end (no DELETE could leave)
        lab.client_load(lb.client, PSK)
        assert lab.client_initiate(lb.client)
        sa = client_sa(lb.client)
        assert sa and lb.ping_server()
        assert w.terminate() == 0
        assert gw.conns() == [] and "ike-client1" not in gw.shared()
        kept = client_sa(lb.client)
        assert kept and kept["uniqueid"] == sa["uniqueid"], "client was told to reconnect"
        assert [s["name"] for s in gw.sas()] == ["rw"]  # still carrying traffic until the VIP moves
        assert lb.ping_server()
    finally:
        w.close()
        lb.del_vip("gw1")
        lb.client.clear()
        gw.clear()


@pytest.mark.charon
def test_config_broken_while_running_is_retried_and_logged_once(env, watchers, tmp_path):
    c: lab.Charon = env["charon"]
    tmp_path.chmod(0o755)
    conf = tmp_path / "swanctl.conf"
    good = conn_conf({"one": VIP1})
    conf.write_text(good)
    w = Watch(c.netns, watch_args(c, VIP1, conf, env["state"]), env["dir"])
    watchers.append(w)
    w.ready()
    conf.write_text("connections { one { local_addrs = ")  # an editor's half-written file
    addr(c.netns, "add", f"{VIP1}/32")
    wait_for(lambda: "(retrying)" in w.log())
    time.sleep(3)  # several retries (0.1, 0.2, 0.4, 0.8, 1.6 s)
    assert loaded(env) == set()
    assert w.log().count("(retrying)") == 1  # logged once, not per retry
    conf.write_text(good)
    settled(env, {"one"}, timeout=10)
    assert "recovered" in w.log()
    assert w.terminate() == 0


@pytest.mark.charon
@pytest.mark.slow
def test_sigterm_on_the_holder_hands_the_client_over(gwlab, tmp_path):
    """keepalived's notify (or systemctl stop) before the VIP leaves: the daemon's stop hands the
    client over as the agent's does - drop rule, then REDIRECT to the VIP."""
    tmp_path.chmod(0o755)
    lb: lab.Lab = gwlab
    gw = lb.gateways["gw1"]
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
    lab.client_load(lb.client, PSK)
    w = Watch(lb.ns("gw1"), watch_args(gw, lab.VIP, conf, tmp_path / "state"), tmp_path)
    try:
        w.ready()
        lb.add_vip("gw1")
        wait_for(lambda: gw.conns() == ["rw"])
        assert lab.client_initiate(lb.client)
        sa = client_sa(lb.client)
        assert w.terminate() == 0
        assert "redirected 1 of 1 IKE_SA(s) to 192.0.2.100" in w.log(), w.log()
        rules = lab.in_ns(lb.ns("gw1"), "nft", "list", "table", "inet", "ipsec_vip").stdout
        assert f"ipsec-vip handoff {lab.VIP}" in rules
        # the client follows at once: a new IKE_SA to the VIP, whose IKE_SA_INIT this node drops
        wait_for(lambda: any(s["uniqueid"] != sa["uniqueid"] for s in lb.client.sas()))
    finally:
        w.close()
        lb.del_vip("gw1")
        lab.in_ns(lb.ns("gw1"), "nft", "delete", "table", "inet", "ipsec_vip", check=False)
        lb.client.clear()
        gw.clear()
