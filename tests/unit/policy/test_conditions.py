"""ConditionSet (every condition of a pass set in one go) gives what setting them one at a
time gives: the same list, the same objects kept where nothing changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api import Condition, ConditionType
from phasegate.policy.conditions import ORDER, ConditionSet, _condition, _rank

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def one_at_a_time(given_: list[Condition], ctype: ConditionType, status: Optional[bool], reason: str, message: str,
                  now: datetime, generation: Optional[int]) -> list[Condition]:
    """The original set_condition: copy, replace one, sort."""
    text = "Unknown" if status is None else ("True" if status else "False")
    out = [c for c in given_ if c.type != ctype.value]
    old = next((c for c in given_ if c.type == ctype.value), None)
    unchanged = (old is not None and len(out) == len(given_) - 1 and old.status == text and old.reason == reason
                 and old.message == message and old.observed_generation == generation)
    out.append(old if unchanged and old is not None else _condition(ctype, text, reason, message, now, generation, old))
    out.sort(key=_rank)
    return out


types = st.sampled_from(list(ConditionType))
statuses = st.sampled_from([True, False, None])
words = st.sampled_from(["A", "B"])
existing = st.builds(
    lambda t, s, r, m, g: Condition(type=t, status=s, reason=r, message=m, last_transition_time=T0, observed_generation=g),
    st.sampled_from([*ORDER, "SomeoneElses"]), st.sampled_from(["True", "False", "Unknown"]), words, words,
    st.sampled_from([1, 2]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(existing, max_size=8), st.lists(st.tuples(types, statuses, words, words), max_size=12),
       st.sampled_from([1, 2]))
def test_a_set_in_one_go_is_the_same_as_one_at_a_time(start, updates, generation):
    now = T0 + timedelta(minutes=5)
    expected = list(start)
    cs = ConditionSet(start, now, generation)
    for ctype, status, reason, message in updates:
        expected = one_at_a_time(expected, ctype, status, reason, message, now, generation)
        cs.set(ctype, status, reason, message)
    got = cs.result()
    assert got == expected
    assert [id(c) for c in got if any(c is s for s in start)] == [id(c) for c in expected if any(c is s for s in start)]
