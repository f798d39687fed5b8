"""Breakers trip on their limit, stop the very next order, count the trip by type, and never reset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from phasegate.api import contract
from phasegate.sdk.backtest import NullLog
from phasegate.sdk.breakers import (
    Breaker,
    BreakerBoard,
    BreakerLimits,
    BreakerType,
    DailyLossBreaker,
    DrawdownBreaker,
    ErrorRateBreaker,
    OrderRateBreaker,
)
from phasegate.sdk.broker import OrderRequest, PaperBroker, Side
from phasegate.sdk.clock import ManualClock
from phasegate.sdk.exporter import StrategyMetrics
from phasegate.sdk.ledger import Ledger
from phasegate.sdk.orders import OrderGate

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
S = timedelta(seconds=1)


def test_default_limits_match_the_operators_defaults():
    limits = BreakerLimits()
    assert limits.max_drawdown == Decimal("0.10") and limits.max_daily_loss == Decimal("0.05")
    assert limits.max_orders_per_minute == 120 and limits.max_errors_per_minute == 10


def test_drawdown_trips_past_the_limit_from_the_high_water_mark():
    b = DrawdownBreaker(Decimal("0.10"))
    for v in ("100", "120", "108"):  # 10% below 120: at the limit, not past it
        b.observe(Decimal(v), T0)
    assert not b.tripped
    b.observe(Decimal("107.99"), T0 + S)
    assert b.tripped and b.trip.breaker_type is BreakerType.DRAWDOWN
    assert b.trip.at == T0 + S and b.trip.value > Decimal("0.10")


def test_daily_loss_measures_from_the_days_first_value_and_rolls_at_midnight_utc():
    b = DailyLossBreaker(Decimal("0.05"))
    b.observe(Decimal(100), T0)
    b.observe(Decimal(96), T0 + timedelta(hours=1))
    assert not b.tripped
    b.observe(Decimal(92), T0 + timedelta(days=1))  # a new day opens at 92
    b.observe(Decimal("87.5"), T0 + timedelta(days=1, hours=1))  # 4.9% down on the day
    assert not b.tripped
    b.observe(Decimal("87.3"), T0 + timedelta(days=1, hours=2))
    assert b.tripped


def test_order_rate_counts_within_a_sliding_minute():
    b = OrderRateBreaker(3)
    for seconds in (0, 30, 40):
        b.record(T0 + seconds * S)
    b.record(T0 + 61 * S)  # the first one has left the window
    assert not b.tripped
    b.record(T0 + 62 * S)
    assert b.tripped and b.trip.value == 4


def test_error_rate_trips_past_its_limit():
    b = ErrorRateBreaker(2)
    for i in range(3):
        b.record(T0 + i * S)
    assert b.tripped and b.trip.breaker_type is BreakerType.ERROR_RATE


def test_no_breaker_has_a_way_to_reset():
    for cls in (Breaker, DrawdownBreaker, DailyLossBreaker, OrderRateBreaker, ErrorRateBreaker, BreakerBoard):
        assert not [name for name in dir(cls) if "reset" in name.lower() or "clear" in name.lower()], cls


def test_a_trip_latches_through_recovery_and_new_days():
    board = BreakerBoard()
    board.observe_value(Decimal(100), T0)
    board.observe_value(Decimal(80), T0 + S)
    trip = board.drawdown.trip
    assert board.tripped
    board.observe_value(Decimal(1000), T0 + timedelta(days=3))  # recovered far above the old high
    for i in range(100):
        board.observe_value(Decimal(1000), T0 + timedelta(days=4, seconds=i))
    assert board.tripped and board.drawdown.trip is trip
    assert board.record_order(T0 + timedelta(days=5)) is False


def gate_with_board(limits=BreakerLimits()):
    clock = ManualClock(T0)
    broker = PaperBroker(clock, Ledger(Decimal(1000000)))
    broker.on_bar({"ABC": Decimal(10)}, {"ABC": Decimal(10**6)}, T0)
    metrics = StrategyMetrics()
    board = BreakerBoard(limits)
    board.subscribe(lambda trip: metrics.breaker_trips.labels(breaker_type=trip.breaker_type.value).inc())
    return clock, broker, board, metrics, OrderGate(broker, board, metrics, clock, NullLog())


def trips(metrics: StrategyMetrics) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == contract.M_BREAKER_TRIPS:
                out[sample.labels["breaker_type"]] = sample.value
    return out


def test_a_trip_stops_the_next_order_at_once_and_is_counted_by_type():
    clock, broker, board, metrics, gate = gate_with_board(BreakerLimits(max_orders_per_minute=2))
    buy = OrderRequest("ABC", Side.BUY, Decimal(1))
    assert gate.submit(buy) is not None and gate.submit(buy) is not None
    assert gate.submit(buy) is None  # the third order in a minute trips the breaker and is not sent
    assert len(broker.open_orders()) == 2
    clock.advance(timedelta(hours=1))
    assert gate.submit(buy) is None and not gate.open
    assert trips(metrics) == {"drawdown": 0, "daily_loss": 0, "order_rate": 1, "error_rate": 0}


def test_a_value_breaker_closes_the_gate_for_the_very_next_order():
    clock, broker, board, metrics, gate = gate_with_board()
    board.observe_value(Decimal(100), clock.now())
    board.observe_value(Decimal(94), clock.now())  # daily loss 6%
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(1))) is None
    assert broker.open_orders() == []
    assert trips(metrics)["daily_loss"] == 1


def test_rejected_orders_count_as_errors_and_trip_the_error_rate_breaker():
    clock, broker, board, metrics, gate = gate_with_board(BreakerLimits(max_errors_per_minute=3))
    bad = OrderRequest("NOPE", Side.BUY, Decimal(1))
    for _ in range(4):
        gate.submit(bad)
    assert board.error_rate.tripped
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(1))) is None


def test_shutdown_closes_the_gate_without_a_trip():
    _, broker, board, _, gate = gate_with_board()
    gate.stop_accepting()
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(1))) is None
    assert not board.tripped and broker.open_orders() == []


values = st.lists(st.decimals(min_value=Decimal(1), max_value=Decimal(10**6), places=2), min_size=1, max_size=60)


@settings(max_examples=300)
@given(values=values, limit=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.9"), places=2))
def test_drawdown_breaker_is_tripped_exactly_from_the_first_breach_on(values, limit):
    b = DrawdownBreaker(limit)
    peak = None
    breached = False
    for i, v in enumerate(values):
        b.observe(v, T0 + i * S)
        peak = v if peak is None else max(peak, v)
        breached = breached or (peak - v) / peak > limit
        assert b.tripped == breached
    if breached:
        first = next(i for i in range(len(values)) if (max(values[: i + 1]) - values[i]) / max(values[: i + 1]) > limit)
        assert b.trip.at == T0 + first * S


@given(gaps=st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=80),
       limit=st.integers(min_value=1, max_value=20))
def test_order_rate_breaker_matches_a_count_over_the_last_minute(gaps, limit):
    b = OrderRateBreaker(limit)
    times, now = [], T0
    breached = False
    for gap in gaps:
        now += gap * S
        times.append(now)
        b.record(now)
        in_window = [t for t in times if t > now - timedelta(minutes=1)]
        breached = breached or len(in_window) > limit
        assert b.tripped == breached
