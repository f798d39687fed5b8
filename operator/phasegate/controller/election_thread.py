"""The leader (or shard) leases renewed on a thread of their own.

Why: the operator's event loop evaluates thousands of strategies. A renewal queued behind
them is late, and a late renewal fences the leader (it refuses its own writes, halts
included) or hands its lease to a standby while the process is healthy, only busy. On its
own thread, with its own event loop and API client, a renewal waits for nothing but the GIL,
which the interpreter hands over every few milliseconds.

What crosses threads is small on purpose: the elector's predicates (`leading()`, `check()`,
`leading_for()`) read numbers the renewal thread writes whole, safe from any thread; the
callbacks it fires (a shard gained, leadership started) are handed to the operator's loop
with `call_soon_threadsafe`, never run on the renewal thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Optional

ElectorFactory = Callable[[Any], Awaitable[Any]]


class ElectionThread:
    """Builds an elector with `build(api)` on a new thread and runs its renewals there.

    `client()` makes the thread's own API client (an aiohttp session belongs to one event
    loop); `close(api)` releases it when the thread stops."""

    def __init__(self, build: ElectorFactory, client: Callable[[], Awaitable[Any]],
                 close: Optional[Callable[[Any], Awaitable[None]]] = None, *, name: str = "phasegate-election") -> None:
        self._build = build
        self._client = client
        self._close = close
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self.elector: Any = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        api = None
        try:
            api = await self._client()
            self.elector = await self._build(api)
            await self.elector.step()  # a lone operator leads before its first pass
        except BaseException as exc:  # handed to start(), which raises it on the operator's loop
            self._error = exc
            self._ready.set()
            if api is not None and self._close is not None:
                await self._close(api)
            return
        self._ready.set()
        renewals = asyncio.create_task(self.elector.run(), name="phasegate leader election")
        try:
            await self._stop.wait()
        finally:
            renewals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewals
            try:
                await self.elector.release()  # stops acting first, then hands the lease over
            finally:
                if self._close is not None:
                    await self._close(api)

    async def start(self) -> Any:
        """Start the thread; return its elector once its first attempt is done."""
        self.thread.start()
        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
        if self._error is not None:
            raise self._error
        return self.elector

    def on_loop(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback`, to be fired by the elector from its thread but run on `loop`."""
        def fire() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback)
        return fire

    async def stop(self, timeout: float = 15.0) -> None:
        """Release the lease and end the thread (waiting at most `timeout` seconds)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self.thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join, timeout)


__all__ = ["ElectionThread"]
