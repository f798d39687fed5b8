"""Halt latency: from the moment a breaker condition is written to the moment the
strategy's StatefulSet has replicas 0.

Two paths measured side by side in one run, the same way, on the same control plane:
- operator: `phasegate run` managing N strategies in its namespace;
- floor: a minimal client that watches the same resource and patches the StatefulSet
  directly (no status write, no Event, no decision): the least any controller can do.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch

G, V, P = "phasegate.dev", "v1alpha1", "tradingstrategies"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(name: str, values: list[float]) -> dict[str, Any]:
    return {
        "path": name,
        "n": len(values),
        "p50_ms": round(quantile(values, 0.5) * 1000, 1),
        "p99_ms": round(quantile(values, 0.99) * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else float("nan"),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
    }


async def floor_client(kubeconfig: Path, namespace: str, stop: asyncio.Event) -> None:
    """Watch strategies; when CircuitBreakerTripped is True, scale the StatefulSet to 0."""
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    done: set[str] = set()
    try:
        while not stop.is_set():
            w = watch.Watch()
            try:
                async with w.stream(custom.list_namespaced_custom_object, G, V, namespace, P, timeout_seconds=60) as stream:
                    async for ev in stream:
                        obj = ev["object"]
                        name = obj["metadata"]["name"]
                        conds = (obj.get("status") or {}).get("conditions") or []
                        tripped = any(c.get("type") == "CircuitBreakerTripped" and c.get("status") == "True" for c in conds)
                        if tripped and name not in done:
                            done.add(name)
                            await apps.patch_namespaced_stateful_set(
                                name, namespace, {"spec": {"replicas": 0}}, _content_type="application/merge-patch+json"
                            )
                        if stop.is_set():
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a watch a busy apiserver broke off (or a 410): list and watch again
                print(f"floor client: the watch failed ({str(exc)[:200]}), watching again", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5)
    finally:
        await api.close()


class ZeroWatcher:
    """Notes when each StatefulSet in a namespace is first seen with replicas 0.

    It lists first (raw JSON) and watches from the list's resourceVersion, and says when the
    list is in (`listed`): in a namespace of thousands of StatefulSets the watch's own initial
    events took seconds to turn into models, and a halt timed meanwhile measured that."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future] = {}
        self.listed = asyncio.Event()

    def _zero(self, name: str) -> None:
        if name not in self.seen:
            self.seen[name] = time.perf_counter()
            fut = self.waiters.pop(name, None)
            if fut and not fut.done():
                fut.set_result(self.seen[name])

    async def _list(self) -> str:
        resp = await self.apps.list_namespaced_stateful_set(self.namespace, _preload_content=False)
        try:
            body = json.loads(await resp.read())
        finally:
            resp.release()
        for item in body.get("items") or []:
            if (item.get("spec") or {}).get("replicas") == 0:
                self._zero(item["metadata"]["name"])
        return body["metadata"]["resourceVersion"]

    async def run(self, stop: asyncio.Event) -> None:
        rv = ""
        while not stop.is_set():
            if not rv:
                rv = await self._list()
                self.listed.set()
            w = watch.Watch()
            try:
                async with w.stream(self.apps.list_namespaced_stateful_set, self.namespace, resource_version=rv,
                                    timeout_seconds=60) as stream:
                    async for ev in stream:
                        sts = ev["object"]
                        rv = sts.metadata.resource_version or rv
                        if sts.spec.replicas == 0:
                            self._zero(sts.metadata.name)
                        if stop.is_set():
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # too old (410) or broken off: list again
                print(f"zero watcher: the watch failed ({str(exc)[:200]}), listing again", file=sys.stderr, flush=True)
                rv = ""
                await asyncio.sleep(0.5)

    async def wait_zero(self, name: str, timeout: float) -> float:
        if name in self.seen:
            return self.seen[name]
        fut = asyncio.get_running_loop().create_future()
        self.waiters[name] = fut
        return await asyncio.wait_for(fut, timeout)


async def trip(custom: client.CustomObjectsApi, namespace: str, name: str) -> float:
    """Write CircuitBreakerTripped=True into status; returns the time just before the write."""
    for _ in range(20):
        obj = await custom.get_namespaced_custom_object(G, V, namespace, P, name)
        conds = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] != "CircuitBreakerTripped"]
        conds.append({
            "type": "CircuitBreakerTripped", "status": "True", "reason": "Benchmark", "message": "halt latency benchmark",
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": {"conditions": conds}}
        t0 = time.perf_counter()
        try:
            await custom.patch_namespaced_custom_object_status(
                G, V, namespace, P, name, body, _content_type="application/merge-patch+json"
            )
            return t0
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
            await asyncio.sleep(0.05)
    raise RuntimeError(f"could not trip {name}: conflicts")


async def measure(kubeconfig: Path, namespace: str, names: list[str], pause: float = 0.3) -> list[float]:
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    custom = client.CustomObjectsApi(api)
    stop = asyncio.Event()
    watcher = ZeroWatcher(api, namespace)
    task = asyncio.create_task(watcher.run(stop))
    await asyncio.wait_for(watcher.listed.wait(), 120)
    out = []
    try:
        for name in names:
            t0 = await trip(custom, namespace, name)
            t1 = await watcher.wait_zero(name, 30)
            out.append(t1 - t0)
            await asyncio.sleep(pause)
    finally:
        stop.set()
        task.cancel()
        await api.close()
    return out
