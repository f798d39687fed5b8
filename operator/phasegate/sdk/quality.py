"""Execution quality and slippage, from completed orders.

An order counts as well executed when it filled in full, within the latency budget
(500 ms, the shadow gate's default) and with slippage against its arrival price within
tolerance (10 bps, the live-65 gate's default). Execution quality is the share of
completed orders that did; slippage is the mean over filled orders, in basis points.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from .broker import Order, OrderStatus
from .money import ZERO


@dataclass
class ExecutionQuality:
    tolerance_bps: Decimal = Decimal("10")
    latency_budget: timedelta = timedelta(milliseconds=500)
    completed: int = 0
    good: int = 0
    filled: int = 0
    slippage_sum: Decimal = ZERO

    def record(self, order: Order) -> None:
        """Record an order that will not change any more (filled, cancelled or rejected)."""
        self.completed += 1
        slippage = order.slippage_bps()
        if slippage is not None:
            self.filled += 1
            self.slippage_sum += slippage
        latency = order.latency
        if (
            order.status is OrderStatus.FILLED
            and slippage is not None
            and slippage <= self.tolerance_bps
            and latency is not None
            and latency <= self.latency_budget
        ):
            self.good += 1

    @property
    def ratio(self) -> Decimal | None:
        return Decimal(self.good) / Decimal(self.completed) if self.completed else None

    @property
    def mean_slippage_bps(self) -> Decimal | None:
        return self.slippage_sum / Decimal(self.filled) if self.filled else None
