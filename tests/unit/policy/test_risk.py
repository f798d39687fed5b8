"""The operator's own risk arithmetic: unit tests and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasegate.api.spec import Action, StrategySpec, TradingDay
from phasegate.api.status import RiskState, Severity
from phasegate.metrics.snapshot import MetricsSnapshot
from phasegate.policy.risk import (
    KIND_CIRCUIT,
    day_boundary,
    evaluate_risk,
    severity,
    trading_day_of,
)

T0 = datetime(2024, 3, 11, 15, 0, tzinfo=UTC)  # a Monday, 11:00 in New York


def make_spec(**overrides: Any) -> StrategySpec:
    # rateWindow 1s: these tests read rates over each step between samples
    body = {"capital": "1000000", "account": "acct", "maxFraction": 1, "template": {"image": "x"},
            "analysis": {"rateWindow": "1s"}}
    body.update(overrides)
    return StrategySpec.model_validate(body)


SPEC = make_spec()


def snap(
    at: datetime,
    value: Any = "1000000",
    *,
    submitted: Any = 0,
    filled: Any = 0,
    errors: Any = 0,
    trips: dict[str, Any] | None = None,
    cash: Any = "500000",
    largest: Any = "0.02",
    discrepancy: Any = "0",
    created: Any = None,
    **kw: Any,
) -> MetricsSnapshot:
    return MetricsSnapshot(
        taken_at=at, portfolio_value=value, cash=cash, largest_position_fraction=largest,
        orders_submitted=submitted, orders_filled=filled, errors=errors, breaker_trips=trips or {},
        position_discrepancy=discrepancy, counters_created=created, **kw,
    )


def run(spec: StrategySpec, snaps: list[MetricsSnapshot], state: RiskState | None = None):
    state = state or RiskState()
    evals = []
    for s in snaps:
        e = evaluate_risk(spec, state, s, s.taken_at)
        evals.append(e)
        state = e.state
    return evals


def close(a: D, b: D, eps: D = D("1e-20")) -> bool:
    """Equal up to the rounding of a product of returns (28 significant digits)."""
    return abs(a - b) <= eps * max(abs(b), D(1))


def names(e) -> list[str]:
    return [b.name for b in e.breaches]


# --- severity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.10", Severity.LOW), ("0.12", Severity.LOW), ("0.1200000001", Severity.MEDIUM),
        ("0.15", Severity.MEDIUM), ("0.1500000001", Severity.HIGH),
        ("0.20", Severity.HIGH), ("0.2000000001", Severity.CRITICAL), ("5", Severity.CRITICAL),
    ],
)
def test_severity_boundaries_are_exact(value, expected):
    assert severity(D(value), D("0.10")) is expected


@pytest.mark.parametrize(
    "value, expected",
    [
        # minimum 10%: ratio is limit / value
        ("0.10", Severity.LOW), (D("0.10") / D("1.2"), Severity.LOW), ("0.08", Severity.MEDIUM),
        ("0.0666", Severity.HIGH), ("0.05", Severity.HIGH), ("0.0499", Severity.CRITICAL),
        ("0", Severity.CRITICAL), ("-1", Severity.CRITICAL),
    ],
)
def test_severity_of_a_minimum(value, expected):
    assert severity(D(value), D("0.10"), lower_is_worse=True) is expected


def test_severity_of_a_zero_limit():
    assert severity(D("0.0001"), D(0)) is Severity.CRITICAL
    assert severity(D(0), D(0)) is Severity.LOW


@given(
    limit=st.decimals(min_value=D("0.0001"), max_value=D(1000), places=4),
    a=st.decimals(min_value=D(0), max_value=D(10000), places=4),
    b=st.decimals(min_value=D(0), max_value=D(10000), places=4),
)
def test_severity_is_monotone(limit, a, b):
    rank = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    lo, hi = sorted((a, b))
    assert rank.index(severity(lo, limit)) <= rank.index(severity(hi, limit))
    if lo > 0:
        assert rank.index(severity(hi, limit, lower_is_worse=True)) <= rank.index(
            severity(lo, limit, lower_is_worse=True)
        )


# --- drawdown and high-water mark -------------------------------------------------------


def test_first_sample_initialises_and_breaches_nothing():
    (e,) = run(SPEC, [snap(T0, "1000000")])
    assert e.breaches == () and e.new_book and e.unchecked == {}
    book = e.state.book
    assert book.name == "live" and book.started_at == T0
    assert book.index == book.high_water_mark == book.day_open == D(1)  # the series starts here
    assert book.last_value == D("1000000") and book.last_capital == D("1000000")
    assert book.trading_day == date(2024, 3, 11)
    assert e.readings["drawdown"] == 0 and e.readings["dailyLoss"] == 0
    assert e.state.last_sample_at == T0
    assert "orderRate" not in e.readings and "errorRate" not in e.readings


def test_drawdown_breach_from_the_high_water_mark():
    evals = run(SPEC, [snap(T0, "900000"), snap(T0 + timedelta(minutes=1), "1000000"),
                       snap(T0 + timedelta(minutes=2), "880000")])
    assert evals[1].breaches == ()
    e = evals[2]
    (dd,) = [b for b in e.breaches if b.name == "maxDrawdown"]
    assert dd.kind == "risk" and dd.action is Action.HALT
    assert dd.value == D("0.12") and dd.limit == D("0.10")
    assert dd.severity is Severity.LOW  # 1.2x the limit: not above 1.2
    assert dd.reason == "drawdown 12.0% from the live book's high-water mark (flow-adjusted) exceeds limit 10.0%"
    # the high-water mark is the index at 1000000 (the series began at 900000)
    assert e.state.book.high_water_mark == evals[1].state.book.index == D(1000000) / D(900000)
    assert e.readings["drawdown"] == D("0.12")


def test_drawdown_exactly_at_the_limit_is_not_a_breach_and_close_calls_read_clearly():
    e = run(SPEC, [snap(T0, "1000000"), snap(T0 + timedelta(minutes=1), "900000")])[-1]
    assert "maxDrawdown" not in names(e)
    e = run(SPEC, [snap(T0, "1000000"), snap(T0 + timedelta(minutes=1), "899600")])[-1]
    (dd,) = [b for b in e.breaches if b.name == "maxDrawdown"]
    assert "drawdown 10.04% from the live book's high-water mark (flow-adjusted) exceeds limit 10.00%" == dd.reason


def test_limits_left_out_are_not_checked():
    spec = make_spec(riskLimits={"maxDailyLoss": {"threshold": 0.5}})
    e = run(spec, [snap(T0, "1000000"), snap(T0 + timedelta(minutes=1), "500001", cash="0", largest="0.9",
                                               discrepancy="0.9", submitted=10_000, errors=10_000)])[-1]
    assert e.breaches == ()
    assert e.readings["drawdown"] == D("0.499999")


def test_state_survives_a_restart_through_status():
    a = run(SPEC, [snap(T0, "1200000"), snap(T0 + timedelta(minutes=1), "1100000", submitted=5)])[-1].state
    restored = RiskState.model_validate(a.wire())
    assert restored == a
    nxt = snap(T0 + timedelta(minutes=2), "1070000", submitted=305)
    assert evaluate_risk(SPEC, restored, nxt, nxt.taken_at) == evaluate_risk(SPEC, a, nxt, nxt.taken_at)
    e = evaluate_risk(SPEC, restored, nxt, nxt.taken_at)
    assert e.state.book.high_water_mark == D(1)  # the index at 1200000, where the series began
    assert e.state.book.last_value == D("1070000")
    assert e.readings["drawdown"] == 1 - D(1070000) / D(1200000)
    assert set(names(e)) == {"maxDrawdown", "maxDailyLoss", "maxOrderRate"}


def test_a_capital_change_is_a_flow_not_a_return():
    # live-10 (100k) -> live-50 (500k): the 400k the operator added is taken out of the step
    spec = make_spec(riskLimits={"maxDrawdown": {"threshold": 0.10}, "maxDailyLoss": {"threshold": 0.05}})
    state = RiskState()
    reads = [(T0, "100000", "100000"), (T0 + timedelta(minutes=1), "97000", "100000"),
             (T0 + timedelta(minutes=2), "497000", "500000"), (T0 + timedelta(minutes=3), "477120", "500000")]
    evals = []
    for at, value, capital in reads:
        e = evaluate_risk(spec, state, snap(at, value, cash=D(value) / 2), at, book="live", capital=D(capital))
        evals.append(e)
        state = e.state
    assert evals[2].breaches == () and evals[2].readings["drawdown"] == D("0.03")  # not a 397% gain
    assert evals[2].state.book.last_capital == D(500000)
    # the day's losses add up across the rung change: 3% then 4% more is 6.88%, a breach
    e = evals[3]
    assert close(e.readings["dailyLoss"], D("0.0688")) and close(e.readings["drawdown"], D("0.0688"))
    assert names(e) == ["maxDailyLoss"]


def test_a_new_book_starts_a_new_series():
    # paper trades 1M, live 100k: entering live is not a 90% drawdown
    a = evaluate_risk(SPEC, RiskState(), snap(T0, "1000000"), T0, book="paper", capital=D(1000000))
    b = evaluate_risk(SPEC, a.state, snap(T0 + timedelta(minutes=1), "100000", cash="50000"), T0 + timedelta(minutes=1),
                      book="live", capital=D(100000))
    assert a.new_book and b.new_book and b.breaches == ()
    assert b.state.book.name == "live" and b.state.book.index == b.state.book.high_water_mark == D(1)
    assert b.readings["drawdown"] == 0 and b.readings["dailyLoss"] == 0


# --- daily loss and the trading day -----------------------------------------------------


NY_0930 = {"startTime": "09:30", "timeZone": "America/New_York"}


def test_daily_loss_from_the_day_open_and_reset_at_the_boundary():
    spec = make_spec(tradingDay=NY_0930)
    ny = ZoneInfo("America/New_York")
    before = datetime(2024, 3, 12, 9, 29, tzinfo=ny)
    at = datetime(2024, 3, 12, 9, 30, tzinfo=ny)
    evals = run(spec, [
        snap(datetime(2024, 3, 11, 10, 0, tzinfo=ny), "1000000"),
        snap(before, "940000"),  # still Monday's trading day: 6% loss
        snap(at, "940000"),      # Tuesday begins: the day opens at 940000
        snap(at + timedelta(hours=1), "900000"),
    ])
    assert evals[1].state.book.trading_day == date(2024, 3, 11)
    (dl,) = [b for b in evals[1].breaches if b.name == "maxDailyLoss"]
    assert dl.value == D("0.06") and dl.severity is Severity.LOW
    assert dl.reason == "daily loss 6.0% (flow-adjusted, trading day 2024-03-11) exceeds limit 5.0%"
    assert evals[2].state.book.trading_day == date(2024, 3, 12)
    # the day opens at the index of the read at 940000
    assert evals[2].state.book.day_open == evals[2].state.book.index == D("0.94")
    assert "maxDailyLoss" not in names(evals[2])
    assert close(evals[3].readings["dailyLoss"], D(40000) / D(940000))
    assert "maxDailyLoss" not in names(evals[3])  # 4.26%


def test_day_boundary_moves_with_dst_in_utc():
    td = TradingDay(start_time="17:00", time_zone="America/New_York")
    assert day_boundary(date(2024, 3, 8), td) == datetime(2024, 3, 8, 22, 0, tzinfo=UTC)
    assert day_boundary(date(2024, 3, 11), td) == datetime(2024, 3, 11, 21, 0, tzinfo=UTC)


def test_start_time_inside_the_spring_forward_gap():
    # 2024-03-10 in New York: 02:00 EST jumps to 03:00 EDT; 02:30 never happens.
    td = TradingDay(start_time="02:30", time_zone="America/New_York")
    boundary = day_boundary(date(2024, 3, 10), td)
    assert boundary == datetime(2024, 3, 10, 7, 0, tzinfo=UTC)  # the jump, 03:00 EDT
    assert trading_day_of(boundary - timedelta(seconds=1), td) == date(2024, 3, 9)
    assert trading_day_of(boundary, td) == date(2024, 3, 10)


def test_start_time_repeated_on_fall_back_starts_the_day_once():
    # 2024-11-03 in New York: 01:00-02:00 happens twice (EDT, then EST).
    td = TradingDay(start_time="01:30", time_zone="America/New_York")
    first = datetime(2024, 11, 3, 5, 30, tzinfo=UTC)  # 01:30 EDT
    assert day_boundary(date(2024, 11, 3), td) == first
    second_hour = datetime(2024, 11, 3, 6, 0, tzinfo=UTC)  # 01:00 EST, wall clock before 01:30
    assert trading_day_of(second_hour, td) == date(2024, 11, 3)  # does not slip back a day
    spec = make_spec(tradingDay={"startTime": "01:30", "timeZone": "America/New_York"})
    evals = run(spec, [
        snap(first - timedelta(minutes=1), "1000000"),
        snap(first, "990000"),                       # new day opens at 990000
        snap(second_hour, "985000"),
        snap(first + timedelta(hours=1), "980000"),  # 01:30 EST, the repeat: no second reset
    ])
    # day open as an index value (the series began at 1000000)
    assert [e.state.book.day_open for e in evals] == [D(1), D("0.99"), D("0.99"), D("0.99")]
    assert [e.state.book.trading_day for e in evals] == [date(2024, 11, 2)] + [date(2024, 11, 3)] * 3


def test_a_skipped_calendar_day():
    # Samoa skipped 2011-12-30 when it crossed the date line: the wall clock went from
    # 2011-12-29 24:00 (-10) to 2011-12-31 00:00 (+14). Days still follow one another.
    td = TradingDay(start_time="09:30", time_zone="Pacific/Apia")
    jump = datetime(2011, 12, 30, 10, 0, tzinfo=UTC)
    t, day = jump - timedelta(hours=30), None
    while t < jump + timedelta(hours=30):
        d = trading_day_of(t, td)
        assert day is None or d >= day
        assert day_boundary(d, td) <= t < day_boundary(d + timedelta(days=1), td)
        t, day = t + timedelta(minutes=10), d


def test_unknown_time_zone_is_refused_when_the_spec_is_read():
    with pytest.raises(ValueError, match="spec.tradingDay.timeZone"):
        make_spec(tradingDay={"startTime": "09:30", "timeZone": "Mars/Olympus_Mons"})


# --- reported levels --------------------------------------------------------------------


def test_position_cash_and_discrepancy_limits():
    e = run(SPEC, [snap(T0, "1000000", largest="0.11", cash="40000", discrepancy="0.06")])[0]
    by = {b.name: b for b in e.breaches}
    assert by["maxPositionFraction"].action is Action.REDUCE
    assert by["maxPositionFraction"].severity is Severity.CRITICAL  # 0.11 / 0.05 = 2.2
    assert by["minCashFraction"].action is Action.PAUSE
    assert by["minCashFraction"].value == D("0.04")
    assert by["minCashFraction"].severity is Severity.CRITICAL  # 0.10 / 0.04 = 2.5
    assert by["minCashFraction"].reason == "cash 4.0% of portfolio (40000 of 1000000) is below minimum 10.0%"
    assert by["maxPositionDiscrepancy"].severity is Severity.LOW
    assert e.worst_action is Action.HALT


def test_metrics_not_exported_are_not_breaches_but_are_reported():
    s = MetricsSnapshot(taken_at=T0, portfolio_value=D(1000000))
    (e,) = run(SPEC, [s])
    assert e.breaches == ()
    assert any(u.startswith("minCashFraction") for u in e.unchecked)
    assert any(u.startswith("maxPositionFraction") for u in e.unchecked)
    e2 = evaluate_risk(
        SPEC, e.state, MetricsSnapshot(taken_at=T0 + timedelta(seconds=30), portfolio_value=D(1)), T0 + timedelta(seconds=30)
    )
    assert any(u.startswith("maxOrderRate") for u in e2.unchecked)


# --- rates, counter resets, strategy breakers -------------------------------------------


def test_order_and_error_rates_per_minute():
    evals = run(SPEC, [snap(T0, submitted=10, errors=0),
                       snap(T0 + timedelta(seconds=30), submitted=100, errors=6)])
    e = evals[1]
    assert e.readings["orderRate"] == D(180) and e.readings["errorRate"] == D(12)
    by = {b.name: b for b in e.breaches}
    assert by["maxOrderRate"].severity is Severity.MEDIUM  # 1.5x: not above 1.5
    assert by["maxOrderRate"].reason == "order rate 180 per minute (90 orders in 30s) exceeds limit 120 per minute"
    assert by["maxErrorRate"].value == D(12)


def test_counter_reset_gives_the_new_value_not_a_negative_rate():
    evals = run(SPEC, [snap(T0, submitted=500, filled=500), snap(T0 + timedelta(seconds=60), submitted=20, filled=20)])
    assert evals[1].readings["orderRate"] == D(20)
    assert evals[1].state.counters["orders_submitted"] == D(20)


def test_a_strategy_breaker_trip_halts():
    evals = run(SPEC, [
        snap(T0, trips={}),
        snap(T0 + timedelta(seconds=30), trips={"drawdown": 1}),  # first trip: a new series
        snap(T0 + timedelta(seconds=60), trips={"drawdown": 1}),  # no new trip
        snap(T0 + timedelta(seconds=90), trips={"drawdown": 3}),
    ])
    assert evals[0].breaches == () and evals[2].breaches == ()
    (b,) = evals[1].breaches
    assert (b.name, b.kind, b.severity, b.action) == ("strategyBreaker:drawdown", KIND_CIRCUIT, Severity.CRITICAL, Action.HALT)
    assert b.value == 1
    assert evals[3].breaches[0].value == 2
    assert evals[3].state.phase_critical_incidents == 2
    assert evals[3].state.phase_circuit_trips == 2


def test_breaker_trip_after_a_restart_is_seen():
    evals = run(SPEC, [
        snap(T0, submitted=50, trips={"drawdown": 2}),
        snap(T0 + timedelta(seconds=30), submitted=3, trips={"drawdown": 1}),
    ])
    (b,) = [b for b in evals[1].breaches if b.kind == KIND_CIRCUIT]
    assert b.value == 1 and "counters restarted" in b.reason


def test_restart_seen_through_the_creation_stamp():
    evals = run(SPEC, [
        snap(T0, submitted=10, created="1000"),
        snap(T0 + timedelta(seconds=60), submitted=200, created="2000"),
    ])
    assert evals[1].readings["orderRate"] == D(200)


def test_trips_already_on_the_first_sample_are_not_ignored():
    (e,) = run(SPEC, [snap(T0, trips={"order_rate": 1})])
    assert names(e) == ["strategyBreaker:order_rate"]


# BUG? evaluate_risk's docstring: "reconciling twice with the same snapshot changes nothing".
# It does change RiskState.breaching: a re-read is levels-only, so an open rate breach
# (maxOrderRate here) drops out of `breaching` (critical_breaches keeps it open, breaching does
# not), and `resume` would then lift a RiskPause of that rate limit although it was never
# seen back in bounds.
def test_same_snapshot_twice_changes_nothing():
    s0, s1 = snap(T0, submitted=0, trips={}), snap(T0 + timedelta(seconds=30), "850000", submitted=300, trips={"x": 1})
    e1 = run(SPEC, [s0, s1])[-1]
    again = evaluate_risk(SPEC, e1.state, s1, s1.taken_at + timedelta(seconds=5))
    assert again.state == e1.state
    assert {b.name for b in again.breaches} == {"maxDrawdown", "maxDailyLoss"}  # levels only
    older = evaluate_risk(SPEC, e1.state, s0, s1.taken_at)
    assert older.state.counters == e1.state.counters
    assert older.state.last_sample_at == e1.state.last_sample_at


def test_a_critical_breach_that_persists_is_one_incident():
    evals = run(SPEC, [snap(T0, "1000000")] + [snap(T0 + timedelta(minutes=i), "700000") for i in range(1, 5)]
                + [snap(T0 + timedelta(minutes=6), "1000000"), snap(T0 + timedelta(minutes=7), "700000")])
    assert [e.state.phase_critical_incidents for e in evals] == [0, 2, 2, 2, 2, 2, 4]
    assert evals[1].state.critical_breaches == ["maxDailyLoss", "maxDrawdown"]


def test_snapshot_stamped_after_now_counts_as_now():
    e = evaluate_risk(SPEC, RiskState(), snap(T0 + timedelta(hours=1)), T0)
    assert e.state.last_sample_at == T0


# --- properties -------------------------------------------------------------------------

money = st.decimals(min_value=D("0.01"), max_value=D("1e9"), places=2)


@st.composite
def histories(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    t = T0
    out = []
    submitted = errors = D(0)
    trips: dict[str, D] = {}
    for _ in range(n):
        t += timedelta(seconds=draw(st.integers(min_value=1, max_value=7200)), microseconds=draw(st.integers(0, 999999)))
        if draw(st.integers(0, 9)) == 0:  # a process restart
            submitted, errors, trips = D(0), D(0), {}
        submitted += draw(st.integers(0, 500))
        errors += draw(st.integers(0, 20))
        if draw(st.booleans()):
            b = draw(st.sampled_from(["drawdown", "order_rate"]))
            trips[b] = trips.get(b, D(0)) + draw(st.integers(0, 2))
        out.append(snap(t, draw(money), submitted=submitted, filled=submitted, errors=errors, trips=dict(trips),
                        cash=draw(money), largest=draw(st.decimals(min_value=0, max_value=1, places=4))))
    return out


def _all_decimal(x) -> bool:
    return isinstance(x, D)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(histories())
def test_risk_arithmetic_properties(snaps):
    state = RiskState()
    prev_hwm = None
    seen_max = D(0)
    first = snaps[0].portfolio_value
    for s in snaps:
        e = evaluate_risk(SPEC, state, s, s.taken_at)
        book = e.state.book
        hwm = book.high_water_mark
        seen_max = max(seen_max, s.portfolio_value)
        # No flow (one capital throughout): the index is the value over the first value, the
        # high-water mark the highest value seen on that scale...
        assert book.last_value == s.portfolio_value
        assert close(book.index, s.portfolio_value / first)
        assert close(hwm, seen_max / first)
        if prev_hwm is not None:
            assert hwm >= prev_hwm  # ...so it never decreases
        prev_hwm = hwm
        assert hwm >= book.index and book.day_open > 0
        assert close(e.readings["drawdown"], 1 - s.portfolio_value / seen_max)
        assert e.readings["drawdown"] >= 0
        assert e.readings["dailyLoss"] >= 0
        for key in ("orderRate", "errorRate"):
            if key in e.readings:
                assert e.readings[key] >= 0
        assert all(_all_decimal(v) for v in e.readings.values())
        for b in e.breaches:
            assert _all_decimal(b.value) and _all_decimal(b.limit)
            assert b.value >= 0
        assert all(_all_decimal(v) for v in e.state.counters.values())
        assert all(v >= 0 for v in e.state.window_totals.values())
        # a restart of the operator (status round trip) changes nothing
        assert RiskState.model_validate(e.state.wire()) == e.state
        state = e.state


ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata",
         "America/Sao_Paulo", "Pacific/Apia", "Europe/Berlin", "America/St_Johns"]


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hh=st.integers(0, 23),
    mm=st.sampled_from([0, 15, 30, 59]),
    start=st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    steps=st.lists(st.integers(min_value=60, max_value=6 * 3600), min_size=1, max_size=60),
)
def test_trading_day_is_monotone_and_starts_at_the_boundary(zone, hh, mm, start, steps):
    td = TradingDay(start_time=f"{hh:02d}:{mm:02d}", time_zone=zone)
    t = start
    day = trading_day_of(t, td)
    for s in steps:
        t2 = t + timedelta(seconds=s)
        day2 = trading_day_of(t2, td)
        assert day2 >= day
        assert day_boundary(day2, td) <= t2 < day_boundary(day2 + timedelta(days=1), td)
        t, day = t2, day2


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hh=st.integers(0, 23),
    day=st.dates(min_value=date(2015, 1, 1), max_value=date(2029, 12, 31)),
)
def test_day_open_resets_exactly_at_the_boundary(zone, hh, day):
    spec = make_spec(tradingDay={"startTime": f"{hh:02d}:00", "timeZone": zone})
    b = day_boundary(day, spec.trading_day)
    e1 = evaluate_risk(spec, RiskState(), snap(b - timedelta(seconds=1), "1000"), b)
    e2 = evaluate_risk(spec, e1.state, snap(b - timedelta(microseconds=1), "900"), b)
    assert e2.state.book.day_open == D(1)  # not yet: still the index of the read at 1000
    e3 = evaluate_risk(spec, e2.state, snap(b, "800"), b)
    assert e3.state.book.day_open == e3.state.book.index == D("0.8")  # opens at the read at 800
    assert e3.state.book.trading_day == trading_day_of(b, spec.trading_day)
    assert e3.readings["dailyLoss"] == 0


def test_rates_are_read_over_the_rate_window_not_one_scrape():
    spec = make_spec(
        analysis={"rateWindow": "60s"}, riskLimits={"maxDrawdown": {"threshold": 0.1}, "maxOrderRate": {"threshold": 120}}
    )
    # 3 orders a second: 180 a minute, above the 120 limit; a burst of 5 in one second alone is not
    states = run(spec, [snap(T0 + timedelta(seconds=i), submitted=3 * i + (5 if i >= 10 else 0)) for i in range(0, 61)])
    early = [e for e in states[:60] if any(b.name == "maxOrderRate" for b in e.breaches)]
    assert not early, "a rate was read before the window was full"
    last = states[60]
    (b,) = [b for b in last.breaches if b.name == "maxOrderRate"]
    assert b.value == D(185)  # (180 + 5) orders in 60 s
