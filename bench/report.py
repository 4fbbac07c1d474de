"""The benchmark's markdown table and its pictures (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OURS, SHELL, UPSTREAM = "ipsec-vip", "swanctl-agent", "ocf:heartbeat:ipsec"


def _rows(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
    part = results.get(key)
    if isinstance(part, list):
        return part
    if isinstance(part, dict):
        return list(part.get("rows", []))
    return []


def _reason(results: dict[str, Any], key: str) -> str | None:
    """Why a part has no numbers, or None."""
    if key in results.get("skipped", []) or key not in results:
        return "skipped in this run"
    part = results[key]
    if isinstance(part, dict) and not part.get("available", True):
        return str(part.get("reason", "unknown"))
    return None


def _agent_row(results: dict[str, Any], agent: str, action: str, conns: int) -> dict[str, Any] | None:
    key = "upstream" if agent == UPSTREAM else "agents"
    return next((r for r in _rows(results, key) if r["agent"] == agent and r["action"] == action
                 and r["conns"] == conns), None)


def _med(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row.get("median")


def _cpu(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row.get("cpu_median")


def _cell(row: dict[str, Any] | None, unit: str = "") -> str:
    if row is None or row.get("median") is None:
        return "—"
    err = f" ({row['errors']} rc≠0)" if row.get("errors") else ""
    return f"{row['median']:.1f} / {row['p90']:.1f}{unit}{err}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) — the compass."""
    out: list[tuple[str, str, str]] = []
    sizes = results.get("sizes", [])
    small, big = (sizes[0], sizes[-1]) if sizes else (1, 1000)

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    m1, mbig = _med(_agent_row(results, OURS, "monitor", small)), _med(_agent_row(results, OURS, "monitor", big))
    out.append(("monitor ≤ 25 ms median", f"{m1:.1f} ms @{small}, {mbig:.1f} ms @{big}" if m1 and mbig else "—",
                verdict(None if m1 is None or mbig is None else max(m1, mbig) <= 25)))
    floor = _med(next((r for r in results.get("floors", []) if r["what"].startswith("agent venv")), None))
    out.append(("monitor ≤ 2.5× the agent interpreter's `-c pass` (same run)",
                f"{_ratio(m1, floor)} ({m1 or 0:.1f} vs {floor or 0:.1f} ms)" if m1 and floor else "—",
                verdict(None if not m1 or not floor else m1 <= 2.5 * floor)))
    cpu1, cpubig = _cpu(_agent_row(results, OURS, "monitor", small)), _cpu(_agent_row(results, OURS, "monitor", big))
    out.append((f"monitor flat: @{big} ≤ 1.1× @{small}", f"{_ratio(mbig, m1)}; CPU {_ratio(cpubig, cpu1)}",
                verdict(None if m1 is None or mbig is None else mbig <= 1.1 * m1)))
    u1 = _med(_agent_row(results, UPSTREAM, "monitor", small))
    why = _reason(results, "upstream")
    c1, cu = _cpu(_agent_row(results, OURS, "monitor", small)), _cpu(_agent_row(results, UPSTREAM, "monitor", small))
    out.append((f"monitor ≤ 5× upstream @{small} tunnel", f"{_ratio(m1, u1)} ({m1 or 0:.1f} vs {u1 or 0:.1f} ms); "
                f"CPU {_ratio(c1, cu)}" if m1 and u1 else f"upstream not measured: {why}",
                verdict(None if not m1 or not u1 else m1 <= 5 * u1)))
    sbig = _med(_agent_row(results, OURS, "start", big))
    lc = next((r for r in _rows(results, "load") if r["what"] == "swanctl --load-conns" and r["conns"] == big), None)
    out.append((f"start @{big} conns ≤ 1.0× swanctl --load-conns of the same file",
                f"{_ratio(sbig, _med(lc))} ({sbig or 0:.1f} vs {_med(lc) or 0:.1f} ms)" if sbig and _med(lc) else "—",
                verdict(None if not sbig or not _med(lc) else sbig <= _med(lc))))  # type: ignore[operator]
    w = _reason(results, "watch")
    wrow = next((r for r in _rows(results, "watch") if "added" in r["what"] and r["conns"] == big), None)
    lib = next((r for r in _rows(results, "load") if r["what"] == "library: control.start" and r["conns"] == big), None)
    if wrow and _med(wrow) is not None and lib:
        limit = 50 + lib["median"]
        out.append((f"watch reaction ≤ 50 ms + load time (@{big}: ≤ {limit:.0f} ms)", f"{wrow['median']:.1f} ms",
                    verdict(wrow["median"] <= limit)))
    else:
        out.append(("watch reaction ≤ 50 ms + load time", f"not available: {w or 'no data'}", "not measured"))
    fo = _rows(results, "failover")
    token = results.get("failover", {}).get("token_ms", 1000) if isinstance(results.get("failover"), dict) else 1000
    for scenario, limit, label in (("planned move", 500.0, "planned-move client gap ≤ 0.5 s"),
                                   ("holder crash", token + 2000.0, f"holder-crash gap ≤ token ({token} ms) + 2 s")):
        r = next((x for x in fo if x["setup"] == OURS and x["scenario"] == scenario), None)
        if r is None:
            out.append((label, f"not measured: {_reason(results, 'failover') or 'no data'}", "not measured"))
            continue
        gaps = r["gap_s"]
        out.append((label, f"median {gaps['median'] / 1000:.2f} s, max {gaps['max'] / 1000:.2f} s (n={gaps['n']})",
                    verdict(gaps["max"] <= limit)))
    mesh = _rows(results, "mesh")
    if mesh:
        r, load = mesh[0], next((x for x in mesh if "swanctl --load-all" in x["what"]), None)
        limit = results["mesh"].get("target_ms", 2000.0)
        out.append((f"mesh render {results['mesh']['nodes']} nodes × {results['mesh']['networks']} networks "
                    f"< {limit / 1000:.0f} s; its file loads", f"{r['median']:.0f} ms; swanctl --load-all "
                    f"{'listed ' + str(load['conns']) + ' conns' if load else 'not run'}",
                    verdict(r["median"] < limit and bool(load) and not load["errors"] and load["conns"] > 0)))
    else:
        out.append(("mesh render 200 nodes × 3 networks < 2 s", f"not measured: {_reason(results, 'mesh')}",
                    "not measured"))
    out += _stateful_targets(results, verdict)
    out += _keepalived_targets(results, verdict)
    if "fleet" in results:
        out += fleet_targets(results, verdict)
    return out


def _keepalived_targets(results: dict[str, Any], verdict: Any) -> list[tuple[str, str, str]]:
    """The stateful watch on the keepalived pair, stock client, at each advert_int measured."""
    out = []
    rows = [r for r in _rows(results, "vrrp") if r["mode"] == "stateful" and r["client"] == "stock"]
    why = _reason(results, "vrrp") or "no data"
    adverts = sorted({r["advert_int"] for r in rows}, reverse=True) or [1.0]
    for advert in adverts:
        planned = next((r for r in rows if r["advert_int"] == advert and r["scenario"] == "planned move"), None)
        label = f"keepalived stateful planned move (advert_int {advert:g} s), stock gap ≤ 0.5 s, IKE_SA kept"
        if planned is None:
            out.append((label, f"not measured: {why}", "not measured"))
        else:
            gaps = [x["gap_s"] for x in planned["runs"]]
            kept = sum(1 for x in planned["runs"] if x.get("kept_ike_sa"))
            worst = max((g for g in gaps if g is not None), default=None)
            text = f"max {worst:.2f} s" if worst is not None else "no traffic"
            out.append((label, f"{text}, IKE_SA kept {kept}/{len(gaps)} (n={len(gaps)})",
                        verdict(None not in gaps and worst is not None and worst <= 0.5 and kept == len(gaps))))
        crash = next((r for r in rows if r["advert_int"] == advert and r["scenario"] == "holder crash"), None)
        label = f"keepalived stateful holder crash (advert_int {advert:g} s), stock gap ≤ VIP move + 0.3 s"
        if crash is None:
            out.append((label, f"not measured: {why}", "not measured"))
        else:
            over = [None if x["gap_s"] is None else x["gap_s"] - x["vip_moved_s"] for x in crash["runs"]]
            worst = max((o for o in over if o is not None), default=None)
            text = f"gap − VIP move: max {worst:.2f} s" if worst is not None else "no traffic"
            out.append((label, f"{text} (n={len(over)})",
                        verdict(None not in over and worst is not None and worst <= 0.3)))
    return out


def _stateful_targets(results: dict[str, Any], verdict: Any) -> list[tuple[str, str, str]]:
    """Stateful mode: the stock client's gaps, and the takeover of many synced SAs."""
    out = []
    rows = _rows(results, "stateful")
    why = _reason(results, "stateful") or "no data"
    planned = next((r for r in rows if r["setup"] == "stateful-stock" and r["scenario"] == "planned move"), None)
    label = "stateful planned move, stock client gap ≤ 0.3 s"
    if planned is None:
        out.append((label, f"not measured: {why}", "not measured"))
    else:
        gaps = [x["gap_s"] for x in planned["runs"]]
        out.append((label, f"max {max(gaps):.2f} s (n={len(gaps)})", verdict(max(gaps) <= 0.3)))
    crash = next((r for r in rows if r["setup"] == "stateful-stock" and r["scenario"] == "holder crash"), None)
    label = "stateful holder crash, stock client gap ≤ VIP move + 0.3 s"
    if crash is None:
        out.append((label, f"not measured: {why}", "not measured"))
    else:
        over = [x["gap_s"] - x["vip_moved_s"] for x in crash["runs"]]
        out.append((label, f"gap − VIP move: max {max(over):.2f} s (n={len(over)})", verdict(max(over) <= 0.3)))
    t = results.get("takeover") if isinstance(results.get("takeover"), dict) else None
    n = (t or {}).get("n", 1000)
    label = f"takeover of {n} synced SAs: all rekeyed ≤ 2 s after promote"
    if not t or t.get("available") is False or t.get("all_rekeyed_s") is None:
        out.append((label, f"not measured: {_reason(results, 'takeover') or 'no data'}", "not measured"))
    else:
        out.append((label, f"{t['all_rekeyed_s']:.2f} s (promote {t['promote_s']:.2f} s; traffic both ways in "
                    f"{t['traffic_sample']} sampled tunnels)", verdict(t["all_rekeyed_s"] <= 2.0)))
    return out


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    sizes = results.get("sizes", [])
    lines = [f"Measured {results['date']} on {m['cpu']}, {m['nproc']} CPUs, kernel {m['kernel']}, "
             f"Python {m['python']}, strongSwan {m['strongswan']}; load average {m['loadavg_start']:.2f} at the "
             f"start, {m.get('loadavg_end', 0):.2f} at the end (other jobs shared the machine: compare ratios, "
             "not absolutes). "
             f"`make bench` took {results.get('total_seconds', 0):.0f} s.", "",
             "**Targets**", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(results)]
    n = results.get("runs")
    lines += ["", f"**Agent actions**, whole process (fork+exec as pacemaker-execd does), ms median / p90 of {n} runs "
              "after a warm-up. ipsec-vip and the swanctl agent manage all N connections in one resource; the "
              "upstream agent manages one tunnel (rw-0001) while pluto holds N.", ""]
    up_reason = _reason(results, "upstream")
    up_head = UPSTREAM + " + libreswan" if not up_reason else f"{UPSTREAM} (not measured: {up_reason})"
    lines += [f"| action | conns | ipsec-vip | swanctl-agent.sh | {up_head} | ours ÷ swanctl | ours ÷ upstream |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    agents_reason = _reason(results, "agents")
    if agents_reason:
        lines.append(f"| all | — | not measured: {agents_reason} | | | | |")
    for action in ("monitor", "start", "stop"):
        for c in sizes:
            o, s, u = (_agent_row(results, a, action, c) for a in (OURS, SHELL, UPSTREAM))
            lines.append(f"| {action} | {c} | {_cell(o)} | {_cell(s)} | {_cell(u)} | {_ratio(_med(o), _med(s))} | "
                         f"{_ratio(_med(o), _med(u))} |")
    for c in sizes[:1]:
        md = _agent_row(results, OURS, "meta-data", c)
        if md:
            lines.append(f"| meta-data (floor: start-up + imports) | any | {_cell(md)} | | | | |")
    lines += ["", "**Agent-side CPU**, ms (median user+system time of the agent and every process it forks, "
              "not of charon/pluto; much less disturbed by other load than wall time).", "",
              f"| action | conns | ipsec-vip | swanctl-agent.sh | {UPSTREAM} | ours ÷ swanctl | ours ÷ upstream |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for action in ("monitor", "start", "stop"):
        for c in sizes:
            o, s, u = (_cpu(_agent_row(results, a, action, c)) for a in (OURS, SHELL, UPSTREAM))
            cells = " | ".join("—" if v is None else f"{v:.1f}" for v in (o, s, u))
            lines.append(f"| {action} | {c} | {cells} | {_ratio(o, s)} | {_ratio(o, u)} |")
    md_row = _agent_row(results, OURS, "meta-data", sizes[0]) if sizes else None
    if md_row and md_row.get("cpu_median") is not None:
        lines.append(f"| meta-data | any | {md_row['cpu_median']:.1f} | | | | |")
    fl = results.get("floors", [])
    if fl:
        lines += ["", "Start-up floors (wall / CPU ms): " + "; ".join(
            f"{r['what']} {r['median']:.1f} / {r.get('cpu_median') or 0:.1f}" for r in fl) + "."]
    for n, text in sorted(results.get("importtime", {}).items(), key=lambda kv: int(kv[0])):
        top = "; ".join(" ".join(line.split()[::-1][:1] + line.split()[:2]) for line in text.splitlines()[:8])
        lines += ["", f"Imports of ours' monitor (`python -X importtime`, cumulative, @{n}): {top}."]
    lines += ["", "**Load throughput**: connections loaded per second (median run).", "",
              "| conns | how | median / p90 ms | conns/s |", "|---:|---|---:|---:|"]
    lr = _reason(results, "load")
    if lr:
        lines.append(f"| — | not measured: {lr} | | |")
    for r in _rows(results, "load"):
        if r["what"] == "library: control.stop":
            continue
        lines.append(f"| {r['conns']} | {r['what']} ({r['process']}) | {_cell(r)} | {r.get('conns_per_s') or '—'} |")
    for c in sizes:
        o = _agent_row(results, OURS, "start", c)
        if o and c > 1:
            lines.append(f"| {c} | ocf:ipsec-vip:strongswan start (whole process) | {_cell(o)} | "
                         f"{round(c / (o['median'] / 1000)) if o['median'] else '—'} |")
    lines += ["", "**Reaction**: address event → connections listed by charon (ms, median / p90; timed from just "
              "before the `ip addr` or the charon restart, polled with get-conns every 2 ms).", "",
              "| what | conns | median / p90 ms |", "|---|---:|---:|"]
    wr = _reason(results, "watch")
    if wr:
        lines.append(f"| ipsec-vip watch | — | not available: {wr} |")
    for key in ("watch", "keepalived"):
        for r in _rows(results, key):
            extra = f" ({'; '.join(r['problems'])})" if r.get("problems") else ""
            lines.append(f"| {r['what']}{extra} | {r['conns']} | {_cell(r)} |")
    kr = _reason(results, "keepalived")
    if kr:
        lines.append(f"| charon restart + swanctl --load-all | — | not measured: {kr} |")
    lines += ["", "**Failover** on the two-node Pacemaker lab (corosync token 1000 ms) and on the keepalived pair "
              "(`ipsec-vip watch` beside keepalived; the client is never re-initiated by the harness). "
              "Gap = longest silence of a 20 ms UDP probe through the tunnel.", "",
              "| setup | scenario | client gap: each run (s) | VIP moved after (s) |", "|---|---|---|---|"]
    fr = _reason(results, "failover")
    if fr:
        lines.append(f"| — | not measured: {fr} | | |")
    for r in _rows(results, "failover") + _rows(results, "stateful") + _rows(results, "vrrp"):
        if "client" in r:  # the keepalived pair
            setup = f"{r['setup']}, {r['client']} client"
        else:
            setup = {OURS: "ocf:ipsec-vip:strongswan",
                     "stateful-stock": "stateful (promotable clone + ha plugin), stock client",
                     "stateful-tuned": "stateful (promotable clone + ha plugin), tuned client"}.get(
                         r["setup"], "DPD-only baseline (conns on both nodes, only the VIP moves)")
        gaps = ", ".join(("stranded" if x.get("gap_s") is None else f"{x['gap_s']:.2f}")
                         + (" (DC died)" if x.get("dc_crashed") else "")
                         + (" (new IKE_SA)" if x.get("kept_ike_sa") is False and x.get("gap_s") is not None
                            else "") for x in r["runs"])
        moved = ", ".join(f"{x['vip_moved_s']:.2f}" for x in r["runs"])
        lines.append(f"| {setup} | {r['scenario']} | {gaps} | {moved} |")
    vr = _reason(results, "vrrp")
    if vr:
        lines.append(f"| keepalived pair | not measured: {vr} | | |")
    for f in results.get("vrrp", {}).get("failed", []) if isinstance(results.get("vrrp"), dict) else []:
        lines.append(f"| {f['setup']} | not measured: {f['reason']} | | |")
    if "fleet" in results:
        lines += fleet_table(results)
    lines += ["", "**ipsec-vip mesh** at scale (ms, median / p90).", "", "| what | median / p90 ms |",
              "|---|---:|"]
    mr = _reason(results, "mesh")
    if mr:
        lines.append(f"| not measured: {mr} | |")
    lines += [f"| {r['what']} | {_cell(r)} |" for r in _rows(results, "mesh")]
    if isinstance(results.get("upstream"), dict) and results["upstream"].get("versions"):
        lines += ["", f"Upstream peer: {results['upstream']['versions']} in a Debian 12 root (chroot inside a "
                  "namespace). Section times (s): " + ", ".join(f"{k} {v}" for k, v in
                                                               results.get("section_seconds", {}).items()) + "."]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """Every picture: the agents' scaling curves (median ms against connections) and the fleet's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results.get("sizes", [])
    if not any(_med(_agent_row(results, agent, action, c)) is not None for agent in (OURS, SHELL, UPSTREAM)
               for action in ("monitor", "start", "stop") for c in sizes):
        return fleet_plots(results, out)  # agents not measured in this run: the last curves stay
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, action in zip(axes, ("monitor", "start", "stop")):
        for agent in (OURS, SHELL, UPSTREAM):
            pts = [(c, _med(_agent_row(results, agent, action, c))) for c in sizes]
            pts = [(c, v) for c, v in pts if v is not None]
            if pts:
                label = f"{agent} (one tunnel of N)" if agent == UPSTREAM else agent
                ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(action)
        ax.set_xlabel("connections loaded")
        ax.set_ylabel("ms (median, whole process)")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"agent actions, {results['date']}")
    fig.tight_layout()
    path = out / "latest.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path.name, *fleet_plots(results, out)]


def main(argv: list[str]) -> int:
    """``python -m bench.report RESULTS.json``: redraw the table and the pictures."""
    import json

    path = Path(argv[1] if len(argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    results = json.loads(path.read_text())
    md = markdown(results)
    path.with_suffix(".md").write_text(md)
    print(md)
    print("drawn:", ", ".join(plots(results, path.parent)))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))


# --------------------------------------------------------------------------- the fleet (part 6)
def _fleet_row(results: dict[str, Any], n: int, mode: str, scenario: str) -> dict[str, Any] | None:
    return next((r for r in _rows(results, "fleet") if r.get("n") == n and r.get("mode") == mode
                 and r.get("scenario") == scenario and "failed" not in r), None)


def _gaps(r: dict[str, Any]) -> tuple[float, float]:
    g = sorted(r.get("gaps") or [float("inf")])
    return g[len(g) // 2], g[-1]


def _kept(r: dict[str, Any]) -> str:
    return (f"IKE_SAs lost {r['lost_ike']}, no round trip {r['no_round_trip']}, duplicate virtual IPs "
            f"{r['duplicate_vips']}, joined {r['joined_ok']}/{r['joined']}")


def fleet_targets(results: dict[str, Any], verdict: Any) -> list[tuple[str, str, str]]:
    """Issue 19's targets at the largest fleet measured (1000 by default)."""
    sizes = (results.get("fleet") or {}).get("sizes") or [1000] if isinstance(results.get("fleet"), dict) else [1000]
    n = max(sizes)
    why = _reason(results, "fleet") or "no data"
    out: list[tuple[str, str, str]] = []
    move = _fleet_row(results, n, "stateful", "move")
    label = (f"fleet N={n}, stateful `pcs resource move --promoted`: every IKE_SA kept, no duplicate virtual IP, "
             "sampled gap median ≤ 0.5 s and max ≤ 1.0 s, all CHILD_SAs rekeyed ≤ 2 s after promote")
    if move is None:
        out.append((label, f"not measured: {why}", "not measured"))
    else:
        med, mx = _gaps(move)
        rk = move.get("extra", {}).get("all_rekeyed_after_promote_s")
        out.append((label, f"gap median {med:.2f} s, max {mx:.2f} s; rekeyed {rk if rk is not None else '—'} s; "
                    f"{_kept(move)}", verdict(move["ok"] and med <= 0.5 and mx <= 1.0 and rk is not None and rk <= 2)))
    standby = _fleet_row(results, n, "stateful", "standby")
    label = f"fleet N={n}, stateful `pcs node standby`: max gap ≤ the move's + 0.3 s, every copy back after unstandby"
    if standby is None or move is None:
        out.append((label, f"not measured: {why}", "not measured"))
    else:
        smed, smx = _gaps(standby)
        copies = standby.get("extra", {}).get("copies", "—")
        out.append((label, f"gap median {smed:.2f} s, max {smx:.2f} s (move {_gaps(move)[1]:.2f} s); copies "
                    f"{copies}; {_kept(standby)}",
                    verdict(standby["ok"] and smx <= _gaps(move)[1] + 0.3 and _complete(copies))))
    crash = _fleet_row(results, n, "stateful", "crash")
    label = f"fleet N={n}, stateful crash of the promoted node: max gap ≤ VIP move + 1.0 s, every IKE_SA kept"
    if crash is None:
        out.append((label, f"not measured: {why}", "not measured"))
    else:
        _, mx = _gaps(crash)
        vip = crash.get("vip_moved") or 0.0
        copies = crash.get("extra", {}).get("copies", "—")
        out.append((label, f"gap max {mx:.2f} s, VIP moved after {vip:.2f} s; rejoined copies {copies}; "
                    f"{_kept(crash)}", verdict(crash["ok"] and mx <= vip + 1.0 and _complete(copies))))
    prim = _fleet_row(results, n, "primitive", "move")
    label = f"fleet N={n}, primitive handoff=redirect move, stock clients: all back ≤ 15 s, none stranded"
    if prim is None:
        out.append((label, f"not measured: {why}", "not measured"))
    else:
        est = prim.get("extra", {}).get("established_after_s") or []
        last = est[-1] if len(est) >= prim["n"] else None
        out.append((label, f"{len(est)}/{prim['n']} re-established on the new holder, last after "
                    f"{last if last is not None else '—'} s; {_kept(prim)}",
                    verdict(prim["ok"] and last is not None and last <= 15)))
    small = min(sizes)
    for role in ("promoted", "unpromoted"):
        if small == n:
            out.append((f"stateful monitor ({role}) @{n} SAs ≤ 2× at fewer SAs", "not measured: one fleet size",
                        "not measured"))
            continue
        a = ((_fleet_row(results, small, "stateful", "move") or {}).get("monitor") or {}).get(role, {})
        b = ((move or {}).get("monitor") or {}).get(role, {})
        pa = ((_fleet_row(results, small, "primitive", "move") or {}).get("monitor") or {}).get("started", {})
        pb = ((prim or {}).get("monitor") or {}).get("started", {})
        label = f"stateful monitor ({role}) @{n} SAs ≤ 2× @{small}, the digest's full looks included"
        if _mean_ms(a) and _mean_ms(b):
            ratio = _ratio(_mean_ms(b), _mean_ms(a))
            prim_ms = f"primitive {_mean_ms(pb) or '—'} vs {_mean_ms(pa) or '—'} ms"
            parts = f"; a full look {b['full_ms']} ms, 1 in {b['full_every']}" if b.get("full_ms") else ""
            out.append((label, f"{_mean_ms(b):.1f} vs {_mean_ms(a):.1f} ms ({ratio}{parts}; {prim_ms})",
                        verdict(_mean_ms(b) <= 2 * _mean_ms(a))))
        else:
            out.append((label, f"not measured: {why}", "not measured"))
    return out


def _mean_ms(cost: dict[str, Any]) -> float | None:
    """A monitor's mean cost at the recipe's intervals (older results: the median)."""
    return cost.get("mean_ms") or cost.get("median_ms")


def _complete(copies: str) -> bool:
    have, _, want = str(copies).partition("/")
    return have.isdigit() and want.isdigit() and int(have) >= int(want)


def fleet_table(results: dict[str, Any]) -> list[str]:
    lines = ["", "**Fleet** through Pacemaker (`lab/fleet.py`): N stock clients, each its own identity, source "
             "address and virtual IP; 20 sampled clients probe every 20 ms; after each event every IKE_SA, a round "
             "trip through every tunnel and the virtual IPs are checked and 5 new clients join. Gap: sampled "
             "clients' longest silence. Re-established: when the last client's CHILD_SA was (re)established on "
             "the new holder (gateway log). Back in sync: the undo (unstandby, clear, reboot) until the standby "
             "holds every copy.", "",
             "| N | mode | event | VIP moved (s) | gap median / max (s) | re-established, last (s) | rekeyed after "
             "promote (s) | promote began (s) | old node stop (s) | IKE_SAs lost | no round trip | dup. vIPs | "
             "joined | back in sync (s), copies |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    why = _reason(results, "fleet")
    if why:
        lines.append(f"| — | not measured: {why} | | | | | | | | | | | | |")
    for r in _rows(results, "fleet"):
        if "failed" in r:
            lines.append(f"| {r['n']} | {r['mode']} | {r['scenario']} failed: {r['failed']} | | | | | | | | | | | |")
            continue
        med, mx = _gaps(r)
        ex = r.get("extra", {})
        est = ex.get("established_after_s") or []
        dst = next((k.split("@")[1] for k in ex if k.startswith("promote@") or k.startswith("start@")), None)
        src = next((k.split("@")[1] for k in ex if k.startswith("stop@")), None)
        promote = (ex.get(f"promote@{dst}") or {}).get("start") if dst else None
        stop = ex.get(f"stop@{src}") if src else None
        late = f" ({ex['round_trip_only_on_recheck']} only 10 s later)" if ex.get("round_trip_only_on_recheck") else ""
        stop_s = f"{stop['end'] - stop['start']:.2f}" if stop and "end" in stop and "start" in stop else "—"
        lines.append(
            f"| {r['n']} | {r['mode']} | {r['scenario']} | {r.get('vip_moved') or 0:.2f} | {med:.2f} / {mx:.2f} | "
            f"{est[-1] if est else '—'} ({len(est)}) | {ex.get('all_rekeyed_after_promote_s', '—')} | "
            f"{promote if promote is not None else '—'} | {stop_s} | {r['lost_ike']} | {r['no_round_trip']}{late} | "
            f"{r['duplicate_vips']} | {r['joined_ok']}/{r['joined']} | {ex.get('back_in_sync_s', '—')}, "
            f"{ex.get('copies', '—')} |")
    pair = [_per_pair(r) for r in _rows(results, "fleet") if r.get("scenario") == "move" and r.get("setup")]
    if pair:
        lines += ["", "Per pair (the cluster built, N clients connected, charon's resident memory growth per "
                  "connected SA; stateful: until the standby held every copy): " + "; ".join(pair) + "."]
    mon = [(r["n"], r["mode"], role, v) for r in _rows(results, "fleet") if r.get("scenario") == "move"
           for role, v in (r.get("monitor") or {}).items()]
    if mon:
        lines += ["", "Monitor as Pacemaker runs it, inside the node (ms, median of 10: a look between two full ones / "
                  "a full look, every SA listed / the mean at the recipe's intervals; exit codes): " + "; ".join(
                      f"{mode} {role} @{n}: {v.get('median_ms')} / {v.get('full_ms', '—')} / {v.get('mean_ms', '—')} "
                      f"ms rc {v.get('rc')}" for n, mode, role, v in mon) + "."]
    return lines


def _per_pair(r: dict[str, Any]) -> str:
    setup = r["setup"]
    kb = ", ".join(f"{node} {v} kB" for node, v in sorted((setup.get("charon_kb_per_sa") or {}).items()))
    synced = f", synced after {setup['synced_s']} s" if "synced_s" in setup else ""
    return f"{r['mode']} @{r['n']}: connected in {setup.get('connect_s', '—')} s{synced}, per SA {kb}"


def fleet_plots(results: dict[str, Any], out: Path) -> list[str]:
    """fleet-gaps.png (gap against N per scenario) and fleet-timeline.png (at the largest N:
    how many clients were back, against time since the event)."""
    rows = [r for r in _rows(results, "fleet") if "failed" not in r]
    if not rows:
        return []
    import matplotlib.pyplot as plt  # matplotlib.use("Agg"): plots()

    drawn = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["mode"], r["scenario"]) for r in rows}):
        pts = sorted((r["n"], _gaps(r)[1], _gaps(r)[0]) for r in rows if (r["mode"], r["scenario"]) == key)
        pts = [p for p in pts if p[1] != float("inf")]
        if pts:
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} {key[1]} (max)")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], marker=".", linestyle=":", color=line[0].get_color())
    ax.set_xscale("log")
    drawn.append(_save(fig, ax, out / "fleet-gaps.png", "clients (N)",
                       "sampled clients' gap, s (solid max, dotted median)",
                       f"failover gap against fleet size, {results['date']}"))
    n = max(r["n"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in rows if r["n"] == n):
        est = (r.get("extra") or {}).get("established_after_s") or []
        if est:
            ax.step(est, range(1, len(est) + 1), where="post", label=f"{r['mode']} {r['scenario']}")
            if r.get("vip_moved"):
                ax.axvline(r["vip_moved"], linestyle=":", linewidth=0.8, color=ax.lines[-1].get_color())
    drawn.append(_save(fig, ax, out / "fleet-timeline.png",
                       "seconds since the event (dotted: VIP arrived on the new holder)",
                       "clients back (CHILD_SA on the new holder)",
                       f"N={n}: when each client's traffic resumed, {results['date']}"))
    return drawn


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> str:
    """Label, grid and legend one fleet picture, write it; returns its file name."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name
