"""What ``ipsec-vip mesh render`` writes for one node: pure functions of the inventory and the PSKs.

Every output is sorted by name, so the same inputs give byte-identical files. Connection names:
``mesh-NET-node-PEER`` (this node to PEER on network NET), ``mesh-NET-to-vip`` (this node to NET's
VIP) and, in ``mesh-vips.conf``, ``meshvip-NET`` (the VIP holder's responder, deliberately outside
the ``mesh-`` prefix that marks what ``mesh load`` manages). Identities are the
addresses; each network's PSK is bound to the identities of its members and its VIP.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from ipsec_vip.mesh.inventory import Inventory, Network, Node
from ipsec_vip.swanctl import OWN_SECTION

if TYPE_CHECKING:
    from ipsec_vip.vip import IPAddress

SWANCTL_FILE = "etc/swanctl/conf.d/ipsec-vip-mesh.conf"
STRONGSWAN_FILE = "etc/strongswan.d/ipsec-vip-mesh.conf"
VIPS_FILE = "etc/ipsec-vip/mesh-vips.conf"
NFT_FILE = "etc/ipsec-vip/mesh.nft"
NFT_TABLE = "ipsec_vip_mesh"
LIBIPSEC_TUN = "ipsec0"  # kernel-libipsec's TUN device (charon.plugins.kernel-libipsec has no name option)
Tree = dict[str, Union[str, "Tree"]]

# Tunnels to a VIP: the tuned client of failover.md (DPD 1 s; retransmits in strongswan.d), restarted
# on DPD and on a peer's DELETE, retried forever on timeouts.
_TO_VIP = {"dpd_delay": "1s", "keyingtries": "0"}
_NODE = {"dpd_delay": "10s", "keyingtries": "0"}


@dataclass(frozen=True)
class File:
    path: str  # relative to the root ("/" on the node)
    text: str
    mode: int


def conn_node(net: str, peer: str) -> str:
    return f"mesh-{net}-node-{peer}"


def conn_to_vip(net: str) -> str:
    return f"mesh-{net}-to-vip"


def conn_vip(net: str) -> str:
    return f"meshvip-{net}"


def secret_name(net: str) -> str:
    return f"mesh-{net}"


def _host(addr: IPAddress) -> str:
    return str(ipaddress.ip_network(addr))  # /32 or /128


def _format(tree: Tree, indent: int = 0) -> list[str]:
    pad = "    " * indent
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += [f"{pad}{key} {{", *_format(value, indent + 1), f"{pad}}}"]
        else:
            out.append(f"{pad}{key} = {value}")
    return out


def _header(node: str, what: str) -> str:
    return f"# {what} for node {node}, written by `ipsec-vip mesh render`: edit the inventory, not this file.\n"


def _conn(local: IPAddress, remote: str, local_id: str, remote_id: str, child: str, extra: dict[str, str],
          child_extra: dict[str, str], local_ts: str, remote_ts: str | None) -> Tree:
    children: Tree = {"local_ts": local_ts}
    if remote_ts:
        children["remote_ts"] = remote_ts
    children.update(child_extra)
    return {"version": "2", "local_addrs": str(local), "remote_addrs": remote, "mobike": "no", **extra,
            "local": {"auth": "psk", "id": local_id}, "remote": {"auth": "psk", "id": remote_id},
            "children": {child: children}}


def _initiator(net: Network) -> dict[str, str]:
    """Started at load and restarted; under fail_closed also trapped: the trap policy keeps
    traffic off the wire while no SA is up (kernel-libipsec sends it nowhere, it does not acquire)."""
    return {"start_action": "trap|start" if net.fail_closed else "start",
            "dpd_action": "restart", "close_action": "start"}


def peers(inv: Inventory, node: Node, net: Network) -> list[Node]:
    """The nodes this node has a tunnel with on ``net``."""
    if not net.encrypt or net.name not in node.addresses:
        return []
    return [p for name, p in sorted(inv.nodes.items())
            if name != node.name and net.name in p.addresses and not inv.skipped(node, p)]


def members(inv: Inventory, net: Network) -> list[IPAddress]:
    """Every identity on ``net``: its nodes' addresses and its VIP."""
    out = sorted((n.addresses[net.name] for n in inv.nodes.values() if net.name in n.addresses), key=_key)
    if net.name in inv.vips:
        out.append(inv.vips[net.name].address)
    return out


def _key(a: IPAddress) -> tuple[int, int]:
    return a.version, int(a)


def _secret(name: str, ids: list[IPAddress], key: str) -> Tree:
    body: Tree = {f"id-{i}": str(a) for i, a in enumerate(ids, 1)}
    body["secret"] = f'"{key}"'
    return {f"ike-{name}": body}


def swanctl_conf(inv: Inventory, node: Node, keys: dict[str, str]) -> str:
    """Tunnels to every peer and VIP on every encrypted network of this node, and their PSKs."""
    conns: Tree = {}
    secrets: Tree = {}
    for name, net in sorted(inv.networks.items()):
        if not net.encrypt or name not in node.addresses:
            continue
        mine = node.addresses[name]
        others = peers(inv, node, net)
        for peer in others:
            theirs = peer.addresses[name]
            conn = conn_node(name, peer.name)
            conns[conn] = _conn(mine, str(theirs), str(mine), str(theirs), conn, _NODE, _initiator(net),
                                _host(mine), _host(theirs))
        vip = inv.vips.get(name)
        if vip is not None:
            conn = conn_to_vip(name)
            conns[conn] = _conn(mine, str(vip.address), str(mine), str(vip.address), conn, _TO_VIP,
                                _initiator(net), _host(mine), _host(vip.address))
        if others or vip is not None:
            secrets.update(_secret(secret_name(name), members(inv, net), keys[name]))
    tree: Tree = {"connections": conns, "secrets": secrets}
    return _header(node.name, "Cluster encryption (swanctl --load-all)") + "\n".join(_format(tree)) + "\n"


def vip_nets(inv: Inventory, node: Node) -> list[str]:
    """Encrypted networks whose VIP this node may hold."""
    return [net for net, vip in sorted(inv.vips.items())
            if inv.networks[net].encrypt and set(vip.holders) & set(node.roles) and net in node.addresses]


def vips_conf(inv: Inventory, node: Node, keys: dict[str, str]) -> str | None:
    """The VIP responders this node may hold (loaded by the agent or watch), or None."""
    nets = vip_nets(inv, node)
    if not nets:
        return None
    conns: Tree = {}
    secrets: Tree = {}
    own: Tree = {}
    for net in nets:
        vip = inv.vips[net].address
        conns[conn_vip(net)] = _conn(vip, str(inv.networks[net].cidr), str(vip), "%any", conn_vip(net),
                                     {"dpd_delay": "10s"}, {}, _host(vip), None)
        secrets.update(_secret(f"meshvip-{net}", [vip], keys[net]))
        own[conn_vip(net)] = {"fallback_connections": conn_to_vip(net)}
    tree: Tree = {"connections": conns, OWN_SECTION: own, "secrets": secrets}
    return (_header(node.name, "VIP responders (loaded by ocf:ipsec-vip:strongswan, ipsec-vip watch or up)")
            + f"# {OWN_SECTION} (swanctl ignores it): whoever loads {conn_vip('NET')} ends this node's own\n"
              f"# {conn_to_vip('NET')} when the VIP comes and starts it once the VIP has left\n"
            + "\n".join(_format(tree)) + "\n")


def strongswan_conf(inv: Inventory, node: Node) -> str:
    """charon settings: fast retransmits (tunnels to VIPs) and what host-to-host tunnels need
    under kernel-libipsec (harmless with kernel ESP): the route to a peer's own address is allowed,
    and charon's own IKE/ESP packets carry a mark that keeps them out of its routing table."""
    tree: Tree = {"charon": {
        "retransmit_timeout": "0.5", "retransmit_base": "1.0", "retransmit_tries": "2",
        "plugins": {
            "kernel-libipsec": {"allow_peer_ts": "yes"},
            "kernel-netlink": {"fwmark": f"!{inv.fwmark:#x}/{inv.fwmark:#x}"},
            "socket-default": {"fwmark": f"{inv.fwmark:#x}"},
        }}}
    return _header(node.name, "charon settings of the cluster encryption") + "\n".join(_format(tree)) + "\n"


def _family(addr: IPAddress | Any) -> str:
    return "ip" if addr.version == 4 else "ip6"


def nft(inv: Inventory, node: Node) -> str:
    """IKE, NAT-T, ESP and AH from the encrypted networks; fail_closed networks: nothing to their
    members leaves this node in clear (only through the tunnel, or charon's own marked packets)."""
    lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}", f"table inet {NFT_TABLE} {{",
             "    chain input {", "        type filter hook input priority filter; policy accept;"]
    for name, net in sorted(inv.networks.items()):
        if net.encrypt and name in node.addresses:
            fam = _family(net.cidr)
            lines += [f"        {fam} saddr {net.cidr} udp dport {{ 500, 4500 }} accept comment \"{name}: IKE\"",
                      f"        {fam} saddr {net.cidr} meta l4proto {{ esp, ah }} accept comment \"{name}: ESP, AH\""]
    lines.append("    }")
    closed = []
    for name, net in sorted(inv.networks.items()):
        if net.fail_closed and name in node.addresses:
            targets = [p.addresses[name] for p in peers(inv, node, net)]
            if name in inv.vips:
                targets.append(inv.vips[name].address)
            if targets:
                fam = _family(net.cidr)
                closed.append(f"        {fam} daddr {{ {', '.join(str(a) for a in targets)} }} drop "
                              f"comment \"{name}: fail_closed\"")
    if closed:
        lines += ["    chain output {", "        type filter hook output priority filter; policy accept;",
                  "        fib daddr type local accept", f"        oifname \"{LIBIPSEC_TUN}\" accept",
                  f"        meta mark & {inv.fwmark:#x} == {inv.fwmark:#x} accept",
                  "        meta l4proto { esp, ah } accept", "        rt ipsec exists accept", *closed, "    }"]
    lines.append("}")
    return _header(node.name, "Firewall rules of the cluster encryption (nft -f)") + "\n".join(lines) + "\n"


def pcs_commands(inv: Inventory) -> str:
    """One resource group per VIP on an encrypted network: the agent first (loaded before the VIP
    arrives, so no client is refused), then the address; nodes that may not hold it avoid it.
    Every word is shell-quoted: the output is meant to be pasted into a shell."""
    out = ["# Pacemaker resources for the mesh's VIPs (run once, on one cluster node):"]
    for net, vip in sorted(inv.vips.items()):
        if not inv.networks[net].encrypt:
            continue
        group = f"mesh-vip-{net}"
        out.append(shlex.join(["pcs", "resource", "create", f"{group}-tunnel", "ocf:ipsec-vip:strongswan",
                               f"vip={vip.address}", f"config=/{VIPS_FILE}", f"connections={conn_vip(net)}",
                               "start_without_vip=true", "--group", group]))
        out.append(shlex.join(["pcs", "resource", "create", f"{group}-ip", "ocf:heartbeat:IPaddr2",
                               f"ip={vip.address}", f"cidr_netmask={inv.networks[net].cidr.prefixlen}",
                               "--group", group]))
        holders = {n.name for n in inv.holders(vip)}
        others = sorted(n for n in inv.nodes if n not in holders)
        if others:
            out.append(shlex.join(["pcs", "constraint", "location", group, "avoids", *others]))
    return "\n".join(out) + "\n"


def render(inv: Inventory, name: str, keys: dict[str, str]) -> list[File]:
    """Every file for node ``name`` (secrets-bearing ones 0600)."""
    node = inv.node(name)
    files = [File(STRONGSWAN_FILE, strongswan_conf(inv, node), 0o644),
             File(SWANCTL_FILE, swanctl_conf(inv, node, keys), 0o600),
             File(NFT_FILE, nft(inv, node), 0o644)]
    vips = vips_conf(inv, node, keys)
    if vips is not None:
        files.append(File(VIPS_FILE, vips, 0o600))
    return files
