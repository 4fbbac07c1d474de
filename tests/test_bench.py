"""The benchmark's arithmetic and verdicts (no daemons): a part that was not measured must never
read as met, and the statistics are the documented ones."""

from __future__ import annotations

from bench import common, report


def test_summary_median_and_nearest_rank_p90():
    s = common.summary([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert s["n"] == 10
    assert s["median"] == 5.5  # mean of the middle two
    assert s["p90"] == 9.0  # rank ceil(0.9 * 10) = 9
    assert (s["min"], s["max"]) == (1.0, 10.0)
    assert common.summary([])["median"] is None


def test_row_drops_the_warm_up_and_counts_failures():
    r = common.row([(100.0, 0, 90.0), (2.0, 0, 1.0), (3.0, 1, 2.0), (4.0, 0, 3.0)], agent="x")
    assert r["n"] == 3 and r["median"] == 3.0 and r["errors"] == 1 and r["cpu_median"] == 2.0


def test_swanctl_conf_has_n_vip_bound_connections():
    text = common.swanctl_conf(3)
    assert text.count("local_addrs = 192.0.2.100") == 3
    assert "rw-0003 {" in text and "rw-0004" not in text


def _agent(agent: str, action: str, conns: int, median: float) -> dict:
    return {"agent": agent, "action": action, "conns": conns, "median": median, "p90": median, "errors": 0,
            "cpu_median": median}


def _results(**parts) -> dict:
    base = {"date": "d", "sizes": [1, 1000], "runs": 20, "skipped": [],
            "machine": {"cpu": "c", "nproc": 2, "kernel": "k", "python": "p", "strongswan": "s",
                        "loadavg_start": 0.0, "loadavg_end": 0.0}}
    return {**base, **parts}


def test_missing_parts_are_not_measured_never_met():
    v = report.targets(_results(upstream={"available": False, "reason": "debootstrap failed", "rows": []},
                                watch={"available": False, "reason": "no watch", "rows": []}))
    assert all(verdict == "not measured" for _, _, verdict in v)
    md = report.markdown(_results(upstream={"available": False, "reason": "debootstrap failed", "rows": []}))
    assert "not measured: debootstrap failed" in md


def test_targets_against_numbers():
    agents = [_agent("ipsec-vip", "monitor", 1, 20.0), _agent("ipsec-vip", "monitor", 1000, 23.0),
              _agent("ipsec-vip", "start", 1000, 150.0)]
    upstream = {"available": True, "rows": [_agent("ocf:heartbeat:ipsec", "monitor", 1, 5.0)]}
    load = [{"what": "swanctl --load-conns", "conns": 1000, "median": 160.0, "p90": 170.0}]
    v = {t: verdict for t, _, verdict in report.targets(_results(agents=agents, upstream=upstream, load=load))}
    assert v["monitor ≤ 25 ms median"] == "**met**"
    assert v["monitor flat: @1000 ≤ 1.1× @1"] == "**not met**"  # 23 > 22
    assert v["monitor ≤ 5× upstream @1 tunnel"] == "**met**"  # 4 times
    assert v["start @1000 conns ≤ 1.0× swanctl --load-conns of the same file"] == "**met**"


def test_libreswan_root_names_no_mirror_of_its_own():
    """The mirror comes from the host's apt sources (or MIRROR), never a hard-coded host."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "libreswan-root.sh"
    code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "://" in line]


def test_stateful_targets():
    def runs(*pairs):
        return [{"gap_s": g, "vip_moved_s": v, "kept_ike_sa": True} for g, v in pairs]

    stateful = {"available": True, "rows": [
        {"setup": "stateful-stock", "scenario": "planned move", "runs": runs((0.25, 1.0), (0.31, 1.2))},
        {"setup": "stateful-stock", "scenario": "holder crash", "runs": runs((3.4, 3.2), (3.1, 2.9))}]}
    v = {t: (m, verdict) for t, m, verdict in report.targets(_results(
        stateful=stateful, takeover={"n": 1000, "promote_s": 0.4, "all_rekeyed_s": 1.9, "traffic_sample": "5/5"}))}
    assert v["stateful planned move, stock client gap ≤ 0.3 s"][1] == "**not met**"  # 0.31
    assert v["stateful holder crash, stock client gap ≤ VIP move + 0.3 s"][1] == "**met**"  # 0.2 over
    assert v["takeover of 1000 synced SAs: all rekeyed ≤ 2 s after promote"][1] == "**met**"
    missing = {t: verdict for t, _, verdict in report.targets(_results(
        stateful={"available": False, "reason": "no ha plugin", "rows": []}))}
    assert all(missing[t] == "not measured" for t in missing if "stateful" in t or "takeover" in t)
    md = report.markdown(_results(stateful=stateful))
    assert "stateful (promotable clone + ha plugin), stock client | planned move | 0.25, 0.31" in md


def test_keepalived_targets_per_advert_int():
    def row(scenario, advert, *runs):
        return {"setup": f"keepalived stateful (advert_int {advert:g} s, multicast)", "mode": "stateful",
                "advert_int": advert, "vrrp": "multicast", "client": "stock", "scenario": scenario,
                "runs": [{"gap_s": g, "vip_moved_s": v, "kept_ike_sa": k} for g, v, k in runs]}

    vrrp = {"rows": [row("planned move", 1.0, (0.31, 0.07, True), (0.45, 0.08, True)),
                     row("holder crash", 1.0, (2.6, 2.4, True), (3.3, 2.9, True)),  # 0.4 over: not met
                     row("planned move", 0.2, (0.2, 0.02, True), (0.2, 0.02, False)),  # an IKE_SA lost: not met
                     row("holder crash", 0.2, (None, 0.6, False),)], "failed": []}  # stranded: not met
    v = {t: verdict for t, _, verdict in report.targets(_results(vrrp=vrrp))}
    assert v["keepalived stateful planned move (advert_int 1 s), stock gap ≤ 0.5 s, IKE_SA kept"] == "**met**"
    assert v["keepalived stateful holder crash (advert_int 1 s), stock gap ≤ VIP move + 0.3 s"] == "**not met**"
    assert v["keepalived stateful planned move (advert_int 0.2 s), stock gap ≤ 0.5 s, IKE_SA kept"] == "**not met**"
    assert v["keepalived stateful holder crash (advert_int 0.2 s), stock gap ≤ VIP move + 0.3 s"] == "**not met**"
    md = report.markdown(_results(vrrp=vrrp))
    assert "keepalived stateful (advert_int 0.2 s, multicast), stock client | holder crash | stranded | 0.60" in md
    missing = {t: verdict for t, _, verdict in report.targets(_results(
        vrrp={"available": False, "reason": "no keepalived", "rows": []}))}
    assert [missing[t] for t in missing if "keepalived" in t] == ["not measured", "not measured"]


def _fleet_row(n: int, mode: str, scenario: str, gaps: list[float], vip: float = 1.0, **extra) -> dict:
    return {"n": n, "mode": mode, "scenario": scenario, "label": f"{mode} {scenario}", "ok": True, "gaps": gaps,
            "resumed": gaps, "vip_moved": vip, "lost_ike": 0, "no_round_trip": 0, "duplicate_vips": 0,
            "joined": 5, "joined_ok": 5, "extra": {"copies": f"{n}/{n}", **extra},
            "monitor": {"promoted": {"median_ms": 60.0 if n == 1 else 70.0, "full_ms": 60.0 if n == 1 else 160.0,
                                     "mean_ms": 60.0 if n == 1 else 100.0, "full_every": 3, "rc": [8]},
                        "unpromoted": {"median_ms": 60.0 if n == 1 else 150.0, "rc": [0]},
                        "started": {"median_ms": 40.0, "rc": [0]}}}


def _fleet(n: int = 1000) -> dict:
    rows = []
    for size in (1, n):
        rows += [_fleet_row(size, "stateful", "move", [0.3, 0.4, 0.9], all_rekeyed_after_promote_s=1.5,
                            established_after_s=[1.0, 2.0]),
                 _fleet_row(size, "stateful", "standby", [0.5, 1.3], established_after_s=[1.5, 2.5]),
                 _fleet_row(size, "stateful", "crash", [2.5, 3.5], vip=2.0, established_after_s=[2.2, 3.0]),
                 _fleet_row(size, "primitive", "move", [3.8, 4.0], established_after_s=[5.0] * size)]
    return {"rows": rows, "sizes": [1, n], "sample": 20}


def test_fleet_verdicts_follow_the_issue_targets():
    v = {t.split(":")[0]: (m, verdict) for t, m, verdict in report.targets(_results(fleet=_fleet()))}
    assert v["fleet N=1000, stateful `pcs resource move --promoted`"][1] == "**met**"
    assert v["fleet N=1000, stateful `pcs node standby`"][1] == "**not met**"  # 1.3 > 0.9 + 0.3
    assert v["fleet N=1000, stateful crash of the promoted node"][1] == "**not met**"  # 3.5 > 2.0 + 1.0
    assert v["fleet N=1000, primitive handoff=redirect move, stock clients"][1] == "**met**"
    full = ", the digest's full looks included"
    assert v[f"stateful monitor (promoted) @1000 SAs ≤ 2× @1{full}"] == (
        "100.0 vs 60.0 ms (1.67×; a full look 160.0 ms, 1 in 3; primitive 40.0 vs 40.0 ms)", "**met**")  # the mean
    assert v[f"stateful monitor (unpromoted) @1000 SAs ≤ 2× @1{full}"][1] == "**not met**"  # 150 vs 60: no mean


def test_fleet_lost_clients_fail_and_a_failed_size_is_not_measured():
    fleet = _fleet()
    fleet["rows"][4]["lost_ike"], fleet["rows"][4]["ok"] = 3, False  # the move at 1000
    v = {t.split(":")[0]: verdict for t, _, verdict in report.targets(_results(fleet=fleet))}
    assert v["fleet N=1000, stateful `pcs resource move --promoted`"] == "**not met**"
    failed = {"rows": [{"n": 1000, "mode": "stateful", "scenario": "all", "failed": "RuntimeError: x"}],
              "sizes": [1000]}
    v = {t.split(":")[0]: verdict for t, _, verdict in report.targets(_results(fleet=failed))}
    assert all(v[k] == "not measured" for k in v if k.startswith(("fleet", "stateful monitor")))
    assert "failed: RuntimeError: x" in report.markdown(_results(fleet=failed))
    failed["rows"] = [{"n": 10000, "mode": "stateful", "scenario": "move", "failed": "RuntimeError: y",
                       "setup": {"connect_s": 452.0, "synced_s": 480.0,
                                 "charon_kb_per_sa": {"gw1": 30.1, "gw2": 27.9}}}]
    md = report.markdown(_results(fleet=failed))  # the event failed: what the setup measured still stands
    assert "move failed: RuntimeError: y" in md
    assert "stateful @10000: connected in 452.0 s, synced after 480.0 s, per SA gw1 30.1 kB, gw2 27.9 kB" in md


def test_fleet_pictures_are_drawn(tmp_path):
    drawn = report.fleet_plots(_results(fleet=_fleet()), tmp_path)
    assert drawn == ["fleet-gaps.png", "fleet-timeline.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in drawn)


def test_a_run_without_the_agents_keeps_their_last_picture(tmp_path):
    """A fleet-only run (BENCH_SKIP=agents,...) draws the fleet and leaves latest.png as it was."""
    (tmp_path / "latest.png").write_bytes(b"the last curves")
    assert report.plots(_results(fleet=_fleet()), tmp_path) == ["fleet-gaps.png", "fleet-timeline.png"]
    assert (tmp_path / "latest.png").read_bytes() == b"the last curves"


def test_fleet_per_pair_figures_are_reported():
    fleet = _fleet()
    fleet["rows"][4]["setup"] = {"connect_s": 5.5, "synced_s": 5.6, "charon_kb_per_sa": {"gw2": 27.7, "gw1": 30.7}}
    md = report.markdown(_results(fleet=fleet))
    assert "stateful @1000: connected in 5.5 s, synced after 5.6 s, per SA gw1 30.7 kB, gw2 27.7 kB" in md
