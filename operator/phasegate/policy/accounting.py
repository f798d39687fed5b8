"""Risk accounting on a flow-adjusted return series, one series per book.

The operator moves the capital at risk itself (a rung change, a reduce, a capital edit)
and tells the pod through PHASEGATE_CAPITAL; the pod books the difference as cash. So
the operator knows each flow exactly: it is the change of the capital the reads were
taken under. The flow happens when the new rung's pod starts, before it trades, so a step
from the last read (value V0, capital C0) to this one (V1, C1) has the return
V1 / (V0 + (C1 - C0)): the time-weighted return with the flow at the start of the step.
The book's index is the product of those returns.
Drawdown and daily loss are read off the index: a rung change moves the capital, not
the index, so neither re-arms, and a day's losses add up across rung changes and
reduces. Paper (paper and shadow) and live are separate books: entering live capital
starts a new series.

Pure; Decimal throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Optional

from phasegate.api.spec import Mode
from phasegate.api.status import Book

ZERO = Decimal(0)
ONE = Decimal(1)


def book_of(mode: Mode) -> str:
    """Which book a mode trades: paper money never mixes with live capital (as the SDK does)."""
    return "live" if mode is Mode.LIVE else "paper"


@dataclass(frozen=True)
class Step:
    book: Book
    started: bool  # this read began a new series (first read, or a new book)

    @property
    def drawdown(self) -> Decimal:
        return max(ZERO, ONE - self.book.index / self.book.high_water_mark) if self.book.high_water_mark > 0 else ZERO

    @property
    def daily_loss(self) -> Decimal:
        return max(ZERO, ONE - self.book.index / self.book.day_open) if self.book.day_open > 0 else ZERO


def step(prev: Optional[Book], name: str, value: Decimal, capital: Decimal, day: date, at: datetime) -> Step:
    """Fold one read (a finite, positive value) into the book's series.

    A trading day never goes back: a read stamped earlier than the day already open
    (a clock stepped back) counts in the open day.
    """
    flow = capital - prev.last_capital if prev is not None and prev.last_capital is not None else ZERO
    if prev is None or prev.name != name or prev.last_value is None:
        book = Book(name=name, started_at=at, trading_day=day, last_value=value, last_capital=capital)
        return Step(book=book, started=True)
    base = prev.last_value + flow
    # A cut larger than the book leaves nothing to measure a return on: the step is taken
    # as flat, and the losses so far stay on the index (never a fresh start).
    ret = value / base if base > 0 else ONE
    index = prev.index * ret
    hwm = max(prev.high_water_mark, index)
    day_open, trading_day = prev.day_open, prev.trading_day
    if trading_day is None or day > trading_day:
        # The new day opens at this read, as a desk marks the book at the open.
        day_open, trading_day = index, day
    book = prev.model_copy(
        update={
            "index": index,
            "high_water_mark": hwm,
            "day_open": day_open,
            "trading_day": trading_day,
            "last_value": value,
            "last_capital": capital,
        }
    )
    return Step(book=book, started=False)


def rebase(book: Optional[Book]) -> Optional[Book]:
    """A reset is a person accepting the losses so far: drawdown and daily loss start again from here."""
    if book is None:
        return None
    return book.model_copy(update={"high_water_mark": book.index, "day_open": book.index})


__all__ = ["Step", "book_of", "rebase", "step"]
