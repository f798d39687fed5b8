"""The halt sentinel against the real apiserver, on its own (no kopf, no strategy pass): its
watch finds a breaker condition someone writes and its write stops the pod; it leaves alone
what this replica does not lead and a condition a hold already answers."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes_asyncio import config as aconfig

from phasegate.controller.sentinel import Sentinel

import plans

from .strategy_env import Strategies, install_crd, wait_for

pytestmark = pytest.mark.e2e


def statefulset(name: str) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "s", "image": "strategy:1"}]}}}}


def test_the_sentinel_stops_the_pod_of_a_strategy_it_leads_on_a_breaker_condition(k8s, kubeconfig, namespace):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    for name in ("led", "other", "paused"):
        ts.create(plans.strategy(name))
        ts.apps.create_namespaced_stateful_set(namespace, statefulset(name))

    async def client():
        return await aconfig.new_client_from_config(config_file=str(kubeconfig))

    async def close(api):
        await api.close()

    sentinel = Sentinel(client, close, namespace=namespace, leading=lambda ns, name: name != "other")
    sentinel.start()
    try:
        # The operator's own breaker condition for a pause hold: answered, not a halt to act on.
        obj = ts.get("paused")
        ts.api.patch_namespaced_custom_object_status(
            "phasegate.dev", "v1alpha1", namespace, "tradingstrategies", "paused",
            {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
             "status": {"holds": [{"kind": "RiskPause", "id": "#3", "seq": 3, "source": "strategyBreaker:latency",
                                   "cause": "CircuitBreakerTripped", "since": "2026-03-02T14:00:00Z"}]}})
        ts.set_condition("paused", "CircuitBreakerTripped", "True", "Tripped", "by the operator, a pause")
        time.sleep(1.0)  # its watch is up (the first list is a few objects)
        t0 = time.monotonic()
        ts.set_condition("led", "CircuitBreakerTripped", "True", "AlertFiring", "via Alertmanager")
        ts.set_condition("other", "CircuitBreakerTripped", "True", "AlertFiring", "via Alertmanager")
        wait_for(lambda: ts.replicas("led") == 0, 10, "the sentinel to scale led to 0")
        took = time.monotonic() - t0
        rv = ts.get("led")["metadata"]["resourceVersion"]
        assert sentinel.stopped_at(namespace, "led") == rv, "it records the version it acted on"
        time.sleep(2.0)
        assert ts.replicas("other") == 1, "another replica's strategy is left alone"
        assert ts.replicas("paused") == 1, "a condition a hold answers is not a halt"
        assert sentinel.stopped_at(namespace, "other") is None and sentinel.stopped_at(namespace, "paused") is None
        print(f"condition write to replicas 0 through the sentinel: {took * 1000:.0f} ms")
    finally:
        asyncio.run(sentinel.stop())
    assert not sentinel.thread.is_alive(), "it stops with the operator"
