"""Snapshots of CPU time and context switches over a measured window."""
import time

from . import proc


def process_sample(pid):
    """(CPU ticks, context switches) of a process, None when it is gone."""
    ticks = proc.cpu_ticks(pid) if pid else None
    return None if ticks is None else (ticks, proc.ctx_switches(pid))


def snapshot(postmaster, procs):
    """The machine's ticks, the postmaster with all its children, and the
    named processes {name: pid}, at one moment ("t", the middle of the
    time the reading took)."""
    t0 = time.time()
    machine = proc.machine_ticks()
    pg = {}
    for pid in [postmaster, *proc.children(postmaster)]:
        x = process_sample(pid)
        if x:
            pg[pid] = x
    named = {name: process_sample(pid) for name, pid in procs.items()}
    return {"t": (t0 + time.time()) / 2, "machine": machine, "pg": pg, "procs": named}


def window_figures(s1, s2, queries, involved):
    """CPU per query, cores used and context switches per query of the
    PostgreSQL processes and the named ones between two snapshots, and the
    machine's share used by everything else. None for a process that was
    not there at both ends."""
    window = s2["t"] - s1["t"]
    cpu, cs = {}, {}
    cpu["postgres"] = sum(v[0] - s1["pg"].get(p, (0, 0))[0] for p, v in s2["pg"].items())
    cs["postgres"] = sum(v[1] - s1["pg"].get(p, (0, 0))[1] for p, v in s2["pg"].items())
    for name in involved:
        x, y = s1["procs"][name], s2["procs"][name]
        both = x is not None and y is not None
        cpu[name] = (y[0] - x[0]) if both else None
        cs[name] = (y[1] - x[1]) if both else None
    ours = sum(v for v in cpu.values() if v)
    m = {k: s2["machine"][k] - s1["machine"][k] for k in s1["machine"]}
    total = m["total"] or 1

    def per(values, scale):
        return {k: (v * scale if v is not None else None) for k, v in values.items()}
    return {
        "window_s": round(window, 3),
        "queries": round(queries),
        "us_per_query": per(cpu, proc.US_PER_TICK / queries),
        "cores_used": per(cpu, 1 / proc.TICK / window),
        "ctx_switches_per_query": per(cs, 1 / queries),
        "postgres_processes": [len(s1["pg"]), len(s2["pg"])],
        "postgres_exited_in_window": len(set(s1["pg"]) - set(s2["pg"])),
        "machine_busy_pct": 100.0 * (m["tasks"] + m["irq"] + m["steal"]) / total,
        "irq_softirq_pct": 100.0 * m["irq"] / total,
        "steal_pct": 100.0 * m["steal"] / total,
        "others_pct": max(0.0, 100.0 * (m["tasks"] - ours) / total),
    }


def sleep_until(t):
    """Sleeps until time.time() reaches t, in steps of at most 0.5 s."""
    while True:
        d = t - time.time()
        if d <= 0:
            return
        time.sleep(min(d, 0.5))
