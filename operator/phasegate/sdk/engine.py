"""One step of trading, the same in a backtest and in a running pod.

Each bar: fill what was due at the old prices, take the new bar, let the breakers see
the new value, compute signals (and check them against the shadow replay), send orders
through the gate, publish metrics. The backtest and the live runtime differ only in the
clock and in who calls `step` and `process_due`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .breakers import BreakerBoard, Trip
from .broker import OrderStatus, PaperBroker
from .clock import Clock
from .exporter import StrategyMetrics
from .ledger import Ledger
from .market import MarketFrame
from .orders import OrderGate
from .quality import ExecutionQuality
from .reconcile import Reconciliation, reconcile
from .shadow import ShadowReplay
from .sizing import PositionSizer
from .strategy import Strategy, TradingContext
from .supervision import SupervisionGuard


class TradingEngine:
    def __init__(
        self,
        strategy: Strategy,
        broker: PaperBroker,
        book: Ledger,
        capital: Decimal,
        clock: Clock,
        log: Any,
        metrics: StrategyMetrics | None = None,
        breakers: BreakerBoard | None = None,
        sizer: PositionSizer | None = None,
        shadow: ShadowReplay | None = None,
        supervision: SupervisionGuard | None = None,
    ) -> None:
        self.strategy = strategy
        self.broker = broker
        self.book = book
        self.capital = capital
        self.clock = clock
        self.log = log
        self.metrics = metrics or StrategyMetrics()
        self.breakers = breakers or BreakerBoard()
        self.sizer = sizer or PositionSizer()
        self.shadow = shadow
        self.quality = ExecutionQuality()
        self.gate = OrderGate(broker, self.breakers, self.metrics, clock, log, supervision=supervision)
        self.prices: dict[str, Decimal] = {}
        self.last_reconciliation: Reconciliation | None = None
        self.bars = 0
        self.fills = 0
        self.breakers.subscribe(self._on_trip)

    # --- the step -----------------------------------------------------------------
    def warm_up(self, frame: MarketFrame) -> None:
        """Feed a frame to the strategy (and replay) without trading: history before the start."""
        self.strategy.on_frame(frame)
        if self.shadow is not None:
            self.shadow.replay.on_frame(frame)
        self.prices.update(frame.prices())

    def step(self, frame: MarketFrame) -> None:
        self.process_due()
        self.broker.on_bar(frame.prices(), frame.volumes(), frame.at)
        self.prices.update(frame.prices())
        self.bars += 1
        self.breakers.observe_value(self.equity, self.clock.now())
        try:
            signals = self.strategy.on_frame(frame)
        except Exception as exc:  # a strategy bug must count as an error, not kill the pod
            self.error("strategy.on_frame", exc)
            signals = None
        if signals is not None and self.shadow is not None:
            try:
                self.shadow.observe(frame, signals)
            except Exception as exc:
                self.error("shadow.replay", exc)
        if signals is not None and self.gate.open:
            try:
                requests = self.strategy.orders(signals, self.context())
            except Exception as exc:
                self.error("strategy.orders", exc)
                requests = []
            for request in requests:
                self.gate.submit(request)
        self.publish()

    def process_due(self) -> int:
        fills = self.broker.process(self.clock.now())
        for fill in fills:
            self.book.apply(fill.symbol, fill.signed_quantity, fill.price, fill.commission)
        if fills and self.fills == 0:
            self.log.info("engine.first_fill", order_id=fills[0].order_id, symbol=fills[0].symbol,
                          price=fills[0].price, quantity=fills[0].quantity)
        self.fills += len(fills)
        self._record_done()
        if fills:
            self.publish()
        return len(fills)

    def cancel_pending(self) -> int:
        cancelled = self.broker.cancel_all()
        self._record_done()
        self.publish()
        return len(cancelled)

    def context(self) -> TradingContext:
        return TradingContext(
            now=self.clock.now(),
            prices=self.prices,
            book=self.book,
            capital=self.capital,
            sizer=self.sizer,
            pending=self.broker.pending_quantity,
        )

    # --- accounting and metrics ---------------------------------------------------
    @property
    def equity(self) -> Decimal:
        return self.book.equity(self.prices)

    def publish(self) -> None:
        m = self.metrics
        m.set_book(self.equity, self.book.cash, self.book.largest_position_fraction(self.prices))
        self.last_reconciliation = reconcile(self.book.positions, self.broker.positions(), self.prices)
        m.position_discrepancy.set(float(self.last_reconciliation.ratio))
        if self.quality.ratio is not None:
            m.execution_quality.set(float(self.quality.ratio))
        if self.quality.mean_slippage_bps is not None:
            m.slippage_bps.set(float(self.quality.mean_slippage_bps))
        if self.shadow is not None and self.shadow.alignment.ratio is not None:
            m.signal_alignment.set(float(self.shadow.alignment.ratio))

    def error(self, where: str, exc: BaseException) -> None:
        self.metrics.errors.inc()
        self.breakers.record_error(self.clock.now())
        self.log.error("strategy.error", where=where, error=repr(exc))

    def _record_done(self) -> None:
        for order in self.broker.drain_done():
            self.quality.record(order)
            if order.status is OrderStatus.FILLED:
                self.metrics.orders_filled.inc()
                if order.latency is not None:
                    self.metrics.order_latency.observe(order.latency.total_seconds())

    def _on_trip(self, trip: Trip) -> None:
        self.metrics.breaker_trips.labels(breaker_type=trip.breaker_type.value).inc()
        self.log.error(
            "breaker.tripped",
            breaker_type=trip.breaker_type.value,
            value=trip.value,
            limit=trip.limit,
            reason=trip.reason,
            action="order submission stopped; only an operator reset resumes trading",
        )
