"""``make demo``: the tunnel follows the VIP, live, on real daemons (root, Debian 12).

Builds two Pacemaker gateway nodes with charon, a road-warrior client and a server
(lab/cluster.py), configures them with the README's pcs commands, then moves the
VIP by standby, back again, and crashes the holder, narrating each step with
timings. Then the same in stateful mode (docs/stateful.md): a stock client keeps its
IKE_SA through a standby and a crash. Exits 1 if the tunnel did not follow the VIP.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from lab import cluster
from lab import core as lab

PSK = "demo-" + os.urandom(16).hex()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def progress(label: str, done: threading.Event) -> None:
    t0 = time.monotonic()
    while not done.wait(1.0):
        print(f"\r    {label} ... {time.monotonic() - t0:.0f}s", end="", flush=True)
    print("\r", end="")


def with_progress(label: str, fn: Callable[[], cluster.Cluster]) -> cluster.Cluster:
    done = threading.Event()
    t = threading.Thread(target=progress, args=(label, done), daemon=True)
    t.start()
    try:
        return fn()
    finally:
        done.set()
        t.join()


def wait_conns(c: cluster.Cluster, node: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if c.nodes[node].conns():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no connections loaded on {node}")


def move(c: cluster.Cluster, label: str, event: Callable[[], object], to: str) -> tuple[float, float, float]:
    """Returns (VIP moved after, tunnel up after, client gap) in seconds."""
    probe = cluster.Probe(c.work)
    try:
        probe.wait_flowing(time.monotonic() - 5, timeout=15)
        say(f"{label}: traffic client -> server flows through the tunnel; now {label}")
        t0 = time.monotonic()
        event()
        c.wait_located("vpn-vip", to)
        t_vip = time.monotonic() - t0
        say(f"    VIP on {to} after {t_vip * 1000:.0f} ms")
        wait_conns(c, to)
        say(f"    connections loaded on {to} after {(time.monotonic() - t0) * 1000:.0f} ms; "
            f"the client finds {to} by itself (DPD) ...")
        first = probe.wait_flowing(time.monotonic(), timeout=30)
        t_up = first - t0
        time.sleep(0.5)
        gap = probe.gap(t0)
        say(f"    tunnel up again after {t_up * 1000:.0f} ms, traffic OK (longest gap {gap * 1000:.0f} ms)")
        return t_vip, t_up, gap
    finally:
        probe.stop()


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces)", file=sys.stderr)
        return 1
    t_start = time.monotonic()
    say("building the lab: 2 gateway nodes (corosync + pacemaker + charon), a client, a server")
    c = with_progress("cluster forming", lambda: cluster.Cluster.build(("gw1", "gw2")))
    results: list[tuple[str, float, float, float]] = []
    ok = True
    try:
        say(f"cluster ready after {time.monotonic() - t_start:.1f}s; configuring with the README's pcs commands")
        conf = c.work / "swanctl.conf"
        conf.write_text(lab.GATEWAY_CONF % {"vip": lab.VIP, "psk": PSK})
        conf.chmod(0o600)
        for cmd in cluster.pcs_commands(str(conf)):
            print("    " + " ".join(cmd), flush=True)
            c.nodes["gw1"].on(*cmd)
        holder = c.wait_any("vpn")
        wait_conns(c, holder)
        say(f"VIP {lab.VIP} and the strongswan resource run on {holder}")
        assert c.client is not None
        lab.client_load(c.client, PSK)
        if not lab.client_initiate(c.client):
            say("FAIL: the client could not connect")
            return 1
        sa = next(s for s in c.client.sas() if s["name"] == "home")
        say(f"client tunnel up: virtual IP {sa['local-vips'][0]}, gateway {sa['remote-host']}")
        other = next(n for n in c.nodes if n != holder)
        for label, event, to in (
            (f"standby {holder}", lambda: c.nodes[holder].on("pcs", "node", "standby", holder), other),
            (f"unstandby {holder}, standby {other}",
             lambda: (c.nodes[holder].on("pcs", "node", "unstandby", holder),
                      c.nodes[other].on("pcs", "node", "standby", other)), holder),
        ):
            results.append((label, *move(c, label, event, to)))
        c.nodes[other].on("pcs", "node", "unstandby", other)
        results.append((f"crash of {holder}", *move(c, f"crash of {holder}", lambda: c.crash(holder), other)))
    except (TimeoutError, RuntimeError, AssertionError) as e:
        say(f"FAIL: {e}")
        ok = False
    finally:
        say("cleaning up")
        c.destroy()
    print()
    print("| event | VIP moved after | tunnel up after | client gap |")
    print("|---|---:|---:|---:|")
    for label, t_vip, t_up, gap in results:
        print(f"| {label} | {t_vip * 1000:.0f} ms | {t_up * 1000:.0f} ms | {gap * 1000:.0f} ms |")
    print(f"\nwhole demo {time.monotonic() - t_start:.0f}s; " + ("the tunnel followed the VIP every time" if ok
                                                            else "the tunnel did NOT follow the VIP"))
    return 0 if ok and len(results) == 3 else 1


def main_stateful() -> int:
    """Stateful mode (docs/stateful.md): a stock client keeps its IKE_SA through a standby and a crash."""
    t_start = time.monotonic()
    say("stateful mode: 2 gateway nodes with strongSwan's ha plugin, a stock client (no DPD), a server")
    c = with_progress("cluster forming", lambda: cluster.Cluster.build(("gw1", "gw2"), ha=True))
    rows: list[tuple[str, float, float, bool]] = []
    ok = True
    try:
        say("configuring with docs/stateful.md's pcs commands (promotable clone, VIP with the Promoted one)")
        holder = cluster.start_stateful(c, clients=("stock",),
                                        show=lambda cmd: print("    " + " ".join(cmd), flush=True))
        other = next(n for n in c.nodes if n != holder)

        def spis() -> tuple[str, str]:
            assert c.stock is not None
            sa = next(s for s in c.stock.sas() if s["name"] == "home")
            return sa["initiator-spi"], sa["responder-spi"]

        _wait_copy(c, other)
        first = spis()
        say(f"stock client's IKE_SA {first[0]}_i {first[1]}_r via {holder}; {other} holds a passive copy")
        for label, event, to in ((f"standby {holder}", lambda: c.nodes[holder].on("pcs", "node", "standby", holder),
                                  other),
                                 (f"crash of {other}", lambda: c.crash(other), holder)):
            if to == holder:
                c.nodes[holder].on("pcs", "node", "unstandby", holder)
                _wait_copy(c, holder)
            probe = cluster.Probe(c.work, netns=lab.PREFIX + "stock")
            try:
                probe.wait_flowing(time.monotonic() - 5, timeout=15)
                arrival = cluster.VipArrival(c.nodes[to])
                say(f"{label}: traffic flows; now {label}")
                t0 = time.monotonic()
                event()
                c.wait_promoted("vpn-clone", to)
                t_vip = arrival.wait(t0)
                probe.wait_flowing(t0 + t_vip, timeout=30)
                time.sleep(0.5)
                gap = probe.gap(t0)
            finally:
                probe.stop()
            kept = spis() == first
            say(f"    VIP on {to} after {t_vip * 1000:.0f} ms, longest gap {gap * 1000:.0f} ms, "
                + ("same IKE_SA (same SPIs)" if kept else "NEW IKE_SA"))
            rows.append((label, t_vip, gap, kept))
            ok = ok and kept
    except (TimeoutError, RuntimeError, AssertionError) as e:
        say(f"FAIL: {e}")
        ok = False
    finally:
        say("cleaning up")
        c.destroy()
    print()
    print("| event | VIP moved after | stock client gap | stock client's IKE_SA |")
    print("|---|---:|---:|---|")
    for label, t_vip, gap, kept in rows:
        print(f"| {label} | {t_vip * 1000:.0f} ms | {gap * 1000:.0f} ms | {'kept' if kept else 'lost'} |")
    print(f"\nstateful demo {time.monotonic() - t_start:.0f}s; " + (
        "the stock client kept its IKE_SA every time" if ok else "the stock client did NOT keep its IKE_SA"))
    return 0 if ok and len(rows) == 2 else 1


def _wait_copy(c: cluster.Cluster, node: str, timeout: float = 30) -> None:
    """``node`` holds the client's passive copy again (resynced after its instance started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s["name"] == "rw" and s["state"] == "PASSIVE" for s in c.nodes[node].sas()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{node} did not receive the state")


def demo(argv: list[str]) -> int:
    """Both modes (``--primitive`` / ``--stateful``: one of them)."""
    t0 = time.monotonic()
    codes = [] if "--stateful" in argv else [main()]
    if "--primitive" not in argv:
        print()
        codes.append(main_stateful())
    print(f"\ndemo done in {time.monotonic() - t0:.0f}s")
    return max(codes)


if __name__ == "__main__":
    sys.exit(demo(sys.argv[1:]))
