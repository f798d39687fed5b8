"""The order gate: the one door every order goes through on its way to the broker.

It is closed by graceful shutdown (stop accepting orders) and by any tripped breaker,
and checking it is part of every submission, so a trip stops the very next order.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .breakers import BreakerBoard
from .broker import Broker, BrokerError, Order, OrderRequest
from .clock import Clock
from .exporter import StrategyMetrics
from .supervision import SupervisionGuard, reduces_exposure


class OrderGate:
    def __init__(self, broker: Broker, breakers: BreakerBoard, metrics: StrategyMetrics, clock: Clock, log: Any,
                 supervision: SupervisionGuard | None = None) -> None:
        self.broker = broker
        self.breakers = breakers
        self.metrics = metrics
        self.clock = clock
        self.log = log
        self.supervision = supervision
        self.accepting = True
        self.refused = 0
        self.submitted = 0
        self._refusal_logged = False
        self._safe_refusal_logged = False

    @property
    def open(self) -> bool:
        return self.accepting and not self.breakers.tripped

    def stop_accepting(self) -> None:
        self.accepting = False

    def submit(self, request: OrderRequest) -> Order | None:
        """Send an order if the gate is open; None when it was refused or rejected."""
        now = self.clock.now()
        # Before the order-rate breaker counts it: an order refused in safe mode is never sent,
        # and a strategy that keeps asking must not trip the breaker (and be halted) for it.
        if self.accepting and not self.breakers.tripped and self.supervision is not None \
                and self._adds_exposure_while_unsupervised(request, now):
            return None
        if not self.accepting or not self.breakers.record_order(now):
            self.refused += 1
            if not self._refusal_logged:
                # One line, not one per order: a halted strategy would otherwise flood its log.
                self._refusal_logged = True
                self.log.warning(
                    "orders.refused",
                    reason="shutting down" if not self.accepting else "circuit breaker tripped",
                    symbol=request.symbol,
                )
            return None
        try:
            order = self.broker.submit(request)
        except BrokerError as exc:
            self.submitted += 1
            self.metrics.orders_submitted.inc()
            self.metrics.errors.inc()
            self.breakers.record_error(now)
            self.log.warning("order.rejected", symbol=request.symbol, side=request.side.value,
                             quantity=request.quantity, error=str(exc))
            return None
        self.submitted += 1
        self.metrics.orders_submitted.inc()
        return order

    def _adds_exposure_while_unsupervised(self, request: OrderRequest, now: Any) -> bool:
        """Safe mode (supervision lapsed) lets only reduce-only orders through. Evaluated at
        the order's own time, so an order after the deadline is refused even before the
        runtime's watchdog has looked."""
        assert self.supervision is not None
        if not self.supervision.check(now):
            self._safe_refusal_logged = False
            return False
        signed = request.quantity * request.side.sign
        position = self.broker.positions().get(request.symbol, Decimal(0))
        if reduces_exposure(signed, position, self.broker.pending_quantity(request.symbol)):
            return False
        self.refused += 1
        if not self._safe_refusal_logged:
            # One line per safe-mode episode, not one per order.
            self._safe_refusal_logged = True
            self.log.warning("orders.refused", reason="supervision lapsed: safe mode, reduce-only",
                             symbol=request.symbol, side=request.side.value, quantity=request.quantity)
        return True
