"""The Prometheus source: query building, and response parsing against a stub API on 127.0.0.1.

The real-Prometheus test is end-to-end (kubernetes_sd against the local control plane).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiohttp import web

from phasegate.metrics import (
    DEFAULT_QUERIES,
    QUERY_KEYS,
    MetricsUnavailable,
    PrometheusMetricsSource,
    ScrapeTarget,
    build_queries,
    check_overrides,
)
from phasegate.metrics.prometheus import parse_query_response

from loopback import loopback_server  # tests/support

NOW = datetime(2024, 3, 11, 14, 30, tzinfo=UTC)
TARGET = ScrapeTarget(
    namespace="trading", strategy="momentum", pod="momentum-0", pod_ip="10.0.0.7", port=9100,
    now=NOW, timeout_seconds=2,
)


def vec(*rows):
    """rows: (labels, value-string)"""
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": m, "value": [1710167400, v]} for m, v in rows]},
    }


HEALTHY = {
    "strategy_portfolio_value": vec(({"__name__": "strategy_portfolio_value"}, "1000000")),
    "strategy_cash": vec(({}, "500000")),
    "strategy_largest_position_fraction": vec(({}, "0.02")),
    "strategy_orders_submitted_total": vec(({}, "40")),
    "strategy_orders_filled_total": vec(({}, "39")),
    "strategy_errors_total": vec(({}, "1")),
    "strategy_circuit_breaker_trips_total": vec(({"breaker_type": "drawdown"}, "2")),
    "strategy_order_latency_seconds_bucket": vec(({"le": "0.1"}, "3"), ({"le": "0.5"}, "4"), ({"le": "+Inf"}, "4")),
    "strategy_order_latency_seconds_sum": vec(({}, "0.55")),
    "strategy_order_latency_seconds_count": vec(({}, "4")),
    "strategy_signal_alignment_ratio": vec(({}, "0.99")),
    "strategy_position_discrepancy_ratio": vec(({}, "0")),
    "strategy_execution_quality_ratio": vec(({}, "0.95")),
    "strategy_slippage_bps": vec(),  # not exported
    "process_start_time_seconds": vec(({}, "1710160000.5")),
}


@asynccontextmanager
async def stub(answers: dict, *, status: int = 200, delay: float = 0.0):
    """A Prometheus API stub answering by the metric name the query starts with.

    An answer is a JSON body, or (body, HTTP status) for that query alone.
    """
    seen: list[dict] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        if delay:
            await asyncio.sleep(delay)
        q = request.query["query"]
        name = q.split("{", 1)[0].strip()
        body = answers.get(name, vec())
        code = status
        if isinstance(body, tuple):
            body, code = body
        return web.json_response(body, status=code)

    async with loopback_server("/api/v1/query", query) as port:
        yield f"http://127.0.0.1:{port}", seen


def read(answers, overrides=None, **kw):
    async def go():
        async with stub(answers, **kw) as (address, seen):
            snap = await PrometheusMetricsSource(address + "/", overrides).read(TARGET)
            return snap, seen

    return asyncio.run(go())


def test_default_queries_select_the_pod_by_namespace_and_pod_labels():
    q = build_queries({}, TARGET)
    assert set(q) == QUERY_KEYS
    assert q["strategy_portfolio_value"] == 'strategy_portfolio_value{namespace="trading",pod="momentum-0"}'
    assert q["strategy_order_latency_seconds_bucket"] == (
        'strategy_order_latency_seconds_bucket{namespace="trading",pod="momentum-0"}'
    )
    assert all('namespace="trading",pod="momentum-0"' in v for v in q.values())


def test_overrides_replace_one_query_and_are_templated():
    q = build_queries(
        {"strategy_portfolio_value": 'sum(acct_value{ns="$namespace",app="$strategy",pod="$pod"})'}, TARGET
    )
    assert q["strategy_portfolio_value"] == 'sum(acct_value{ns="trading",app="momentum",pod="momentum-0"})'
    assert q["strategy_cash"] == DEFAULT_QUERIES["strategy_cash"].replace("$namespace", "trading").replace(
        "$pod", "momentum-0"
    )


def test_label_values_are_escaped():
    t = ScrapeTarget(namespace='a"b', strategy="s", pod="p\\q", pod_ip="1.1.1.1", port=1, now=NOW)
    assert build_queries({}, t)["strategy_cash"] == 'strategy_cash{namespace="a\\"b",pod="p\\\\q"}'


def test_check_overrides():
    assert check_overrides({"strategy_cash": "x"}) == []
    problems = check_overrides({"strategy_csh": "x", "strategy_cash": " "})
    assert len(problems) == 2 and "unknown metric 'strategy_csh'" in problems[0]


def test_reads_a_full_snapshot_with_instant_queries_at_now():
    snap, seen = read(HEALTHY)
    assert snap.portfolio_value == Decimal("1000000")
    assert snap.orders_submitted == 40 and snap.errors == 1
    assert snap.breaker_trips == {"drawdown": Decimal(2)}
    assert snap.order_latency is not None and snap.order_latency.count == 4
    assert snap.order_latency.buckets[Decimal("Infinity")] == 4
    assert snap.slippage_bps is None
    assert snap.counters_created == Decimal("1710160000.5")
    assert snap.taken_at == NOW
    assert len(seen) == len(QUERY_KEYS)
    assert {s["time"] for s in seen} == {f"{NOW.timestamp():.3f}"}


def test_an_override_is_what_runs():
    answers = {**HEALTHY, "my_value": vec(({}, "123"))}
    snap, seen = read(answers, {"strategy_portfolio_value": 'my_value{pod="$pod"}'})
    assert snap.portfolio_value == 123
    assert {"query": 'my_value{pod="momentum-0"}', "time": f"{NOW.timestamp():.3f}"} in seen


def test_scalar_result():
    payload = {"status": "success", "data": {"resultType": "scalar", "result": [1710167400, "42"]}}
    assert parse_query_response("k", payload) == [({}, Decimal(42))]


def test_no_portfolio_value_fails_closed():
    with pytest.raises(MetricsUnavailable) as info:
        read({**HEALTHY, "strategy_portfolio_value": vec()})
    assert "strategy_portfolio_value is missing" in info.value.reason


def test_unknown_override_key_fails_closed_without_querying():
    with pytest.raises(MetricsUnavailable) as info:
        read(HEALTHY, {"portfolio": "x"})
    assert "unknown metric 'portfolio'" in info.value.reason


@pytest.mark.parametrize(
    "answers, status, fragment",
    [
        ({"strategy_cash": ({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}, 400)},
         200, "strategy_cash failed: bad_data: parse error"),
        ({"strategy_cash": {"status": "success", "data": {"resultType": "matrix", "result": []}}},
         200, "matrix"),
        ({"strategy_cash": {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}},
         200, "malformed"),
        ({"strategy_cash": ("<html>unavailable</html>", 503)}, 200, "HTTP 503"),
        ({"strategy_errors_total": ({"unexpected": True}, 502)}, 200, "HTTP 502"),
    ],
)
def test_errors_are_metrics_unavailable(answers, status, fragment):
    with pytest.raises(MetricsUnavailable) as info:
        read({**HEALTHY, **answers}, status=status)
    assert fragment in info.value.reason


def test_unreachable_and_timeout(free_port):
    with pytest.raises(MetricsUnavailable) as info:
        asyncio.run(PrometheusMetricsSource(f"http://127.0.0.1:{free_port}").read(TARGET))
    assert "cannot query" in info.value.reason

    slow = ScrapeTarget(**{**TARGET.__dict__, "timeout_seconds": 0.2})

    async def go():
        async with stub(HEALTHY, delay=1) as (address, _):
            await PrometheusMetricsSource(address).read(slow)

    with pytest.raises(MetricsUnavailable) as info:
        asyncio.run(go())
    assert "timeout" in info.value.reason
