"""Builders shared by the rollout tests: a compressed ladder, snapshots, requests."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Optional

from phasegate.api import StrategySpec, StrategyStatus
from phasegate.metrics.snapshot import Histogram, MetricsSnapshot
from phasegate.policy.requests import Request, Verb
from phasegate.policy.rollout import Observation, decide

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=timezone.utc)
_ids = itertools.count(1)


def spec(max_fraction: str = "1", **overrides: Any) -> StrategySpec:
    body: dict[str, Any] = {
        "capital": "1000000",
        "account": "DU1",
        "maxFraction": max_fraction,
        "template": {"image": "example/momentum:1"},
        "phases": [
            {"name": "paper", "mode": "paper", "minDuration": "10s"},
            {"name": "shadow", "mode": "shadow", "minDuration": "10s"},
            {"name": "live-10", "mode": "live", "fraction": 0.10, "minDuration": "10s", "approval": "manual"},
            {"name": "live-50", "mode": "live", "fraction": 0.50, "minDuration": "10s"},
            {"name": "live-100", "mode": "live", "fraction": 1.0, "minDuration": "0s"},
        ],
        "analysis": {"interval": "1s", "metricsFailure": {"pauseAfter": 3, "haltAfter": 6}},
    }
    body.update(overrides)
    return StrategySpec.model_validate(body)


class Market:
    """A strategy's counters, moving forward like a real exporter's."""

    def __init__(self) -> None:
        self.submitted = Decimal(0)
        self.filled = Decimal(0)
        self.errors = Decimal(0)
        self.trips: dict[str, Decimal] = {}
        self.value = Decimal(1000000)
        self.lat_sum = Decimal(0)
        self.lat_count = Decimal(0)

    def healthy(self, at: datetime, *, value: Optional[Decimal] = None) -> MetricsSnapshot:
        self.submitted += 1
        self.filled += 1
        self.lat_sum += Decimal("0.1")
        self.lat_count += 1
        if value is not None:
            self.value = value
        return self.snapshot(at)

    def snapshot(self, at: datetime, **over: Any) -> MetricsSnapshot:
        fields = dict(
            taken_at=at,
            portfolio_value=self.value,
            cash=self.value / 2,
            largest_position_fraction=Decimal("0.02"),
            orders_submitted=self.submitted,
            orders_filled=self.filled,
            errors=self.errors,
            breaker_trips=dict(self.trips),
            order_latency=Histogram(
                buckets={Decimal("0.5"): self.lat_count, Decimal("Infinity"): self.lat_count},
                sum=self.lat_sum,
                count=self.lat_count,
            ),
            signal_alignment=Decimal("0.99"),
            position_discrepancy=Decimal(0),
            execution_quality=Decimal("0.97"),
            slippage_bps=Decimal("3"),
        )
        fields.update(over)
        return MetricsSnapshot(**fields)


def request(verb: Verb, reason: str = "desk decision", by: str = "alice", at: datetime = T0, **kw: Any) -> Request:
    return Request(id=f"r{next(_ids)}", verb=verb, reason=reason, by=by, at=at, **kw)


def step(s: StrategySpec, status: StrategyStatus, obs: Observation, now: datetime):
    d = decide(s, status, obs, now, generation=1)
    return d, d.status


def climb(s: StrategySpec, market: Market, status: StrategyStatus, now: datetime, seconds: int, *, approve: bool = True):
    """Feed healthy metrics once a second; approve manual phases when asked."""
    decisions = []
    for _ in range(seconds):
        now += timedelta(seconds=1)
        obs = Observation(metrics=market.healthy(now), metrics_phase=status.phase)
        d, status = step(s, status, obs, now)
        decisions.append(d)
        if approve and status.message.startswith("AwaitingApproval"):
            d, status = step(s, status, Observation(request=request(Verb.PROMOTE, at=now)), now)
            decisions.append(d)
    return status, now, decisions
