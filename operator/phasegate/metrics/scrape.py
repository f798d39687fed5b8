"""The default source: scrape the strategy pod's /metrics directly (no Prometheus needed)."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from ._samples import build_snapshot
from .exposition import ExpositionError, series
from .httpclient import HttpClient
from .snapshot import MetricsSnapshot, MetricsUnavailable
from .source import ScrapeTarget

# Ask for the classic text format: metrics/exposition.py does not read OpenMetrics.
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"


def parse_exposition(text: str, now: datetime) -> MetricsSnapshot:
    """A snapshot from Prometheus text exposition; MetricsUnavailable when unusable.

    Samples are looked up by sample name (a counter's `_total` included), which is what the
    contract names.
    """
    if not text.strip():
        raise MetricsUnavailable("empty exposition")
    try:
        by_name = series(text)
    except ExpositionError as exc:
        raise MetricsUnavailable(f"cannot parse exposition: {exc}") from exc
    if not by_name:
        raise MetricsUnavailable("exposition has no samples")
    return build_snapshot(by_name, now)


class ScrapeSource:
    """Reads http://podIP:port/path and parses it.

    Pass a long-lived HttpClient to keep connections alive between reads (the operator
    does); without one, each read opens and closes its own (simple, and safe across event
    loops).
    """

    def __init__(self, client: Optional[HttpClient] = None) -> None:
        self._client = client

    async def read(self, target: ScrapeTarget) -> MetricsSnapshot:
        try:
            if self._client is not None:
                text = await self._fetch(self._client, target)
            else:
                client = HttpClient()
                try:
                    text = await self._fetch(client, target)
                finally:
                    await client.close()
        except MetricsUnavailable:
            raise
        except TimeoutError as exc:
            raise MetricsUnavailable(
                f"timeout after {target.timeout_seconds}s reading {target.url}"
            ) from exc
        except Exception as exc:
            # Connection refused, reset, bad encoding, not HTTP...: a failed read either
            # way, reported as one rather than escaping into the reconcile handler.
            raise MetricsUnavailable(f"cannot read {target.url}: {type(exc).__name__}: {exc}") from exc
        return parse_exposition(text, target.now)

    async def _fetch(self, client: HttpClient, target: ScrapeTarget) -> str:
        headers = {"Accept": ACCEPT, **target.supervision_headers()}
        resp = await client.get(target.pod_ip, target.port, target.path, headers, timeout=target.timeout_seconds)
        if resp.status != 200:
            raise MetricsUnavailable(f"HTTP {resp.status} from {target.url}")
        return resp.body.decode(resp.charset)
