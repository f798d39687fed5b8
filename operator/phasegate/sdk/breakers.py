"""In-process circuit breakers: the strategy's own first line of defence.

A breaker latches: once tripped it stays tripped for the life of the process, and there
is deliberately no method to reset it. Re-enabling trading after a trip is a human
decision taken through the operator (`phasegate reset`), never a timer or a recovery
of the value that tripped it.

The operator checks drawdown and daily loss itself from strategy_portfolio_value and
keeps the high-water mark and day-open value in its status across restarts; these
breakers keep theirs for the life of the process, so a restarted process starts a new
baseline and relies on the operator for the long-lived one. Trips are written into the
checkpoint so that the next process logs them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum

from .clock import isoformat


class BreakerType(str, Enum):
    DRAWDOWN = "drawdown"
    DAILY_LOSS = "daily_loss"
    ORDER_RATE = "order_rate"
    ERROR_RATE = "error_rate"


@dataclass(frozen=True)
class Trip:
    breaker_type: BreakerType
    at: datetime
    value: Decimal
    limit: Decimal
    reason: str

    def to_json(self) -> dict:
        return {
            "breakerType": self.breaker_type.value,
            "at": isoformat(self.at),
            "value": str(self.value),
            "limit": str(self.limit),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class BreakerLimits:
    """Defaults equal the operator's default risk limits, so both lines agree on what a breach is."""

    max_drawdown: Decimal = Decimal("0.10")
    max_daily_loss: Decimal = Decimal("0.05")
    max_orders_per_minute: int = 120
    max_errors_per_minute: int = 10


class Breaker:
    kind: BreakerType

    def __init__(self, limit: Decimal) -> None:
        self.limit = limit
        self._trip: Trip | None = None
        self._listeners: list[Callable[[Trip], None]] = []

    @property
    def tripped(self) -> bool:
        return self._trip is not None

    @property
    def trip(self) -> Trip | None:
        return self._trip

    def subscribe(self, listener: Callable[[Trip], None]) -> None:
        self._listeners.append(listener)

    def _fire(self, at: datetime, value: Decimal, reason: str) -> None:
        if self._trip is not None:
            return
        self._trip = Trip(self.kind, at, value, self.limit, reason)
        for listener in self._listeners:
            listener(self._trip)


class DrawdownBreaker(Breaker):
    """Trips when value falls more than `limit` (a fraction) below its high-water mark."""

    kind = BreakerType.DRAWDOWN

    def __init__(self, limit: Decimal) -> None:
        super().__init__(limit)
        self.high_water_mark: Decimal | None = None

    def observe(self, value: Decimal, now: datetime) -> None:
        if self.high_water_mark is None or value > self.high_water_mark:
            self.high_water_mark = value
        hwm = self.high_water_mark
        if hwm <= 0:
            return
        drawdown = (hwm - value) / hwm
        if drawdown > self.limit:
            self._fire(now, drawdown, f"drawdown {drawdown:.4f} from high-water mark {hwm} exceeds {self.limit}")


class DailyLossBreaker(Breaker):
    """Trips when value falls more than `limit` below the first value seen on the (UTC) day."""

    kind = BreakerType.DAILY_LOSS

    def __init__(self, limit: Decimal, day_of: Callable[[datetime], date] = lambda t: t.date()) -> None:
        super().__init__(limit)
        self._day_of = day_of
        self.day: date | None = None
        self.day_open: Decimal | None = None

    def observe(self, value: Decimal, now: datetime) -> None:
        day = self._day_of(now)
        if day != self.day:
            self.day, self.day_open = day, value
        assert self.day_open is not None
        if self.day_open <= 0:
            return
        loss = (self.day_open - value) / self.day_open
        if loss > self.limit:
            self._fire(now, loss, f"loss {loss:.4f} since the day's open {self.day_open} exceeds {self.limit}")


class RateBreaker(Breaker):
    """Trips when more than `limit` events fall within a sliding window (one minute)."""

    noun = "events"

    def __init__(self, limit: int, window: timedelta = timedelta(minutes=1)) -> None:
        super().__init__(Decimal(limit))
        self.window = window
        self._events: deque[datetime] = deque()

    def record(self, now: datetime) -> None:
        self._events.append(now)
        while self._events and self._events[0] <= now - self.window:
            self._events.popleft()
        count = Decimal(len(self._events))
        if count > self.limit:
            self._fire(now, count, f"{count} {self.noun} within {self.window} exceeds {self.limit}")


class OrderRateBreaker(RateBreaker):
    kind = BreakerType.ORDER_RATE
    noun = "orders"


class ErrorRateBreaker(RateBreaker):
    kind = BreakerType.ERROR_RATE
    noun = "errors"


@dataclass
class BreakerBoard:
    """All four breakers; trading stops when any of them has tripped."""

    limits: BreakerLimits = field(default_factory=BreakerLimits)
    value_breakers_armed: bool = True

    def __post_init__(self) -> None:
        self.drawdown = DrawdownBreaker(self.limits.max_drawdown)
        self.daily_loss = DailyLossBreaker(self.limits.max_daily_loss)
        self.order_rate = OrderRateBreaker(self.limits.max_orders_per_minute)
        self.error_rate = ErrorRateBreaker(self.limits.max_errors_per_minute)
        self.breakers: tuple[Breaker, ...] = (self.drawdown, self.daily_loss, self.order_rate, self.error_rate)

    def subscribe(self, listener: Callable[[Trip], None]) -> None:
        for breaker in self.breakers:
            breaker.subscribe(listener)

    @property
    def tripped(self) -> bool:
        return any(b.tripped for b in self.breakers)

    @property
    def trips(self) -> list[Trip]:
        return [b.trip for b in self.breakers if b.trip is not None]

    def observe_value(self, value: Decimal, now: datetime) -> None:
        if self.value_breakers_armed:
            self.drawdown.observe(value, now)
            self.daily_loss.observe(value, now)

    def record_order(self, now: datetime) -> bool:
        """Count an order about to be sent; False when it must not be sent."""
        if self.tripped:
            return False
        self.order_rate.record(now)
        return not self.tripped

    def record_error(self, now: datetime) -> None:
        self.error_rate.record(now)
