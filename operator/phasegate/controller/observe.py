"""Gathers what the policy needs to see: the request annotation, the backtest Job,
the strategy's metrics. Reads only; every decision is left to phasegate.policy."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Optional

from phasegate.api import ABSORBING_STATES, Mode, StrategySpec, StrategyStatus, contract
from phasegate.manifests import Owner, backtest_job_name, flatten_job_name
from phasegate.policy.emergency import EmergencyObservation, flatten_wanted
from phasegate.metrics.snapshot import MetricsUnavailable
from phasegate.metrics.source import MetricsSource, ScrapeTarget
from phasegate.policy.requests import BadRequest, Request
from phasegate.policy.rollout import BacktestObservation, Observation

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


def startup_grace(spec: StrategySpec) -> timedelta:
    """How long a new phase's pod may take to come up before a missing pod counts as a failed read."""
    return max(timedelta(seconds=30), 3 * spec.evaluation_interval, spec.grace_period / 3)


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
            return BacktestObservation(job=name, state="Failed", message=f"the backtest wrote no JSON result to its termination message (got {message[:200]!r})")
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


async def read_metrics(
    kube: Kube, source: MetricsSource, owner: Owner, spec: StrategySpec, status: StrategyStatus, now: datetime
) -> dict[str, Any]:
    pod_name = f"{owner.name}-0"
    pod = await kube.get_pod(owner.namespace, pod_name)
    pod_phase = None
    if pod is not None and pod.metadata.annotations:
        pod_phase = pod.metadata.annotations.get(contract.ANNOTATION_PHASE)
    ready = bool(
        pod is not None
        and pod.status is not None
        and pod.status.pod_ip
        and pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    )
    if not ready:
        started = status.phase_started_at or now
        last_ok = status.metrics.last_success_at
        seen_this_phase = last_ok is not None and last_ok >= started
        if not seen_this_phase and now - started < startup_grace(spec):
            return {}  # the pod of this phase is still starting: not a failure, and not a pass
        return {"metrics_error": f"strategy pod {pod_name} is not running and ready"}
    target = ScrapeTarget(
        namespace=owner.namespace,
        strategy=owner.name,
        pod=pod_name,
        pod_ip=pod.status.pod_ip,
        port=spec.template.metrics_port,
        path="/metrics",
        timeout_seconds=spec_timeout(spec),
        now=now,
    )
    try:
        snap = await source.read(target)
    except MetricsUnavailable as exc:
        return {"metrics_error": str(exc)}
    return {"metrics": snap, "metrics_phase": pod_phase}


async def read_emergency(kube: Kube, owner: Owner, status: StrategyStatus) -> EmergencyObservation:
    pod = await kube.get_pod(owner.namespace, f"{owner.name}-0")
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
) -> Observation:
    found: dict[str, Any] = read_request(annotations)
    if status.emergency is not None and not status.emergency.finished:
        found["emergency"] = await read_emergency(kube, owner, status)
    phase = spec.phase_named(status.phase)
    if phase is not None and phase.mode is Mode.BACKTEST:
        found["backtest"] = await read_backtest(kube, owner, spec)
    elif phase is not None and read_metrics_now and source is not None and status.state not in ABSORBING_STATES:
        found.update(await read_metrics(kube, source, owner, spec, status, now))
    return Observation(**found)
