"""Clocks: the system's UTC clock and a manual one for tests and backtests.

Everything in the SDK that needs "now" takes a clock, so that latency, rate windows
and day boundaries can be driven by a test or a backtest without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = require_utc(start or datetime(2020, 1, 1, tzinfo=UTC))

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        when = require_utc(when)
        if when < self._now:
            # A clock going backwards would let rate windows and latencies go negative.
            raise ValueError(f"a clock never goes backwards: {when} < {self._now}")
        self._now = when

    def advance(self, delta: timedelta) -> datetime:
        self.set(self._now + delta)
        return self._now


def require_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware (UTC)")
    return when.astimezone(UTC)


def isoformat(when: datetime) -> str:
    return require_utc(when).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return require_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
