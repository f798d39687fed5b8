"""kopf's finalizer reaches every strategy, however its patch and our first write race.

kopf adds its finalizer (which holds a deletion until the strategy's loop has stopped) with a
JSON patch conditional on the resourceVersion it last saw. The loop's first status write
lands at about the same moment, the patch fails (422) and kopf keeps it to retry on the next
event it processes. Our own status echoes skip kopf's processing (controller/lean_bodies.py),
so unless an echo lets kopf retry, a strategy stays without the finalizer until someone else
writes it: a fifth of a hundred strategies did, and at a thousand each such later write
(a retry racing a write again) was a request and a full kopf pass in the steady state.

Eighty strategies on the kwok nodes, one operator, nothing else writing them: all carry the
finalizer within a few intervals of being reconciled.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .strategy_env import Strategies, install_crd, start_operator, wait_for
from .test_shards_e2e import kwok_strategy, list_strategies, metrics_for_every_pod

N = 80
KOPF_FINALIZER = "phasegate.dev/kopf-finalizer"


@pytest.mark.timeout(600)
def test_every_strategy_gets_kopfs_finalizer(k8s, kubeconfig, namespace, tmp_path):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    metrics, port = metrics_for_every_pod(tmp_path)
    op = start_operator(kubeconfig, namespace, tmp_path / "op")
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: ts.create(kwok_strategy(f"f{i:02d}", port)), range(N)))

        def all_reconciled():
            items = list_strategies(k8s, namespace)
            return items if sum(1 for o in items if (o.get("status") or {}).get("phase")) == N else None

        wait_for(all_reconciled, 180, "every strategy reconciled", interval=2)

        def missing():
            return sorted(o["metadata"]["name"] for o in list_strategies(k8s, namespace)
                          if KOPF_FINALIZER not in (o["metadata"].get("finalizers") or []))

        # The loop writes again within an interval or two (its first evaluation, a new book):
        # each such echo lets kopf retry.
        try:
            wait_for(lambda: not missing(), 60, "kopf's finalizer on every strategy", interval=2)
        except AssertionError:
            raise AssertionError(f"without kopf's finalizer a minute after reconciling: {missing()}") from None
    finally:
        op.stop()
        metrics.terminate()
        metrics.wait(10)
