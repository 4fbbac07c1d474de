"""`ipsec-vip mesh` without daemons: inventory errors, PSK file, deterministic render (fast tier)."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipsec_vip import selection, swanctl
from ipsec_vip.cli import main
from ipsec_vip.errors import ConfigError
from ipsec_vip.mesh import inventory, keys, render

EXAMPLE: dict[str, Any] = {
    "psk_file": "mesh.psk",
    "networks": {
        "internal_api": {"cidr": "172.16.2.0/24"},
        "storage": {"cidr": "172.16.1.0/24", "fail_closed": True},
        "tenant": {"cidr": "172.16.0.0/24", "encrypt": False},
    },
    "nodes": {
        "controller-0": {"roles": ["controller"], "addresses": {
            "internal_api": "172.16.2.10", "storage": "172.16.1.10", "tenant": "172.16.0.10"}},
        "controller-1": {"roles": ["controller"], "addresses": {
            "internal_api": "172.16.2.11", "storage": "172.16.1.11", "tenant": "172.16.0.11"}},
        "compute-0": {"roles": ["compute"], "addresses": {"internal_api": "172.16.2.20", "tenant": "172.16.0.20"}},
        "compute-1": {"roles": ["compute"], "addresses": {"internal_api": "172.16.2.21", "tenant": "172.16.0.21"}},
    },
    "vips": {"internal_api": {"address": "172.16.2.100", "holders": ["controller"]}},
    "skip_between": [["compute", "compute"]],
}


def write_inv(tmp: Path, doc: Any, name: str = "mesh.yaml") -> Path:
    p = tmp / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def ansible_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The same inventory as `ansible-inventory --list` prints it."""
    mesh = {k: v for k, v in doc.items() if k != "nodes"}
    hostvars = {h: {"ipsec_vip_roles": n["roles"], "ipsec_vip_addresses": n["addresses"], "ansible_host": "x"}
                for h, n in doc["nodes"].items()}
    hostvars["bastion"] = {"ansible_host": "y"}  # a host outside the mesh
    return {"_meta": {"hostvars": hostvars},
            "all": {"children": ["ungrouped", "overcloud"], "vars": {"ipsec_vip_mesh": mesh}},
            "overcloud": {"hosts": sorted(doc["nodes"])}}


@pytest.fixture
def inv_dir(tmp_path: Path) -> Path:
    write_inv(tmp_path, EXAMPLE)
    keys.ensure(inventory.load(str(tmp_path / "mesh.yaml")))
    return tmp_path


def mutate(path: str, value: Any) -> dict[str, Any]:
    """EXAMPLE with the value at a dotted path replaced (None deletes it)."""
    doc = copy.deepcopy(EXAMPLE)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


# --------------------------------------------------------------------------- inventory errors
BAD = [
    ("unknown network", "nodes.compute-0.addresses.backup", "172.16.9.1",
     "nodes.compute-0.addresses.backup: unknown network 'backup'"),
    ("address outside CIDR", "nodes.compute-0.addresses.internal_api", "172.16.3.20",
     "nodes.compute-0.addresses.internal_api: 172.16.3.20 is outside network internal_api"),
    ("same address twice", "nodes.compute-1.addresses.internal_api", "172.16.2.20",
     "nodes.compute-1.addresses.internal_api: 172.16.2.20 is also the address of node compute-0"),
    ("VIP is a node address", "vips.internal_api.address", "172.16.2.11",
     "vips.internal_api.address: 172.16.2.11 is the address of node controller-1"),
    ("unknown holder role", "vips.internal_api.holders", ["database"],
     "vips.internal_api.holders: unknown role 'database'"),
    ("unknown skip role", "skip_between", [["compute", "compute"], ["compute", "storage"]],
     "skip_between[1]: unknown role 'storage'"),
    ("VIP on unknown network", "vips.backup", {"address": "10.0.0.1", "holders": ["controller"]},
     "vips.backup: unknown network 'backup'"),
    ("not an address", "nodes.compute-0.addresses.tenant", "172.16.0.300",
     "nodes.compute-0.addresses.tenant: '172.16.0.300' is not an IP address"),
    ("bad cidr", "networks.storage.cidr", "172.16.1.0/33", "networks.storage.cidr: '172.16.1.0/33' is not a network"),
    ("no psk_file", "psk_file", None, "psk_file: missing"),
    ("unknown top key", "vip", {}, "vip: unknown key"),
    ("roles not a list", "nodes.compute-0.roles", "compute", "nodes.compute-0.roles: must be a non-empty list"),
    ("fail_closed in clear", "networks.tenant.fail_closed", True, "networks.tenant.fail_closed: needs encrypt: true"),
    ("bad name", "networks.bad name", {"cidr": "10.0.0.0/8"}, "networks: name 'bad name'"),
]


@pytest.mark.parametrize(("path", "value", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inventory_names_file_key_and_reason(tmp_path: Path, path: str, value: Any, message: str) -> None:
    inv = write_inv(tmp_path, mutate(path, value))
    with pytest.raises(ConfigError) as e:
        inventory.load(str(inv))
    assert str(e.value).startswith(f"{inv}: "), e.value
    assert message in str(e.value)


ANSIBLE_BAD = [
    ("unknown network", "nodes.compute-0.addresses.backup", "172.16.9.1",
     "_meta.hostvars.compute-0.ipsec_vip_addresses.backup: unknown network 'backup'"),
    ("same address twice", "nodes.compute-1.addresses.internal_api", "172.16.2.20",
     "_meta.hostvars.compute-1.ipsec_vip_addresses.internal_api: 172.16.2.20 is also"),
    ("VIP is a node address", "vips.internal_api.address", "172.16.2.11",
     "all.vars.ipsec_vip_mesh.vips.internal_api.address: 172.16.2.11 is the address of node controller-1"),
]


@pytest.mark.parametrize(("path", "value", "message"), [b[1:] for b in ANSIBLE_BAD], ids=[b[0] for b in ANSIBLE_BAD])
def test_bad_ansible_inventory_names_key_path(tmp_path: Path, path: str, value: Any, message: str) -> None:
    inv = write_inv(tmp_path, json.dumps(ansible_json(mutate(path, value))), "inv.json")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        inventory.load(str(inv))


@pytest.mark.parametrize(("text", "message"), [
    ("networks: [a\n  b: {", "line 2: not valid YAML"),
    ("- just\n- a list\n", "must be a mapping, not a list"),
    ("", "must be a mapping, not empty"),
    ('{"_meta": {"hostvars": {}}, "all": {"vars": {}}}', "all.vars.ipsec_vip_mesh: missing"),
])
def test_unreadable_documents(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        inventory.load(str(write_inv(tmp_path, text)))


def test_ansible_json_reads_like_yaml(tmp_path: Path) -> None:
    a = inventory.load(str(write_inv(tmp_path, EXAMPLE)))
    b = inventory.load(str(write_inv(tmp_path, json.dumps(ansible_json(EXAMPLE)), "inv.json")))
    assert (a.nodes, a.networks, a.vips, a.skip_between, a.psk_file) == \
        (b.nodes, b.networks, b.vips, b.skip_between, b.psk_file)
    assert "bastion" not in b.nodes


# --------------------------------------------------------------------------- PSK file
def test_psk_file_0600_one_key_per_encrypted_network_never_rewritten(inv_dir: Path) -> None:
    path = inv_dir / "mesh.psk"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = keys.read(str(path))
    assert sorted(first) == ["internal_api", "storage"]
    assert all(len(k) >= 32 for k in first.values())
    assert len(set(first.values())) == 2  # one PSK per network
    doc = mutate("networks.backup", {"cidr": "10.9.0.0/24"})
    added = keys.ensure(inventory.load(str(write_inv(inv_dir, doc))))
    assert added == ["backup"]
    second = keys.read(str(path))
    assert {k: second[k] for k in first} == first
    assert keys.ensure(inventory.load(str(inv_dir / "mesh.yaml"))) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_psk_file_or_key_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write_inv(tmp_path, EXAMPLE)
    assert main(["mesh", "render", str(inv), "--node", "compute-0", "--out", str(tmp_path / "out")]) == 6
    assert "PSK file missing" in capsys.readouterr().err
    (tmp_path / "mesh.psk").write_text("internal_api " + "k" * 40 + "\n")
    os.chmod(tmp_path / "mesh.psk", 0o600)
    assert main(["mesh", "render", str(inv), "--node", "compute-0", "--out", str(tmp_path / "out")]) == 6
    err = capsys.readouterr().err
    assert "networks.storage: no PSK for this network" in err and "k" * 40 not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--node", "nobody"], "no node named 'nobody'"),
])
def test_render_refuses_unknown_node_writing_nothing(inv_dir: Path, capsys: pytest.CaptureFixture[str],
                                                     args: list[str], message: str) -> None:
    out = inv_dir / "out"
    assert main(["mesh", "render", str(inv_dir / "mesh.yaml"), *args, "--out", str(out)]) == 6
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_inventory_exit_6_without_traceback(tmp_path: Path) -> None:
    inv = write_inv(tmp_path, "nodes: [\n")
    p = subprocess.run([sys.executable, "-m", "ipsec_vip.cli", "mesh", "render", str(inv), "--node", "x",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert p.returncode == 6
    assert "Traceback" not in p.stderr and "not valid YAML" in p.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- render
def rendered(inv_dir: Path, node: str, out: str = "out") -> dict[str, tuple[bytes, int]]:
    root = inv_dir / out
    assert main(["mesh", "render", str(inv_dir / "mesh.yaml"), "--node", node, "--out", str(root)]) == 0
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_byte_identical_and_secret_files_0600(inv_dir: Path) -> None:
    a = rendered(inv_dir, "controller-0", "a")
    b = rendered(inv_dir, "controller-0", "b")
    assert a == b
    assert set(a) == {render.SWANCTL_FILE, render.STRONGSWAN_FILE, render.VIPS_FILE, render.NFT_FILE}
    assert a[render.SWANCTL_FILE][1] == a[render.VIPS_FILE][1] == 0o600
    assert a[render.NFT_FILE][1] == a[render.STRONGSWAN_FILE][1] == 0o644
    assert rendered(inv_dir, "controller-0", "a") == a  # re-render over existing files


def test_render_tunnels_follow_networks_roles_and_skip_between(inv_dir: Path) -> None:
    files = {n: rendered(inv_dir, n, n) for n in EXAMPLE["nodes"]}
    conns = {n: swanctl.load(str(inv_dir / n / render.SWANCTL_FILE)).connections for n in files}
    assert sorted(conns["compute-0"]) == ["mesh-internal_api-node-controller-0", "mesh-internal_api-node-controller-1",
                                          "mesh-internal_api-to-vip"]  # no compute-1 (skip), no storage, no tenant
    assert sorted(conns["controller-0"]) == [
        "mesh-internal_api-node-compute-0", "mesh-internal_api-node-compute-1", "mesh-internal_api-node-controller-1",
        "mesh-internal_api-to-vip", "mesh-storage-node-controller-1"]
    assert render.VIPS_FILE not in files["compute-0"]
    # both ends render matching host-to-host connections
    a = conns["controller-0"]["mesh-storage-node-controller-1"]
    b = conns["controller-1"]["mesh-storage-node-controller-0"]
    assert (a["local_addrs"], a["remote_addrs"]) == (b["remote_addrs"], b["local_addrs"])
    assert (a["local"]["id"], a["remote"]["id"]) == (b["remote"]["id"], b["local"]["id"])
    ca, cb = a["children"]["mesh-storage-node-controller-1"], b["children"]["mesh-storage-node-controller-0"]
    assert (ca["local_ts"], ca["remote_ts"]) == (cb["remote_ts"], cb["local_ts"]) == (["172.16.1.10/32"],
                                                                                     ["172.16.1.11/32"])
    assert ca["start_action"] == "trap|start"  # storage is fail_closed
    to_vip = conns["compute-0"]["mesh-internal_api-to-vip"]
    assert to_vip["dpd_delay"] == "1s" and to_vip["keyingtries"] == "0"
    assert to_vip["children"]["mesh-internal_api-to-vip"]["close_action"] == "start"
    assert to_vip["children"]["mesh-internal_api-to-vip"]["start_action"] == "start"


def test_rendered_secrets_bind_each_network_psk_to_its_identities(inv_dir: Path) -> None:
    rendered(inv_dir, "controller-0", "c0")
    cfg = swanctl.load(str(inv_dir / "c0" / render.SWANCTL_FILE))
    psks = keys.read(str(inv_dir / "mesh.psk"))
    by_id = {s["id"]: s for s in cfg.secrets}
    assert by_id["ike-mesh-internal_api"]["data"] == psks["internal_api"].encode()
    assert by_id["ike-mesh-internal_api"]["owners"] == ["172.16.2.10", "172.16.2.11", "172.16.2.20", "172.16.2.21",
                                                        "172.16.2.100"]
    assert by_id["ike-mesh-storage"]["owners"] == ["172.16.1.10", "172.16.1.11"]
    vips = swanctl.load(str(inv_dir / "c0" / render.VIPS_FILE))
    sel = selection.select(vips, inventory.load(str(inv_dir / "mesh.yaml")).vips["internal_api"].address)
    assert list(sel.connections) == ["meshvip-internal_api"] and len(sel.secrets) == 1


def test_vip_responders_carry_the_nodes_own_tunnel_as_their_fallback(inv_dir: Path) -> None:
    """Whatever loads mesh-vips.conf (the agent, ipsec-vip watch, ipsec-vip up by hand) learns from the
    file itself which of this node's tunnels to end while it holds the VIP and to start once the VIP has
    left: none of them needs to be told (a by-hand move without it left the old holder in clear)."""
    rendered(inv_dir, "controller-0", "c0")
    text = (inv_dir / "c0" / render.VIPS_FILE).read_text()
    assert "ipsec-vip {\n    meshvip-internal_api {\n        fallback_connections = mesh-internal_api-to-vip\n" \
        in text
    vips = swanctl.load(str(inv_dir / "c0" / render.VIPS_FILE))
    sel = selection.select(vips, inventory.load(str(inv_dir / "mesh.yaml")).vips["internal_api"].address)
    assert sel.fallbacks == ("mesh-internal_api-to-vip",)
    own = swanctl.load(str(inv_dir / "c0" / render.SWANCTL_FILE))
    assert set(sel.fallbacks) <= set(own.connections)  # a tunnel this node has


def test_render_prints_pcs_commands(inv_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rendered(inv_dir, "compute-0")
    out = capsys.readouterr().out
    assert ("pcs resource create mesh-vip-internal_api-tunnel ocf:ipsec-vip:strongswan vip=172.16.2.100 "
            "config=/etc/ipsec-vip/mesh-vips.conf connections=meshvip-internal_api "
            "start_without_vip=true --group mesh-vip-internal_api") in out
    assert out.index("-tunnel ocf:ipsec-vip") < out.index("-ip ocf:heartbeat:IPaddr2")  # agent before the VIP
    assert "avoids compute-0 compute-1" in out


def test_nft_accepts_ike_esp_from_encrypted_networks_and_fails_closed(inv_dir: Path) -> None:
    text = rendered(inv_dir, "controller-0")[render.NFT_FILE][0].decode()
    assert "ip saddr 172.16.2.0/24 udp dport { 500, 4500 } accept" in text
    assert "ip saddr 172.16.1.0/24 meta l4proto { esp, ah } accept" in text
    assert "172.16.0.0/24" not in text  # tenant stays in clear
    assert 'ip daddr { 172.16.1.11 } drop comment "storage: fail_closed"' in text


# --------------------------------------------------------------------------- the agent's fallback_connections
def test_fallback_connections_parameter() -> None:
    from ipsec_vip.agent import META
    from ipsec_vip.params import parse

    assert parse({"vip": "192.0.2.1", "fallback_connections": "a, b c"}).fallback_connections == ("a", "b", "c")
    assert parse({"vip": "192.0.2.1"}).fallback_connections == ()
    with pytest.raises(ConfigError, match=r"fallback_connections: 'a\.b' is not a valid connection name"):
        parse({"vip": "192.0.2.1", "fallback_connections": "a.b"})
    assert "fallback_connections" in [p.name for p in META.parameters]
