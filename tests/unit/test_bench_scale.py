"""The arithmetic and the scrape server of `make bench-scale` (benchmarks/scale_stats.py,
benchmarks/scale_server.py): no cluster needed."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as hs

from benchmarks import scale_stats as st
from benchmarks.scale_server import Book, exposition, make_app
from phasegate.metrics.scrape import parse_exposition


def _req(verb: str, resource: str, sub: str, code: int, n: int, group: str = "", version: str = "v1") -> str:
    """One apiserver_request_total line, with every label the kube-apiserver 1.35 writes."""
    scope, component = ("resource", "apiserver") if resource else ("", "apiserver" if sub in ("api", "apis") else "")
    return (f'apiserver_request_total{{code="{code}",component="{component}",dry_run="",group="{group}",'
            f'resource="{resource}",scope="{scope}",subresource="{sub}",verb="{verb}",'
            f'version="{version if resource else ""}"}} {n}')


PG = "phasegate.dev"
APISERVER = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, ...",
    "# TYPE apiserver_request_total counter",
    _req("GET", "", "/metrics", 200, 7),
    _req("GET", "", "apis", 200, 5),
    _req("GET", "pods", "", 200, 90),
    _req("GET", "pods", "", 404, 10),
    _req("PATCH", "tradingstrategies", "status", 200, 40, PG, "v1alpha1"),
    _req("PATCH", "tradingstrategies", "status", 409, 2, PG, "v1alpha1"),
    _req("UPDATE", "tradingstrategies", "status", 200, 3, PG, "v1alpha1"),
    _req("LIST", "statefulsets", "", 200, 4, "apps"),
    "# HELP apiserver_request_duration_seconds [STABLE] Response latency distribution ...",
    "# TYPE apiserver_request_duration_seconds histogram",
    'apiserver_request_duration_seconds_bucket{component="apiserver",group="",resource="pods",verb="GET",le="0.005"} 99',
]) + "\n"


def test_quantile_interpolates_between_ranks_and_is_nan_when_empty():
    assert st.quantile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5
    assert st.quantile([5.0], 0.99) == 5.0
    assert st.quantile(range(101), 0.99) == pytest.approx(99.0)
    assert math.isnan(st.quantile([], 0.5))
    with pytest.raises(ValueError, match="within 0..1"):
        st.quantile([1.0], 50)


@given(hs.lists(hs.floats(-1e6, 1e6), min_size=1), hs.floats(0, 1))
def test_quantile_is_within_the_sample(values, q):
    assert min(values) <= st.quantile(values, q) <= max(values)


def test_distribution_scales_and_handles_empty():
    d = st.distribution([0.010, 0.020, 0.030], scale=1000, digits=1)
    assert d == {"n": 3, "p50": 20.0, "p99": 29.8, "max": 30.0, "mean": 20.0}
    assert st.distribution([]) == {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}


def test_apiserver_requests_sum_over_codes_and_keep_nonresource_apart():
    got = st.apiserver_requests(APISERVER)
    assert got == {
        ("GET", "nonresource:/metrics"): 7,
        ("GET", "nonresource:apis"): 5,
        ("GET", "pods"): 100,
        ("PATCH", "tradingstrategies/status"): 42,
        ("UPDATE", "tradingstrategies/status"): 3,
        ("LIST", "statefulsets"): 4,
    }


def test_counter_delta_drops_unchanged_and_refuses_a_reset():
    before = {("GET", "pods"): 10.0, ("LIST", "pods"): 3.0}
    after = {("GET", "pods"): 25.0, ("LIST", "pods"): 3.0, ("PATCH", "events"): 2.0}
    assert st.counter_delta(before, after) == {("GET", "pods"): 15.0, ("PATCH", "events"): 2.0}
    with pytest.raises(ValueError, match="went down"):
        st.counter_delta({("GET", "pods"): 10.0}, {("GET", "pods"): 4.0})


def test_per_strategy_per_interval_subtracts_baseline_rate_and_own_requests():
    # 60 s window = 6 intervals of 10 s, 100 strategies.
    delta = {("GET", "pods"): 600.0 + 120.0, ("PUT", "leases"): 66.0, ("GET", "nonresource:/metrics"): 1.0}
    baseline = {("PUT", "leases"): 33.0, ("GET", "pods"): 60.0}  # over 30 s: 1.1/s and 2/s
    rates = st.per_strategy_per_interval(
        delta, 60.0, baseline, 30.0, 100, 10.0, own={("GET", "nonresource:/metrics"): 1.0}
    )
    # pods: 720 - 2/s * 60 s = 600 over 100 strategies and 6 intervals = 1.0
    # leases: 66 - 1.1/s * 60 = 0: the control plane's own, not the operator's
    assert rates == {"GET pods": 1.0}


def test_per_strategy_per_interval_clamps_baseline_noise_and_checks_arguments():
    rates = st.per_strategy_per_interval({("PUT", "leases"): 10.0}, 60.0, {("PUT", "leases"): 20.0}, 30.0, 10, 10.0)
    assert rates == {}
    with pytest.raises(ValueError, match="must all be > 0"):
        st.per_strategy_per_interval({}, 0.0, {}, 30.0, 10, 10.0)


def test_status_writes_count_patch_and_update_of_the_status_only():
    rates = {"PATCH tradingstrategies/status": 1.0, "UPDATE tradingstrategies/status": 0.25,
             "PATCH tradingstrategies": 3.0, "GET tradingstrategies/status": 9.0}
    assert st.status_writes(rates) == 1.25


LAG_HIST = """\
# TYPE phasegate_evaluation_lag_seconds histogram
phasegate_evaluation_lag_seconds_bucket{namespace="a",le="0.1"} 50.0
phasegate_evaluation_lag_seconds_bucket{namespace="a",le="1.0"} 90.0
phasegate_evaluation_lag_seconds_bucket{namespace="a",le="+Inf"} 100.0
phasegate_evaluation_lag_seconds_bucket{namespace="b",le="0.1"} 50.0
phasegate_evaluation_lag_seconds_bucket{namespace="b",le="1.0"} 90.0
phasegate_evaluation_lag_seconds_bucket{namespace="b",le="+Inf"} 100.0
phasegate_evaluation_lag_seconds_count{namespace="a"} 100.0
phasegate_evaluation_lag_seconds_sum{namespace="a"} 20.0
"""


def test_histogram_buckets_sum_over_labels_and_are_none_when_absent():
    assert st.histogram_buckets(LAG_HIST, "phasegate_evaluation_lag_seconds") == [(0.1, 100.0), (1.0, 180.0), (math.inf, 200.0)]
    assert st.histogram_buckets(APISERVER, "phasegate_evaluation_lag_seconds") is None


def test_histogram_quantile_as_prometheus_computes_it():
    b = [(0.1, 100.0), (1.0, 180.0), (math.inf, 200.0)]
    assert st.histogram_quantile(b, 0.25) == pytest.approx(0.05)  # rank 50 within (0, 0.1]
    assert st.histogram_quantile(b, 0.7) == pytest.approx(0.1 + 0.9 * 40 / 80)  # rank 140 within (0.1, 1]
    assert st.histogram_quantile(b, 0.99) == 1.0  # in +Inf: the last finite bound
    assert math.isnan(st.histogram_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5))
    with pytest.raises(ValueError, match=r"\+Inf"):
        st.histogram_quantile([(0.1, 3.0)], 0.5)


def test_counter_sum_adds_labelled_series_and_is_zero_when_absent():
    text = """\
# TYPE phasegate_fenced_writes_total counter
phasegate_fenced_writes_total{op="patch_status"} 3.0
phasegate_fenced_writes_total{op="apply"} 2.0
phasegate_fenced_writes_created{op="apply"} 1.7e9
# TYPE phasegate_status_conflicts_total counter
"""
    assert st.counter_sum(text, "phasegate_fenced_writes_total") == 5.0
    assert st.counter_sum(text, "phasegate_status_conflicts_total") == 0.0
    assert st.counter_sum(text, "phasegate_halts_total") == 0.0


def test_bucket_delta_is_what_was_observed_between_two_reads():
    before = [(0.1, 10.0), (math.inf, 12.0)]
    after = [(0.1, 15.0), (math.inf, 20.0)]
    assert st.bucket_delta(before, after) == [(0.1, 5.0), (math.inf, 8.0)]
    assert st.bucket_delta(None, after) == after


def test_scrape_lags_are_gaps_minus_interval_ending_in_the_window():
    times = [100.0, 110.2, 120.2, 133.0, 143.0]
    assert st.scrape_lags(times, 10.0, 105.0, 140.0) == pytest.approx([0.2, 0.0, 2.8])
    assert st.scrape_lags([5.0], 10.0, 0.0, 100.0) == []
    assert st.missed_pods({"a": [1.0, 50.0], "b": [1.0]}, ["a", "b", "c"], 10.0, 60.0) == ["b", "c"]


def test_proc_stat_counts_fields_after_the_last_parenthesis():
    # comm "(python (x) y)": spaces and parentheses inside the name
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "100", "0", "0", "0", "250", "50"] + ["0"] * 8 + ["12345"]
    stat = "4242 (python (x) y) " + " ".join(fields) + " 18446744073709551615 1 1 0"
    assert st.proc_stat(stat) == (300.0, 12345)
    assert st.cpu_fraction(100.0, 400.0, 10.0, 100) == pytest.approx(0.3)


def test_exposition_reads_as_a_healthy_strategy_to_the_operator():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    snap = parse_exposition(exposition(100000.0, 50000.0, 42, 1.7e9), now)
    assert snap.portfolio_value == Decimal("100000.0")
    assert snap.cash == Decimal("50000.0")
    assert snap.orders_submitted == snap.orders_filled == Decimal(42)
    assert snap.errors == 0 and not snap.breaker_trips
    assert snap.order_latency is not None
    assert snap.counters_created == Decimal("1700000000.0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_server_tells_pods_apart_by_the_address_dialled_and_serves_a_breach_to_one():
    """One server on 0.0.0.0: a read of 127.0.0.2 and one of 127.0.0.3 are recorded apart,
    and a value set for 127.0.0.3 is served to it alone."""

    async def go() -> tuple[str, str, dict]:
        port = _free_port()
        book = Book(100000.0)
        runner = web.AppRunner(make_app(book))
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()
        loop = asyncio.get_running_loop()

        def get(url: str, data: bytes | None = None) -> str:
            req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read().decode()

        try:
            await loop.run_in_executor(None, get, f"http://127.0.0.1:{port}/bench/set",
                                       b'{"ip": "127.0.0.3", "portfolio_value": "87000"}')
            a = await loop.run_in_executor(None, get, f"http://127.0.0.2:{port}/metrics")
            b = await loop.run_in_executor(None, get, f"http://127.0.0.3:{port}/metrics")
            await loop.run_in_executor(None, get, f"http://127.0.0.3:{port}/metrics")
            scrapes = await loop.run_in_executor(None, get, f"http://127.0.0.1:{port}/bench/scrapes")
        finally:
            await runner.cleanup()


        return a, b, json.loads(scrapes)["scrapes"]

    a, b, scrapes = asyncio.run(go())
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_exposition(a, now).portfolio_value == Decimal("100000.0")
    assert parse_exposition(b, now).portfolio_value == Decimal("87000.0")
    assert {ip: len(ts) for ip, ts in scrapes.items()} == {"127.0.0.2": 1, "127.0.0.3": 2}
