"""The metrics exporter: the contract's names, scraped over HTTP and parsed as Prometheus does."""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from phasegate.api import contract
from phasegate.sdk.exporter import MetricsServer, StrategyMetrics

from .helpers import DemoProcess, pod_env

COUNTERS = {contract.M_ORDERS_SUBMITTED, contract.M_ORDERS_FILLED, contract.M_BREAKER_TRIPS, contract.M_ERRORS}
GAUGES = {
    contract.M_PORTFOLIO_VALUE, contract.M_CASH, contract.M_LARGEST_POSITION_FRACTION, contract.M_SIGNAL_ALIGNMENT,
    contract.M_POSITION_DISCREPANCY, contract.M_EXECUTION_QUALITY, contract.M_SLIPPAGE_BPS,
}


def parse(text: str) -> tuple[dict[str, str], dict[tuple, float]]:
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def family_name(metric: str) -> str:
    # The parser names a counter's family without its _total suffix.
    return metric[: -len("_total")] if metric.endswith("_total") else metric


async def scrape_in_process(metrics: StrategyMetrics) -> tuple[int, str, dict]:
    server = MetricsServer(metrics, "127.0.0.1", 0, health=lambda: {"status": "ok", "strategy": "t"})
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{server.port}/metrics")
            h = await client.get(f"http://127.0.0.1:{server.port}/healthz")
            return r.status_code, r.text, {"content_type": r.headers["content-type"], "health": h.json()}
    finally:
        await server.stop()


def test_every_contract_metric_is_exposed_with_its_type():
    metrics = StrategyMetrics()
    metrics.set_book(Decimal("1000000.50"), Decimal("250000"), Decimal("0.04"))
    metrics.orders_submitted.inc(3)
    metrics.orders_filled.inc(2)
    metrics.order_latency.observe(0.1)
    metrics.breaker_trips.labels(breaker_type="drawdown").inc()
    status, text, extra = asyncio.run(scrape_in_process(metrics))
    assert status == 200 and extra["content_type"].startswith("text/plain")
    assert extra["health"] == {"status": "ok", "strategy": "t"}
    types, samples = parse(text)
    for name in COUNTERS:
        assert types[family_name(name)] == "counter", name
    for name in GAUGES:
        assert types[name] == "gauge", name
    assert types[contract.M_ORDER_LATENCY] == "histogram"
    assert samples[(contract.M_ORDERS_SUBMITTED, ())] == 3
    assert samples[(contract.M_ORDERS_FILLED, ())] == 2
    assert samples[(contract.M_PORTFOLIO_VALUE, ())] == 1000000.5
    assert samples[(contract.M_CASH, ())] == 250000
    assert samples[(contract.M_LARGEST_POSITION_FRACTION, ())] == 0.04
    assert samples[(contract.M_ORDER_LATENCY + "_count", ())] == 1
    assert samples[(contract.M_ORDER_LATENCY + "_sum", ())] == 0.1
    trips = {dict(k[1])["breaker_type"]: v for k, v in samples.items() if k[0] == contract.M_BREAKER_TRIPS}
    assert trips == {"drawdown": 1, "daily_loss": 0, "order_rate": 0, "error_rate": 0}


def test_unmeasured_ratios_read_nan_not_a_passing_default():
    _, text, _ = asyncio.run(scrape_in_process(StrategyMetrics()))
    _, samples = parse(text)
    for name in (contract.M_SIGNAL_ALIGNMENT, contract.M_EXECUTION_QUALITY, contract.M_SLIPPAGE_BPS,
                 contract.M_POSITION_DISCREPANCY):
        assert math.isnan(samples[(name, ())]), name


def test_registries_are_not_shared():
    a, b = StrategyMetrics(), StrategyMetrics()
    a.orders_submitted.inc()
    _, samples = parse(b.exposition().decode())
    assert samples[(contract.M_ORDERS_SUBMITTED, ())] == 0


def scrape(url: str) -> dict[tuple, float]:
    return parse(httpx.get(url, timeout=5).text)[1]


def poll(url: str, condition, timeout: float = 30.0) -> dict[tuple, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {samples}")
        time.sleep(0.1)


def test_the_demo_serves_metrics_health_and_the_crash_switch(tmp_path, demo_processes):
    demo = DemoProcess.start(pod_env(tmp_path, mode="shadow"), "--bar-seconds", "0.15")
    demo_processes.append(demo)
    url = demo.event("runtime.started")["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    base = url[: -len("/metrics")]
    health = httpx.get(base + "/healthz").json()
    assert health["strategy"] == "momentum" and health["mode"] == "shadow" and health["acceptingOrders"] is True

    before = poll(url, lambda s: s[(contract.M_ORDERS_FILLED, ())] >= 3)
    assert before[(contract.M_SIGNAL_ALIGNMENT, ())] == 1.0
    assert before[(contract.M_POSITION_DISCREPANCY, ())] == 0.0
    assert before[(contract.M_EXECUTION_QUALITY, ())] == 1.0
    assert 5.0 <= before[(contract.M_SLIPPAGE_BPS, ())] < 5.1
    assert before[(contract.M_LARGEST_POSITION_FRACTION, ())] <= 0.05
    assert before[(contract.M_ORDER_LATENCY + "_sum", ())] / before[(contract.M_ORDER_LATENCY + "_count", ())] < 0.5

    assert httpx.get(base + "/demo/crash").status_code == 405
    crash = httpx.post(base + "/demo/crash")
    assert crash.status_code == 202 and crash.json() == {"crash": "started"}
    assert httpx.post(base + "/demo/crash").json() == {"crash": "already crashing"}
    drawdown = ((contract.M_BREAKER_TRIPS, (("breaker_type", "drawdown"),)))
    after = poll(url, lambda s: s[drawdown] == 1)
    peak = max(before[(contract.M_PORTFOLIO_VALUE, ())], 1_000_000)
    assert after[(contract.M_PORTFOLIO_VALUE, ())] < 0.9 * peak
    demo.event("breaker.tripped", breaker_type="drawdown")
    assert httpx.get(base + "/healthz").json()["acceptingOrders"] is False
    assert demo.terminate() == 0
