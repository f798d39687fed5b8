"""Fresh bodies for the strategies kopf keeps elided (controller/lean_bodies.py).

A replica that starts acting on strategies it stood by for (a shard taken over, leadership
won) holds only their metadata, and every one of their loops wants its body at once. Asks
that arrive within `window` seconds are read together: one paged LIST of a namespace where
`many` or more of them are, a GET each for the rest. An urgent pass (a halt during the
takeover) does not wait for a round: it reads its own strategy at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Protocol

from . import telemetry
from .lean_bodies import strip

Key = tuple[str, str]


class Reader(Protocol):
    async def get_strategy(self, namespace: str, name: str) -> Optional[dict[str, Any]]: ...

    def list_strategies(self, namespace: str, page: int = 500) -> Any: ...


def lean(body: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if body is not None:
        strip({"object": body})
    return body


class FreshBodies:
    def __init__(self, kube: Reader, *, window: float = 0.2, many: int = 20, page: int = 500) -> None:
        self.kube = kube
        self.window, self.many, self.page = window, many, page
        self._asks: dict[Key, list[asyncio.Future[Optional[dict[str, Any]]]]] = {}
        self._round: Optional[asyncio.Task[None]] = None

    async def now(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """One strategy, read at once (None when it is gone)."""
        telemetry.FRESH_BODY_READS.labels("get").inc()
        return lean(await self.kube.get_strategy(namespace, name))

    async def get(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """One strategy, read in the next round with every other strategy asked for meanwhile."""
        future: asyncio.Future[Optional[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._asks.setdefault((namespace, name), []).append(future)
        if self._round is None:
            self._round = asyncio.ensure_future(self._read())
        return await future

    async def _read(self) -> None:
        try:
            await asyncio.sleep(self.window)
        finally:
            asks, self._asks, self._round = self._asks, {}, None
        by_namespace: dict[str, list[Key]] = {}
        for key in asks:
            by_namespace.setdefault(key[0], []).append(key)
        await asyncio.gather(*(
            self._list(namespace, keys, asks) if len(keys) >= self.many else self._get_each(keys, asks)
            for namespace, keys in by_namespace.items()
        ))

    async def _list(self, namespace: str, keys: list[Key], asks: dict[Key, list[asyncio.Future[Any]]]) -> None:
        wanted = set(keys)
        try:
            telemetry.FRESH_BODY_READS.labels("list").inc()
            async for item in self.kube.list_strategies(namespace, self.page):
                key = (namespace, (item.get("metadata") or {}).get("name") or "")
                if key in wanted:
                    wanted.discard(key)
                    _answer(asks[key], lean(item))
        except Exception as exc:  # every ask not answered yet fails; its loop retries soon
            for key in wanted:
                _fail(asks[key], exc)
            return
        for key in wanted:  # not in the list: deleted since
            _answer(asks[key], None)

    async def _get_each(self, keys: list[Key], asks: dict[Key, list[asyncio.Future[Any]]]) -> None:
        async def one(key: Key) -> None:
            try:
                body = await self.now(*key)
            except Exception as exc:
                _fail(asks[key], exc)
            else:
                _answer(asks[key], body)

        await asyncio.gather(*(one(key) for key in keys))


def _answer(futures: list[asyncio.Future[Any]], body: Optional[dict[str, Any]]) -> None:
    for f in futures:
        if not f.done():  # an ask whose pass was pre-empted meanwhile is cancelled
            f.set_result(body)


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(exc)


__all__ = ["FreshBodies"]
