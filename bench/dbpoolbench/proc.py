"""Figures of processes and of the machine, read from /proc.

The parse_* functions take the file's text, so that they can be tested on
fixtures; the others read the live files and return None for a process
that is gone.
"""
import os
import re

TICK = os.sysconf("SC_CLK_TCK")
US_PER_TICK = 1e6 / TICK


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError:
        return None


def parse_stat(text):
    """(ppid, utime + stime ticks) from /proc/PID/stat. The command name in
    parentheses may hold spaces and parentheses, so fields count from the
    last ')'."""
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def read_stat(pid):
    text = _read(f"/proc/{pid}/stat")
    return parse_stat(text) if text else None


def cpu_ticks(pid):
    """utime + stime of all threads of a process, in clock ticks."""
    s = read_stat(pid)
    return s[1] if s else None


def parse_status(text):
    """VmRSS (kB), Threads and context switches (voluntary + involuntary)
    from a /proc/PID/status or /proc/PID/task/TID/status text."""
    out = {"rss_kb": None, "threads": None, "ctx_switches": 0}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss_kb"] = int(value.split()[0])
        elif key == "Threads":
            out["threads"] = int(value.split()[0])
        elif key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            out["ctx_switches"] += int(value.split()[0])
    return out


def status(pid):
    text = _read(f"/proc/{pid}/status")
    return parse_status(text) if text else None


def ctx_switches(pid):
    """Context switches of every thread of a process (the process's own
    status counts only its main thread)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    n = 0
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/status")
        if text:
            n += parse_status(text)["ctx_switches"]
    return n


def threads(pid):
    """{tid: (name, CPU ticks, context switches)} of every thread of a
    process; empty for a process that is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    out = {}
    for tid in tids:
        stat = _read(f"/proc/{pid}/task/{tid}/stat")
        status_text = _read(f"/proc/{pid}/task/{tid}/status")
        name = _read(f"/proc/{pid}/task/{tid}/comm")
        if stat and status_text and name:
            out[tid] = (name.strip(), parse_stat(stat)[1],
                        parse_status(status_text)["ctx_switches"])
    return out


def thread_group(name):
    """A thread's name without its number, so that the threads of one pool
    (dbpool-io-0, dbpool-io-1) count together."""
    return re.sub(r"[-_ ]?\d+$", "", name) or name


def per_thread_group(before, after, calls):
    """CPU µs and context switches per call of each group of threads
    between two threads() samples, over the threads alive at both; groups
    that did nothing are left out."""
    groups = {}
    for tid, (name, ticks, switches) in after.items():
        if tid in before:
            g = groups.setdefault(thread_group(name), [0, 0])
            g[0] += ticks - before[tid][1]
            g[1] += switches - before[tid][2]
    return {k: {"cpu_us_per_call": t * US_PER_TICK / calls, "switches_per_call": n / calls}
            for k, (t, n) in sorted(groups.items()) if t or n}


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid):
    """Direct children of a process."""
    kids = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
        return kids
    except OSError:
        pass
    # Kernels without task/*/children: scan every process's parent.
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = read_stat(int(d))
            if s and s[0] == pid:
                kids.add(int(d))
    return kids


def parse_machine_ticks(text):
    """The machine's tick counters from the first line of /proc/stat:
    tasks (user + nice + system), irq (+ softirq), steal, busy (all but
    idle and iowait) and total (the first eight fields)."""
    v = [int(x) for x in text.splitlines()[0].split()[1:9]]
    total = sum(v)
    return {"tasks": v[0] + v[1] + v[2], "irq": v[5] + v[6], "steal": v[7],
            "busy": total - v[3] - v[4], "total": total}


def machine_ticks():
    return parse_machine_ticks(_read("/proc/stat"))


def load_average():
    """The three load averages of /proc/loadavg, as text."""
    return " ".join(_read("/proc/loadavg").split()[:3])


def machine_description():
    """(CPU model name, memory in GiB as text)."""
    model = "?"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return model, mem
