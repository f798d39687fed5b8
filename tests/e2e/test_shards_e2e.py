"""Sharding for real: three operator replicas split 300 strategies between six shard Leases.

Kill one replica: its shards are taken over once their leases expire, no strategy is ever
written by a replica that did not hold its shard (the apiserver's managedFields name every
writer of a strategy's status: the user agent `phasegate@<identity>`; the replicas' logs say
which shards each held), and no transition is recorded twice.

The strategies' pods run on the kwok nodes (Running, with an address, nothing inside); one
fake strategy process bound to 0.0.0.0 answers every pod address's metrics port, so every
strategy reads healthy metrics. Short lease settings (4s / 3s / 0.5s) and the dead-holder
shortcut off, so a successor waits for the leases to expire as it would in another pod.
Interval 10 s, as a desk would run them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import urllib3
from kubernetes import client

import plans  # noqa: E402  (tests/support)

from .strategy_env import Strategies, history_actions, install_crd, start_operator, wait_for

N_STRATEGIES, SHARDS, REPLICAS = 300, 6, 3
# Leases a little longer than the leader test's: 300 strategies and three operators load this
# 2-core host's apiserver, and a renewal late by the renew deadline fences a replica.
DURATION, DEADLINE, RETRY = 8.0, 6.0, 1.0
ENV = {
    "PHASEGATE_SHARDS": str(SHARDS),
    "PHASEGATE_LEASE_DURATION": str(DURATION),
    "PHASEGATE_RENEW_DEADLINE": str(DEADLINE),
    "PHASEGATE_RETRY_PERIOD": str(RETRY),
    "PHASEGATE_LEASE_DEAD_HOLDER_CHECK": "false",
}
PHASES = [
    {"name": "paper", "mode": "paper", "minDuration": "40s"},
    {"name": "shadow", "mode": "shadow", "minDuration": "1h"},
]


def identity(op) -> str:
    return f"{socket.gethostname()}_{op.proc.pid}"


def shard_holders(k8s, ns: str) -> dict[str, str]:
    """{shard lease: holder} of the live shard leases."""
    from datetime import UTC, datetime, timedelta

    out = {}
    now = datetime.now(UTC)
    for lease in client.CoordinationV1Api(k8s).list_namespaced_lease(ns).items:
        name, spec = lease.metadata.name, lease.spec
        if not name.startswith("phasegate-shard-") or not spec.holder_identity or spec.renew_time is None:
            continue
        if spec.renew_time + timedelta(seconds=spec.lease_duration_seconds or 0) >= now:
            out[name] = spec.holder_identity
    return out


def status_writers(obj: dict[str, Any]) -> set[str]:
    return {m["manager"] for m in obj["metadata"].get("managedFields") or []
            if m.get("subresource") == "status" and m["manager"].startswith("phasegate@")}


def held_by(ops) -> dict[str, set[str]]:
    """{shard lease: every replica that ever held it}, from the replicas' own logs. On a loaded
    host a renewal can come late: the holder fences itself and another takes the shard, one
    after the other, never both (each write is fenced on the shard's lease)."""
    out: dict[str, set[str]] = {}
    for o in ops:
        for line in o.log_lines():
            if line.get("event") == "started leading" and "/phasegate-shard-" in line.get("lease", ""):
                out.setdefault(line["lease"].split("/", 1)[1], set()).add(identity(o))
    return out


def check_writers(obj: dict[str, Any], holders: dict[str, set[str]], namespace: str) -> str:
    """Every replica that wrote the strategy's status held its shard at some point."""
    from phasegate.controller.shards import shard_lease, shard_of

    name = obj["metadata"]["name"]
    lease = shard_lease(shard_of(namespace, name, SHARDS), SHARDS)
    allowed = {f"phasegate@{h}" for h in holders.get(lease, set())}
    writers = status_writers(obj)
    assert writers and writers <= allowed, f"{name} ({lease}): written by {writers}, holders {allowed}"
    return lease


def kwok_strategy(name: str, port: int) -> dict[str, Any]:
    # The lag rule (an evaluation late by 2 intervals counts as a failed read) would pause
    # some of 300 strategies on a loaded 2-core host, and a paused one never advances: this
    # test is about who evaluates, so metricsFailure is set loose (test_evaluation_lag.py and
    # test_crash_recovery cover the rule).
    body = plans.strategy(name, phases=PHASES, interval="10s", metrics_failure={"pauseAfter": 50, "haltAfter": 100})
    t = body["spec"]["template"]
    t.pop("nodeSelector"), t.pop("tolerations")  # kwok nodes: Running, nothing runs
    t["metricsPort"] = port
    return body


def list_strategies(k8s, ns: str) -> list[dict[str, Any]]:
    """All strategies, or [] when the loaded apiserver drops the connection (asked again)."""
    try:
        return client.CustomObjectsApi(k8s).list_namespaced_custom_object(
            "phasegate.dev", "v1alpha1", ns, "tradingstrategies")["items"]
    except urllib3.exceptions.HTTPError:
        return []


def counter(text: str, name: str) -> float:
    """The sum of a counter's series in an exposition text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith(f"{name}_created") and not line.startswith("#"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def metrics_for_every_pod(tmp_path) -> tuple[subprocess.Popen, int]:
    """One fake strategy process answering the metrics port of every kwok pod's address."""
    port = free_port()
    metrics = subprocess.Popen(
        [sys.executable, plans.FAKE_STRATEGY],
        env={**os.environ, "PHASEGATE_POD_IP": "0.0.0.0", "PHASEGATE_METRICS_PORT": str(port), "FAKE_TICK_SECONDS": "1"},
        stdout=open(tmp_path / "metrics.log", "w"), stderr=subprocess.STDOUT,
    )
    return metrics, port


@pytest.mark.timeout(900)
def test_three_replicas_split_the_strategies_and_take_over_a_killed_ones_shards(k8s, kubeconfig, namespace, tmp_path):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    metrics, port = metrics_for_every_pod(tmp_path)
    ops = [start_operator(kubeconfig, namespace, tmp_path / f"op{i}", env=ENV) for i in range(REPLICAS)]
    try:
        ids = {identity(o) for o in ops}

        def balanced():
            held = shard_holders(k8s, namespace)
            per = Counter(held.values())
            return held if len(held) == SHARDS and set(per) == ids and set(per.values()) == {SHARDS // REPLICAS} else None

        wait_for(balanced, 60, "six shards, two per replica")
        names = [f"s{i:03d}" for i in range(N_STRATEGIES)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: ts.create(kwok_strategy(n, port)), names))

        def all_reconciled():
            items = list_strategies(k8s, namespace)
            done = [o for o in items if (o.get("status") or {}).get("phase")]
            return items if len(done) == N_STRATEGIES else None

        items = wait_for(all_reconciled, 240, "every strategy reconciled", interval=5)
        before = shard_holders(k8s, namespace)
        for obj in items:
            check_writers(obj, held_by(ops), namespace)
        # Kill one replica in the middle of the paper -> shadow advances.
        victim = ops[1]
        victim_id = identity(victim)
        orphaned = {lease for lease, h in before.items() if h == victim_id}
        assert orphaned, f"the victim holds no shard: {before}"
        killed_at = time.monotonic()
        victim.kill(signal.SIGKILL)
        survivors = [o for o in ops if o is not victim]
        taken = wait_for(
            lambda: (lambda held: held if all(held.get(lease) not in (None, victim_id) for lease in orphaned) else None)(
                shard_holders(k8s, namespace)),
            DURATION * 3 + 10, "the killed replica's shards taken over", interval=0.2,
        )
        takeover = time.monotonic() - killed_at
        assert {taken[lease] for lease in orphaned} <= {identity(o) for o in survivors}
        # Every strategy goes on: all advance to shadow, each exactly once.
        def all_advanced():
            items = list_strategies(k8s, namespace)
            shadow = [o for o in items if (o.get("status") or {}).get("phase") == "shadow"]
            return items if len(shadow) == N_STRATEGIES else None

        items = wait_for(all_advanced, 360, "every strategy advanced to shadow", interval=5)
        holders = held_by(ops)
        # Each replica keeps the strategies of shards it does not hold as metadata only, and the
        # survivors read those of the shards they took over fresh before acting on them.
        for o in survivors:
            text = o.metrics_text()
            assert counter(text, "phasegate_elided_bodies_total") > 0, identity(o)
        assert sum(counter(o.metrics_text(), "phasegate_fresh_body_reads_total") for o in survivors) > 0
    finally:
        for o in ops:
            o.stop()
        metrics.terminate()
        metrics.wait(10)
    print(f"\nshard takeover after SIGKILL: {takeover:.2f}s (lease duration {DURATION:g}s)")
    assert takeover <= DURATION + 4 * RETRY + 3.0, takeover
    moved = 0
    for obj in items:
        name, st = obj["metadata"]["name"], obj["status"]
        assert history_actions(st) == [("start", "paper"), ("complete", "shadow")], f"{name}: {history_actions(st)}"
        assert [h["seq"] for h in st["history"]] == list(range(1, len(st["history"]) + 1)), name
        lease = check_writers(obj, holders, namespace)
        if lease in orphaned:
            moved += 1
    assert moved > 0
