"""Breaker conditions written by someone else (a person, an alerting pipeline): each one is a halt.

One rule, read in two places. `decide()` latches such a condition as a HALT hold
(rollout._latch_external_conditions). The halt sentinel (controller/sentinel.py) reads the
same rule from the raw object on a watch of its own, and stops the pod before the
strategy's pass has even started. So the sentinel may only act where `decide()` will halt:
`external_halts_wire` must never name a condition that `external_halts` would not (a
property test in tests/unit/policy holds the two together).

A condition is not a halt to latch when a hold of the same cause already stands for it: the
operator's own breaker condition (set from its holds, a pause or a reduce among them), or an
external one latched earlier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from phasegate.api.status import Cause, Condition, ConditionType, Hold, HoldKind

EXTERNAL_BREAKERS: tuple[tuple[ConditionType, Cause], ...] = (
    (ConditionType.CIRCUIT_BREAKER_TRIPPED, Cause.CIRCUIT_BREAKER_TRIPPED),
    (ConditionType.RISK_LIMIT_BREACHED, Cause.RISK_LIMIT_BREACHED),
)
# A hold of one of these kinds with the condition's cause already answers the condition.
ANSWERING = frozenset({HoldKind.HALT, HoldKind.EMERGENCY, HoldKind.RISK_PAUSE})


def external_halts(conditions: Iterable[Condition], holds: Iterable[Hold]) -> list[tuple[Condition, Cause]]:
    """The breaker conditions that are True and that no hold answers yet: each is a new halt."""
    conds, holds = list(conditions), list(holds)
    out = []
    for ctype, cause in EXTERNAL_BREAKERS:
        cond = next((c for c in conds if c.type == ctype.value), None)
        if cond is None or cond.status != "True":
            continue
        if any(h.cause is cause and h.kind in ANSWERING for h in holds):
            continue
        out.append((cond, cause))
    return out


def external_halts_wire(status: Any) -> list[str]:
    """`external_halts` on the raw status of an object (as a watch delivers it): the types of
    the conditions that make a new halt. Anything it cannot read is no halt of its own: the
    strategy's pass reads the object properly and decides."""
    if not isinstance(status, Mapping):
        return []
    conds = status.get("conditions")
    holds = status.get("holds") or []
    if not isinstance(conds, list) or not isinstance(holds, list):
        return []
    out = []
    for ctype, cause in EXTERNAL_BREAKERS:
        cond = next((c for c in conds if isinstance(c, Mapping) and c.get("type") == ctype.value), None)
        if cond is None or cond.get("status") != "True":
            continue
        answered = any(
            isinstance(h, Mapping) and h.get("cause") == cause.value and h.get("kind") in {k.value for k in ANSWERING}
            for h in holds
        )
        if not answered:
            out.append(ctype.value)
    return out


__all__ = ["ANSWERING", "EXTERNAL_BREAKERS", "external_halts", "external_halts_wire"]
