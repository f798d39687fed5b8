"""The halt sentinel: a breaker condition written by someone else stops the pod at once.

Why a process of its own: the operator's event loop carries thousands of evaluations, and a
halt that reaches it waits behind whatever that loop is doing (kopf's stream processing, a
burst of scrape answers, a garbage collection). A thread with a loop of its own took that
away but not the rest: it shared the interpreter's lock with the operator's loop, and a
collection or a long call into C held it (measured at a thousand strategies, halts p99 1.7
to 2.5 times a bare client's). The sentinel runs in a child process
(controller/sentinel_process.py) with its own interpreter, API client and watch of the
strategies, and does one thing: when an object carries a breaker condition that `decide()`
will latch as a halt (policy/external.py, the same rule), it scales the strategy's
StatefulSet to 0, the smallest write that stops the pod.

It only ever stops: it never starts a pod, never writes status, never posts an Event. The
strategy's own pass does all of that as before, from the same condition, and it is the
authority: the sentinel is a head start on its first action. Like the pass's own scale-down
sent with its status write (controller/reconcile.py), it acts on a cause the apiserver
holds, so a crash before the pass has written the halt loses nothing: every later pass
decides the same halt from the same condition.

Two rules keep it from fighting the pass:
- it acts only for a strategy this replica leads right now (the election's own deadlines,
  handed to it by the operator; checked again just before the write), so a standby or
  another shard's replica never does;
- before its write it records the resourceVersion it acted on (`record`, which reaches the
  operator through a pipe before the write is sent): a pass deciding
  from an older body reads the strategy fresh (handlers.readable), and a pass already in
  flight with an older body does not scale the StatefulSet back up (Reconciler._actuate).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Optional

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from phasegate.api import contract
from phasegate.policy.external import external_halts_wire, sentinel_stop

from . import telemetry
from .kube import _unread

Key = tuple[str, str]
MERGE = "application/merge-patch+json"


def halt_due(event: Mapping[str, Any]) -> Optional[tuple[Key, str, str]]:
    """(strategy, resourceVersion, what) when a watch event's object carries a breaker
    condition that is a new halt; None for anything else (a deletion, a bookmark, no such
    condition, one a hold already answers)."""
    if event.get("type") not in ("ADDED", "MODIFIED"):
        return None
    obj = event.get("object")
    if not isinstance(obj, Mapping) or obj.get("kind") != contract.KIND:
        return None
    halts = external_halts_wire(obj.get("status"))
    meta = obj.get("metadata") or {}
    ns, name, rv = meta.get("namespace"), meta.get("name"), meta.get("resourceVersion")
    if not halts or not ns or not name or not rv:
        return None
    return (ns, name), str(rv), ", ".join(halts)


def signature(obj: Mapping[str, Any], what: str) -> str:
    """Which trip this is: a condition set again later (a new lastTransitionTime) is a new one."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return what + "|" + "|".join(
        str(c.get("lastTransitionTime")) for c in conds if isinstance(c, Mapping) and c.get("type") in what.split(", ")
    )


Record = Callable[[Key, Optional[str]], None]
Count = Callable[[str], None]


HALT_RESULTS = ("scaled", "absent", "error")


def count_here(result: str) -> None:
    """The sentinel's counters in this process's registry (what `count` does by default);
    anything else is not a series of ours and is dropped."""
    if result == "restart":
        telemetry.SENTINEL_WATCH_RESTARTS.inc()
    elif result == "fenced":
        telemetry.FENCED_WRITES.labels("sentinel-scale").inc()
    elif result in HALT_RESULTS:
        telemetry.SENTINEL_HALTS.labels(result).inc()


class Sentinel:
    """Watches strategies and scales the StatefulSet of each new external halt to 0, where
    `leading(namespace, name)` says this replica acts on it. It runs in a process of its own
    (controller/sentinel_process.py), on that process's only event loop.

    `record(key, rv)` is told the resourceVersion it acts on before each write (None when the
    strategy is gone); `count(result)` each outcome (scaled, absent, error, fenced, restart)."""

    def __init__(self, client_factory: Callable[[], Awaitable[Any]], close: Callable[[Any], Awaitable[None]], *,
                 namespace: Optional[str], leading: Callable[[str, str], bool], record: Record,
                 count: Count = count_here, watch_timeout: int = 300) -> None:
        self._client, self._close = client_factory, close
        self.namespace = namespace
        self.leading = leading
        self.record = record
        self.count = count
        self.watch_timeout = watch_timeout
        self._acted: dict[Key, str] = {}
        self.log = telemetry.log_for("-", "-")

    async def serve(self) -> None:
        api = await self._client()
        try:
            rv: Optional[str] = None
            while True:
                try:
                    rv = await self._watch(api, rv)
                except asyncio.CancelledError:
                    raise
                except ApiException as exc:
                    if exc.status == 410:  # too old: start over from a fresh list
                        rv = None
                        continue
                    self._failed(exc)
                    await asyncio.sleep(1.0)
                except Exception as exc:  # the stream broke: watch again from where it was
                    self._failed(exc)
                    await asyncio.sleep(1.0)
        finally:
            await self._close(api)

    def _failed(self, exc: BaseException) -> None:
        self.count("restart")
        self.log.warning("halt sentinel: the watch failed, watching again", error=str(exc)[:300])

    async def _watch(self, api: Any, rv: Optional[str]) -> Optional[str]:
        """One watch request, from `rv` (None: every strategy as ADDED first); the last
        resourceVersion seen, to go on from."""
        custom = client.CustomObjectsApi(api)
        kwargs: dict[str, Any] = dict(watch=True, allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                                      _preload_content=False)
        if rv:
            kwargs["resource_version"] = rv
        if self.namespace:
            call = custom.list_namespaced_custom_object(contract.GROUP, contract.VERSION, self.namespace,
                                                        contract.PLURAL, **kwargs)
        else:
            call = custom.list_cluster_custom_object(contract.GROUP, contract.VERSION, contract.PLURAL, **kwargs)
        resp = await call
        try:
            if not 200 <= resp.status <= 299:
                raise ApiException(status=resp.status, reason=resp.reason)
            while True:
                line = await resp.content.readline()
                if not line:
                    return rv
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiException(status=int(status.get("code") or 500), reason=status.get("message"))
                obj = event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                await self.on_event(api, event)
        finally:
            resp.release()

    # -- one event

    async def on_event(self, api: Any, event: Mapping[str, Any]) -> None:
        obj = event.get("object") or {}
        if event.get("type") == "DELETED":
            meta = obj.get("metadata") or {}
            key = (meta.get("namespace"), meta.get("name"))
            if key[0] and key[1]:
                self._acted.pop(key, None)  # type: ignore[arg-type]
                self.record(key, None)  # type: ignore[arg-type]
            return
        due = halt_due(event)
        if due is None:
            return
        key, rv, what = due
        sig = signature(obj, what)
        if self._acted.get(key) == sig or not self.leading(*key):
            return
        self._acted[key] = sig
        self.record(key, rv)  # before the write: a pass from an older body reads fresh
        await self.scale_down(api, key, rv, what)

    async def scale_down(self, api: Any, key: Key, rv: str, what: str) -> None:
        ns, name = key
        started = time.monotonic()
        log = telemetry.log_for(ns, name)
        if not self.leading(ns, name):  # fenced like every write: checked again just before it
            self.count("fenced")
            self._acted.pop(key, None)
            return
        try:
            # The stop and what it was for, in one write: the pass halts on it even if the
            # condition is gone before it reads the strategy (policy/external.py).
            stop = {contract.ANNOTATION_SENTINEL_STOP: sentinel_stop(what.split(", "), rv)}
            await _unread(client.AppsV1Api(api).patch_namespaced_stateful_set(
                name, ns, {"metadata": {"annotations": stop}, "spec": {"replicas": 0}}, _content_type=MERGE,
                _preload_content=False,
            ))
        except ApiException as exc:
            if exc.status == 404:  # no StatefulSet (yet): the pass creates none for a halted strategy
                self.count("absent")
                return
            self._acted.pop(key, None)  # a later event tries again; the pass halts meanwhile
            self.count("error")
            log.warning("halt sentinel: the scale-down failed; the strategy's pass halts it", error=str(exc)[:300])
            return
        self.count("scaled")
        # write_ms: how long the apiserver took to answer the stop (the rest of a halt's latency
        # is the watch's delivery of the condition, which this process cannot time).
        log.info("halt sentinel: the pod is stopped; the strategy's pass writes the halt", condition=what,
                 resource_version=rv, write_ms=round((time.monotonic() - started) * 1000, 1))


__all__ = ["Count", "Record", "Sentinel", "count_here", "halt_due", "signature"]
