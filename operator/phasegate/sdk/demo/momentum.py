"""A long-only momentum strategy: hold what has risen over the lookback, drop what falls."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from phasegate.sdk.broker import OrderRequest, Side
from phasegate.sdk.market import MarketFrame
from phasegate.sdk.money import ZERO, D
from phasegate.sdk.strategy import Signals, Strategy, TradingContext


@dataclass(frozen=True)
class MomentumParams:
    lookback: int = 60
    entry: Decimal = Decimal("0.04")  # enter when the lookback return exceeds this
    exit: Decimal = Decimal("-0.02")  # leave when it falls below this: the gap stops whipsaw trading
    # Positions are trimmed back to size before they drift past the operator's 5% limit.
    trim_above: Decimal = Decimal("0.0475")
    # Keep cash well above the operator's 10% minimum even when every signal is long.
    cash_floor: Decimal = Decimal("0.15")
    # Kelly inputs: the edge the backtest of this strategy shows on the synthetic market.
    win_rate: Decimal = Decimal("0.55")
    win_loss_ratio: Decimal = Decimal("1.5")


class MomentumStrategy(Strategy):
    def __init__(self, params: MomentumParams | None = None) -> None:
        self.params = params or MomentumParams()
        self.closes: dict[str, deque[Decimal]] = {}
        self.signals: dict[str, int] = {}

    def on_frame(self, frame: MarketFrame) -> Signals:
        p = self.params
        for symbol, bar in frame.bars.items():
            closes = self.closes.get(symbol)
            if closes is None:
                closes = self.closes[symbol] = deque(maxlen=p.lookback + 1)
            closes.append(bar.close)
            signal = self.signals.get(symbol, 0)
            if len(closes) > p.lookback and closes[0] > 0:
                momentum = closes[-1] / closes[0] - 1
                if signal == 0 and momentum > p.entry:
                    signal = 1
                elif signal == 1 and momentum < p.exit:
                    signal = 0
            self.signals[symbol] = signal
        return dict(self.signals)

    def daily_volatility(self, symbol: str) -> Decimal:
        closes = [float(c) for c in self.closes.get(symbol, ())]
        rets = [b / a - 1.0 for a, b in zip(closes, closes[1:], strict=False) if a > 0]
        if len(rets) < 2:
            return ZERO
        mean = math.fsum(rets) / len(rets)
        return D(math.sqrt(math.fsum((r - mean) ** 2 for r in rets) / (len(rets) - 1)))

    def orders(self, signals: Signals, ctx: TradingContext) -> list[OrderRequest]:
        p = self.params
        equity = ctx.equity
        if equity <= 0:
            return []
        # Sized on the book's equity: the capital this phase was given (PHASEGATE_CAPITAL)
        # plus what it has made or lost, so position fractions stay put as the book moves.
        capital = equity
        free_cash = ctx.book.cash - p.cash_floor * equity
        out: list[OrderRequest] = []
        for symbol in sorted(signals):
            price = ctx.prices.get(symbol)
            if price is None or price <= 0 or ctx.pending(symbol) != 0:
                continue
            held = ctx.book.position(symbol)
            signal = signals[symbol]
            if signal == 1 and held == 0:
                target = ctx.sizer.shares(price, capital, max(free_cash, ZERO), p.win_rate, p.win_loss_ratio,
                                         self.daily_volatility(symbol))
                if target > 0:
                    out.append(OrderRequest(symbol, Side.BUY, target, "momentum entry"))
                    free_cash -= target * price
            elif signal == 1 and held * price / equity > p.trim_above:
                target = ctx.sizer.shares(price, capital, max(free_cash, ZERO) + held * price, p.win_rate,
                                         p.win_loss_ratio, self.daily_volatility(symbol))
                if held > target:
                    out.append(OrderRequest(symbol, Side.SELL, held - target, "trim to size"))
            elif signal != 1 and held > 0:
                out.append(OrderRequest(symbol, Side.SELL, held, "momentum exit"))
        return out

    def snapshot(self) -> dict:
        return {
            "closes": {s: [str(c) for c in q] for s, q in sorted(self.closes.items())},
            "signals": dict(sorted(self.signals.items())),
        }

    def restore(self, state: Mapping) -> None:
        self.closes = {
            s: deque((D(c) for c in cs), maxlen=self.params.lookback + 1)
            for s, cs in state.get("closes", {}).items()
        }
        self.signals = {s: int(v) for s, v in state.get("signals", {}).items()}
