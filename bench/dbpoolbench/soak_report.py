"""bench/soak's report: what the run recorded, judged against the
thresholds (analyse), and the Markdown report of the result (render)."""
import datetime

from . import proc, stats
from .soak_streams import EXPECTED_CODES, STALL_S
from .stats import median
from .text import figure


def analyse(meta, raw):
    """The result document of a soak run. meta: started_utc, t0 (start of
    traffic), settings, streams, restarts_planned, watch_alive, watch_exit,
    watch_stderr, server_alive, versions, server_log. raw, what the run
    recorded: windows, samples, restarts, watch (snapshots), conncheck,
    stalls, and stream_report(n, name) -> (bench report or None, stderr)."""
    st = meta["settings"]
    t0 = meta["t0"]
    restarts = raw["restarts"]
    for i, r in enumerate(restarts):
        r["n"] = i + 1
    near = Nearness(restarts, raw["stalls"], st["grace_s"])
    win = window_records(meta, raw, near)
    measured = [w for w in win["windows"] if not w["warmup"]]
    timeline, server_by_code = server_error_timeline(raw["samples"])
    server_near = sum(sum(d.values()) for lo, hi, d in timeline if near.restart(lo, hi))
    server_in_stalls = sum(sum(d.values()) for lo, hi, d in timeline
                           if not near.restart(lo, hi) and near.stall(lo, hi))
    strays = [{"at_s": round(hi - t0, 1), "codes": d} for lo, hi, d in timeline
              if not near.restart(lo, hi) and not near.stall(lo, hi)]
    res = resources(raw["samples"], measured, t0, st, near)
    watch = watch_record(meta, raw["watch"], near)
    last_traffic = raw["windows"][-1]["end"] if raw["windows"] else t0
    errors = {"server_stray": sum(sum(x["codes"].values()) for x in strays),
              "client_stray": sum(w["unexpected_total"] for w in win["windows"]
                                  if not w["near_restart"] and not w["near_stall"]),
              "server_in_stalls": server_in_stalls}
    rest = restart_records(restarts, timeline, raw["samples"], t0, st, near)
    failures = [f"restart {r['n']} failed (pg_ctl exit {r['rc']})" for r in rest if r["rc"] != 0]
    checks, failed_checks = judge(meta, raw, win, measured, res, watch, errors, last_traffic)
    failures += failed_checks
    if len(restarts) < meta["restarts_planned"]:
        failures.append(f"restarts done {len(restarts)} of {meta['restarts_planned']} planned")
    return {
        "started_utc": meta["started_utc"], "versions": meta["versions"], "settings": st,
        "streams": meta["streams"], "passed": not failures, "failures": failures,
        "checks": checks,
        "duration_s": round(last_traffic - t0, 1), "windows_count": len(win["windows"]),
        "restarts_planned": meta["restarts_planned"], "restarts_done": len(restarts),
        "totals": win["totals"], "stream_totals": win["stream_totals"],
        "server_unexpected_errors": {"total": sum(server_by_code.values()),
                                     "by_code": server_by_code,
                                     "within_grace_of_restart": server_near,
                                     "during_machine_stalls": server_in_stalls,
                                     "away_from_restarts_and_stalls": errors["server_stray"],
                                     "strays": strays[:50]},
        "client_unexpected_errors_in_calm_windows": errors["client_stray"],
        "machine_stalls": [{"at_s": round(x["end"] - x["late_s"] - t0, 1), "late_s": x["late_s"]}
                           for x in raw["stalls"]],
        "restarts": rest,
        "resources": {"start": res["start"], "end": res["end"], "max": res["max"],
                      "rss_trend_mib_per_hour": res["rss_trend_mib_per_hour"],
                      "pg_conns_max_all": res["pg_conns_max_all"]},
        "latency_drift": latency_drift(meta["streams"], measured), "watch": watch["record"],
        "conncheck": raw["conncheck"],
        "server_log": meta.get("server_log", {}),
        "bench_problems": win["bench_problems"], "pool_stream_errors": win["pool_stream_errors"],
        "windows": win["windows"],
        "pool_end": next((x["metrics"] for x in reversed(raw["samples"]) if x.get("metrics")),
                         None),
    }


class Nearness:
    """Whether a time span touches a restart, from its start (less a second
    of sampling slack) to SOAK_GRACE after PostgreSQL is back, or a machine
    stall, from its start (less a second) to SOAK_GRACE after it, when the
    calls that piled up meanwhile have been answered."""

    def __init__(self, restarts, stalls, grace):
        self.restarts = [(r["begin"] - 1, r["back"] + grace) for r in restarts]
        self.stalls = [(x["end"] - x["late_s"] - 1, x["end"] + grace) for x in stalls]

    @staticmethod
    def _touches(spans, lo, hi):
        return any(lo <= s_hi and hi >= s_lo for s_lo, s_hi in spans)

    def restart(self, lo, hi):
        return self._touches(self.restarts, lo, hi)

    def stall(self, lo, hi):
        return self._touches(self.stalls, lo, hi)


def add_counts(into, counts):
    for c, v in counts.items():
        into[c] = into.get(c, 0) + v


def window_records(meta, raw, near):
    """Per window, from the clients' reports and the samples taken in it;
    with the totals over windows and streams, and the bench processes that
    gave no report or lost their StreamPoolStats stream."""
    t0 = meta["t0"]
    sdefs = {s["name"]: s for s in meta["streams"]}
    windows = []
    totals = {"requests": 0, "expected_errors": 0, "unexpected": {}}
    stream_totals = {n: {"requests": 0, "expected_errors": 0, "unexpected": {}}
                     for n in sdefs}
    bench_problems, pool_stream_errors = [], []
    for w in raw["windows"]:
        rec = {"n": w["n"], "warmup": w["warmup"], "start_s": round(w["start"] - t0, 1),
               "end_s": round(w["end"] - t0, 1),
               "restarts": [r["n"] for r in raw["restarts"]
                            if w["start"] <= r["begin"] <= w["end"]],
               "near_restart": near.restart(w["start"], w["end"]),
               "near_stall": near.stall(w["start"], w["end"]),
               "stall_max_s": max((x["late_s"] for x in raw["stalls"]
                                   if w["start"] <= x["end"] - x["late_s"] <= w["end"]
                                   or w["start"] <= x["end"] <= w["end"]), default=0),
               "requests": 0, "expected_errors": 0, "unexpected": {}, "streams": {}}
        for name, s in sdefs.items():
            j, err = raw["stream_report"](w["n"], name)
            if j is None or w["rc"].get(name, 1) != 0:
                bench_problems.append(f"window {w['n']} {name}: exit {w['rc'].get(name)} {err}")
                if j is None:
                    continue
            codes = dict(j.get("errors_by_code", {}))
            expected = sum(v for c, v in codes.items() if c in s["expected_errors"])
            unexpected = {c: v for c, v in codes.items() if c not in s["expected_errors"]}
            if s["expected_errors"] and j["ok"]:
                unexpected["OK (meant to fail)"] = j["ok"]
            if j.get("pool_stream_error"):
                pool_stream_errors.append(f"window {w['n']} {name}: {j['pool_stream_error']}")
            lat = j["latency_ms"]
            rec["streams"][name] = {
                "requests": j["requests"], "ok": j["ok"], "errors_by_code": codes,
                "expected_errors": expected, "unexpected": unexpected,
                "rps": j["rps"], "p50_ms": lat["p50"], "p99_ms": lat["p99"],
                "max_ms": lat["max"]}
            rec["requests"] += j["requests"]
            rec["expected_errors"] += expected
            add_counts(rec["unexpected"], unexpected)
            add_counts(stream_totals[name]["unexpected"], unexpected)
            stream_totals[name]["requests"] += j["requests"]
            stream_totals[name]["expected_errors"] += expected
        rec["unexpected_total"] = sum(rec["unexpected"].values())
        sel = rec["streams"].get("select")
        rec["select_p50_ms"] = sel and sel["p50_ms"]
        rec["select_p99_ms"] = sel and sel["p99_ms"]
        rec["max_ms"] = max((v["max_ms"] for v in rec["streams"].values()), default=None)
        rec.update(window_sample_figures(
            [x for x in raw["samples"]
             if w["start"] <= x["t"] <= w["end"] and not x.get("server_gone")]))
        windows.append(rec)
        totals["requests"] += rec["requests"]
        totals["expected_errors"] += rec["expected_errors"]
        add_counts(totals["unexpected"], rec["unexpected"])
    totals["unexpected_total"] = sum(totals["unexpected"].values())
    return {"windows": windows, "totals": totals, "stream_totals": stream_totals,
            "bench_problems": bench_problems, "pool_stream_errors": pool_stream_errors}


def window_sample_figures(ws):
    """The server's figures over one window's samples: medians and maxima,
    CPU of the server and of the whole machine, and the longest pause
    between samples (a stalled machine shows here)."""
    rec = {
        "samples": len(ws),
        "rss_mib_median": median([x["rss_kb"] / 1024 for x in ws]),
        "rss_mib_max": max((x["rss_kb"] / 1024 for x in ws), default=None),
        "fds_median": median([x["fds"] for x in ws]),
        "threads_median": median([x["threads"] for x in ws]),
        "pg_conns_max": max((x["pg_conns"] for x in ws if x.get("pg_conns") is not None),
                            default=None),
        "pool_total_max": max((x["pool"]["total"] for x in ws if x.get("pool")), default=None),
        "server_cpu_pct": None, "machine_busy_pct": None, "sample_gap_max_s": None,
    }
    if len(ws) >= 2:
        f, l = ws[0], ws[-1]
        if l["t"] > f["t"]:
            rec["server_cpu_pct"] = round(
                100 * (l["cpu_ticks"] - f["cpu_ticks"]) / proc.TICK / (l["t"] - f["t"]), 1)
        if l["all_ticks"] > f["all_ticks"]:
            rec["machine_busy_pct"] = round(
                100 * (l["busy_ticks"] - f["busy_ticks"]) / (l["all_ticks"] - f["all_ticks"]), 1)
        rec["sample_gap_max_s"] = round(max(b["t"] - a["t"] for a, b in zip(ws, ws[1:])), 2)
    return rec


def server_error_timeline(samples):
    """The server's unexpected Query errors per sampling interval, from its
    cumulative counts: [(t_prev, t, {code: n})], and the totals by code."""
    timeline, by_code = [], {}
    prev = None
    for x in samples:
        m = x.get("metrics")
        if not m:
            continue
        if prev is not None:
            d = {}
            for c, v in m["query_codes"].items():
                if c == "OK" or c in EXPECTED_CODES:
                    continue
                n = v - prev[1].get(c, 0)
                if n > 0:
                    d[c] = n
            if d:
                timeline.append((prev[0], x["t"], d))
                add_counts(by_code, d)
        prev = (x["t"], m["query_codes"])
    return timeline, by_code


def restart_records(restarts, timeline, samples, t0, st, near):
    """Per restart: the errors around it, how long until the pool was back
    to its minimum, and memory and fds (less pool connections) just before
    it and once its grace time is over: a leak per restart shows as a step."""
    grace = st["grace_s"]
    out = []
    for i, r in enumerate(restarts):
        nxt = restarts[i + 1]["begin"] - 1 if i + 1 < len(restarts) else float("inf")
        mine = [(lo, hi, d) for lo, hi, d in timeline if hi >= r["begin"] - 1 and lo < nxt]
        errors = {}
        for lo, hi, d in mine:
            if near.restart(lo, hi) and lo <= r["back"] + grace:
                add_counts(errors, d)
        last_err = max((hi - r["back"] for lo, hi, d in mine), default=None)
        recovered = next((x["t"] - r["back"] for x in samples
                          if x["t"] > r["back"] and x.get("pool") and x["pool"]["reachable"]
                          and x["pool"]["total"] >= st["pool_min"]), None)
        before = [x for x in samples if x["t"] < r["begin"] and x.get("pool") and "rss_kb" in x]
        after = [x for x in samples
                 if x["t"] > r["back"] + grace and x.get("pool") and "rss_kb" in x]
        b, a = (before[-1] if before else None), (after[0] if after else None)
        out.append({"n": r["n"], "at_s": round(r["begin"] - t0, 1),
                    "rss_mib_before": b and round(b["rss_kb"] / 1024, 1),
                    "rss_mib_after": a and round(a["rss_kb"] / 1024, 1),
                    "fds_besides_pool_before": b and b["fds"] - b["pool"]["total"],
                    "fds_besides_pool_after": a and a["fds"] - a["pool"]["total"],
                    "pg_down_s": round(r["back"] - r["begin"], 2), "rc": r["rc"],
                    "unexpected_near": errors, "unexpected_near_total": sum(errors.values()),
                    "last_error_after_back_s": None if last_err is None else round(last_err, 1),
                    "pool_refilled_after_s": None if recovered is None else round(recovered, 1)})
    return out


def resources(samples, measured, t0, st, near):
    """The server's figures at the start (median of the first measured
    window) and the end (of the last), both without samples taken during a
    restart; the maxima after warm-up; PostgreSQL's connections; the RSS
    trend."""
    def quiet(xs):
        return [x for x in xs if not x.get("server_gone") and not near.restart(x["t"], x["t"])]

    def in_window(w):
        return [x for x in samples if w["start_s"] + t0 <= x["t"] <= w["end_s"] + t0]

    def figures(xs):
        pool = [x for x in xs if x.get("pool")]
        return {
            "rss_mib": median([x["rss_kb"] / 1024 for x in xs]),
            "fds": median([x["fds"] for x in xs]),
            "fds_besides_pool": median([x["fds"] - x["pool"]["total"] for x in pool]),
            "threads": median([x["threads"] for x in xs]),
            "pg_conns": median([x.get("pg_conns") for x in xs]),
            "pool_total": median([x["pool"]["total"] for x in pool]),
        }
    after_warmup = measured[0]["start_s"] + t0 if measured else t0
    post = [x for x in samples if x["t"] >= after_warmup and not x.get("server_gone")]
    all_pg = [x["pg_conns"] for x in samples if x.get("pg_conns") is not None]
    # RSS trend over the measured windows (least squares on window medians).
    pts = [((w["start_s"] + w["end_s"]) / 2, w["rss_mib_median"]) for w in measured
           if w["rss_mib_median"] is not None]
    per_s = stats.slope(pts) if len(pts) >= 5 else None
    return {
        "start": figures(quiet(in_window(measured[0]))) if measured else {},
        "end": figures(quiet(in_window(measured[-1]))) if measured else {},
        "max": {
            "rss_mib": max((x["rss_kb"] / 1024 for x in post), default=None),
            "fds": max((x["fds"] for x in post), default=None),
            "fds_besides_pool": max((x["fds"] - x["pool"]["total"] for x in post
                                     if x.get("pool")), default=None),
            "threads": max((x["threads"] for x in post), default=None),
            "pg_conns": max((x["pg_conns"] for x in post if x.get("pg_conns") is not None),
                            default=None),
            "pool_total": max((x["pool"]["total"] for x in post if x.get("pool")), default=None),
        },
        "rss_trend_mib_per_hour": None if per_s is None else per_s * 3600,
        "pg_conns_max_all": max(all_pg, default=None),
        # Above the pool's cap in two samples in a row: a backend that
        # outlives its closed connection by a few milliseconds is no leak.
        "pg_over": sum(1 for a, b in zip(all_pg, all_pg[1:]) if min(a, b) > st["pool_max"]),
    }


def latency_drift(streams, measured):
    drift = {}
    for s in streams:
        name = s["name"]
        ws = [w for w in measured if name in w["streams"]]
        if not ws:
            continue
        worst = max(ws, key=lambda w: w["streams"][name]["p99_ms"])
        calm = [w for w in ws if not w["near_restart"]]
        drift[name] = {
            "p99_first_ms": ws[0]["streams"][name]["p99_ms"],
            "p99_last_ms": ws[-1]["streams"][name]["p99_ms"],
            "p99_max_ms": worst["streams"][name]["p99_ms"], "p99_max_window": worst["n"],
            "p99_first_calm_ms": calm[0]["streams"][name]["p99_ms"] if calm else None,
            "p99_last_calm_ms": calm[-1]["streams"][name]["p99_ms"] if calm else None,
            "max_ms": max(w["streams"][name]["max_ms"] for w in ws),
        }
    return drift


def snapshot_time(s):
    """A snapshot's RFC 3339 time (nanoseconds, UTC) as a Unix time."""
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".")
        s = head + "." + frac[:6]
    return datetime.datetime.fromisoformat(s).replace(tzinfo=datetime.timezone.utc).timestamp()


def watch_record(meta, watch, near):
    """The `dbpool watch` subscriber: alive, snapshots, the gaps between
    them (a gap that a machine stall explains is the machine's)."""
    wt = []
    for x in watch:
        try:
            wt.append(snapshot_time(x["time"]))
        except (KeyError, ValueError):
            pass
    gaps = [b - a for a, b in zip(wt, wt[1:])]
    gaps_calm = [b - a for a, b in zip(wt, wt[1:]) if not near.stall(a, b)]
    return {"times": wt, "record": {
        "alive_at_end": meta["watch_alive"], "exit": meta.get("watch_exit"),
        "snapshots": len(wt), "max_gap_s": round(max(gaps), 2) if gaps else None,
        "max_gap_outside_stalls_s": round(max(gaps_calm), 2) if gaps_calm else None,
        "covered_s": round(wt[-1] - wt[0], 1) if len(wt) > 1 else 0,
        "unreachable_snapshots": sum(1 for x in watch if not x.get("database_reachable")),
        "stderr": meta.get("watch_stderr", "")}}


def judge(meta, raw, win, measured, res, watch, errors, last_traffic):
    """The checks against the thresholds, and the failures among them."""
    st = meta["settings"]
    checks, failures = [], []

    def check(name, limit, value, good):
        checks.append({"check": name, "limit": limit, "measured": value, "pass": bool(good)})
        if not good:
            failures.append(f"{name}: {value} (limit {limit})")

    def growth(k):
        s, e = res["start"].get(k), res["end"].get(k)
        return None if s is None or e is None else e - s
    g = growth("rss_mib")
    check("RSS growth after warm-up (MiB)", f"≤ {st['max_rss_growth_mb']}",
          None if g is None else round(g, 1), g is not None and g <= st["max_rss_growth_mb"])
    # Steady growth: RSS (window medians) at the start, at one and two thirds
    # of the measured windows and at the end; each step above the bound.
    if len(measured) >= 4:
        k = len(measured) - 1
        marks = [res["start"].get("rss_mib"), measured[round(k / 3)]["rss_mib_median"],
                 measured[round(2 * k / 3)]["rss_mib_median"], res["end"].get("rss_mib")]
        if None not in marks:
            steps = [round(b - a, 1) for a, b in zip(marks, marks[1:])]
            check("RSS growth in each third of the measured windows (MiB)",
                  f"not all > {st['max_rss_step_mb']}", " / ".join(map(str, steps)),
                  min(steps) <= st["max_rss_step_mb"])
    g = growth("fds_besides_pool")
    check("open fds growth, pool connections left out", f"≤ {st['max_fd_growth']}",
          g, g is not None and g <= st["max_fd_growth"])
    g = growth("threads")
    check("thread growth", f"≤ {st['max_thread_growth']}", g,
          g is not None and g <= st["max_thread_growth"])
    check("PostgreSQL connections above the pool max in two samples in a row",
          f"never (max {st['pool_max']})",
          f"{res['pg_over']} times; most seen {res['pg_conns_max_all']}",
          res["pg_conns_max_all"] is not None and res["pg_over"] == 0)
    cc = raw["conncheck"] or {}
    check("PostgreSQL connections = pool total once traffic stopped",
          "equal within 15 s",
          f"{cc.get('last', {}).get('pg_conns')} vs {cc.get('last', {}).get('pool_total')}"
          f" after {cc.get('waited_s')} s", cc.get("agree"))
    check(f"unexpected errors more than {st['grace_s']} s after PostgreSQL was back, or with no "
          f"restart or machine stall near (server, per second)",
          f"≤ {st['max_stray_errors']}", errors["server_stray"],
          errors["server_stray"] <= st["max_stray_errors"])
    check("unexpected errors in windows that no restart or machine stall touches (clients)",
          f"≤ {st['max_stray_errors']}", errors["client_stray"],
          errors["client_stray"] <= st["max_stray_errors"])
    check(f"unexpected errors during machine stalls (server; every process late ≥ {STALL_S:g} s)",
          "reported, not failed", errors["server_in_stalls"], True)
    w = watch["record"]
    check("watch stream open to the end", "alive", "alive" if w["alive_at_end"] else
          f"ended: {w['exit']} {w['stderr'][-200:]}", w["alive_at_end"])
    # The end is when the traffic stopped; the last snapshot was read later.
    covered = w["snapshots"] > 1 and watch["times"][-1] >= last_traffic - 5
    check("watch stream: longest gap between snapshots outside machine stalls (s)", "≤ 5",
          w["max_gap_outside_stalls_s"], covered and (w["max_gap_outside_stalls_s"] or 0) <= 5)
    check("StreamPoolStats streams of the bench processes that ended early", "0",
          len(win["pool_stream_errors"]), not win["pool_stream_errors"])
    check("dbpool-server alive to the end", "alive", "alive" if meta["server_alive"] else "exited",
          meta["server_alive"])
    check("bench processes that gave no report", "0", len(win["bench_problems"]),
          not win["bench_problems"])
    return checks, failures


def codes_text(d):
    return ", ".join(f"{c} {n:,}" for c, n in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def render(r, json_path):
    """The Markdown report of a soak result document."""
    st, v = r["settings"], r["versions"]
    L = []
    add = L.append
    minutes = r["duration_s"] / 60
    add(f"# Soak test, {r['started_utc'][:16].replace('T', ' ')} UTC\n")
    add(f"Written by `bench/soak` (dbpool {v['dbpool']}; {v['postgres']}). "
        f"Mixed open-loop traffic at {st['rate']:,} calls/s for {minutes:.1f} min "
        f"({r['windows_count']} windows of {st['window_s']} s, the first "
        f"{st['warmup_windows']} of them warm-up), "
        + (f"PostgreSQL restarted every {st['restart_every_s']} s (`pg_ctl restart -m fast`)"
           if st["restart_every_s"] else "no PostgreSQL restarts")
        + f", pool "
        f"{st['pool_min']}–{st['pool_max']}, call deadline {st['timeout_s']} s. "
        f"Client, server and PostgreSQL share the machine's cores. Raw figures: "
        f"`{json_path}`.\n")
    add(f"**Result: {'PASS' if r['passed'] else 'FAIL'}**"
        + ("" if r["passed"] else " — " + "; ".join(r["failures"])) + "\n")
    add("## Checks\n")
    add("| check | limit | measured | |")
    add("| --- | --- | --- | :---: |")
    for c in r["checks"]:
        add(f"| {c['check']} | {c['limit']} | {c['measured']} | {'ok' if c['pass'] else '**FAIL**'} |")
    add("")
    t = r["totals"]
    se = r["server_unexpected_errors"]
    add("## Traffic and errors\n")
    add(f"- Duration {minutes:.1f} min; PostgreSQL restarts done: "
        f"{r['restarts_done']} of {r['restarts_planned']} planned.")
    add(f"- Requests: {t['requests']:,}; expected errors (the failing streams): "
        f"{t['expected_errors']:,}.")
    add(f"- Unexpected errors seen by the clients: {t['unexpected_total']:,} "
        f"({codes_text(t['unexpected'])}); in windows that no restart or machine "
        f"stall touches: {r['client_unexpected_errors_in_calm_windows']:,}.")
    add(f"- Unexpected errors the server counted (per second, from /metrics): "
        f"{se['total']:,} ({codes_text(se['by_code'])}); within {st['grace_s']} s "
        f"of a restart: {se['within_grace_of_restart']:,}; during machine stalls: "
        f"{se['during_machine_stalls']:,}; elsewhere: {se['away_from_restarts_and_stalls']:,}"
        + ("" if not se["strays"] else " (at " + ", ".join(
            f"{s['at_s']} s: {codes_text(s['codes'])}" for s in se["strays"][:10]) + ")")
        + ".")
    ms = r["machine_stalls"]
    add(f"- Machine stalls (a thread sleeping 100 ms at a time woke ≥ 1 s late, "
        f"so every process on the machine was held up): {len(ms)}"
        + ("" if not ms else ", " + ", ".join(f"{x['late_s']:g} s at {x['at_s']:.0f} s"
                                              for x in ms[:10]))
        + ". Errors in them and up to " + f"{st['grace_s']} s after are the machine's, not failed.")
    if r["bench_problems"]:
        add(f"- bench processes without a report: {'; '.join(r['bench_problems'][:5])}")
    if r["pool_stream_errors"]:
        add(f"- StreamPoolStats of a bench process ended early: "
            f"{'; '.join(r['pool_stream_errors'][:5])}")
    add("")
    add("| stream | rate /s | SQL | requests | expected errors | unexpected |")
    add("| --- | ---: | --- | ---: | ---: | --- |")
    for s in r["streams"]:
        tot = r["stream_totals"][s["name"]]
        exp = f"{tot['expected_errors']:,} ({', '.join(s['expected_errors'])})" \
            if s["expected_errors"] else "—"
        add(f"| {s['name']} | {s['rate']:g} | `{s['sql']}` | {tot['requests']:,} | {exp} | "
            f"{codes_text(tot['unexpected'])} |")
    add("")
    if r["restarts"]:
        add("## Restarts\n")
        add(f"Errors are the server's unexpected ones from the restart's start "
            f"until {st['grace_s']} s after PostgreSQL was back; \"last error\" "
            f"is the end of the last second with an unexpected error before the "
            f"next restart, counted from PostgreSQL being back (sampled every "
            f"{st['sample_every_s']} s). Before: the last sample before the "
            f"restart; after: the first sample {st['grace_s']} s after "
            f"PostgreSQL was back.\n")
        add("| # | at (s) | PostgreSQL down (s) | unexpected errors | last error after back (s) | pool back to min after (s) | RSS MiB before → after | fds less pool before → after |")
        add("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        for x in r["restarts"]:
            add(f"| {x['n']} | {x['at_s']:.0f} | {x['pg_down_s']:.2f} | "
                f"{x['unexpected_near_total']:,}"
                + (f" ({codes_text(x['unexpected_near'])})" if x["unexpected_near"] else "")
                + f" | {figure(x['last_error_after_back_s'])} | {figure(x['pool_refilled_after_s'])} | "
                f"{figure(x['rss_mib_before'])} → {figure(x['rss_mib_after'])} | "
                f"{figure(x['fds_besides_pool_before'])} → {figure(x['fds_besides_pool_after'])} |")
        add("")
    res = r["resources"]
    add("## dbpool-server resources\n")
    add("Start: median of the first window after warm-up; end: median of the "
        "last window (both without the samples taken during a restart); max: "
        "any sample after warm-up.\n")
    add("| | start | end | max | end − start |")
    add("| --- | ---: | ---: | ---: | ---: |")
    rows = [("RSS (MiB)", "rss_mib"), ("open fds", "fds"),
            ("open fds less pool connections", "fds_besides_pool"), ("threads", "threads"),
            ("PostgreSQL connections (pg_stat_activity)", "pg_conns"),
            ("pool connections (total)", "pool_total")]
    for label, k in rows:
        s, e, m = res["start"].get(k), res["end"].get(k), res["max"].get(k)
        g = None if s is None or e is None else e - s
        add(f"| {label} | {figure(s)} | {figure(e)} | {figure(m)} | {figure(g)} |")
    add("")
    if res["rss_trend_mib_per_hour"] is not None:
        add(f"RSS trend over the measured windows: {res['rss_trend_mib_per_hour']:+.1f} MiB/hour "
            f"(least squares on window medians; over a short run the allocator's "
            f"growth after start-up weighs heavily).\n")
    pe = r.get("pool_end") or {}
    if pe:
        add(f"Pool at the end: {pe.get('connections_opened', 'n/a')} connections opened, "
            f"closed by reason {pe.get('closed_by_reason')}, "
            f"{pe.get('connect_errors', 'n/a')} failed connection attempts.\n")
    add("## Latency drift (ms)\n")
    add("p99 of the first and last measured windows, the worst window, and the "
        "first and last windows that no restart touches.\n")
    add("| stream | p99 first | p99 last | worst p99 (window) | p99 first calm | p99 last calm | max |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, d in r["latency_drift"].items():
        add(f"| {name} | {d['p99_first_ms']:.2f} | {d['p99_last_ms']:.2f} | "
            f"{d['p99_max_ms']:.2f} ({d['p99_max_window']}) | {figure(d['p99_first_calm_ms'], 2)} | "
            f"{figure(d['p99_last_calm_ms'], 2)} | {d['max_ms']:.1f} |")
    add("")
    w = r["watch"]
    add("## StreamPoolStats subscriber\n")
    add(f"`dbpool watch --interval 1s`: {'open to the end' if w['alive_at_end'] else 'ENDED: ' + str(w['exit'])}, "
        f"{w['snapshots']:,} snapshots over {w['covered_s']} s, longest gap "
        f"{figure(w['max_gap_s'], 2)} s ({figure(w['max_gap_outside_stalls_s'], 2)} s outside "
        f"machine stalls), {w['unreachable_snapshots']} with the database unreachable.\n")
    sl = r.get("server_log") or {}
    if sl.get("lines"):
        add("## Server log (warnings and errors)\n")
        add(f"{sl['lines']:,} lines at warn or error; the most frequent (numbers replaced by N):\n")
        for msg, n in sl["top"]:
            add(f"- {n:,}× `{msg}`")
        add("")
    add("## Windows\n")
    add("Latency in ms; RSS, fds and threads are medians over the window; server "
        "CPU is % of one core; machine busy is % of all cores, other tenants "
        "included; stall is the longest machine stall that started or ended in it.\n")
    add("| # | from (s) | restarts | requests | unexpected errors | select p50 | select p99 | max (all streams) | RSS MiB | fds | threads | PG conns max | pool max | server CPU % | machine busy % | stall (s) |")
    add("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in r["windows"]:
        add(f"| {x['n']}{' (warm-up)' if x['warmup'] else ''} | {x['start_s']:.0f} | "
            f"{len(x['restarts']) or '—'} | {x['requests']:,} | "
            f"{codes_text(x['unexpected']) if x['unexpected_total'] else '0'} | "
            f"{figure(x['select_p50_ms'], 2)} | {figure(x['select_p99_ms'], 2)} | {figure(x['max_ms'])} | "
            f"{figure(x['rss_mib_median'])} | {figure(x['fds_median'])} | {figure(x['threads_median'])} | "
            f"{figure(x['pg_conns_max'])} | {figure(x['pool_total_max'])} | {figure(x['server_cpu_pct'])} | "
            f"{figure(x['machine_busy_pct'])} | {figure(x['stall_max_s'], 2) if x['stall_max_s'] else '—'} |")
    add("")
    return "\n".join(L)
