"""`make bench`: halt latency (operator vs floor), breach-to-halt latency, and leader failover
(benchmarks/failover.py: SIGKILL the leader, until the standby reconciles and until a halt
written meanwhile is executed; `BENCH_FAILOVERS=0` skips it).

Prints a table of p50/p99 per path and the ratios; also writes .state/bench/results.json.
Runs against the local control plane (started if needed, left as found).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "cluster"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from kubernetes import client, config  # noqa: E402

from benchmarks.failover import FAILOVERS, failover, print_table  # noqa: E402
from benchmarks.halt_latency import measure, summary  # noqa: E402

import localcluster  # noqa: E402
import plans  # noqa: E402
from operator_proc import OperatorProcess  # noqa: E402

G, V, P = "phasegate.dev", "v1alpha1", "tradingstrategies"
STRATEGIES = int(os.environ.get("BENCH_STRATEGIES", "100"))
HALTS = int(os.environ.get("BENCH_HALTS", "50"))
BREACHES = int(os.environ.get("BENCH_BREACHES", "20"))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def install_crd(api: client.ApiClient) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from e2e.strategy_env import install_crd as install

    install(api)


def kwok_strategy(name: str) -> dict[str, Any]:
    body = plans.strategy(name, interval="1h")
    t = body["spec"]["template"]
    t.pop("nodeSelector"), t.pop("tolerations")  # kwok nodes: pods Running, nothing runs
    return body


def wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def setup_operator_namespace(api: client.ApiClient, ns: str, n: int) -> list[str]:
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    names = [f"s{i:03d}" for i in range(n)]
    for name in names:
        custom.create_namespaced_custom_object(G, V, ns, P, kwok_strategy(name))

    def all_running() -> bool:
        items = apps.list_namespaced_stateful_set(ns).items
        return len(items) == n and all(s.spec.replicas == 1 for s in items)

    wait(all_running, 300, f"{n} StatefulSets at replicas 1")
    return names


def setup_floor_namespace(api: client.ApiClient, ns: str, n: int) -> list[str]:
    """The same objects, made by hand: no operator manages this namespace."""
    from phasegate.api import StrategySpec, StrategyStatus
    from phasegate.manifests import Owner, statefulset

    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    names = [f"f{i:03d}" for i in range(n)]
    for name in names:
        body = kwok_strategy(name)
        created = custom.create_namespaced_custom_object(G, V, ns, P, body)
        spec = StrategySpec.model_validate(created["spec"])
        status = StrategyStatus.model_validate({"phase": "paper", "state": "Progressing"})
        sts = statefulset(spec, status, Owner(name, ns, created["metadata"]["uid"]))
        apps.create_namespaced_stateful_set(ns, sts)
    return names


async def halt_latency(
    kubeconfig: Path, op_ns: str, floor_ns: str, op_names: list[str], floor_names: list[str]
) -> dict[str, Any]:
    from benchmarks.halt_latency import floor_client

    stop = asyncio.Event()
    floor = asyncio.create_task(floor_client(kubeconfig, floor_ns, stop))
    await asyncio.sleep(1.0)
    op_lat, floor_lat = [], []
    # Alternate the two paths in small batches so that machine noise falls on both.
    for i in range(0, HALTS, 5):
        op_lat += await measure(kubeconfig, op_ns, op_names[i : i + 5])
        floor_lat += await measure(kubeconfig, floor_ns, floor_names[i : i + 5])
    stop.set()
    floor.cancel()
    return {"operator": summary("operator", op_lat), "floor": summary("floor", floor_lat)}


def reconcile_means(text: str) -> dict[str, float]:
    """Mean reconcile time by trigger, from the operator's own histogram: how much of the
    halt latency is ours (decide, write, apply) and how much is the watch path to us."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "phasegate_reconcile_duration_seconds":
            continue
        for sample in fam.samples:
            trig = sample.labels.get("trigger", "")
            if sample.name.endswith("_sum"):
                sums[trig] = sample.value
            elif sample.name.endswith("_count"):
                counts[trig] = sample.value
    return {t: round(1000 * sums[t] / counts[t], 1) for t in sums if counts.get(t)}


def breach_to_halt(api: client.ApiClient, kubeconfig: Path, ns: str, n: int) -> dict[str, Any]:
    """A real strategy process reports a crash in portfolio value; the operator's 1s scrape
    finds the drawdown breach and halts it. Detection plus actuation."""
    custom, core, apps = client.CustomObjectsApi(api), client.CoreV1Api(api), client.AppsV1Api(api)
    phases = [{"name": "paper", "mode": "paper", "minDuration": "1h"}, {"name": "live-100", "mode": "live", "fraction": 1.0}]
    names = [f"b{i:02d}" for i in range(n)]
    for name in names:
        body = plans.strategy(name, phases=phases, interval="1s",
                              risk_limits={"maxDrawdown": {"threshold": 0.10, "action": "halt"}})
        custom.create_namespaced_custom_object(G, V, ns, P, body)

    def metrics_ok(name: str) -> bool:
        st = custom.get_namespaced_custom_object(G, V, ns, P, name).get("status") or {}
        return any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in st.get("conditions", []))

    wait(lambda: all(metrics_ok(x) for x in names), 180, "metrics read from every breach-benchmark strategy")
    lat = []
    for name in names:
        pod = core.read_namespaced_pod(f"{name}-0", ns)
        req = urllib.request.Request(
            f"http://{pod.status.pod_ip}:9100/control", data=json.dumps({"portfolio_value": "850000"}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        t0 = time.perf_counter()
        urllib.request.urlopen(req, timeout=5).read()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if apps.read_namespaced_stateful_set(name, ns).spec.replicas == 0:
                lat.append(time.perf_counter() - t0)
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{name} was not halted within 15s of the breach")
        time.sleep(0.2)
    return summary("breach-to-halt (scrape, 1s interval)", lat)


def main() -> int:
    cluster = localcluster.LocalCluster()
    started_here = not cluster.is_running()
    cluster.up()
    kubeconfig = cluster.kubeconfig
    os.environ["KUBECONFIG"] = str(kubeconfig)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    install_crd(api)
    tag = uuid.uuid4().hex[:5]
    op_ns, floor_ns, breach_ns = f"bench-op-{tag}", f"bench-floor-{tag}", f"bench-breach-{tag}"
    for ns in (op_ns, floor_ns, breach_ns):
        core.create_namespace({"metadata": {"name": ns}})
    out_dir = ROOT / ".state" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    ops = []
    try:
        log(f"starting the operator on {op_ns} and {breach_ns} with {STRATEGIES} strategies under management")
        op = OperatorProcess(kubeconfig, out_dir / f"operator-{tag}.log", namespace=op_ns).start()
        ops.append(op)
        op_names = setup_operator_namespace(api, op_ns, STRATEGIES)
        floor_names = setup_floor_namespace(api, floor_ns, STRATEGIES)
        log(f"measuring {HALTS} halts on each path")
        results = asyncio.run(halt_latency(kubeconfig, op_ns, floor_ns, op_names, floor_names))
        results["operator_reconcile"] = reconcile_means(op.metrics_text())
        op2 = OperatorProcess(kubeconfig, out_dir / f"operator-breach-{tag}.log", namespace=breach_ns).start()
        ops.append(op2)
        log(f"measuring breach-to-halt over {BREACHES} real strategy processes")
        results["breach"] = breach_to_halt(api, kubeconfig, breach_ns, BREACHES)
        for op in ops:  # their strategies stay, idle: the failover operators watch their own namespace
            op.stop()
        if FAILOVERS > 0:
            results["failover"] = failover(api, kubeconfig, out_dir, FAILOVERS)
    finally:
        for op in ops:
            op.stop()
        for ns in (op_ns, floor_ns, breach_ns):
            try:
                core.delete_namespace(ns)
            except Exception:
                pass
        if started_here and os.environ.get("BENCH_KEEP_CLUSTER") != "1":
            cluster.down()
    o, f = results["operator"], results["floor"]
    results["ratio_p50"] = round(o["p50_ms"] / f["p50_ms"], 2)
    results["ratio_p99"] = round(o["p99_ms"] / f["p99_ms"], 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(f"{'path':40} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for row in (o, f, results["breach"]):
        print(f"{row['path']:40} {row['n']:>4} {row['p50_ms']:>9} {row['p99_ms']:>9} {row['max_ms']:>9}")
    print(f"\nhalt latency, operator / floor: p50 x{results['ratio_p50']}, p99 x{results['ratio_p99']}"
          f"  (goal: ratio <= 2, operator p99 < 500 ms; {STRATEGIES} strategies under management)")
    print(f"operator's mean reconcile time by trigger (ms): {results['operator_reconcile']}")
    if "failover" in results:
        print_table(results["failover"])
    print(f"results: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
