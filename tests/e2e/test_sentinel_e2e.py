"""The halt sentinel's process against the real apiserver, on its own (no kopf, no strategy
pass): its watch finds a breaker condition someone writes and its write stops the pod; it
leaves alone a strategy of a shard this replica does not hold and a condition a hold already
answers; it is started again when it dies, and it ends when the operator does."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phasegate.api.contract import ANNOTATION_SENTINEL_STOP as SENTINEL_STOP
from phasegate.api.status import Cause
from phasegate.controller import telemetry
from phasegate.controller.sentinel_process import SentinelProcess
from phasegate.controller.shards import shard_of
from phasegate.policy.external import stop_causes

import plans

from .strategy_env import Strategies, install_crd, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def statefulset(name: str) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "s", "image": "strategy:1"}]}}}}


def named(prefix: str, namespace: str, shard: int, of: int) -> str:
    """The first `prefix-<i>` that falls in `shard` of `of`."""
    return next(f"{prefix}-{i}" for i in itertools.count() if shard_of(namespace, f"{prefix}-{i}", of) == shard)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's reaping is left


def restarts() -> float:
    return telemetry.REGISTRY.get_sample_value("phasegate_sentinel_process_restarts_total") or 0.0


def test_the_sentinel_process_stops_the_pod_of_a_strategy_it_leads_on_a_breaker_condition(k8s, kubeconfig, namespace):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    # Two shards, this replica holding the first: what it acts on is the election's deadlines.
    led, other, paused, later = (named("led", namespace, 0, 2), named("other", namespace, 1, 2),
                                 named("paused", namespace, 0, 2), named("later", namespace, 0, 2))
    for name in (led, other, paused, later):
        ts.create(plans.strategy(name))
        ts.apps.create_namespaced_stateful_set(namespace, statefulset(name))

    sentinel = SentinelProcess(namespace=namespace, identity="e2e", deadlines=lambda: [float("inf"), 0.0],
                               env={"KUBECONFIG": str(kubeconfig)})
    sentinel.start()
    try:
        # The operator's own breaker condition for a pause hold: answered, not a halt to act on.
        obj = ts.get(paused)
        ts.api.patch_namespaced_custom_object_status(
            "phasegate.dev", "v1alpha1", namespace, "tradingstrategies", paused,
            {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
             "status": {"holds": [{"kind": "RiskPause", "id": "#3", "seq": 3, "source": "strategyBreaker:latency",
                                   "cause": "CircuitBreakerTripped", "since": "2026-03-02T14:00:00Z"}]}})
        ts.set_condition(paused, "CircuitBreakerTripped", "True", "Tripped", "by the operator, a pause")
        time.sleep(4.0)  # its interpreter has started and its watch is up
        t0 = time.monotonic()
        ts.set_condition(led, "CircuitBreakerTripped", "True", "AlertFiring", "via Alertmanager")
        ts.set_condition(other, "CircuitBreakerTripped", "True", "AlertFiring", "via Alertmanager")
        wait_for(lambda: ts.replicas(led) == 0, 10, "the sentinel to scale led to 0")
        took = time.monotonic() - t0
        rv = ts.get(led)["metadata"]["resourceVersion"]
        assert sentinel.stopped_at(namespace, led) == rv, "the operator's side has the version it acted on"
        note = ts.apps.read_namespaced_stateful_set(led, namespace).metadata.annotations[SENTINEL_STOP]
        assert stop_causes(note) == [("CircuitBreakerTripped", Cause.CIRCUIT_BREAKER_TRIPPED)], "why, with the stop"
        time.sleep(2.0)
        assert ts.replicas(other) == 1, "a strategy of a shard this replica does not hold is left alone"
        assert ts.replicas(paused) == 1, "a condition a hold answers is not a halt"
        assert sentinel.stopped_at(namespace, other) is None and sentinel.stopped_at(namespace, paused) is None
        print(f"condition write to replicas 0 through the sentinel's process: {took * 1000:.0f} ms")

        # Killed, it is started again, and the new process acts as the old one did.
        first, before = sentinel.proc.pid, restarts()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sentinel.proc is not None and sentinel.proc.pid != first and alive(sentinel.proc.pid), 10,
                 "a new sentinel process")
        assert restarts() == before + 1
        time.sleep(4.0)
        ts.set_condition(later, "CircuitBreakerTripped", "True", "AlertFiring", "via Alertmanager")
        wait_for(lambda: ts.replicas(later) == 0, 10, "the new sentinel process to scale later to 0")
        assert ts.replicas(other) == 1, "the new process reads the same deadlines"
    finally:
        sentinel.stop()
    assert sentinel.proc is None and not sentinel.thread.is_alive(), "it stops with the operator"


PARENT = """
import sys, time
from phasegate.controller.sentinel_process import SentinelProcess, no_election
s = SentinelProcess(namespace=sys.argv[1], identity="e2e-parent", deadlines=no_election())
s.start()
print("PID", s.proc.pid, flush=True)
time.sleep(3600)
"""


def test_the_sentinel_process_ends_when_the_operator_dies(k8s, kubeconfig, namespace):
    """SIGKILL of the operator leaves nobody to stop its sentinel: the pipe's end of file does."""
    install_crd(k8s)  # a watch that works: nothing else ends the process (a failed one is written up the pipe)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, namespace], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "KUBECONFIG": str(kubeconfig)}, cwd=ROOT)
    try:
        child = next(int(line.split()[1]) for line in parent.stdout if line.startswith("PID "))
        time.sleep(3.0)
        assert alive(child), "the sentinel runs while the operator does"
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(child), 10, "the orphaned sentinel process to end")
    finally:
        if parent.poll() is None:
            parent.kill()
