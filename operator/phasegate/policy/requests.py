"""Manual actions: what a user may ask for, and when the answer is no.

The CLI writes a request into the `phasegate.dev/request` annotation; the operator
decides on it here. The CLI calls `refusal()` first so that a user hears "no" at once,
with the reason, and the operator checks again because the state may have moved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Optional

from phasegate.api import ABSORBING_STATES, Approval, State, StrategySpec, StrategyStatus
from phasegate.api.types import _utc


class Verb(str, Enum):
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    HALT = "halt"
    RESET = "reset"
    EMERGENCY = "emergency"


SEVERITIES = ("low", "medium", "high", "critical")


class BadRequest(ValueError):
    """An annotation the operator cannot read as a request."""


@dataclass(frozen=True)
class Request:
    id: str
    verb: Verb
    reason: str
    by: str
    at: datetime
    severity: Optional[str] = None

    def to_annotation(self) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "action": self.verb.value,
            "reason": self.reason,
            "by": self.by,
            "at": self.at.isoformat(),
        }
        if self.severity:
            body["severity"] = self.severity
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_annotation(cls, text: str) -> "Request":
        try:
            body = json.loads(text)
            verb = Verb(body["action"])
            reason = str(body["reason"]).strip()
            req = cls(
                id=str(body["id"]),
                verb=verb,
                reason=reason,
                by=str(body.get("by") or "unknown"),
                at=_utc(datetime.fromisoformat(body["at"])),
                severity=body.get("severity"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest(f"unreadable phasegate.dev/request annotation: {exc}") from exc
        if not reason:
            raise BadRequest("a manual action needs a reason (--reason)")
        if req.severity is not None and req.severity not in SEVERITIES:
            raise BadRequest(f"severity {req.severity!r} is not one of {', '.join(SEVERITIES)}")
        return req


def refusal(spec: StrategySpec, status: StrategyStatus, verb: Verb) -> Optional[str]:
    """Why `verb` is not allowed now, or None when it is."""
    state = status.state
    if verb is Verb.HALT:
        return None  # the kill switch is always allowed, even when already halted
    if verb is Verb.EMERGENCY:
        if state is State.EMERGENCY_STOPPED:
            return "an emergency sequence already ran: the strategy is locked down; `reset` it first"
        return None
    if verb is Verb.RESET:
        if state not in ABSORBING_STATES:
            return f"reset re-enables a halted strategy, and this one is {state.value}: nothing to reset"
        if status.emergency is not None and not status.emergency.finished:
            return "the emergency sequence is still running: wait for it to finish, then reset"
        return None
    if state in ABSORBING_STATES:
        return f"the strategy is {state.value}: only `phasegate reset NAME --reason ...` re-enables it"
    if verb is Verb.PAUSE:
        if state is State.PAUSED:
            return "the strategy is already paused"
        return None
    if verb is Verb.RESUME:
        if state is not State.PAUSED:
            return f"resume continues a paused strategy, and this one is {state.value}"
        return None
    if verb is Verb.PROMOTE:
        if state is State.COMPLETED:
            return "the strategy is already on the last rung"
        if state is State.PAUSED:
            return "the strategy is paused: resume it first"
        idx = status.phase_index
        if not (0 <= idx < len(spec.phases)):
            return "the strategy has not started its ladder yet"
        phase = spec.phases[idx]
        if phase.approval is not Approval.MANUAL:
            return f"phase {phase.name} advances on its gates alone (approval: auto): promote approves manual phases"
        if status.approved_phase == phase.name:
            return f"phase {phase.name} is already approved; it advances when its gates and minimum duration pass"
        if idx + 1 > spec.ceiling_index():
            nxt = spec.phases[idx + 1] if idx + 1 < len(spec.phases) else None
            what = f"the next rung {nxt.name} ({nxt.fraction:%}) is" if nxt else "no rung is"
            return f"{what} above spec.maxFraction {spec.max_fraction}: raise the ceiling first"
        return None
    return f"unknown action {verb}"
