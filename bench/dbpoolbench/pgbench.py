"""pgbench's output: the per-transaction log (-l), progress lines (-P)
and the closing summary."""
import glob


def parse_log(lines, lo, hi, cpu_lo, cpu_hi):
    """From per-transaction log lines ("client tx latency_us script
    epoch_s epoch_us ..."): the latencies (ms, ascending) of transactions
    that ended in [lo, hi], how many ended in [cpu_lo, cpu_hi] (the CPU
    window) and how many failed in [lo, hi] (latency field not a number)."""
    lat, in_cpu, failed = [], 0, 0
    for line in lines:
        p = line.split()
        try:
            end = int(p[4]) + int(p[5]) / 1e6
        except (IndexError, ValueError):
            continue
        if not p[2].isdigit():
            if lo <= end <= hi:
                failed += 1
            continue
        if lo <= end <= hi:
            lat.append(int(p[2]) / 1000.0)
        if cpu_lo <= end <= cpu_hi:
            in_cpu += 1
    lat.sort()
    return lat, in_cpu, failed


def read_logs(prefix, lo, hi, cpu_lo, cpu_hi):
    """parse_log over every log file pgbench wrote for --log-prefix PREFIX
    (one per thread: PREFIX.PID and PREFIX.PID.N)."""
    def lines():
        for path in glob.glob(prefix + ".[0-9]*"):
            with open(path) as f:
                yield from f
    return parse_log(lines(), lo, hi, cpu_lo, cpu_hi)


def is_progress(line):
    return line.startswith("progress:")


def reported_tps(stdout):
    """The "tps = N (...)" figure of pgbench's summary, or None."""
    for line in stdout.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    return None
