"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go and controller-runtime do it.

Every replica is a candidate. Every `retry_period` each one reads the Lease `phasegate-leader`:

- nobody holds it, or the holder let it expire (`renewTime + leaseDurationSeconds < now`): take
  it (holder = this process, `leaseTransitions` + 1);
- this process holds it: renew it (`renewTime` = now);
- someone else holds it and renews it: stand by.

Every write is a `replace` carrying the resourceVersion just read, so of two candidates racing for
the same expired lease exactly one wins; the other gets a 409 and stands by.

Fencing. `leading()` is true only until `renew_deadline` seconds (monotonic) after the START of
the last successful renewal, and the Lease it wrote says it is valid until `renewTime +
lease_duration`, `renewTime` taken at that same start. Since `renew_deadline < lease_duration`,
a leader stops acting (the daemon loops skip their reconcile; every write of the controller's
`Kube` raises `NotLeading`) at least `lease_duration - renew_deadline` seconds before any other
candidate may take the lease, whether it was slow, partitioned from the apiserver or frozen
(SIGSTOP, a VM pause: the monotonic clock runs on, so a resumed process is past its deadline
at once). The margin assumes the candidates' wall clocks agree to within it.

A holder that is known to be dead does not make a successor wait out the lease: the holder
records in an annotation which process it is (kernel boot id, PID namespace, pid, start time),
and a candidate in the same kernel and PID namespace that finds no such process alive takes the
lease at once (a killed local `phasegate run` is replaced at once). Candidates elsewhere (other
pods, other nodes) cannot tell, and wait for the lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Optional, Protocol

LEASE_NAME = "phasegate-leader"
PROCESS_ANNOTATION = "phasegate.dev/holder-process"

# Writes made on behalf of someone else, not as the leader's decision (the Alertmanager
# receiver records a firing alert in status, as a person could): not fenced.
UNFENCED: contextvars.ContextVar[bool] = contextvars.ContextVar("phasegate_unfenced", default=False)


class NotLeading(Exception):
    """This process is not the leader right now: it must not write."""


class LeaseConflict(Exception):
    """The Lease changed since it was read (409), or someone created it first."""


@dataclass(frozen=True)
class ElectionSettings:
    identity: str
    namespace: str
    name: str = LEASE_NAME
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    dead_holder_check: bool = True

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if not (self.lease_duration > self.renew_deadline > self.retry_period > 0):
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0 "
                f"(got {self.lease_duration:g}s / {self.renew_deadline:g}s / {self.retry_period:g}s)"
            )


def default_identity() -> str:
    """The pod's name in a cluster (POD_NAME, from the downward API), else hostname_pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def default_namespace(watched: Optional[str]) -> str:
    return os.environ.get("POD_NAMESPACE") or watched or "default"


@dataclass(frozen=True)
class LeaseRecord:
    holder: str = ""
    duration: int = 0
    acquire_time: Optional[datetime] = None
    renew_time: Optional[datetime] = None
    transitions: int = 0
    process: str = ""
    resource_version: str = ""


class LeaseStore(Protocol):
    async def get(self) -> Optional[LeaseRecord]: ...
    async def create(self, record: LeaseRecord) -> LeaseRecord: ...
    async def update(self, record: LeaseRecord) -> LeaseRecord: ...


# --------------------------------------------------------------------------- the process behind a holder


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot), None when there is no live process."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):  # a zombie is dead, it just was not reaped yet
        return None
    return fields[19] if len(fields) > 19 else None


def process_fingerprint(pid: Optional[int] = None) -> str:
    """boot id / PID namespace / pid / start time of a process ("" when /proc cannot tell)."""
    pid = os.getpid() if pid is None else pid
    try:
        boot = _read("/proc/sys/kernel/random/boot_id")
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    start = _start_time(pid)
    return f"{boot}/{pidns}/{pid}/{start}" if start else ""


def holder_is_dead(fingerprint: str) -> bool:
    """True only when the holder's process is certainly gone: same kernel, same PID
    namespace, and no process with that pid and start time. Anything else: unknown (False)."""
    mine = process_fingerprint()
    if not fingerprint or not mine:
        return False
    try:
        boot, pidns, pid, start = fingerprint.rsplit("/", 3)
        my_boot, my_pidns, _, _ = mine.rsplit("/", 3)
        pid_n = int(pid)
    except ValueError:
        return False
    if (boot, pidns) != (my_boot, my_pidns):
        return False
    return _start_time(pid_n) != start


# --------------------------------------------------------------------------- the elector


class LeaderElector:
    def __init__(
        self,
        store: LeaseStore,
        settings: ElectionSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        is_dead: Callable[[str], bool] = holder_is_dead,
        fingerprint: str = "",
        log: Any = None,
        may_acquire: Optional[Callable[[], Any]] = None,
    ) -> None:
        self.store = store
        # Asked (awaited) before taking a lease this process does not hold; never before a
        # renewal. Sharding uses it so that replicas configured differently never both act.
        self.may_acquire = may_acquire
        self.s = settings
        self.identity = settings.identity
        self._mono = monotonic
        self._wall = wall
        self._is_dead = is_dead
        self._fingerprint = fingerprint
        self._log = log
        self._renewed_at: Optional[float] = None  # monotonic START of the last successful acquire/renew
        self._was_leading = False
        self.leading_since: Optional[float] = None
        self.holder = ""  # the holder as last read
        self.on_started: list[Callable[[], None]] = []
        self.on_stopped: list[Callable[[], None]] = []

    # -- the predicate every write and every reconcile checks

    def leading(self) -> bool:
        at = self._renewed_at
        return at is not None and self._mono() < at + self.s.renew_deadline

    def acting_until(self) -> list[float]:
        """The monotonic time `leading()` turns False at unless renewed first (0: not leading),
        as a one-shard list: what the halt sentinel's process acts by."""
        at = self._renewed_at
        return [at + self.s.renew_deadline if at is not None else 0.0]

    def check(self, op: str = "write", target: str = "") -> None:
        """Raise NotLeading unless this process is the leader at this moment."""
        if UNFENCED.get() or self.leading():
            return
        raise NotLeading(f"{self.identity} is not the leader: {op} {target} refused".rstrip())

    # -- one attempt

    def _expired(self, rec: LeaseRecord, now: datetime) -> bool:
        if not rec.holder or rec.renew_time is None:
            return True
        if rec.renew_time + timedelta(seconds=rec.duration) < now:
            return True
        return self.s.dead_holder_check and bool(rec.process) and self._is_dead(rec.process)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the lease afterwards. Never raises
        (but for cancellation): a failed attempt is simply not a renewal."""
        started = self._mono()
        now = self._wall()
        duration = math.ceil(self.s.lease_duration)
        try:
            rec = await self.store.get()
            taking = rec is None or (rec.holder != self.identity and self._expired(rec, now))
            if taking and self.may_acquire is not None and not await self.may_acquire():
                self._renewed_at = None
                return False
            if rec is None:
                new = LeaseRecord(self.identity, duration, now, now, 0, self._fingerprint)
                written = await self.store.create(new)
            else:
                self.holder = rec.holder
                if rec.holder == self.identity:
                    new = replace(rec, duration=duration, renew_time=now, process=self._fingerprint)
                elif self._expired(rec, now):
                    new = replace(
                        rec, holder=self.identity, duration=duration, acquire_time=now, renew_time=now,
                        transitions=rec.transitions + 1, process=self._fingerprint,
                    )
                    if self._log is not None:
                        self._log.info("taking over the leader lease", previous=rec.holder or None,
                                       transitions=new.transitions)
                else:
                    self._renewed_at = None  # someone else holds it: stop acting now, not at the deadline
                    return False
                written = await self.store.update(new)
        except asyncio.CancelledError:
            raise
        except LeaseConflict:
            return False  # someone else wrote first: they won this round
        except Exception as exc:
            if self._log is not None:
                self._log.warning("leader lease: attempt failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self.holder = written.holder
        if written.holder != self.identity:  # pragma: no cover - the store returns what was written
            return False
        self._renewed_at = started if self._renewed_at is None else max(self._renewed_at, started)
        return True

    def observe(self) -> bool:
        """Fire the started/stopped callbacks on a change of `leading()`; returns it."""
        now_leading = self.leading()
        if now_leading and not self._was_leading:
            self._was_leading = True
            self.leading_since = self._mono()
            if self._log is not None:
                self._log.info("started leading", lease=f"{self.s.namespace}/{self.s.name}")
            for cb in self.on_started:
                cb()
        elif not now_leading and self._was_leading:
            self._was_leading = False
            self.leading_since = None
            if self._log is not None:
                self._log.warning("stopped leading", lease=f"{self.s.namespace}/{self.s.name}", holder=self.holder or None)
            for cb in self.on_stopped:
                cb()
        return now_leading

    async def step(self) -> bool:
        self.observe()
        await self.try_acquire_or_renew()
        return self.observe()

    async def run(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        while True:
            await self.step()
            await sleep(self.s.retry_period)

    async def release(self) -> None:
        """Stop acting first, then hand the lease back (holder "", 1s) so a standby need not
        wait for it to expire. Only the holder releases, and only its own version."""
        was = self._renewed_at is not None
        self._renewed_at = None
        self.observe()
        if not was:
            return
        try:
            rec = await self.store.get()
            if rec is not None and rec.holder == self.identity:
                await self.store.update(replace(rec, holder="", duration=1, renew_time=self._wall(), process=""))
                if self._log is not None:
                    self._log.info("released the leader lease")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # it expires by itself
            if self._log is not None:
                self._log.warning("leader lease: release failed", error=f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def unfenced() -> Iterator[None]:
    token = UNFENCED.set(True)
    try:
        yield
    finally:
        UNFENCED.reset(token)


# --------------------------------------------------------------------------- the real Lease


def _micro(when: Optional[datetime]) -> Optional[str]:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when is not None else None


class KubeLeaseStore:
    """The Lease through kubernetes_asyncio's CoordinationV1Api: read, create, replace with
    the resourceVersion read (optimistic concurrency)."""

    def __init__(self, api: Any, namespace: str, name: str, timeout: float) -> None:
        from kubernetes_asyncio import client

        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.timeout = timeout

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec, meta = lease.spec, lease.metadata
        return LeaseRecord(
            holder=spec.holder_identity or "",
            duration=int(spec.lease_duration_seconds or 0),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
            process=(meta.annotations or {}).get(PROCESS_ANNOTATION, ""),
            resource_version=meta.resource_version or "",
        )

    def _body(self, rec: LeaseRecord) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "annotations": {PROCESS_ANNOTATION: rec.process}}
        if rec.resource_version:
            meta["resourceVersion"] = rec.resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": rec.holder,
                "leaseDurationSeconds": rec.duration,
                "acquireTime": _micro(rec.acquire_time),
                "renewTime": _micro(rec.renew_time),
                "leaseTransitions": rec.transitions,
            },
        }

    async def get(self) -> Optional[LeaseRecord]:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            lease = await self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._record(lease)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            lease = await self.api.create_namespaced_lease(
                self.namespace, self._body(replace(record, resource_version="")), _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(self.name) from exc
            raise
        return self._record(lease)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            lease = await self.api.replace_namespaced_lease(
                self.name, self.namespace, self._body(record), _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(self.name) from exc
            raise
        return self._record(lease)


__all__ = [
    "LEASE_NAME", "ElectionSettings", "KubeLeaseStore", "LeaderElector", "LeaseConflict", "LeaseRecord",
    "NotLeading", "default_identity", "default_namespace", "holder_is_dead", "process_fingerprint", "unfenced",
]
