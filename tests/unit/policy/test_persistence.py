"""What is written at once and what may wait (phasegate.policy.persistence), and what a
restart from the written status can lose."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api.status import (
    Book,
    Condition,
    HistoryEntry,
    Hold,
    HoldKind,
    MetricsHealth,
    RiskState,
    StrategyStatus,
    Transition,
)
from phasegate.policy.persistence import (
    HWM_TOLERANCE,
    INDEX_MOVE,
    PERSIST_EVERY,
    cadence_slot,
    persist_due,
    significant,
)

D = Decimal
T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


def base() -> StrategyStatus:
    return StrategyStatus(
        phase="live-10", phase_index=2, capital_fraction=D("0.1"), phase_started_at=T0, clock=T0,
        conditions=[Condition(type="MetricsAvailable", status="True", reason="Read", message="read at 14:00",
                              last_transition_time=T0)],
        risk=RiskState(book=Book(name="live", started_at=T0, index=D(1), high_water_mark=D(1), day_open=D(1),
                                 trading_day=date(2026, 11, 2), last_value=D(100000), last_capital=D(100000)),
                       counters={"errors": D(0)}, last_sample_at=T0),
        metrics=MetricsHealth(last_success_at=T0, last_attempt_at=T0, last_read_id="a", phase_pod_read_at=T0,
                              last_evaluated_at=T0),
    )


def volatile_step(s: StrategyStatus, k: int) -> StrategyStatus:
    """One healthy read later: only the bookkeeping that moves on every read changes."""
    at = T0 + timedelta(seconds=10 * k)
    book = s.risk.book.model_copy(update={"index": D("0.999"), "last_value": D(99900)})
    return s.model_copy(update={
        "clock": at,
        "risk": s.risk.model_copy(update={"book": book, "counters": {"errors": D(k)}, "last_sample_at": at}),
        "metrics": s.metrics.model_copy(update={"last_success_at": at, "last_attempt_at": at, "last_read_id": f"r{k}",
                                                "phase_pod_read_at": at, "last_evaluated_at": at}),
        "conditions": [s.conditions[0].model_copy(update={"message": f"read at {at:%H:%M:%S}"})],
    })


def test_volatile_changes_wait_for_the_cadence():
    old = base()
    new = volatile_step(old, 1)
    assert not significant(old, new)
    assert not persist_due(old, new, T0 + timedelta(seconds=10), T0)
    assert persist_due(old, new, T0 + PERSIST_EVERY, T0)
    assert not persist_due(old, old, T0 + PERSIST_EVERY * 10, T0)  # nothing changed: nothing to write


def test_a_clock_stepped_back_writes_rather_than_waits_forever():
    old, new = base(), volatile_step(base(), 1)
    assert persist_due(old, new, T0 - timedelta(hours=1), T0)


HOLD = Hold(kind=HoldKind.HALT, id="#3", seq=3, source="maxDrawdown", reason="maxDrawdown: 12% > 10%", since=T0)
SIGNIFICANT = {
    "a hold": lambda s: s.model_copy(update={"holds": [HOLD]}),
    "a history entry": lambda s: s.model_copy(update={"history": [HistoryEntry(
        seq=1, at=T0, action=Transition.HALT, reason="x", by="operator")], "history_seq": 1}),
    "the phase": lambda s: s.model_copy(update={"phase": "live-35", "phase_index": 3}),
    "a condition's status": lambda s: s.model_copy(update={"conditions": [
        s.conditions[0].model_copy(update={"status": "False", "reason": "ReadFailed"})]}),
    "a failure count": lambda s: s.model_copy(update={"metrics": s.metrics.model_copy(update={"consecutive_errors": 1})}),
    "a limit unchecked": lambda s: s.model_copy(update={"risk": s.risk.model_copy(update={
        "limit_failures": {"maxDrawdown": 1}, "unchecked": ["maxDrawdown: no read"]})}),
    "a limit breaching": lambda s: s.model_copy(update={"risk": s.risk.model_copy(update={"breaching": ["maxDrawdown"]})}),
    "the trading day": lambda s: s.model_copy(update={"risk": s.risk.model_copy(update={"book": s.risk.book.model_copy(
        update={"trading_day": date(2026, 11, 3), "day_open": D("0.98")})})}),
    "a new book": lambda s: s.model_copy(update={"risk": s.risk.model_copy(update={"book": s.risk.book.model_copy(
        update={"name": "paper"})})}),
    "the capital": lambda s: s.model_copy(update={"capital_fraction": D("0.35")}),
    "the first read of a new phase's pod": lambda s: s.model_copy(update={
        "metrics": s.metrics.model_copy(update={"phase_pod_read_at": None})}),
}


@pytest.mark.parametrize("what", sorted(SIGNIFICANT))
def test_a_change_a_person_or_a_restart_needs_is_written_at_once(what):
    old = base()
    new = SIGNIFICANT[what](volatile_step(old, 1))
    assert significant(old, new) and significant(new, old)
    assert persist_due(old, new, T0 + timedelta(seconds=1), T0)


def test_a_high_water_mark_risen_past_the_tolerance_is_written_at_once():
    old = base()
    book = old.risk.book

    def with_hwm(h: Decimal) -> StrategyStatus:
        return old.model_copy(update={"risk": old.risk.model_copy(update={"book": book.model_copy(
            update={"high_water_mark": h, "index": h})})})

    assert not significant(old, with_hwm(1 + HWM_TOLERANCE))
    assert significant(old, with_hwm(1 + HWM_TOLERANCE * 2))



def test_a_large_move_of_the_risk_index_is_written_at_once_for_the_person_watching():
    old = base()

    def with_index(i: Decimal) -> StrategyStatus:
        return old.model_copy(update={"risk": old.risk.model_copy(update={"book": old.risk.book.model_copy(
            update={"index": i})})})

    assert not significant(old, with_index(1 - INDEX_MOVE))
    assert significant(old, with_index(D("0.94")))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.decimals(min_value=D("-0.01"), max_value=D("0.01"), places=5),
                          st.integers(min_value=1, max_value=30)), min_size=1, max_size=60),
       st.integers(min_value=0, max_value=119))
def test_a_restart_from_the_written_status_loses_at_most_the_tolerance_of_the_high_water_mark(path, slot_s):
    """Any path of returns at any pace: the high-water mark a restart would find written is
    never higher than the true one, and lower by at most HWM_TOLERANCE."""
    live = base()
    written, written_at, now = live, T0, T0
    for r, seconds in path:
        now += timedelta(seconds=seconds)
        b = live.risk.book
        index = b.index * (1 + r)
        live = live.model_copy(update={"clock": now, "risk": live.risk.model_copy(update={"book": b.model_copy(
            update={"index": index, "high_water_mark": max(b.high_water_mark, index)})})})
        if persist_due(written, live, now, written_at, slot=timedelta(seconds=slot_s)):
            written, written_at = live, now
        true, restored = live.risk.book.high_water_mark, written.risk.book.high_water_mark
        assert restored <= true
        assert true <= restored * (1 + HWM_TOLERANCE)
        assert now - written_at < PERSIST_EVERY or written == live


def late(s: StrategyStatus, streak: int, gap_s: int, at: datetime, errors: int = 0) -> StrategyStatus:
    """An evaluation with a healthy read, `gap_s` after the one before (late past 20 s)."""
    message = f"evaluated {gap_s}s after the previous evaluation (at most 20s, 2 intervals): the operator is behind"
    return s.model_copy(update={"metrics": s.metrics.model_copy(update={
        "late_streak": streak, "last_error": message if streak else "",
        "consecutive_errors": errors, "last_evaluated_at": at})})


def test_a_late_streak_waits_for_the_cadence_what_it_decides_does_not():
    """While the operator is behind nearly every evaluation is late: a write for each, or for
    each time the lag crosses 2 intervals, would load the apiserver further for the same news.
    What lateness decides, a pause or a halt, is a hold: written at once."""
    on_time = base()
    first = late(on_time, 1, 37, T0 + timedelta(seconds=37))
    second = late(first, 2, 41, T0 + timedelta(seconds=78))
    ended = second.model_copy(update={"metrics": second.metrics.model_copy(update={
        "late_streak": 0, "last_error": "", "last_evaluated_at": T0 + timedelta(seconds=80)})})
    for old, new in ((on_time, first), (first, second), (second, ended)):
        assert not significant(old, new)
        assert not persist_due(old, new, T0 + timedelta(seconds=80), T0 + timedelta(seconds=37))
        assert persist_due(old, new, T0 + timedelta(seconds=37) + PERSIST_EVERY, T0 + timedelta(seconds=37))
    paused = second.model_copy(update={"holds": [Hold(kind=HoldKind.METRICS_PAUSE, id="#2", seq=2,
                                                      source="metricsUnavailable", reason="late", since=T0)]})
    assert significant(second, paused)
    # A failed read while late is counted at once, with its own message.
    failed = second.model_copy(update={"metrics": second.metrics.model_copy(update={
        "consecutive_errors": 1, "last_error": "scrape timed out"})})
    assert significant(second, failed)
    assert significant(failed, failed.model_copy(update={"metrics": failed.metrics.model_copy(update={
        "consecutive_errors": 2})}))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=80), st.integers(min_value=0, max_value=119))
def test_a_restart_finds_a_late_streak_off_by_at_most_the_cadence(gaps, slot_s):
    """Evaluations at any pace (interval 10 s: a gap over 20 s is late): the streak a restart
    would find written is the streak as it was less than PERSIST_EVERY ago: shorter than the
    true one by fewer late evaluations than fit in PERSIST_EVERY at more than 2 intervals
    each, or longer when it ended since (the safe side: a pause or halt comes sooner)."""
    interval = 10
    live = base()
    written, written_at, now, streak = live, T0, T0, 0
    for gap in gaps:
        now += timedelta(seconds=gap)
        streak = streak + 1 if gap > 2 * interval else 0
        live = late(live, streak, gap, now)
        if persist_due(written, live, now, written_at, slot=timedelta(seconds=slot_s)):
            written, written_at = live, now
        restored = written.metrics.late_streak
        assert streak - restored < PERSIST_EVERY.total_seconds() / (2 * interval)
        assert now - written_at < PERSIST_EVERY or written == live


def test_a_new_error_message_is_written_at_once_when_the_operator_is_on_time():
    """Only lateness's own message (its gap changes each time) waits; any other is news."""
    old = base()
    refused = old.model_copy(update={"metrics": old.metrics.model_copy(update={
        "last_error": "the pod is refused: exceeded quota"})})
    assert significant(old, refused)


def test_bookkeeping_is_written_at_the_strategys_slot_so_a_fleet_started_together_spreads():
    """Strategies that last wrote at the same moment write their bookkeeping at their own
    slots of the cadence, spread over it, each within PERSIST_EVERY of its last write."""
    names = [f"s{i:04d}" for i in range(1000)]
    slots = [cadence_slot("desk", n) for n in names]
    buckets = [0] * 12
    for slot in slots:
        assert timedelta(0) <= slot < PERSIST_EVERY
        buckets[int(slot / PERSIST_EVERY * 12)] += 1
    assert min(buckets) > 50 and max(buckets) < 150, buckets
    old = base()
    new = volatile_step(old, 1)
    for slot in slots[:50]:
        due_at = [k for k in range(0, 121) if persist_due(old, new, T0 + timedelta(seconds=k), T0, slot=slot)]
        assert due_at and due_at[0] <= PERSIST_EVERY.total_seconds()
        assert abs(due_at[0] - slot.total_seconds()) <= 1 or slot.total_seconds() < 1  # at its slot, not at T0 + 120 s
