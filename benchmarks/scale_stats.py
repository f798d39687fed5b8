"""Pure arithmetic of `make bench-scale`: parsing the apiserver's and the operator's
metrics, per-strategy rates, scrape gaps, percentiles, /proc figures. No I/O here, so
every figure the benchmark prints can be checked by a unit test
(tests/unit/test_bench_scale.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# A (verb, resource) key: "PATCH tradingstrategies/status", "LIST pods", "GET nonresource:/metrics".
RequestKey = tuple[str, str]


def quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks (numpy's default);
    NaN for no values, so that an empty sample is never mistaken for a zero latency."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be within 0..1, got {q}")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def distribution(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """n, p50, p99, max (and mean) of a sample, times `scale` (1000 for ms)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": round(quantile(values, 0.5) * scale, digits),
        "p99": round(quantile(values, 0.99) * scale, digits),
        "max": round(max(values) * scale, digits),
        "mean": round(sum(values) / len(values) * scale, digits),
    }


def request_key(labels: Mapping[str, str]) -> RequestKey:
    """The apiserver's labels of one request counter, as (verb, resource[/subresource]).

    Requests that are not for a resource (/metrics, /healthz, discovery) have an empty
    resource and the path in `subresource`: they are kept apart as `nonresource:<path>`."""
    verb = labels.get("verb", "")
    resource, sub = labels.get("resource", ""), labels.get("subresource", "")
    if not resource:
        return verb, f"nonresource:{sub}"
    return verb, f"{resource}/{sub}" if sub else resource


def apiserver_requests(text: str) -> dict[RequestKey, float]:
    """apiserver_request_total from the kube-apiserver's /metrics, summed over code,
    scope, group, version, component and dry_run, by (verb, resource)."""
    out: dict[RequestKey, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in ("apiserver_request", "apiserver_request_total"):
            continue
        for s in fam.samples:
            if s.name != "apiserver_request_total":
                continue
            key = request_key(s.labels)
            out[key] = out.get(key, 0.0) + s.value
    return out


def counter_delta(before: Mapping[RequestKey, float], after: Mapping[RequestKey, float]) -> dict[RequestKey, float]:
    """after - before per key; a key new in `after` started at 0. A counter that went
    down means the apiserver restarted in the window: that is an error, not a figure."""
    out: dict[RequestKey, float] = {}
    for key, value in after.items():
        d = value - before.get(key, 0.0)
        if d < 0:
            raise ValueError(f"apiserver counter {key} went down ({before[key]} -> {value}): did the apiserver restart?")
        if d:
            out[key] = d
    return out


def per_strategy_per_interval(
    delta: Mapping[RequestKey, float],
    window_s: float,
    baseline: Mapping[RequestKey, float],
    baseline_s: float,
    n: int,
    interval_s: float,
    own: Mapping[RequestKey, float] | None = None,
) -> dict[str, float]:
    """Requests per strategy per evaluation interval, by "VERB resource".

    `delta` is the count over the measured window (operator running); the control plane's
    own traffic, `baseline` counted over `baseline_s` before the operator started, is
    subtracted at its rate; `own` is what the benchmark itself sent in the window. A
    result below zero is noise of the baseline, clamped to 0."""
    if window_s <= 0 or baseline_s <= 0 or n <= 0 or interval_s <= 0:
        raise ValueError("window, baseline window, strategy count and interval must all be > 0")
    intervals = window_s / interval_s
    out: dict[str, float] = {}
    for key in sorted(set(delta) | set(baseline)):
        count = delta.get(key, 0.0) - baseline.get(key, 0.0) * window_s / baseline_s - (own or {}).get(key, 0.0)
        value = max(0.0, count) / n / intervals
        if value > 0:
            out[f"{key[0]} {key[1]}"] = round(value, 4)
    return out


def status_writes(rates: Mapping[str, float]) -> float:
    """Writes of the strategies' status subresource (PATCH or PUT), per strategy per interval."""
    writes = ("PATCH tradingstrategies/status", "UPDATE tradingstrategies/status")
    return round(sum(v for k, v in rates.items() if k in writes), 4)


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]] | None:
    """Cumulative (upper bound, count) buckets of histogram `name` in an exposition, summed
    over its labels; None when the exposition has no such histogram."""
    sums: dict[float, float] = {}
    found = False
    for fam in text_string_to_metric_families(text):
        if fam.name != name:
            continue
        for s in fam.samples:
            if s.name == f"{name}_bucket":
                found = True
                le = float(s.labels["le"])
                sums[le] = sums.get(le, 0.0) + s.value
    return sorted(sums.items()) if found else None


def counter_sum(text: str, name: str) -> float:
    """The sum over labels of counter `name` (its `_total` samples) in an exposition; 0
    when absent (a labelled counter has no series before its first increment)."""
    family = name.removesuffix("_total")
    return sum(
        s.value for fam in text_string_to_metric_families(text) if fam.name == family
        for s in fam.samples if s.name == f"{family}_total"
    )


def bucket_delta(before: list[tuple[float, float]] | None, after: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The histogram of the observations made between two reads of it."""
    old = dict(before or [])
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile over cumulative buckets: linear within the bucket
    the rank falls in; the upper bound of the last finite bucket when it falls in +Inf;
    NaN with no observations."""
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        raise ValueError("a histogram needs its +Inf bucket")
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def scrape_lags(times: Iterable[float], interval_s: float, start: float, end: float) -> list[float]:
    """Gap between consecutive scrapes of one pod minus the interval, for the gaps that
    end inside [start, end]: 0 is on time, 2.5 is an evaluation 2.5 s late. A gap shorter
    than the interval (an event-driven read between two ticks) gives a negative lag."""
    ordered = sorted(times)
    return [b - a - interval_s for a, b in zip(ordered, ordered[1:], strict=False) if start <= b <= end]


def missed_pods(times_by_pod: Mapping[str, list[float]], pods: Iterable[str], start: float, end: float) -> list[str]:
    """Pods that were not scraped at all within [start, end]."""
    return sorted(p for p in pods if not any(start <= t <= end for t in times_by_pod.get(p, [])))


def proc_stat(stat: str) -> tuple[float, int]:
    """(utime + stime in clock ticks, rss in pages) from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may hold spaces or parentheses
    itself, so the fields are counted from the last ')'."""
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, rss 24
    return float(int(rest[11]) + int(rest[12])), int(rest[21])


def proc_kernel_ticks(stat: str) -> int:
    """stime (field 15) of /proc/<pid>/stat: CPU spent in the kernel on the process's behalf."""
    return int(stat[stat.rindex(")") + 2 :].split()[12])


def cpu_fraction(ticks_before: float, ticks_after: float, seconds: float, clk_tck: int) -> float:
    """CPU used over a wall-clock span, in cores (1.0 is one core busy all the time)."""
    if seconds <= 0:
        raise ValueError("the span must be > 0 s")
    return (ticks_after - ticks_before) / clk_tck / seconds
