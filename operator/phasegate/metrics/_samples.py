"""From raw series (name, labels, value) to a MetricsSnapshot; shared by every source.

Both sources reduce to "series by sample name", so the rules for several series of one
metric live here once. Where several series are ambiguous the choice is the side that
looks worse for the strategy, so that an ambiguity can hide no risk; portfolio value,
the base of every ratio, must be a single series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Optional

from phasegate.api import contract as c

from .snapshot import Histogram, MetricsSnapshot, MetricsUnavailable

Series = tuple[Mapping[str, str], Decimal]
SeriesByName = Mapping[str, list[Series]]

LATENCY_BUCKET = c.M_ORDER_LATENCY + "_bucket"
LATENCY_SUM = c.M_ORDER_LATENCY + "_sum"
LATENCY_COUNT = c.M_ORDER_LATENCY + "_count"
PROCESS_START = "process_start_time_seconds"

_UNLABELLED_COUNTERS = (c.M_ORDERS_SUBMITTED, c.M_ORDERS_FILLED, c.M_ERRORS)


def _strip_total(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


def _values(series: SeriesByName, name: str) -> list[Decimal]:
    # A counter may arrive as `x_total` (the exposition) or `x` (an exporter predating
    # the suffix convention); accept either spelling.
    found = series.get(name) or series.get(_strip_total(name)) or []
    return [v for _, v in found if v.is_finite()]


def _reduce(series: SeriesByName, name: str, pick: Callable[[list[Decimal]], Decimal]) -> Optional[Decimal]:
    vals = _values(series, name)
    return pick(vals) if vals else None


def _total(vals: list[Decimal]) -> Decimal:
    return sum(vals, Decimal(0))


# Bucket bounds as read from `le`: a handful of strings, the same on every read of every pod.
_BOUNDS: dict[str, Optional[Decimal]] = {}
_BOUNDS_MAX = 4096


def _bound(le: str) -> Optional[Decimal]:
    if le in _BOUNDS:
        return _BOUNDS[le]
    try:
        bound: Optional[Decimal] = Decimal(le.replace("+Inf", "Infinity"))
    except ArithmeticError:
        bound = None
    if bound is not None and bound.is_nan():
        bound = None
    if len(_BOUNDS) < _BOUNDS_MAX:
        _BOUNDS[le] = bound
    return bound


def build_snapshot(series: SeriesByName, taken_at: datetime) -> MetricsSnapshot:
    """The snapshot these series describe; MetricsUnavailable without a single portfolio value."""
    pv = _values(series, c.M_PORTFOLIO_VALUE)
    if not pv:
        raise MetricsUnavailable(f"{c.M_PORTFOLIO_VALUE} is missing (or not a finite number)")
    if len(pv) > 1:
        raise MetricsUnavailable(
            f"{c.M_PORTFOLIO_VALUE} has {len(pv)} series; expected exactly one "
            "(select one, e.g. with a Prometheus query override)"
        )

    trips: dict[str, Decimal] = {}
    for labels, v in series.get(c.M_BREAKER_TRIPS) or series.get(_strip_total(c.M_BREAKER_TRIPS)) or []:
        if v.is_finite():
            btype = labels.get("breaker_type") or "unknown"
            trips[btype] = trips.get(btype, Decimal(0)) + v

    latency: Optional[Histogram] = None
    h_sum, h_count = _reduce(series, LATENCY_SUM, _total), _reduce(series, LATENCY_COUNT, _total)
    if h_sum is not None and h_count is not None:
        buckets: dict[Decimal, Decimal] = {}
        for labels, v in series.get(LATENCY_BUCKET, []):
            le = labels.get("le")
            if le is None or not v.is_finite():
                continue
            bound = _bound(le)
            if bound is None:
                continue
            buckets[bound] = buckets.get(bound, Decimal(0)) + v
        latency = Histogram(buckets=buckets, sum=h_sum, count=h_count)

    created = _reduce(series, PROCESS_START, max)
    if created is None:
        stamps = [
            v
            for name in _UNLABELLED_COUNTERS
            for labels, v in series.get(_strip_total(name) + "_created", [])
            if not labels and v.is_finite()
        ]
        created = min(stamps) if stamps else None

    return MetricsSnapshot(
        taken_at=taken_at,
        portfolio_value=pv[0],
        cash=_reduce(series, c.M_CASH, min),
        largest_position_fraction=_reduce(series, c.M_LARGEST_POSITION_FRACTION, max),
        orders_submitted=_reduce(series, c.M_ORDERS_SUBMITTED, _total),
        orders_filled=_reduce(series, c.M_ORDERS_FILLED, _total),
        errors=_reduce(series, c.M_ERRORS, _total),
        breaker_trips=trips,
        order_latency=latency,
        signal_alignment=_reduce(series, c.M_SIGNAL_ALIGNMENT, min),
        position_discrepancy=_reduce(series, c.M_POSITION_DISCREPANCY, max),
        execution_quality=_reduce(series, c.M_EXECUTION_QUALITY, min),
        slippage_bps=_reduce(series, c.M_SLIPPAGE_BPS, max),
        counters_created=created,
    )


def group(samples: Iterable[tuple[str, Mapping[str, str], object]]) -> dict[str, list[Series]]:
    """Series by sample name; values that are not numbers are dropped (NaN stays, as NaN)."""
    out: dict[str, list[Series]] = {}
    for name, labels, raw in samples:
        try:
            v = raw if isinstance(raw, Decimal) else Decimal(repr(raw)) if isinstance(raw, float) else Decimal(str(raw))
        except ArithmeticError:
            continue
        out.setdefault(name, []).append((dict(labels), v))
    return out
