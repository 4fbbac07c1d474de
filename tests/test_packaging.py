"""The packages: `make deb` and `make rpm` build, the .deb installs with apt alone into a clean
Debian 12 root and works there (agent, crm_resource, command, man pages, unit), lintian has
nothing left but the explained tags, and the .deb, the .rpm and `make install` ship one file list.

The clean root is `debootstrap --variant=minbase bookworm` from the host's own Debian mirror,
cached as a tarball (with the downloaded .debs) under $IPSEC_VIP_TEST_CACHE, default
/var/cache/ipsec-vip-test: the first run builds it (about half a minute on a good mirror).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_vip import __version__
from lab.debroot import ENV, Chroot, base_tarball, remove_tree, run, unpack

ROOT = Path(__file__).resolve().parent.parent
AGENT = "/usr/lib/ocf/resource.d/ipsec-vip/strongswan"
EXAMPLE = "/usr/share/doc/ipsec-vip/examples/swanctl.conf"
DTD = "/usr/share/resource-agents/ra-api-1.dtd"
# Left by lintian on purpose; README "Install from packages" says why.
LINTIAN_ALLOWED = {
    "executable-in-usr-lib",  # the OCF standard puts agents in /usr/lib/ocf/resource.d
    # prerm lists the watch units and kills a handoff's sweeper left in a stopped one by name:
    # deb-systemd-invoke cannot list, and systemctl kill matches a pattern only against active units
    "maintainer-script-calls-systemctl",
}

pytestmark = [pytest.mark.packaging, pytest.mark.root, pytest.mark.slow]  # builds and chroots need root


# --------------------------------------------------------------------------- builds

class Built:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.deb = next(out.glob("dist/ipsec-vip_*_all.deb"))
        self.vici_deb = next(out.glob("dist/python3-vici_*_all.deb"))
        self.rpm = next(out.glob("dist/ipsec-vip-*.noarch.rpm"))
        self.lintian = (out / "build" / "lintian.txt").read_text()


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    out = Path(tempfile.mkdtemp(prefix="ipsec-vip-pkg-"))
    try:
        t0 = time.monotonic()
        run(["make", "-C", str(ROOT), "--no-print-directory", "deb", "rpm", f"DIST={out}/dist",
             f"PKG_BUILD={out}/build"], timeout=900)
        print(f"\nmake deb rpm: {time.monotonic() - t0:.0f} s")
        yield Built(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def deb_files(deb: Path) -> set[str]:
    lines = run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()
    return {line.split(None, 5)[5].removeprefix(".") for line in lines if not line.startswith("d")}


def rpm_files(rpm: Path) -> set[str]:
    lines = run(["rpm", "-qlvp", str(rpm)]).stdout.splitlines()
    return {line.split(None, 8)[8] for line in lines if not line.startswith("d")}


def normalise(paths: set[str]) -> set[str]:
    """Files as both families ship them: one unit dir and site dir, man and doc pages unzipped,
    without the distribution's own metadata (copyright, changelog, installer records)."""
    out = set()
    for path in paths:
        p = re.sub(r"^/lib/systemd/", "/usr/lib/systemd/", path)
        p = re.sub(r"^/usr/(local/)?lib/python3[.0-9]*/(dist|site)-packages/", "{sitelib}/", p).removesuffix(".gz")
        if (p in ("/usr/share/doc/ipsec-vip/copyright", "/usr/share/doc/ipsec-vip/changelog")
                or re.search(r"\.dist-info/(RECORD|INSTALLER)$", p) or "/__pycache__/" in p):
            continue
        out.add(p.replace("/usr/local/", "/usr/"))
    return out


def test_deb_and_rpm_ship_the_same_files(built):
    deb, rpm = normalise(deb_files(built.deb)), normalise(rpm_files(built.rpm))
    assert deb == rpm
    assert {AGENT, "/usr/bin/ipsec-vip", "/usr/lib/systemd/system/ipsec-vip-watch@.service", EXAMPLE,
            "/usr/share/man/man7/ocf_ipsec-vip_strongswan.7", "/usr/share/man/man8/ipsec-vip.8",
            "{sitelib}/ipsec_vip/agent.py"} <= deb
    assert not any(p.startswith("/etc/") for p in deb), "the example config must not be an active config"


def test_make_install_ships_what_the_packages_ship(built, tmp_path):
    run(["make", "-C", str(ROOT), "--no-print-directory", "install", f"DESTDIR={tmp_path}", "PREFIX=/usr/local"])
    files = {"/" + str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir()}
    assert normalise(files) == normalise(deb_files(built.deb))
    sitelib = next(tmp_path.glob("usr/local/lib/python3*/dist-packages"))
    for exe in (tmp_path / "usr/local/bin/ipsec-vip", tmp_path / AGENT.lstrip("/")):
        assert exe.read_text().startswith("#!/usr/bin/python3\n") and os.access(exe, os.X_OK)
    env = {**ENV, "PYTHONPATH": str(sitelib)}
    p = run([str(tmp_path / AGENT.lstrip("/")), "meta-data"], env=env)
    assert "<resource-agent" in p.stdout
    assert "up" in run([str(tmp_path / "usr/local/bin/ipsec-vip"), "--help"], env=env).stdout


def test_rpm_payload_runs(built, tmp_path):
    """The RPM's files (unpacked with rpm itself, no Fedora here) give a working agent and command."""
    run(["rpm", "--root", str(tmp_path), "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts", "-i",
         str(built.rpm)])
    sitelib = next(tmp_path.glob("usr/lib/python3*/site-packages"))
    env = {**ENV, "PYTHONPATH": str(sitelib)}
    assert "<resource-agent" in run([str(tmp_path / AGENT.lstrip("/")), "meta-data"], env=env).stdout
    assert run([str(tmp_path / "usr/bin/ipsec-vip"), "--version"], env=env).stdout.strip() == \
        f"ipsec-vip {__version__}"


def test_package_versions(built):
    assert built.deb.name == f"ipsec-vip_{__version__}_all.deb"
    assert built.rpm.name.startswith(f"ipsec-vip-{__version__}-1")
    fields = run(["dpkg-deb", "-f", str(built.deb), "Depends", "Recommends"]).stdout
    for dep in ("python3-vici", "python3-psutil", "python3-yaml", "strongswan-charon | charon-systemd",
                "strongswan-swanctl", "resource-agents", "pacemaker", "nftables"):
        assert dep in fields
    requires = run(["rpm", "-qRp", str(built.rpm)]).stdout
    assert {"python3-vici >= 5.8", "python3-psutil >= 5.9.4", "python3-pyyaml", "strongswan"} <= \
        set(requires.splitlines())
    assert {"nftables", "pacemaker", "resource-agents"} <= \
        set(run(["rpm", "-qp", "--recommends", str(built.rpm)]).stdout.splitlines())


def test_lintian_leaves_only_explained_tags(built):
    tags = re.findall(r"^[EWIPXO]: \S+: (\S+)", built.lintian, re.M)
    assert set(tags) <= LINTIAN_ALLOWED, built.lintian


# --------------------------------------------------------------------------- clean Debian 12 root

@pytest.fixture(scope="module")
def debroot(built) -> Iterator[Chroot]:
    """A clean Debian 12 with ipsec-vip installed by apt from the built .debs, plus test tools."""
    tar = base_tarball()
    path = Path(tempfile.mkdtemp(prefix="ipsec-vip-root-", dir="/var/tmp"))
    try:
        t0 = time.monotonic()
        root = unpack(tar, path)
        for deb in (built.deb, built.vici_deb):
            shutil.copy(deb, path / "tmp")
        root.run("apt-get", "-q", "update", timeout=300)
        root.apt("install", f"/tmp/{built.deb.name}", f"/tmp/{built.vici_deb.name}")
        t1 = time.monotonic()
        root.apt("install", "pacemaker-cli-utils", "resource-agents", "libxml2-utils", "man-db")
        print(f"\nclean root: ipsec-vip installed in {t1 - t0:.0f} s, test tools in {time.monotonic() - t1:.0f} s")
        yield root
        root.apt("autoclean")  # drop cached .debs the mirror no longer has
    finally:
        remove_tree(path)


def test_installed_with_debian_libraries_only(debroot):
    p = debroot.run("python3", "-c", "import ipsec_vip, vici, psutil; "
                    "print(ipsec_vip.__file__, vici.__file__, psutil.__version__)")
    lib, vici, psutil = p.stdout.split()
    assert lib.startswith("/usr/lib/python3/dist-packages/ipsec_vip/")
    assert vici.startswith("/usr/lib/python3/dist-packages/vici/")
    assert psutil == "5.9.4"
    versions = debroot.run("dpkg-query", "-W", "python3-psutil").stdout
    assert re.search(r"^python3-psutil\t5\.9\.4-", versions, re.M), versions  # Debian 12's
    assert "install ok installed" in debroot.run("dpkg-query", "-W", "-f=${Status}", "strongswan-swanctl").stdout
    assert not list(debroot.path.glob("usr/local/lib/python3*/dist-packages/*")), "nothing pip-installed"
    assert not (debroot.path / "etc/ipsec-vip").exists(), "the package installs no active config"


def test_agent_meta_data_is_valid_as_any_user(debroot):
    p = debroot.run(AGENT, "meta-data", user="nobody:nogroup", env={"OCF_ROOT": "/usr/lib/ocf"})
    (debroot.path / "tmp/meta.xml").write_text(p.stdout)
    debroot.run("xmllint", "--noout", "--dtdvalid", DTD, "/tmp/meta.xml")
    assert debroot.run(AGENT, "usage", check=False).returncode == 0
    assert debroot.run(AGENT, "frobnicate", check=False).returncode == 3


def test_agent_validate_all(debroot):
    env = {"OCF_ROOT": "/usr/lib/ocf", "OCF_RESKEY_vip": "192.0.2.100", "OCF_RESKEY_config": EXAMPLE}
    assert debroot.run(AGENT, "validate-all", env=env, check=False).returncode == 0
    bad = debroot.run(AGENT, "validate-all", env={**env, "OCF_RESKEY_vip": "192.0.2.300"}, check=False)
    assert bad.returncode == 6 and bad.stderr.count("ocf-exit-reason:") == 1
    unknown = debroot.run(AGENT, "validate-all", env={**env, "OCF_RESKEY_connections": "nosuch"}, check=False)
    assert unknown.returncode == 6 and "nosuch" in unknown.stderr


@pytest.mark.charon
def test_ocf_tester_passes_with_the_installed_agent_and_the_example_config(debroot, charon):
    """ocf-tester of the root's resource-agents runs the root's agent in charon's namespace
    (a real charon, host-built lab), loading the shipped example config unchanged."""
    sock = debroot.path / "run/lab-charon"
    sock.mkdir()
    run(["mount", "--bind", str(Path(charon.vici_path).parent), str(sock)])
    conf = debroot.path / "etc/ipsec-vip/swanctl.conf"
    conf.parent.mkdir(mode=0o700)
    shutil.copy(debroot.path / EXAMPLE.lstrip("/"), conf)
    conf.chmod(0o600)
    run(["ip", "-n", charon.netns, "link", "set", "lo", "up"])
    run(["ip", "-n", charon.netns, "addr", "add", "192.0.2.100/32", "dev", "lo"])
    try:
        p = run(["ip", "netns", "exec", charon.netns, "chroot", str(debroot.path), "ocf-tester", "-n", "pkgtest",
                 "-o", "vip=192.0.2.100", "-o", "vici_socket=unix:///run/lab-charon/charon.vici", AGENT],
                env={**ENV, "OCF_ROOT": "/usr/lib/ocf"}, check=False, timeout=180)
        out = p.stdout + p.stderr
        assert p.returncode == 0 and "passed all tests" in out, out
        assert [line for line in out.splitlines() if line.startswith("* ") and "(optional)" not in line] == [], out
        assert charon.conns() == [], "stop left connections loaded"
    finally:
        run(["ip", "-n", charon.netns, "addr", "del", "192.0.2.100/32", "dev", "lo"], check=False)
        run(["umount", str(sock)], check=False)


def test_crm_resource_validates_through_the_installed_agent(debroot):
    base = ["crm_resource", "--validate", "--class", "ocf", "--provider", "ipsec-vip", "--agent", "strongswan",
            "--option", f"config={EXAMPLE}"]
    good = debroot.run(*base, "--option", "vip=192.0.2.100", check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = debroot.run(*base, "--option", "vip=not-an-address", check=False)
    assert bad.returncode != 0 and "not-an-address" in bad.stdout + bad.stderr


def test_command_runs(debroot):
    p = debroot.run("ipsec-vip", "--help")
    assert "up" in p.stdout and "down" in p.stdout
    assert debroot.run("ipsec-vip", "--version").stdout.strip() == f"ipsec-vip {__version__}"
    # no charon in this root: `up` fails cleanly with the agent's code, no traceback
    p = debroot.run("ipsec-vip", "up", "--vip", "192.0.2.100", "--config", EXAMPLE, "--timeout", "5", check=False)
    assert p.returncode in (1, 5) and "Traceback" not in p.stderr


def test_man_pages_are_found_and_render(debroot):
    assert debroot.run("man", "-w", "ocf_ipsec-vip_strongswan").stdout.strip() == \
        "/usr/share/man/man7/ocf_ipsec-vip_strongswan.7.gz"
    assert debroot.run("man", "-w", "8", "ipsec-vip").stdout.strip() == "/usr/share/man/man8/ipsec-vip.8.gz"
    page = debroot.run("man", "7", "ocf_ipsec-vip_strongswan", env={"MANWIDTH": "120"}).stdout
    assert "vici_socket" in page and "start_without_vip" in page
    assert "--vip" in debroot.run("man", "8", "ipsec-vip", env={"MANWIDTH": "120"}).stdout


def test_unit_file_in_place(debroot):
    unit = (debroot.path / "lib/systemd/system/ipsec-vip-watch@.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) .*\bwatch\b", unit, re.M)
    assert exec_start and (debroot.path / exec_start[1].lstrip("/")).is_file()
    assert not list(debroot.path.glob("etc/systemd/system/*.wants/ipsec-vip*")), "a template is never enabled"


def test_purge_removes_everything(debroot):
    """Last: removes the package (py3compile's bytecode included)."""
    debroot.apt("purge", "ipsec-vip")
    left = [p for p in (AGENT, "/usr/bin/ipsec-vip", "/usr/lib/python3/dist-packages/ipsec_vip",
                        "/lib/systemd/system/ipsec-vip-watch@.service") if (debroot.path / p.lstrip("/")).exists()]
    assert not left
