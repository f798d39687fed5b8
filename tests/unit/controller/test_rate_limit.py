"""The client-side rate limit: routine calls wait for a token; a call of a pass that becomes
urgent while it waits (a halt arrived for its strategy) goes at once."""

from __future__ import annotations

import asyncio
import time

from phasegate.controller.kube import PRIORITY, RateLimiter, Urgency, make_urgent


def test_routine_calls_wait_for_tokens() -> None:
    async def main() -> float:
        limiter = RateLimiter(qps=20, burst=1)
        await limiter.acquire()
        t0 = time.monotonic()
        await limiter.acquire()  # the bucket is empty: one token takes 1/20 s
        return time.monotonic() - t0

    assert asyncio.run(main()) >= 0.04


def test_a_pass_made_urgent_while_it_waits_goes_at_once() -> None:
    async def main() -> tuple[float, bool]:
        limiter = RateLimiter(qps=0.2, burst=1)  # a token every 5 s
        await limiter.acquire()
        urgency = Urgency()

        async def routine_pass() -> float:
            PRIORITY.set(urgency)
            t0 = time.monotonic()
            await limiter.acquire()
            return time.monotonic() - t0

        task = asyncio.ensure_future(routine_pass())
        await asyncio.sleep(0.1)
        waiting = not task.done()
        urgency.raise_()  # what strategy_changed does for the loop's pass in flight
        return await asyncio.wait_for(task, timeout=2), waiting

    waited, was_waiting = asyncio.run(main())
    assert was_waiting, "the routine call did not wait for a token"
    assert waited < 1.0, f"the call waited {waited:.1f}s after its pass became urgent"


def test_an_urgent_pass_is_never_throttled() -> None:
    async def main() -> float:
        limiter = RateLimiter(qps=0.2, burst=1)
        PRIORITY.set(None)
        make_urgent()
        t0 = time.monotonic()
        for _ in range(5):
            await limiter.acquire()
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0
