"""Hostile or careless input fed to the real commands (issue 20 items 3, 5 and 8): each is refused
with a clear error (exit 6 for a configuration problem, one reason) in bounded time and memory,
and nothing is written. Fast tier: no daemon (each command fails before it would talk to charon)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from lab import core as lab

VIP = "192.0.2.100"
MEMORY = 512 << 20  # address space allowed to each command (prlimit --as)
PASS_ON = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}  # the code under test, as pytest has it
LIMIT = ("prlimit", f"--as={MEMORY}", "--")


def agent(action: str, tmp: Path, env: dict[str, str] | None = None, **params: str) -> tuple[lab.Result, float]:
    """The OCF agent under a memory limit; -> (result, seconds)."""
    start = time.monotonic()
    r = lab.agent(action, {"vip": VIP, "vici_socket": f"unix://{tmp}/none.vici", **params},
                  rsctmp=str(tmp / "rsctmp"), timeout=20, wrap=LIMIT, **PASS_ON, **(env or {}))
    return r, time.monotonic() - start


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HA_RSCTMP": str(tmp / "rsctmp"), "LANG": "C.UTF-8",
           **PASS_ON}
    return subprocess.run([*LIMIT, sys.executable, "-m", "ipsec_vip.cli", *args], capture_output=True, text=True,
                          timeout=20, env=env)


def refused(r: lab.Result, *words: str) -> str:
    """Exit 6 with exactly one reason holding ``words``; returns it."""
    assert r.rc == 6, (r.rc, r.stderr)
    assert len(r.reasons) == 1, r.stderr
    assert all(w in r.reasons[0] for w in words), r.reasons
    assert "Traceback" not in r.stderr
    return r.reasons[0]


def nothing_written(tmp: Path) -> None:
    states = tmp / "rsctmp" / "ipsec-vip"
    assert not states.exists() or not [p for p in states.iterdir() if p.suffix == ".json"]


# --------------------------------------------------------------------------- item 8: the config file
def conn(extra: str = "") -> str:
    return (f"connections {{\n  rw {{\n    local_addrs = {VIP}\n    local {{ auth = pubkey\n{extra}\n    }}\n"
            "    remote { auth = psk }\n  }\n}\n")


def test_a_fifo_given_as_config_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "swanctl.conf"
    os.mkfifo(fifo)
    for action in ("validate-all", "start"):
        r, took = agent(action, tmp_path, config=str(fifo), start_without_vip="true")
        refused(r, str(fifo), "a FIFO, not a regular file")
        assert took < 10
    p = cli("up", "--vip", VIP, "--config", str(fifo), tmp=tmp_path)
    assert p.returncode == 6 and "a FIFO" in p.stderr
    nothing_written(tmp_path)


def test_a_certificate_that_never_ends_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn("      certs = /dev/zero"))
    r, took = agent("validate-all", tmp_path, config=str(conf))
    refused(r, "connections.rw.local.certs", "/dev/zero", "a character device")
    assert took < 10


def test_a_huge_certificate_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x509").mkdir()
    (tmp_path / "x509" / "big.pem").write_bytes(b"A" * (2 << 20))
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn("      certs = big.pem"))
    r, _ = agent("validate-all", tmp_path, config=str(conf))
    refused(r, "big.pem", "larger than 1 MiB")


def exponential(levels: int) -> str:
    """Each level references the one below twice: 2**levels sections from under 1 KB."""
    out = ["t0 { a = 1 }"]
    out += [f"t{i} {{ x : t{i - 1} {{ }} y : t{i - 1} {{ }} }}" for i in range(1, levels + 1)]
    return "\n".join([*out, f"connections {{ c : t{levels} {{ local_addrs = {VIP} }} }}", ""])


def test_exponential_section_references_are_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(exponential(25))
    assert conf.stat().st_size < 1300
    for action in ("validate-all", "start"):
        r, took = agent(action, tmp_path, config=str(conf), start_without_vip="true")
        refused(r, str(conf), "section references expand to too many sections")
        assert took < 10, f"{action} took {took:.1f}s"
    nothing_written(tmp_path)


def test_moderate_reference_use_still_loads(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(exponential(8))  # 256 sections: fine
    r, _ = agent("validate-all", tmp_path, config=str(conf))
    assert r.rc == 0, r.stderr


# --------------------------------------------------------------------------- item 3: addresses, names, quoting
HOSTILE_VIPS = ["fd00::64%x$(touch PWNED)", "fd00::64%eth0\n}\nconnections {", "fe80::1%lo", "192.0.2.100\n#",
                "fd00::64%x y", "192.0.2.100/24\nx", "192.0.2.1%00", "１９２.0.2.1"]


def test_a_zone_id_or_control_character_in_the_vip_is_refused_everywhere(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn())
    watch_dir = tmp_path / "watch"
    watch_dir.mkdir()
    for n, vip in enumerate(HOSTILE_VIPS):
        r, _ = agent("validate-all", tmp_path, vip=vip, config=str(conf))
        refused(r, "is not an IPv4 or IPv6 address")
        for command in ("up", "down", "status", "check"):
            p = cli(command, "--vip", vip, "--config", str(conf), "--vici-socket", f"unix://{tmp_path}/x", tmp=tmp_path)
            assert p.returncode == 6 and "is not an IPv4 or IPv6 address" in p.stderr, (command, vip, p.stderr)
        if "\n" in vip:
            continue  # a watch config holds one line per key
        (watch_dir / f"w{n}.conf").write_text(f"vip = {vip}\nconfig = {conf}\n")
        p = cli("watch", f"w{n}", "--watch-dir", str(watch_dir), "--state-dir", str(tmp_path / "run"), tmp=tmp_path)
        assert p.returncode == 6 and "is not an IPv4 or IPv6 address" in p.stderr, (vip, p.stderr)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    nothing_written(tmp_path)
    assert not (tmp_path / "run").exists()


def test_interface_dotdot_and_other_non_names_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn())
    for interface in ("..", ".", "eth0\nx", "a/b", "x$(id)", "et h0", "0123456789abcdef", "eth0%1"):
        for level in ("0", "10"):
            r, _ = agent("validate-all", tmp_path, {"OCF_CHECK_LEVEL": level}, config=str(conf), interface=interface)
            refused(r, "is not a valid interface name")
    r, _ = agent("validate-all", tmp_path, config=str(conf), interface="eth0.100")
    assert r.rc == 0, r.stderr


def inventory(tmp: Path, text: str) -> Path:
    (tmp / "mesh.psk").write_text("net " + "k" * 43 + "\n")
    (tmp / "mesh.psk").chmod(0o600)
    inv = tmp / "mesh.yaml"
    inv.write_text(text)
    return inv


MESH = """psk_file: mesh.psk
networks:
  net: {cidr: %(cidr)s}
nodes:
  a: {roles: [r], addresses: {net: %(a)s}}
  b: {roles: [r, s], addresses: {net: "fd00::2"}}
vips:
  net: {address: %(vip)s, holders: [r]}
"""
GOOD_MESH = {"cidr": "fd00::/64", "a": '"fd00::1"', "vip": '"fd00::64"'}


def test_mesh_render_refuses_zone_ids_and_control_characters_in_addresses_writing_nothing(tmp_path: Path) -> None:
    hostile = {"vip": ['"fd00::64%x$(touch PWNED)"', '"fd00::64%eth0"', '"fd00::64\\n}"'],
               "a": ['"fd00::1%x;id"', '"fd00::1\\nx"', "12345"],
               "cidr": ['"fd00::%x/64"', '"fd00::/64\\n"']}
    where = {"vip": "vips.net.address", "a": "nodes.a.addresses.net", "cidr": "networks.net.cidr"}
    for key, values in hostile.items():
        for value in values:
            inv = inventory(tmp_path, MESH % {**GOOD_MESH, key: value})
            out = tmp_path / "out"
            p = cli("mesh", "render", str(inv), "--node", "a", "--out", str(out), tmp=tmp_path)
            assert p.returncode == 6, (value, p.stderr)
            assert f"{inv}: {where[key]}:" in p.stderr and p.stdout == "", (value, p.stderr)
            assert not out.exists()
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_the_printed_pcs_commands_are_quoted_so_sourcing_them_runs_nothing(tmp_path: Path) -> None:
    """The inventory refuses hostile names and addresses; the quoting holds even if one got through
    (here built past the reader): sourced with a stub pcs, every word arrives whole, nothing runs."""
    import dataclasses

    from ipsec_vip.mesh import inventory as invmod
    from ipsec_vip.mesh import render

    inv = invmod.load(str(inventory(tmp_path, MESH % GOOD_MESH)))
    evil = "b$(touch PWNED);touch PWNED2 `touch PWNED3` *\ntouch PWNED4"
    quotes = "c'\"\\"
    nodes = {**inv.nodes, **{n: dataclasses.replace(inv.nodes["b"], name=n, roles=("s",)) for n in (evil, quotes)}}
    text = render.pcs_commands(dataclasses.replace(inv, nodes=nodes))
    script = tmp_path / "pcs.sh"
    script.write_text(text)
    p = subprocess.run(["bash", "-c", 'pcs() { printf "<%s>" "$@"; echo; }; source "$1"', "bash", str(script)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=10)
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith("PWNED")], p.stderr
    assert p.returncode == 0, p.stderr
    calls = p.stdout.splitlines()
    assert calls[0] == ("<resource><create><mesh-vip-net-tunnel><ocf:ipsec-vip:strongswan><vip=fd00::64>"
                        "<config=/etc/ipsec-vip/mesh-vips.conf><connections=meshvip-net>"
                        "<start_without_vip=true><--group><mesh-vip-net>")
    assert f"<avoids><{evil}><{quotes}>" in p.stdout


# --------------------------------------------------------------------------- item 5: YAML bombs, duplicates
def laughs(levels: int = 9) -> str:
    """The billion laughs, as a node's address (where the reader once turned it into a string)."""
    names = "abcdefghijklmnop"[:levels]
    parts = ["&a [" + ",".join(['"lol"'] * 9) + "]"]
    parts += [f"&{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip(names, names[1:])]
    return ("psk_file: mesh.psk\nnetworks: {net: {cidr: 192.0.2.0/24}}\nnodes:\n  a:\n    roles: [r]\n"
            "    addresses:\n      net: [" + ",\n        ".join(parts) + "]\n")


def render(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    inv = inventory(tmp, text)
    start = time.monotonic()
    p = cli("mesh", "render", str(inv), "--node", "a", "--out", str(tmp / "out"), tmp=tmp)
    assert time.monotonic() - start < 10
    assert p.stdout == "" and not (tmp / "out").exists(), "written or printed despite the error"
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    return p


def test_a_billion_laughs_inventory_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    text = laughs()
    assert len(text) < 600
    p = render(tmp_path, text)  # under prlimit --as=512M: an expansion would end in MemoryError, exit 1
    assert p.returncode == 6, p.stderr
    assert "mesh.yaml: line 8: nodes.a.addresses.net[1][0]: aliases (*name) are not accepted" in p.stderr
    p = cli("mesh", "psk", str(tmp_path / "mesh.yaml"), tmp=tmp_path)
    assert p.returncode == 6 and "aliases" in p.stderr


def test_deep_nesting_is_refused_naming_the_place(tmp_path: Path) -> None:
    for text in (MESH % GOOD_MESH + "skip_between: " + "[" * 100_000 + "]" * 100_000 + "\n",
                 '{"all": {"vars": {"ipsec_vip_mesh": ' + '{"x": ' * 5000 + "1" + "}" * 5000 + "}}}\n"):
        p = render(tmp_path, text)
        assert p.returncode == 6, p.stderr
        assert "nested deeper than 50 levels" in p.stderr and "mesh.yaml: line " in p.stderr, p.stderr


def test_a_key_given_twice_is_refused_naming_its_path(tmp_path: Path) -> None:
    """A repeated key replaced the first silently: here it dropped fail_closed: true."""
    cases = {
        "networks:\n  net:\n    cidr: fd00::/64\n    fail_closed: true\n    fail_closed: false\n":
            "line 6: networks.net.fail_closed: key given twice (first on line 5)",
        "networks:\n  net: {cidr: fd00::/64, encrypt: true, fail_closed: true}\n  net: {cidr: fd00::/64}\n":
            "line 4: networks.net: key given twice (first on line 3)",
        '{"networks": {"net": {"cidr": "fd00::/64"}}, "networks": {}}\n':
            "line 1: networks: key given twice (first on line 1)",
    }
    body = MESH % GOOD_MESH
    for networks, message in cases.items():
        text = body.replace("networks:\n  net: {cidr: fd00::/64}\n", networks) if not networks.startswith("{") \
            else networks
        p = render(tmp_path, text)
        assert p.returncode == 6 and message in p.stderr, (networks, p.stderr)


def test_an_inventory_that_is_a_fifo_or_too_big_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    p = cli("mesh", "render", str(fifo), "--node", "a", "--out", str(tmp_path / "out"), tmp=tmp_path)
    assert p.returncode == 6 and "a FIFO, not a regular file" in p.stderr
    big = tmp_path / "big.yaml"
    with big.open("w") as f:
        f.truncate(17 << 20)
    p = cli("mesh", "render", str(big), "--node", "a", "--out", str(tmp_path / "out"), tmp=tmp_path)
    assert p.returncode == 6 and "larger than 16 MiB" in p.stderr


# --------------------------------------------------------------------------- item 8: psk_file confined
def test_mesh_psk_never_creates_or_appends_outside_the_inventorys_tree(tmp_path: Path) -> None:
    """The rule: psk_file (relative to the inventory, or absolute) must lie in the inventory's
    directory or below it, symlinked directories resolved."""
    tree, outside = tmp_path / "inv", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    (tree / "keys").mkdir()
    (tree / "link").symlink_to(outside)
    (outside / "appended.psk").write_text("# someone else's file\n")
    body = MESH % GOOD_MESH
    for psk_file in ("../outside/new.psk", str(outside / "new.psk"), "link/new.psk", "keys/../../outside/new.psk",
                     "../outside/appended.psk", ".", "keys/../"):
        inv = tree / "mesh.yaml"
        inv.write_text(body.replace("psk_file: mesh.psk", f"psk_file: {json.dumps(psk_file)}"))
        for verb in ("psk", "render"):
            args = ["--node", "a", "--out", str(tmp_path / "out")] if verb == "render" else []
            p = cli("mesh", verb, str(inv), *args, tmp=tmp_path)
            assert p.returncode == 6, (psk_file, p.stderr)
            assert "psk_file: " in p.stderr and "outside" in p.stderr and p.stdout == "", p.stderr
    assert sorted(f.name for f in outside.iterdir()) == ["appended.psk"]
    assert (outside / "appended.psk").read_text() == "# someone else's file\n"
    for psk_file in ("keys/mesh.psk", str(tree / "abs.psk")):
        inv.write_text(body.replace("psk_file: mesh.psk", f"psk_file: {json.dumps(psk_file)}"))
        p = cli("mesh", "psk", str(inv), tmp=tmp_path)
        assert p.returncode == 0, p.stderr
    assert (tree / "keys" / "mesh.psk").exists() and (tree / "abs.psk").exists()


def test_mesh_render_makes_0755_and_0700_directories_whatever_the_umask(tmp_path: Path) -> None:
    inv = inventory(tmp_path, MESH % GOOD_MESH)
    out = tmp_path / "new" / "out"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **PASS_ON}
    p = subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable, "-m", "ipsec_vip.cli", "mesh",
                        "render", str(inv), "--node", "a", "--out", str(out)], capture_output=True, text=True,
                       timeout=20, env=env)
    assert p.returncode == 0, p.stderr
    modes = {str(d.relative_to(tmp_path)): d.stat().st_mode & 0o7777 for d in [tmp_path / "new", *out.rglob("*")]
             if d.is_dir()} | {"new/out": out.stat().st_mode & 0o7777}
    assert modes.pop("new/out/etc/swanctl/conf.d") == 0o700  # holds only the 0600 mesh file
    assert set(modes.values()) == {0o755}, modes
    files = {str(f.relative_to(out)): f.stat().st_mode & 0o7777 for f in out.rglob("*") if f.is_file()}
    assert files == {"etc/swanctl/conf.d/ipsec-vip-mesh.conf": 0o600, "etc/ipsec-vip/mesh-vips.conf": 0o600,
                     "etc/ipsec-vip/mesh.nft": 0o644, "etc/strongswan.d/ipsec-vip-mesh.conf": 0o644}


# --------------------------------------------------------------------------- item 8: the VICI socket, the log listener
SERVE_AS_NOBODY = r"""
import socket, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(8)
print("ready", flush=True)
log = open(sys.argv[2], "ab", buffering=0)
while True:
    c, _ = srv.accept()
    c.settimeout(5)
    try:
        while True:  # answer every request like an empty charon would: success, nothing loaded
            head = c.recv(4)
            if len(head) < 4:
                break
            n = int.from_bytes(head, "big")
            body = b""
            while len(body) < n:
                chunk = c.recv(n - len(body))
                if not chunk:
                    break
                body += chunk
            log.write(head + body)
            if body[:1] in (b"\x03", b"\x04"):  # (un)register: confirmed
                reply = b"\x05"
            elif body[2:2 + body[1]] == b"get-conns":
                reply = b"\x01\x04\x05conns\x06"
            elif body[2:2 + body[1]] == b"get-shared":
                reply = b"\x01\x04\x04keys\x06"
            elif body[2:2 + body[1]].startswith(b"get-") or body[2:2 + body[1]] == b"list-sas":
                reply = b"\x01"
            else:
                reply = b"\x01\x03\x07success\x00\x03yes"
            c.sendall(len(reply).to_bytes(4, "big") + reply)
    except OSError:
        pass
    c.close()
"""


@pytest.mark.root
def test_secrets_are_never_sent_to_a_vici_socket_served_by_another_user(tmp_path: Path) -> None:
    """A socket planted by an ordinary user (a world-writable directory, or a charon of theirs)
    answers like charon; start must refuse it before sending anything, let alone the PSK."""
    psk = "Pl4nt3dS0ck3tPsk-0123456789abcdefghij"
    d = Path(tempfile.mkdtemp(prefix="ipsec-vip-sock-"))
    try:
        os.chmod(d, 0o777)
        sock, log = d / "charon.vici", d / "received"
        server = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                   "/usr/bin/python3", "-c", SERVE_AS_NOBODY, str(sock), str(log)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            conf = tmp_path / "swanctl.conf"
            conf.write_text(conn() + f'secrets {{\n  ike-rw {{\n    secret = "{psk}"\n  }}\n}}\n')
            netns = lab.add_netns("sock")  # start runs nft: never in the host's namespace
            try:
                r = lab.agent("start", {"vip": VIP, "config": str(conf), "vici_socket": f"unix://{sock}",
                                        "start_without_vip": "true"}, netns=netns, rsctmp=str(tmp_path / "rsctmp"),
                              timeout=30, **PASS_ON)
            finally:
                lab.remove_netns(netns)
        finally:
            server.kill()
            server.wait()
        received = log.read_bytes() if log.exists() else b""
        assert psk.encode() not in received
        assert received == b"", "talked to a socket of another user's"
        assert r.rc == 1 and len(r.reasons) == 1, r.stderr
        assert "is served by uid 65534" in r.reasons[0] and "not root" in r.reasons[0]
        assert psk not in r.stdout + r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_redirect_log_listener_gives_up_in_time_on_a_peer_that_trickles(tmp_path: Path) -> None:
    """charon's log registration answered one byte a time, or with a 2 GiB length: the
    listener (stop's REDIRECT handoff) gives up within its timeout instead of hanging the stop."""
    from ipsec_vip.errors import ViciError
    from ipsec_vip.vici_session import EventListener
    from tests.vici_fakes import FakeServer, read_packet

    def trickle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError, EOFError):
            read_packet(conn)
            conn.sendall((1000).to_bytes(4, "big"))
            for _ in range(400):
                conn.sendall(b"\x05")
                time.sleep(0.05)

    def huge(conn: socket.socket) -> None:
        with contextlib.suppress(OSError, EOFError):
            read_packet(conn)
            conn.sendall((2 << 30).to_bytes(4, "big") + b"\x05" * 1000)
            time.sleep(20)

    for behave in (trickle, huge):
        server = FakeServer(tmp_path / f"{behave.__name__}.vici", behave)
        outcome: list[object] = []

        def listen(uri: str = server.uri, outcome: list[object] = outcome) -> None:
            try:
                EventListener(uri, ("log", "ike-updown"), 1.0, lambda _name, _event: None).close()
                outcome.append("listening")
            except ViciError as e:
                outcome.append(e)

        start = time.monotonic()
        t = threading.Thread(target=listen, daemon=True)
        t.start()
        t.join(10)
        server.close()
        assert not t.is_alive(), f"{behave.__name__}: the listener still waits"
        assert time.monotonic() - start < 3
        assert isinstance(outcome[0], ViciError), outcome


# --------------------------------------------------------------------------- item 8: the watch daemon's last stop
@pytest.mark.root
def test_the_watch_daemon_finishes_its_final_stop_through_more_signals(tmp_path: Path) -> None:
    """SIGTERM starts the final stop (unload); a second SIGTERM and a Ctrl-C (SIGINT) during it
    used to kill the daemon half way, leaving the connections loaded."""
    import signal

    from tests.vici_fakes import FakeCharon

    class SlowUnload(FakeCharon):
        def _answer(self, command: str, m: dict[str, object]) -> tuple[list[tuple[str, object]], dict[str, object]]:
            if command == "unload-conn":
                time.sleep(2)
            return super()._answer(command, m)  # type: ignore[arg-type]

    charon = SlowUnload(tmp_path / "charon.vici")
    conf = tmp_path / "swanctl.conf"
    conf.write_text(conn())
    netns = lab.add_netns("wsig")
    try:
        lab.in_ns(netns, lab.IP, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        lab.in_ns(netns, lab.IP, "link", "set", "d1", "up")
        lab.in_ns(netns, lab.IP, "addr", "add", f"{VIP}/24", "dev", "d0")
        lab.in_ns(netns, lab.IP, "link", "set", "d0", "up")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **PASS_ON}
        daemon = subprocess.Popen([lab.IP, "netns", "exec", netns, sys.executable, "-m", "ipsec_vip.cli", "watch",
                                   "--vip", VIP, "--config", str(conf), "--vici-socket", charon.uri,
                                   "--handoff", "none", "--state-dir", str(tmp_path / "run")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            end = time.monotonic() + 15
            while "rw" not in charon.loaded and time.monotonic() < end:
                time.sleep(0.05)
            assert "rw" in charon.loaded, "the daemon did not load the connection"
            daemon.send_signal(signal.SIGTERM)
            while not charon.sent("unload-conn") and time.monotonic() < end:
                time.sleep(0.02)
            assert charon.sent("unload-conn"), "no final stop"
            daemon.send_signal(signal.SIGTERM)  # during the final stop (unload takes 2 s)
            daemon.send_signal(signal.SIGINT)
            _, stderr = daemon.communicate(timeout=20)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    finally:
        lab.remove_netns(netns)
        charon.close()
    assert daemon.returncode == 0, stderr
    assert "unloaded 1 connections" in stderr and "finishing the final stop" not in stderr.split("unloaded")[-1]
    assert "rw" not in charon.loaded
