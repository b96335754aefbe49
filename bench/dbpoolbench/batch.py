"""bench/batch: ExecuteBatch measured against what it replaces, for the
batch issue's three goals, in one run:

  U  unary insert     dbpool bench, one INSERT per Query call
  I  batched insert   dbpool bench --batch 1000, one ExecuteBatch of 1,000 INSERTs a call
  S  batched select   dbpool bench --batch 100, one ExecuteBatch of 100 point selects a call
  B  PgBouncer        pgbench -M simple, the point select, through PgBouncer (pool 20)
  P  pgbench pipeline pgbench -M prepared directly, ten point selects per
                      \\startpipeline ... \\endpipeline (20 connections)
  Q  unary select     dbpool bench, one point select per Query call (for reference)

Goals: I ≥ 10 × U in rows/s (same table, same callers); dbpool-server's
CPU per statement in S ≤ PgBouncer's CPU per query in B; S ≥ 0.5 × P in
statements/s.

One PostgreSQL (compare's settings and pgbench database, plus the insert
table), PgBouncer and one Release dbpool-server (compare's C: pool 20) in
front of it, all started at the beginning; the runs are interleaved (each
repetition runs every system back to back, the order rotated by one per
repetition) and a run is compare.measure's: throughput, latency, CPU per
call of every process. Here every figure is also given per statement: a
dbpool call carries --batch statements, a pgbench transaction of P ten.
The insert table is emptied before each insert run. The report takes the
medians over the repetitions."""
import math
import os
import sys
import time

from . import compare, proc, stack, text
from .compare_report import and_list, noise_note, run_medians, table
from .settings import Env, SettingsError
from .stats import median, ratio
from .text import fixed, thousands

INSERT_TABLE = "batch_rows"
INSERT_DDL = (f"CREATE TABLE {INSERT_TABLE} (id bigint PRIMARY KEY, aid bigint NOT NULL, "
              f"delta bigint NOT NULL, mtime timestamptz NOT NULL DEFAULT now()) "
              f"WITH (autovacuum_enabled = off)")
INSERT_SQL = f"INSERT INTO {INSERT_TABLE} (id, aid, delta) VALUES ($1, $2, $3)"
# id: distinct per statement of a run (the table is emptied before each
# insert run); aid and delta drawn per statement.
INSERT_PARAMS = ("--param", "seq:1", "--param", "rand:1:1000000", "--param", "rand:-5000:5000")
SELECT_PARAMS = ("--param", "rand:1:1000000")

SYSTEMS = {
    "U": "U: unary insert (dbpool bench, Query)",
    "I": "I: batched insert (dbpool bench --batch, ExecuteBatch)",
    "S": "S: batched select (dbpool bench --batch, ExecuteBatch)",
    "B": "B: PgBouncer 1.18 (pgbench -M simple)",
    "P": "P: PostgreSQL direct, pipelined (pgbench -M prepared)",
    "Q": "Q: unary select (dbpool bench, Query)",
}
INVOLVED = {"U": ("postgres", "dbpool_server", "client"),
            "I": ("postgres", "dbpool_server", "client"),
            "S": ("postgres", "dbpool_server", "client"),
            "B": ("postgres", "pgbouncer", "client"),
            "P": ("postgres", "client"),
            "Q": ("postgres", "dbpool_server", "client")}
PROCESSES = {"postgres": "PostgreSQL", "pgbouncer": "PgBouncer",
             "dbpool_server": "dbpool-server", "client": "client"}
INSERTS = ("U", "I")
PGBENCH = ("B", "P")


def settings_from(env):
    quick = env.flag("BATCH_QUICK")
    st = {
        "quick": quick,
        "systems": systems_from(env.text("BATCH_SYSTEMS", " ".join(SYSTEMS))),
        "repeats": env.whole("BATCH_REPEATS", 1 if quick else 3, minimum=1),
        "duration_s": env.seconds("BATCH_DURATION", 3 if quick else 10),
        # pgbench's start is found from its 1 s progress line.
        "warmup_s": env.seconds("BATCH_WARMUP", 2, minimum=2),
        "pause_s": env.number("BATCH_PAUSE", 1),
        "quiet_pct": env.number("BATCH_QUIET_PCT", 10),
        "quiet_max_s": env.number("BATCH_QUIET_MAX", 10),
        "insert_rows": env.whole("BATCH_INSERT_ROWS", 1000, minimum=1, maximum=10000),
        "insert_clients": env.whole("BATCH_INSERT_CLIENTS", 20, minimum=1, maximum=1000),
        "select_batch": env.whole("BATCH_SELECT_SIZE", 100, minimum=1, maximum=10000),
        "select_clients": env.whole("BATCH_SELECT_CLIENTS", 20, minimum=1, maximum=1000),
        "pipeline": env.whole("BATCH_PIPELINE", 10, minimum=1, maximum=1000),
        "build_dir": env.text("BATCH_BUILD_DIR", "build-release"),
        "pool_size": stack.POOL_SIZE,
        "sql": stack.POINT_SELECT,
        "insert_sql": INSERT_SQL,
    }
    # dbpool's and PgBouncer's pools, pgbench's direct connections, psql.
    st["postgres_max_connections"] = max(200, 2 * stack.POOL_SIZE + st["select_clients"] + 30)
    report = env.text("BATCH_REPORT", "bench/results/BENCHMARKS-batch-quick.md" if quick
                      else "docs/BENCHMARKS-batch.md")
    return st, report


def systems_from(value):
    """"U I S" (spaces, commas or none) -> ["U", "I", "S"], in the order of
    SYSTEMS, which the run order rotates."""
    chosen = set(value.replace(",", " ").replace(" ", "").upper())
    unknown = chosen - set(SYSTEMS)
    if unknown or not chosen:
        raise SettingsError(f"BATCH_SYSTEMS: want some of {' '.join(SYSTEMS)}, got \"{value}\"")
    return [s for s in SYSTEMS if s in chosen]


def per_call(system, st):
    """Statements in one call (dbpool bench) or transaction (pgbench)."""
    return {"U": 1, "I": st["insert_rows"], "S": st["select_batch"], "B": 1,
            "P": st["pipeline"], "Q": 1}[system]


def clients(system, st):
    return st["insert_clients"] if system in INSERTS else st["select_clients"]


def pipeline_script(n, sql_var="aid"):
    """pgbench's script for P: n point selects, each with its own aid drawn
    beforehand, sent as one pipeline per transaction."""
    lines = [f"\\set {sql_var}{i} random(1, 1000000)" for i in range(1, n + 1)]
    lines.append("\\startpipeline")
    lines += [f"SELECT abalance FROM pgbench_accounts WHERE aid = :{sql_var}{i};"
              for i in range(1, n + 1)]
    lines.append("\\endpipeline")
    return "\n".join(lines) + "\n"


def run_order(repeats, systems):
    """(repeat, system) of every run: per repetition the systems back to
    back, the order rotated by one per repetition (UISBPQ, ISBPQU, ...),
    so that per-repetition ratios compare runs seconds apart."""
    k = len(systems)
    return [(rep, systems[(i + rep - 1) % k]) for rep in range(1, repeats + 1)
            for i in range(k)]


# ---------------------------------------------------------------------------
# Per statement


def per_statement(rec, n):
    """Adds the run's figures per statement, n statements a call: rate,
    CPU and context switches (compare.measure counts them per call or
    pgbench transaction)."""
    rec["per_call"] = n
    rec["statements_per_s"] = rec["throughput"] * n
    cpu = rec.get("cpu")
    if cpu:
        for key, out in (("us_per_query", "us_per_statement"),
                         ("ctx_switches_per_query", "ctx_switches_per_statement")):
            cpu[out] = {k: (v / n if v is not None else None)
                        for k, v in cpu.get(key, {}).items()}
    return rec


def involved_sum(rec, system, key):
    """The sum of cpu[key] over the system's processes; None unless every
    one of them has it."""
    u = rec.get("cpu", {}).get(key, {})
    vals = [u.get(k) for k in INVOLVED[system]]
    return None if not u or None in vals else sum(vals)


def summarize(runs, systems):
    """Medians over the valid runs of each system."""
    summary = {}
    for system in systems:
        rs = [r for r in runs if r["system"] == system]
        good = [r for r in rs if r["valid"]]
        sps = [r["statements_per_s"] for r in good]
        e = {**run_medians(rs),
             "per_call": rs[0]["per_call"] if rs else None,
             "concurrency": rs[0]["concurrency"] if rs else None,
             "statements_per_s_median": median(sps),
             "statements_per_s_min": min(sps) if sps else None,
             "statements_per_s_max": max(sps) if sps else None}
        for field, key in (("cpu_us_per_statement_median", "us_per_statement"),
                           ("ctx_switches_per_statement_median", "ctx_switches_per_statement"),
                           ("cpu_us_per_call_median", "us_per_query")):
            e[field] = {k: median([r.get("cpu", {}).get(key, {}).get(k) for r in good])
                        for k in INVOLVED[system]}
            e[field]["total"] = median([involved_sum(r, system, key) for r in good])
        e["cores_used_median"] = median([involved_sum(r, system, "cores_used") for r in good])
        summary[system] = e
    return summary


# ---------------------------------------------------------------------------
# Goals


def statements_rate(r):
    return r["statements_per_s"]


def cpu_per_statement(process):
    return lambda r: r.get("cpu", {}).get("us_per_statement", {}).get(process)


GOALS = {
    "insert": {"num": "I", "den": "U", "limit": 10.0, "at_most": False,
               "figure": ("statements_per_s_median", None),
               "per_run": (statements_rate, statements_rate)},
    "cpu": {"num": "S", "den": "B", "limit": 1.0, "at_most": True,
            "figure": ("cpu_us_per_statement_median", ("dbpool_server", "pgbouncer")),
            "per_run": (cpu_per_statement("dbpool_server"), cpu_per_statement("pgbouncer"))},
    "pipeline": {"num": "S", "den": "P", "limit": 0.5, "at_most": False,
                 "figure": ("statements_per_s_median", None),
                 "per_run": (statements_rate, statements_rate)},
}
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


def goal_text(name, st):
    """(what, target) of a goal as the report names them."""
    return {
        "insert": (f"A {st['insert_rows']:,}-row insert as one ExecuteBatch (I) ÷ the same rows "
                   f"as unary Query calls (U), rows/s, {st['insert_clients']} callers each",
                   "≥ 10×"),
        "cpu": (f"dbpool-server CPU per statement in batches of {st['select_batch']} (S) ÷ "
                f"PgBouncer's CPU per query (B)", "≤ 1×"),
        "pipeline": (f"Statements/s of batches of {st['select_batch']} (S) ÷ pgbench -M "
                     f"prepared, {st['pipeline']} statements per pipeline, "
                     f"{st['select_clients']} connections (P)", "≥ 0.5×"),
    }[name]


def goal_value(goal, summary):
    """The goal's figure from the medians: (value, numerator, denominator);
    None for all three when a system did not run."""
    num, den = goal["num"], goal["den"]
    if num not in summary or den not in summary:
        return None, None, None
    field, procs = goal["figure"]
    if procs is None:
        x, y = summary[num][field], summary[den][field]
    else:
        x, y = summary[num][field][procs[0]], summary[den][field][procs[1]]
    return ratio(x, y), x, y


def per_repeat(runs, goal):
    """The goal's ratio within each repetition where both systems have a
    valid run with the figure."""
    fx, fy = goal["per_run"]
    out = []
    for rep in sorted({r["repeat"] for r in runs}):
        x, y = ([f(r) for r in runs if r["system"] == s and r["repeat"] == rep and r["valid"]]
                for s, f in ((goal["num"], fx), (goal["den"], fy)))
        if x and y and x[0] is not None and y[0]:
            out.append(x[0] / y[0])
    return out


def judge(runs, summary):
    """Every goal: its ratio of the medians, the per-repetition ratios, the
    verdict and the margin (value ÷ limit)."""
    out = {}
    for name, goal in GOALS.items():
        value, x, y = goal_value(goal, summary)
        per = per_repeat(runs, goal)
        if goal["num"] not in summary or goal["den"] not in summary:
            verdict = NOT_MEASURED
        elif value is None:
            verdict = NOT_MET
        else:
            ok = value <= goal["limit"] if goal["at_most"] else value >= goal["limit"]
            verdict = MET if ok else NOT_MET
        out[name] = {"value": value, "numerator": x, "denominator": y,
                     "limit": goal["limit"], "at_most": goal["at_most"],
                     "per_repeat": per, "min": min(per) if per else None,
                     "max": max(per) if per else None, "verdict": verdict,
                     "margin": ratio(value, goal["limit"])}
    return out


def margin_text(g):
    """How far a measured goal is from its target, in words."""
    if g["verdict"] == NOT_MEASURED:
        return "not measured"
    if g["value"] is None:
        return "no valid figure"
    m = g["margin"]
    if g["at_most"]:
        # Lower is better: m < 1 is room, m > 1 the excess.
        if g["verdict"] == MET:
            return f"{1 - m:.0%} under the limit" if m < 1 else "at the limit"
        return f"{m - 1:.0%} over the limit"
    if g["verdict"] == MET:
        return f"{m:.2f}× the target"
    return f"{1 - m:.0%} short of the target"


def server_cost_split(summary):
    """dbpool-server's CPU per call as fixed + per statement, from the
    unary select Q (1 statement a call) and the batched select S (n a
    call), both the same point select: (per call µs, per statement µs, n);
    None unless both ran with figures."""
    if "Q" not in summary or "S" not in summary:
        return None
    q = summary["Q"]["cpu_us_per_call_median"]["dbpool_server"]
    s = summary["S"]["cpu_us_per_call_median"]["dbpool_server"]
    n = summary["S"]["per_call"]
    if q is None or s is None or not n or n <= 1:
        return None
    b = (s - q) / (n - 1)
    return q - b, b, n


# ---------------------------------------------------------------------------
# The run


def probe_batch(cli, target, st):
    """One short load of ExecuteBatch, so that a server that does not serve
    it stops the benchmark at its start."""
    j, p = stack.dbpool_bench(cli, target, ["--sql", st["sql"], *SELECT_PARAMS, "--batch", "2",
                                            "--concurrency", "1", "--duration", "1s"],
                              timeout=60)
    if not j or not j.get("ok"):
        codes = (j or {}).get("errors_by_code")
        raise stack.HarnessError(f"ExecuteBatch through {target} failed ({codes or p.stderr})")


def start_systems(s, st, server_bin, cli, log):
    """PostgreSQL (pgbench's tables, the insert table), PgBouncer and
    dbpool-server, in the stack s. Returns what the runs need."""
    cluster, st["database_size"] = compare.point_select_database(
        s, st["postgres_max_connections"], log)
    cluster.psql(INSERT_DDL, database="pgbench")
    logs = s.tmp / "logs"
    logs.mkdir()
    scripts = {"B": s.tmp / "select.sql", "P": s.tmp / "pipeline.sql"}
    scripts["B"].write_text(compare.PGBENCH_SCRIPT)
    scripts["P"].write_text(pipeline_script(st["pipeline"]))
    ctx = {"cli": cli, "cluster": cluster, "scripts": scripts, "logs": logs,
           "pgbench": os.path.join(stack.pg_bindir(), "pgbench"),
           "ports": {"P": cluster.port}, "pids": {"postmaster": cluster.postmaster_pid}}
    if "B" in st["systems"]:
        bport, bpid = compare.start_pgbouncer(st, cluster, s.tmp)
        s.callback(compare.stop_pid, bpid)
        log(f"PgBouncer on 127.0.0.1:{bport} (pid {bpid})")
        ctx["ports"]["B"], ctx["pids"]["pgbouncer"] = bport, bpid
    if set("UISQ") & set(st["systems"]):
        url = f"postgresql://postgres@127.0.0.1:{cluster.port}/pgbench"
        server = s.server(server_bin, url, compare.SERVER_ARGS)
        compare.probe(cli, server.address, st["sql"])
        if {"I", "S"} & set(st["systems"]):
            probe_batch(cli, server.address, st)
        log(f"dbpool-server on {server.address} (pid {server.proc.pid})")
        ctx["target"] = server.address
        ctx["pids"]["dbpool_server"] = server.proc.pid
    return ctx


def dbpool_argv(ctx, st, system):
    """dbpool bench's command line for a dbpool system."""
    n = clients(system, st)
    load = ["--sql", INSERT_SQL, *INSERT_PARAMS] if system in INSERTS else \
        ["--sql", st["sql"], *SELECT_PARAMS]
    if system in ("I", "S"):
        load += ["--batch", str(per_call(system, st))]
    # A call of 1,000 statements behind 19 others takes far longer than a
    # point select: room for it in the deadline.
    load += ["--timeout", "30s"]
    return stack.bench_argv(ctx["cli"], ctx["target"], load, n, st["duration_s"],
                            st["warmup_s"])


def pgbench_argv(ctx, st, system, prefix):
    n = clients(system, st)
    return [ctx["pgbench"], "-h", "127.0.0.1", "-p", str(ctx["ports"][system]),
            "-U", "postgres", "-n", "-M", "prepared" if system == "P" else "simple",
            "-f", str(ctx["scripts"][system]), "-c", str(n),
            "-j", "2" if n % 2 == 0 else "1",  # -j must divide -c
            "-T", str(st["warmup_s"] + st["duration_s"] + 1), "-P", "1", "-l",
            "--log-prefix", prefix, "pgbench"]


def empty_insert_table(ctx):
    ctx["cluster"].psql(f"TRUNCATE {INSERT_TABLE}", database="pgbench")


def table_rows(ctx):
    return int(ctx["cluster"].psql(f"SELECT count(*) FROM {INSERT_TABLE}",
                                   database="pgbench").strip())


def run_one(ctx, st, rep, system, seq):
    """One measured run of a system, its figures also per statement. An
    insert run counts the table's rows after it: fewer than the statements
    it reports make it invalid."""
    warmup, duration = st["warmup_s"], st["duration_s"]
    run = {"system": system, "concurrency": clients(system, st), "repeat": rep, "seq": seq}
    if system in PGBENCH:
        tag = f"{system}-r{rep}"
        prefix = str(ctx["logs"] / f"{tag}.pgb")
        try:
            rec = compare.measure(run, pgbench_argv(ctx, st, system, prefix), warmup, duration,
                                  ctx["pids"], log_prefix=prefix)
        finally:
            for f in ctx["logs"].glob(f"{tag}.pgb.*"):
                f.unlink()
    else:
        rec = compare.measure(run, dbpool_argv(ctx, st, system), warmup, duration, ctx["pids"])
    per_statement(rec, per_call(system, st))
    if system in INSERTS:
        rec["table_rows"] = table_rows(ctx)
        counted = rec.get("ok", 0) * rec["per_call"]
        if rec["table_rows"] < counted:
            rec["valid"] = False
            rec["invalid_reason"] = (f"{rec['table_rows']} rows in {INSERT_TABLE} after the run, "
                                     f"fewer than the {counted} inserted statements counted")
    return rec


def progress_line(rec):
    lm = rec.get("latency_ms") or {}
    cpu = rec.get("cpu", {}).get("us_per_statement", {})
    us = " ".join(f"{k} {fixed(cpu.get(k), 1, '-')}" for k in INVOLVED[rec["system"]])
    return (f"{rec['system']} rep {rec['repeat']}: {rec['throughput']:9.0f} calls/s "
            f"{rec['statements_per_s']:9.0f} stmts/s  p50 {lm.get('p50') or 0:.3f} ms  "
            f"p99 {lm.get('p99') or 0:.3f} ms  errors {rec['errors']}  CPU us/stmt {us}  "
            f"others {rec.get('cpu', {}).get('others_pct', 0) or 0:.0f}%"
            f"{'' if rec['valid'] else '  INVALID'}")


def measure_all(st, server_bin, cli, meta, keep_tmp):
    log = stack.Logger("batch")
    with stack.Stack("batch", keep_tmp=keep_tmp) as s:
        ctx = start_systems(s, st, server_bin, cli, log)
        meta["versions"] = compare.versions("")
        order = run_order(st["repeats"], st["systems"])
        log(f"{len(order)} runs: systems {' '.join(st['systems'])}, {st['repeats']} "
            f"repetition(s), {st['warmup_s']}s warm-up + {st['duration_s']}s each")
        runs = []
        for rep, system in order:
            if system in INSERTS:
                empty_insert_table(ctx)
            before = compare.settle(ctx["pids"], st["quiet_pct"], st["quiet_max_s"])
            time.sleep(st["pause_s"])
            rec = run_one(ctx, st, rep, system, seq=len(runs) + 1)
            rec["before"] = before
            runs.append(rec)
            print(progress_line(rec), file=sys.stderr, flush=True)
            for name, pid in ctx["pids"].items():
                if proc.read_stat(pid) is None:
                    raise stack.HarnessError(f"{name} died during {system} rep {rep}")
    return runs


def main(env=None):
    env = Env(env)
    st, report_md = settings_from(env)
    log = stack.Logger("batch")
    server_bin, cli = stack.binaries(st["build_dir"])
    results_json = f"bench/results/batch-{text.stamp()}{'-quick' if st['quick'] else ''}.json"
    meta = {"started_utc": text.utc_text(), "loadavg_start": proc.load_average()}
    runs = measure_all(st, server_bin, cli, meta, env.flag("BATCH_KEEP_TMP"))
    model, mem = proc.machine_description()
    meta["settings"] = st
    meta["machine"] = {"nproc": os.cpu_count(), "cpu_model": model, "memory": mem,
                       "kernel": os.uname().release, "clock_ticks_per_s": proc.TICK}
    meta["finished_utc"] = text.utc_text()
    summary = summarize(runs, st["systems"])
    doc = {"meta": meta, "summary": summary, "goals": judge(runs, summary), "runs": runs}
    text.write_json(results_json, doc)
    text.write_text(report_md, render(doc, results_json, report_md))
    log(f"wrote {report_md} and {results_json}")
    return 0


# ---------------------------------------------------------------------------
# The report


def spread(g):
    return f"[{fixed(g['min'])}–{fixed(g['max'])}]" if g["per_repeat"] else "[—]"


def goal_figures(name, g, summary):
    """The measured cell of a goal's row."""
    if g["verdict"] == NOT_MEASURED:
        return "not measured"
    if name == "cpu":
        return (f"{fixed(g['numerator'], 1)} vs {fixed(g['denominator'], 1)} µs: "
                f"**{fixed(g['value'])}×** {spread(g)}")
    unit = "rows/s" if name == "insert" else "statements/s"
    return (f"{thousands(g['numerator'])} vs {thousands(g['denominator'])} {unit}: "
            f"**{fixed(g['value'])}×** {spread(g)}")


def cost_parts(e, system):
    """"PostgreSQL 30.1, dbpool-server 5.2, client 4.0" µs per statement."""
    c = e["cpu_us_per_statement_median"]
    return ", ".join(f"{PROCESSES[k]} {fixed(c[k], 1)}" for k in INVOLVED[system])


def biggest_gap(summary, num, den):
    """The process whose CPU per statement differs most between two systems
    (missing in one counts as 0): (name, µs of num, µs of den)."""
    a, b = (summary[s]["cpu_us_per_statement_median"] for s in (num, den))
    keys = [k for k in PROCESSES if k in a or k in b]
    k = max(keys, key=lambda k: abs((a.get(k) or 0) - (b.get(k) or 0)))
    return k, a.get(k) or 0, b.get(k) or 0


def cores_text(summary, system):
    return fixed(summary[system]["cores_used_median"], 2)


def insert_reading(g, summary, st):
    u, i = summary["U"], summary["I"]
    head = (f"**Insert ({'met' if g['verdict'] == MET else 'not met'}: "
            f"{margin_text(g)}).** ")
    body = (f"A row costs, summed over the processes involved, {fixed(u['cpu_us_per_statement_median']['total'], 1)} "
            f"µs of CPU as a unary call (U: {cost_parts(u, 'U')}) and "
            f"{fixed(i['cpu_us_per_statement_median']['total'], 1)} µs in a batch of "
            f"{st['insert_rows']:,} (I: {cost_parts(i, 'I')}). The unary path pays a gRPC call "
            "and a transaction (its own commit) per row; the batch pays them once per "
            f"{st['insert_rows']:,} rows and sends the rows as one pipeline. The processes "
            f"kept {cores_text(summary, 'U')} (U) and {cores_text(summary, 'I')} (I) of the "
            f"machine's cores busy. A call of I took {fixed(i['p50_ms_median'], 1)} ms at the "
            f"median (p99 {fixed(i['p99_ms_median'], 1)} ms), one of U "
            f"{fixed(u['p50_ms_median'], 2)} ms.")
    if g["verdict"] == NOT_MET and g["value"] is not None:
        k, x, y = biggest_gap(summary, "I", "U")
        body += (f" The batched rows/s stayed {margin_text(g)}: per row the batch still "
                 f"spends {fixed(x, 1)} µs in {PROCESSES[k]} against {fixed(y, 1)} µs unary, "
                 "the largest share of what it costs.")
    return head + body


def cpu_reading(g, summary, st):
    s, b = summary["S"], summary["B"]
    head = f"**Server CPU ({'met' if g['verdict'] == MET else 'not met'}: {margin_text(g)}).** "
    body = (f"dbpool-server spent {fixed(s['cpu_us_per_call_median']['dbpool_server'], 0)} µs "
            f"per call of {st['select_batch']} statements, "
            f"{fixed(s['cpu_us_per_statement_median']['dbpool_server'], 1)} µs per statement; "
            f"PgBouncer {fixed(b['cpu_us_per_statement_median']['pgbouncer'], 1)} µs per query "
            f"at {st['select_clients']} clients.")
    split = server_cost_split(summary)
    if split:
        fixed_us, each, n = split
        q = summary["Q"]
        body += (f" Fitting a fixed cost per call plus a cost per statement to the unary "
                 f"select beside them (Q: {fixed(q['cpu_us_per_call_median']['dbpool_server'], 0)} "
                 f"µs for a call of one statement) and to S gives about {fixed(fixed_us, 0)} µs "
                 f"per call (gRPC, the call's turn on a connection, the transaction) and "
                 f"{fixed(each, 1)} µs per statement (its part of the pipeline and of the "
                 f"result), so a batch of {n} costs dbpool-server "
                 f"{fixed(fixed_us / n + each, 1)} µs a statement. (An estimate: Query and "
                 f"ExecuteBatch are not the same code path.)")
        if g["verdict"] == NOT_MET and each > 0:
            body += (f" The per-statement part alone is {fixed(ratio(each, g['denominator']))}× "
                     "PgBouncer's cost per query"
                     + (", so no batch size can meet the goal." if each > g["denominator"]
                        else f"; the goal needs batches of at least "
                        f"{math.ceil(fixed_us / (g['denominator'] - each))} statements."))
    elif g["verdict"] == NOT_MET:
        body += " Run Q beside S to see the server's cost split per call and per statement."
    return head + body


def pipeline_reading(g, summary, st, nproc):
    s, p = summary["S"], summary["P"]
    head = (f"**Pipeline ({'met' if g['verdict'] == MET else 'not met'}: "
            f"{margin_text(g)}).** ")
    body = (f"A statement costs, summed over the processes involved, "
            f"{fixed(s['cpu_us_per_statement_median']['total'], 1)} µs in a batch through dbpool "
            f"(S: {cost_parts(s, 'S')}) and {fixed(p['cpu_us_per_statement_median']['total'], 1)} "
            f"µs in pgbench's pipeline (P: {cost_parts(p, 'P')}). Everything shares the "
            f"machine's {nproc} cores (S kept {cores_text(summary, 'S')} busy, P "
            f"{cores_text(summary, 'P')}), so statements/s follow cores ÷ CPU per statement. "
            f"PostgreSQL spent {fixed(s['cpu_us_per_statement_median']['postgres'], 1)} µs a "
            f"statement in S, whose round trips to it carry {s['per_call']} statements each, "
            f"and {fixed(p['cpu_us_per_statement_median']['postgres'], 1)} µs in P, whose "
            f"pipelines carry {p['per_call']}.")
    if g["verdict"] == NOT_MET and g["value"] is not None:
        k, x, y = biggest_gap(summary, "S", "P")
        body += (f" The largest difference is {PROCESSES[k]}: {fixed(x, 1)} µs per statement "
                 f"in S against {fixed(y, 1)} in P.")
    return head + body


def render(doc, json_path, md_path):
    """The Markdown report of a batch result document."""
    meta, summary, runs = doc["meta"], doc["summary"], doc["runs"]
    st, v, m = meta["settings"], meta["versions"], meta["machine"]
    goals = judge(runs, summary)
    systems = [x for x in SYSTEMS if x in summary]
    L = []
    w = L.append
    w("# ExecuteBatch: batched inserts and selects against unary calls, PgBouncer and "
      "pgbench's pipeline\n")
    link = os.path.relpath(json_path, os.path.dirname(os.path.abspath(md_path)) or ".")
    w(f"Generated by `bench/batch` (run {meta['started_utc']} – {meta['finished_utc']}); every "
      f"number below is computed from the raw results in [`{json_path}`]({link}) — do not "
      f"edit by hand, re-run the script.\n")
    if st["quick"]:
        w("> **Quick mode (`BATCH_QUICK=1`)**: one short repetition per system, a smoke test "
          "of the script, not a measurement to quote.\n")
    w("## Goals\n")
    w("The batch issue's goals, judged on this run's medians (ratio of the medians; in "
      "brackets the range of the ratios within each repetition, whose runs are seconds "
      "apart).\n")
    rows = []
    for name, g in goals.items():
        what, target = goal_text(name, st)
        verdict = g["verdict"]
        rows.append([what, target, goal_figures(name, g, summary),
                     f"**{verdict.upper()}**" if verdict != NOT_MEASURED else verdict,
                     margin_text(g)])
    L += table(["goal", "target", "measured (median [per repetition])", "verdict", "margin"],
               ["---", "---", "---", "---", "---"], rows)
    w("")
    readings = []
    if goals["insert"]["verdict"] != NOT_MEASURED:
        readings.append(insert_reading(goals["insert"], summary, st))
    if goals["cpu"]["verdict"] != NOT_MEASURED:
        readings.append(cpu_reading(goals["cpu"], summary, st))
    if goals["pipeline"]["verdict"] != NOT_MEASURED:
        readings.append(pipeline_reading(goals["pipeline"], summary, st, m["nproc"]))
    for r in readings:
        w(r + "\n")
    w("## Results\n")
    w("Medians over the valid runs. *calls/s* are dbpool calls or pgbench transactions; "
      "*statements/s* multiply them by the statements each carries. Latency is per call "
      "(transaction). CPU is µs per statement.\n")
    procs = [k for k in PROCESSES if any(k in INVOLVED[x] for x in systems)]
    rows = []
    for x in systems:
        e = summary[x]
        c = e["cpu_us_per_statement_median"]
        note = "" if e["valid_runs"] == e["runs"] else \
            f" ({e['runs'] - e['valid_runs']} invalid run(s))"
        rows.append([f"{SYSTEMS[x]}{note}", str(e["per_call"]), str(e["concurrency"]),
                     thousands(e["throughput_median"]),
                     f"{thousands(e['statements_per_s_median'])} "
                     f"[{thousands(e['statements_per_s_min'])}–"
                     f"{thousands(e['statements_per_s_max'])}]",
                     fixed(e["p50_ms_median"], 2), fixed(e["p99_ms_median"], 2),
                     *(fixed(c.get(k), 1) if k in INVOLVED[x] else "" for k in procs),
                     fixed(c["total"], 1), fixed(e["cores_used_median"], 2),
                     f"{e['errors']:,}"])
    L += table(["system", "statements a call", "callers", "calls/s",
                "statements/s [min–max]", "p50 ms", "p99 ms",
                *(f"{PROCESSES[k]} µs/stmt" for k in procs), "total µs/stmt", "cores used",
                "errors"], ["---", *["---:"] * (len(procs) + 9)], rows)
    w("")
    w("## Method\n")
    w(method(st, systems))
    w(noise_note(runs, st) + "\n")
    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| `nproc` | {m['nproc']} |")
    w(f"| CPU (`/proc/cpuinfo` model name) | {m['cpu_model']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| PostgreSQL | {v['postgres']} |")
    w(f"| PgBouncer | {v['pgbouncer']} |")
    w(f"| pgbench | {v['pgbench']} |")
    w(f"| dbpool | {v['dbpool']} |")
    w(f"| date (UTC) | {meta['started_utc']} – {meta['finished_utc']} |")
    w(f"| load average before the runs | {meta['loadavg_start']} |")
    return "\n".join(L) + "\n"


def method(st, systems):
    pool = st["pool_size"]
    items = {
        "U": f"* **U — unary insert**: `dbpool bench --sql \"{INSERT_SQL}\" "
             f"{' '.join(INSERT_PARAMS)} --concurrency {st['insert_clients']}`: one Query, so "
             f"one transaction, per row.",
        "I": f"* **I — batched insert**: the same with `--batch {st['insert_rows']}`: each "
             f"call one ExecuteBatch of {st['insert_rows']:,} INSERTs, run by dbpool-server "
             f"in one transaction as one pipeline, the statement prepared once.",
        "S": f"* **S — batched select**: `dbpool bench --sql \"{st['sql']}\" "
             f"{' '.join(SELECT_PARAMS)} --batch {st['select_batch']} --concurrency "
             f"{st['select_clients']}`: each call one ExecuteBatch of {st['select_batch']} "
             f"point selects, each with its own `aid`.",
        "B": f"* **B — PgBouncer**: `pgbench -M simple -c {st['select_clients']}` with "
             f"bench/compare's script (`\\set aid random(1, 1000000)` and the point select) "
             f"through PgBouncer 1.18 (`pool_mode=transaction`, `default_pool_size={pool}`), "
             f"as bench/compare's B.",
        "P": f"* **P — pgbench's pipeline**: `pgbench -M prepared -c {st['select_clients']}` "
             f"directly against PostgreSQL with a script of {st['pipeline']} `\\set aidK "
             f"random(1, 1000000)` and, between `\\startpipeline` and `\\endpipeline`, "
             f"{st['pipeline']} point selects `... WHERE aid = :aidK`: one transaction is one "
             f"pipeline of {st['pipeline']} statements.",
        "Q": f"* **Q — unary select** (reference, no goal): `dbpool bench --sql "
             f"\"{st['sql']}\" {' '.join(SELECT_PARAMS)} --concurrency "
             f"{st['select_clients']}`, bench/compare's C at that concurrency.",
    }
    out = [f"PostgreSQL with bench/compare's settings and pgbench's tables (scale 10, "
           f"database {st['database_size']}), plus `{INSERT_TABLE}` (`{INSERT_DDL}`), "
           f"emptied (`TRUNCATE`) before each insert run. In front of it PgBouncer and one "
           f"Release dbpool-server (`{' '.join(compare.SERVER_ARGS)}`), all started at the "
           f"beginning. `aid` is drawn uniformly from 1..1,000,000, the insert's `delta` from "
           f"-5000..5000; `seq:1` gives the k-th INSERT of a run id k + 1. Closed loops:\n"]
    out += [items[x] for x in systems]
    order = "".join(systems)
    rotations = ", ".join(order[k:] + order[:k] for k in range(min(3, len(order))))
    out.append(f"\n{st['repeats']} repetition(s); each runs {and_list(systems)} back to back, "
               f"the order rotated by one per repetition ({rotations}, …). Each run: "
               f"{st['warmup_s']} s of warm-up, then {st['duration_s']} s measured. Before "
               f"each run the script waits until the cluster's process count is stable, then "
               f"up to {st['quiet_max_s']:g} s for a second in which other processes use at "
               f"most {st['quiet_pct']:g} % of the machine, then {st['pause_s']:g} s. An "
               f"insert run counts the table's rows afterwards and is invalid if there are "
               f"fewer than the INSERTs it reported.\n")
    out.append("* **Statements/s**: successful calls (pgbench: transactions, from its "
               "per-transaction log `-l`) in the measured window ÷ its length, times the "
               "statements per call. dbpool bench counts a batch as successful only when it "
               "returned a result for every statement.")
    out.append("* **CPU µs/statement**: `utime + stime` deltas from `/proc/PID/stat` over the "
               f"measured window (less {min(0.25, st['duration_s'] / 10):.2f} s at each end), "
               "divided by the calls (transactions) completed in it and by the statements "
               "per call. PostgreSQL = postmaster plus all its children; dbpool-server all "
               "threads; client = dbpool bench or pgbench. *total* = the processes involved "
               "in that system; *cores used* = their CPU time ÷ the window.")
    return "\n".join(out) + "\n"
