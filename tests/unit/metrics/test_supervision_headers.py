"""What a supervised scrape carries on the wire (spec.supervision), against a real HTTP server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from phasegate.api import contract
from phasegate.metrics import ScrapeSource, ScrapeTarget

from loopback import loopback_server  # tests/support

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def test_a_supervised_target_sends_who_and_until_when_in_rfc3339_utc():
    t = ScrapeTarget(namespace="n", strategy="s", pod="s-0", pod_ip="10.0.0.1", port=9100, now=NOW,
                     supervisor="phasegate-abc", supervision_deadline=NOW + timedelta(seconds=6, milliseconds=5))
    assert t.supervision_headers() == {
        contract.HEADER_SUPERVISOR: "phasegate-abc",
        contract.HEADER_SUPERVISION_DEADLINE: "2026-03-02T14:00:06.005Z",
    }
    assert ScrapeTarget(namespace="n", strategy="s", pod="s-0", pod_ip="10.0.0.1", port=1, now=NOW) \
        .supervision_headers() == {}
    with pytest.raises(ValueError, match="supervisor"):
        ScrapeTarget(namespace="n", strategy="s", pod="s-0", pod_ip="1.1.1.1", port=1, now=NOW,
                     supervision_deadline=NOW)
    with pytest.raises(ValueError, match="timezone"):
        ScrapeTarget(namespace="n", strategy="s", pod="s-0", pod_ip="1.1.1.1", port=1, now=NOW, supervisor="x",
                     supervision_deadline=datetime(2026, 1, 1))


def test_the_scrape_source_puts_them_on_the_wire(make_exposition):
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=make_exposition())

    async def go() -> None:
        async with loopback_server("/metrics", handler) as port:
            base = dict(namespace="n", strategy="s", pod="s-0", pod_ip="127.0.0.1", port=port, now=NOW)
            await ScrapeSource().read(ScrapeTarget(**base, supervisor="op-1", supervision_deadline=NOW))
            await ScrapeSource().read(ScrapeTarget(**base))

    asyncio.run(go())
    assert seen[0][contract.HEADER_SUPERVISOR] == "op-1"
    assert seen[0][contract.HEADER_SUPERVISION_DEADLINE] == "2026-03-02T14:00:00.000Z"
    assert contract.HEADER_SUPERVISOR not in seen[1] and contract.HEADER_SUPERVISION_DEADLINE not in seen[1]
