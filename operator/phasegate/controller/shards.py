"""Sharding: several operator replicas split the strategies between them.

A strategy belongs to shard `crc32(namespace/name) mod N`. Each shard is a Lease
(`phasegate-shard-<i>-of-<N>`) held through the leader election of controller/leader.py, so
everything that holds for the one leader holds per shard: only the shard's holder evaluates
its strategies, and a holder that cannot renew in time stops acting before its lease can
expire (every write is fenced on the shard of the strategy it is for).

Balance: every replica also renews a member Lease (`phasegate-member-<N>-<identity>`) and
holds at most its fair share, ceil(N / live members), of the shards: a replica that joins
makes the others release their extras (each stops acting on a shard before it lets go), and
when one leaves, the others take its shards once its leases expire.

Replicas must agree on N: one that finds a live replica configured with another shard count
(or an unsharded leader holding `phasegate-leader`) takes no shard until that one is gone,
so a change of N rolls over without two replicas ever evaluating the same strategy.
`--shards 1` (the default) is the single Lease `phasegate-leader` of controller/leader.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from .leader import LEASE_NAME, UNFENCED, ElectionSettings, KubeLeaseStore, LeaderElector, NotLeading

MEMBER_PREFIX = "phasegate-member-"
# The shard of the strategy the current pass is for (set by the strategy's loop): the fence
# of every write checks that this replica holds that shard.
CURRENT_SHARD: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("phasegate_shard", default=None)


def shard_of(namespace: str, name: str, shards: int) -> int:
    return zlib.crc32(f"{namespace}/{name}".encode()) % max(1, shards)


def shard_lease(index: int, shards: int) -> str:
    return f"phasegate-shard-{index}-of-{shards}"


def member_lease(shards: int, identity: str) -> str:
    """A Lease name (a DNS subdomain) for this replica: an identity such as `host_1234` is
    lower-cased and anything but [a-z0-9.-] becomes `-`."""
    safe = re.sub(r"[^a-z0-9.-]", "-", identity.lower()).strip("-.") or "replica"
    return f"{MEMBER_PREFIX}{shards}-{safe}"[:253].rstrip("-.")


def fair_share(shards: int, members: int) -> int:
    return math.ceil(shards / max(1, members))


def live_leases(items: list[Any], now: datetime) -> dict[str, str]:
    """{lease name: holder} of the Leases held and renewed within their duration."""
    out = {}
    for lease in items:
        spec = lease.spec
        holder = spec.holder_identity or ""
        renew = spec.renew_time
        if holder and renew is not None and renew + timedelta(seconds=int(spec.lease_duration_seconds or 0)) >= now:
            out[lease.metadata.name] = holder
    return out


def conflicting(live: dict[str, str], shards: int) -> list[str]:
    """Live replicas configured otherwise: another shard count, or an unsharded leader."""
    mine = f"{MEMBER_PREFIX}{shards}-"
    out = []
    for name, holder in live.items():
        if name == LEASE_NAME and shards > 1:
            out.append(f"{holder} (unsharded leader)")
        elif name.startswith(MEMBER_PREFIX) and not name.startswith(mine):
            out.append(f"{holder} ({name})")
        elif name.startswith(MEMBER_PREFIX) and shards == 1:
            out.append(f"{holder} ({name})")
    return out


class LeaseDirectory:
    """One list of the namespace's Leases per round, shared by the decisions of that round."""

    def __init__(self, api: Any, namespace: str, timeout: float) -> None:
        from kubernetes_asyncio import client

        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.timeout = timeout

    async def live(self) -> dict[str, str]:
        leases = await self.api.list_namespaced_lease(self.namespace, _request_timeout=self.timeout)
        return live_leases(leases.items or [], datetime.now(UTC))


class ShardElection:
    """N shard electors and a member lease, with the interface main.py uses of one elector."""

    def __init__(self, api: Any, settings: ElectionSettings, shards: int, *, fingerprint: str = "", log: Any = None) -> None:
        self.s = settings
        self.shards = shards
        self.identity = settings.identity
        self.log = log
        self.directory = LeaseDirectory(api, settings.namespace, settings.renew_deadline)
        self._live: dict[str, str] = {}
        self._share = shards
        self.member = LeaderElector(
            KubeLeaseStore(api, settings.namespace, member_lease(shards, settings.identity), settings.renew_deadline),
            replace(settings, name=member_lease(shards, settings.identity)), fingerprint=fingerprint, log=log,
        )
        self.electors = [
            LeaderElector(
                KubeLeaseStore(api, settings.namespace, shard_lease(i, shards), settings.renew_deadline),
                replace(settings, name=shard_lease(i, shards)), fingerprint=fingerprint, log=log,
                may_acquire=self._may_take,
            )
            for i in range(shards)
        ]
        self.on_started: list[Callable[[], None]] = []  # called whenever a shard is gained
        self._held: set[int] = set()
        self.leading_since: Optional[float] = None

    # -- predicates

    def held(self) -> list[int]:
        return [i for i, e in enumerate(self.electors) if e.leading()]

    def leading(self) -> bool:
        return any(e.leading() for e in self.electors)

    def leading_for(self, namespace: str, name: str) -> bool:
        return self.electors[shard_of(namespace, name, self.shards)].leading()

    def acting_until(self) -> list[float]:
        """Each shard's deadline, in shard order (LeaderElector.acting_until)."""
        return [e.acting_until()[0] for e in self.electors]

    def since_for(self, namespace: str, name: str) -> Optional[float]:
        e = self.electors[shard_of(namespace, name, self.shards)]
        return e.leading_since if e.leading() else None

    @property
    def holder(self) -> str:
        return ", ".join(f"{i}:{e.holder or '-'}" for i, e in enumerate(self.electors))

    def check(self, op: str = "write", target: str = "") -> None:
        if UNFENCED.get():
            return
        shard = CURRENT_SHARD.get()
        if shard is None:
            if self.leading():
                return
            raise NotLeading(f"{self.identity} holds no shard: {op} {target} refused".rstrip())
        self.electors[shard].check(op, target)

    # -- one round

    async def _may_take(self) -> bool:
        others = conflicting(self._live, self.shards)
        if others:
            if self.log is not None:
                self.log.error("not taking a shard: a live replica is configured otherwise", replicas=others[:5])
            return False
        return len(self.held()) < self._share

    async def step(self) -> bool:
        await self.member.step()
        try:
            self._live = await self.directory.live()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # without the directory, take nothing new (renewals go on)
            if self.log is not None:
                self.log.warning("shard leases: cannot list members", error=f"{type(exc).__name__}: {exc}")
            self._live = {}
            self._share = len(self.held())
        else:
            members = sum(1 for n in self._live if n.startswith(f"{MEMBER_PREFIX}{self.shards}-"))
            self._share = fair_share(self.shards, max(1, members))
        for i in self.held()[self._share:]:
            await self.electors[i].release()  # stops acting on it first
        for e in self.electors:
            if e.leading():
                await e.step()
        for e in self.electors:
            if not e.leading() and len(self.held()) < self._share:
                await e.step()
        return self.observe()

    def observe(self) -> bool:
        for e in self.electors:
            e.observe()
        held = set(self.held())
        gained, self._held = held - self._held, held
        self.leading_since = min((self.electors[i].leading_since or 0.0 for i in held), default=None)
        if gained:
            if self.log is not None:
                self.log.info("shards held", shards=sorted(held), of=self.shards, share=self._share)
            for cb in self.on_started:
                cb()
        return bool(held)

    async def run(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        while True:
            await self.step()
            await sleep(self.s.retry_period)

    async def release(self) -> None:
        for e in self.electors:
            await e.release()
        await self.member.release()


__all__ = ["CURRENT_SHARD", "ShardElection", "conflicting", "fair_share", "live_leases", "shard_of"]
