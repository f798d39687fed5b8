"""The child objects: the pod environment contract, one replica at most, nothing at risk when halted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from phasegate.api import State, StrategySpec, StrategyStatus, contract
from phasegate.api.status import Hold, HoldKind
from phasegate.manifests import Owner, backtest_job, flatten_job, service, should_run, statefulset

OWNER = Owner(name="momentum", namespace="trading", uid="1234-5678")
SPEC = StrategySpec.model_validate({
    "capital": "1000000", "account": "DU1", "maxFraction": 1, "paperCapital": "250000",
    "template": {
        "image": "example/momentum:1",
        "envFrom": [{"secretRef": {"name": "broker-credentials"}}],
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
    },
    "terminationGracePeriod": "90s",
})


def status(phase: str, state: State = State.PROGRESSING, fraction: str = "0") -> StrategyStatus:
    idx = [p.name for p in SPEC.phases].index(phase)
    return StrategyStatus(phase=phase, phase_index=idx, state=state, capital_fraction=Decimal(fraction))


def env_of(obj) -> dict:
    c = obj["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.mark.parametrize(
    "phase, fraction, mode, frac_env, capital, shadow",
    [
        ("paper", "0", "paper", "0", "250000", "false"),
        ("shadow", "0", "shadow", "0", "250000", "true"),
        ("live-35", "0.35", "live", "0.35", "350000", "true"),
        ("live-100", "1", "live", "1", "1000000", "true"),
    ],
)
def test_pod_environment_contract(phase, fraction, mode, frac_env, capital, shadow):
    sts = statefulset(SPEC, status(phase, fraction=fraction), OWNER)
    env = env_of(sts)
    assert env[contract.ENV_STRATEGY] == "momentum" and env[contract.ENV_PHASE] == phase
    assert env[contract.ENV_MODE] == mode and env[contract.ENV_CAPITAL_FRACTION] == frac_env
    assert env[contract.ENV_CAPITAL] == capital and env[contract.ENV_SHADOW] == shadow
    assert env[contract.ENV_CHECKPOINT_DIR] == contract.DEFAULT_CHECKPOINT_DIR
    assert env["LOG_LEVEL"] == "info"
    assert sts["spec"]["template"]["metadata"]["annotations"][contract.ANNOTATION_PHASE] == phase


def test_one_replica_with_owner_grace_period_and_metrics_port():
    sts = statefulset(SPEC, status("paper"), OWNER)
    assert sts["spec"]["replicas"] == 1
    assert sts["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    pod = sts["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["containers"][0]["ports"][0]["name"] == "metrics"
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["port"] == SPEC.template.metrics_port


def test_secrets_only_by_reference():
    c = statefulset(SPEC, status("paper"), OWNER)["spec"]["template"]["spec"]["containers"][0]
    assert c["envFrom"] == [{"secretRef": {"name": "broker-credentials"}}]


@pytest.mark.parametrize("kind", [HoldKind.HALT, HoldKind.EMERGENCY, HoldKind.FAILED])
def test_nothing_runs_when_stopped(kind):
    hold = Hold(kind=kind, id="#9", seq=9, reason="stopped", since=datetime(2026, 1, 1, tzinfo=UTC))
    st = status("live-35", fraction="0.35").model_copy(update={"holds": [hold]})
    assert not should_run(SPEC, st)
    assert statefulset(SPEC, st, OWNER)["spec"]["replicas"] == 0


def test_backtest_phase_runs_a_job_not_the_strategy():
    st = status("backtest", state=State.VALIDATING)
    assert statefulset(SPEC, st, OWNER)["spec"]["replicas"] == 0
    job = backtest_job(SPEC, st, OWNER)
    assert env_of(job)[contract.ENV_MODE] == "backtest"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_flatten_job_and_headless_service():
    job = flatten_job(SPEC, status("live-35", State.EMERGENCY_STOPPED, "0.35"), OWNER, "abcdef123456")
    assert env_of(job)[contract.ENV_MODE] == "flatten"
    assert job["spec"]["activeDeadlineSeconds"] == 300
    assert service(OWNER, SPEC)["spec"]["clusterIP"] == "None"
