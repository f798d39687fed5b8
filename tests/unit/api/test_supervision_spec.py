"""spec.supervision.timeout: off by default, bounded, at least two evaluation intervals, only
with the scrape source; the CRD's CEL rules and the model say the same (the apiserver's side:
tests/e2e/test_validation_agreement.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from phasegate.api import StrategySpec
from phasegate.api.crd import openapi_schema
from phasegate.api.status import StrategyStatus
from phasegate.policy.desired import desired_key

BASE = {"capital": "1000000", "account": "DU1", "maxFraction": 0.1, "template": {"image": "x"}}


def make(supervision, **analysis) -> StrategySpec:
    body = {**BASE, "supervision": supervision}
    if analysis:
        body["analysis"] = analysis
    return StrategySpec.model_validate(body)


def refused(supervision, *words: str, **analysis) -> str:
    with pytest.raises(ValidationError) as err:
        make(supervision, **analysis)
    text = str(err.value)
    for w in ("supervision.timeout", *words):
        assert w in text, text
    return text


@pytest.mark.parametrize("supervision", [None, {}, {"timeout": None}])
def test_off_by_default(supervision):
    assert make(supervision).supervision_timeout is None


def test_a_timeout_of_at_least_two_intervals_is_accepted():
    assert make({"timeout": "60s"}).supervision_timeout == timedelta(seconds=60)  # default interval 30s
    assert make({"timeout": "6s"}, interval="1s").supervision_timeout == timedelta(seconds=6)
    assert make({"timeout": "24h"}).supervision_timeout == timedelta(hours=24)


def test_shorter_than_two_intervals_is_refused_naming_the_fix():
    text = refused({"timeout": "59s"}, "spec.analysis.interval", "1m or more")
    assert "30s" in text
    refused({"timeout": "2s"}, "shorten spec.analysis.interval", interval="1500ms")


@pytest.mark.parametrize("bad", ["0s", "0ms", "24h1ms", "2d", "30 s", "soon", 60])
def test_positive_and_bounded(bad):
    refused({"timeout": bad}, interval="1s")


def test_not_with_the_prometheus_source():
    refused({"timeout": "5m"}, "source: scrape", source="prometheus", prometheus={"address": "http://p:9090"})


def test_the_crd_carries_the_same_rules():
    spec = openapi_schema()["properties"]["spec"]
    assert "supervision" not in spec.get("required", []) and "default" not in spec["properties"]["supervision"]
    own = spec["properties"]["supervision"]["x-kubernetes-validations"]
    assert [r["fieldPath"] for r in own] == [".timeout"] and "86400000" in own[0]["rule"]
    cross = [r for r in spec["x-kubernetes-validations"] if r.get("fieldPath") == ".supervision.timeout"]
    assert len(cross) == 2
    assert any("self.analysis.interval" in r["rule"] and ">= 2 *" in r["rule"] for r in cross)
    assert any("self.analysis.source != 'prometheus'" in r["rule"] for r in cross)


def test_an_unsupervised_strategy_keeps_its_pod_digest_and_a_timeout_change_rolls_the_pod():
    status = StrategyStatus(phase="paper", phase_index=1)
    plain = desired_key(StrategySpec.model_validate(BASE), status)
    assert desired_key(make({}), status) == plain  # turning nothing on rolls nothing
    assert desired_key(make({"timeout": "90s"}), status) != plain
    assert desired_key(make({"timeout": "90s"}), status) != desired_key(make({"timeout": "120s"}), status)
