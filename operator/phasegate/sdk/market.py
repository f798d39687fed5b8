"""Market data: bars and frames, and a seeded synthetic market for the demo and tests.

The synthetic market is a regime-switching random walk per symbol (trends that persist,
which is what a momentum strategy earns from) over a common market factor. The same
seed always gives the same prices, and its whole state fits in a checkpoint, so a
restarted strategy continues the same market where it left off.

A crash (the demo's switch) is a run of steep falls on every symbol at once, with no
liquidity: crash bars trade no volume, so the broker's volume limit fills nothing and
nobody gets out on the way down, whatever the size of the book.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

PRICE_QUANTUM = Decimal("0.01")


@dataclass(frozen=True)
class Bar:
    symbol: str
    close: Decimal
    volume: Decimal


@dataclass(frozen=True)
class MarketFrame:
    index: int
    at: datetime
    bars: Mapping[str, Bar]

    def prices(self) -> dict[str, Decimal]:
        return {s: b.close for s, b in self.bars.items()}

    def volumes(self) -> dict[str, Decimal]:
        return {s: b.volume for s, b in self.bars.items()}


class MarketFeed(Protocol):
    def next_frame(self, at: datetime) -> MarketFrame: ...
    def snapshot(self) -> dict: ...


@dataclass(frozen=True)
class MarketParams:
    symbols: int = 16
    drift: float = 0.001  # per bar, sign from the regime
    volatility: float = 0.008  # idiosyncratic, per bar
    market_drift: float = 0.0002
    market_volatility: float = 0.003
    leave_up: float = 1 / 400  # per bar: up trends last ~400 bars
    leave_down: float = 1 / 200
    volume: float = 5_000_000
    crash_bars: int = 30
    crash_drop: float = 0.08  # per crash bar: about -92% over the crash
    crash_liquidity: float = 0.0  # share of normal volume left during a crash


@dataclass
class SyntheticMarket:
    seed: int
    params: MarketParams = field(default_factory=MarketParams)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        n = self.params.symbols
        self.symbols = [f"SYN{i:02d}" for i in range(n)]
        self._prices = [self._rng.uniform(40.0, 160.0) for _ in range(n)]
        self._regimes = [1 if self._rng.random() < 0.65 else -1 for _ in range(n)]
        self.index = 0
        self.crash_remaining = 0

    def crash(self) -> None:
        """Start a crash at the next bar (idempotent while one is under way)."""
        if self.crash_remaining == 0:
            self.crash_remaining = self.params.crash_bars

    @property
    def crashing(self) -> bool:
        return self.crash_remaining > 0

    def next_frame(self, at: datetime) -> MarketFrame:
        p, rng = self.params, self._rng
        crashing = self.crash_remaining > 0
        market = rng.gauss(p.market_drift, p.market_volatility)
        bars: dict[str, Bar] = {}
        for i, symbol in enumerate(self.symbols):
            if self._regimes[i] == 1 and rng.random() < p.leave_up:
                self._regimes[i] = -1
            elif self._regimes[i] == -1 and rng.random() < p.leave_down:
                self._regimes[i] = 1
            noise = rng.gauss(0.0, p.volatility)
            if crashing:
                ret = -p.crash_drop + noise / 4
                self._regimes[i] = -1
            else:
                ret = p.drift * self._regimes[i] + market + noise
            self._prices[i] = max(self._prices[i] * (1.0 + ret), 0.01)
            volume = p.volume * rng.lognormvariate(0.0, 0.25) * (p.crash_liquidity if crashing else 1.0)
            bars[symbol] = Bar(
                symbol,
                Decimal(repr(self._prices[i])).quantize(PRICE_QUANTUM),
                Decimal(int(volume)),
            )
        if crashing:
            self.crash_remaining -= 1
        frame = MarketFrame(self.index, at, bars)
        self.index += 1
        return frame

    def snapshot(self) -> dict:
        version, internal, gauss_next = self._rng.getstate()
        return {
            "seed": self.seed,
            "index": self.index,
            "prices": list(self._prices),
            "regimes": list(self._regimes),
            "crashRemaining": self.crash_remaining,
            "rng": [version, list(internal), gauss_next],
        }

    @classmethod
    def restore(cls, state: Mapping, params: MarketParams | None = None) -> SyntheticMarket:
        market = cls(int(state["seed"]), params or MarketParams())
        version, internal, gauss_next = state["rng"]
        market._rng.setstate((version, tuple(internal), gauss_next))
        market.index = int(state["index"])
        market._prices = [float(x) for x in state["prices"]]
        market._regimes = [int(x) for x in state["regimes"]]
        market.crash_remaining = int(state["crashRemaining"])
        return market
