"""Statistics the reports share."""
import math
import statistics


def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..1) of an ascending list; None when
    it is empty."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[k - 1]


def median(values):
    """Median of the values that are not None; None when there are none."""
    xs = [x for x in values if x is not None]
    return statistics.median(xs) if xs else None


def fmean_or_none(values):
    return statistics.fmean(values) if values else None


def slope(points):
    """Least-squares slope of (x, y) points; None with fewer than two
    distinct x."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((p[0] - mx) ** 2 for p in points)
    if not den:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den


def ratio(num, den):
    """num / den, None when either is missing or zero."""
    return num / den if num and den else None
