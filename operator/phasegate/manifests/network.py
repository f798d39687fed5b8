"""The strategy's optional NetworkPolicy (spec.networkPolicy): ingress to the metrics port
only, from the operator's pods and, when selectors are given, Prometheus. The policy
selects every pod of the strategy (StatefulSet, backtest and flatten Jobs), so any other
ingress to them is refused. Egress is left alone: where the broker is, is the strategy's
business."""

from __future__ import annotations

from typing import Any, Optional

from phasegate.api import StrategySpec, contract
from phasegate.api.spec import LabelSelector

from .meta import Owner, metadata


def _selector(sel: LabelSelector) -> dict[str, Any]:
    return sel.wire()


def _peers(spec: StrategySpec) -> list[dict[str, Any]]:
    np = spec.network_policy
    # One peer with both selectors: the operator's pods AND in the operator's namespaces.
    peers = [{
        "namespaceSelector": _selector(np.operator_namespace_selector),
        "podSelector": _selector(np.operator_pod_selector),
    }]
    if np.prometheus_namespace_selector is not None or np.prometheus_pod_selector is not None:
        peer: dict[str, Any] = {}
        if np.prometheus_namespace_selector is not None:
            peer["namespaceSelector"] = _selector(np.prometheus_namespace_selector)
        if np.prometheus_pod_selector is not None:
            peer["podSelector"] = _selector(np.prometheus_pod_selector)
        peers.append(peer)
    return peers


def network_policy(spec: StrategySpec, owner: Owner) -> Optional[dict[str, Any]]:
    """The NetworkPolicy to apply for the strategy, or None when spec.networkPolicy is off
    (then the operator should delete one it created before: its name is the strategy's)."""
    if not spec.network_policy.enabled:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, owner.name, "strategy"),
        "spec": {
            "podSelector": {"matchLabels": {contract.LABEL_STRATEGY: owner.name}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": _peers(spec),
                "ports": [{"protocol": "TCP", "port": spec.template.metrics_port}],
            }],
        },
    }
