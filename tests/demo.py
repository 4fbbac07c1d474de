"""``make demo``: the tunnel follows the VIP, live, on real daemons (root, Debian 12).

Builds two Pacemaker gateway nodes with charon, a road-warrior client and a server
(tests/cluster.py), configures them with the README's pcs commands, then moves the
VIP by standby, back again, and crashes the holder, narrating each step with
timings. Exits 1 if the tunnel did not follow the VIP.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from tests import cluster, lab

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


if __name__ == "__main__":
    sys.exit(main())
