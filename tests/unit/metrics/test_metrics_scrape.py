"""The scrape source against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiohttp import web

from phasegate.api.spec import StrategySpec
from phasegate.metrics import (
    MetricsSource,
    MetricsUnavailable,
    PrometheusMetricsSource,
    ScrapeSource,
    ScrapeTarget,
    make_source,
)
from phasegate.metrics.httpclient import HttpClient

from loopback import loopback_server  # tests/support

NOW = datetime(2024, 3, 11, 14, 30, tzinfo=UTC)


def serving(handler):
    return loopback_server("/metrics", handler)


def target(port: int, timeout: float = 2.0) -> ScrapeTarget:
    return ScrapeTarget(
        namespace="trading", strategy="momentum", pod="momentum-0", pod_ip="127.0.0.1",
        port=port, now=NOW, timeout_seconds=timeout,
    )


def read_with(handler, *, timeout: float = 2.0, source: MetricsSource | None = None):
    async def go():
        async with serving(handler) as port:
            return await (source or ScrapeSource()).read(target(port, timeout))

    return asyncio.run(go())


def test_success(make_exposition):
    text = make_exposition(trips={"drawdown": 1})
    seen = {}

    async def handler(request):
        seen["accept"] = request.headers.get("Accept", "")
        return web.Response(text=text, content_type="text/plain")

    snap = read_with(handler)
    assert snap.portfolio_value == Decimal("1000000")
    assert snap.breaker_trips == {"drawdown": Decimal(1)}
    assert snap.taken_at == NOW
    assert "text/plain" in seen["accept"]


def test_success_with_a_shared_client_keeps_the_connection(make_exposition):
    text = make_exposition()
    peers = set()

    async def handler(request):
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text=text)

    async def go():
        client = HttpClient()
        async with serving(handler) as port:
            src = ScrapeSource(client=client)
            reads = [await src.read(target(port)) for _ in range(3)]
        await client.close()
        return reads, client.connections_opened

    reads, opened = asyncio.run(go())
    assert reads[0] == reads[1] == reads[2]
    assert opened == 1 and len(peers) == 1, "three reads of one pod share one keep-alive connection"


def test_chunked_answer(make_exposition):
    text = make_exposition(trips={"drawdown": 2})

    async def handler(request):
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(text), 97):
            await resp.write(text[i:i + 97].encode())
        await resp.write_eof()
        return resp

    assert read_with(handler).breaker_trips == {"drawdown": Decimal(2)}


def test_body_over_the_bound_is_a_failed_read(make_exposition):
    async def handler(request):
        return web.Response(text=make_exposition() + "# padding\n" * 2000)

    async def go():
        async with serving(handler) as port:
            return await ScrapeSource(client=HttpClient(max_body=4096)).read(target(port))

    with pytest.raises(MetricsUnavailable) as info:
        asyncio.run(go())
    assert "exceeds 4096 bytes" in info.value.reason


def test_connection_refused(free_port):
    with pytest.raises(MetricsUnavailable) as info:
        asyncio.run(ScrapeSource().read(target(free_port)))
    assert f"127.0.0.1:{free_port}" in info.value.reason


def test_timeout(make_exposition):
    async def handler(request):
        await asyncio.sleep(1)
        return web.Response(text=make_exposition())

    async def go():
        async with serving(handler) as port:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(MetricsUnavailable) as info:
                await ScrapeSource().read(target(port, timeout=0.2))
            return info.value, loop.time() - start

    exc, elapsed = asyncio.run(go())
    assert "timeout" in exc.reason
    assert elapsed < 0.9


def test_http_500():
    async def handler(request):
        return web.Response(status=500, text="boom")

    with pytest.raises(MetricsUnavailable) as info:
        read_with(handler)
    assert "HTTP 500" in info.value.reason


def test_garbage():
    async def handler(request):
        return web.Response(text="<html>this is { not an exposition</html>\n")

    with pytest.raises(MetricsUnavailable):
        read_with(handler)


def test_empty_body():
    async def handler(request):
        return web.Response(text="")

    with pytest.raises(MetricsUnavailable) as info:
        read_with(handler)
    assert "empty" in info.value.reason


def test_not_utf8():
    async def handler(request):
        return web.Response(body=b"\xff\xfe\xfa strategy_portfolio_value 1\n", content_type="text/plain")

    with pytest.raises(MetricsUnavailable):
        read_with(handler)


def test_target_url_and_validation():
    t = ScrapeTarget(namespace="n", strategy="s", pod="p", pod_ip="fd00::1", port=9100, now=NOW, path="metrics")
    assert t.url == "http://[fd00::1]:9100/metrics"
    with pytest.raises(ValueError):
        ScrapeTarget(namespace="n", strategy="s", pod="p", pod_ip="1.2.3.4", port=1, now=datetime(2024, 1, 1))


def _spec(**analysis) -> StrategySpec:
    return StrategySpec.model_validate(
        {"capital": "1000000", "account": "a", "maxFraction": 1, "template": {"image": "x"}, "analysis": analysis}
    )


def test_make_source_picks_the_source_the_spec_asks_for():
    assert isinstance(make_source(_spec()), ScrapeSource)
    prom = make_source(
        _spec(source="prometheus", prometheus={"address": "http://prom:9090/", "queries": {"strategy_cash": "x"}})
    )
    assert isinstance(prom, PrometheusMetricsSource)
    assert prom.address == "http://prom:9090" and prom.overrides == {"strategy_cash": "x"}
    assert isinstance(prom, MetricsSource) and isinstance(make_source(_spec()), MetricsSource)
