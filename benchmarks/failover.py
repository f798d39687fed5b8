"""Failover: how long strategies go unguarded when the leader dies, with production lease settings.

Two `phasegate run` processes (tests/support/operator_proc.py) elect a leader on the Lease
with the chart's settings (lease duration 15 s, renew deadline 10 s, retry period 2 s) and
the dead-holder shortcut OFF: a successor in another pod cannot see that the holder's
process died, so it waits for the lease to expire. A few strategies run the fake strategy
(real processes on the local-process node) at the live-10 rung.

Each failover: SIGKILL the leader (no release), and right after the kill write a
`CircuitBreakerTripped` condition on one live strategy (the victim; a new one each time).
Measured from the kill, observed from outside the operators:

(a) first reconcile: the first watch event on a TradingStrategy whose managedFields name
    the standby as a writer of the status subresource. Every operator writes with the user
    agent `phasegate@<identity>`, which the apiserver records as the field manager; a fresh
    standby has written nothing before, and its first evaluation as leader writes status
    (an interval pass records its metrics read there). Also: when it has written every
    strategy's status (`all strategies`).
(b) halt executed: the victim's StatefulSet seen at replicas 0 on a watch.

A fresh standby is started after each kill, so there are always two. Then the same with the
dead-holder shortcut ON (both replicas on one host, the successor sees the holder is gone),
labelled as such. `BENCH_FAILOVERS` (default 10) sets the count, `BENCH_FAILOVERS_SHORTCUT`
(default 5) that of the shortcut series (0: none); the whole run takes about 5 minutes on 2
loaded cores.

    python -m benchmarks.failover         # alone (make bench-failover); also part of make bench
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "cluster"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

import plans  # noqa: E402
from operator_proc import OperatorProcess  # noqa: E402

G, V, P = "phasegate.dev", "v1alpha1", "tradingstrategies"
LEASE = "phasegate-leader"
FAILOVERS = int(os.environ.get("BENCH_FAILOVERS", "10"))
# The shortcut series is the cheap comparison, not the figure that matters: fewer by default.
SHORTCUT_FAILOVERS = int(os.environ.get("BENCH_FAILOVERS_SHORTCUT", str(min(5, FAILOVERS))))
BACKGROUND = int(os.environ.get("BENCH_FAILOVER_STRATEGIES", "3"))
LEASE_SETTINGS = {"PHASEGATE_LEASE_DURATION": "15", "PHASEGATE_RENEW_DEADLINE": "10", "PHASEGATE_RETRY_PERIOD": "2"}
PHASES = [
    {"name": "paper", "mode": "paper", "minDuration": "1s"},
    {"name": "shadow", "mode": "shadow", "minDuration": "1s"},
    {"name": "live-10", "mode": "live", "fraction": 0.10, "minDuration": "1h"},
    {"name": "live-100", "mode": "live", "fraction": 1.0, "minDuration": "0s"},
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Seen:
    """What a watch delivered, with the monotonic time it arrived."""

    at: float
    name: str
    obj: Any


@dataclass
class Watcher:
    """A watch on one resource of the namespace, in a thread, re-established when it ends."""

    list_fn: Callable[..., Any]
    args: tuple[Any, ...]
    name_of: Callable[[Any], str]
    events: list[Seen] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watcher:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for ev in watch.Watch().stream(self.list_fn, *self.args, timeout_seconds=30):
                    with self.cond:
                        self.events.append(Seen(time.monotonic(), self.name_of(ev["object"]), ev["object"]))
                        self.cond.notify_all()
                    if self.stop.is_set():
                        return
            except Exception:  # a dropped watch: start another; the wait loops time out if it never comes back
                time.sleep(0.2)

    def first(self, pred: Callable[[Seen], bool], since: float, timeout: float, what: str) -> Seen:
        deadline = time.monotonic() + timeout
        checked = 0
        with self.cond:
            while True:
                for seen in self.events[checked:]:
                    if seen.at >= since and pred(seen):
                        return seen
                checked = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(left)


def _writes_status(obj: dict[str, Any], manager: str) -> bool:
    return any(m.get("manager") == manager and m.get("subresource") == "status"
               for m in obj["metadata"].get("managedFields") or [])


def _wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class Bench:
    def __init__(self, api: client.ApiClient, kubeconfig: Path, ns: str, out_dir: Path) -> None:
        self.api, self.kubeconfig, self.ns, self.out_dir = api, kubeconfig, ns, out_dir
        self.custom, self.coord = client.CustomObjectsApi(api), client.CoordinationV1Api(api)
        self.ops: list[OperatorProcess] = []
        self.started = 0
        self.victims = 0
        self.rng = random.Random(20261201)
        # one client per watch thread: the kubernetes client is not shared across threads
        custom = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
        apps = client.AppsV1Api(config.new_client_from_config(str(kubeconfig)))
        self.strategies = Watcher(custom.list_namespaced_custom_object, (G, V, ns, P),
                                  lambda o: o["metadata"]["name"]).start()
        self.sets = Watcher(apps.list_namespaced_stateful_set, (ns,), lambda o: o.metadata.name).start()

    def holder(self) -> Optional[str]:
        try:
            return self.coord.read_namespaced_lease(LEASE, self.ns).spec.holder_identity or None
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def start_operator(self, shortcut: bool) -> OperatorProcess:
        self.started += 1
        ident = f"bench-op-{self.started}"
        env = {**LEASE_SETTINGS, "POD_NAME": ident, "PHASEGATE_LEASE_DEAD_HOLDER_CHECK": "true" if shortcut else "false"}
        op = OperatorProcess(self.kubeconfig, self.out_dir / f"failover-{ident}.log", namespace=self.ns, env=env)
        op.identity = ident  # type: ignore[attr-defined]
        op.start()
        self.ops.append(op)
        return op

    def live(self, name: str) -> bool:
        st = self.custom.get_namespaced_custom_object(G, V, self.ns, P, name).get("status") or {}
        return st.get("phase") == "live-10" and st.get("state") == "Progressing"

    def new_strategy(self, name: str) -> str:
        self.custom.create_namespaced_custom_object(G, V, self.ns, P, plans.strategy(
            name, max_fraction=0.10, phases=PHASES, interval="1s"))
        return name

    def next_victim(self) -> str:
        self.victims += 1
        return self.new_strategy(f"victim-{self.victims:02d}")

    def trip(self, name: str) -> None:
        """The breaker condition, as the Alertmanager receiver or a person writes it."""
        for _ in range(10):
            obj = self.custom.get_namespaced_custom_object(G, V, self.ns, P, name)
            conds = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] != "CircuitBreakerTripped"]
            conds.append({"type": "CircuitBreakerTripped", "status": "True", "reason": "FailoverBenchmark",
                          "message": "written right after the leader was killed",
                          "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": {"conditions": conds}}
            try:
                self.custom.patch_namespaced_custom_object_status(G, V, self.ns, P, name, body)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
        raise RuntimeError(f"could not write the breaker condition on {name}")

    def series(self, shortcut: bool, count: int, background: list[str]) -> dict[str, Any]:
        label = "dead-holder shortcut ON" if shortcut else "dead-holder shortcut OFF"
        for op in self.ops:
            op.stop()
        self.ops = []
        first = self.start_operator(shortcut)
        _wait(lambda: self.holder() == first.identity, 60, f"{first.identity} leads")  # type: ignore[attr-defined]
        self.start_operator(shortcut)
        victim = self.next_victim()
        rows = []
        for i in range(count):
            _wait(lambda v=victim: self.live(v) and all(self.live(b) for b in background), 120,
                  f"{victim} and the background strategies at live-10")
            lead_id = self.holder()
            by_id = {o.identity: o for o in self.ops if o.proc and o.proc.poll() is None}  # type: ignore[attr-defined]
            if lead_id not in by_id or len(by_id) != 2:
                raise RuntimeError(f"the lease names {lead_id}, the running operators are {list(by_id)}")
            (standby,) = [o for ident, o in by_id.items() if ident != lead_id]
            manager = f"phasegate@{standby.identity}"  # type: ignore[attr-defined]
            time.sleep(self.rng.uniform(0.0, 2.0))  # anywhere in the leader's renewal cycle
            killed = time.monotonic()
            by_id[lead_id].kill(signal.SIGKILL)  # also waits until it is reaped: counted against us
            self.trip(victim)
            tripped = time.monotonic() - killed
            reconciled = self.strategies.first(lambda s, m=manager: _writes_status(s.obj, m), killed, 60,
                                               f"a status write by {manager}")
            halted = self.sets.first(lambda s, v=victim: s.name == v and s.obj.spec.replicas == 0, killed, 60,
                                     f"{victim} at replicas 0")
            everyone = set(background) | {victim}
            last = max(
                self.strategies.first(lambda s, n=name, m=manager: s.name == n and _writes_status(s.obj, m), killed, 60,
                                      f"{manager} writes {name}'s status").at
                for name in everyone
            )
            row = {"first_reconcile_s": round(reconciled.at - killed, 3), "all_strategies_s": round(last - killed, 3),
                   "halt_s": round(halted.at - killed, 3), "breaker_written_after_s": round(tripped, 3)}
            rows.append(row)
            log(f"{label} failover {i + 1}/{count}: first reconcile {row['first_reconcile_s']:.2f}s, "
                f"all {len(everyone)} strategies {row['all_strategies_s']:.2f}s, halt {row['halt_s']:.2f}s")
            self.ops = [standby]
            if i + 1 < count:
                victim = self.next_victim()
                self.start_operator(shortcut)  # the new standby starts while the victim climbs
        return {
            "label": label,
            "n": len(rows),
            "first_reconcile": _stats([r["first_reconcile_s"] for r in rows]),
            "all_strategies": _stats([r["all_strategies_s"] for r in rows]),
            "halt": _stats([r["halt_s"] for r in rows]),
            "samples": rows,
        }

    def close(self) -> None:
        for op in self.ops:
            op.stop()
        self.strategies.stop.set()
        self.sets.stop.set()


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50_s": round(statistics.median(values), 2), "max_s": round(max(values), 2)}


def failover(
    api: client.ApiClient, kubeconfig: Path, out_dir: Path, count: int = FAILOVERS, shortcut_count: int = SHORTCUT_FAILOVERS,
) -> dict[str, Any]:
    ns = f"bench-failover-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    _wait(lambda: _has_default_sa(core, ns), 30, "the namespace's default ServiceAccount")
    bench = Bench(api, kubeconfig, ns, out_dir)
    try:
        log(f"failover: two operators (lease 15s / renew 10s / retry 2s) in {ns}, "
            f"{BACKGROUND} strategies at live-10 and a victim per failover; {count} failovers, "
            f"then {shortcut_count} with the dead-holder shortcut")
        background = [bench.new_strategy(f"live-{i}") for i in range(BACKGROUND)]
        results = {
            "settings": {"lease_duration_s": 15, "renew_deadline_s": 10, "retry_period_s": 2,
                         "strategies_at_live": BACKGROUND + 1},
            "shortcut_off": bench.series(False, count, background),
        }
        if shortcut_count > 0:
            results["shortcut_on"] = bench.series(True, shortcut_count, background)
    finally:
        bench.close()
        try:
            core.delete_namespace(ns)
        except ApiException:
            pass
    return results


def _has_default_sa(core: client.CoreV1Api, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except ApiException:
        return False


def print_table(res: dict[str, Any]) -> None:
    print(f"\nleader failover after SIGKILL (lease 15s / renew 10s / retry 2s; "
          f"{res['settings']['strategies_at_live']} strategies at live-10)")
    print(f"{'':34} {'first reconcile':>22} {'all strategies':>22} {'halt executed':>22}")
    print(f"{'':34} {'p50 s':>10} {'worst s':>11} {'p50 s':>10} {'worst s':>11} {'p50 s':>10} {'worst s':>11}")
    for key in ("shortcut_off", "shortcut_on"):
        if key not in res:
            continue
        r = res[key]
        cells = [r[k][q] for k in ("first_reconcile", "all_strategies", "halt") for q in ("p50_s", "max_s")]
        title = f"{r['label']} (n={r['n']})"
        print(f"{title:34} " + " ".join(f"{c:>10.2f} " if j % 2 == 0 else f"{c:>10.2f}" for j, c in enumerate(cells)))
    print("(from the SIGKILL; the halt is a CircuitBreakerTripped condition written right after it, executed "
          "when its StatefulSet is seen at replicas 0)")


def main() -> int:
    import localcluster

    cluster = localcluster.LocalCluster()
    started_here = not cluster.is_running()
    cluster.up()
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    sys.path.insert(0, str(ROOT / "tests"))
    from e2e.strategy_env import install_crd

    install_crd(api)
    out_dir = ROOT / ".state" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        res = failover(api, cluster.kubeconfig, out_dir)
    finally:
        if started_here and os.environ.get("BENCH_KEEP_CLUSTER") != "1":
            cluster.down()
    path = out_dir / "results.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, "failover": res}, indent=2))
    print_table(res)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
