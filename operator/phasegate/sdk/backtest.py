"""Backtests, walk-forward windows and Monte Carlo resamples.

A backtest drives the very engine a pod runs (paper broker, costs, breakers, sizing)
with a manual clock, so what the backtest measured is what paper trading will do.
Statistics are floats: they are measurements of returns, not amounts of money.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from itertools import accumulate
from operator import mul
from typing import Any

from .breakers import BreakerBoard, BreakerLimits, Trip
from .broker import CostModel, PaperBroker
from .clock import ManualClock
from .ledger import Ledger
from .market import MarketFrame
from .sizing import PositionSizer
from .strategy import Strategy

TRADING_DAYS = 252


class NullLog:
    """A logger that drops everything: thousands of resampled runs must not fill the pod log."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def returns_of(equity: Sequence[float]) -> list[float]:
    return [b / a - 1.0 for a, b in zip(equity, equity[1:], strict=False) if a > 0]


def sharpe(returns: Sequence[float], periods_per_year: int = TRADING_DAYS) -> float:
    n = len(returns)
    if n < 2:
        return 0.0
    mean = math.fsum(returns) / n
    var = math.fsum((x - mean) ** 2 for x in returns) / (n - 1)
    if var <= 0:
        return 0.0
    return mean / math.sqrt(var) * math.sqrt(periods_per_year)


def max_drawdown(equity: Sequence[float]) -> float:
    peak = -math.inf
    worst = 0.0
    for value in equity:
        if value > peak:
            peak = value
        elif peak > 0:
            dd = (peak - value) / peak
            if dd > worst:
                worst = dd
    return worst


@dataclass
class BacktestResult:
    equity: list[Decimal]
    orders: int
    fills: int
    trips: list[Trip]

    @property
    def equity_float(self) -> list[float]:
        return [float(v) for v in self.equity]

    @property
    def returns(self) -> list[float]:
        return returns_of(self.equity_float)

    @property
    def sharpe(self) -> float:
        return sharpe(self.returns)

    @property
    def max_drawdown(self) -> float:
        return max_drawdown(self.equity_float)


def run_backtest(
    strategy: Strategy,
    frames: Sequence[MarketFrame],
    capital: Decimal,
    costs: CostModel | None = None,
    sizer: PositionSizer | None = None,
    limits: BreakerLimits | None = None,
    warm_up: Sequence[MarketFrame] = (),
    log: Any = None,
) -> BacktestResult:
    from .engine import TradingEngine  # the engine imports the exporter; keep this module light to import

    costs = costs or CostModel()
    clock = ManualClock(frames[0].at - timedelta(seconds=1) if frames else None)
    account = Ledger(cash=capital)
    broker = PaperBroker(clock, account, costs, order_prefix="bt")
    engine = TradingEngine(
        strategy, broker, Ledger(cash=capital), capital, clock, log or NullLog(),
        breakers=BreakerBoard(limits or BreakerLimits()), sizer=sizer,
    )
    for frame in warm_up:
        engine.warm_up(frame)
    equity = [capital]
    for frame in frames:
        clock.set(max(frame.at, clock.now()))
        engine.step(frame)
        clock.advance(costs.latency)
        engine.process_due()
        equity.append(engine.equity)
    return BacktestResult(
        equity=equity,
        orders=engine.gate.submitted,
        fills=engine.fills,
        trips=engine.breakers.trips,
    )


@dataclass(frozen=True)
class WalkForwardWindow:
    index: int
    train: tuple[int, int]
    test: tuple[int, int]
    params: Any
    train_score: float
    test_sharpe: float


@dataclass
class WalkForward:
    windows: list[WalkForwardWindow] = field(default_factory=list)
    out_of_sample_returns: list[float] = field(default_factory=list)

    @property
    def sharpe(self) -> float:
        return sharpe(self.out_of_sample_returns)


def walk_forward(
    bars: int,
    train: int,
    test: int,
    candidates: Sequence[Any],
    score: Callable[[Any, int, int], float],
    run_test: Callable[[Any, int, int], list[float]],
) -> WalkForward:
    """Rolling windows: pick the best candidate on [start, start+train), trade it on the next `test` bars."""
    if not candidates:
        raise ValueError("walk-forward needs at least one candidate")
    result = WalkForward()
    start = 0
    while start + train + test <= bars:
        train_range = (start, start + train)
        test_range = (start + train, start + train + test)
        scored = [(score(c, *train_range), i, c) for i, c in enumerate(candidates)]
        best_score, _, best = max(scored, key=lambda t: (t[0], -t[1]))
        returns = run_test(best, *test_range)
        result.windows.append(
            WalkForwardWindow(len(result.windows), train_range, test_range, best, best_score, sharpe(returns))
        )
        result.out_of_sample_returns.extend(returns)
        start += test
    return result


@dataclass(frozen=True)
class MonteCarlo:
    runs: int
    sharpe_p5: float
    sharpe_median: float
    max_drawdown_median: float
    max_drawdown_p95: float


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(max(int(round(q * (len(sorted_values) - 1))), 0), len(sorted_values) - 1)
    return sorted_values[k]


def monte_carlo(returns: Sequence[float], runs: int = 1000, seed: int = 0,
                periods_per_year: int = TRADING_DAYS, block: int = 5) -> MonteCarlo:
    """Block-bootstrap resamples of the return series: how bad could the same edge have looked?

    Blocks of `block` consecutive returns are drawn with replacement, which keeps the
    short-run autocorrelation a trend follower's returns have (and is five times cheaper
    than drawing single returns). Drawdowns are measured at block ends.
    """
    if not returns:
        raise ValueError("Monte Carlo needs a non-empty return series")
    blocks = [returns[i:i + block] for i in range(0, len(returns) - block + 1, block)] or [list(returns)]
    growth = [math.prod(1.0 + r for r in b) for b in blocks]
    sums = [math.fsum(b) for b in blocks]
    squares = [math.fsum(r * r for r in b) for b in blocks]
    n = len(blocks) * len(blocks[0])
    rng = random.Random(seed)
    indices = range(len(blocks))
    annual = math.sqrt(periods_per_year)
    sharpes: list[float] = []
    drawdowns: list[float] = []
    for _ in range(runs):
        idx = rng.choices(indices, k=len(blocks))
        total = sum(sums[i] for i in idx)
        mean = total / n
        var = (sum(squares[i] for i in idx) - n * mean * mean) / (n - 1) if n > 1 else 0.0
        sharpes.append(mean / math.sqrt(var) * annual if var > 0 else 0.0)
        equity = list(accumulate((growth[i] for i in idx), mul, initial=1.0))
        drawdowns.append(max(1.0 - e / p for e, p in zip(equity, accumulate(equity, max), strict=True)))
    sharpes.sort()
    drawdowns.sort()
    return MonteCarlo(
        runs=runs,
        sharpe_p5=_percentile(sharpes, 0.05),
        sharpe_median=_percentile(sharpes, 0.5),
        max_drawdown_median=_percentile(drawdowns, 0.5),
        max_drawdown_p95=_percentile(drawdowns, 0.95),
    )
