"""`make bench-scale`: one operator holding BENCH_SCALE_N strategies at a live rung.

What it measures, in one run on the local control plane (started if needed; left as found):

1. baseline: the apiserver's request counters over a quiet window before the operator starts;
2. reconcile: the time from the first create (N in parallel, bounded) until every strategy
   has its StatefulSet at the rung's replicas, `status.phase` shows the rung and kopf's
   finalizer is on it;
3. steady state, over BENCH_SCALE_WINDOW intervals (>= 3) in which the benchmark sends the
   apiserver nothing: operator RSS and CPU from /proc; requests per strategy per interval
   by verb and resource (apiserver_request_total, baseline rate subtracted); status writes
   per strategy per interval; evaluation lag from the scrape server's own clock (gap
   between two scrapes of one pod minus the interval) and from the operator's
   `phasegate_evaluation_lag_seconds` histogram when its /metrics has one;
4. halt latency: a CircuitBreakerTripped condition write to replicas 0 seen on a watch,
   over BENCH_SCALE_HALTS strategies, against the floor client of benchmarks/halt_latency.py
   in batches alternating with it;
5. breach-to-halt: the scrape server starts serving a portfolio value past the drawdown
   limit for one strategy; the time until its replicas are 0, over BENCH_SCALE_BREACHES;
6. memory census: what each replica's heap holds by object type (controller/census.py,
   SIGUSR2), and by source line when the operator runs with PHASEGATE_TRACEMALLOC=<frames>.

Prints a summary and writes .state/bench/scale-<N>.json. See docs/operations.md (sizing).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "cluster"))
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "tests"))

import urllib3  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from benchmarks import scale_stats as st  # noqa: E402
from benchmarks.halt_latency import ZeroWatcher, floor_client, trip  # noqa: E402
from phasegate.api import contract, parse_duration  # noqa: E402

import localcluster  # noqa: E402
from operator_proc import OperatorProcess  # noqa: E402

G, V, P = contract.GROUP, contract.VERSION, contract.PLURAL
CAPITAL = 1_000_000
RUNG = {"name": "live-10", "mode": "live", "fraction": 0.10}
# Past the 10% drawdown limit (13%, severity medium), not past the 20% daily loss limit:
# a plain halt, not the emergency sequence (which a critical breach would start).
BREACH_VALUE = CAPITAL * RUNG["fraction"] * 0.87
LAG_HISTOGRAM = "phasegate_evaluation_lag_seconds"


def env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: not a whole number; set e.g. {name}={default}") from None
    if value < minimum:
        raise SystemExit(f"{name}={value}: must be >= {minimum}; set e.g. {name}={max(default, minimum)}")
    return value


class Settings:
    def __init__(self) -> None:
        self.n = env_int("BENCH_SCALE_N", 1000)
        raw_interval = os.environ.get("BENCH_SCALE_INTERVAL", "10s")
        try:
            self.interval = parse_duration(raw_interval).total_seconds()
        except ValueError as exc:
            raise SystemExit(f"BENCH_SCALE_INTERVAL={raw_interval!r}: {exc}; write a duration such as 10s") from None
        self.interval_text = raw_interval
        self.window_intervals = env_int("BENCH_SCALE_WINDOW", 6, minimum=3)
        self.baseline_s = env_int("BENCH_SCALE_BASELINE_SECONDS", 30, minimum=5)
        self.halts = env_int("BENCH_SCALE_HALTS", 30)
        self.breaches = env_int("BENCH_SCALE_BREACHES", 20)
        self.parallel = env_int("BENCH_SCALE_PARALLEL", 16)
        self.metrics_port = env_int("BENCH_SCALE_METRICS_PORT", 0, minimum=0)
        self.profile = os.environ.get("BENCH_SCALE_PROFILE", "").strip().lower() in ("1", "true", "yes")
        # BENCH_SCALE_REPLICAS > 1: that many operator processes split the strategies into
        # BENCH_SCALE_SHARDS shards (default: one per replica), as `--shards` deploys them.
        self.replicas = env_int("BENCH_SCALE_REPLICAS", 1)
        self.shards = env_int("BENCH_SCALE_SHARDS", self.replicas)
        # As deployed (the chart's two replicas elect a leader): a lone operator still renews
        # its Lease and fences its own writes when a renewal is late, which load can cause.
        self.leader_elect = os.environ.get("BENCH_SCALE_LEADER_ELECT", "true").strip().lower() not in ("0", "false", "no")
        if self.halts + self.breaches > self.n:
            raise SystemExit(
                f"BENCH_SCALE_HALTS ({self.halts}) + BENCH_SCALE_BREACHES ({self.breaches}) strategies are halted, "
                f"more than BENCH_SCALE_N={self.n}: raise BENCH_SCALE_N or lower the other two"
            )


def log(msg: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def strategy(name: str, s: Settings, metrics_port: int) -> dict[str, Any]:
    """A strategy whose ladder starts at a live rung and whose ceiling is that rung: the
    operator's own first pass puts it at live-10 (no fabricated status), and from then on
    every evaluation is a live one: scrape, all seven risk limits, flow-adjusted risk
    book, status write: the work a strategy that climbed the ladder costs for weeks."""
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "labels": {"phasegate.dev/bench": "scale"}},
        "spec": {
            "capital": str(CAPITAL),
            "account": "DU-BENCH",
            "maxFraction": RUNG["fraction"],
            # no nodeSelector or toleration: the pod lands on a kwok node (Running, nothing runs)
            "template": {"image": "bench/none:scale", "metricsPort": metrics_port},
            "phases": [{**RUNG, "minDuration": "30d"}, {"name": "live-35", "mode": "live", "fraction": 0.35}],
            "riskLimits": {
                "maxDrawdown": {"threshold": 0.10, "action": "halt"},
                "maxDailyLoss": {"threshold": 0.20, "action": "halt"},
                "maxPositionFraction": {"threshold": 0.05, "action": "reduce"},
                "minCashFraction": {"threshold": 0.10, "action": "pause"},
                "maxPositionDiscrepancy": {"threshold": 0.05, "action": "halt"},
                "maxOrderRate": {"threshold": 120, "action": "halt"},
                "maxErrorRate": {"threshold": 10, "action": "halt"},
            },
            "analysis": {"interval": s.interval_text, "timeout": "2s"},
            "terminationGracePeriod": "5s",
        },
    }


def floor_strategy(name: str, metrics_port: int, s: Settings) -> dict[str, Any]:
    body = strategy(name, s, metrics_port)
    body["metadata"]["labels"] = {"phasegate.dev/bench": "floor"}
    return body


# ---------------------------------------------------------------- the scrape server


class ScrapeServer:
    def __init__(self, port: int, capital: float, log_path: Path) -> None:
        cmd = [sys.executable, "-m", "benchmarks.scale_server", "--port", str(port), "--capital", str(capital)]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the scrape server did not start; see {log_path}")
        self.port = int(json.loads(line)["port"])
        self.base = f"http://127.0.0.1:{self.port}/bench"

    def _call(self, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def scrapes(self) -> dict[str, list[float]]:
        return self._call("/scrapes")["scrapes"]

    def set_value(self, ip: str, value: float | None) -> float:
        return self._call("/set", {"ip": ip, "portfolio_value": value})["at"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# ---------------------------------------------------------------- apiserver and /proc


class ApiserverMetrics:
    """GET /metrics of the kube-apiserver with the admin token of the cluster's kubeconfig."""

    def __init__(self, cluster: localcluster.LocalCluster) -> None:
        kc = json.loads(cluster.kubeconfig.read_text())
        self.token = kc["users"][0]["user"]["token"]
        self.url = kc["clusters"][0]["cluster"]["server"] + "/metrics"
        self.ctx = ssl.create_default_context(cafile=str(cluster.state_dir / "pki" / "ca.crt"))
        self.reads = 0

    def read(self) -> dict[st.RequestKey, float]:
        req = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30, context=self.ctx) as r:
            text = r.read().decode()
        self.reads += 1
        return st.apiserver_requests(text)


# Each read is counted by the apiserver after it answered: of two reads framing a window,
# exactly one falls inside it. That is the benchmark's only request in a measured window.
OWN_READ_KEY = ("GET", "nonresource:/metrics")
OWN_READ = {OWN_READ_KEY: 1.0}


class ProcSampler:
    """RSS (every second) and CPU time of the operator's processes summed, from /proc/<pid>/stat.

    `groups`: each replica's processes, the operator first (its halt sentinel's process with
    it): a replica's memory is the group's."""

    def __init__(self, groups: list[list[int]]) -> None:
        self.groups = groups
        self.pids = [pid for group in groups for pid in group]
        self.rss: list[int] = []
        self.stop = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.clk = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _stat(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:  # a sentinel process started again: the old one's figures end
            return "0 (gone) X" + " 0" * 49

    def stat(self) -> tuple[float, int]:
        stats = [st.proc_stat(self._stat(pid)) for pid in self.pids]
        return sum(t for t, _ in stats), sum(r for _, r in stats)

    def child_ticks(self) -> float:
        return sum(st.proc_stat(self._stat(pid))[0] for group in self.groups for pid in group[1:])

    def kernel_ticks(self) -> int:
        return sum(st.proc_kernel_ticks(self._stat(pid)) for pid in self.pids)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.rss.append(self.stat()[1] * self.page)

    def __enter__(self) -> ProcSampler:
        self.t0, (self.ticks0, rss) = time.monotonic(), self.stat()
        self.child_ticks0 = self.child_ticks()
        self.kernel0 = self.kernel_ticks()
        self.rss.append(rss * self.page)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.seconds = time.monotonic() - self.t0
        self.ticks1, rss = self.stat()
        self.child_ticks1 = self.child_ticks()
        self.kernel1 = self.kernel_ticks()
        self.rss.append(rss * self.page)
        # Each replica's own at the end: a sharded fleet's total hides whether shards split it.
        self.rss_each = [sum(st.proc_stat(self._stat(pid))[1] for pid in group) * self.page for group in self.groups]
        self.rss_helpers = sum(st.proc_stat(self._stat(pid))[1] for group in self.groups for pid in group[1:]) * self.page

    def result(self) -> dict[str, Any]:
        return {
            "rss_mib_mean": round(sum(self.rss) / len(self.rss) / 2**20, 1),
            "rss_mib_max": round(max(self.rss) / 2**20, 1),
            "cpu_cores_mean": round(st.cpu_fraction(self.ticks0, self.ticks1, self.seconds, self.clk), 3),
            # System calls (sockets, epoll) and the wake-ups they cost, within cpu_cores_mean.
            "cpu_kernel_share": round((self.kernel1 - self.kernel0) / max(1.0, self.ticks1 - self.ticks0), 3),
            "samples": len(self.rss),
            "processes": len(self.groups),
            "rss_mib_each_at_end": [round(r / 2**20, 1) for r in self.rss_each],
            # Within the above: the replicas' own child processes (the halt sentinel's).
            "rss_mib_child_processes_at_end": round(self.rss_helpers / 2**20, 1),
            "cpu_cores_child_processes": round(
                st.cpu_fraction(self.child_ticks0, self.child_ticks1, self.seconds, self.clk), 3),
        }


def gauge_sum(text: str, prefix: str) -> float | None:
    """The sum of the series named `prefix` in an exposition, None when it has none."""
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines) if lines else None


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class Fleet:
    """The operator: one process, or BENCH_SCALE_REPLICAS sharded ones read as one (their
    metrics summed, their CPU and memory added up)."""

    def __init__(self, s: Settings, kubeconfig: Path, out_dir: Path, tag: str, namespace: str) -> None:
        env = {"PHASEGATE_LEADER_ELECT": "true" if s.leader_elect else "false"}
        if s.replicas > 1:
            env["PHASEGATE_SHARDS"] = str(s.shards)
        self.ops = [
            OperatorProcess(kubeconfig, out_dir / f"scale-operator-{tag}{'' if s.replicas == 1 else f'-{i}'}.log",
                            namespace=namespace, env={**env, "POD_NAME": f"bench-{tag}-{i}"})
            for i in range(s.replicas)
        ]

    def start(self) -> Fleet:
        for op in self.ops:
            op.start()
        return self

    @property
    def pids(self) -> list[int]:
        return [op.proc.pid for op in self.ops if op.proc is not None]

    def process_groups(self) -> list[list[int]]:
        """Each replica's process and its children (the halt sentinel's), as they are now."""
        return [[pid, *children_of(pid)] for pid in self.pids]

    def metrics_text(self) -> str:
        return "\n".join(op.metrics_text() for op in self.ops)

    def gauge_each(self, prefix: str) -> list[float | None]:
        """Each replica's sum of the series named `prefix` (a gauge), None where it has none."""
        return [gauge_sum(op.metrics_text(), prefix) for op in self.ops]

    def census(self, timeout: float = 30.0) -> list[Any]:
        """Each replica's memory census (controller/census.py): SIGUSR2, then its log line."""
        out: list[Any] = []
        for op in self.ops:
            if op.proc is None or op.proc.poll() is not None:
                out.append(None)
                continue
            seen = sum(1 for line in op.log_lines() if line.get("event") == "memory census")
            os.kill(op.proc.pid, signal.SIGUSR2)
            deadline, found = time.monotonic() + timeout, None
            while found is None and time.monotonic() < deadline:
                time.sleep(0.5)
                lines = [line for line in op.log_lines() if line.get("event") == "memory census"]
                found = lines[-1] if len(lines) > seen else None
            out.append(None if found is None else {k: found[k] for k in ("frozen_objects", "unreachable_objects", "types",
                                                                          "allocations", "traced_mib") if k in found})
        return out

    def balanced(self, shards: int) -> bool:
        """Every shard held, and spread evenly (phasegate_shards_held of each replica). Strategies
        created while shards still move would be loaded whole by replicas that later hand them
        over, and a process keeps its memory's high-water mark: the RSS would measure the
        start-up, not the steady state."""
        if len(self.ops) == 1:
            return True
        held = []
        for op in self.ops:
            try:
                text = op.metrics_text()
            except Exception:  # not serving its metrics yet
                return False
            held.append(gauge_sum(text, "phasegate_shards_held") or 0.0)
        return sum(held) == shards and max(held) - min(held) <= 1

    def exited(self) -> list[int]:
        return [op.proc.returncode for op in self.ops if op.proc is not None and op.proc.poll() is not None]

    def stop(self) -> None:
        for op in self.ops:
            op.stop()


# ---------------------------------------------------------------- the steps


def wait(pred: Any, timeout: float, what: str, every: float = 2.0) -> None:
    """Polls `pred` until it holds. An apiserver too busy to answer a poll (a 5xx, a 429) is
    a poll that did not see it yet, not the end of the run: at thousands of objects the
    benchmark's own lists are the first requests it times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except ApiException as exc:
            if exc.status is None or (exc.status < 500 and exc.status != 429):
                raise
            log(f"  (the apiserver answered a poll with {exc.status} {exc.reason}: polling again)")
        # An answer cut off mid-read (a busy apiserver's timeout). Paging the lists instead made
        # it worse at 3000: a paged LIST is read from etcd, an unpaged one from the watch cache.
        except urllib3.exceptions.HTTPError as exc:
            log(f"  (a poll's answer broke off: {str(exc)[:120]}; polling again)")
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def create_all(api: client.ApiClient, ns: str, bodies: list[dict[str, Any]], parallel: int) -> None:
    custom = client.CustomObjectsApi(api)

    def create(body: dict[str, Any]) -> None:
        for attempt in range(5):
            try:
                custom.create_namespaced_custom_object(G, V, ns, P, body)
                return
            except ApiException as exc:
                if exc.status == 409:
                    return
                if exc.status not in (429, 500, 503, 504) or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(create, bodies))


KOPF_FINALIZER = "phasegate.dev/kopf-finalizer"


def reconciled(api: client.ApiClient, ns: str, n: int) -> tuple[int, int, int]:
    """(strategies whose StatefulSet has the rung's replicas, of those also showing the phase,
    of all also carrying kopf's finalizer: until then kopf patches them, and its patches are
    events it processes in full, which would fall into the steady-state window)."""
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    sts = {s.metadata.name for s in apps.list_namespaced_stateful_set(ns).items if s.spec.replicas == 1}
    items = custom.list_namespaced_custom_object(G, V, ns, P)["items"]
    phase = {o["metadata"]["name"] for o in items if (o.get("status") or {}).get("phase") == RUNG["name"]}
    final = {o["metadata"]["name"] for o in items if KOPF_FINALIZER in (o["metadata"].get("finalizers") or [])}
    return len(sts), len(sts & phase), len(sts & phase & final)


def pod_ips(api: client.ApiClient, ns: str) -> dict[str, str]:
    """strategy name -> IP of its Running pod."""
    out = {}
    for pod in client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=contract.LABEL_STRATEGY).items:
        if pod.status.phase == "Running" and pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
            out[pod.metadata.labels[contract.LABEL_STRATEGY]] = pod.status.pod_ip
    return out


def kwok_pod_room(api: client.ApiClient) -> int:
    """Pods the kwok nodes can still take."""
    core = client.CoreV1Api(api)
    nodes = [n.metadata.name for n in core.list_node(label_selector="type=kwok").items]
    from kubernetes.utils import parse_quantity

    # a quantity: the apiserver writes 2000 back as "2k"
    total = sum(int(parse_quantity(core.read_node(n).status.allocatable.get("pods", "0"))) for n in nodes)
    used = sum(1 for p in core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed").items
               if p.spec.node_name in nodes)
    return total - used


def setup_floor(api: client.ApiClient, ns: str, names: list[str], metrics_port: int, s: Settings) -> None:
    """The same strategy objects and StatefulSets made by hand: no operator watches this
    namespace, only the floor client."""
    from phasegate.api import StrategySpec, StrategyStatus
    from phasegate.manifests import Owner, statefulset

    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    for name in names:
        created = custom.create_namespaced_custom_object(G, V, ns, P, floor_strategy(name, metrics_port, s))
        spec = StrategySpec.model_validate(created["spec"])
        status = StrategyStatus.model_validate({"phase": RUNG["name"], "state": "Progressing"})
        apps.create_namespaced_stateful_set(ns, statefulset(spec, status, Owner(name, ns, created["metadata"]["uid"])))


def mirror_status(api: client.ApiClient, op_ns: str, source: str, floor_ns: str, floor_names: list[str]) -> dict[str, int]:
    """Give the floor's strategies the status of one of the operator's: the condition write
    the halt starts from, its watch event and its answer cost the apiserver by the object's
    size, and a floor on objects a tenth the size would time the objects, not the operator."""
    custom = client.CustomObjectsApi(api)
    status = custom.get_namespaced_custom_object(G, V, op_ns, P, source).get("status") or {}
    for name in floor_names:
        custom.patch_namespaced_custom_object_status(G, V, floor_ns, P, name, {"status": status},
                                                     _content_type="application/merge-patch+json")
    sizes = {}
    for key, (ns, name) in (("operator", (op_ns, source)), ("floor", (floor_ns, floor_names[0]))):
        sizes[key] = len(json.dumps(custom.get_namespaced_custom_object(G, V, ns, P, name), separators=(",", ":")))
    return sizes


async def timed_halts(kubeconfig: Path, ns: str, names: list[str], timeout: float,
                      stopped: list[str], trips: list[tuple[str, float]]) -> tuple[list[float], list[str]]:
    """halt_latency.measure, except that a halt not seen within `timeout` is recorded as
    missed instead of ending the run: at scale that is a finding, not an error. A strategy
    already at replicas 0 (an overloaded operator paused and halted it) is not timed: it
    goes into `stopped`."""
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig

    api = await aconfig.new_client_from_config(config_file=str(kubeconfig))
    custom = aclient.CustomObjectsApi(api)
    stop = asyncio.Event()
    watcher = ZeroWatcher(api, ns)
    task = asyncio.create_task(watcher.run(stop))
    await asyncio.wait_for(watcher.listed.wait(), 120)
    out: list[float] = []
    missed: list[str] = []
    try:
        for name in names:
            if name in watcher.seen:
                stopped.append(name)
                continue
            t0 = await trip(custom, ns, name)
            trips.append((name, time.time() - (time.perf_counter() - t0)))
            try:
                out.append(await watcher.wait_zero(name, timeout) - t0)
            except TimeoutError:
                missed.append(name)
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        task.cancel()
        await api.close()
    return out, missed


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


async def halts(
    kubeconfig: Path, op_ns: str, floor_ns: str, op_names: list[str], floor_names: list[str], timeout: float
) -> dict[str, Any]:
    stop = asyncio.Event()
    floor = asyncio.create_task(floor_client(kubeconfig, floor_ns, stop))
    await asyncio.sleep(1.0)
    op_lat: list[float] = []
    floor_lat: list[float] = []
    missed: dict[str, list[str]] = {"operator": [], "floor": []}
    stopped: dict[str, list[str]] = {"operator": [], "floor": []}
    trips: dict[str, list[tuple[str, float]]] = {"operator": [], "floor": []}
    # Small alternating batches, so that machine noise falls on both paths alike.
    for i in range(0, len(op_names), 5):
        if floor.done():  # it has no halt to time without its watch: say why instead of timing out each one
            raise RuntimeError(f"the floor client stopped: {floor.exception()!r}")
        lat, miss = await timed_halts(kubeconfig, op_ns, op_names[i : i + 5], timeout, stopped["operator"],
                                     trips["operator"])
        op_lat += lat
        missed["operator"] += miss
        lat, miss = await timed_halts(kubeconfig, floor_ns, floor_names[i : i + 5], timeout, stopped["floor"],
                                     trips["floor"])
        floor_lat += lat
        missed["floor"] += miss
    stop.set()
    floor.cancel()
    return {
        "operator_ms": st.distribution(op_lat, 1000, 1), "floor_ms": st.distribution(floor_lat, 1000, 1),
        "timeout_s": timeout, "not_halted_within_timeout": missed, "already_stopped": stopped,
        # In the order measured (alternating batches of 5): a tail from one moment of the host shows on both.
        "operator_samples_ms": [round(x * 1000, 1) for x in op_lat],
        "floor_samples_ms": [round(x * 1000, 1) for x in floor_lat],
        # When each condition was written (wall clock, UTC): to line up with the operator's log
        # (the sentinel logs each stop with its write_ms).
        "trips_at": {path: [[name, _utc(at)] for name, at in rows] for path, rows in trips.items()},
    }


async def breaches(kubeconfig: Path, ns: str, targets: dict[str, str], server: ScrapeServer, interval: float) -> dict[str, Any]:
    """Each target's pod starts serving BREACH_VALUE, one a second, so that they fall at
    every point of their strategies' intervals; each is timed to its replicas 0."""
    from kubernetes_asyncio import config as aconfig

    api = await aconfig.new_client_from_config(config_file=str(kubeconfig))
    watcher = ZeroWatcher(api, ns)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    await asyncio.wait_for(watcher.listed.wait(), 120)
    loop = asyncio.get_running_loop()

    timeout = 6 * interval + 60

    stopped: list[str] = []

    async def one(delay: float, name: str, ip: str) -> float | None:
        await asyncio.sleep(delay)
        if name in watcher.seen:  # stopped before its breach (an overloaded operator halted it)
            stopped.append(name)
            return None
        t0 = time.perf_counter()  # CLOCK_MONOTONIC, as the watcher's
        await loop.run_in_executor(None, server.set_value, ip, BREACH_VALUE)
        try:
            return await watcher.wait_zero(name, timeout) - t0
        except TimeoutError:
            return None

    try:
        got = await asyncio.gather(*(one(i * 1.0, n, ip) for i, (n, ip) in enumerate(targets.items())))
    finally:
        stop.set()
        task.cancel()
        await api.close()
    lat = [x for x in got if x is not None]
    missed = [n for n, x in zip(targets, got, strict=True) if x is None and n not in stopped]
    return {"breach_to_halt_ms": st.distribution(lat, 1000, 1), "timeout_s": timeout, "not_halted_within_timeout": missed,
            "already_stopped": stopped}


def steady_state(
    s: Settings, op: Fleet, apis: ApiserverMetrics, server: ScrapeServer, ips: dict[str, str],
    baseline: dict[st.RequestKey, float], baseline_s: float,
) -> dict[str, Any]:
    window = s.window_intervals * s.interval
    op_text0 = op.metrics_text()
    before = apis.read()
    t_start = time.monotonic()
    profiler = start_profile(s, op.pids[0], window)
    with ProcSampler(op.process_groups()) as proc:
        time.sleep(window)
    if profiler is not None:
        profiler.wait(timeout=window + 60)
    t_end = time.monotonic()
    after = apis.read()
    op_text1 = op.metrics_text()
    # Frozen objects are kept until the next full collection (controller/collector.py), cyclic
    # garbage among them: a count that grows with the run, not the fleet, would show it.
    frozen = op.gauge_each("phasegate_gc_frozen_objects")
    seconds = t_end - t_start
    rates = st.per_strategy_per_interval(
        st.counter_delta(before, after), seconds, baseline, baseline_s, s.n, s.interval, own=OWN_READ
    )
    scrapes = server.scrapes()
    evaluations = sum(1 for ip in ips.values() for t in scrapes.get(ip, []) if t_start <= t <= t_end)
    lags: list[float] = []
    for ip in ips.values():
        lags += st.scrape_lags(scrapes.get(ip, []), s.interval, t_start, t_end)
    missed = st.missed_pods(scrapes, ips.values(), t_start, t_end)
    out: dict[str, Any] = {
        "window_s": round(seconds, 1),
        "operator_process": proc.result(),
        "requests_per_strategy_per_interval": rates,
        "requests_per_strategy_per_interval_total": round(sum(rates.values()), 3),
        "status_writes_per_strategy_per_interval": st.status_writes(rates),
        "scrapes_per_second": round(evaluations / seconds, 1),
        # independent of how far behind the operator is: what one evaluation costs
        "requests_per_evaluation": round(sum(rates.values()) * s.n * seconds / s.interval / max(evaluations, 1), 3),
        "operator_counters_in_window": operator_counters(op_text0, op_text1),
        "evaluation_lag_scrape_gap_s": st.distribution(lags),
        "pods_not_scraped_in_window": len(missed),
        "gc_frozen_objects_each_at_end": [None if f is None else int(f) for f in frozen],
    }
    h1 = st.histogram_buckets(op_text1, LAG_HISTOGRAM)
    if h1 is None:
        out["evaluation_lag_operator_histogram_s"] = f"not exported ({LAG_HISTOGRAM} is not on the operator's /metrics)"
    else:
        d = st.bucket_delta(st.histogram_buckets(op_text0, LAG_HISTOGRAM), h1)
        out["evaluation_lag_operator_histogram_s"] = {
            "n": d[-1][1], "p50": round(st.histogram_quantile(d, 0.5), 3), "p99": round(st.histogram_quantile(d, 0.99), 3),
        }
    return out


# The operator's own signs of strain: a write it refused because its lease renewal was
# late (it fences itself), a failed read, a lost status race, a reconcile that raised.
HEALTH_COUNTERS = (
    "phasegate_fenced_writes_total", "phasegate_metrics_read_errors_total",
    "phasegate_status_conflicts_total", "phasegate_reconcile_errors_total",
    "phasegate_status_writes_total", "phasegate_own_write_echoes_total",
    "phasegate_fresh_body_reads_total", "phasegate_elided_bodies_total",
    "phasegate_sentinel_halts_total", "phasegate_sentinel_watch_restarts_total",
)


def start_profile(s: Settings, pid: int, window: float) -> subprocess.Popen[bytes] | None:
    """BENCH_SCALE_PROFILE=1: py-spy samples the operator over the steady-state window into
    .state/bench/scale-profile-<N>.txt (collapsed stacks: a flame graph's input)."""
    if not s.profile:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    out = ROOT / ".state" / "bench" / f"scale-profile-{s.n}.txt"
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(window)), "--rate", "200",
           "--format", "raw", "--nonblocking", "--output", str(out)]
    log(f"profiling the operator into {out}")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# What the operator says of its own pauses: garbage collections, and the time from a change
# by someone else (the benchmark's halts) to the end of the pass that acted on it.
PAUSE_HISTOGRAMS = ("phasegate_gc_pause_seconds", "phasegate_urgent_pass_latency_seconds")


def operator_histograms(text: str, before: str = "") -> dict[str, Any]:
    """The pause histograms of `text`, less what `before` (an earlier read) had counted."""
    out: dict[str, Any] = {}
    for name in PAUSE_HISTOGRAMS:
        b = st.histogram_buckets(text, name)
        if b is not None and before:
            b = st.bucket_delta(st.histogram_buckets(before, name), b)
        if b is None or not b[-1][1]:
            out[name] = "not exported" if b is None else "no observation"
            continue
        top = next(le for le, count in b if count == b[-1][1])  # the smallest bound above every observation
        out[name] = {"n": b[-1][1], "p50": round(st.histogram_quantile(b, 0.5), 4),
                     "p99": round(st.histogram_quantile(b, 0.99), 4), "max_at_most": top}
    return out


def operator_counters(before: str, after: str) -> dict[str, float]:
    return {name: st.counter_sum(after, name) - st.counter_sum(before, name) for name in HEALTH_COUNTERS}


def delete_namespace(api: client.ApiClient, ns: str, parallel: int) -> None:
    """Delete a namespace the operator no longer serves: its strategies' finalizers are
    dropped first (the operator that would remove them is stopped), in parallel, so that
    a thousand objects do not each wait on a finalizer no one will run."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        core.delete_namespace(ns)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    names = [o["metadata"]["name"] for o in custom.list_namespaced_custom_object(G, V, ns, P)["items"]
             if o["metadata"].get("finalizers")]

    def drop(name: str) -> None:
        try:
            custom.patch_namespaced_custom_object(G, V, ns, P, name, {"metadata": {"finalizers": None}})
        except ApiException as exc:
            if exc.status != 404:
                raise

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(drop, names))


def namespace_gone(api: client.ApiClient, ns: str) -> bool:
    try:
        client.CoreV1Api(api).read_namespace(ns)
        return False
    except ApiException as exc:
        return exc.status == 404


# ---------------------------------------------------------------- main


def run(s: Settings) -> dict[str, Any]:
    cluster = localcluster.LocalCluster()
    started_here = not cluster.is_running()
    keep = os.environ.get("BENCH_KEEP_CLUSTER") == "1"
    cluster.up()
    kubeconfig = cluster.kubeconfig
    os.environ["KUBECONFIG"] = str(kubeconfig)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    from e2e.strategy_env import install_crd

    install_crd(api)
    room = kwok_pod_room(api)
    if room < s.n + s.halts:
        raise SystemExit(
            f"the kwok nodes hold {room} pods, fewer than BENCH_SCALE_N={s.n} plus {s.halts} for the floor: "
            f"restart the local cluster (make cluster-down; make cluster) for nodes of {localcluster.KWOK_NODE_PODS} "
            "pods each, or lower BENCH_SCALE_N"
        )
    out_dir = ROOT / ".state" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:5]
    op_ns, floor_ns = f"bench-scale-{tag}", f"bench-scale-floor-{tag}"
    apis = ApiserverMetrics(cluster)
    server = op = None
    namespaces: list[str] = []
    results: dict[str, Any] = {
        "n": s.n, "interval_s": s.interval, "halts": s.halts, "breaches": s.breaches,
        "host": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "python": platform.python_version()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        server = ScrapeServer(s.metrics_port, CAPITAL * RUNG["fraction"], out_dir / f"scale-server-{tag}.log")
        results["metrics_port"] = server.port
        log(f"scrape server on 0.0.0.0:{server.port} (pid {server.proc.pid})")
        for ns in (op_ns, floor_ns):
            client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
            namespaces.append(ns)

        log(f"baseline: {s.baseline_s}s of the control plane without the operator")
        b0 = apis.read()
        t0 = time.monotonic()
        time.sleep(s.baseline_s)
        b1 = apis.read()
        baseline_s = time.monotonic() - t0
        baseline = st.counter_delta(b0, b1)
        baseline[OWN_READ_KEY] = max(0.0, baseline.get(OWN_READ_KEY, 0.0) - OWN_READ[OWN_READ_KEY])
        results["baseline_requests_per_second"] = {
            f"{k[0]} {k[1]}": round(v / baseline_s, 3) for k, v in sorted(baseline.items()) if v
        }
        # After the baseline: the garbage collector's look-ups of the new owners are no part of it.
        floor_names = [f"f{i:04d}" for i in range(s.halts)]
        setup_floor(api, floor_ns, floor_names, server.port, s)

        fleet = f"{s.replicas} operator replicas, {s.shards} shards" if s.replicas > 1 else "the operator"
        log(f"starting {fleet} on {op_ns}; creating {s.n} strategies, {s.parallel} at a time")
        op = Fleet(s, kubeconfig, out_dir, tag, op_ns).start()
        wait(lambda: op.balanced(s.shards), 120, "the shards spread over the replicas", every=0.5)
        results["leader_elect"] = s.leader_elect
        results["replicas"], results["shards"] = s.replicas, s.shards if s.replicas > 1 else 1
        names = [f"s{i:04d}" for i in range(s.n)]
        t_create = time.monotonic()
        create_all(api, op_ns, [strategy(n, s, server.port) for n in names], s.parallel)
        created_s = time.monotonic() - t_create
        last = [0.0]

        def all_reconciled() -> bool:
            with_sts, at_rung, done = reconciled(api, op_ns, s.n)
            if time.monotonic() - last[0] > 15:
                log(f"  {with_sts}/{s.n} StatefulSets at 1 replica, {at_rung}/{s.n} also at phase {RUNG['name']}, "
                    f"{done}/{s.n} also with kopf's finalizer")
                last[0] = time.monotonic()
            return done == s.n

        wait(all_reconciled, 120 + s.n * 2.0, f"all {s.n} strategies reconciled")
        results["reconcile"] = {"created_s": round(created_s, 1), "all_reconciled_s": round(time.monotonic() - t_create, 1)}
        log(f"all {s.n} reconciled in {results['reconcile']['all_reconciled_s']}s (created in {created_s:.1f}s)")

        ips: dict[str, str] = {}

        def all_scraped() -> bool:
            ips.clear()
            ips.update(pod_ips(api, op_ns))
            seen = server.scrapes()  # type: ignore[union-attr]
            scraped = sum(1 for ip in ips.values() if seen.get(ip))
            if time.monotonic() - last[0] > 15:
                log(f"  {len(ips)}/{s.n} pods Running, {scraped}/{s.n} scraped at least once")
                last[0] = time.monotonic()
            return len(ips) == s.n and scraped == s.n

        wait(all_scraped, 120 + 6 * s.interval + s.n * 0.5, f"every one of the {s.n} pods Running and scraped once", every=3.0)
        if len(set(ips.values())) != s.n:
            raise RuntimeError("two strategy pods share an address: the scrape server could not tell them apart")
        time.sleep(2 * s.interval)  # the first evaluations after the create settle

        log(f"steady state: {s.window_intervals} intervals of {s.interval:g}s, no request from the benchmark")
        after_setup = op.metrics_text()
        results["steady_state"] = steady_state(s, op, apis, server, ips, baseline, baseline_s)
        ss = results["steady_state"]
        log(f"  operator RSS {ss['operator_process']['rss_mib_mean']} MiB, CPU {ss['operator_process']['cpu_cores_mean']} cores; "
            f"{ss['requests_per_strategy_per_interval_total']} requests and {ss['status_writes_per_strategy_per_interval']} "
            f"status writes per strategy per interval; lag {ss['evaluation_lag_scrape_gap_s']}")

        log(f"halt latency: {s.halts} CircuitBreakerTripped writes, operator against floor")
        timeout = max(60.0, 6 * s.interval)
        object_bytes = mirror_status(api, op_ns, names[-1], floor_ns, floor_names)
        log(f"  strategy objects as JSON: {object_bytes} bytes (the floor's carry the status of {names[-1]})")
        results["halt_latency"] = asyncio.run(halts(kubeconfig, op_ns, floor_ns, names[: s.halts], floor_names, timeout))
        results["halt_latency"]["object_bytes"] = object_bytes

        log(f"breach-to-halt: {s.breaches} strategies served a portfolio value past the drawdown limit")
        targets = {n: ips[n] for n in names[s.halts : s.halts + s.breaches]}
        results["breach"] = asyncio.run(breaches(kubeconfig, op_ns, targets, server, s.interval))
        text = op.metrics_text()
        results["memory_census_each"] = op.census()
        results["operator_counters_whole_run"] = operator_counters("", text)
        results["operator_histograms_whole_run"] = operator_histograms(text)
        # Without the creation of N strategies: the steady window, the halts and the breaches.
        results["operator_histograms_after_setup"] = operator_histograms(text, after_setup)
    except BaseException as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        log("tearing down: the operator, the scrape server, the namespaces")
        if op is not None and op.exited():
            results["operator_exited"] = op.exited()
        elif op is not None and "operator_counters_whole_run" not in results:
            try:  # a run that failed or was stopped: how strained the operator was up to then
                results["operator_counters_whole_run"] = operator_counters("", op.metrics_text())
                results["reconciled_when_stopped"] = reconciled(api, op_ns, s.n)[1]
            except Exception as exc:
                log(f"could not read the operator's counters: {exc}")
        if op is not None:
            op.stop()
        if server is not None:
            server.stop()
        if started_here and not keep:
            log("stopping the control plane this run started")
            cluster.down()
        else:
            t_del = time.monotonic()
            for ns in namespaces:
                try:
                    delete_namespace(api, ns, s.parallel)
                except Exception as exc:  # the figures matter more than a slow teardown
                    log(f"could not delete namespace {ns}: {exc}")
            try:
                wait(lambda: all(namespace_gone(api, ns) for ns in namespaces), 300, "the benchmark's namespaces to go")
                results["teardown_s"] = round(time.monotonic() - t_del, 1)
                log(f"namespaces deleted in {results['teardown_s']}s")
            except RuntimeError as exc:
                log(f"{exc}; they finish deleting in the background")
        write_results(results, out_dir / f"scale-{s.n}.json")
    return results


def write_results(results: dict[str, Any], path: Path) -> None:
    """Also after a failure: the figures measured before it are kept."""
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["loadavg_at_end"] = os.getloadavg()
    path.write_text(json.dumps(results, indent=2))
    results["_path"] = str(path)



def report(r: dict[str, Any]) -> None:
    ss, h, b = r["steady_state"], r["halt_latency"], r["breach"]["breach_to_halt_ms"]
    p = ss["operator_process"]
    print()
    print(f"phasegate scale benchmark: {r['n']} strategies at {RUNG['name']}, interval {r['interval_s']:g}s, "
          f"{r['host']['cpus']} CPUs, load {r['host']['loadavg_at_start'][0]:.1f} at start")
    rec = r["reconcile"]
    print(f"  reconcile        all {r['n']} in {rec['all_reconciled_s']}s (creates took {rec['created_s']}s)")
    print(f"  operator         RSS {p['rss_mib_mean']} MiB mean ({p['rss_mib_max']} max), CPU {p['cpu_cores_mean']} cores "
          f"over {ss['window_s']}s ({p.get('cpu_kernel_share', 0):.0%} in the kernel)"
          + (f"; each replica {p['rss_mib_each_at_end']} MiB" if p.get("processes", 1) > 1 else "")
          + (f"; of it the halt sentinel's process {p['rss_mib_child_processes_at_end']} MiB, "
             f"{p.get('cpu_cores_child_processes')} cores" if p.get("rss_mib_child_processes_at_end") else ""))
    if ss.get("gc_frozen_objects_each_at_end"):
        print(f"                   objects frozen out of the collector's sight at the window's end: "
              f"{ss['gc_frozen_objects_each_at_end']}")
    print(f"  apiserver        {ss['requests_per_strategy_per_interval_total']} requests per strategy per interval; "
          f"status writes {ss['status_writes_per_strategy_per_interval']}")
    rows = sorted(ss["requests_per_strategy_per_interval"].items(), key=lambda kv: -kv[1])
    small = [v for _, v in rows if v < 0.01]
    for k, v in rows:
        if v >= 0.01:
            print(f"      {v:>8}  {k}")
    if small:
        # the control plane's own sporadic requests (a watch that ends, a lease) that the
        # baseline window did not happen to catch: listed in the JSON file
        print(f"      {round(sum(small), 4):>8}  {len(small)} more rows below 0.01 each")
    lag = ss["evaluation_lag_scrape_gap_s"]
    print(f"  evaluation lag   scrape gap - interval: p50 {lag['p50']}s p99 {lag['p99']}s max {lag['max']}s (n {lag['n']}); "
          f"{ss['pods_not_scraped_in_window']} pods not scraped in the window; {ss['scrapes_per_second']} scrapes/s")
    print(f"                   operator histogram: {ss['evaluation_lag_operator_histogram_s']}")
    print(f"                   {ss['requests_per_evaluation']} requests per evaluation")
    print(f"  operator counts  in the window: {ss['operator_counters_in_window']}")
    print(f"                   whole run: {r['operator_counters_whole_run']}")
    print(f"  operator pauses  whole run: {r.get('operator_histograms_whole_run')}")
    print(f"                   after set-up: {r.get('operator_histograms_after_setup')}")
    print(f"  {'path':28} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, row in (("halt, operator", h["operator_ms"]), ("halt, floor", h["floor_ms"]), ("breach-to-halt", b)):
        print(f"  {name:28} {row['n']:>4} {row['p50']:>9} {row['p99']:>9} {row['max']:>9}")
    for what, missed in (("halt, operator", h["not_halted_within_timeout"]["operator"]),
                         ("halt, floor", h["not_halted_within_timeout"]["floor"]),
                         ("breach-to-halt", r["breach"]["not_halted_within_timeout"])):
        if missed:
            print(f"  NOT HALTED within the timeout ({what}): {len(missed)}: {', '.join(missed)}")
    for what, stopped in (("halt, operator", h.get("already_stopped", {}).get("operator", [])),
                          ("breach-to-halt", r["breach"].get("already_stopped", []))):
        if stopped:
            print(f"  already at replicas 0, not timed ({what}: paused and halted by the operator's own lag rule): "
                  f"{len(stopped)}")
    for i, c in enumerate(r.get("memory_census_each") or []):
        if c:
            heavy = ", ".join(f"{t['type']} {t['kib'] / 1024:.1f} MiB ({t['objects']})" for t in c["types"][:6])
            print(f"  memory, replica {i}: {c['frozen_objects']} frozen objects, {c.get('unreachable_objects')} of "
                  f"them and the young ones garbage; {heavy}")
            for a in (c.get("allocations") or [])[:8]:
                print(f"      {a['kib'] / 1024:7.1f} MiB  {' < '.join(a['at'][:3])}")
    print(f"results: {r['_path']}")


def main() -> int:
    report(run(Settings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
