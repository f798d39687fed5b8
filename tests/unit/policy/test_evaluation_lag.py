"""The evaluation-lag rule (rollout._check_evaluation_lag): an evaluation later than two
intervals after the one before counts like a failed read for metricsFailure, so that an
operator that falls behind pauses, then halts, instead of guarding less often than the
spec says, and says so."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api import State, StrategyStatus
from phasegate.api.status import HoldKind
from phasegate.policy.holds import resumable
from phasegate.policy.requests import Verb
from phasegate.policy.rollout import Observation

from .rollout_helpers import T0, Market, request, spec, step


def _started(s):
    _, status = step(s, StrategyStatus(), Observation(), T0)
    return status


def evaluate(s, market, status, now):
    """One interval evaluation with a healthy read."""
    return step(s, status, replace(market.read(s, status, now), evaluated=True), now)


def test_three_late_evaluations_pause_even_though_every_read_succeeds():
    s = spec()  # interval 1s, pauseAfter 3, haltAfter 6
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    states = []
    for _ in range(3):
        now += timedelta(seconds=3)  # 3s apart: more than 2 intervals
        _, status = evaluate(s, m, status, now)
        states.append(status.state)
    assert status.metrics.late_streak == 3
    assert states[:2] == [State.PROGRESSING, State.PROGRESSING] and states[2] is State.PAUSED
    pause = status.holds_of(HoldKind.METRICS_PAUSE)
    assert pause and "2 intervals" in pause[0].reason and "operator is behind" in pause[0].reason
    assert status.phase == "paper"  # never advanced while late


def test_an_evaluation_on_time_ends_the_streak_and_resume_needs_it():
    s = spec()
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    for _ in range(3):
        now += timedelta(seconds=3)
        _, status = evaluate(s, m, status, now)
    assert status.state is State.PAUSED and not resumable(status)
    now += timedelta(seconds=1)
    _, status = evaluate(s, m, status, now)
    assert status.metrics.late_streak == 0
    assert resumable(status)
    _, status = step(s, status, Observation(request=request(Verb.RESUME, at=now)), now)
    assert status.state is State.PROGRESSING


def test_late_evaluations_halt_at_halt_after():
    s = spec()
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    for _ in range(6):
        now += timedelta(seconds=5)
        _, status = evaluate(s, m, status, now)
    assert status.state is State.HALTED
    assert any(h.source == "metricsUnavailable" for h in status.holds_of(HoldKind.HALT))


def test_a_failed_read_that_is_also_late_counts_once():
    s = spec()
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    now += timedelta(seconds=5)
    _, status = step(s, status, Observation(metrics_error="connection refused", read_id="x1", evaluated=True), now)
    assert status.metrics.consecutive_errors == 1 and status.metrics.late_streak == 0


def test_the_first_evaluation_by_a_new_process_is_not_judged():
    """After a restart or a takeover the previous evaluation's time is as old as the last
    status write: the gap says nothing about this process, so neither counts nor ends a streak."""
    s = spec()
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    now += timedelta(seconds=3)
    _, status = evaluate(s, m, status, now)
    assert status.metrics.late_streak == 1
    now += timedelta(seconds=40)
    _, status = step(s, status, replace(m.read(s, status, now), evaluated=True, first_evaluation=True), now)
    assert status.metrics.late_streak == 1 and status.metrics.last_evaluated_at == now
    now += timedelta(seconds=3)
    _, status = evaluate(s, m, status, now)
    assert status.metrics.late_streak == 2  # judged again from the next one on


def test_passes_woken_by_a_change_are_not_evaluations():
    s = spec()
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    now += timedelta(seconds=30)
    _, status = step(s, status, m.read(s, status, now), now)  # not an interval evaluation
    assert status.metrics.late_streak == 0 and status.metrics.last_evaluated_at == T0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=6.0), min_size=1, max_size=25))
def test_the_streak_counts_exactly_the_trailing_late_evaluations(gaps):
    """Whatever the gaps between evaluations, the streak is the number of trailing gaps longer
    than 2 intervals, and a strategy never stays Progressing past pauseAfter of them."""
    s = spec()
    m, status, now = Market(), _started(spec()), T0
    _, status = evaluate(s, m, status, now)
    streak = 0
    for gap in gaps:
        now += timedelta(seconds=gap)
        _, status = evaluate(s, m, status, now)
        if status.state is State.HALTED:
            return
        streak = streak + 1 if timedelta(seconds=gap) > timedelta(seconds=2) else 0
        assert status.metrics.late_streak == streak
        if streak >= 3:
            assert status.state is not State.PROGRESSING
