"""metav1.Condition bookkeeping: lastTransitionTime moves only when status flips."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Optional

from phasegate.api import Condition, ConditionType

ORDER = [c.value for c in ConditionType]
_RANK = {t: i for i, t in enumerate(ORDER)}


def _rank(c: Condition) -> tuple[int, str]:
    return _RANK.get(c.type, len(ORDER)), c.type


def set_condition(
    conditions: Iterable[Condition],
    ctype: ConditionType,
    status: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: Optional[int],
) -> list[Condition]:
    return ConditionSet(conditions, now, generation).set(ctype, status, reason, message).result()


class ConditionSet:
    """Several conditions set in one go, sorted once: a pass sets every condition, and ten
    copies and sorts of the list were a tenth of its decision."""

    def __init__(self, conditions: Iterable[Condition], now: datetime, generation: Optional[int]) -> None:
        self.given = list(conditions)
        self.now, self.generation = now, generation
        self._set: dict[str, Condition] = {}
        self._by_type: dict[str, list[Condition]] = {}
        for c in self.given:
            self._by_type.setdefault(c.type, []).append(c)

    def set(self, ctype: ConditionType, status: bool | None, reason: str, message: str) -> ConditionSet:
        text = "Unknown" if status is None else ("True" if status else "False")
        t = ctype.value
        old = self._set.get(t)
        single = True
        if old is None:
            same = self._by_type.get(t) or []
            old, single = (same[0] if same else None), len(same) == 1
        unchanged = (old is not None and single and old.status == text and old.reason == reason
                     and old.message == message and old.observed_generation == self.generation)
        # An unchanged condition is kept as it is, no new object.
        self._set[t] = old if unchanged and old is not None else _condition(
            ctype, text, reason, message, self.now, self.generation, old)
        return self

    def result(self) -> list[Condition]:
        if not self._set:
            return list(self.given)
        out = [c for c in self.given if c.type not in self._set]
        out.extend(self._set.values())
        # Known types first in a stable order, so that an unchanged set compares equal.
        out.sort(key=_rank)
        return out


def _condition(ctype: ConditionType, text: str, reason: str, message: str, now: datetime,
               generation: Optional[int], old: Optional[Condition]) -> Condition:
    since = old.last_transition_time if old is not None and old.status == text else now
    return Condition(
        type=ctype.value,
        status=text,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
