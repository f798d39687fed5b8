"""The few Kubernetes API calls the operator makes, on the async client.

Deliberately absent: any call that reads a Secret (safety rule 7).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Optional

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from phasegate.api import contract

MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "phasegate"


class Urgency:
    """Whether one pass's API calls skip the rate limit. Raised while they wait, when a change
    by someone else arrives for the same strategy: the urgent pass that follows must not
    queue behind its own strategy's routine pass, held back by the limit."""

    def __init__(self, urgent: bool = False) -> None:
        self.urgent = urgent
        self._raised: Optional[asyncio.Event] = None

    def raise_(self) -> None:
        self.urgent = True
        if self._raised is not None:
            self._raised.set()

    async def wait(self, timeout: float) -> None:
        """Sleep `timeout` seconds, or less if raised meanwhile."""
        if self._raised is None:
            self._raised = asyncio.Event()
        try:
            await asyncio.wait_for(self._raised.wait(), timeout)
        except TimeoutError:
            pass


# The urgency of the pass a call is made for: a pass that carries a halt or any other urgent
# change never has its API calls queued behind routine ones (None outside a pass: throttled).
PRIORITY: ContextVar[Optional[Urgency]] = ContextVar("phasegate_priority", default=None)


def make_urgent() -> None:
    """From here on, this pass's calls skip the rate limit (a halt it found is acted on now)."""
    urgency = PRIORITY.get()
    if urgency is None:
        PRIORITY.set(Urgency(True))
    else:
        urgency.raise_()


class RateLimiter:
    """Client-side token bucket (QPS, burst), as client-go's: a fleet of strategies must not
    flood the apiserver. Calls of an urgent pass (PRIORITY) pass at once, even one that was
    already waiting when its pass became urgent."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = max(qps, 0.001), max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    async def acquire(self) -> None:
        urgency = PRIORITY.get()
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.qps)
            self.stamp = now
            if urgency is not None and urgency.urgent:
                self.tokens -= 1  # counted, never waited for
                return
            if self.tokens >= 1:
                self.tokens -= 1
                return
            wait = (1 - self.tokens) / self.qps
            if urgency is None:
                await asyncio.sleep(wait)
            else:
                await urgency.wait(wait)


class Conflict(Exception):
    """The status changed since it was read: re-read and decide again."""


async def load_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()
    return client.ApiClient()


async def close_client(api: Any) -> None:
    await api.close()


def no_env_lookups(api: Any) -> None:
    # kubernetes_asyncio's session reads proxy settings and ~/.netrc on every request
    # (trust_env): measurable CPU at thousands of calls a minute, and nothing we use.
    session = getattr(getattr(api, "rest_client", None), "pool_manager", None)
    if session is not None and hasattr(session, "_trust_env"):
        session._trust_env = False


def _unfenced(op: str, target: str) -> None:
    return None


async def _answer(call: Awaitable[Any]) -> bytes:
    """The body of a call made with `_preload_content=False`, read to the end (so that the
    connection is kept alive); ApiException on a status other than 2xx, as the client's
    models would have raised."""
    resp = await call
    try:
        data: bytes = await resp.read()
        if not 200 <= resp.status <= 299:
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = data.decode("utf-8", "replace")
            raise exc
        return data
    finally:
        resp.release()


async def _unread(call: Awaitable[Any]) -> None:
    """A write whose answer we do not need: the status is checked, the body is not turned into
    the client's models (a StatefulSet's took milliseconds, on the halt path among others)."""
    await _answer(call)


# The apiserver writes an object's JSON with its keys sorted and no spaces: metadata ends with
# resourceVersion and uid, then spec begins. The whole tail is matched, so that nothing inside
# metadata can pass for it (an annotation named resourceVersion, or spec: a map of strings
# closes with `}` followed by another metadata key, never by `,"spec":`).
_RESOURCE_VERSION = re.compile(rb'"resourceVersion":"([0-9]+)","uid":"[^"\\]*"\},"spec":')


def written_version(data: bytes) -> str:
    """The resourceVersion of the object a write answered with, without decoding all of it
    (a strategy's body is tens of kilobytes; decoding it on every status write was 8% of the
    operator's CPU). Anything unexpected is decoded in full."""
    m = _RESOURCE_VERSION.search(data) if data.startswith(b'{"apiVersion":') else None
    if m is not None:
        return m.group(1).decode()
    return str((json.loads(data).get("metadata") or {}).get("resourceVersion") or "")


class Kube:
    def __init__(self, api: client.ApiClient, fence: Callable[[str, str], None] = _unfenced,
                 limiter: Optional[RateLimiter] = None) -> None:
        self.api = api
        self.limiter = limiter or RateLimiter(qps=100.0, burst=200)
        # Called before every write with (operation, object); raises when this process may not
        # write now (leader election: controller/leader.py). Reads are never fenced.
        self.fence = fence
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.events = client.EventsV1Api(api)
        self.networking = client.NetworkingV1Api(api)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> str:
        """Replace what we own of status, only if nobody wrote since `resource_version`;
        the resourceVersion the write produced."""
        await self.limiter.acquire()
        self.fence("patch_status", f"{namespace}/{name}")
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            data = await _answer(self.custom.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, body, _content_type=MERGE,
                _preload_content=False,
            ))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(name) from exc
            raise
        return written_version(data)

    async def get_strategy(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        await self.limiter.acquire()
        try:
            return await self.custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list_strategies(self, namespace: str, page: int = 500) -> AsyncIterator[dict[str, Any]]:
        """Every strategy of a namespace, a page (`limit`) per request."""
        token: Optional[str] = None
        while True:
            await self.limiter.acquire()
            kwargs: dict[str, Any] = {"limit": page}
            if token:
                kwargs["_continue"] = token
            out = await self.custom.list_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, **kwargs
            )
            for item in out.get("items") or []:
                yield item
            token = (out.get("metadata") or {}).get("continue")
            if not token:
                return

    async def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply: idempotent, and it leaves fields others own alone."""
        await self.limiter.acquire()
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        self.fence("apply", f"{kind} {ns}/{name}")
        body = json.loads(json.dumps(obj))
        kwargs = dict(field_manager=FIELD_MANAGER, force=True, _content_type=APPLY, _preload_content=False)
        if kind == "StatefulSet":
            await _unread(self.apps.patch_namespaced_stateful_set(name, ns, body, **kwargs))
        elif kind == "Service":
            await _unread(self.core.patch_namespaced_service(name, ns, body, **kwargs))
        elif kind == "Job":
            await _unread(self.batch.patch_namespaced_job(name, ns, body, **kwargs))
        elif kind == "NetworkPolicy":
            await _unread(self.networking.patch_namespaced_network_policy(name, ns, body, **kwargs))
        else:  # pragma: no cover - a programming error, not a user error
            raise ValueError(f"cannot apply {kind}")

    async def scale_statefulset(self, namespace: str, name: str, replicas: int) -> bool:
        """The halt path: the smallest write that stops the pod. False when there is no StatefulSet."""
        await self.limiter.acquire()
        self.fence("scale", f"StatefulSet {namespace}/{name}")
        try:
            await _unread(self.apps.patch_namespaced_stateful_set(
                name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE, _preload_content=False,
            ))
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def annotate_statefulset(self, namespace: str, name: str, annotations: dict[str, Optional[str]]) -> None:
        """Merge `annotations` into the StatefulSet's (None removes one); a missing one is no error."""
        await self.limiter.acquire()
        self.fence("annotate", f"StatefulSet {namespace}/{name}")
        try:
            await _unread(self.apps.patch_namespaced_stateful_set(
                name, namespace, {"metadata": {"annotations": annotations}}, _content_type=MERGE, _preload_content=False,
            ))
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_network_policy(self, namespace: str, name: str) -> None:
        await self.limiter.acquire()
        self.fence("delete", f"NetworkPolicy {namespace}/{name}")
        try:
            await self.networking.delete_namespaced_network_policy(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def dry_run_pod(self, namespace: str, pod: dict[str, Any]) -> Optional[str]:
        """None when the apiserver would admit this pod; else its refusal, as it said it."""
        await self.limiter.acquire()
        try:
            await self.core.create_namespaced_pod(namespace, pod, dry_run="All")
            return None
        except ApiException as exc:
            if exc.status in (400, 403, 422):
                try:
                    return str(json.loads(exc.body).get("message") or exc.reason)
                except (ValueError, TypeError, AttributeError):
                    return str(exc.reason)
            raise

    async def get_job(self, namespace: str, name: str) -> Optional[Any]:
        await self.limiter.acquire()
        try:
            return await self.batch.read_namespaced_job(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create_job(self, job: dict[str, Any]) -> None:
        await self.limiter.acquire()
        self.fence("create_job", f"{job['metadata']['namespace']}/{job['metadata']['name']}")
        try:
            await self.batch.create_namespaced_job(job["metadata"]["namespace"], job)
        except ApiException as exc:
            if exc.status != 409:  # created by an earlier run of this reconcile
                raise

    async def job_pods(self, namespace: str, job_name: str) -> list[Any]:
        await self.limiter.acquire()
        pods = await self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
        return list(pods.items)

    async def create_event(
        self,
        *,
        namespace: str,
        name: str,
        uid: str,
        event_name: str,
        reason: str,
        note: str,
        action: str,
        event_type: str,
        at: datetime,
    ) -> None:
        """An Event with a fixed name: creating it twice is a no-op, so replays stay exactly-once."""
        await self.limiter.acquire()
        self.fence("create_event", f"{namespace}/{event_name}")
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "eventTime": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": "phasegate.dev/operator",
            "reportingInstance": "phasegate",
            "action": action[:128],
            "reason": reason[:128],
            "note": note[:1024],
            "type": event_type,
            "regarding": {
                "apiVersion": contract.API_VERSION,
                "kind": contract.KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
        }
        try:
            await self.events.create_namespaced_event(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
