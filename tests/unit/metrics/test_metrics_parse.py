from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from phasegate.metrics import Histogram, MetricsSnapshot, MetricsUnavailable, parse_exposition
from phasegate.metrics.snapshot import (
    C_BREAKER_PREFIX,
    C_CREATED,
    C_LATENCY_COUNT,
    C_ORDERS_SUBMITTED,
    counter_increases,
)

NOW = datetime(2024, 3, 11, 14, 30, tzinfo=UTC)


def _no_floats(snap: MetricsSnapshot) -> None:
    for name in (
        "portfolio_value", "cash", "largest_position_fraction", "orders_submitted", "orders_filled",
        "errors", "signal_alignment", "position_discrepancy", "execution_quality", "slippage_bps",
        "counters_created",
    ):
        v = getattr(snap, name)
        assert v is None or isinstance(v, Decimal), name
    assert all(isinstance(v, Decimal) for v in snap.breaker_trips.values())


def test_parses_every_contract_metric(make_exposition):
    snap = parse_exposition(make_exposition(trips={"drawdown": 2, "order_rate": 1}), NOW)
    _no_floats(snap)
    assert snap.taken_at == NOW
    assert snap.portfolio_value == Decimal("1000000")
    assert snap.cash == Decimal("500000")
    assert snap.largest_position_fraction == Decimal("0.02")
    assert snap.orders_submitted == Decimal(40)
    assert snap.orders_filled == Decimal(39)
    # declared as "strategy_errors": the client adds _total, the parser strips it from
    # the family name; the sample keeps it
    assert snap.errors == Decimal(1)
    assert snap.breaker_trips == {"drawdown": Decimal(2), "order_rate": Decimal(1)}
    assert snap.signal_alignment == Decimal("0.99")
    assert snap.execution_quality == Decimal("0.95")
    assert snap.position_discrepancy == Decimal(0)
    assert snap.slippage_bps == Decimal("2.5")
    # the counters' _created stamps give the restart marker
    assert snap.counters_created is not None and snap.counters_created > 0


def test_histogram_is_cumulative_with_sum_and_count(make_exposition):
    snap = parse_exposition(make_exposition(latencies=(0.05, 0.1, 0.1, 0.3)), NOW)
    h = snap.order_latency
    assert isinstance(h, Histogram)
    assert h.count == 4
    assert h.sum == Decimal("0.55")
    assert h.buckets == {
        Decimal("0.05"): 1, Decimal("0.1"): 3, Decimal("0.25"): 3, Decimal("0.5"): 4,
        Decimal("1.0"): 4, Decimal("Infinity"): 4,
    }
    assert h.mean() == Decimal("0.1375")
    # p50: rank 2 inside (0.05, 0.1] holding counts 1..3
    assert h.quantile(Decimal("0.5")) == Decimal("0.075")


def test_no_trips_yet_is_an_empty_dict_not_missing(make_exposition):
    snap = parse_exposition(make_exposition(trips=None), NOW)
    assert snap.breaker_trips == {}


def test_gauges_not_exported_are_none(make_exposition):
    snap = parse_exposition(
        make_exposition(alignment=None, quality=None, discrepancy=None, slippage=None), NOW
    )
    assert snap.signal_alignment is None
    assert snap.execution_quality is None
    assert snap.position_discrepancy is None
    assert snap.slippage_bps is None


def test_counters_keyed_for_risk_state(make_exposition):
    snap = parse_exposition(make_exposition(trips={"drawdown": 1}), NOW)
    c = snap.counters()
    assert c[C_ORDERS_SUBMITTED] == 40
    assert c[C_LATENCY_COUNT] == 4
    assert c[C_BREAKER_PREFIX + "drawdown"] == 1
    assert C_CREATED in c


def test_counter_without_total_suffix_in_text_is_accepted():
    text = (
        "# TYPE strategy_portfolio_value gauge\nstrategy_portfolio_value 5\n"
        "# TYPE strategy_orders_submitted counter\nstrategy_orders_submitted 7\n"
    )
    assert parse_exposition(text, NOW).orders_submitted == 7


def test_labelled_series_are_reduced_to_the_worse_side():
    text = "\n".join(
        [
            "strategy_portfolio_value 100",
            'strategy_cash{venue="a"} 30',
            'strategy_cash{venue="b"} 10',
            'strategy_largest_position_fraction{venue="a"} 0.01',
            'strategy_largest_position_fraction{venue="b"} 0.07',
            'strategy_signal_alignment_ratio{venue="a"} 0.99',
            'strategy_signal_alignment_ratio{venue="b"} 0.90',
            'strategy_orders_submitted_total{venue="a"} 3',
            'strategy_orders_submitted_total{venue="b"} 4',
            "",
        ]
    )
    snap = parse_exposition(text, NOW)
    assert snap.cash == 10
    assert snap.largest_position_fraction == Decimal("0.07")
    assert snap.signal_alignment == Decimal("0.90")
    assert snap.orders_submitted == 7


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("   \n\n", "empty"),
        ("hello world\n", "parse"),
        ("# TYPE x gauge\n", "no samples"),
        ("strategy_cash 5\n", "strategy_portfolio_value is missing"),
        ("strategy_portfolio_value NaN\n", "strategy_portfolio_value is missing"),
        ('strategy_portfolio_value{a="1"} 1\nstrategy_portfolio_value{a="2"} 2\n', "2 series"),
    ],
)
def test_unusable_exposition_is_metrics_unavailable(text, fragment):
    with pytest.raises(MetricsUnavailable) as info:
        parse_exposition(text, NOW)
    assert fragment in info.value.reason


def test_snapshot_normalises_to_decimal_and_utc():
    snap = MetricsSnapshot(
        taken_at=datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
        portfolio_value=0.1,
        cash=5,
        breaker_trips={"x": 1},
    )
    assert snap.portfolio_value == Decimal("0.1")
    assert snap.cash == Decimal(5) and isinstance(snap.cash, Decimal)
    assert snap.taken_at.tzinfo == UTC and snap.taken_at.hour == 10
    with pytest.raises(ValueError):
        MetricsSnapshot(taken_at=datetime(2024, 1, 1), portfolio_value=1)
    with pytest.raises(ValueError):
        MetricsSnapshot(taken_at=NOW, portfolio_value=Decimal("NaN"))


def test_counter_increases_handle_restarts():
    before = {"a": Decimal(10), "b": Decimal(5)}
    inc, restarted = counter_increases(before, {"a": Decimal(12), "b": Decimal(5), "new": Decimal(2)})
    assert not restarted and inc == {"a": 2, "b": 0, "new": 2}
    # one counter going down means the process restarted: every delta is the new value
    inc, restarted = counter_increases(before, {"a": Decimal(30), "b": Decimal(1)})
    assert restarted and inc == {"a": 30, "b": 1}
    # a changed creation stamp is a restart even when every counter climbed back higher
    inc, restarted = counter_increases(
        {**before, C_CREATED: Decimal(100)}, {"a": Decimal(40), "b": Decimal(9), C_CREATED: Decimal(200)}
    )
    assert restarted and inc == {"a": 40, "b": 9}
