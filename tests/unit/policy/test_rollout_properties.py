"""Property tests of DESIGN.md's safety rules 2, 3 and 5 over random event sequences.

Each example drives the decision core with a random mix of clock jumps, healthy and
breaching metrics, failed reads, manual requests, externally set breaker conditions
and ceiling changes, and checks every step against the rules.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasegate.api import ABSORBING_STATES, BreakerState, Condition, State, StrategyStatus
from phasegate.manifests import should_run
from phasegate.policy.requests import Verb
from phasegate.policy.rollout import Observation, decide

from .rollout_helpers import T0, Market, request, spec

CEILINGS = ["0", "0.1", "0.5", "1"]

event = st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 40), st.sampled_from(["healthy", "healthy", "healthy", "crash", "position", "error", "quiet", "old-pod"])),
    st.tuples(st.just("request"), st.sampled_from(list(Verb)), st.none()),
    st.tuples(st.just("condition"), st.sampled_from(["CircuitBreakerTripped", "RiskLimitBreached"]), st.none()),
    st.tuples(st.just("ceiling"), st.sampled_from(CEILINGS), st.none()),
    st.tuples(st.just("ladder"), st.sampled_from(["full", "no-shadow", "renamed"]), st.none()),
)

LADDERS = {
    "full": None,
    "no-shadow": [p for p in spec().wire()["phases"] if p["name"] != "shadow"],
    "renamed": [dict(p, name=p["name"] + "-v2") for p in spec().wire()["phases"]],
}


def ladder_spec(ceiling: str, ladder: str):
    return spec(max_fraction=ceiling) if LADDERS[ladder] is None else spec(max_fraction=ceiling, phases=LADDERS[ladder])


def _tripped(status: StrategyStatus) -> bool:
    return any(b.state is BreakerState.TRIPPED for b in status.breakers.values())


def _observation(kind: str, market: Market, status: StrategyStatus, now):
    if kind == "healthy":
        return Observation(metrics=market.healthy(now), metrics_phase=status.phase)
    if kind == "old-pod":
        return Observation(metrics=market.healthy(now), metrics_phase="some-older-phase")
    if kind == "crash":
        return Observation(metrics=market.healthy(now, value=market.value * Decimal("0.85")), metrics_phase=status.phase)
    if kind == "position":
        return Observation(metrics=market.snapshot(now, largest_position_fraction=Decimal("0.09")), metrics_phase=status.phase)
    if kind == "error":
        return Observation(metrics_error="connection refused")
    return Observation()


def _check_step(s, old: StrategyStatus, obs: Observation, new: StrategyStatus, decision, now) -> None:
    names = [p.name for p in s.phases]
    if old.state in ABSORBING_STATES and not (obs.request is not None and obs.request.verb is Verb.RESET):
        assert new.state in ABSORBING_STATES, "a halted strategy left its halt without a reset"
    if new.phase not in names or old.phase not in names:
        # the ladder was edited under the strategy: nothing may run or rise until it is whole again
        assert new.state in ABSORBING_STATES or new.state is State.FAILED or new.phase in names
        assert not should_run(s, new) or new.phase in names
        return
    phase = s.phases[new.phase_index]
    # Rule 2: never above the phase's fraction nor the ceiling.
    assert new.capital_fraction <= phase.fraction
    assert new.capital_fraction <= s.max_fraction
    # Rule 2: a rise only as one advance, out of a healthy, gated, aged, approved rung.
    if old.phase and new.capital_fraction > old.capital_fraction:
        old_phase = s.phases[old.phase_index]
        promoted = obs.request is not None and obs.request.verb is Verb.PROMOTE
        assert new.phase_index == old.phase_index + 1, "a rise skipped a rung"
        assert old.state in (State.PROGRESSING, State.VALIDATING)
        assert not _tripped(old) and not _tripped(new)
        assert not old.is_true("RiskLimitBreached") and not old.is_true("CircuitBreakerTripped")
        assert obs.metrics is not None and obs.metrics_phase == old.phase, "rose without fresh metrics of this phase"
        assert now - old.phase_started_at >= old_phase.min_duration_delta, "rose before the minimum duration"
        assert all(g.passed for g in old.gates) or all(g.passed for g in new.gates if g.name)
        if old_phase.approval.value == "manual":
            assert old.approved_phase == old.phase or promoted
        assert any(h.action in ("advance", "complete") for h in decision.history)
    # Rule 3: a halt is absorbing; only a reset request leaves it.
    if old.state in ABSORBING_STATES:
        reset = obs.request is not None and obs.request.verb is Verb.RESET
        if not reset:
            assert new.state in ABSORBING_STATES
            assert new.capital_fraction <= old.capital_fraction
    if new.state in ABSORBING_STATES:
        assert not should_run(s, new)
    # Rule 4 (in status): history seqs are consecutive and every change has an entry.
    seqs = [h.seq for h in new.history]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
    assert new.history_seq == old.history_seq + len(decision.history)
    if (new.phase, new.state, new.capital_fraction) != (old.phase, old.state, old.capital_fraction):
        assert decision.history, "a transition with no history entry"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, min_size=1, max_size=60), st.sampled_from(CEILINGS))
def test_safety_rules_hold_for_any_sequence(events, ceiling):
    s = spec(max_fraction=ceiling)
    ladder = "full"
    market = Market()
    status = decide(s, StrategyStatus(), Observation(), T0, 1).status
    now = T0
    generation = 1
    for kind, a, b in events:
        if kind == "tick":
            now += timedelta(seconds=a)
            obs = _observation(b, market, status, now)
        elif kind == "request":
            obs = Observation(request=request(a, at=now))
        elif kind == "condition":
            cond = Condition(type=a, status="True", reason="SetByHand", message="", last_transition_time=now)
            status = status.model_copy(update={"conditions": [c for c in status.conditions if c.type != a] + [cond]})
            obs = Observation()
        elif kind == "ceiling":
            ceiling = a
            s = ladder_spec(ceiling, ladder)
            generation += 1
            obs = Observation()
        else:
            ladder = a
            s = ladder_spec(ceiling, ladder)
            generation += 1
            obs = Observation()
        d = decide(s, status, obs, now, generation)
        _check_step(s, status, obs, d.status, d, now)
        # Rule 5: deciding again on the result with the same inputs changes nothing.
        again = decide(s, d.status, obs, now, generation)
        assert not again.history, f"a replay added {[h.action for h in again.history]}"
        assert again.status == d.status
        status = d.status


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["healthy", "error", "quiet", "crash"]), min_size=1, max_size=40), st.integers(1, 30))
def test_a_halted_strategy_never_resumes_by_itself(kinds, gap):
    s = spec()
    market = Market()
    status = decide(s, StrategyStatus(), Observation(), T0, 1).status
    status = decide(s, status, Observation(request=request(Verb.HALT)), T0, 1).status
    assert status.state is State.HALTED
    now = T0
    for kind in kinds:
        now += timedelta(seconds=gap)
        status = decide(s, status, _observation(kind, market, status, now), now, 1).status
        assert status.state is State.HALTED
    # Operator restart or re-apply of the manifest: a new generation, the same status.
    status = decide(s, status, Observation(), now, 2).status
    assert status.state is State.HALTED


def test_metrics_read_error_never_counts_as_a_passed_gate():
    s = spec()
    status = decide(s, StrategyStatus(), Observation(), T0, 1).status
    now = T0
    for _ in range(2):  # below pauseAfter, so only fail-closed gating is at work
        now += timedelta(hours=1)
        status = decide(s, status, Observation(metrics_error="timeout"), now, 1).status
    assert status.phase == "paper" and status.state is State.PROGRESSING
