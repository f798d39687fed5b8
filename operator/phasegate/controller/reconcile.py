"""One reconcile: observe, decide, write status, then make the children match it.

Order matters for safety rule 4: the status write (history entry included) happens
first, guarded by resourceVersion; the structured log line follows its success; the
Event and the child objects after that. A kill between any two steps leaves a status
from which the next reconcile reaches the same end state without a second transition.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from pydantic import ValidationError

from phasegate.api import ABSORBING_STATES, HistoryEntry, Mode, State, StrategySpec, StrategyStatus
from phasegate.manifests import Owner, backtest_job, flatten_job, service, should_run, statefulset
from phasegate.policy.emergency import flatten_wanted
from phasegate.metrics.source import MetricsSource
from phasegate.policy.rollout import decide

from . import telemetry
from .kube import Conflict, Kube
from .observe import observe

STATUS_KEYS = set(StrategyStatus.model_json_schema(by_alias=True)["properties"])
# Entries of the last decision whose Event a kill may have lost: re-sent at start-up.
REPLAY_EVENTS = 5


def parse_status(raw: Optional[dict[str, Any]]) -> StrategyStatus:
    """Our part of status; fields written by others (kopf, a person) are ignored, not fatal."""
    return StrategyStatus.model_validate({k: v for k, v in (raw or {}).items() if k in STATUS_KEYS})


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 patch turning `old` into `new`: removed keys become null, lists are replaced."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif old[key] != value:
            out[key] = merge_patch(old[key], value)
    return out


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Reconciler:
    def __init__(self, kube: Kube, source_for: Callable[[StrategySpec], MetricsSource], clock: Callable[[], datetime] = utcnow) -> None:
        self.kube = kube
        self.source_for = source_for
        self.clock = clock

    async def reconcile(
        self,
        body: dict[str, Any],
        *,
        trigger: str,
        read_metrics: bool,
        apply_children: bool,
        replay_events: bool = False,
    ) -> Optional[StrategySpec]:
        """One pass; returns the spec it read (None when unreadable), for the loop's interval."""
        started = time.perf_counter()
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        log = telemetry.log_for(ns, name)
        try:
            spec = StrategySpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            # The CRD's schema and CEL rules refuse these at apply time; reaching here means
            # the CRD is older than the operator. Nothing is changed on a spec we cannot read.
            log.error("invalid spec", error=str(exc).splitlines()[:6])
            return None
        status = parse_status(body.get("status"))
        owner = Owner(name=name, namespace=ns, uid=uid)
        now = self.clock()
        obs = await observe(
            self.kube,
            self.source_for(spec) if read_metrics else None,
            owner,
            spec,
            status,
            meta.get("annotations") or {},
            now,
            read_metrics_now=read_metrics,
        )
        if obs.metrics_error:
            telemetry.METRICS_READ_ERRORS.labels(ns, name).inc()
        decision = decide(spec, status, obs, now, meta.get("generation"))
        new = decision.status
        old_wire, new_wire = status.wire(), new.wire()
        if old_wire != new_wire:
            await self.kube.patch_status(ns, name, merge_patch(old_wire, new_wire), meta["resourceVersion"])
        for entry in decision.history:
            self._log_transition(log, entry, ns, name, new)
        self._export(ns, name, new, spec)

        entries = list(decision.history)
        if replay_events:
            entries = list(new.history[-REPLAY_EVENTS:])
        work = [self._event(owner, e) for e in entries]
        spec_changed = status.observed_generation != meta.get("generation")  # a new image, env, ...
        if apply_children or decision.changed or spec_changed:
            work.append(self._apply(owner, spec, new, fast_stop=bool(decision.history) and not should_run(spec, new)))
        if new.state is State.VALIDATING and obs.backtest is None and _in_backtest(spec, new):
            work.append(self.kube.create_job(backtest_job(spec, new, owner)))
        if flatten_wanted(new.emergency) and (obs.emergency is None or obs.emergency.flatten is None):
            work.append(self.kube.create_job(flatten_job(spec, new, owner, new.emergency.id)))
        await asyncio.gather(*work)
        telemetry.RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)
        return spec

    @staticmethod
    def _log_transition(log: Any, entry: HistoryEntry, ns: str, name: str, status: StrategyStatus) -> None:
        log.info(
            "transition",
            seq=entry.seq,
            action=entry.action,
            **{"from": entry.from_},
            to=entry.to,
            fraction=str(entry.fraction) if entry.fraction is not None else None,
            state=status.state.value,
            reason=entry.reason,
            by=entry.by,
        )
        telemetry.TRANSITIONS.labels(ns, name, entry.action).inc()
        if entry.action in ("halt", "emergency"):
            telemetry.HALTS.labels(ns, name, entry.reason.split(":", 1)[0][:64]).inc()

    @staticmethod
    def _export(ns: str, name: str, status: StrategyStatus, spec: StrategySpec) -> None:
        telemetry.STRATEGY_FRACTION.labels(ns, name).set(float(status.capital_fraction))
        telemetry.STRATEGY_HALTED.labels(ns, name).set(1 if status.state in ABSORBING_STATES else 0)
        telemetry.STRATEGY_PHASE.labels(ns, name, status.phase, status.state.value).set(status.phase_index)

    async def _event(self, owner: Owner, entry: HistoryEntry) -> None:
        warning = entry.action in ("halt", "reduce", "pause", "fail", "emergency")
        await self.kube.create_event(
            namespace=owner.namespace,
            name=owner.name,
            uid=owner.uid,
            event_name=f"{owner.name}.{owner.uid[:8]}.{entry.seq:06d}",
            reason=entry.action.capitalize() + (entry.cause or ""),
            note=f"{entry.from_} -> {entry.to}: {entry.reason} (by {entry.by})",
            action=entry.action,
            event_type="Warning" if warning else "Normal",
            at=entry.at,
        )

    async def _apply(self, owner: Owner, spec: StrategySpec, status: StrategyStatus, *, fast_stop: bool) -> None:
        if fast_stop:
            # A halt must not wait for a full server-side apply: the smallest patch first.
            await self.kube.scale_statefulset(owner.namespace, owner.name, 0)
        await self.kube.apply(service(owner, spec))
        await self.kube.apply(statefulset(spec, status, owner))


def _in_backtest(spec: StrategySpec, status: StrategyStatus) -> bool:
    phase = spec.phase_named(status.phase)
    return phase is not None and phase.mode is Mode.BACKTEST


__all__ = ["Conflict", "Reconciler", "merge_patch", "parse_status"]
