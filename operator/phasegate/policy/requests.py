"""Manual actions: when the answer is no, and why.

The CLI calls `refusal()` first so that a user hears "no" at once, with the reason, and
the operator checks again on the status it decides on, because the state may have moved.
A request that cannot act now is answered with why, never kept for later.
"""

from __future__ import annotations

from typing import Optional

from phasegate.api.requests import SEVERITIES, BadRequest, Request, Verb
from phasegate.api.spec import StrategySpec
from phasegate.api.status import PAUSING_HOLDS, HoldKind, State, StrategyStatus

from . import holds as H


def refusal(spec: StrategySpec, status: StrategyStatus, req: Request | Verb) -> Optional[str]:
    """Why the request is not allowed now, or None when it is. A bare Verb checks the verb alone
    (for reset: that something can be reset at all)."""
    verb = req if isinstance(req, Verb) else req.verb
    target = None if isinstance(req, Verb) else req.target
    state = status.state
    stopping = H.stopping(status.holds)
    if verb is Verb.HALT:
        return None  # the kill switch is always allowed, even when already halted
    if verb is Verb.EMERGENCY:
        if status.holds_of(HoldKind.EMERGENCY):
            return "an emergency sequence already ran: the strategy is locked down; `reset` it first"
        return None
    if verb is Verb.RESET:
        newest = H.newest_stopping(status.holds)
        if newest is None:
            return f"reset re-enables a halted strategy, and this one is {state.value}: nothing to reset"
        if status.emergency is not None and not status.emergency.finished:
            return "the emergency sequence is still running: wait for it to finish, then reset"
        if isinstance(req, Verb):
            return None
        if not target:
            return (f"a reset must name the halt it lifts: the newest is {newest.id} ({newest.source}); "
                    f"pass it with --halt {newest.id}")
        named = next((h for h in stopping if H.matches(h, target)), None)
        if named is None:
            return f"{target} names no halt in force; the newest is {newest.id} ({newest.source})"
        later = [h for h in stopping if h.since > named.since]
        if later:
            # Holds set by one decision share their time: naming any of them is naming that moment.
            last = max(later, key=lambda h: h.seq)
            return (f"{target} is not the newest halt: the strategy was halted again since by {last.id} "
                    f"({last.reason}); review it and reset naming {last.id}")
        return None
    if stopping:
        return f"the strategy is {state.value}: only `phasegate reset NAME --reason ...` re-enables it"
    if verb is Verb.PAUSE:
        if status.holds_of(HoldKind.MANUAL_PAUSE):
            return "the strategy is already paused by a person; `resume` lifts that pause"
        return None
    if verb is Verb.RESUME:
        paused = status.holds_of(HoldKind.MANUAL_PAUSE, HoldKind.RISK_PAUSE, HoldKind.METRICS_PAUSE)
        if not paused:
            return f"resume continues a paused strategy, and this one is {state.value}"
        lifts = H.resumable(status)
        if not lifts:
            kept = "; ".join(f"{h.kind.value} {h.id} ({h.source}): {h.reason}" for h in paused)
            return (f"nothing can be resumed yet: {kept} "
                    "(the limit is still breached, or not every limit was checked at the last read)")
        return None
    if verb is Verb.PROMOTE:
        paused = status.holds_of(*PAUSING_HOLDS)
        if paused:
            # An approval acts now or not at all: it is never kept for after the pause.
            return f"the strategy is paused ({', '.join(f'{h.kind.value} {h.id}' for h in paused)}): resume it first"
        if state is State.COMPLETED:
            return "the strategy is already on the last rung"
        if state is State.FAILED:
            return "the phase failed: fix the spec (a new generation retries it)"
        idx = status.phase_index
        if not status.phase or not (0 <= idx < len(spec.phases)):
            return "the strategy has not started its ladder yet"
        phase = spec.phases[idx]
        waits = [h for h in status.holds_of(HoldKind.APPROVAL_WAIT) if h.visit == status.visit]
        if not waits:
            if phase.approval.value != "manual":
                return f"phase {phase.name} advances on its gates alone (approval: auto): promote approves manual phases"
            return f"phase {phase.name} is already approved; it advances when its gates and minimum duration pass"
        if idx + 1 > spec.ceiling_index():
            nxt = spec.phases[idx + 1] if idx + 1 < len(spec.phases) else None
            what = f"the next rung {nxt.name} ({nxt.fraction:%}) is" if nxt else "no rung is"
            return f"{what} above spec.maxFraction {spec.max_fraction}: raise the ceiling first"
        return None
    return f"unknown action {verb}"


__all__ = ["BadRequest", "Request", "SEVERITIES", "Verb", "refusal"]
