"""Builders shared by the rollout tests: a compressed ladder, snapshots, requests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

from phasegate.api import StrategySpec, StrategyStatus
from phasegate.api.observations import PodRead
from phasegate.api.status import HoldKind
from phasegate.metrics.snapshot import Histogram, MetricsSnapshot
from phasegate.policy.accounting import book_of
from phasegate.policy.requests import Request, Verb
from phasegate.policy.rollout import Observation, capital_of, decide

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
_ids = itertools.count(1)
_reads = itertools.count(1)


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


def read_id() -> str:
    """A fresh id per read attempt: the decision folds a read in once per id."""
    return f"read-{next(_reads)}"


def pod_of(s: StrategySpec, status: StrategyStatus, phase: Optional[str] = None) -> PodRead:
    """The pod of `phase` (default: the status's current phase), as its annotations show it."""
    name = phase if phase is not None else status.phase
    p = s.phase_named(name)
    if name == status.phase or p is None:
        capital = status.capital
    else:
        capital = capital_of(s, p, min(p.fraction, s.max_fraction))
    return PodRead(phase=name, mode=p.mode.value if p is not None else None, capital=capital)


class Market:
    """A strategy pod's exporter: counters moving forward, and a book whose value moves with
    the capital the operator gives the pod (a capital change is a flow, booked as cash, not
    a gain or a loss). Paper and live are separate books: a new book starts at its capital."""

    def __init__(self) -> None:
        self.submitted = Decimal(0)
        self.filled = Decimal(0)
        self.errors = Decimal(0)
        self.trips: dict[str, Decimal] = {}
        self.value = Decimal(1000000)
        self.lat_sum = Decimal(0)
        self.lat_count = Decimal(0)
        self.book: Optional[str] = None
        self.capital: Optional[Decimal] = None

    def follow(self, pod: PodRead) -> None:
        """Book the capital the pod was given: a new book starts at it; a change within a book is a flow."""
        if pod.capital is None or pod.mode is None:
            return
        from phasegate.api.spec import Mode

        book = book_of(Mode(pod.mode))
        if book != self.book:
            self.book, self.capital, self.value = book, pod.capital, pod.capital
        elif pod.capital != self.capital:
            self.value += pod.capital - self.capital
            self.capital = pod.capital

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

    def read(
        self, s: StrategySpec, status: StrategyStatus, at: datetime, *, phase: Optional[str] = None,
        loss: Optional[Decimal] = None, healthy: bool = True, **over: Any,
    ) -> Observation:
        """An Observation of one read of the pod of `phase` (default: the current phase's pod).

        `loss` marks the book down by that fraction before the read (0.12: a 12% loss)."""
        pod = pod_of(s, status, phase)
        self.follow(pod)
        if loss is not None:
            self.value = self.value * (1 - loss)
        snap = self.healthy(at) if healthy and not over else self.snapshot(at, **over)
        return Observation(metrics=snap, read_id=read_id(), pod=pod)


def request(verb: Verb, reason: str = "desk decision", by: str = "alice", at: datetime = T0, **kw: Any) -> Request:
    return Request(id=f"r{next(_ids)}", verb=verb, reason=reason, by=by, at=at, **kw)


def newest_halt(status: StrategyStatus) -> str:
    """The id a reset must name: the newest halt or emergency hold."""
    held = status.holds_of(HoldKind.HALT, HoldKind.EMERGENCY)
    assert held, "nothing to reset"
    return max(held, key=lambda h: h.seq).id


def step(s: StrategySpec, status: StrategyStatus, obs: Observation, now: datetime):
    d = decide(s, status, obs, now, generation=1)
    return d, d.status


def climb(s: StrategySpec, market: Market, status: StrategyStatus, now: datetime, seconds: int, *, approve: bool = True):
    """Feed healthy metrics of the current phase's pod once a second; approve manual phases when asked."""
    decisions = []
    for _ in range(seconds):
        now += timedelta(seconds=1)
        d, status = step(s, status, market.read(s, status, now), now)
        decisions.append(d)
        if approve and status.message.startswith("AwaitingApproval"):
            d, status = step(s, status, Observation(request=request(Verb.PROMOTE, at=now)), now)
            decisions.append(d)
    return status, now, decisions
