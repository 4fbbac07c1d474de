"""`ipsec-vip mesh` in a lab of real charons (lab/mesh.py): what is encrypted is only IKE/ESP
on the wire, what is left in clear is clear, the VIP's tunnels follow the VIP by themselves, and
`mesh check`/`mesh load` behave. The tests run in order on one lab."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator

import pytest
import vici

from lab import core as lab
from lab.mesh import MARKER, NODES, TO_VIP, VIP, VIP_CONN, MeshLab, addr, cli

pytestmark = [pytest.mark.root, pytest.mark.charon, pytest.mark.slow]

EVIDENCE: list[str] = []
CLEAR_ONLY = "ip and not (udp port 500 or udp port 4500 or esp or ah)"


@pytest.fixture(scope="module")
def mesh() -> Iterator[MeshLab]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the mesh lab needs root; CI must run it")
        pytest.skip("needs root")
    m = MeshLab.build()
    try:
        m.take_vip("controller-0")
        yield m
    finally:
        m.destroy()
        if EVIDENCE:
            print("\nmesh lab evidence:\n  " + "\n  ".join(EVIDENCE))


def everyone(m: MeshLab) -> dict[str, set[str]]:
    return {n: set(m.expected(n)) - ({TO_VIP} if n == m.holder else set()) for n in NODES}


def to_vip_sas(m: MeshLab, node: str) -> set[str]:
    """Unique ids of the node's established tunnels to the VIP with an installed CHILD_SA."""
    return {sa["uniqueid"] for sa in m.charons[node].sas() if sa["name"] == TO_VIP and sa.get("state") == "ESTABLISHED"
            and any(c.get("state") == "INSTALLED" for c in (sa.get("child-sas") or {}).values())}


def probe_all(m: MeshLab) -> dict[tuple[str, str, str], bool]:
    """A marked ping between every pair of nodes on every shared network, and from every node to the VIP."""
    out = {}
    for a, b in itertools.permutations(NODES, 2):
        for net in NODES[a][2]:
            if net in NODES[b][2]:
                out[(a, b, net)] = m.ping(a, addr(b, net), count=1)
    for a in NODES:
        if a != m.holder:
            out[(a, "VIP", "internal_api")] = m.ping(a, VIP, count=1)
    return out


def test_bootstrap_brings_every_tunnel_up(mesh: MeshLab) -> None:
    """Loaded before the VIP existed, the compute nodes' tunnels to the VIP came up by themselves."""
    mesh.wait_up(everyone(mesh))
    assert mesh.up("compute-0") >= {TO_VIP, "mesh-internal_api-node-controller-0", "mesh-storage-node-controller-1"}
    assert "mesh-internal_api-node-compute-1" not in mesh.expected("compute-0")  # skip_between
    assert VIP_CONN in mesh.charons["controller-0"].conns()
    assert TO_VIP not in mesh.up("controller-0")  # never a tunnel to its own VIP
    for node in NODES:  # one IKE_SA per tunnel although both ends start them
        names = [sa["name"] for sa in mesh.charons[node].sas() if sa["name"].startswith("mesh-")]
        assert len(names) == len(set(names)), (node, names)


def test_capture_encrypted_networks_carry_only_ike_esp(mesh: MeshLab) -> None:
    mesh.wait_up(everyone(mesh))
    with mesh.capture() as pcap:
        results = probe_all(mesh)
    assert all(results.values()), [k for k, ok in results.items() if not ok]
    skip = f"host {addr('compute-0', 'internal_api')} and host {addr('compute-1', 'internal_api')}"
    api_clear = pcap["internal_api"].text(f"{CLEAR_ONLY} and not ({skip})")
    assert api_clear == "", api_clear[:2000]
    assert MARKER not in pcap["internal_api"].text(f"not ({skip})")
    assert MARKER in pcap["internal_api"].text(skip)  # the skip_between pair: clear
    assert pcap["internal_api"].count(f"{skip} and (esp or udp port 4500)") == 0
    assert pcap["storage"].text(CLEAR_ONLY) == ""
    assert MARKER not in pcap["storage"].text()
    assert MARKER in pcap["tenant"].text()  # encrypt: false
    assert pcap["tenant"].count("esp or udp port 4500") == 0
    esp = {net: pcap[net].count("udp port 4500 or esp") for net in pcap}
    assert esp["internal_api"] >= 2 * 10 and esp["storage"] >= 2 * 6  # the probes did cross, encrypted
    EVIDENCE.append(f"probes: {len(results)} marked pings, all answered; packets on the wire: "
                    + ", ".join(f"{net}: {pcap[net].count('ip')} IP, {esp[net]} ESP-in-UDP/ESP, "
                                f"{pcap[net].text().count(MARKER)} with the marker" for net in pcap))
    EVIDENCE.append(f"internal_api: clear packets outside the skip_between pair: 0; compute-0<->compute-1: "
                    f"{pcap['internal_api'].count(skip + ' and icmp')} clear ICMP")


def test_mesh_check_reports_drift_and_nothing_after_render_and_reload(mesh: MeshLab) -> None:
    node = "compute-0"
    args = ("mesh", "check", mesh.inv, "--node", node, "--root", str(mesh.root(node)),
            "--vici-socket", mesh.charons[node].uri)
    ok = cli(*args, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    conf = mesh.root(node) / "etc/swanctl/conf.d/ipsec-vip-mesh.conf"
    conf.write_text(conf.read_text().replace("dpd_delay = 10s", "dpd_delay = 30s", 1))
    with mesh.charons[node].vici() as s:
        s.unload_conn({"name": "mesh-storage-node-controller-1"})
    drift = cli(*args, check=False)
    assert drift.returncode == 1
    assert f"{conf}: differs from the rendered file" in drift.stdout
    assert "connection mesh-storage-node-controller-1: not loaded in charon" in drift.stdout
    mesh.render(node)
    mesh.load_all(node)
    again = cli(*args, check=False)
    assert again.returncode == 0, again.stdout
    EVIDENCE.append("mesh check: " + " | ".join(drift.stdout.strip().splitlines()))


def test_reload_on_the_holder_keeps_the_agents_connections(mesh: MeshLab) -> None:
    holder = mesh.holder
    assert holder is not None
    c = mesh.charons[holder]
    mesh.wait_up(everyone(mesh))
    before = {sa["uniqueid"] for sa in c.sas() if sa["name"] == VIP_CONN}
    assert before, "no client connected to the VIP"
    out = cli("mesh", "load", "--root", str(mesh.root(holder)), "--vici-socket", c.uri, netns=mesh.ns(holder))
    assert VIP_CONN in c.conns(), out.stdout
    assert {sa["uniqueid"] for sa in c.sas() if sa["name"] == VIP_CONN} == before
    assert "initiated 0" in out.stdout  # not its own tunnel to the VIP it holds
    assert mesh.agent(holder, "monitor", OCF_RESKEY_CRM_meta_interval="10000").rc == 0
    # the pitfall it avoids: the distribution's reload drops what the agent loaded
    mesh.load_all(holder)
    assert VIP_CONN not in c.conns()
    assert mesh.agent(holder, "monitor", OCF_RESKEY_CRM_meta_interval="10000").rc == 1
    r = mesh.agent(holder, "stop")  # Pacemaker's recovery: stop, start (the VIP stays here)
    assert r.rc == 0, r.stderr
    assert mesh.agent(holder, "start").rc == 0
    assert VIP_CONN in c.conns()


SKIP = f"host {addr('compute-0', 'internal_api')} and host {addr('compute-1', 'internal_api')}"  # skip_between


def moved(mesh: MeshLab, new: str, move: Callable[[], None], path: str) -> None:
    """Run ``move`` (the VIP from its holder to ``new``) while the old holder pings the VIP without
    pause and tcpdump listens on every bridge port. Then every node's tunnel to the VIP, the old
    holder's included, comes back by itself (nothing re-initiated by the harness), every node's ping
    to the VIP is answered, and at no moment did a clear packet cross internal_api between mesh
    addresses: the old holder's traffic to the VIP was held until its tunnel was up, then ESP."""
    old = mesh.holder
    assert old is not None and old != new
    before = {n: to_vip_sas(mesh, n) for n in NODES if n not in (old, new)}
    start = time.monotonic()
    with mesh.capture() as pcap, mesh.pinging(old, VIP):
        move()
        assert mesh.holder == new
        mesh.wait_up(everyone(mesh), timeout=30)
        took = time.monotonic() - start
        deadline = time.monotonic() + 30  # the others' tunnels are new ones, to the new holder
        while any(not (to_vip_sas(mesh, n) - before[n]) or (to_vip_sas(mesh, n) & before[n]) for n in before):
            assert time.monotonic() < deadline, {n: (before[n], to_vip_sas(mesh, n)) for n in before}
            time.sleep(0.1)
        results = {a: mesh.ping(a, VIP) for a in NODES if a != new}
    assert all(results.values()), results
    assert TO_VIP in mesh.up(old) and TO_VIP not in mesh.up(new)
    assert not [sa for sa in mesh.charons[new].sas()
                if sa["name"] == TO_VIP and sa.get("remote-host") in (VIP, addr(new, "internal_api"))]
    clear = pcap["internal_api"].text(f"{CLEAR_ONLY} and not ({SKIP})")
    assert clear == "", clear[:2000]
    assert MARKER not in pcap["internal_api"].text(f"not ({SKIP})")
    src = addr(old, "internal_api")
    esp = pcap["internal_api"].count(f"src {src} and dst {VIP} and (udp port 4500 or esp)")
    assert esp >= 2 * 2, esp  # the old holder's pings did reach the VIP, encrypted (each seen on two ports)
    EVIDENCE.append(f"VIP moved {path} from {old} to {new}: every node's tunnel to it up again by itself "
                    f"{took:.1f}s after the move began; {old} pinged the VIP every 0.1 s throughout: "
                    f"{pcap['internal_api'].count(f'src {src} and dst {VIP}')} packets from it to the VIP on the "
                    f"wire, {esp} ESP-in-UDP, 0 clear; all {len(results)} nodes' pings answered; clear packets "
                    "between mesh addresses on internal_api: 0")


def test_vip_moved_by_pacemaker_leaves_no_node_in_clear(mesh: MeshLab) -> None:
    """The printed pcs recipe's order (the VIP goes, then the agent stops; the agent starts, then the
    VIP comes), without fallback_connections: mesh-vips.conf names the node's own tunnel."""
    mesh.wait_up(everyone(mesh))

    def move() -> None:
        mesh.release_vip()
        mesh.take_vip("controller-1")

    moved(mesh, "controller-1", move, "by the Pacemaker group's stop and start")


def test_vip_moved_by_hand_leaves_no_node_in_clear(mesh: MeshLab) -> None:
    """`ipsec-vip up`/`down` with the rendered mesh-vips.conf and no fallback option (the path that
    left the old holder's traffic to the VIP in clear), in both orders: down while the VIP is still
    here (a handoff; the sweeper starts the old holder's tunnel once the VIP has gone), and the VIP
    gone first."""
    mesh.wait_up(everyone(mesh))
    mesh.release_vip()  # from the agent to the admin's hands
    mesh.by_hand("controller-0", "up")
    mesh.add_vip("controller-0")
    mesh.wait_up(everyone(mesh))

    def down_first() -> None:
        mesh.by_hand("controller-1", "up")
        mesh.by_hand("controller-0", "down")
        mesh.del_vip()
        mesh.add_vip("controller-1")

    def vip_first() -> None:
        mesh.by_hand("controller-0", "up")
        mesh.del_vip()
        mesh.by_hand("controller-1", "down")
        mesh.add_vip("controller-0")

    moved(mesh, "controller-1", down_first, "by hand (down, then the VIP)")
    moved(mesh, "controller-0", vip_first, "by hand (the VIP, then down)")
    mesh.del_vip()  # back to the agent
    mesh.by_hand("controller-0", "down")
    mesh.take_vip("controller-0")
    mesh.wait_up(everyone(mesh))


def test_vip_moved_under_ipsec_vip_watch_leaves_no_node_in_clear(mesh: MeshLab) -> None:
    """`ipsec-vip watch` (what ipsec-vip-watch@ runs) on both controllers with mesh-vips.conf and
    start_without_vip (docs/mesh.md), the VIP moved as keepalived moves it (gone here, then there)
    and nothing else."""
    mesh.wait_up(everyone(mesh))
    mesh.release_vip()
    with mesh.watching("controller-0", "controller-1"):
        mesh.add_vip("controller-1")
        mesh.wait_up(everyone(mesh))

        def move() -> None:
            mesh.del_vip()
            mesh.add_vip("controller-0")

        moved(mesh, "controller-0", move, "under ipsec-vip watch")
        mesh.del_vip()  # back to the agent: the watchers' stop (SIGTERM) unloads where no VIP is
    assert VIP_CONN not in mesh.charons["controller-0"].conns()
    mesh.take_vip("controller-0")
    mesh.wait_up(everyone(mesh))


def test_tunnel_refused_with_no_proposal_chosen_is_retried_by_mesh_load(mesh: MeshLab) -> None:
    """A holder without its responder (here: swanctl --load-all dropped the agent's connection) answers
    a client's IKE_SA_INIT with NO_PROPOSAL_CHOSEN, and charon never retries that; `mesh load` (run
    by hand or from a timer) initiates every mesh tunnel without an IKE_SA."""
    holder = mesh.holder
    assert holder is not None
    mesh.wait_up(everyone(mesh))
    mesh.load_all(holder)
    assert VIP_CONN not in mesh.charons[holder].conns()
    client = mesh.charons["compute-1"]
    with client.vici() as s:
        ids = [sa["uniqueid"] for sa in mesh.charons["compute-1"].sas() if sa["name"] == TO_VIP]
        for ike_id in ids:
            list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
        with pytest.raises(vici.exception.CommandException):
            list(s.initiate({"child": TO_VIP, "ike": TO_VIP, "timeout": "5000", "init-limits": "no"}))
    assert "received NO_PROPOSAL_CHOSEN notify error" in client.log_tail(200)
    assert mesh.agent(holder, "stop").rc == 0 and mesh.agent(holder, "start").rc == 0  # Pacemaker's recovery
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # charon alone: no new attempt
        assert not [sa for sa in client.sas() if sa["name"] == TO_VIP]
        time.sleep(0.2)
    out = cli("mesh", "load", "--root", str(mesh.root("compute-1")), "--vici-socket", client.uri,
              netns=mesh.ns("compute-1")).stdout
    assert f"initiated 1 that had no IKE_SA: {TO_VIP}" in out, out
    mesh.wait_up({"compute-1": {TO_VIP}}, timeout=20)
    assert mesh.ping("compute-1", VIP)
    EVIDENCE.append("NO_PROPOSAL_CHOSEN from a holder without its responder: no retry by charon in 3 s; "
                    "`mesh load` initiated the tunnel and it came up")


def test_fail_closed_trap_holds_traffic_while_no_sa_is_up(mesh: MeshLab) -> None:
    """charon running, IKE to controller-0 blocked and the SA gone: the trap policy alone (our nft
    table removed) keeps compute-1's internal_api traffic to controller-0 off the wire."""
    mesh.wait_up(everyone(mesh))
    ns, peer = mesh.ns("compute-1"), addr("controller-0", "internal_api")
    lab.in_ns(ns, "nft", "delete", "table", "inet", "ipsec_vip_mesh")
    block = mesh.work / "blockike.nft"
    block.write_text(f"table inet blockike {{\n chain o {{\n  type filter hook output priority 0;\n"
                     f"  ip daddr {peer} udp dport {{ 500, 4500 }} drop\n }}\n}}\n")
    lab.in_ns(ns, "nft", "-f", str(block))
    try:
        ids = [sa["uniqueid"] for sa in mesh.charons["compute-1"].sas()
               if sa["name"] == "mesh-internal_api-node-controller-0"]
        with mesh.charons["compute-1"].vici() as s:
            for ike_id in ids:
                list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
        assert "mesh-internal_api-node-controller-0" not in mesh.up("compute-1")
        with mesh.capture() as pcap:
            assert not mesh.ping("compute-1", peer, count=1)
        assert pcap["internal_api"].count(f"src {addr('compute-1', 'internal_api')} and icmp") == 0
        assert MARKER not in pcap["internal_api"].text()
    finally:
        lab.in_ns(ns, "nft", "delete", "table", "inet", "blockike", check=False)
        lab.in_ns(ns, "nft", "-f", str(mesh.root("compute-1") / "etc/ipsec-vip/mesh.nft"))
    mesh.wait_up(everyone(mesh))  # the trap|start connection comes back by itself (keyingtries = 0)
    EVIDENCE.append("fail_closed, charon up but no SA (IKE blocked, nft guard removed): the trap policy held "
                    "compute-1's ping to controller-0, 0 ICMP on the wire; the tunnel returned once IKE passed")


def test_fail_closed_network_never_leaves_in_clear_without_charon(mesh: MeshLab) -> None:
    """With compute-0's charon gone (its routes too), nothing from it to internal_api members leaves
    (the nft guard of fail_closed); on storage, not fail_closed, it leaves in clear."""
    mesh.wait_up(everyone(mesh))
    mesh.charons["compute-0"].kill()
    lab.run(lab.IP, "-n", mesh.ns("compute-0"), "route", "flush", "table", "220", check=False)
    src = addr("compute-0", "internal_api")
    with mesh.capture() as pcap:
        assert not mesh.ping("compute-0", addr("controller-0", "internal_api"), count=1)
        assert not mesh.ping("compute-0", VIP, count=1)
        mesh.ping("compute-0", addr("controller-0", "storage"), count=1)  # the reply goes to the old SA
    assert pcap["internal_api"].count(f"src {src} and icmp") == 0
    assert MARKER not in pcap["internal_api"].text()
    assert MARKER in pcap["storage"].text(f"src {addr('compute-0', 'storage')} and icmp")
    EVIDENCE.append("compute-0 without charon: internal_api (fail_closed) pings to controller-0 and the VIP "
                    "dropped, 0 ICMP from it on the wire; storage (not fail_closed) ping left in clear")


# --------------------------------------------------------------------------- why the rendered charon settings
@pytest.mark.parametrize(("settings", "symptom"), [
    ("", "conflicts with IKE traffic"),
    ("  plugins {\n    kernel-libipsec {\n      allow_peer_ts = yes\n    }\n  }\n", "peer not responding"),
], ids=["stock", "allow_peer_ts-without-fwmark"])
def test_host_to_host_under_kernel_libipsec_needs_the_rendered_settings(settings: str, symptom: str) -> None:
    """Without allow_peer_ts charon refuses the route and traffic stays in clear; with it but without
    the firewall marks, charon's own IKE/ESP is routed into the tunnel (a loop) and IKE dies. The
    full settings (rendered strongswan.d) are what the mesh lab above runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab.clean_leftovers()
    names = [lab.add_netns(n) for n in ("h2hbr", "h2ha", "h2hb")]
    charons: list[lab.Charon] = []
    ips = {"h2ha": "10.99.0.1", "h2hb": "10.99.0.2"}
    try:
        lab.run(lab.IP, "-n", names[0], "link", "add", "br0", "type", "bridge")
        lab.run(lab.IP, "-n", names[0], "link", "set", "br0", "up")
        for i, (short, ip) in enumerate(ips.items()):
            ns = lab.PREFIX + short
            lab.run(lab.IP, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"q{i}", "netns", names[0])
            lab.run(lab.IP, "-n", names[0], "link", "set", f"q{i}", "master", "br0", "up")
            lab.run(lab.IP, "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            lab.run(lab.IP, "-n", ns, "link", "set", "eth0", "up")
            charons.append(lab.Charon.start(short, netns=ns, extra=lab.CLIENT_RETRANSMIT + settings))
        for c, (me, peer) in zip(charons, ((ips["h2ha"], ips["h2hb"]), (ips["h2hb"], ips["h2ha"]))):
            with c.vici() as s:
                s.load_shared({"id": "k", "type": "IKE", "data": "h2h-psk-" + "x" * 32, "owners": []})
                s.load_conn({"m": {"version": "2", "local_addrs": [me], "remote_addrs": [peer], "mobike": "no",
                                   "local": {"auth": "psk", "id": me}, "remote": {"auth": "psk", "id": peer},
                                   "children": {"m": {"local_ts": [f"{me}/32"], "remote_ts": [f"{peer}/32"]}}}})
        with charons[0].vici() as s, contextlib.suppress(vici.exception.CommandException):
            list(s.initiate({"child": "m", "ike": "m", "timeout": "5000"}))
        lab.in_ns(lab.PREFIX + "h2ha", "ping", "-c", "2", "-i", "0.2", "-W", "1", ips["h2hb"], check=False)
        deadline = time.monotonic() + 15
        while symptom not in charons[0].log_tail(400) + charons[1].log_tail(400):
            assert time.monotonic() < deadline, charons[0].log_tail(40)
            time.sleep(0.2)
    finally:
        for c in charons:
            c.stop()
        for ns in reversed(names):
            lab.remove_netns(ns)
