"""Example-based tests of the decision core: the ladder, the ceiling, manual gates, halts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from phasegate.api import State, StrategyStatus
from phasegate.api.observations import PodRead
from phasegate.api.status import HoldKind
from phasegate.policy.requests import Verb
from phasegate.policy.rollout import Observation, decide

from .rollout_helpers import T0, Market, climb, newest_halt, read_id, request, spec, step


def start(s):
    d, st = step(s, StrategyStatus(), Observation(), T0)
    assert [h.action for h in d.history] == ["start"]
    return st


def test_new_strategy_starts_on_first_rung_with_no_capital():
    s = spec()
    st = start(s)
    assert st.phase == "paper" and st.state is State.PROGRESSING
    assert st.capital_fraction == 0
    assert st.history[0].seq == 1 and st.history[0].by == "operator"


def test_whole_ladder_climbs_in_order_never_skipping():
    s = spec()
    st, now, decisions = climb(s, Market(), start(s), T0, 80)
    entered = [h.to for d in decisions for h in d.history if h.action in ("advance", "complete")]
    assert entered == ["shadow", "live-10", "live-50", "live-100"]
    assert st.state is State.COMPLETED and st.capital_fraction == Decimal("1.0")
    # every default limit was checked at every read, and the rung changes were flows, not returns
    assert st.is_true("RiskGuarded") and not st.risk.limit_failures and not st.breakers
    assert st.risk.book.name == "live" and st.risk.book.index == st.risk.book.high_water_mark == 1


def test_minimum_duration_holds_the_rung():
    s = spec()
    st, now, _ = climb(s, Market(), start(s), T0, 9)
    assert st.phase == "paper"
    assert "MinDuration" in st.message
    st, now, _ = climb(s, Market(), st, now, 2)
    assert st.phase == "shadow"


def test_no_metrics_no_advance_even_after_the_duration():
    s = spec()
    st = start(s)
    d, st = step(s, st, Observation(), T0 + timedelta(hours=1))
    assert st.phase == "paper" and not d.history
    assert "MetricsNotFresh" in st.message


def test_manual_phase_waits_for_promote():
    s = spec()
    st, now, _ = climb(s, Market(), start(s), T0, 60, approve=False)
    assert st.phase == "live-10"
    assert st.message.startswith("AwaitingApproval")
    d, st = step(s, st, Observation(request=request(Verb.PROMOTE, by="risk-officer")), now)
    assert st.last_request.outcome == "Accepted"
    assert not [h for h in st.holds_of(HoldKind.APPROVAL_WAIT) if h.visit == st.visit]  # approved
    assert d.history[0].by == "risk-officer"
    st, now, _ = climb(s, Market(), st, now, 2, approve=False)
    assert st.phase == "live-50"


def test_ceiling_stops_the_ladder_and_raising_it_continues():
    low = spec(max_fraction="0.10")
    st, now, _ = climb(low, Market(), start(low), T0, 80)
    assert st.phase == "live-10" and st.capital_fraction == Decimal("0.1")
    assert st.message.startswith("CeilingReached")
    mid = spec(max_fraction="0.5")
    st, now, _ = climb(mid, Market(), st, now, 40)
    assert st.phase == "live-50" and st.state is State.PROGRESSING


def test_lowering_the_ceiling_steps_down_at_once():
    s = spec()
    st, now, _ = climb(s, Market(), start(s), T0, 80)
    assert st.phase == "live-100"
    low = spec(max_fraction="0.10")
    d, st = step(low, st, Observation(), now)
    assert st.phase == "live-10" and st.capital_fraction == Decimal("0.1")
    assert d.history[-1].action == "reduce"


def test_external_breaker_condition_halts_and_only_reset_resumes():
    from phasegate.api import Condition

    s = spec()
    st, now, _ = climb(s, Market(), start(s), T0, 30)
    cond = Condition(type="CircuitBreakerTripped", status="True", reason="DeskKill", message="manual", last_transition_time=now)
    st = st.model_copy(update={"conditions": [c for c in st.conditions if c.type != cond.type] + [cond]})
    d, st = step(s, st, Observation(), now)
    assert st.state is State.HALTED and d.history[-1].action == "halt"
    # time, healthy metrics, pause/resume/promote requests: none of them resumes it
    for verb in (Verb.RESUME, Verb.PROMOTE, Verb.PAUSE):
        d, st = step(s, st, Observation(request=request(verb)), now)
        assert st.state is State.HALTED and st.last_request.outcome == "Rejected"
    st, now, _ = climb(s, Market(), st, now + timedelta(days=30), 5)
    assert st.state is State.HALTED
    # a reset must name the halt it lifts
    d, st = step(s, st, Observation(request=request(Verb.RESET, reason="post-mortem done")), now)
    assert st.state is State.HALTED and st.last_request.outcome == "Rejected"
    d, st = step(s, st, Observation(request=request(Verb.RESET, reason="post-mortem done", target=newest_halt(st))), now)
    assert st.state is State.PROGRESSING and d.history[-1].action == "reset"
    assert not st.is_true("CircuitBreakerTripped")


def test_a_pod_the_halt_sentinel_stopped_stays_stopped_after_the_condition_is_gone():
    from phasegate.api.observations import ChildrenObservation
    from phasegate.policy.external import sentinel_stop

    s = spec()
    st, now, _ = climb(s, Market(), start(s), T0, 30)
    assert st.state is not State.HALTED and st.capital_fraction > 0
    # The condition was set and cleared before this pass: only the StatefulSet says what happened.
    stopped = ChildrenObservation(statefulset=True, replicas=0, sentinel_stop=sentinel_stop(["CircuitBreakerTripped"], "41"))
    d, st = step(s, st, Observation(children=stopped), now)
    assert st.state is State.HALTED and [e.action for e in d.history] == ["halt"]
    assert "halt sentinel stopped the pod on CircuitBreakerTripped" in d.history[-1].reason
    assert d.desired is None or d.desired.replicas == 0
    d, st = step(s, st, Observation(children=stopped), now)
    assert not d.history, "the same stop is recorded once"
    # The controller removes the note once the halt is written; only a reset naming the halt resumes.
    d, st = step(s, st, Observation(request=request(Verb.RESET, reason="blip checked", target=newest_halt(st))), now)
    assert st.state is State.PROGRESSING and d.history[-1].action == "reset"


def test_drawdown_breach_halts():
    s = spec(riskLimits={"maxDrawdown": {"threshold": 0.10, "action": "halt"}})
    m = Market()
    st, now, _ = climb(s, m, start(s), T0, 30)
    now += timedelta(seconds=1)
    d, st = step(s, st, m.read(s, st, now, loss=Decimal("0.12")), now)
    assert st.state is State.HALTED
    assert st.breakers["maxDrawdown"].state.value == "Tripped"
    assert st.is_true("RiskLimitBreached")


def test_reduce_steps_back_one_live_rung_and_pauses():
    s = spec()
    m = Market()
    st, now, _ = climb(s, m, start(s), T0, 38)
    assert st.phase == "live-50"
    now += timedelta(seconds=1)
    d, st = step(s, st, m.read(s, st, now, largest_position_fraction=Decimal("0.08")), now)
    assert st.phase == "live-10" and st.state is State.PAUSED
    assert st.capital_fraction == Decimal("0.1")


def test_reduce_on_lowest_live_rung_cuts_fraction_by_20_percent():
    s = spec()
    m = Market()
    st, now, _ = climb(s, m, start(s), T0, 35, approve=False)
    assert st.phase == "live-10"
    now += timedelta(seconds=1)
    d, st = step(s, st, m.read(s, st, now, largest_position_fraction=Decimal("0.08")), now)
    assert st.phase == "live-10" and st.capital_fraction == Decimal("0.08")


def test_metrics_failures_pause_then_halt_and_never_pass_a_gate():
    s = spec()
    st = start(s)
    now = T0
    states = []
    for _ in range(7):
        now += timedelta(seconds=5)
        d, st = step(s, st, Observation(metrics_error="connection refused"), now)
        states.append(st.state)
        assert st.phase == "paper"
    assert states[1] is State.PROGRESSING and states[2] is State.PAUSED and states[5] is State.HALTED
    assert st.condition("MetricsAvailable").status == "False"
    assert "metricsUnavailable" in st.breakers


def test_halt_request_is_recorded_with_who_and_why():
    s = spec()
    st = start(s)
    d, st = step(s, st, Observation(request=request(Verb.HALT, reason="fat finger", by="bob")), T0)
    h = d.history[-1]
    assert (h.action, h.by) == ("halt", "bob") and "fat finger" in h.reason
    assert st.state is State.HALTED


def test_replayed_request_acts_once():
    s = spec()
    st = start(s)
    req = request(Verb.PAUSE)
    d1, st = step(s, st, Observation(request=req), T0)
    d2, st2 = step(s, st, Observation(request=req), T0)
    assert len(d1.history) == 1 and not d2.history and st2 == st


def test_backtest_phase_passes_on_good_results():
    from phasegate.policy.rollout import BacktestObservation

    s = spec(phases=[
        {"name": "backtest", "mode": "backtest"},
        {"name": "paper", "mode": "paper", "minDuration": "10s"},
    ], riskLimits={"maxDrawdown": {"threshold": 0.1}})
    d, st = step(s, StrategyStatus(), Observation(), T0)
    assert st.state is State.VALIDATING
    good = {"sharpe": 1.8, "maxDrawdown": 0.08, "walkForwardWindows": 12, "monteCarloRuns": 1000}
    d, st = step(s, st, Observation(backtest=BacktestObservation(job="j", state="Succeeded", result=good)), T0)
    assert st.phase == "paper" and st.backtest.outcome == "Passed"


def test_backtest_phase_fails_on_bad_results():
    from phasegate.policy.rollout import BacktestObservation

    s = spec(phases=[
        {"name": "backtest", "mode": "backtest"},
        {"name": "paper", "mode": "paper", "minDuration": "10s"},
    ])
    d, st = step(s, StrategyStatus(), Observation(), T0)
    bad = {"sharpe": 0.4, "maxDrawdown": 0.08, "walkForwardWindows": 12, "monteCarloRuns": 1000}
    d, st = step(s, st, Observation(backtest=BacktestObservation(job="j", state="Succeeded", result=bad)), T0)
    assert st.state is State.FAILED and "minSharpe" in st.backtest.message
    assert st.capital_fraction == 0


def test_critical_breach_runs_the_emergency_sequence_and_locks_down():
    from phasegate.policy.emergency import EmergencyObservation

    s = spec()
    m = Market()
    st, now, _ = climb(s, m, start(s), T0, 30)
    now += timedelta(seconds=1)
    # a 12% loss in a day is 2.4x the 5% daily limit: critical
    d, st = step(s, st, m.read(s, st, now, loss=Decimal("0.12")), now)
    assert st.state is State.EMERGENCY_STOPPED
    assert [x.outcome for x in st.emergency.steps] == ["Running", "Running", "Pending", "Pending"]
    now += timedelta(seconds=3)
    d, st = step(s, st, Observation(emergency=EmergencyObservation(pod_gone=True)), now)
    assert [x.outcome for x in st.emergency.steps] == ["Succeeded", "Succeeded", "Running", "Pending"]
    now += timedelta(seconds=5)
    d, st = step(s, st, Observation(emergency=EmergencyObservation(pod_gone=True, flatten="Succeeded")), now)
    assert st.emergency.finished and st.emergency.steps[2].duration_seconds == 5.0
    assert st.state is State.EMERGENCY_STOPPED
    assert d.history[-1].action == "emergency-complete"
    d, st = step(s, st, Observation(request=request(Verb.RESET, reason="flat, reviewed", target=newest_halt(st))), now)
    assert st.state is State.PROGRESSING and st.emergency is None


def test_emergency_step_that_times_out_is_recorded_and_the_sequence_goes_on():
    from phasegate.policy.emergency import EmergencyObservation

    s = spec()
    st = start(s)
    d, st = step(s, st, Observation(request=request(Verb.EMERGENCY, severity="critical")), T0)
    now = T0 + timedelta(seconds=95)  # past stop (30s) + cancel (60s)
    d, st = step(s, st, Observation(emergency=EmergencyObservation(pod_gone=False)), now)
    assert [x.outcome for x in st.emergency.steps[:3]] == ["TimedOut", "TimedOut", "Running"]
    now += timedelta(seconds=301)
    d, st = step(s, st, Observation(emergency=EmergencyObservation(pod_gone=False, flatten="Running")), now)
    assert st.emergency.steps[2].outcome == "TimedOut" and st.emergency.finished


def test_a_new_capital_base_is_not_read_as_a_loss():
    """shadow trades 1M of paper capital, live-10 a 100k book: not a 90% drawdown."""
    s = spec()
    m = Market()
    st, now = start(s), T0
    while st.phase != "live-10":
        st, now, _ = climb(s, m, st, now, 1)
    assert st.capital == Decimal(100000)
    assert st.risk.book is not None and st.risk.book.name == "paper"  # no live read yet
    now += timedelta(seconds=1)
    # the shadow pod, still shutting down (inside the start-up grace), is graded on its own
    # (paper) book and counts for no gate; it is not a failed read yet
    shadow = PodRead(phase="shadow", mode="shadow", capital=Decimal(1000000))
    d, st = step(s, st, Observation(metrics=m.healthy(now), read_id=read_id(), pod=shadow), now)
    assert st.state is State.PROGRESSING and not st.breakers
    assert st.risk.book.name == "paper" and not st.risk.limit_failures
    now += timedelta(seconds=1)
    live = PodRead(phase="live-10", mode="live", capital=Decimal(100000))
    d, st = step(s, st, Observation(metrics=m.healthy(now, value=Decimal(100000)), read_id=read_id(), pod=live), now)
    assert st.state is State.PROGRESSING and not st.breakers
    assert [h.action for h in d.history] == ["new-book"]  # the live book starts a new series
    book = st.risk.book
    assert book.name == "live" and book.index == book.high_water_mark == book.day_open == 1
    assert book.last_value == Decimal(100000) and book.last_capital == Decimal(100000)


def test_editing_the_ladder_under_a_halted_strategy_never_resumes_it():
    s = spec()
    st = start(s)
    d, st = step(s, st, Observation(request=request(Verb.HALT)), T0)
    renamed = spec(
        phases=[{"name": "paper-v2", "mode": "paper", "minDuration": "1s"}], riskLimits={"maxDrawdown": {"threshold": 0.1}}
    )
    d, st = step(renamed, st, Observation(), T0 + timedelta(seconds=5))
    assert st.state is State.HALTED
    d = decide(s, st, Observation(), T0 + timedelta(seconds=10), generation=3)
    assert d.status.state is State.HALTED


def test_a_metrics_error_is_told_apart_from_a_breach():
    s = spec()
    st = start(s)
    now = T0
    decisions = []
    for _ in range(6):
        now += timedelta(seconds=5)
        d, st = step(s, st, Observation(metrics_error="connection refused"), now)
        decisions.append(d)
    assert st.state is State.HALTED
    assert not st.is_true("RiskLimitBreached") and not st.is_true("CircuitBreakerTripped")
    assert st.condition("MetricsAvailable").status == "False"
    causes = [h.cause for d in decisions for h in d.history]
    assert causes == ["MetricsError", "MetricsError"]  # the pause, then the halt


# BUG? policy/rollout.py _latch_external_conditions pairs each condition type with its cause
# but records every external halt with cause=Cause.CIRCUIT_BREAKER_TRIPPED (the loop's `cause`
# is only used for the "already held" check): an external RiskLimitBreached condition becomes a
# CircuitBreakerTripped halt, RiskLimitBreached turns False, and the latch is not idempotent for it.
def test_an_externally_set_risk_condition_halts_and_stays_a_risk_condition():
    from phasegate.api import Condition

    s = spec()
    st = start(s)
    cond = Condition(type="RiskLimitBreached", status="True", reason="DeskLimit", message="", last_transition_time=T0)
    st = st.model_copy(update={"conditions": [c for c in st.conditions if c.type != cond.type] + [cond]})
    d, st = step(s, st, Observation(), T0)
    assert st.state is State.HALTED and d.history[-1].cause == "RiskLimitBreached"
    assert st.is_true("RiskLimitBreached") and not st.is_true("CircuitBreakerTripped")


def test_a_read_of_the_previous_phase_pod_is_graded_for_risk_but_not_for_gates():
    s = spec()
    m = Market()
    st, now = start(s), T0
    while st.phase != "shadow":
        st, now, _ = climb(s, m, st, now, 1)
    # inside the start-up grace: no gate, no failure, but a breach from it acts (pause/halt)
    now += timedelta(seconds=1)
    d, st2 = step(s, st, m.read(s, st, now, phase="paper"), now)
    assert st2.gates == [] and not st2.risk.limit_failures and st2.state is State.PROGRESSING
    d, st2 = step(s, st, m.read(s, st, now, phase="paper", largest_position_fraction=Decimal("0.5")), now)
    assert "maxPositionFraction" in st2.breakers
    # past the grace (30s here) it is also a failed read
    late = now + timedelta(seconds=31)
    d, st3 = step(s, st, m.read(s, st, late, phase="paper"), late)
    assert st3.risk.limit_failures and st3.metrics.consecutive_errors == 1
    assert "still runs phase paper" in st3.metrics.last_error


def test_a_read_is_folded_in_once():
    s = spec()
    m = Market()
    st, now, _ = climb(s, m, start(s), T0, 3)
    now += timedelta(seconds=1)
    obs = m.read(s, st, now)
    d1, st1 = step(s, st, obs, now)
    d2, st2 = step(s, st1, obs, now)
    assert st2.risk == st1.risk and st2.metrics == st1.metrics and not d2.history
