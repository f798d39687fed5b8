"""Layer 3: pure builders of the child objects (StatefulSet, Service, Jobs, NetworkPolicy).

Inputs are the spec, the status the policy decided and the owner's identity; outputs
are plain dicts ready for the apiserver. Nothing here reads a Secret: credentials
reach pods only through the template's envFrom / valueFrom references (safety rule 7).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, Optional

from phasegate.api import Mode, StrategySpec, StrategyStatus, contract
from phasegate.policy.desired import desired_key, pod_runs

from . import security
from .meta import Owner, labels
from .meta import metadata as _metadata
from .network import network_policy

__all__ = [
    "Owner", "backtest_job", "backtest_job_name", "flatten_job", "flatten_job_name", "labels",
    "network_policy", "pod_environment", "security", "service", "should_run", "statefulset", "template_hash",
]


def should_run(spec: StrategySpec, status: StrategyStatus) -> bool:
    """Whether the strategy pod runs: the decision's, from the holds (phasegate.policy.desired)."""
    return pod_runs(spec, status)


def _fraction_text(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def pod_environment(
    spec: StrategySpec, status: StrategyStatus, name: str, mode: Optional[str] = None, *, supervised: bool = False,
) -> list[dict[str, Any]]:
    """The contract of docs/architecture.md, followed by the user's own env. `supervised`: the
    strategy pod, which the operator scrapes (Jobs are never scraped, so never supervised)."""
    phase = spec.phase_named(status.phase) or spec.phases[0]
    mode = mode or phase.mode.value
    live = phase.mode is Mode.LIVE
    fraction = status.capital_fraction if live else Decimal(0)
    capital = spec.capital * fraction if live else spec.capital_for(phase)
    env = [
        {"name": contract.ENV_STRATEGY, "value": name},
        {"name": contract.ENV_PHASE, "value": phase.name},
        {"name": contract.ENV_MODE, "value": mode},
        {"name": contract.ENV_CAPITAL_FRACTION, "value": _fraction_text(fraction)},
        {"name": contract.ENV_CAPITAL, "value": format(capital.normalize(), "f") if capital else "0"},
        {"name": contract.ENV_SHADOW, "value": "true" if phase.mode in (Mode.SHADOW, Mode.LIVE) else "false"},
        {"name": contract.ENV_CHECKPOINT_DIR, "value": contract.DEFAULT_CHECKPOINT_DIR},
        {"name": contract.ENV_METRICS_PORT, "value": str(spec.template.metrics_port)},
        {"name": contract.ENV_ACCOUNT, "value": spec.account},
        {"name": contract.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if supervised and spec.supervision is not None and spec.supervision.timeout is not None:
        env.append({"name": contract.ENV_SUPERVISION_TIMEOUT, "value": spec.supervision.timeout})
    for e in spec.template.env or []:
        env.append(e.wire())
    return env


def _container(spec: StrategySpec, env: list[dict[str, Any]], with_probe: bool = False) -> dict[str, Any]:
    t = spec.template
    c: dict[str, Any] = {
        "name": "strategy",
        "image": t.image,
        "env": env,
        "ports": [{"name": contract.METRICS_PORT_NAME, "containerPort": t.metrics_port, "protocol": "TCP"}],
        "terminationMessagePath": contract.DEFAULT_TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": security.volume_mounts(),
        "securityContext": security.container_security_context(t),
    }
    if with_probe:
        # Ready means the metrics endpoint answers: the operator grades nothing before that.
        c["readinessProbe"] = {
            "httpGet": {"path": "/metrics", "port": t.metrics_port},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        }
    for key, value in (
        ("command", t.command),
        ("args", t.args),
        ("envFrom", t.env_from),
        ("resources", t.resources),
        ("imagePullPolicy", t.image_pull_policy),
    ):
        if value:
            c[key] = value
    return c


def _pod_spec(spec: StrategySpec, container: dict[str, Any], restart: str) -> dict[str, Any]:
    t = spec.template
    pod: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": int(spec.grace_period.total_seconds()),
        "securityContext": security.pod_security_context(t),
        "automountServiceAccountToken": security.automount_token(t),
        "volumes": security.volumes(),
    }
    if t.node_selector:
        pod["nodeSelector"] = t.node_selector
    if t.tolerations:
        pod["tolerations"] = t.tolerations
    if t.service_account_name:
        pod["serviceAccountName"] = t.service_account_name
    return pod


def _mode_of(spec: StrategySpec, status: StrategyStatus) -> str:
    phase = spec.phase_named(status.phase)
    return phase.mode.value if phase is not None else ""


def _capital_text(spec: StrategySpec, status: StrategyStatus) -> str:
    """The PHASEGATE_CAPITAL the pod gets, as the operator's risk accounting needs it."""
    env = {e["name"]: e.get("value") for e in pod_environment(spec, status, "")}
    return str(env.get(contract.ENV_CAPITAL) or "0")


def statefulset(spec: StrategySpec, status: StrategyStatus, owner: Owner) -> dict[str, Any]:
    """One replica at most, ever: a StatefulSet never runs two pods of one ordinal (safety rule 1)."""
    env = pod_environment(spec, status, owner.name, supervised=True)
    pod_labels = labels(owner, "strategy")
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            **_metadata(owner, owner.name, "strategy"),
            "annotations": {contract.ANNOTATION_DESIRED_KEY: desired_key(spec, status)},
        },
        "spec": {
            "replicas": 1 if should_run(spec, status) else 0,
            "serviceName": owner.name,
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": {contract.LABEL_STRATEGY: owner.name, contract.LABEL_COMPONENT: "strategy"}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        contract.ANNOTATION_PHASE: status.phase,
                        contract.ANNOTATION_MODE: _mode_of(spec, status),
                        contract.ANNOTATION_CAPITAL: _capital_text(spec, status),
                    },
                },
                "spec": _pod_spec(spec, _container(spec, env, with_probe=True), "Always"),
            },
        },
    }


def service(owner: Owner, spec: StrategySpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name, "strategy"),
        "spec": {
            "clusterIP": "None",
            "selector": {contract.LABEL_STRATEGY: owner.name, contract.LABEL_COMPONENT: "strategy"},
            "ports": [
                {"name": contract.METRICS_PORT_NAME, "port": spec.template.metrics_port, "targetPort": contract.METRICS_PORT_NAME}
            ],
        },
    }


def template_hash(spec: StrategySpec) -> str:
    """Changes when the strategy's code or config changes, so a new backtest runs."""
    template = {k: v for k, v in spec.template.wire().items() if k not in security.SECURITY_FIELDS}
    backtests = [p.wire() for p in spec.phases if p.mode is Mode.BACKTEST]
    body = json.dumps(template, sort_keys=True) + json.dumps(backtests, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def backtest_job_name(owner: Owner, spec: StrategySpec) -> str:
    return f"{owner.name}-backtest-{template_hash(spec)}"


def _job(
    spec: StrategySpec, status: StrategyStatus, owner: Owner, name: str, component: str, mode: str, deadline_s: int
) -> dict[str, Any]:
    env = pod_environment(spec, status, owner.name, mode=mode)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(owner, name, component),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": labels(owner, component)},
                "spec": _pod_spec(spec, _container(spec, env), "Never"),
            },
        },
    }


def backtest_job(spec: StrategySpec, status: StrategyStatus, owner: Owner) -> dict[str, Any]:
    """The backtest: its JSON results come back in the container's termination message."""
    return _job(spec, status, owner, backtest_job_name(owner, spec), "backtest", Mode.BACKTEST.value, 6 * 3600)


def flatten_job(spec: StrategySpec, status: StrategyStatus, owner: Owner, emergency_id: str) -> dict[str, Any]:
    """Emergency step 3: the strategy image in flatten mode closes every position."""
    from phasegate.api import parse_duration

    deadline = int(parse_duration(spec.emergency.flatten_timeout).total_seconds())
    return _job(spec, status, owner, flatten_job_name(owner, emergency_id), "flatten", "flatten", deadline)


def flatten_job_name(owner: Owner, emergency_id: str) -> str:
    return f"{owner.name}-flatten-{emergency_id[:8]}"
