"""The lease renewed on its own thread: a blocked operator loop does not make the leader fence
itself; callbacks run on the operator's loop; stopping releases the lease; a failed build
surfaces in start(). Real clocks, an in-memory Lease."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Optional

import pytest

from phasegate.controller.election_thread import ElectionThread
from phasegate.controller.leader import ElectionSettings, LeaderElector, LeaseConflict, LeaseRecord

SETTINGS = ElectionSettings(identity="a", namespace="ns", lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)


class Leases:
    """One Lease with resourceVersion checks, shared between threads under a lock."""

    def __init__(self, rec: Optional[LeaseRecord] = None) -> None:
        self.lock = threading.Lock()
        self.rec = rec
        self.rv = 1
        self.renewals: list[float] = []

    async def get(self) -> Optional[LeaseRecord]:
        with self.lock:
            return self.rec

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        with self.lock:
            if self.rec is not None:
                raise LeaseConflict("exists")
            return self._write(record)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        with self.lock:
            if self.rec is None or record.resource_version != self.rec.resource_version:
                raise LeaseConflict("changed")
            return self._write(record)

    def _write(self, record: LeaseRecord) -> LeaseRecord:
        self.rv += 1
        self.rec = replace(record, resource_version=str(self.rv))
        self.renewals.append(time.monotonic())
        return self.rec


async def no_client() -> Any:
    return object()


def thread_for(store: Leases) -> ElectionThread:
    async def build(api: Any) -> LeaderElector:
        return LeaderElector(store, SETTINGS, is_dead=lambda _: False)

    return ElectionThread(build, no_client)


def test_a_blocked_operator_loop_does_not_fence_the_leader() -> None:
    """The operator's loop is stuck for 2.5 renew deadlines (thousands of evaluations, a
    long GC pause): the lease is renewed meanwhile and the leader never stops acting."""
    store = Leases()

    async def main() -> tuple[list[bool], int]:
        thread = thread_for(store)
        elector = await thread.start()
        seen, before = [], len(store.renewals)
        end = time.monotonic() + 2.5 * SETTINGS.renew_deadline
        while time.monotonic() < end:  # blocks this loop: nothing else of it runs
            seen.append(elector.leading())
            time.sleep(0.02)
        renewed = len(store.renewals) - before
        await thread.stop()
        return seen, renewed

    seen, renewed = asyncio.run(main())
    assert seen and all(seen), "the leader fenced itself while its loop was busy"
    assert renewed >= 10  # every retry period (0.1 s) over 2.5 s, give or take a slow host


def test_stop_releases_the_lease_and_ends_the_thread() -> None:
    store = Leases()

    async def main() -> tuple[bool, bool, bool]:
        thread = thread_for(store)
        elector = await thread.start()
        leading = elector.leading()
        await thread.stop()
        return leading, elector.leading(), thread.thread.is_alive()

    leading, after, alive = asyncio.run(main())
    assert leading and not after and not alive
    assert store.rec is not None and store.rec.holder == "", "the lease was not handed back"


def test_callbacks_run_on_the_operator_loop() -> None:
    """A lease taken over later (the holder stopped renewing) fires on_started on the
    operator's loop, not on the renewal thread."""
    now = datetime.now(UTC)
    store = Leases(LeaseRecord("b", 1, now, now, 0, "", "1"))

    async def main() -> tuple[bool, list[int], int]:
        thread = thread_for(store)
        elector = await thread.start()
        first = elector.leading()
        ran: list[int] = []
        fired = asyncio.Event()

        def started() -> None:
            ran.append(threading.get_ident())
            fired.set()

        elector.on_started.append(thread.on_loop(asyncio.get_running_loop(), started))
        await asyncio.wait_for(fired.wait(), timeout=5)
        await thread.stop()
        return first, ran, threading.get_ident()

    first, ran, me = asyncio.run(main())
    assert not first, "took a lease whose holder renewed it a moment ago"
    assert ran == [me]


def test_a_failed_build_is_raised_by_start() -> None:
    async def build(api: Any) -> Any:
        raise RuntimeError("no kubeconfig")

    async def main() -> None:
        await ElectionThread(build, no_client).start()

    with pytest.raises(RuntimeError, match="no kubeconfig"):
        asyncio.run(main())
