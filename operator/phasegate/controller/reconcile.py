"""One reconcile: observe, decide, write status, then make the children match the decision.

Order matters for safety rule 4: the status write (history entry included) happens
first, guarded by resourceVersion; the structured log line follows its success; the
Event and the child objects after that. A kill between any two steps leaves a status
from which the next reconcile reaches the same end state without a second transition.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Optional

from pydantic import ValidationError

from phasegate.api import ConditionType, HistoryEntry, StrategySpec, StrategyStatus, contract
from phasegate.api.observations import Observation
from phasegate.api.status import STOPPING_HOLDS, Cause, Transition
from phasegate.manifests import Owner, backtest_job, flatten_job, network_policy, service, statefulset
from phasegate.metrics.source import MetricsSource
from phasegate.policy.conditions import set_condition
from phasegate.policy.desired import needs_apply
from phasegate.policy.external import unanswered_stop
from phasegate.policy.persistence import Stable, cadence_slot, persist_due, stable
from phasegate.policy.rollout import Decision, decide

from . import telemetry
from .cache import PodView, StatefulSetView
from .kube import Conflict, Kube, make_urgent
from .lean_bodies import STATUS_ELIDED, elided
from .observe import observe, pod_refusal

URGENT_TRANSITIONS = {Transition.HALT, Transition.EMERGENCY, Transition.PAUSE, Transition.REDUCE}
STATUS_KEYS = set(StrategyStatus.model_json_schema(by_alias=True)["properties"])


class ElidedBody(RuntimeError):
    """A strategy body kept as metadata only was about to be reconciled."""


def ours(raw: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Our part of a status as JSON; fields written by others (kopf, a person) are left out."""
    return {k: v for k, v in (raw or {}).items() if k in STATUS_KEYS}


def parse_status(raw: Optional[dict[str, Any]]) -> StrategyStatus:
    """Our part of status; fields written by others (kopf, a person) are ignored, not fatal."""
    return StrategyStatus.model_validate(ours(raw))


@dataclass
class Memo:
    """What one strategy's loop keeps between passes, so that a pass neither parses nor
    writes what has not changed.

    `status` is the latest decided status; it can be ahead of what is written by volatile
    fields only (policy/persistence.py says which may wait). `persisted*` is what the
    apiserver holds, as of `persisted_rv`. `own` holds the resourceVersions our own writes
    replaced or produced: a body at one of those is our own write echoed back (or kopf's
    copy lagging behind it), never news, so it neither wakes the loop nor replaces the memo.
    """

    status: Optional[StrategyStatus] = None
    persisted: Optional[StrategyStatus] = None
    # What the apiserver holds of our status as compact JSON, not as a tree of dicts: it is
    # read only to write (the merge patch's base) and on someone else's write, and the tree
    # was a fifth of a strategy's memory. kopf's copy of the body holds no status at all after
    # our own write (lean_bodies: STATUS_ELIDED), so this is the one copy.
    persisted_json: str = ""
    persisted_rv: str = ""
    persisted_at: Optional[datetime] = None
    own: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    # The resourceVersion our last write produced, until something newer is loaded: the one
    # watch event that is that write echoed back (controller/lean_bodies.py).
    echo_rv: str = ""
    spec_key: Any = None
    spec: Optional[StrategySpec] = None
    spec_error: Optional[str] = None
    evaluations: int = 0  # interval evaluations completed by this process
    _stable: Optional[Stable] = None
    _stable_of: Optional[StrategyStatus] = None

    @property
    def persisted_wire(self) -> dict[str, Any]:
        return json.loads(self.persisted_json) if self.persisted_json else {}

    def _persist_wire(self, wire: dict[str, Any]) -> None:
        self.persisted_json = json.dumps(wire, separators=(",", ":")) if wire else ""

    def vouches_for(self, body: Any) -> bool:
        """Whether this memo holds what a pass would decide from for `body`: our own write or an
        older copy, which it never reads (so a body whose status kopf does not keep will do)."""
        rv = body["metadata"]["resourceVersion"]
        return self.status is not None and (self.is_own(rv) or self.is_stale(rv))

    def is_own(self, rv: Optional[str]) -> bool:
        return bool(rv) and (rv == self.persisted_rv or rv in self.own)

    def is_stale(self, rv: Optional[str]) -> bool:
        """A body older than our last write: kopf's stream still delivering what came before
        it (someone's earlier patch). resourceVersions are etcd revisions, integers that grow;
        where one is not an integer nothing is assumed."""
        try:
            return rv is not None and bool(self.persisted_rv) and int(rv) < int(self.persisted_rv)
        except ValueError:
            return False

    def forget_writes(self) -> None:
        """After a 409 our idea of what the apiserver holds is wrong: the next body is news."""
        self.own.clear()
        self.persisted_rv = self.echo_rv = ""

    def load(self, body: dict[str, Any], now: datetime) -> tuple[StrategyStatus, str]:
        """(the status to decide from, the resourceVersion a write must be based on)."""
        if elided(body):
            # Metadata only (lean_bodies): read as a strategy it would have no status at all,
            # as if it had never climbed, and a halted one would start over.
            raise ElidedBody(f"{body['metadata'].get('name')}: the body is elided; read it fresh first")
        rv = body["metadata"]["resourceVersion"]
        if self.vouches_for(body):
            return self.status, self.persisted_rv  # type: ignore[return-value]  # vouches_for: status is set
        if STATUS_ELIDED in body:
            # kopf keeps no status after our own write; one this memo cannot vouch for (it
            # forgot its writes after a 409, or stood by) would read as no status at all.
            raise ElidedBody(f"{body['metadata'].get('name')}: the status is elided; read it fresh first")
        wire = ours(body.get("status"))
        persisted_wire = self.persisted_wire
        if self.status is not None and self.persisted is not None and wire == persisted_wire:
            status, persisted = self.status, self.persisted  # only the spec or metadata moved
        elif self.status is not None:
            # Someone else wrote status (a breaker condition, another replica that led for a
            # while): their fields win, ours that were not written yet stay for the rest.
            mine = self.status.wire()
            merged = {}
            for key in wire.keys() | mine.keys() | persisted_wire.keys():
                value = wire.get(key) if wire.get(key) != persisted_wire.get(key) else mine.get(key)
                if value is not None:
                    merged[key] = value
            status, persisted = StrategyStatus.model_validate(merged), StrategyStatus.model_validate(wire)
        else:
            status = persisted = StrategyStatus.model_validate(wire)
        self.persisted, self.persisted_rv = persisted, rv
        self._persist_wire(wire)
        self.echo_rv = ""
        self.persisted_at = self.persisted_at or now
        self.status = status
        return status, rv

    def wrote(self, status: StrategyStatus, wire: dict[str, Any], base_rv: str, rv: str, now: datetime) -> None:
        self.own.append(base_rv)
        self.own.append(rv)
        self.echo_rv = rv if rv != base_rv else ""
        self.status, self.persisted, self.persisted_rv, self.persisted_at = status, status, rv, now
        self._persist_wire(wire)

    def persisted_stable(self) -> Optional[Stable]:
        """persistence.stable(persisted), computed once per write rather than on every pass."""
        if self.persisted is None:
            return None
        if self._stable_of is not self.persisted:
            self._stable, self._stable_of = stable(self.persisted), self.persisted
        return self._stable

    def spec_for(self, body: dict[str, Any], status: StrategyStatus) -> tuple[Optional[StrategySpec], Optional[str]]:
        """spec_to_guard_with, parsed again only when the spec or what it depends on changed."""
        key = (body["metadata"].get("generation"), status.phase, status.spec_generation)
        if key != self.spec_key or self.spec is None:
            self.spec, self.spec_error = spec_to_guard_with(body, status)
            self.spec_key = key
        return self.spec, self.spec_error


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
    return datetime.now(UTC)


def spec_to_guard_with(body: dict[str, Any], status: StrategyStatus) -> tuple[Optional[StrategySpec], Optional[str]]:
    """(the spec to decide with, why the object's own spec cannot be used).

    The CRD refuses what the models refuse, so an unreadable spec means an older CRD or a
    spec that lost the current phase: the strategy is then guarded with the last spec the
    operator could read, and never advanced, rather than left unguarded.
    """
    error: Optional[str] = None
    try:
        spec: Optional[StrategySpec] = StrategySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        spec = None
        error = "; ".join(
            f"spec.{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:3]
        )
    if spec is not None and status.phase and spec.phase_named(status.phase) is None:
        error = f"phase {status.phase!r} is not in spec.phases: restore it to let the strategy move again"
    if error is None:
        return spec, None
    try:
        last = StrategySpec.model_validate(status.last_readable_spec) if status.last_readable_spec else None
    except ValidationError:
        last = None
    return (last if last is not None else spec), error


class Reconciler:
    def __init__(
        self, kube: Kube, source_for: Callable[[StrategySpec], MetricsSource], clock: Callable[[], datetime] = utcnow,
        identity: str = "phasegate",
    ) -> None:
        self.kube = kube
        self.source_for = source_for
        self.clock = clock
        # Sent to supervised strategy pods with each scrape (spec.supervision): who supervises.
        self.identity = identity
        # The resourceVersion the halt sentinel stopped a strategy's pod at (controller/sentinel.py).
        self.sentinel_stopped: Callable[[str, str], Optional[str]] = lambda namespace, name: None

    async def reconcile(
        self,
        body: dict[str, Any],
        *,
        memo: Memo,
        trigger: str,
        read_metrics: bool,
        pod: Optional[PodView],
        sts: Optional[StatefulSetView],
        network_policy: bool = False,
        carry: Optional[Observation] = None,
        observing: Optional[Callable[[bool], None]] = None,
    ) -> tuple[Optional[StrategySpec], Optional[Observation]]:
        """One pass: observe, decide, write status (when due), post Events, make the children match.

        Returns the spec it decided with (for the loop's interval) and what it observed
        (a 409 retry decides again on the fresh object with the same metrics read).
        `observing(False)` is called once the reads are done: from then on the pass writes,
        and an urgent pass waits for it instead of cancelling it.
        """
        started = time.perf_counter()
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        log = telemetry.log_for(ns, name)
        now = self.clock()
        status, base_rv = memo.load(body, now)
        spec, spec_error = memo.spec_for(body, status)
        if spec_error is not None:
            log.warning("spec cannot be read: guarding with the last readable spec", error=spec_error,
                        guarding=spec is not None)
        if spec is None:
            await self._report_unreadable(ns, name, memo, status, base_rv, spec_error or "unreadable")
            return None, None
        owner = Owner(name=name, namespace=ns, uid=uid)
        obs = await observe(
            self.kube,
            self.source_for(spec) if read_metrics else None,
            owner,
            spec,
            status,
            meta.get("annotations") or {},
            now,
            read_metrics_now=read_metrics,
            pod=pod,
            sts=sts,
            carry=carry,
            supervisor=self.identity,
            first_evaluation=memo.evaluations == 0,
        )
        if observing is not None:
            observing(False)
        if obs.metrics_error and carry is None:
            telemetry.METRICS_READ_ERRORS.labels(ns, name).inc()
        decision = decide(spec, status, obs, now, meta.get("generation"), spec_error=spec_error)
        new = decision.status
        if any(e.action in URGENT_TRANSITIONS for e in decision.history):
            make_urgent()  # a halt found by this evaluation is written and acted on unthrottled
        stopping = self._stop_with_the_write(ns, name, decision, obs, read_metrics)
        try:
            if persist_due(memo.persisted, new, now, memo.persisted_at, memo.persisted_stable(),
                           cadence_slot(ns, name)):
                await self._write_status(ns, name, memo, new, base_rv, now, obs)
        finally:
            if stopping is not None:
                await stopping
        memo.status = new
        for entry in decision.history:
            self._log_transition(log, entry, ns, name, new)
        self._export(ns, name, new, spec)
        # The children are made to match at once: a halt's scale-down never waits for its
        # Events (they are posted meanwhile; the watermark in status makes a lost one reposted).
        actuation = self._actuate(
            owner, spec, new, decision, obs, network_policy=network_policy,
            spec_changed=status.observed_generation != meta.get("generation"), scaled_down=stopping is not None,
            decided_at=meta.get("resourceVersion"),
        )
        pending = self._unposted(memo)
        if pending:
            actuating = asyncio.ensure_future(actuation)
            try:
                await self._post_events(owner, memo, now, pending)
            finally:
                await actuating
        else:
            await actuation  # nearly every pass: no Event to post, no task to make
        await self._answer_sentinel_note(owner, new, obs)
        if read_metrics:
            memo.evaluations += 1
        telemetry.RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)
        return spec, obs

    def _stop_with_the_write(self, ns: str, name: str, decision: Decision, obs: Observation,
                             read_metrics: bool) -> Optional[asyncio.Future[bool]]:
        """The scale-down of a halt whose cause is already written, sent together with the
        status write instead of after it (one round trip off the halt path).

        Only when this pass read no metrics: its halt then follows from what the apiserver
        holds (a breaker condition, a halt request), so whatever becomes of the status write
        (a 409, a crash), every later pass decides the same halt again from the same cause. A
        halt on a breach this pass read is written first and acted on after: the breach exists
        nowhere else."""
        desired, seen = decision.desired, obs.children
        if (read_metrics or desired is None or desired.replicas != 0 or seen is None or not seen.statefulset
                or not needs_apply(desired, seen)
                or not any(e.action in (Transition.HALT, Transition.EMERGENCY) for e in decision.history)):
            return None
        return asyncio.ensure_future(self.kube.scale_statefulset(ns, name, 0))

    async def _write_status(self, ns: str, name: str, memo: Memo, new: StrategyStatus, base_rv: str, now: datetime,
                            obs: Optional[Observation] = None) -> None:
        """Write what differs from what is written, based on `base_rv`; the memo learns the
        resourceVersion it produced, so that neither its echo nor the next pass is news."""
        new_wire, old_wire = new.wire(), memo.persisted_wire
        if new_wire == old_wire:
            return
        try:
            written_rv = await self.kube.patch_status(ns, name, merge_patch(old_wire, new_wire), base_rv)
        except Conflict as exc:
            memo.forget_writes()
            exc.observation = obs  # type: ignore[attr-defined]
            raise
        telemetry.STATUS_WRITES.inc()
        memo.wrote(new, new_wire, base_rv, written_rv or base_rv, now)

    async def _report_unreadable(self, ns: str, name: str, memo: Memo, status: StrategyStatus, base_rv: str,
                                 error: str) -> None:
        """A strategy never read at all: say so in status, there is nothing to guard yet."""
        now = self.clock()
        conds = set_condition(status.conditions, ConditionType.SPEC_INVALID, True, "SpecUnreadable", error, now, None)
        if conds != status.conditions:
            await self._write_status(ns, name, memo, status.model_copy(update={"conditions": conds}), base_rv, now)

    @staticmethod
    def _unposted(memo: Memo) -> list[HistoryEntry]:
        written = memo.persisted
        if written is None:
            return []
        return [e for e in written.history if e.seq > written.events_posted_seq]

    async def _post_events(self, owner: Owner, memo: Memo, now: datetime, pending: list[HistoryEntry]) -> None:
        """Events for every written history entry past the watermark kept in status: a kill
        between the status write and the Event loses none, and none is posted twice."""
        written = memo.persisted
        if written is None or not pending:
            return
        await asyncio.gather(*(self._event(owner, e) for e in pending))
        seq, base_rv = pending[-1].seq, memo.persisted_rv
        try:
            done_rv = await self.kube.patch_status(owner.namespace, owner.name, {"eventsPostedSeq": seq}, base_rv)
        except Conflict:
            return  # someone wrote since: the next pass posts again (Event names make that a no-op)
        status = (memo.status or written).model_copy(update={"events_posted_seq": seq})
        persisted = written.model_copy(update={"events_posted_seq": seq})
        memo.wrote(persisted, {**memo.persisted_wire, "eventsPostedSeq": seq}, base_rv, done_rv or base_rv, now)
        memo.status = status

    async def _network_policy(self, owner: Owner, spec: StrategySpec, *, exists: bool, spec_changed: bool) -> None:
        """spec.networkPolicy, compared with what exists (the watch cache) on every pass."""
        wanted = network_policy(spec, owner)
        if wanted is not None:
            if spec_changed or not exists:
                await self.kube.apply(wanted)
        elif spec_changed:
            await self.kube.delete_network_policy(owner.namespace, owner.name)  # turned off: gone (404 is fine)

    async def _actuate(
        self, owner: Owner, spec: StrategySpec, status: StrategyStatus, decision: Decision, obs: Observation,
        *, network_policy: bool, spec_changed: bool, scaled_down: bool = False, decided_at: Optional[str] = None,
    ) -> None:
        """Make the children what the decision says, whenever they are not (level-triggered)."""
        desired = decision.desired
        if desired is None:
            return
        stopped_at = self.sentinel_stopped(owner.namespace, owner.name)
        if desired.replicas != 0 and stopped_at is not None and newer(stopped_at, decided_at):
            # The halt sentinel stopped the pod on a condition this pass's body predates: the
            # next pass decides from the newer object; this one starts nothing.
            telemetry.log_for(owner.namespace, owner.name).info(
                "children left as they are: the halt sentinel stopped the pod after this pass's read",
                stopped_at=stopped_at, decided_at=decided_at)
            return
        work = []
        seen = obs.children
        if needs_apply(desired, seen) and desired.replicas == 1 and seen is not None and seen.pod:
            # A roll stops the running pod first: never for a pod the apiserver would refuse.
            # The next pass's observation reports the refusal (PodCreateFailed). The
            # observation's own dry run answers when it was for this very pod.
            if seen.dry_run_key == desired.key:
                refused = seen.pod_refused
            else:
                refused = await pod_refusal(self.kube, owner, spec, status, pod_running=True)
            if refused is not None:
                log = telemetry.log_for(owner.namespace, owner.name)
                log.warning("rung change held: the cluster refuses the new pod", refusal=refused)
                return
        if needs_apply(desired, seen):
            if desired.replicas == 0 and not scaled_down and obs.children is not None and obs.children.statefulset:
                # A halt must not wait for a full server-side apply: the smallest patch first
                # (unless this pass sent it already, together with the status write).
                await self.kube.scale_statefulset(owner.namespace, owner.name, 0)
            if spec.phase_named(status.phase) is not None:
                await self.kube.apply(service(owner, spec))
                await self.kube.apply(statefulset(spec, status, owner))
        await self._network_policy(owner, spec, exists=network_policy, spec_changed=spec_changed)
        if desired.backtest_job and obs.backtest is None:
            work.append(self.kube.create_job(backtest_job(spec, status, owner)))
        if desired.flatten_job and (obs.emergency is None or obs.emergency.flatten is None):
            work.append(self.kube.create_job(flatten_job(spec, status, owner, desired.flatten_job)))
        await asyncio.gather(*work)

    async def _answer_sentinel_note(self, owner: Owner, status: StrategyStatus, obs: Observation) -> None:
        """The halt sentinel's note on the StatefulSet is removed once a halt in the status
        just written answers it, so that a reset later does not meet it again. After the
        children are made to match, and never in their way: a failure is retried next pass."""
        seen = obs.children
        if seen is None or not seen.sentinel_stop or unanswered_stop(seen.sentinel_stop, status.holds):
            return
        try:
            await self.kube.annotate_statefulset(owner.namespace, owner.name, {contract.ANNOTATION_SENTINEL_STOP: None})
        except Exception as exc:  # the next pass sees the note and tries again
            telemetry.log_for(owner.namespace, owner.name).warning(
                "the halt sentinel's note on the StatefulSet could not be removed", error=str(exc)[:300])

    @staticmethod
    def _log_transition(log: Any, entry: HistoryEntry, ns: str, name: str, status: StrategyStatus) -> None:
        log.info(
            "transition",
            seq=entry.seq,
            action=entry.action.value,
            **{"from": entry.from_},
            to=entry.to,
            fraction=str(entry.fraction) if entry.fraction is not None else None,
            state=status.state.value,
            reason=entry.reason,
            by=entry.by,
        )
        telemetry.TRANSITIONS.labels(ns, name, entry.action.value).inc()
        if entry.action.value in ("halt", "emergency"):
            telemetry.HALTS.labels(ns, name, entry.reason.split(":", 1)[0][:64]).inc()

    @staticmethod
    def _export(ns: str, name: str, status: StrategyStatus, spec: StrategySpec) -> None:
        telemetry.export_strategy(ns, name, float(status.capital_fraction),
                                  any(h.kind in STOPPING_HOLDS for h in status.holds), status.phase,
                                  status.state.value, status.phase_index)

    async def _event(self, owner: Owner, entry: HistoryEntry) -> None:
        warning = entry.action.value in ("halt", "reduce", "pause", "fail", "emergency", "spec-invalid", "pod-refused")
        await self.kube.create_event(
            namespace=owner.namespace,
            name=owner.name,
            uid=owner.uid,
            event_name=f"{owner.name}.{owner.uid[:8]}.{entry.seq:06d}",
            reason=_event_reason(entry),
            note=f"{entry.from_} -> {entry.to}: {entry.reason} (by {entry.by})",
            action=entry.action.value,
            event_type="Warning" if warning else "Normal",
            at=entry.at,
        )


def newer(rv: Any, than: Any) -> bool:
    """Whether resourceVersion `rv` may be newer than `than` (any that is not an integer may be)."""
    try:
        return int(rv) > int(than)
    except (TypeError, ValueError):
        return True


def _event_reason(entry: HistoryEntry) -> str:
    """HaltRiskLimitBreached, PauseMetricsError, SpecInvalid, PodRefused..."""
    cause = entry.cause.value if entry.cause is not None and entry.cause is not Cause.SPEC else ""
    return entry.action.value.title().replace("-", "") + cause


__all__ = ["Conflict", "ElidedBody", "Memo", "Reconciler", "merge_patch", "newer", "ours", "parse_status"]
