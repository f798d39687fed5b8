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

The sentinel's stop is a fact of its own, written on the StatefulSet with the stop
(`contract.ANNOTATION_SENTINEL_STOP`): a condition set and cleared before the strategy's pass
read it has still stopped the pod. `unanswered_stop` says which of the causes it stopped on no
halt records yet; `decide()` latches a halt for each, so that a pod the sentinel stopped
never starts again without a history entry and a reset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from phasegate.api.status import STOPPING_HOLDS, Cause, Condition, ConditionType, Hold, HoldKind

EXTERNAL_BREAKERS: tuple[tuple[ConditionType, Cause], ...] = (
    (ConditionType.CIRCUIT_BREAKER_TRIPPED, Cause.CIRCUIT_BREAKER_TRIPPED),
    (ConditionType.RISK_LIMIT_BREACHED, Cause.RISK_LIMIT_BREACHED),
)
# A hold of one of these kinds with the condition's cause already answers the condition.
ANSWERING = frozenset({HoldKind.HALT, HoldKind.EMERGENCY, HoldKind.RISK_PAUSE})
# What answers the sentinel's stop: a hold that keeps the pod stopped (a pause does not).
STOP_ANSWERING = STOPPING_HOLDS
CAUSE_OF = {ctype.value: cause for ctype, cause in EXTERNAL_BREAKERS}


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


def sentinel_stop(conditions: Iterable[str], resource_version: str) -> str:
    """The annotation the sentinel writes with its stop: the condition types, and the
    strategy's resourceVersion it read them from."""
    return json.dumps({"conditions": list(conditions), "resourceVersion": resource_version}, separators=(",", ":"))


def stop_causes(annotation: str) -> list[tuple[str, Cause]]:
    """(condition type, cause) of each condition the sentinel stopped the pod on. An
    annotation it cannot read is still a stop (fail closed): a circuit breaker's."""
    try:
        named = json.loads(annotation).get("conditions")
    except (ValueError, AttributeError):
        named = None
    if not isinstance(named, list):
        named = []
    found = [(t, CAUSE_OF[t]) for t in dict.fromkeys(named) if isinstance(t, str) and t in CAUSE_OF]
    return found or [(ConditionType.CIRCUIT_BREAKER_TRIPPED.value, Cause.CIRCUIT_BREAKER_TRIPPED)]


def unanswered_stop(annotation: str, holds: Iterable[Hold]) -> list[tuple[str, Cause]]:
    """The causes the sentinel stopped the pod on that no Halt or Emergency hold records yet."""
    if not annotation:
        return []
    holds = list(holds)
    return [(t, cause) for t, cause in stop_causes(annotation)
            if not any(h.cause is cause and h.kind in STOP_ANSWERING for h in holds)]


__all__ = ["ANSWERING", "EXTERNAL_BREAKERS", "STOP_ANSWERING", "external_halts", "external_halts_wire", "sentinel_stop",
           "stop_causes", "unanswered_stop"]
