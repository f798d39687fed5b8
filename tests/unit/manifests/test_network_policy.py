"""spec.networkPolicy: an ingress NetworkPolicy for the strategy's pods, the metrics port
only, from the operator's pods (and Prometheus when selectors are given)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from phasegate.api import StrategySpec, contract
from phasegate.api.crd import crd
from phasegate.manifests import Owner, backtest_job, flatten_job, labels, network_policy, statefulset

OWNER = Owner(name="momentum", namespace="trading", uid="1234-5678")


def spec_with(network_policy: dict[str, Any] | None = None, **template: Any) -> StrategySpec:
    body: dict[str, Any] = {
        "capital": "1000000", "account": "DU1", "maxFraction": 1,
        "template": {"image": "example/momentum:1", **template},
    }
    if network_policy is not None:
        body["networkPolicy"] = network_policy
    return StrategySpec.model_validate(body)


def test_off_by_default():
    assert spec_with().network_policy.enabled is False
    assert network_policy(spec_with(), OWNER) is None
    assert network_policy(spec_with({"enabled": False}), OWNER) is None


def test_metrics_port_from_the_operator_only():
    np = network_policy(spec_with({"enabled": True}), OWNER)
    assert np is not None
    assert np["apiVersion"] == "networking.k8s.io/v1" and np["kind"] == "NetworkPolicy"
    assert np["metadata"]["name"] == "momentum" and np["metadata"]["namespace"] == "trading"
    assert np["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert np["metadata"]["labels"] == labels(OWNER, "strategy")
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress"]  # egress (the broker) is not restricted
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9100}]
    # one peer with both selectors: the operator's pods AND in the operator's namespace
    assert rule["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "phasegate-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "phasegate", "app.kubernetes.io/component": "operator"}},
    }]


def test_it_selects_every_pod_of_the_strategy_and_no_other():
    spec = spec_with({"enabled": True})
    selector = network_policy(spec, OWNER)["spec"]["podSelector"]
    assert selector == {"matchLabels": {contract.LABEL_STRATEGY: "momentum"}}
    from phasegate.api import State, StrategyStatus

    st = StrategyStatus(phase="paper", phase_index=1, state=State.PROGRESSING)
    pods = [
        statefulset(spec, st, OWNER)["spec"]["template"],
        backtest_job(spec, st, OWNER)["spec"]["template"],
        flatten_job(spec, st, OWNER, "abcdef12")["spec"]["template"],
    ]
    for pod in pods:
        assert selector["matchLabels"].items() <= pod["metadata"]["labels"].items()
    other = Owner(name="other", namespace="trading", uid="9")
    assert not selector["matchLabels"].items() <= labels(other, "strategy").items()


def test_configurable_operator_selectors_and_metrics_port():
    np = network_policy(spec_with({
        "enabled": True,
        "operatorNamespaceSelector": {"matchLabels": {"team": "platform"}},
        "operatorPodSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["phasegate"]}]},
    }, metricsPort=9200), OWNER)
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9200}]
    assert rule["from"] == [{
        "namespaceSelector": {"matchLabels": {"team": "platform"}},
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["phasegate"]}]},
    }]


@pytest.mark.parametrize("prometheus, peer", [
    ({"prometheusNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
      "prometheusPodSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
     {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}),
    # a pod selector alone: Prometheus pods in the strategy's own namespace
    ({"prometheusPodSelector": {"matchLabels": {"app": "prometheus"}}},
     {"podSelector": {"matchLabels": {"app": "prometheus"}}}),
    # a namespace selector alone: every pod of those namespaces
    ({"prometheusNamespaceSelector": {"matchLabels": {"monitoring": "true"}}},
     {"namespaceSelector": {"matchLabels": {"monitoring": "true"}}}),
])
def test_prometheus_is_a_second_peer_on_the_same_port(prometheus: dict[str, Any], peer: dict[str, Any]):
    np = network_policy(spec_with({"enabled": True, **prometheus}), OWNER)
    (rule,) = np["spec"]["ingress"]
    assert len(rule["from"]) == 2 and rule["from"][1] == peer
    assert rule["ports"] == [{"protocol": "TCP", "port": 9100}]


@pytest.mark.parametrize("bad", [
    {"enabled": True, "operatorPodSelector": {"matchLabels": {"a": 1}, "bogus": True}},
    {"enabled": True, "operatorPodSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}},
    {"enabled": "yes please"},
    {"enabled": True, "ingress": [{}]},
])
def test_bad_selectors_are_refused(bad: dict[str, Any]):
    with pytest.raises(ValidationError):
        spec_with(bad)


def test_the_crd_has_the_field_with_its_defaults():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    prop = spec["properties"]["networkPolicy"]
    assert prop["default"]["enabled"] is False
    assert prop["default"]["operatorNamespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "phasegate-system"}}
    sel = prop["properties"]["operatorPodSelector"]
    assert set(sel["properties"]) == {"matchLabels", "matchExpressions"}
    assert sel["properties"]["matchExpressions"]["items"]["properties"]["operator"]["pattern"]
