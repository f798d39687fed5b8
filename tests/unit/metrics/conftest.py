"""Fixtures of the metrics tests: real exposition text, produced by prometheus_client itself."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def healthy_registry(
    *,
    portfolio: float = 1_000_000,
    cash: float = 500_000,
    largest: float = 0.02,
    submitted: int = 40,
    filled: int = 39,
    errors: int = 1,
    trips: dict[str, int] | None = None,
    latencies: tuple[float, ...] = (0.05, 0.1, 0.1, 0.3),
    alignment: float | None = 0.99,
    quality: float | None = 0.95,
    discrepancy: float | None = 0.0,
    slippage: float | None = 2.5,
) -> CollectorRegistry:
    r = CollectorRegistry()
    Gauge("strategy_portfolio_value", "Portfolio value.", registry=r).set(portfolio)
    Gauge("strategy_cash", "Cash.", registry=r).set(cash)
    Gauge("strategy_largest_position_fraction", "Largest position.", registry=r).set(largest)
    Counter("strategy_orders_submitted_total", "Submitted.", registry=r).inc(submitted)
    Counter("strategy_orders_filled_total", "Filled.", registry=r).inc(filled)
    Counter("strategy_errors", "Errors (declared without the _total suffix).", registry=r).inc(errors)
    t = Counter("strategy_circuit_breaker_trips_total", "Trips.", ["breaker_type"], registry=r)
    for btype, n in (trips or {}).items():
        t.labels(breaker_type=btype).inc(n)
    h = Histogram(
        "strategy_order_latency_seconds", "Latency.", buckets=(0.05, 0.1, 0.25, 0.5, 1.0), registry=r
    )
    for s in latencies:
        h.observe(s)
    for name, v in (
        ("strategy_signal_alignment_ratio", alignment),
        ("strategy_execution_quality_ratio", quality),
        ("strategy_position_discrepancy_ratio", discrepancy),
        ("strategy_slippage_bps", slippage),
    ):
        if v is not None:
            Gauge(name, name, registry=r).set(v)
    return r


def exposition(**kwargs) -> str:
    return generate_latest(healthy_registry(**kwargs)).decode()


@pytest.fixture
def make_exposition():
    return exposition


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
