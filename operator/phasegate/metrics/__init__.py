"""Layer 4: where the strategy's metrics come from, behind one small interface.

`make_source(spec).read(target)` gives a MetricsSnapshot or raises MetricsUnavailable;
nothing above this layer knows whether the numbers came from a direct scrape of the
pod or from Prometheus.

The I/O modules (aiohttp, the exposition parser) load on first use, so that the pure
policy layer importing `phasegate.metrics.snapshot` pulls in no network code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional

from .snapshot import Histogram, MetricsSnapshot, MetricsUnavailable, counter_increases
from .source import MetricsSource, ScrapeTarget

if TYPE_CHECKING:
    import aiohttp

    from phasegate.api.spec import StrategySpec

    from .httpclient import HttpClient

_LAZY = {
    "ScrapeSource": "scrape",
    "HttpClient": "httpclient",
    "parse_exposition": "scrape",
    "PrometheusMetricsSource": "prometheus",
    "DEFAULT_QUERIES": "prometheus",
    "QUERY_KEYS": "prometheus",
    "build_queries": "prometheus",
    "check_overrides": "prometheus",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_source(
    spec: StrategySpec, *, session: Optional[aiohttp.ClientSession] = None, client: Optional[HttpClient] = None,
) -> MetricsSource:
    """The source spec.analysis asks for. `session` (Prometheus queries) and `client`
    (scrapes), if given, are shared for connection reuse."""
    from phasegate.api.spec import MetricsSourceType

    if spec.analysis.source == MetricsSourceType.PROMETHEUS:
        prom = spec.analysis.prometheus
        if prom is None:
            # The CRD's CEL rule rejects this at apply time; a spec built in Python may not.
            raise ValueError("spec.analysis.source is prometheus but spec.analysis.prometheus is not set")
        from .prometheus import PrometheusMetricsSource

        return PrometheusMetricsSource(prom.address, prom.queries, session=session)
    from .scrape import ScrapeSource

    return ScrapeSource(client=client)


__all__ = [
    "DEFAULT_QUERIES", "Histogram", "HttpClient", "MetricsSnapshot", "MetricsSource", "MetricsUnavailable",
    "PrometheusMetricsSource", "QUERY_KEYS", "ScrapeSource", "ScrapeTarget", "build_queries",
    "check_overrides", "counter_increases", "make_source", "parse_exposition",
]
