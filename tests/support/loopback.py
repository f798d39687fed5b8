"""A real HTTP server on loopback for tests of HTTP clients (no mocks of the wire)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def loopback_server(path: str, handler):
    """A real HTTP server on 127.0.0.1 (a free port) answering GET `path`; yields the port."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()
