"""The packages on a booted Debian 12: systemd as PID 1 (systemd-nspawn), Debian's own
strongswan.service (charon-systemd), pacemaker.service and corosync.service, and the README
followed word for word: its "Install from packages" commands build and install the .debs (apt
alone), its "Without Pacemaker" config and commands run the watch unit, its pcs recipe creates
the resource. Then a purge leaves nothing of ours but the admin's config.

The booted root (minbase + systemd + the distribution's daemons) is cached beside the minbase
root (lab/debroot.py); the container runs with --private-network, so the VIP and the veth
pair the tests add exist only in its own network namespace. If the container does not boot on
this machine, every test here is skipped with the reason (console tail included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import core as lab
from lab import nspawn
from lab.debroot import booted_tarball, run, unpack
from tests import readme

pytestmark = [pytest.mark.packaging, pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
# What the cases need beside our packages, from Debian 12 (the container has no network: apt
# inside it finds every dependency of ours already installed, or fails saying what it lacks).


def _deb_depends() -> tuple[str, ...]:
    """The distribution packages ipsec-vip's .deb depends on (python3-vici is ours; alternatives
    are the list's business): the container has no network, so they must be in its root."""
    control = (ROOT / "packaging" / "deb" / "debian" / "control").read_text()
    stanza = control.split("\nPackage: ipsec-vip\n", 1)[1].split("\n\n", 1)[0]
    field = re.search(r"^Depends:(.*?)(?=^\S)", stanza + "\nX", re.S | re.M)
    names = [dep.split("(")[0].strip() for dep in (field.group(1) if field else "").split(",") if "|" not in dep]
    return tuple(n for n in names if n and not n.startswith("$") and n != "python3-vici")


PACKAGES = tuple(dict.fromkeys((
    "systemd", "systemd-sysv", "dbus",  # init
    "charon-systemd", "strongswan-swanctl", "libstrongswan-standard-plugins",  # strongswan.service
    "pacemaker", "pacemaker-cli-utils", "corosync", "pcs", "resource-agents",  # the cluster
    "man-db", "iproute2", "procps", "nftables", *_deb_depends(),
)))
DISABLED = ("pacemaker.service", "corosync.service", "pcsd.service", "pcsd-ruby.service")
VIP = "192.0.2.100"
LAN = ("192.0.2.11/24", "v0")  # the node's own address, on one end of a veth pair in the container
CLIENT_LINK = ("10.99.20.1", "10.99.20.2")  # the container's end of the client's link, and the client
EXAMPLE = "/usr/share/doc/ipsec-vip/examples/swanctl.conf"
# paths whose name says ipsec-vip or vici: what the purge must take away again
OURS = r"find / -xdev \( -name '*ipsec-vip*' -o -name '*ipsec_vip*' -o -name '*vici*' \) -print"


def wait_for(what: str, cond: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


class Booted:
    """The running container with our packages installed the README's way."""

    def __init__(self, c: nspawn.Container, baseline: set[str]) -> None:
        self.c = c
        self.baseline = baseline  # OURS before the install

    def loaded(self) -> dict[str, list[str]]:
        """What charon holds: connection names, pool names, shared-key owners (with a copy of the
        vici module under /root, so this works after the purge too)."""
        script = ("import json, vici\ns = vici.Session()\n"
                  "conns = [n for c in s.list_conns() for n in c]\n"
                  "pools = list(s.get_pools())\n"
                  "keys = [k.decode() for k in s.get_shared()['keys']]\n"
                  "print(json.dumps({'conns': conns, 'pools': pools, 'keys': keys}))\n")
        p = self.c.exec("python3", "-c", script, env={"PYTHONPATH": "/root/pylib"})
        result: dict[str, list[str]] = json.loads(p.stdout)
        return result

    def sas(self) -> list[dict[str, str]]:
        """charon's IKE_SAs: name, state, unique id."""
        script = ("import json, vici\ns = vici.Session()\n"
                  "print(json.dumps([{'name': n, 'state': b['state'].decode(), 'id': b['uniqueid'].decode()}"
                  " for sa in s.list_sas() for n, b in sa.items()]))\n")
        p = self.c.exec("python3", "-c", script, env={"PYTHONPATH": "/root/pylib"})
        result: list[dict[str, str]] = json.loads(p.stdout)
        return result

    def drop_rules(self) -> str:
        """The handoff's rules in the container's nftables (docs/handoff.md), as nft lists them."""
        return self.c.exec("nft", "list", "table", "inet", "ipsec_vip", check=False).stdout

    def journal(self, unit: str, since: str) -> str:
        return self.c.exec("journalctl", "-u", unit, "--since", since, "-o", "cat", "--no-pager").stdout

    def unit(self, name: str, *props: str) -> dict[str, str]:
        out = self.c.exec("systemctl", "show", name, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def booted() -> Iterator[Booted]:
    if os.geteuid() != 0:
        pytest.skip("booting a container needs root")
    if not shutil.which("systemd-nspawn"):
        pytest.skip("systemd-nspawn is not installed (Debian package systemd-container)")
    install = readme.debian_install()
    make = [c for c in install if c.startswith("make ")]
    apt = [c for c in install if not c.startswith("make ")]
    assert len(make) == 1 and all(c.startswith("apt ") for c in apt), f"unknown install commands: {install}"
    out = Path(tempfile.mkdtemp(prefix="ipsec-vip-pkg-"))
    path = nspawn.new_root()
    c = None
    try:
        t0 = time.monotonic()
        # the README's build, writing to a directory of ours instead of the checkout's dist/
        run([*make[0].split(), "-C", str(ROOT), "--no-print-directory", f"DIST={out}/dist",
             f"PKG_BUILD={out}/build"], timeout=900)
        t1 = time.monotonic()
        tar = booted_tarball(PACKAGES, DISABLED)
        t2 = time.monotonic()
        unpack(tar, path).release()  # the root (host's sources): no mounts, policy-rc.d removed
        shutil.copytree(out / "dist", path / "root/src/dist")  # not /tmp: nspawn mounts a tmpfs there
        # the README's apt commands unchanged, answered "yes" as an admin would
        (path / "root/pylib").mkdir()
        (path / "etc/apt/apt.conf.d/90ipsec-vip-test").write_text('APT::Get::Assume-Yes "true";\n')
        t3 = time.monotonic()
        try:
            c = nspawn.Container.boot(path)
        except nspawn.BootError as e:
            pytest.skip(f"the Debian 12 container does not boot here: {e}")
        t4 = time.monotonic()
        baseline = set(c.sh(OURS).stdout.split())
        for cmd in apt:
            c.exec("env", "DEBIAN_FRONTEND=noninteractive", "sh", "-c", cmd, cwd="/root/src", timeout=300)
        c.exec("cp", "-r", "/usr/lib/python3/dist-packages/vici", "/root/pylib/")  # the tests' VICI client
        c.exec("ip", "link", "add", LAN[1], "type", "veth", "peer", "name", "v1")
        c.exec("ip", "addr", "add", LAN[0], "dev", LAN[1])
        for link in (LAN[1], "v1"):
            c.exec("ip", "link", "set", link, "up")
        print(f"\nbooted: make deb {t1 - t0:.0f} s, booted root cache {t2 - t1:.0f} s, unpack {t3 - t2:.0f} s, "
              f"boot {t4 - t3:.1f} s, apt install {time.monotonic() - t4:.1f} s")
        yield Booted(c, baseline)
    finally:
        if c is not None:
            c.stop()
        nspawn.remove_root(path)
        shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------- install

def test_installed_by_the_readme_commands(booted):
    status = booted.c.exec("dpkg-query", "-W", "-f=${Package} ${Status}\n", "ipsec-vip", "python3-vici").stdout
    assert status.splitlines() == ["ipsec-vip install ok installed", "python3-vici install ok installed"]
    assert booted.c.exec("systemctl", "cat", "ipsec-vip-watch@.service").stdout.startswith(
        "# /lib/systemd/system/ipsec-vip-watch@.service")
    assert not booted.c.exec("systemctl", "list-unit-files", "ipsec-vip*", "--state=enabled",
                             "--no-legend", check=False).stdout.strip(), "the package enables nothing"


def test_debian_runs_charon_systemd_as_strongswan_service(booted):
    """Debian 12: charon-systemd is strongswan.service (swanctl), strongswan-starter is another
    package (the legacy ipsec.conf starter) that is not installed."""
    unit = booted.unit("strongswan.service", "ActiveState", "SubState", "ExecStart", "Names")
    assert (unit["ActiveState"], unit["SubState"]) == ("active", "running"), unit
    assert "/usr/sbin/charon-systemd" in unit["ExecStart"]
    assert "strongswan-swanctl.service" in unit["Names"]
    assert booted.c.exec("systemctl", "cat", "strongswan-starter.service", check=False).returncode != 0


# --------------------------------------------------------------------------- without Pacemaker

@pytest.fixture(scope="module")
def watch(booted) -> Iterator[str]:
    """The README's watch config and commands (NAME.conf as shown, after the swanctl.conf
    the README has the admin copy from the example)."""
    name, conf, cmds = readme.watch_setup()
    c = booted.c
    c.sh(f"install -d -m 700 /etc/ipsec-vip /etc/ipsec-vip/watch && "
         f"install -m 600 {EXAMPLE} /etc/ipsec-vip/swanctl.conf")
    (c.root / f"etc/ipsec-vip/watch/{name}.conf").write_text(conf)
    (c.root / f"etc/ipsec-vip/watch/{name}.conf").chmod(0o600)
    out = [c.sh(cmd, check=False) for cmd in cmds]
    assert out[0].returncode == 0, out[0].stderr
    for cmd, p in zip(cmds, out):
        print(f"# {cmd}\n{p.stdout}{p.stderr}")
    yield name
    c.exec("systemctl", "disable", "--now", f"ipsec-vip-watch@{name}", check=False)


def test_watch_unit_reaches_running_through_sd_notify(booted, watch):
    unit = booted.unit(f"ipsec-vip-watch@{watch}", "ActiveState", "SubState", "Type", "StatusText", "MainPID",
                       "UnitFileState")
    assert (unit["ActiveState"], unit["SubState"], unit["Type"]) == ("active", "running", "notify"), unit
    assert unit["StatusText"] == f"VIP {VIP} not held here, nothing loaded"  # only sd_notify sets it
    assert unit["UnitFileState"] == "enabled"
    comm = booted.c.exec("ps", "-o", "args=", "-p", unit["MainPID"]).stdout
    assert f"/usr/bin/ipsec-vip watch {watch}" in comm


def test_vip_arrives_and_leaves(booted, watch):
    assert booted.loaded() == {"conns": [], "pools": [], "keys": []}
    booted.c.exec("ip", "addr", "add", f"{VIP}/24", "dev", LAN[1])
    wait_for("connections loaded", lambda: booted.loaded()["conns"] == ["rw"])
    assert booted.loaded() == {"conns": ["rw"], "pools": ["rw-pool"], "keys": ["ike-client1"]}
    wait_for("status says loaded", lambda: booted.unit(f"ipsec-vip-watch@{watch}", "StatusText")["StatusText"]
             == f"VIP {VIP} held here, connections loaded")
    booted.c.exec("ip", "addr", "del", f"{VIP}/24", "dev", LAN[1])
    wait_for("connections unloaded", lambda: booted.loaded() == {"conns": [], "pools": [], "keys": []})
    booted.c.exec("ip", "addr", "add", f"{VIP}/24", "dev", LAN[1])
    wait_for("connections loaded again", lambda: booted.loaded()["conns"] == ["rw"])


def test_strongswan_restart_and_reload_are_survived(booted, watch):
    """restart: charon-systemd comes back empty and swanctl --load-all runs; reload:
    swanctl --load-all unloads what it did not load. Both end with our connections loaded."""
    booted.c.exec("ip", "addr", "replace", f"{VIP}/24", "dev", LAN[1])
    wait_for("connections loaded", lambda: booted.loaded()["conns"] == ["rw"])
    pid = booted.unit("strongswan.service", "MainPID")["MainPID"]
    booted.c.exec("systemctl", "restart", "strongswan")
    assert booted.unit("strongswan.service", "MainPID")["MainPID"] != pid
    wait_for("loaded after restart", lambda: booted.loaded()["conns"] == ["rw"])
    booted.c.exec("systemctl", "reload", "strongswan")
    wait_for("loaded after reload", lambda: booted.loaded() == {"conns": ["rw"], "pools": ["rw-pool"],
                                                                "keys": ["ike-client1"]})
    assert booted.unit(f"ipsec-vip-watch@{watch}", "ActiveState")["ActiveState"] == "active"


def test_journal_carries_the_daemon_messages(booted, watch):
    """Identifier ipsec-vip, and each line at its own priority (warnings are warnings)."""
    out = booted.c.exec("journalctl", "-u", f"ipsec-vip-watch@{watch}", "-o", "json", "--no-pager").stdout
    ours = [e for e in map(json.loads, out.splitlines()) if e.get("SYSLOG_IDENTIFIER") == "ipsec-vip"]
    messages = {e["MESSAGE"]: int(e["PRIORITY"]) for e in ours}
    assert messages.get(f"loaded 1 connections, 1 secrets, 1 pools for VIP {VIP}") == 6, messages
    restarted = [p for m, p in messages.items() if m.startswith("charon closed the VICI connection")]
    assert restarted == [4], messages  # strongswan restarted in the test before


def test_stop_leaves_nothing_loaded(booted, watch):
    booted.c.exec("ip", "addr", "replace", f"{VIP}/24", "dev", LAN[1])
    wait_for("connections loaded", lambda: booted.loaded()["conns"] == ["rw"])
    booted.c.exec("systemctl", "stop", f"ipsec-vip-watch@{watch}")
    unit = booted.unit(f"ipsec-vip-watch@{watch}", "ActiveState", "Result", "ExecMainStatus")
    assert (unit["ActiveState"], unit["Result"], unit["ExecMainStatus"]) == ("inactive", "success", "0"), unit
    assert booted.loaded() == {"conns": [], "pools": [], "keys": []}
    booted.c.exec("ip", "addr", "del", f"{VIP}/24", "dev", LAN[1])


def sweepers(c: nspawn.Container) -> list[str]:
    """PIDs of the handoff's sweeper processes in the container."""
    return c.exec("pgrep", "-f", r" -m ipsec_vip\.(handoff|sweeper) ", check=False).stdout.split()


@pytest.fixture
def client(booted) -> Iterator[lab.Charon]:
    """A stock strongSwan client (the lab's charon, on this host, strongSwan's defaults) in a
    namespace of its own, wired to the container by a veth pair; it reaches the VIP through it."""
    lab.clean_leftovers()
    ns = lab.add_netns("bootedclient")
    charon = None
    try:
        lab.run(lab.IP, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "c1",
                "netns", str(booted.c.pid1))
        booted.c.exec("ip", "addr", "add", f"{CLIENT_LINK[0]}/24", "dev", "c1")
        booted.c.exec("ip", "link", "set", "c1", "up")
        lab.run(lab.IP, "-n", ns, "addr", "add", f"{CLIENT_LINK[1]}/24", "dev", "eth0")
        lab.run(lab.IP, "-n", ns, "link", "set", "eth0", "up")
        lab.run(lab.IP, "-n", ns, "route", "add", f"{VIP}/32", "via", CLIENT_LINK[0])
        charon = lab.Charon.start("bootedclient", netns=ns)
        psk = re.search(r'secret = "([^"]+)"', (booted.c.root / EXAMPLE.lstrip("/")).read_text())
        assert psk, EXAMPLE
        lab.client_load(charon, psk[1], stock=True, identity="client1@example.com", vip=VIP)
        yield charon
    finally:
        if charon is not None:
            charon.stop()
        lab.remove_netns(ns)


def test_planned_stop_hands_the_client_off_and_the_sweeper_outlives_the_unit(booted, watch, client):
    """docs/handoff.md's planned move without Pacemaker: `systemctl stop ipsec-vip-watch@…` on the
    VIP holder puts the drop rule in place and REDIRECTs the client (both need CAP_NET_ADMIN and
    nft, which the unit must allow); the unit stops, its sweeper does not: once the VIP has left it
    terminates the redirected SA and removes the rule."""
    unit = f"ipsec-vip-watch@{watch}"
    c = booted.c
    c.exec("ip", "addr", "replace", f"{VIP}/24", "dev", LAN[1])
    c.exec("systemctl", "start", unit)
    wait_for("connections loaded", lambda: booted.loaded()["conns"] == ["rw"])
    lab.client_initiate(client)  # the IKE_SA is what a handoff redirects (the CHILD_SA may fail here)
    wait_for("the client's IKE_SA", lambda: [s["state"] for s in booted.sas() if s["name"] == "rw"] == ["ESTABLISHED"])
    since = c.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    earlier = set(sweepers(c))  # an earlier stop's may still wait for the VIP to leave
    c.exec("systemctl", "stop", unit)
    state = booted.unit(unit, "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    log = booted.journal(unit, since)
    print(log)
    assert f"handoff: redirected 1 of 1 IKE_SA(s) to {VIP}" in log, log
    assert f'comment "ipsec-vip handoff {VIP}"' in booted.drop_rules(), log
    assert "redirected" in client.log_tail(200).lower() or "REDIRECT" in client.log_tail(200)
    assert len(set(sweepers(c)) - earlier) == 1, ("the sweeper did not survive the unit's stop",
                                                  c.exec("ps", "-eo", "pid,args").stdout)
    c.exec("ip", "addr", "del", f"{VIP}/24", "dev", LAN[1])
    wait_for("the sweep: no SA, no rule", lambda: not booted.sas() and "handoff" not in booted.drop_rules(), 15)
    wait_for("the sweeper ended", lambda: not sweepers(c), 10)
    wait_for("the sweeper's line in the unit's journal", lambda: f"VIP {VIP} has left: terminated 1 IKE_SA(s) the "
             "stop left (nothing sent), drop rule removed" in booted.journal(unit, since), 10)
    assert booted.loaded() == {"conns": [], "pools": [], "keys": []}


def test_start_removes_a_drop_rule_an_earlier_down_left(booted, watch):
    """A handoff's rule left on this node (here: by `ipsec-vip down` on the VIP holder, whose VIP
    then stayed) is removed by the unit's start, so new clients get in again."""
    unit = f"ipsec-vip-watch@{watch}"
    c = booted.c
    c.exec("ip", "addr", "replace", f"{VIP}/24", "dev", LAN[1])
    c.exec("ipsec-vip", "up", "--vip", VIP)
    c.exec("ipsec-vip", "down", "--vip", VIP)
    assert f'comment "ipsec-vip handoff {VIP}"' in booted.drop_rules()
    for pid in sweepers(c):  # down's sweeper, which would remove the rule once the VIP left:
        c.exec("kill", pid)  # as if the node had rebooted
    c.exec("systemctl", "start", unit)
    wait_for("connections loaded", lambda: booted.loaded()["conns"] == ["rw"])
    assert "handoff" not in booted.drop_rules()
    c.exec("systemctl", "stop", unit)
    c.exec("ip", "addr", "del", f"{VIP}/24", "dev", LAN[1])
    wait_for("no rule, no sweeper", lambda: "handoff" not in booted.drop_rules() and not sweepers(c), 15)


def test_invalid_config_fails_once_without_restarts(booted, watch):
    conf = booted.c.root / "etc/ipsec-vip/watch/broken.conf"
    conf.write_text("vip = 192.0.2.300\nconfig = /etc/ipsec-vip/swanctl.conf\n")
    try:
        p = booted.c.exec("systemctl", "start", "ipsec-vip-watch@broken", check=False)
        assert p.returncode != 0
        unit = booted.unit("ipsec-vip-watch@broken", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert unit == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "6", "NRestarts": "0"}
        log = booted.c.exec("journalctl", "-u", "ipsec-vip-watch@broken", "-p", "err", "-o", "cat").stdout
        assert "192.0.2.300" in log, log
    finally:
        booted.c.exec("systemctl", "reset-failed", "ipsec-vip-watch@broken", check=False)
        conf.unlink()


def test_security_exposure(booted, watch):
    """systemd-analyze security: the score README records (lower is better, 10 = unprotected)."""
    p = booted.c.exec("systemd-analyze", "security", "--no-pager", f"ipsec-vip-watch@{watch}")
    print(p.stdout)
    score = float(re.search(r"Overall exposure level for .*: (\d+\.\d+)", p.stdout)[1])  # type: ignore[index]
    assert score <= 1.5, p.stdout


# --------------------------------------------------------------------------- Pacemaker

@pytest.fixture(scope="module")
def cluster(booted) -> Iterator[nspawn.Container]:
    """Debian's corosync.service (its default corosync.conf: one node, node1 on 127.0.0.1) and
    pacemaker.service; no fencing device in a one-node lab."""
    c = booted.c
    c.exec("systemctl", "start", "corosync", "pacemaker", timeout=120)
    wait_for("node1 online", lambda: "Online: [ node1 ]" in c.exec("crm_mon", "-1", check=False).stdout, 90)
    c.exec("pcs", "property", "set", "stonith-enabled=false")
    yield c
    c.exec("systemctl", "stop", "pacemaker", "corosync", timeout=120)


def test_readme_pcs_recipe_starts_the_agent_and_its_vips(booted, cluster):
    c = cluster
    c.sh(f"test -f /etc/ipsec-vip/swanctl.conf || install -D -m 600 {EXAMPLE} /etc/ipsec-vip/swanctl.conf")
    for cmd in readme.pcs_create():
        c.sh(cmd)
    try:
        wait_for("the agent and its VIPs started", lambda: re.search(
            r"vpn\s+\(ocf:ipsec-vip:strongswan\):\s+Started node1[\s\S]*vpn-vip\s+\(ocf:heartbeat:IPaddr2\):"
            r"\s+Started node1", c.exec("crm_mon", "-1").stdout), 90)
        assert booted.loaded() == {"conns": ["rw"], "pools": ["rw-pool"], "keys": ["ike-client1"]}
        assert f"inet {VIP}/24" in c.exec("ip", "-4", "addr", "show", "dev", LAN[1]).stdout
    finally:
        c.exec("pcs", "resource", "delete", "vpn-vips", "--force", check=False, timeout=120)
        c.exec("pcs", "resource", "delete", "vpn", "--force", check=False, timeout=120)
    wait_for("the resources are gone", lambda: "vpn" not in c.exec("crm_mon", "-1").stdout, 60)
    assert booted.loaded() == {"conns": [], "pools": [], "keys": []}


def test_broken_config_shows_the_exit_reason(cluster):
    c = cluster
    (c.root / "etc/ipsec-vip/broken.conf").write_text("connections {\n    rw {\n        local_addrs = 192.0.2.101\n")
    c.exec("pcs", "resource", "create", "broken", "ocf:ipsec-vip:strongswan", "vip=192.0.2.101",
           "config=/etc/ipsec-vip/broken.conf", "start_without_vip=true")
    try:
        wait_for("the failure reported", lambda: "Failed Resource Actions" in c.exec("crm_mon", "-1").stdout, 60)
        out = c.exec("crm_mon", "-1").stdout
        print(out)
        failed = out[out.index("Failed Resource Actions"):]
        # Pacemaker 2.1.5 shows the exit reason in parentheses after the result
        assert re.search(r"broken start on node1 returned 'not configured' \(/etc/ipsec-vip/broken\.conf:2: "
                         r"section 'rw' opened here is not closed\)", failed), failed
    finally:
        c.exec("pcs", "resource", "delete", "broken", "--force", check=False, timeout=120)
        (c.root / "etc/ipsec-vip/broken.conf").unlink()


def test_pcs_describe_and_man_page(booted):
    p = booted.c.exec("pcs", "resource", "describe", "ocf:ipsec-vip:strongswan")
    assert "ocf:ipsec-vip:strongswan" in p.stdout and "vip (required)" in p.stdout, p.stdout
    page = booted.c.exec("man", "ocf_ipsec-vip_strongswan", env={"MANWIDTH": "100"}).stdout
    assert "start_without_vip" in page and "vici_socket" in page


# --------------------------------------------------------------------------- upgrade, purge

def test_reinstall_restarts_running_watchers(booted, watch):
    """As after an upgrade: a running watcher is restarted on the package's new files; a stopped
    one (enabled or not) stays stopped."""
    c = booted.c
    unit = f"ipsec-vip-watch@{watch}"

    def reinstall() -> None:
        c.exec("env", "DEBIAN_FRONTEND=noninteractive", "sh", "-c", "apt install --reinstall ./dist/ipsec-vip_*.deb",
               cwd="/root/src", timeout=300)
    c.exec("systemctl", "stop", unit)
    reinstall()
    assert booted.unit(unit, "ActiveState", "UnitFileState") == {"ActiveState": "inactive",
                                                                 "UnitFileState": "enabled"}
    c.exec("systemctl", "start", unit)
    pid = booted.unit(unit, "MainPID")["MainPID"]
    reinstall()
    after = booted.unit(unit, "ActiveState", "MainPID")
    assert after["ActiveState"] == "active" and after["MainPID"] not in (pid, "0"), after


def test_purge_leaves_only_the_admins_config(booted, watch):
    """Last. Purged with a watcher running on the VIP holder: the watcher is stopped (our
    connections unloaded), and nothing of ours stays but /etc/ipsec-vip, which the admin wrote."""
    c = booted.c
    c.exec("ip", "addr", "replace", f"{VIP}/24", "dev", LAN[1])
    c.exec("systemctl", "enable", "--now", f"ipsec-vip-watch@{watch}")
    wait_for("connections loaded", lambda: booted.loaded()["conns"] == ["rw"])
    c.exec("env", "DEBIAN_FRONTEND=noninteractive", "apt", "purge", "ipsec-vip", "python3-vici", timeout=300)
    assert booted.unit(f"ipsec-vip-watch@{watch}", "ActiveState")["ActiveState"] == "inactive"
    assert not c.exec("pgrep", "-f", "ipsec-vip", check=False).stdout.strip(), c.exec("ps", "-eo", "pid,args").stdout
    assert booted.loaded() == {"conns": [], "pools": [], "keys": []}
    left = set(c.sh(OURS).stdout.split()) - booted.baseline
    assert sorted(p for p in left if not p.startswith(("/etc/ipsec-vip", "/root/"))) == [], left
    assert (c.root / "etc/ipsec-vip/swanctl.conf").exists()
