"""The default source: scrape the strategy pod's /metrics directly (no Prometheus needed)."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

import aiohttp
from yarl import URL

from ._samples import build_snapshot, group
from .exposition import ExpositionError, samples
from .snapshot import MetricsSnapshot, MetricsUnavailable
from .source import ScrapeTarget

# Ask for the classic text format: metrics/exposition.py does not read OpenMetrics.
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
# A strategy's exposition is a few kilobytes; a bound keeps a broken exporter from
# making the operator buffer without end.
MAX_BODY_BYTES = 8 * 1024 * 1024


def parse_exposition(text: str, now: datetime) -> MetricsSnapshot:
    """A snapshot from Prometheus text exposition; MetricsUnavailable when unusable.

    Samples are looked up by sample name (a counter's `_total` included), which is what the
    contract names.
    """
    if not text.strip():
        raise MetricsUnavailable("empty exposition")
    try:
        series = group(samples(text))
    except ExpositionError as exc:
        raise MetricsUnavailable(f"cannot parse exposition: {exc}") from exc
    if not series:
        raise MetricsUnavailable("exposition has no samples")
    return build_snapshot(series, now)


class ScrapeSource:
    """Reads http://podIP:port/path and parses it.

    Pass a long-lived aiohttp session to reuse connections; without one, each read
    opens and closes its own (simple, and safe across event loops).
    """

    def __init__(self, session: Optional[aiohttp.ClientSession] = None) -> None:
        self._session = session
        # Parsed URLs by text: parsing one was a tenth of a read's own CPU. Pod addresses
        # come and go, so the cache is dropped whole when it grows past its bound.
        self._urls: dict[str, URL] = {}

    def _url(self, text: str) -> URL:
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= 50_000:
                self._urls.clear()
            url = self._urls[text] = URL(text)
        return url

    async def read(self, target: ScrapeTarget) -> MetricsSnapshot:
        try:
            if self._session is not None:
                text = await self._fetch(self._session, target)
            else:
                async with aiohttp.ClientSession() as session:
                    text = await self._fetch(session, target)
        except MetricsUnavailable:
            raise
        except TimeoutError as exc:
            raise MetricsUnavailable(
                f"timeout after {target.timeout_seconds}s reading {target.url}"
            ) from exc
        except Exception as exc:
            # Connection refused, reset, bad encoding, invalid URL...: a failed read either
            # way, reported as one rather than escaping into the reconcile handler.
            raise MetricsUnavailable(f"cannot read {target.url}: {type(exc).__name__}: {exc}") from exc
        return parse_exposition(text, target.now)

    async def _fetch(self, session: aiohttp.ClientSession, target: ScrapeTarget) -> str:
        timeout = aiohttp.ClientTimeout(total=target.timeout_seconds)
        headers = {"Accept": ACCEPT, **target.supervision_headers()}
        async with session.get(self._url(target.url), headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                raise MetricsUnavailable(f"HTTP {resp.status} from {target.url}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise MetricsUnavailable(f"exposition from {target.url} exceeds {MAX_BODY_BYTES} bytes")
            return bytes(body).decode(resp.charset or "utf-8")
