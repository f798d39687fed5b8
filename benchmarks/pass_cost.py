"""What one evaluation costs the operator in CPU, in process, without a cluster.

`make bench-scale` measures the whole operator on a control plane in about ten minutes, with
the apiserver and kwok on the same two cores. This measures the pass alone in seconds, to
compare code states side by side: the operator's Reconciler, its real scrape source over
one keep-alive client against the benchmark's scrape server (its own process), the real
policy, and a Kube double that answers writes at once. The clock moves one interval per
round, so status writes fall at the cadence of a live strategy (policy/persistence.py).

What it leaves out, on purpose: kopf's handling of watch events (the echo of each status
write), the apiserver's own work, and the event loop's scheduling of thousands of loops.
bench-scale has those.

  BENCH_PASS_N        strategies (200)
  BENCH_PASS_ROUNDS   measured rounds, one interval of the fake clock each (36)
  BENCH_PASS_PROFILE  1: the 25 functions with the most CPU of their own (cProfile)
  BENCH_PASS_MEMORY   1: the 25 source lines holding the most of the fleet's memory once warm
                      (tracemalloc; it slows the run, so its CPU figures are not comparable)

It prints CPU microseconds per evaluation, and writes .state/bench/pass-cost.json.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Optional

from phasegate.api import StrategySpec, contract
from phasegate.controller import telemetry
from phasegate.controller.cache import PodView, StatefulSetView
from phasegate.controller.lean_bodies import STATUS_ELIDED
from phasegate.controller.reconcile import Memo, Reconciler
from phasegate.metrics import make_source
from phasegate.metrics.httpclient import HttpClient

from .scale import CAPITAL, ROOT, ScrapeServer, strategy

INTERVAL = timedelta(seconds=10)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Kube:
    """Answers every call the pass makes at once, and keeps the StatefulSet it was given."""

    def __init__(self) -> None:
        self.rv = 1000
        self.statefulsets: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, int] = {}

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def fence(self, op: str, target: str) -> None:
        return None

    async def patch_status(self, ns: str, name: str, status: dict[str, Any], rv: str) -> dict[str, Any]:
        self._count("patch_status")
        self.rv += 1
        return {"metadata": {"resourceVersion": str(self.rv)}}

    async def apply(self, obj: dict[str, Any]) -> None:
        self._count(f"apply {obj['kind']}")
        if obj["kind"] == "StatefulSet":
            self.statefulsets[obj["metadata"]["name"]] = obj

    async def scale_statefulset(self, ns: str, name: str, replicas: int) -> bool:
        self._count("scale")
        return True

    async def create_event(self, **_: Any) -> None:
        self._count("event")

    async def delete_network_policy(self, ns: str, name: str) -> None:
        self._count("delete networkpolicy")

    async def dry_run_pod(self, ns: str, pod: dict[str, Any]) -> Optional[str]:
        self._count("dry run")
        return None

    async def get_job(self, ns: str, name: str) -> None:
        self._count("get job")
        return None

    async def create_job(self, job: dict[str, Any]) -> None:
        self._count("create job")

    async def job_pods(self, ns: str, job: str) -> list[Any]:
        return []


class Strategy:
    def __init__(self, i: int, port: int) -> None:
        self.name = f"pass-{i:05d}"
        self.body = strategy(self.name, SimpleNamespace(interval_text="10s"), port)  # type: ignore[arg-type]
        self.body["metadata"].update(namespace="bench", uid=f"uid-{i:08d}", resourceVersion="1", generation=1)
        self.ip = f"127.101.{i // 250}.{i % 250 + 1}"
        self.memo = Memo()
        self.pod: Optional[PodView] = None
        self.sts: Optional[StatefulSetView] = None

    def children(self, kube: Kube) -> None:
        """The pod and StatefulSet the watch caches would hold once the StatefulSet applied ran."""
        obj = kube.statefulsets.get(self.name)
        if obj is None:
            return
        notes = obj["spec"]["template"]["metadata"].get("annotations") or {}
        self.sts = StatefulSetView(name=self.name, replicas=obj["spec"]["replicas"],
                                   desired_key=obj["metadata"]["annotations"][contract.ANNOTATION_DESIRED_KEY])
        self.pod = PodView(name=f"{self.name}-0", uid=f"pod-{self.name}", ip=self.ip, ready=True,
                           notes={k: v for k, v in notes.items() if k.startswith("phasegate.dev/")})

    def echo(self) -> None:
        """What kopf hands the next pass: the object at the resourceVersion of our last write,
        its status elided as controller/lean_bodies.py does to our own write echoed back."""
        rv = self.memo.persisted_rv
        if rv and self.body["metadata"]["resourceVersion"] != rv:
            self.body["metadata"]["resourceVersion"] = rv
            self.body.pop("status", None)
            self.body[STATUS_ELIDED] = rv


def _memory_top(before: tracemalloc.Snapshot, n: int, top: int = 25) -> str:
    """The lines that allocated what the fleet still holds, per strategy."""
    after = tracemalloc.take_snapshot()
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno")
    lines = [f"{'KiB/strategy':>12}  {'blocks':>8}  where"]
    for stat in stats[:top]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size_diff / n / 1024:12.2f}  {stat.count_diff:8d}  {frame.filename}:{frame.lineno}")
    total = sum(s.size_diff for s in stats)
    lines.append(f"{total / n / 1024:12.2f}  total")
    return "\n".join(lines)


async def run(n: int, rounds: int, profile: bool, memory: bool = False) -> dict[str, Any]:
    log_path = ROOT / ".state" / "bench" / "pass-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = ScrapeServer(0, CAPITAL, log_path)
    client = HttpClient()
    clock = [datetime(2026, 12, 1, tzinfo=UTC)]
    kube = Kube()
    sources: dict[str, Any] = {}

    def source_for(spec: StrategySpec) -> Any:
        if "scrape" not in sources:
            sources["scrape"] = make_source(spec, client=client)
        return sources["scrape"]

    rss0 = _rss()
    before = tracemalloc.take_snapshot() if memory else None
    rec = Reconciler(kube, source_for, clock=lambda: clock[0], identity="bench")  # type: ignore[arg-type]
    fleet = [Strategy(i, server.port) for i in range(n)]
    slots = asyncio.Semaphore(256)

    async def one(s: Strategy, read: bool) -> None:
        async with slots:
            s.echo()
            await rec.reconcile(dict(s.body), memo=s.memo, trigger="interval" if read else "event", read_metrics=read,
                                pod=s.pod, sts=s.sts)
            s.children(kube)

    async def round_(read: bool) -> None:
        await asyncio.gather(*(one(s, read) for s in fleet))
        clock[0] += INTERVAL

    try:
        await round_(False)  # the first pass of each: status and children made
        for _ in range(3):  # warm: at the live rung, metrics read, caches filled
            await round_(True)
        held = _rss() - rss0  # what the fleet's bodies, memos and caches hold, at the rung
        memory_top = _memory_top(before, n) if before is not None else None
        calls_before = dict(kube.calls)
        prof = cProfile.Profile() if profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        for _ in range(rounds):
            await round_(True)
        if prof is not None:
            prof.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await client.close()
        server.stop()
    evaluations = n * rounds
    phases = {s.memo.status.phase if s.memo.status else None for s in fleet}
    out: dict[str, Any] = {
        "strategies": n, "rounds": rounds, "evaluations": evaluations,
        "cpu_us_per_evaluation": round(cpu / evaluations * 1e6, 1),
        "wall_us_per_evaluation": round(wall / evaluations * 1e6, 1),
        "calls_per_evaluation": {k: round((v - calls_before.get(k, 0)) / evaluations, 4)
                                 for k, v in sorted(kube.calls.items()) if v != calls_before.get(k, 0)},
        "phases": sorted(p or "-" for p in phases),
        "rss_kib_per_strategy": round(held / n / 1024, 1),
    }
    if prof is not None:
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats(os.environ.get("BENCH_PASS_SORT") or "tottime").print_stats(int(os.environ.get("BENCH_PASS_TOP") or 25))
        if os.environ.get("BENCH_PASS_CALLERS"):  # who calls the functions matching this
            stats.print_callers(os.environ["BENCH_PASS_CALLERS"])
        out["profile"] = buf.getvalue()
    if memory_top is not None:
        out["memory"] = memory_top
    return out


def main() -> None:
    # The operator's JSON logging, into a file: its cost is part of a pass, its lines are not output.
    log_file = ROOT / ".state" / "bench" / "pass-operator.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # configure_logging binds the stream it finds in sys.stdout; the report stays on stdout.
    sys.stdout, report = open(log_file, "w"), sys.stdout  # noqa: SIM115 (the operator's log, open to the end)
    try:
        telemetry.configure_logging(False)
    finally:
        sys.stdout = report
    n = int(os.environ.get("BENCH_PASS_N") or 200)
    rounds = int(os.environ.get("BENCH_PASS_ROUNDS") or 36)
    profile = os.environ.get("BENCH_PASS_PROFILE") == "1"
    memory = os.environ.get("BENCH_PASS_MEMORY") == "1"
    if memory:
        tracemalloc.start()
    result = asyncio.run(run(n, rounds, profile, memory))
    text = result.pop("profile", None)
    memory_text = result.pop("memory", None)
    path = ROOT / ".state" / "bench" / "pass-cost.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench-pass] {result['evaluations']} evaluations of {n} strategies at {', '.join(result['phases'])}: "
          f"{result['cpu_us_per_evaluation']} us CPU each ({result['wall_us_per_evaluation']} us wall)")
    print(f"[bench-pass] resident memory per strategy (body, memo, caches): {result['rss_kib_per_strategy']} KiB")
    print(f"[bench-pass] calls per evaluation: {result['calls_per_evaluation']}")
    if text:
        print(text)
    if memory_text:
        print(memory_text)
    print(f"[bench-pass] written to {path}")


if __name__ == "__main__":
    main()
