"""The production source: instant queries against the Prometheus HTTP API.

One PromQL query per built-in metric, selecting the strategy pod's series by the
`namespace` and `pod` labels that kubernetes_sd pod relabelling attaches. Each can be
replaced through spec.analysis.prometheus.queries, keyed by the metric's name; a query
may use $namespace, $pod and $strategy, filled in for the target being read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from string import Template
from typing import Any, Optional

import aiohttp

from phasegate.api import contract as c

from ._samples import (
    LATENCY_BUCKET,
    LATENCY_COUNT,
    LATENCY_SUM,
    PROCESS_START,
    Series,
    build_snapshot,
    group,
)
from .snapshot import MetricsSnapshot, MetricsUnavailable
from .source import ScrapeTarget

_SELECTOR = 'namespace="$namespace",pod="$pod"'

DEFAULT_QUERIES: dict[str, str] = {
    name: f"{name}{{{_SELECTOR}}}"
    for name in (
        c.M_PORTFOLIO_VALUE,
        c.M_CASH,
        c.M_LARGEST_POSITION_FRACTION,
        c.M_ORDERS_SUBMITTED,
        c.M_ORDERS_FILLED,
        c.M_ERRORS,
        c.M_BREAKER_TRIPS,
        LATENCY_BUCKET,
        LATENCY_SUM,
        LATENCY_COUNT,
        c.M_SIGNAL_ALIGNMENT,
        c.M_POSITION_DISCREPANCY,
        c.M_EXECUTION_QUALITY,
        c.M_SLIPPAGE_BPS,
        PROCESS_START,
    )
}
"""The query per metric name: the keys spec.analysis.prometheus.queries may override."""

QUERY_KEYS = frozenset(DEFAULT_QUERIES)


def _promql_string(value: str) -> str:
    # Label values go inside "..." in PromQL; escape what would end or break the string.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def check_overrides(overrides: Mapping[str, str]) -> list[str]:
    """Problems with a set of query overrides (unknown keys, empty queries); [] when fine."""
    problems = []
    for key, query in overrides.items():
        if key not in QUERY_KEYS:
            problems.append(
                f"spec.analysis.prometheus.queries: unknown metric {key!r}; known: {', '.join(sorted(QUERY_KEYS))}"
            )
        elif not query.strip():
            problems.append(f"spec.analysis.prometheus.queries[{key}]: empty query")
    return problems


def build_queries(overrides: Mapping[str, str], target: ScrapeTarget) -> dict[str, str]:
    """The PromQL to run for this target, by metric name: defaults with overrides applied."""
    values = {
        "namespace": _promql_string(target.namespace),
        "pod": _promql_string(target.pod),
        "strategy": _promql_string(target.strategy),
    }
    merged = {**DEFAULT_QUERIES, **{k: v for k, v in overrides.items() if k in QUERY_KEYS}}
    return {k: Template(q).safe_substitute(values) for k, q in merged.items()}


def parse_query_response(key: str, payload: Any) -> list[Series]:
    """Series of one instant-query response; MetricsUnavailable for an error or a range result.

    An empty vector is not an error here: it means "not exported", decided per metric
    by build_snapshot (which fails closed on a missing portfolio value).
    """
    if not isinstance(payload, dict):
        raise MetricsUnavailable(f"prometheus: query {key}: response is not a JSON object")
    if payload.get("status") != "success":
        raise MetricsUnavailable(
            f"prometheus: query {key} failed: {payload.get('errorType', 'error')}: {payload.get('error', payload.get('status'))}"
        )
    data = payload.get("data")
    if not isinstance(data, dict):
        raise MetricsUnavailable(f"prometheus: query {key}: response has no data")
    rtype, result = data.get("resultType"), data.get("result")
    try:
        if rtype == "vector":
            rows = [(key, item.get("metric") or {}, item["value"][1]) for item in result]
        elif rtype == "scalar":
            rows = [(key, {}, result[1])]
        else:
            raise MetricsUnavailable(
                f"prometheus: query {key} returned a {rtype}; an instant vector or scalar is needed"
            )
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        raise MetricsUnavailable(f"prometheus: query {key}: malformed result: {exc}") from exc
    return group(rows).get(key, [])


class PrometheusMetricsSource:
    """Reads a strategy's metrics from Prometheus, one instant query per metric, in parallel."""

    def __init__(
        self,
        address: str,
        queries: Optional[Mapping[str, str]] = None,
        *,
        session: Optional[aiohttp.ClientSession] = None,
    ) -> None:
        self.address = address.rstrip("/")
        self.overrides = dict(queries or {})
        self._session = session

    async def read(self, target: ScrapeTarget) -> MetricsSnapshot:
        problems = check_overrides(self.overrides)
        if problems:
            # A mistyped override would otherwise silently leave the default in force.
            raise MetricsUnavailable("; ".join(problems))
        queries = build_queries(self.overrides, target)
        try:
            async with asyncio.timeout(target.timeout_seconds):
                if self._session is not None:
                    series = await self._run_all(self._session, queries, target)
                else:
                    async with aiohttp.ClientSession() as session:
                        series = await self._run_all(session, queries, target)
        except TimeoutError as exc:
            raise MetricsUnavailable(
                f"prometheus: timeout after {target.timeout_seconds}s querying {self.address}"
            ) from exc
        return build_snapshot(series, target.now)

    async def _run_all(
        self, session: aiohttp.ClientSession, queries: Mapping[str, str], target: ScrapeTarget
    ) -> dict[str, list[Series]]:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = {k: tg.create_task(self._query(session, k, q, target)) for k, q in queries.items()}
        except* MetricsUnavailable as group:
            raise group.exceptions[0] from None
        except* Exception as group:
            # Anything else a query raised (connection errors, odd payloads, a bug):
            # still a failed read, reported as such, never an exception in the handler.
            exc = group.exceptions[0]
            raise MetricsUnavailable(
                f"prometheus: cannot query {self.address}: {type(exc).__name__}: {exc}"
            ) from exc
        return {k: t.result() for k, t in tasks.items()}

    async def _query(
        self, session: aiohttp.ClientSession, key: str, query: str, target: ScrapeTarget
    ) -> list[Series]:
        params = {"query": query, "time": f"{target.now.timestamp():.3f}"}
        async with session.get(f"{self.address}/api/v1/query", params=params) as resp:
            try:
                payload = await resp.json(content_type=None)
            except (aiohttp.ContentTypeError, ValueError) as exc:
                raise MetricsUnavailable(
                    f"prometheus: query {key}: HTTP {resp.status}, body is not JSON"
                ) from exc
            # Prometheus answers 400/422/503 with a JSON error body worth reporting.
            if resp.status != 200 and not (isinstance(payload, dict) and payload.get("status") == "error"):
                raise MetricsUnavailable(f"prometheus: query {key}: HTTP {resp.status}")
            return parse_query_response(key, payload)
