"""Orders and the paper broker, with the going-live guide's cost models as defaults.

Costs: commission per share (0.005), a fixed adverse slippage (5 bps), an order latency
(100 ms) and a volume limit (2.5% of each bar's volume) that splits big orders into
partial fills across bars. Latency is simulated against an injected clock: an order is
due `latency` after submission and fills when the broker is processed at or after that
time, at the price then current; nothing here sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import Enum
from typing import Protocol

from .clock import Clock, isoformat, parse_time
from .ledger import Ledger
from .money import BPS, ZERO, D, whole_shares


class Side(str, Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderStatus(str, Enum):
    PENDING = "pending"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def open(self) -> bool:
        return self in (OrderStatus.PENDING, OrderStatus.PARTIALLY_FILLED)


class BrokerError(Exception):
    pass


class OrderRejected(BrokerError):
    pass


class BrokerClosed(BrokerError):
    pass


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: Side
    quantity: Decimal
    reason: str = ""


@dataclass
class Order:
    id: str
    symbol: str
    side: Side
    quantity: Decimal
    submitted_at: datetime
    due_at: datetime
    arrival_price: Decimal
    status: OrderStatus = OrderStatus.PENDING
    filled_quantity: Decimal = ZERO
    notional: Decimal = ZERO
    commission: Decimal = ZERO
    completed_at: datetime | None = None
    reason: str = ""

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def average_price(self) -> Decimal | None:
        return self.notional / self.filled_quantity if self.filled_quantity else None

    @property
    def latency(self) -> timedelta | None:
        return self.completed_at - self.submitted_at if self.completed_at else None

    def slippage_bps(self) -> Decimal | None:
        """Cost against the price when the order was sent: positive is worse for us."""
        avg = self.average_price
        if avg is None or self.arrival_price <= 0:
            return None
        return (avg - self.arrival_price) / self.arrival_price * BPS * self.side.sign

    def to_json(self) -> dict:
        return {
            "id": self.id, "symbol": self.symbol, "side": self.side.value, "quantity": str(self.quantity),
            "submittedAt": isoformat(self.submitted_at), "dueAt": isoformat(self.due_at),
            "arrivalPrice": str(self.arrival_price), "status": self.status.value,
            "filledQuantity": str(self.filled_quantity), "notional": str(self.notional),
            "commission": str(self.commission), "reason": self.reason,
        }

    @classmethod
    def from_json(cls, d: Mapping) -> Order:
        return cls(
            id=d["id"], symbol=d["symbol"], side=Side(d["side"]), quantity=D(d["quantity"]),
            submitted_at=parse_time(d["submittedAt"]), due_at=parse_time(d["dueAt"]),
            arrival_price=D(d["arrivalPrice"]), status=OrderStatus(d["status"]),
            filled_quantity=D(d["filledQuantity"]), notional=D(d["notional"]),
            commission=D(d["commission"]), reason=d.get("reason", ""),
        )


@dataclass(frozen=True)
class Fill:
    order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    market_price: Decimal
    commission: Decimal
    at: datetime
    order_done: bool

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity * self.side.sign


@dataclass(frozen=True)
class CostModel:
    commission_per_share: Decimal = Decimal("0.005")
    min_commission: Decimal = Decimal("0")
    slippage_bps: Decimal = Decimal("5")
    latency: timedelta = timedelta(milliseconds=100)
    volume_limit: Decimal = Decimal("0.025")
    price_quantum: Decimal = Decimal("0.0001")

    def fill_price(self, side: Side, market_price: Decimal) -> Decimal:
        # Rounded against us so that rounding never makes a fill look better than the model.
        if side is Side.BUY:
            raw = market_price * (1 + self.slippage_bps / BPS)
            return raw.quantize(self.price_quantum, rounding=ROUND_CEILING)
        raw = market_price * (1 - self.slippage_bps / BPS)
        return raw.quantize(self.price_quantum, rounding=ROUND_FLOOR)

    def commission(self, quantity: Decimal) -> Decimal:
        if quantity <= 0:
            return ZERO
        return max(quantity * self.commission_per_share, self.min_commission)

    def capacity(self, bar_volume: Decimal) -> Decimal:
        return whole_shares(bar_volume * self.volume_limit)


class Broker(Protocol):
    """What the SDK needs from a broker; the paper broker is the only one shipped."""

    def on_bar(self, prices: Mapping[str, Decimal], volumes: Mapping[str, Decimal], at: datetime) -> None: ...
    def submit(self, request: OrderRequest) -> Order: ...
    def process(self, now: datetime | None = None) -> list[Fill]: ...
    def cancel_all(self) -> list[Order]: ...
    def open_orders(self) -> list[Order]: ...
    def order(self, order_id: str) -> Order: ...
    def next_due(self) -> datetime | None: ...
    def positions(self) -> dict[str, Decimal]: ...
    def pending_quantity(self, symbol: str) -> Decimal: ...
    def cash(self) -> Decimal: ...
    def close(self) -> None: ...


class PaperBroker:
    def __init__(
        self,
        clock: Clock,
        account: Ledger,
        costs: CostModel | None = None,
        allow_short: bool = False,
        order_prefix: str = "o",
    ) -> None:
        self.clock = clock
        self.account = account
        self.costs = costs or CostModel()
        self.allow_short = allow_short
        self.connected = True
        self._prices: dict[str, Decimal] = {}
        self._capacity: dict[str, Decimal] = {}
        self._bar_at: datetime | None = None
        self._orders: dict[str, Order] = {}
        self._open: dict[str, Order] = {}
        self._done: list[Order] = []
        self._ids = itertools.count(1)
        self._prefix = order_prefix

    # --- market data -------------------------------------------------------------
    def on_bar(self, prices: Mapping[str, Decimal], volumes: Mapping[str, Decimal], at: datetime) -> None:
        self._prices.update(prices)
        # Volume capacity is per bar: what one bar did not let us trade waits for the next.
        for symbol, volume in volumes.items():
            self._capacity[symbol] = self.costs.capacity(volume)
        self._bar_at = at

    def price(self, symbol: str) -> Decimal | None:
        return self._prices.get(symbol)

    # --- orders -------------------------------------------------------------------
    def submit(self, request: OrderRequest) -> Order:
        self._require_connected()
        now = self.clock.now()
        quantity = request.quantity
        if quantity <= 0 or quantity != quantity.to_integral_value():
            raise OrderRejected(f"quantity {quantity} must be a positive whole number of shares")
        price = self._prices.get(request.symbol)
        if price is None:
            raise OrderRejected(f"no market price for {request.symbol}")
        if request.side is Side.BUY:
            estimate = quantity * self.costs.fill_price(Side.BUY, price) + self.costs.commission(quantity)
            if estimate > self.account.cash - self._reserved_cash():
                raise OrderRejected(
                    f"buying {quantity} {request.symbol} needs about {estimate}, more than the free cash"
                )
        elif not self.allow_short:
            free = self.account.position(request.symbol) - self._pending_sells(request.symbol)
            if quantity > free:
                raise OrderRejected(f"selling {quantity} {request.symbol} but only {free} free to sell")
        order = Order(
            id=f"{self._prefix}-{next(self._ids)}",
            symbol=request.symbol,
            side=request.side,
            quantity=quantity,
            submitted_at=now,
            due_at=now + self.costs.latency,
            arrival_price=price,
            reason=request.reason,
        )
        self._orders[order.id] = order
        self._open[order.id] = order
        return order

    def process(self, now: datetime | None = None) -> list[Fill]:
        """Fill every due order as far as this bar's volume and our cash allow."""
        self._require_connected()
        now = now or self.clock.now()
        fills: list[Fill] = []
        for order in sorted(self._open.values(), key=lambda o: (o.due_at, o.id)):
            if order.due_at > now:
                continue
            fill = self._fill(order, now)
            if fill is not None:
                fills.append(fill)
            if not order.status.open:
                del self._open[order.id]
        return fills

    def _fill(self, order: Order, now: datetime) -> Fill | None:
        market = self._prices[order.symbol]
        price = self.costs.fill_price(order.side, market)
        quantity = min(order.remaining, self._capacity.get(order.symbol, ZERO))
        if order.side is Side.BUY:
            per_share = price + self.costs.commission_per_share
            affordable = whole_shares((self.account.cash - self.costs.min_commission) / per_share)
            if affordable <= 0 and quantity > 0:
                self._finish(order, OrderStatus.REJECTED, now, "insufficient cash at fill time")
                return None
            quantity = min(quantity, affordable)
        elif not self.allow_short:
            quantity = min(quantity, max(self.account.position(order.symbol), ZERO))
        if quantity <= 0:
            return None
        commission = self.costs.commission(quantity)
        self.account.apply(order.symbol, quantity * order.side.sign, price, commission)
        self._capacity[order.symbol] = self._capacity.get(order.symbol, ZERO) - quantity
        order.filled_quantity += quantity
        order.notional += quantity * price
        order.commission += commission
        # The fill happens when the order arrives, or when a later bar brings volume for the rest.
        at = order.due_at if self._bar_at is None or self._bar_at <= order.due_at else self._bar_at
        at = min(at, now)
        if order.remaining == 0:
            self._finish(order, OrderStatus.FILLED, at)
        else:
            order.status = OrderStatus.PARTIALLY_FILLED
        return Fill(order.id, order.symbol, order.side, quantity, price, market, commission, at, not order.status.open)

    def _finish(self, order: Order, status: OrderStatus, at: datetime, reason: str = "") -> None:
        order.status = status
        order.completed_at = at
        if reason:
            order.reason = reason
        self._done.append(order)

    def drain_done(self) -> list[Order]:
        """Orders that reached a final state since the last call, in the order they did."""
        done, self._done = self._done, []
        return done

    def cancel(self, order_id: str) -> Order | None:
        order = self._open.pop(order_id, None)
        if order is not None:
            self._finish(order, OrderStatus.CANCELLED, self.clock.now())
        return order

    def cancel_all(self) -> list[Order]:
        self._require_connected()
        return [o for o in (self.cancel(i) for i in list(self._open)) if o is not None]

    def open_orders(self) -> list[Order]:
        return list(self._open.values())

    def order(self, order_id: str) -> Order:
        return self._orders[order_id]

    def next_due(self) -> datetime | None:
        due = [o.due_at for o in self._open.values()]
        return min(due) if due else None

    def pending_quantity(self, symbol: str) -> Decimal:
        """Signed quantity still to fill for a symbol (buys positive)."""
        return sum((o.remaining * o.side.sign for o in self._open.values() if o.symbol == symbol), ZERO)

    # --- account ------------------------------------------------------------------
    def positions(self) -> dict[str, Decimal]:
        return dict(self.account.positions)

    def cash(self) -> Decimal:
        return self.account.cash

    def close(self) -> None:
        self.connected = False

    def _require_connected(self) -> None:
        if not self.connected:
            raise BrokerClosed("the broker connection is closed")

    def _reserved_cash(self) -> Decimal:
        return sum(
            (o.remaining * self.costs.fill_price(Side.BUY, self._prices[o.symbol]) + self.costs.commission(o.remaining)
             for o in self._open.values() if o.side is Side.BUY),
            ZERO,
        )

    def _pending_sells(self, symbol: str) -> Decimal:
        return sum((o.remaining for o in self._open.values() if o.symbol == symbol and o.side is Side.SELL), ZERO)
