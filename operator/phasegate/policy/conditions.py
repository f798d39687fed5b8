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
    text = "Unknown" if status is None else ("True" if status else "False")
    given = list(conditions)
    out = [c for c in given if c.type != ctype.value]
    old = next((c for c in given if c.type == ctype.value), None)
    unchanged = (old is not None and len(out) == len(given) - 1 and old.status == text and old.reason == reason
                 and old.message == message and old.observed_generation == generation)
    # Every pass sets every condition: an unchanged one is kept as it is, no new object.
    out.append(old if unchanged and old is not None else _condition(ctype, text, reason, message, now, generation, old))
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
