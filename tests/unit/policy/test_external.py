"""The rule of policy/external.py, read from models (decide) and from raw JSON (the halt
sentinel): the two readings must agree on every status, or the sentinel would stop a pod the
pass then starts again (the state machine checks the same against decide() itself)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api.status import Cause, Condition, Hold, HoldKind
from phasegate.policy.external import external_halts, external_halts_wire, sentinel_stop, stop_causes, unanswered_stop

T = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
TYPES = ["CircuitBreakerTripped", "RiskLimitBreached", "MetricsAvailable", "Ready"]

conditions = st.lists(
    st.builds(lambda t, s: Condition(type=t, status=s, reason="R", message="m", last_transition_time=T),
              st.sampled_from(TYPES), st.sampled_from(["True", "False", "Unknown"])),
    max_size=5, unique_by=lambda c: c.type,
)
holds = st.lists(
    st.builds(lambda k, c, i: Hold(kind=k, id=f"#{i}", seq=i, cause=c, since=T),
              st.sampled_from(list(HoldKind)), st.one_of(st.none(), st.sampled_from(list(Cause))),
              st.integers(1, 99)),
    max_size=4,
)


def wire(conds: list[Condition], hs: list[Hold]) -> dict[str, Any]:
    return {"conditions": [c.model_dump(mode="json", by_alias=True) for c in conds],
            "holds": [h.model_dump(mode="json", by_alias=True, exclude_none=True) for h in hs]}


@settings(max_examples=300, deadline=None)
@given(conditions, holds)
def test_the_raw_reading_names_exactly_the_halts_the_model_reading_names(conds, hs):
    assert external_halts_wire(wire(conds, hs)) == [c.type for c, _ in external_halts(conds, hs)]


def test_an_external_breaker_condition_is_a_halt_until_a_hold_of_its_cause_answers_it():
    tripped = Condition(type="CircuitBreakerTripped", status="True", reason="AlertFiring", message="", last_transition_time=T)
    assert external_halts_wire(wire([tripped], [])) == ["CircuitBreakerTripped"]
    for kind in (HoldKind.HALT, HoldKind.EMERGENCY, HoldKind.RISK_PAUSE):
        answered = Hold(kind=kind, id="#3", seq=3, cause=Cause.CIRCUIT_BREAKER_TRIPPED, since=T)
        assert external_halts_wire(wire([tripped], [answered])) == [], kind
    other = Hold(kind=HoldKind.HALT, id="#3", seq=3, cause=Cause.RISK_LIMIT_BREACHED, since=T)
    assert external_halts_wire(wire([tripped], [other])) == ["CircuitBreakerTripped"], "another cause answers nothing"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                        ["conditions", "holds", "type", "status", "kind", "cause"]), inner, max_size=4), max_leaves=12))
def test_a_status_it_cannot_read_is_no_halt_of_its_own_and_never_raises(junk):
    out = external_halts_wire(junk)
    assert isinstance(out, list)


def test_the_sentinels_stop_names_its_causes_and_an_unreadable_one_is_still_a_stop():
    stop = sentinel_stop(["CircuitBreakerTripped", "RiskLimitBreached"], "41")
    assert stop_causes(stop) == [("CircuitBreakerTripped", Cause.CIRCUIT_BREAKER_TRIPPED),
                                 ("RiskLimitBreached", Cause.RISK_LIMIT_BREACHED)]
    for junk in ("", "not json", "[]", '{"conditions": "CircuitBreakerTripped"}', '{"conditions": ["Ready"]}'):
        assert stop_causes(junk) == [("CircuitBreakerTripped", Cause.CIRCUIT_BREAKER_TRIPPED)], junk


def test_only_a_hold_that_keeps_the_pod_stopped_answers_the_sentinels_stop():
    stop = sentinel_stop(["CircuitBreakerTripped"], "41")
    assert unanswered_stop("", []) == [], "no annotation, no stop"
    assert unanswered_stop(stop, []) == [("CircuitBreakerTripped", Cause.CIRCUIT_BREAKER_TRIPPED)]
    for kind in (HoldKind.HALT, HoldKind.EMERGENCY):
        answered = Hold(kind=kind, id="#3", seq=3, cause=Cause.CIRCUIT_BREAKER_TRIPPED, since=T)
        assert unanswered_stop(stop, [answered]) == [], kind
    paused = Hold(kind=HoldKind.RISK_PAUSE, id="#3", seq=3, cause=Cause.CIRCUIT_BREAKER_TRIPPED, since=T)
    assert unanswered_stop(stop, [paused]) != [], "a pause lets the pod run: it does not answer a stop"
    other = Hold(kind=HoldKind.HALT, id="#3", seq=3, cause=Cause.RISK_LIMIT_BREACHED, since=T)
    assert unanswered_stop(stop, [other]) != [], "another cause answers nothing"
