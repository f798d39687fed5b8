"""Holds: the typed reasons a strategy may not trade or climb, and the state they imply.

`state` is never set by hand: it is derived from the holds and the position on the
ladder, so a pause owned by a person cannot be lifted by a ceiling change, an approval
cannot outlive its phase visit, and a halt stays until the reset that names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from phasegate.api.spec import Mode, StrategySpec
from phasegate.api.status import PAUSING_HOLDS, STOPPING_HOLDS, Hold, HoldKind, State, StrategyStatus


def derive_state(spec: StrategySpec, phase: str, phase_index: int, holds: Iterable[Hold]) -> State:
    kinds = {h.kind for h in holds}
    if HoldKind.EMERGENCY in kinds:
        return State.EMERGENCY_STOPPED
    if HoldKind.HALT in kinds:
        return State.HALTED
    if HoldKind.FAILED in kinds:
        return State.FAILED
    if not phase:
        return State.PENDING
    if kinds & PAUSING_HOLDS:
        return State.PAUSED
    known = 0 <= phase_index < len(spec.phases) and spec.phases[phase_index].name == phase
    if known and spec.phases[phase_index].mode is Mode.BACKTEST:
        return State.VALIDATING
    if known and phase_index == len(spec.phases) - 1:
        return State.COMPLETED
    return State.PROGRESSING


def stopping(holds: Iterable[Hold]) -> list[Hold]:
    return [h for h in holds if h.kind in STOPPING_HOLDS]


def newest_stopping(holds: Iterable[Hold]) -> Optional[Hold]:
    found = stopping(holds)
    return max(found, key=lambda h: h.seq) if found else None


def matches(hold: Hold, target: str) -> bool:
    """Whether a reset's target names this hold: `#17`, `17`, `h17` or the emergency id."""
    t = target.strip().lstrip("#")
    if t.startswith("h") and t[1:].isdigit():
        t = t[1:]
    return t == hold.id.lstrip("#") or (t.isdigit() and int(t) == hold.seq)


def active(holds: Iterable[Hold], kind: HoldKind, source: str) -> Optional[Hold]:
    return next((h for h in holds if h.kind is kind and h.source == source), None)


def resumable(status: StrategyStatus) -> list[Hold]:
    """The holds `resume` lifts now: manual pauses, risk pauses whose limit is back within
    bounds, metrics pauses once every limit was checked at the last read,
    on time."""
    out = []
    for h in status.holds:
        if h.kind is HoldKind.MANUAL_PAUSE:
            out.append(h)
        elif h.kind is HoldKind.RISK_PAUSE and h.source not in status.risk.breaching:
            out.append(h)
        elif (h.kind is HoldKind.METRICS_PAUSE and not status.risk.limit_failures
              and status.metrics.consecutive_errors == 0 and status.metrics.late_streak == 0):
            out.append(h)
    return out


__all__ = ["active", "derive_state", "matches", "newest_stopping", "resumable", "stopping"]
