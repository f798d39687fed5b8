"""metav1.Condition bookkeeping: lastTransitionTime moves only when status flips."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Optional

from phasegate.api import Condition, ConditionType

ORDER = [c.value for c in ConditionType]


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
    out = [c for c in conditions if c.type != ctype.value]
    old = next((c for c in conditions if c.type == ctype.value), None)
    since = old.last_transition_time if old is not None and old.status == text else now
    out.append(
        Condition(
            type=ctype.value,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=since,
            observed_generation=generation,
        )
    )
    # Known types first in a stable order, so that an unchanged set compares equal.
    out.sort(key=lambda c: (ORDER.index(c.type) if c.type in ORDER else len(ORDER), c.type))
    return out
