"""Phase gates over the phase window, and backtest gates. Fail closed throughout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api.spec import DEFAULT_GATES, Gates, Mode, StrategySpec
from phasegate.api.status import RiskState
from phasegate.metrics.snapshot import Histogram, MetricsSnapshot
from phasegate.policy.gates import (
    PhaseWindow,
    evaluate_backtest_gates,
    evaluate_metric_gates,
    start_phase_window,
)
from phasegate.policy.risk import evaluate_risk

T0 = datetime(2024, 3, 11, 15, 0, tzinfo=UTC)
SPEC = StrategySpec.model_validate(
    {"capital": "1000000", "account": "a", "maxFraction": 1, "template": {"image": "x"}}
)


def lat(count: Any, total_seconds: Any) -> Histogram:
    return Histogram(buckets={D("Infinity"): count}, sum=total_seconds, count=count)


def snap(
    at: datetime, *, submitted: Any = 0, filled: Any = None, trips: dict | None = None,
    latency: Histogram | None = None, created: Any = None, value: Any = "1000000", **kw: Any,
) -> MetricsSnapshot:
    return MetricsSnapshot(
        taken_at=at, portfolio_value=value, cash="500000", largest_position_fraction="0.02",
        orders_submitted=submitted, orders_filled=submitted if filled is None else filled, errors=0,
        breaker_trips=trips or {}, order_latency=latency if latency is not None else lat(submitted, D(submitted) / 10),
        counters_created=created, **kw,
    )


def phase(snaps: list[MetricsSnapshot], *, before: list[MetricsSnapshot] = ()) -> tuple[RiskState, MetricsSnapshot]:
    """Feed `before` (previous phase), start a phase at the last of them, feed `snaps`."""
    state = RiskState()
    for s in before:
        state = evaluate_risk(SPEC, state, s, s.taken_at).state
    state = start_phase_window(state, None, at=state.last_sample_at)
    for s in snaps:
        state = evaluate_risk(SPEC, state, s, s.taken_at).state
    return state, snaps[-1]


def by_name(results) -> dict:
    return {r.name: r for r in results}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- paper ------------------------------------------------------------------------------


def test_paper_defaults_pass_on_a_healthy_window():
    state, s = phase([snap(at(1), submitted=100, filled=99)])
    r = evaluate_metric_gates(DEFAULT_GATES[Mode.PAPER], state, s)
    assert [g.name for g in r] == ["minFillRate", "noBreakerTrips"]
    assert all(g.passed for g in r), r
    assert r[0].value == "0.99" and r[0].threshold == "0.95"


def test_fill_rate_is_over_the_window_only_and_strictly_above():
    # 1000 orders at 50% before the phase; 100 at exactly 95% during it
    state, s = phase([snap(at(1), submitted=1100, filled=595)], before=[snap(at(0), submitted=1000, filled=500)])
    g = by_name(evaluate_metric_gates(Gates(min_fill_rate=D("0.95")), state, s))["minFillRate"]
    assert not g.passed and g.value == "0.95"
    assert "95 of 100 orders this phase" in g.message


def test_fill_rate_without_orders_or_counters_fails_closed():
    state, s = phase([snap(at(1), submitted=0)])
    g = evaluate_metric_gates(Gates(min_fill_rate=D("0.95")), state, s)[0]
    assert not g.passed and "no orders submitted" in g.message
    bare = MetricsSnapshot(taken_at=at(2), portfolio_value=D(1))
    state = evaluate_risk(SPEC, RiskState(), bare, bare.taken_at).state
    g = evaluate_metric_gates(Gates(min_fill_rate=D("0.95")), state, bare)[0]
    assert not g.passed and "does not export" in g.message


def test_window_survives_a_pod_restart_mid_phase():
    # old pod: 500 orders before the phase; new pod counts from zero and passes 500
    state, s = phase(
        [snap(at(1), submitted=10, filled=10, created="2"), snap(at(2), submitted=600, filled=597, created="2")],
        before=[snap(at(0), submitted=500, filled=100, created="1")],
    )
    g = evaluate_metric_gates(Gates(min_fill_rate=D("0.95")), state, s)[0]
    assert g.passed and "597 of 600 orders" in g.message


def test_gates_count_the_same_before_or_after_evaluate_risk():
    state, _ = phase([snap(at(1), submitted=50)])
    nxt = snap(at(2), submitted=120, filled=110)
    after = evaluate_risk(SPEC, state, nxt, nxt.taken_at).state
    gates = Gates(min_fill_rate=D("0.9"), max_mean_latency="500ms")
    assert evaluate_metric_gates(gates, state, nxt) == evaluate_metric_gates(gates, after, nxt)
    assert evaluate_metric_gates(gates, PhaseWindow.of(after), nxt) == evaluate_metric_gates(gates, after, nxt)


def test_no_breaker_trips():
    gates = Gates(no_breaker_trips=True)
    # a trip before the phase does not count
    state, s = phase([snap(at(1), trips={"drawdown": 1})], before=[snap(at(0), trips={"drawdown": 1})])
    assert evaluate_metric_gates(gates, state, s)[0].passed
    state, s = phase([snap(at(1), trips={"drawdown": 2})], before=[snap(at(0), trips={"drawdown": 1})])
    g = evaluate_metric_gates(gates, state, s)[0]
    assert not g.passed and "drawdown: 1" in g.message
    # a trip seen only in the snapshot not yet evaluated counts too
    state, _ = phase([snap(at(1))])
    assert not evaluate_metric_gates(gates, state, snap(at(2), trips={"x": 1}))[0].passed


def test_no_breaker_trips_counts_circuit_breaches_recorded_in_the_phase():
    state, s = phase([snap(at(1))])
    tripped = state.model_copy(update={"phase_circuit_trips": 1})
    assert not evaluate_metric_gates(Gates(no_breaker_trips=True), tripped, s)[0].passed


# --- shadow -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alignment, quality, mean_ms, expected",
    [
        ("0.95", "0.90", "499.9", {"minSignalAlignment": True, "minExecutionQuality": True, "maxMeanLatency": True}),
        ("0.9499", "0.8999", "500", {"minSignalAlignment": False, "minExecutionQuality": False, "maxMeanLatency": False}),
    ],
)
def test_shadow_defaults_at_their_boundaries(alignment, quality, mean_ms, expected):
    n = 1000
    state, s = phase([snap(at(1), submitted=n, latency=lat(n, D(mean_ms) * n / 1000),
                           signal_alignment=alignment, execution_quality=quality)])
    r = by_name(evaluate_metric_gates(DEFAULT_GATES[Mode.SHADOW], state, s))
    assert {k: g.passed for k, g in r.items()} == expected
    assert r["maxMeanLatency"].threshold == "500ms"
    assert r["maxMeanLatency"].value == f"{D(mean_ms).normalize():f}ms"


def test_mean_latency_is_over_the_window():
    # slow before the phase (2 s each), fast during it (0.1 s)
    state, s = phase([snap(at(1), submitted=20, latency=lat(20, D("20.1") + 1))],
                     before=[snap(at(0), submitted=10, latency=lat(10, D(20)))])
    g = evaluate_metric_gates(Gates(max_mean_latency="500ms"), state, s)[0]
    assert g.passed and g.value == "110ms"


def test_shadow_gates_without_their_metrics_fail_closed():
    state, s = phase([MetricsSnapshot(taken_at=at(1), portfolio_value=D(1))])
    r = by_name(evaluate_metric_gates(DEFAULT_GATES[Mode.SHADOW], state, s))
    assert not any(g.passed for g in r.values())
    assert "strategy_signal_alignment_ratio" in r["minSignalAlignment"].message
    assert "strategy_execution_quality_ratio" in r["minExecutionQuality"].message
    assert "histogram" in r["maxMeanLatency"].message
    state, s = phase([snap(at(1), submitted=0)])
    assert "no order latency observed" in evaluate_metric_gates(Gates(max_mean_latency="1s"), state, s)[0].message


# --- live -------------------------------------------------------------------------------


def test_no_critical_incident_counts_from_phase_start():
    crash = [snap(at(0)), snap(at(1), value="700000")]  # 30% drawdown: critical
    state = RiskState()
    for s in crash:
        state = evaluate_risk(SPEC, state, s, s.taken_at).state
    gates = Gates(no_critical_incident=True)
    assert not evaluate_metric_gates(gates, state, crash[-1])[0].passed
    # a new phase while the breach is still open: it counts in the new phase too
    carried = start_phase_window(state, None)
    assert evaluate_metric_gates(gates, carried, crash[-1])[0].value == "2"
    # a new phase after recovery starts clean
    ok = evaluate_risk(SPEC, state, snap(at(2), value="1000000"), at(2)).state
    fresh = start_phase_window(ok, None)
    g = evaluate_metric_gates(gates, fresh, snap(at(3)))[0]
    assert g.passed and g.value == "0"


def test_slippage_tolerance():
    gates = Gates(max_slippage_bps=D(10))
    state, _ = phase([snap(at(1))])
    assert evaluate_metric_gates(gates, state, snap(at(2), slippage_bps="10"))[0].passed
    assert not evaluate_metric_gates(gates, state, snap(at(2), slippage_bps="10.01"))[0].passed
    g = evaluate_metric_gates(gates, state, snap(at(2)))[0]
    assert not g.passed and "strategy_slippage_bps" in g.message


def test_unreadable_metrics_fail_every_gate():
    every = Gates(
        min_fill_rate=D("0.9"), no_breaker_trips=True, min_signal_alignment=D("0.9"),
        min_execution_quality=D("0.9"), max_mean_latency="1s", no_critical_incident=True,
        max_slippage_bps=D(10),
    )
    r = evaluate_metric_gates(every, RiskState(), None)
    assert [g.name for g in r] == [
        "minFillRate", "noBreakerTrips", "minSignalAlignment", "minExecutionQuality",
        "maxMeanLatency", "noCriticalIncident", "maxSlippageBps",
    ]
    assert not any(g.passed for g in r)
    assert all("metrics unavailable" in g.message for g in r)


def test_gates_left_out_are_not_evaluated():
    state, s = phase([snap(at(1))])
    assert evaluate_metric_gates(Gates(), state, s) == []
    assert evaluate_metric_gates(DEFAULT_GATES[Mode.BACKTEST], state, s) == []
    assert evaluate_backtest_gates(DEFAULT_GATES[Mode.PAPER], {}) == []


def test_start_phase_window_from_a_snapshot_not_yet_evaluated():
    state = evaluate_risk(SPEC, RiskState(), snap(at(0), submitted=10), at(0)).state
    started = start_phase_window(state, snap(at(1), submitted=40))
    assert started.window_counters["orders_submitted"] == 40
    assert started.window_counters["orders_submitted"] == 40
    assert started.window_totals == {} and started.window_started_at == at(1)
    # the step 10 -> 40 happened before the phase: it does not count
    state = evaluate_risk(SPEC, started, snap(at(1), submitted=40), at(1)).state
    state = evaluate_risk(SPEC, state, snap(at(2), submitted=45), at(2)).state
    assert state.window_totals["orders_submitted"] == 5
    assert state.counters["orders_submitted"] == 45


# --- property: the window counts every increment through restarts -----------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=1, max_size=30),
       st.integers(0, 1000))
def test_window_totals_equal_the_true_increments_across_restarts(steps, before):
    """A simulated process counts `inc` per step and sometimes restarts (new creation stamp)."""
    submitted, created = D(before), 0
    state = evaluate_risk(SPEC, RiskState(), snap(at(0), submitted=submitted, created=created), at(0)).state
    state = start_phase_window(state, None)
    true_total = D(0)
    for i, (restart, inc) in enumerate(steps, start=1):
        if restart:
            submitted, created = D(0), created + 1
        submitted += inc
        true_total += inc
        s = snap(at(i), submitted=submitted, created=created)
        state = evaluate_risk(SPEC, state, s, s.taken_at).state
        assert state.window_totals["orders_submitted"] == true_total
    assert all(isinstance(v, D) and v >= 0 for v in state.window_totals.values())


# --- backtest ---------------------------------------------------------------------------

GOOD = {"sharpe": 1.8, "maxDrawdown": 0.08, "walkForwardWindows": 12, "monteCarloRuns": 1000}


def test_backtest_defaults_pass_on_the_fake_strategys_result():
    r = evaluate_backtest_gates(DEFAULT_GATES[Mode.BACKTEST], GOOD)
    assert [g.name for g in r] == ["minSharpe", "maxBacktestDrawdown", "minWalkForwardWindows", "minMonteCarloRuns"]
    assert all(g.passed for g in r)
    assert r[0].value == "1.8" and r[0].threshold == "1"


@pytest.mark.parametrize(
    "patch, gate, passed",
    [
        ({"sharpe": 1.0}, "minSharpe", True),
        ({"sharpe": "0.99"}, "minSharpe", False),
        ({"maxDrawdown": 0.2}, "maxBacktestDrawdown", False),
        ({"maxDrawdown": 0.1999}, "maxBacktestDrawdown", True),
        ({"maxDrawdown": -0.25}, "maxBacktestDrawdown", False),
        ({"walkForwardWindows": 10}, "minWalkForwardWindows", True),
        ({"walkForwardWindows": 9}, "minWalkForwardWindows", False),
        ({"monteCarloRuns": 999}, "minMonteCarloRuns", False),
    ],
)
def test_backtest_boundaries(patch, gate, passed):
    r = by_name(evaluate_backtest_gates(DEFAULT_GATES[Mode.BACKTEST], {**GOOD, **patch}))
    assert r[gate].passed is passed


@pytest.mark.parametrize(
    "result, fragment",
    [
        (None, "no backtest result"),
        ([1, 2], "no backtest result"),
        ({k: v for k, v in GOOD.items() if k != "sharpe"}, "has no 'sharpe'"),
        ({**GOOD, "sharpe": None}, "has no 'sharpe'"),
        ({**GOOD, "sharpe": "high"}, "not a number"),
        ({**GOOD, "sharpe": True}, "not a number"),
        ({**GOOD, "sharpe": "NaN"}, "not a finite number"),
    ],
)
def test_backtest_missing_input_fails_closed(result, fragment):
    g = evaluate_backtest_gates(Gates(min_sharpe=D(1)), result)[0]
    assert not g.passed and g.value is None and fragment in g.message
