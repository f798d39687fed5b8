"""The going-live guide's emergency sequence, as pure state changes.

1. stop order acceptance: the pod is stopped; its SIGTERM handler stops taking orders;
2. cancel pending orders: done by that same handler before it exits;
3. close all positions (critical only): a flatten Job runs the strategy image with
   PHASEGATE_MODE=flatten;
4. lockdown: state EmergencyStopped, left only by reset with a reason.

The strategy is EmergencyStopped (so no pod runs) from the first moment; the steps
record what happened. A step that fails or times out is recorded and the sequence
goes on: a failed cancel must not keep the positions open.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Optional

from phasegate.api import parse_duration
from phasegate.api.observations import EmergencyObservation
from phasegate.api.status import Cause, EmergencyRecord, EmergencyStep, HoldKind, Transition

if TYPE_CHECKING:
    from .rollout import Draft

STEPS = ("stop_orders", "cancel_orders", "flatten", "lockdown")


def emergency_id(name_seed: str, at: datetime) -> str:
    return hashlib.sha256(f"{name_seed}@{at.isoformat()}".encode()).hexdigest()[:12]


def _start(w: Draft, severity: str, reason: str, by: str, seed: str, cause: Cause) -> None:
    critical = severity == "critical"
    steps = [
        EmergencyStep(name="stop_orders", outcome="Running", started_at=w.now),
        EmergencyStep(name="cancel_orders", outcome="Running", started_at=w.now),
        EmergencyStep(name="flatten", outcome="Pending" if critical else "Skipped",
                      message="" if critical else f"severity {severity}: positions are kept"),
        EmergencyStep(name="lockdown", outcome="Pending"),
    ]
    record = EmergencyRecord(
        id=emergency_id(seed, w.now), severity=severity, reason=reason, by=by, started_at=w.now, steps=steps
    )
    w.emergency = record
    w.hold(HoldKind.EMERGENCY, Transition.EMERGENCY, f"emergency ({severity}): {reason}", source="emergency",
           by=by, cause=cause, hold_id=record.id)


def begin_emergency(w: Draft, req: Any) -> None:
    _start(w, req.severity or "high", req.reason, req.by, req.id, Cause.MANUAL)


def begin_emergency_on_breach(w: Draft, breach: Any) -> None:
    """A critical breach runs the whole sequence, flatten included."""
    if w.emergency is not None or w.held(HoldKind.EMERGENCY):
        return
    _start(w, "critical", f"{breach.name}: {breach.reason}", "operator", f"{breach.name}", Cause.RISK_LIMIT_BREACHED)


def _replace(record: EmergencyRecord, name: str, **update: Any) -> EmergencyRecord:
    steps = [s.model_copy(update=update) if s.name == name else s for s in record.steps]
    return record.model_copy(update={"steps": steps})


def _step(record: EmergencyRecord, name: str) -> EmergencyStep:
    return next(s for s in record.steps if s.name == name)


def progress(w: Draft, obs: Optional[EmergencyObservation]) -> None:
    """Move the running sequence on with what the controller saw; each outcome recorded once."""
    record: Optional[EmergencyRecord] = w.emergency
    if record is None or record.finished or obs is None:
        return
    spec = w.spec
    limits = {
        "stop_orders": parse_duration(spec.emergency.stop_orders_timeout),
        "cancel_orders": (
            parse_duration(spec.emergency.stop_orders_timeout) + parse_duration(spec.emergency.cancel_orders_timeout)
        ),
        "flatten": parse_duration(spec.emergency.flatten_timeout),
    }
    for name in ("stop_orders", "cancel_orders"):
        step = _step(record, name)
        if step.outcome != "Running":
            continue
        elapsed = w.now - step.started_at if step.started_at else timedelta(0)
        if obs.pod_gone:
            record = _replace(record, name, outcome="Succeeded", duration_seconds=elapsed.total_seconds(),
                              message="the strategy's SIGTERM handler finished and the pod exited")
        elif elapsed > limits[name]:
            record = _replace(record, name, outcome="TimedOut", duration_seconds=elapsed.total_seconds(),
                              message=f"the pod had not exited after {limits[name]}")
    first_two_done = all(_step(record, n).outcome not in ("Running", "Pending") for n in ("stop_orders", "cancel_orders"))
    flat = _step(record, "flatten")
    if first_two_done and flat.outcome == "Pending":
        record = _replace(record, "flatten", outcome="Running", started_at=w.now)
        flat = _step(record, "flatten")
    if flat.outcome == "Running":
        elapsed = w.now - flat.started_at if flat.started_at else timedelta(0)
        if obs.flatten == "Succeeded":
            record = _replace(record, "flatten", outcome="Succeeded", duration_seconds=elapsed.total_seconds(),
                              message="all positions closed")
        elif obs.flatten == "Failed":
            record = _replace(record, "flatten", outcome="Failed", duration_seconds=elapsed.total_seconds(),
                              message=obs.flatten_message or "flatten job failed")
        elif elapsed > limits["flatten"]:
            record = _replace(record, "flatten", outcome="TimedOut", duration_seconds=elapsed.total_seconds(),
                              message=f"not done after {limits['flatten']}")
    if first_two_done and _step(record, "flatten").outcome not in ("Pending", "Running"):
        record = _replace(record, "lockdown", outcome="Succeeded", started_at=w.now, duration_seconds=0.0,
                          message="EmergencyStopped: only `phasegate reset` re-enables trading")
        record = record.model_copy(update={"finished": True})
        outcomes = ", ".join(f"{s.name}={s.outcome}" for s in record.steps)
        w.emergency = record
        w.record(Transition.EMERGENCY_COMPLETE, f"emergency {record.id} finished: {outcomes}")
        return
    w.emergency = record


def flatten_wanted(record: Optional[EmergencyRecord]) -> bool:
    return record is not None and not record.finished and _step(record, "flatten").outcome == "Running"
