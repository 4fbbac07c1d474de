"""Failover gaps on the two-node Pacemaker lab (lab/cluster.py): planned move (standby) and holder
crash, first with ocf:ipsec-vip:strongswan (the README's configuration, whose planned moves hand
the clients over; a stock client is measured beside the tuned one there), then the DPD-only
baseline: the same cluster moving only the VIPs while both nodes keep the connections loaded
(swanctl --load-all everywhere, the keepalived way). The client is never re-initiated by the
harness; the gap is the longest silence of a 20 ms UDP probe through the tunnel."""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from bench.common import summary
from lab import cluster
from lab import core as lab

PSK = "bench-failover-Hk3mQ9vT2xW7zR5nB8cD4fG6"
STOCK_IP = "192.0.2.51"
STOCK_ROW = "planned move, stock client (handoff)"
STOCK_PEER = """
secrets {
    ike-stock {
        id-gw = vpn.example.com
        id-client = stock@example.com
        secret = "%(psk)s"
    }
}
"""


def _wait_conns(c: cluster.Cluster, node: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if c.nodes[node].conns():
                return
        time.sleep(0.02)
    raise TimeoutError(f"no connections loaded on {node}")


def _load_all(c: cluster.Cluster, node: str, conf: str, timeout: float = 30) -> None:
    """The baseline's node set-up: swanctl --load-all of the gateway config, once charon answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.nodes[node].on("swanctl", "--load-all", "--noprompt", "--file", conf, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"swanctl --load-all failed on {node}")


def _holder(c: cluster.Cluster) -> str:
    """Where the VIP runs, once Pacemaker sees it on one node only (a node rejoining after a crash
    is listed with its last known resources until its probes ran)."""
    return c.wait_any("vpn-vip", timeout=60)


def _settle(c: cluster.Cluster, timeout_s: int = 120) -> None:
    """Until the cluster has no transition left (a rejoined node is probed, its resources
    placed): right after a crash and rejoin, the VIP was seen on both nodes for a moment."""
    c.any_node().on("crm_resource", "--wait", f"--timeout={timeout_s * 1000}", check=False, timeout=timeout_s + 10)


def _dc(c: cluster.Cluster) -> str:
    """The designated controller's node name ('' if unknown)."""
    out = c.any_node().on("crm_mon", "-1", "--output-as=xml", check=False).stdout
    with contextlib.suppress(ET.ParseError):
        dc = ET.fromstring(out).find(".//current_dc")  # noqa: S314 (our own lab's crm_mon)
        if dc is not None:
            return dc.get("name") or ""
    return ""


def _measure(c: cluster.Cluster, event: Callable[[], object], to: str,
             stock: lab.Charon | None = None) -> dict[str, Any]:
    """One event with the lab's (tuned) client and, if given, a stock client sending through the
    tunnel: the gaps, and when the VIP had moved (its address on ``to`` alone)."""
    dc = _dc(c)
    probe = cluster.Probe(c.work)
    other = cluster.Probe(c.work, netns=stock.netns) if stock is not None else None
    try:
        for p in (probe, other):
            if p is not None:
                p.wait_flowing(time.monotonic() - 5, timeout=20)
        t0 = time.monotonic()
        event()
        t_vip = _wait_vip(c, to) - t0
        first = probe.wait_flowing(t0 + t_vip, timeout=40)
        c.wait_located("vpn-vip", to, timeout=60)  # Pacemaker's view settled too, for the next run
        out = {"vip_moved_s": round(t_vip, 3), "dc_before": dc}
        if other is not None:
            out["stock_back_s"] = round(other.wait_flowing(t0 + t_vip, timeout=40) - t0, 3)
        time.sleep(0.3)
        out.update(traffic_back_s=round(first - t0, 3), gap_s=round(probe.gap(t0), 3))
        if other is not None:
            out["stock_gap_s"] = round(other.gap(t0), 3)
        return out
    finally:
        for p in (probe, other):
            if p is not None:
                p.stop()


def _wait_vip(c: cluster.Cluster, to: str, timeout: float = 60) -> float:
    """Monotonic time at which the VIP's address is on ``to`` and on no other live node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if [n for n, node in c.nodes.items() if node.alive and node.has_address(lab.VIP)] == [to]:
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"VIP not on {to} alone after {timeout}s")


def _fresh(client: lab.Charon) -> None:
    """Set-up between runs: the stock client connected with a fresh IKE_SA (a strongSwan client
    follows at most 5 redirects in 300 s; each planned move is one)."""
    with client.vici() as s:
        for ike_id in [body["uniqueid"] for sa in s.list_sas() for body in sa.values()]:
            list(s.terminate({"ike-id": ike_id, "force": "yes", "timeout": "-1"}))
    if not lab.client_initiate(client):
        raise RuntimeError("the stock client could not connect")


def _scenarios(c: cluster.Cluster, reps: int, conf: str, baseline: bool, log: Any,
               stock: lab.Charon | None = None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"planned move": [], "holder crash": []}
    for i in range(reps):
        h = _holder(c)
        o = next(n for n in c.nodes if n != h)
        log(f"    planned move {i + 1}/{reps}: standby {h}")
        if stock is not None:
            _fresh(stock)
        run = _measure(c, lambda h=h: c.nodes[h].on("pcs", "node", "standby", h), o, stock)
        out["planned move"].append(run)
        if stock is not None:
            out.setdefault(STOCK_ROW, []).append({"gap_s": run["stock_gap_s"], "vip_moved_s": run["vip_moved_s"],
                                                  "traffic_back_s": run["stock_back_s"]})
        c.nodes[o].on("pcs", "node", "unstandby", h)
    for i in range(reps):
        h = _holder(c)
        o = next(n for n in c.nodes if n != h)
        if i % 2 == 1 and _dc(c) == h:  # every other crash: the holder is not the DC (crash gaps differ)
            log(f"    moving the VIP to {o} first, so that the holder is not the DC")
            target = "vpn-vips" if baseline else cluster.MOVE  # the baseline has no vpn: the VIPs' group moves
            c.nodes[h].on("pcs", "resource", "move", target, o)
            c.wait_located("vpn-vip", o, timeout=60)
            c.nodes[h].on("pcs", "resource", "clear", target)
            h, o = o, h
        log(f"    holder crash {i + 1}/{reps}: {h} dies" + (" (the DC)" if _dc(c) == h else " (not the DC)"))
        run = _measure(c, lambda h=h: c.crash(h), o)
        run["dc_crashed"] = run["dc_before"] == h
        out["holder crash"].append(run)
        c.start_node(h)  # the reboot: a fresh node, its addresses and /run empty
        c.wait_ready(90)
        if baseline:
            _load_all(c, h, conf)
        _settle(c)
    return out


def run(reps: int, log: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    log("  building the two-node cluster (corosync token 1000 ms)")
    c = cluster.Cluster.build(("gw1", "gw2"), token_ms=1000)
    result: dict[str, Any] = {"token_ms": 1000, "reps": reps}
    try:
        conf = c.work / "swanctl.conf"
        conf.write_text((lab.GATEWAY_CONF + STOCK_PEER) % {"vip": lab.VIP, "psk": PSK})
        conf.chmod(0o600)
        for cmd in cluster.pcs_commands(str(conf)):
            c.nodes["gw1"].on(*cmd)
        h = c.wait_any("vpn")
        _wait_conns(c, h)
        if c.client is None:
            raise RuntimeError("the lab has no client")
        lab.client_load(c.client, PSK)
        if not lab.client_initiate(c.client):
            raise RuntimeError("the client could not connect")
        stock = lab.add_client("stock", STOCK_IP, lab.PREFIX + "lan", c.namespaces)
        try:
            with stock.vici() as s:
                s.load_shared({"id": "home-psk", "type": "IKE", "data": PSK, "owners": []})
                s.load_conn(lab.stock_conn("stock@example.com"))
            log("  ocf:ipsec-vip:strongswan (README configuration, handoff=redirect; a stock client too)")
            ours = _scenarios(c, reps, str(conf), False, log, stock)
        finally:
            stock.stop()
        log("  DPD-only baseline: only the VIPs move, connections loaded on both nodes")
        c.any_node().on("pcs", "resource", "delete", "vpn")
        for name, node in c.nodes.items():
            if node.alive:
                _load_all(c, name, str(conf))
        base = _scenarios(c, reps, str(conf), True, log)
        for label, runs in (("ipsec-vip", ours), ("dpd-only", base)):
            for scenario, samples in runs.items():
                result.setdefault("rows", []).append({
                    "setup": label, "scenario": scenario, "runs": samples,
                    **{k: summary([s[k] * 1000 for s in samples]) for k in ("gap_s", "vip_moved_s")}})
    finally:
        c.destroy()
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


# --------------------------------------------------------------------------- stateful mode
def _measure_both(c: cluster.Cluster, event: Callable[[], object], to: str) -> dict[str, dict[str, Any]]:
    """Both clients' gaps for one event, each with whether it kept its IKE_SA (same SPIs)."""
    clients = {"stock": (c.stock, "stock"), "tuned": (c.client, "client")}

    def spis(ch: lab.Charon | None) -> list[tuple[str, str]]:
        return [] if ch is None else [(s["initiator-spi"], s["responder-spi"]) for s in ch.sas()
                                      if s["name"] == "home"]

    before = {k: spis(ch) for k, (ch, _) in clients.items()}
    probes = {k: cluster.Probe(c.work, netns=lab.PREFIX + ns) for k, (_, ns) in clients.items()}
    try:
        for p in probes.values():
            p.wait_flowing(time.monotonic() - 5, timeout=20)
        arrival = cluster.VipArrival(c.nodes[to])
        t0 = time.monotonic()
        event()
        c.wait_located("vpn-vip", to, timeout=90)
        c.wait_promoted("vpn-clone", to, timeout=60)
        t_vip = arrival.wait(t0)
        out = {}
        for k, p in probes.items():
            first = p.wait_flowing(t0 + t_vip, timeout=40)
            out[k] = {"vip_moved_s": round(t_vip, 3), "traffic_back_s": round(first - t0, 3)}
        time.sleep(0.3)
        for k, p in probes.items():
            out[k]["gap_s"] = round(p.gap(t0), 3)
            out[k]["kept_ike_sa"] = spis(clients[k][0]) == before[k]
        return out
    finally:
        for p in probes.values():
            p.stop()


def _wait_in_sync(c: cluster.Cluster, node: str, clients: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            copies = [s for s in c.nodes[node].sas() if s["name"] == "rw" and s["state"] == "PASSIVE"
                      and any(ch["state"] == "INSTALLED" for ch in (s.get("child-sas") or {}).values())]
            if len(copies) == clients:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{node} not in sync after {timeout}s")


def run_stateful(reps: int, log: Any) -> dict[str, Any]:
    """Stateful mode (docs/stateful.md's pcs recipe): standby and holder crash, stock and tuned client."""
    t0 = time.monotonic()
    log("  building the two-node cluster with the ha plugin (corosync token 1000 ms)")
    c = cluster.Cluster.build(("gw1", "gw2"), token_ms=1000, ha=True)
    result: dict[str, Any] = {"token_ms": 1000, "reps": reps, "rows": []}
    try:
        cluster.start_stateful(c)
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for scenario in ("planned move", "holder crash"):
            for i in range(reps):
                h = _holder(c)
                o = next(n for n in c.nodes if n != h)
                _wait_in_sync(c, o, len(cluster.STATEFUL_CLIENTS))
                log(f"    stateful {scenario} {i + 1}/{reps}: {h} -> {o}")
                if scenario == "planned move":
                    got = _measure_both(c, lambda h=h: c.nodes[h].on("pcs", "node", "standby", h), o)
                    c.nodes[o].on("pcs", "node", "unstandby", h)
                else:
                    got = _measure_both(c, lambda h=h: c.crash(h), o)
                    c.start_node(h)
                    c.wait_ready(90)
                _settle(c)
                for client, sample in got.items():
                    runs.setdefault((scenario, client), []).append(sample)
        for (scenario, client), samples in runs.items():
            result["rows"].append({"setup": f"stateful-{client}", "scenario": scenario, "runs": samples,
                                   **{k: summary([s[k] * 1000 for s in samples]) for k in ("gap_s", "vip_moved_s")}})
    finally:
        c.destroy()
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result
