"""The strategy's Prometheus metrics, named by the contract, and the HTTP server for them.

The registry is our own (not prometheus_client's global one) so that a backtest, a test
and a running strategy in one process never share counters.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from phasegate.api import contract

from .breakers import BreakerType

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NOT_MEASURED = math.nan
"""Ratios nobody has measured yet read NaN, never 0 or 1: a gate must not pass on a default."""


class StrategyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.orders_submitted = Counter(contract.M_ORDERS_SUBMITTED, "Orders submitted to the broker.", registry=r)
        self.orders_filled = Counter(contract.M_ORDERS_FILLED, "Orders filled completely.", registry=r)
        self.portfolio_value = Gauge(contract.M_PORTFOLIO_VALUE, "Cash plus positions at market.", registry=r)
        self.cash = Gauge(contract.M_CASH, "Cash in the book.", registry=r)
        self.largest_position_fraction = Gauge(
            contract.M_LARGEST_POSITION_FRACTION, "Largest position at market / portfolio value.", registry=r
        )
        self.order_latency = Histogram(
            contract.M_ORDER_LATENCY, "Submission to complete fill.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.breaker_trips = Counter(
            contract.M_BREAKER_TRIPS, "In-process circuit breaker trips.", ["breaker_type"], registry=r
        )
        self.errors = Counter(contract.M_ERRORS, "Errors: rejected orders, strategy exceptions.", registry=r)
        self.signal_alignment = Gauge(
            contract.M_SIGNAL_ALIGNMENT, "Share of live signals equal to the backtest replay's.", registry=r
        )
        self.position_discrepancy = Gauge(
            contract.M_POSITION_DISCREPANCY, "Mismatched position value, local vs broker, / gross.", registry=r
        )
        self.execution_quality = Gauge(
            contract.M_EXECUTION_QUALITY, "Share of orders filled in full, in time, within tolerance.", registry=r
        )
        self.slippage_bps = Gauge(contract.M_SLIPPAGE_BPS, "Mean fill slippage vs arrival price, bps.", registry=r)
        self.supervision_safe_mode = Gauge(
            contract.M_SUPERVISION_SAFE_MODE, "1 while supervision has lapsed: no new exposure, reduce-only.", registry=r
        )
        self.supervision_safe_mode_entries = Counter(
            contract.M_SUPERVISION_SAFE_MODE_ENTRIES, "Entries into safe mode (the supervision deadline passed).",
            registry=r,
        )
        self.supervision_safe_mode_exits = Counter(
            contract.M_SUPERVISION_SAFE_MODE_EXITS, "Returns to normal trading on a supervised contact.", registry=r
        )
        self.supervision_deadline = Gauge(
            contract.M_SUPERVISION_DEADLINE, "Deadline of the last supervised contact, Unix seconds (0: none).",
            registry=r,
        )
        # Every breaker type exists from the start at 0, so "no trip" reads as 0, not as missing.
        for kind in BreakerType:
            self.breaker_trips.labels(breaker_type=kind.value)
        for gauge in (self.signal_alignment, self.position_discrepancy, self.execution_quality, self.slippage_bps):
            gauge.set(NOT_MEASURED)

    def set_book(self, value: Decimal, cash: Decimal, largest_fraction: Decimal) -> None:
        self.portfolio_value.set(float(value))
        self.cash.set(float(cash))
        self.largest_position_fraction.set(float(largest_fraction))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    method: str
    path: str
    handler: Handler


@dataclass
class MetricsServer:
    """GET /metrics and /healthz, plus whatever routes the strategy adds (the demo's crash switch)."""

    metrics: StrategyMetrics
    host: str
    port: int
    health: Callable[[], dict] = lambda: {"status": "ok"}
    routes: list[Route] = field(default_factory=list)
    # Called with each /metrics request's headers before the exposition is generated: the
    # operator's scrape is the supervision contact (sdk/supervision.py).
    on_scrape: Callable[[Mapping[str, str]], None] | None = None
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        for route in self.routes:
            app.router.add_route(route.method, route.path, route.handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            # Tests ask for any free port; report the one the OS gave.
            sockets = site._server.sockets  # type: ignore[union-attr]
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.on_scrape is not None:
            self.on_scrape(request.headers)
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())
