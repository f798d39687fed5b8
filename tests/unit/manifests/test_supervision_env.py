"""PHASEGATE_SUPERVISION_TIMEOUT: on the strategy pod exactly when spec.supervision.timeout is set,
never on a Job (a backtest or a flatten is not scraped, so it is never supervised)."""

from __future__ import annotations

from decimal import Decimal

from phasegate.api import State, StrategySpec, StrategyStatus, contract
from phasegate.manifests import Owner, backtest_job, flatten_job, statefulset

OWNER = Owner(name="momentum", namespace="trading", uid="1234-5678")
BASE = {"capital": "1000000", "account": "DU1", "maxFraction": 1, "template": {"image": "example/momentum:1"}}


def env_names(obj) -> list[str]:
    return [e["name"] for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]]


def env_of(obj) -> dict:
    return {e["name"]: e.get("value") for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}


def status(phase: str) -> StrategyStatus:
    return StrategyStatus(phase=phase, phase_index=1, state=State.PROGRESSING, capital_fraction=Decimal(0))


def test_the_strategy_pod_is_told_to_expect_supervision():
    spec = StrategySpec.model_validate({**BASE, "supervision": {"timeout": "90s"}})
    sts = statefulset(spec, status("paper"), OWNER)
    assert env_of(sts)[contract.ENV_SUPERVISION_TIMEOUT] == "90s"
    assert env_names(sts).count(contract.ENV_SUPERVISION_TIMEOUT) == 1
    for job in (backtest_job(spec, status("backtest"), OWNER), flatten_job(spec, status("paper"), OWNER, "e1")):
        assert contract.ENV_SUPERVISION_TIMEOUT not in env_names(job)


def test_without_supervision_the_pod_template_is_unchanged():
    plain = StrategySpec.model_validate(BASE)
    off = StrategySpec.model_validate({**BASE, "supervision": {}})
    assert statefulset(plain, status("paper"), OWNER) == statefulset(off, status("paper"), OWNER)
    assert contract.ENV_SUPERVISION_TIMEOUT not in env_names(statefulset(plain, status("paper"), OWNER))
