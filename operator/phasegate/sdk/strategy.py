"""What a strategy author writes: signals from market frames, orders from signals.

Keeping the two apart is what makes shadow mode possible: signals can be replayed and
compared without a broker, and orders depend on the book, which signals must not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .broker import OrderRequest
from .ledger import Ledger
from .market import MarketFrame
from .sizing import PositionSizer

Signals = Mapping[str, int]
"""Desired direction per symbol: 1 long, 0 flat, -1 short."""


@dataclass(frozen=True)
class TradingContext:
    now: datetime
    prices: Mapping[str, Decimal]
    book: Ledger
    capital: Decimal
    sizer: PositionSizer
    pending: Callable[[str], Decimal]
    """Signed quantity still pending at the broker for a symbol."""

    @property
    def equity(self) -> Decimal:
        return self.book.equity(self.prices)


class Strategy(ABC):
    @abstractmethod
    def on_frame(self, frame: MarketFrame) -> Signals:
        """Take in one frame and return the signals for it. Must not depend on the book."""

    @abstractmethod
    def orders(self, signals: Signals, ctx: TradingContext) -> list[OrderRequest]:
        """Orders that move the book towards the signals."""

    def snapshot(self) -> dict:
        return {}

    def restore(self, state: Mapping) -> None:  # noqa: B027  (optional hook: a stateless strategy restores nothing)
        pass
