"""Gathers what the policy needs to see: the request annotation, the backtest Job,
the strategy's metrics. Reads only; every decision is left to phasegate.policy."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any, Optional

from phasegate.api import Mode, StrategySpec, StrategyStatus, contract
from phasegate.api.observations import (
    BacktestObservation,
    ChildrenObservation,
    EmergencyObservation,
    MetricsUnavailable,
    Observation,
)
from phasegate.api.requests import BadRequest, Request
from phasegate.api.status import STOPPING_HOLDS
from phasegate.manifests import Owner, backtest_job_name, flatten_job_name, statefulset
from phasegate.metrics.source import MetricsSource, ScrapeTarget
from phasegate.policy.desired import desired_key, pod_runs
from phasegate.policy.emergency import flatten_wanted
from phasegate.policy.timing import roll_grace, startup_grace

from .cache import PodView, StatefulSetView
from .kube import Kube


def read_request(annotations: dict[str, str]) -> dict[str, Any]:
    text = (annotations or {}).get(contract.ANNOTATION_REQUEST)
    if not text:
        return {}
    try:
        return {"request": Request.from_annotation(text)}
    except BadRequest as exc:
        try:
            rid = str(json.loads(text).get("id") or "") or None
        except (ValueError, AttributeError):
            rid = None
        return {"request_error": str(exc), "request_id": rid or f"unreadable:{hash(text) & 0xFFFFFFFF:x}"}


async def read_backtest(kube: Kube, owner: Owner, spec: StrategySpec) -> Optional[BacktestObservation]:
    name = backtest_job_name(owner, spec)
    job = await kube.get_job(owner.namespace, name)
    if job is None:
        return None
    st = job.status
    if st and (st.succeeded or 0) > 0:
        message = await _termination_message(kube, owner.namespace, name)
        try:
            result = json.loads(message) if message else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            why = f"the backtest wrote no JSON result to its termination message (got {message[:200]!r})"
            return BacktestObservation(job=name, state="Failed", message=why)
        return BacktestObservation(job=name, state="Succeeded", result=result)
    if st and (st.failed or 0) > 0:
        message = await _termination_message(kube, owner.namespace, name)
        return BacktestObservation(job=name, state="Failed", message=message[:500] or "the backtest job failed")
    return BacktestObservation(job=name, state="Running", message="backtest running")


async def _termination_message(kube: Kube, namespace: str, job_name: str) -> str:
    for pod in await kube.job_pods(namespace, job_name):
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            term = cs.state.terminated if cs.state else None
            if term is not None and term.message:
                return term.message.strip()
    return ""


def starting(spec: StrategySpec, status: StrategyStatus, now: datetime, sts: Optional[StatefulSetView]) -> bool:
    """Whether the phase's pod may still be coming up: within the start-up grace, or while the
    StatefulSet controller is still rolling the pods to the phase's revision (a slow roll on a
    busy cluster is a start-up, not a metrics outage), up to the roll grace."""
    elapsed = now - (status.phase_started_at or now)
    if elapsed < startup_grace(spec):
        return True
    return sts is not None and sts.rolling and elapsed < roll_grace(spec)


async def read_metrics(
    kube: Kube, source: MetricsSource, owner: Owner, spec: StrategySpec, status: StrategyStatus, now: datetime,
    pod: Optional[PodView], sts: Optional[StatefulSetView], supervisor: str = "",
) -> dict[str, Any]:
    pod_name = f"{owner.name}-0"
    read_id = uuid.uuid4().hex
    if pod is None or not pod.readable:
        seen = status.metrics.phase_pod_read_at
        # Read "in this phase" means after the phase began: the read that let the strategy
        # advance was of the previous phase's pod, in the same instant.
        if starting(spec, status, now, sts) and (seen is None or seen <= (status.phase_started_at or now)):
            # A roll stops the old pod before it starts the new one: a start-up, not a failure (and not a pass).
            return {"starting": True}
        return {"metrics_error": f"strategy pod {pod_name} is not running and ready", "read_id": read_id}
    supervision = spec.supervision_timeout
    if supervision is not None:
        # A supervised scrape extends the pod's licence to trade, as a write would: only the
        # leader may give it, so it is fenced like one (NotLeading abandons the pass).
        kube.fence("supervise", f"Pod {owner.namespace}/{pod_name}")
    target = ScrapeTarget(
        namespace=owner.namespace,
        strategy=owner.name,
        pod=pod_name,
        pod_ip=pod.ip or "",
        port=spec.template.metrics_port,
        path="/metrics",
        timeout_seconds=spec_timeout(spec),
        now=now,
        supervisor=supervisor if supervision is not None else "",
        supervision_deadline=now + supervision if supervision is not None else None,
    )
    try:
        snap = await source.read(target)
    except MetricsUnavailable as exc:
        return {"metrics_error": str(exc), "read_id": read_id}
    return {"metrics": snap, "pod": pod.read(), "read_id": read_id, "starting": starting(spec, status, now, sts)}


async def read_children(kube: Kube, owner: Owner, pod: Optional[PodView], sts: Optional[StatefulSetView],
                        spec: StrategySpec, status: StrategyStatus) -> ChildrenObservation:
    seen = ChildrenObservation(
        statefulset=sts is not None,
        replicas=sts.replicas if sts is not None else None,
        desired_key=sts.desired_key if sts is not None else "",
        pod=pod is not None,
        sentinel_stop=sts.sentinel_stop if sts is not None else "",
    )
    if not pod_pending(spec, status, seen):
        return seen
    return replace(seen, pod_refused=await pod_refusal(kube, owner, spec, status, pod_running=seen.pod),
                   dry_run_key=desired_key(spec, status))


def pod_pending(spec: StrategySpec, status: StrategyStatus, seen: ChildrenObservation) -> bool:
    """Whether the pod the status asks for is not running yet (a rung change to make, or a
    pod the StatefulSet controller has not created): only then is it worth a dry run."""
    if not spec.phase_named(status.phase) or not pod_runs(spec, status):
        return False
    return not (seen.statefulset and seen.pod and seen.desired_key == desired_key(spec, status))


async def pod_refusal(kube: Kube, owner: Owner, spec: StrategySpec, status: StrategyStatus, *,
                      pod_running: bool) -> Optional[str]:
    """The apiserver's answer to the pod the status asks for, by a server-side dry run.

    The dry run goes through every admission step a real create does, so a refusal is seen
    before the running pod is stopped for a roll that cannot complete, and it is reported as
    what it is, not as a metrics outage.
    """
    template = statefulset(spec, status, owner)["spec"]["template"]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "generateName": f"{owner.name}-dryrun-", "namespace": owner.namespace},
        "spec": template["spec"],
    }
    refusal = await kube.dry_run_pod(owner.namespace, body)
    if refusal and pod_running and "exceeded quota" in refusal:
        return None  # the roll stops the running pod first, which frees its share of the quota
    return refusal


async def read_emergency(kube: Kube, owner: Owner, status: StrategyStatus, pod: Optional[PodView]) -> EmergencyObservation:
    flatten, message = None, ""
    if flatten_wanted(status.emergency):
        job = await kube.get_job(owner.namespace, flatten_job_name(owner, status.emergency.id))
        if job is not None:
            st = job.status
            if st and (st.succeeded or 0) > 0:
                flatten = "Succeeded"
            elif st and (st.failed or 0) > 0:
                flatten = "Failed"
                message = await _termination_message(kube, owner.namespace, job.metadata.name) or "flatten job failed"
            else:
                flatten = "Running"
    return EmergencyObservation(pod_gone=pod is None, flatten=flatten, flatten_message=message)


def spec_timeout(spec: StrategySpec) -> float:
    from phasegate.api import parse_duration

    return parse_duration(spec.analysis.timeout).total_seconds()


async def observe(
    kube: Kube,
    source: Optional[MetricsSource],
    owner: Owner,
    spec: StrategySpec,
    status: StrategyStatus,
    annotations: dict[str, str],
    now: datetime,
    *,
    read_metrics_now: bool,
    pod: Optional[PodView],
    sts: Optional[StatefulSetView],
    carry: Optional[Observation] = None,
    supervisor: str = "phasegate",
    first_evaluation: bool = False,
) -> Observation:
    """Everything the decision needs. The pod and StatefulSet come from the watch caches
    (controller/cache.py). `carry` is an earlier observation of this pass (a 409 retry): its
    metrics read is reused, so a breach seen is decided on, never dropped."""
    found: dict[str, Any] = read_request(annotations)
    found["evaluated"] = read_metrics_now
    found["first_evaluation"] = read_metrics_now and first_evaluation
    found["children"] = await read_children(kube, owner, pod, sts, spec, status)
    if status.emergency is not None and not status.emergency.finished:
        found["emergency"] = await read_emergency(kube, owner, status, pod)
    phase = spec.phase_named(status.phase)
    stopped = any(h.kind in STOPPING_HOLDS for h in status.holds)
    if phase is not None and phase.mode is Mode.BACKTEST:
        found["backtest"] = await read_backtest(kube, owner, spec)
    if carry is not None:
        for key in ("metrics", "metrics_error", "read_id", "pod", "starting"):
            found[key] = getattr(carry, key)
    elif phase is not None and phase.mode is not Mode.BACKTEST and read_metrics_now and source is not None and not stopped:
        found.update(await read_metrics(kube, source, owner, spec, status, now, pod, sts, supervisor))
    return Observation(**found)
