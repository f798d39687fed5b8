"""What the controller saw, as the policy layer gets it: metrics, children, requests.

Below both `policy` and `metrics`: the sources build these objects, the decisions read
them. Whatever the source (a direct scrape or Prometheus), the policy gets the same
frozen object of Decimals, so the risk arithmetic never touches a float and never knows
where the numbers came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Optional

from .requests import Request
from .types import to_decimal

# Keys under which counters travel into RiskState (status), short so status stays readable.
C_ORDERS_SUBMITTED = "orders_submitted"
C_ORDERS_FILLED = "orders_filled"
C_ERRORS = "errors"
C_LATENCY_SUM = "order_latency_sum"
C_LATENCY_COUNT = "order_latency_count"
C_BREAKER_PREFIX = "breaker_trips:"
# Not a counter: when the exporter says its counters were created. A change means the
# process restarted and every counter started again from zero, even if it has already
# climbed back above its old value (where "lower than before" cannot see the restart).
C_CREATED = "created"


class MetricsUnavailable(Exception):
    """The metrics could not be read. Never a pass: the caller fails closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative bucket counts by upper bound (le), sum, count.

    The +Inf bucket's bound is Decimal('Infinity'), the one non-finite Decimal allowed.
    """

    buckets: Mapping[Decimal, Decimal]
    sum: Decimal
    count: Decimal

    def __post_init__(self) -> None:
        b: dict[Decimal, Decimal] = {}
        for le, n in self.buckets.items():
            bound = le if isinstance(le, Decimal) else Decimal(str(le).replace("+Inf", "Infinity"))
            if bound.is_nan():
                raise ValueError("histogram bucket bound is NaN")
            b[bound] = to_decimal(n, what=f"bucket le={le}")
        object.__setattr__(self, "buckets", dict(sorted(b.items())))
        object.__setattr__(self, "sum", to_decimal(self.sum, what="histogram sum"))
        object.__setattr__(self, "count", to_decimal(self.count, what="histogram count"))

    def mean(self) -> Optional[Decimal]:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: Decimal) -> Optional[Decimal]:
        """Prometheus' histogram_quantile: linear interpolation inside the bucket.

        None without observations; the highest finite bound when the quantile falls in
        the +Inf bucket (as Prometheus does), since nothing better is known.
        """
        q = to_decimal(q, what="quantile")
        if not (Decimal(0) <= q <= Decimal(1)) or self.count <= 0 or not self.buckets:
            return None
        total = max(self.buckets.values())
        if total <= 0:
            return None
        rank = q * total
        lower_bound, lower_count = Decimal(0), Decimal(0)
        for le, n in self.buckets.items():
            if n >= rank:
                if not le.is_finite():
                    return lower_bound
                if n == lower_count:
                    return le
                return lower_bound + (le - lower_bound) * (rank - lower_count) / (n - lower_count)
            lower_bound, lower_count = le, n
        return lower_bound


_OPTIONAL_DECIMALS = (
    "cash",
    "largest_position_fraction",
    "orders_submitted",
    "orders_filled",
    "errors",
    "signal_alignment",
    "position_discrepancy",
    "execution_quality",
    "slippage_bps",
    "counters_created",
)


@dataclass(frozen=True)
class MetricsSnapshot:
    """The strategy's metrics at `taken_at`.

    portfolio_value is the one metric a snapshot cannot be without: a source that cannot
    get it raises MetricsUnavailable. Every other metric is None when the strategy does
    not export it; breaker_trips is empty when no breaker ever tripped (a labelled
    counter has no series before its first increment, so "absent" means zero).
    Numbers are normalised to Decimal on construction; floats go through repr.
    """

    taken_at: datetime
    portfolio_value: Decimal
    cash: Optional[Decimal] = None
    largest_position_fraction: Optional[Decimal] = None
    orders_submitted: Optional[Decimal] = None
    orders_filled: Optional[Decimal] = None
    errors: Optional[Decimal] = None
    breaker_trips: Mapping[str, Decimal] = field(default_factory=dict)
    order_latency: Optional[Histogram] = None
    signal_alignment: Optional[Decimal] = None
    position_discrepancy: Optional[Decimal] = None
    execution_quality: Optional[Decimal] = None
    slippage_bps: Optional[Decimal] = None
    # Epoch seconds at which the exporter's counters were created (process start).
    counters_created: Optional[Decimal] = None

    def __post_init__(self) -> None:
        if not isinstance(self.taken_at, datetime) or self.taken_at.tzinfo is None:
            raise ValueError("taken_at must be a timezone-aware datetime")
        object.__setattr__(self, "taken_at", self.taken_at.astimezone(UTC))
        object.__setattr__(
            self, "portfolio_value", to_decimal(self.portfolio_value, what="portfolio_value")
        )
        for name in _OPTIONAL_DECIMALS:
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, to_decimal(v, what=name))
        object.__setattr__(
            self,
            "breaker_trips",
            {str(k): to_decimal(v, what=f"breaker_trips[{k}]") for k, v in self.breaker_trips.items()},
        )
        if self.order_latency is not None and not isinstance(self.order_latency, Histogram):
            raise ValueError("order_latency must be a Histogram or None")

    def counters(self) -> dict[str, Decimal]:
        """The monotonic counters present in this snapshot, by their RiskState key.

        Includes C_CREATED when known (not a counter: a restart marker).
        """
        out: dict[str, Decimal] = {}
        for key, v in (
            (C_ORDERS_SUBMITTED, self.orders_submitted),
            (C_ORDERS_FILLED, self.orders_filled),
            (C_ERRORS, self.errors),
        ):
            if v is not None:
                out[key] = v
        if self.order_latency is not None:
            out[C_LATENCY_SUM] = self.order_latency.sum
            out[C_LATENCY_COUNT] = self.order_latency.count
        for btype, v in self.breaker_trips.items():
            out[C_BREAKER_PREFIX + btype] = v
        if self.counters_created is not None:
            out[C_CREATED] = self.counters_created
        return out


def counter_increases(
    before: Mapping[str, Decimal], after: Mapping[str, Decimal]
) -> tuple[dict[str, Decimal], bool]:
    """Increase of each counter from `before` to `after`, and whether a restart was seen.

    All counters come from one process, so one of them going down (or the creation
    marker changing) means the process restarted and every counter began again at zero:
    the increase of each is then its new value. Never negative. A counter absent from
    `before` started at zero; one absent from `after` is not reported.
    """
    created_before, created_after = before.get(C_CREATED), after.get(C_CREATED)
    restarted = created_before is not None and created_after is not None and created_before != created_after
    if not restarted:
        restarted = any(
            k != C_CREATED and k in before and v < before[k] for k, v in after.items()
        )
    out: dict[str, Decimal] = {}
    for k, v in after.items():
        if k == C_CREATED:
            continue
        if restarted or k not in before:
            out[k] = max(v, Decimal(0))
        else:
            out[k] = v - before[k]
    return out, restarted


@dataclass(frozen=True)
class BacktestObservation:
    job: str
    state: str  # Running | Succeeded | Failed
    result: Optional[dict[str, Any]] = None
    message: str = ""


@dataclass(frozen=True)
class EmergencyObservation:
    pod_gone: bool  # the strategy pod has exited (its SIGTERM handler is done)
    flatten: Optional[str] = None  # Running | Succeeded | Failed | None (no Job yet)
    flatten_message: str = ""


@dataclass(frozen=True)
class ChildrenObservation:
    """The strategy's StatefulSet and pod as the apiserver showed them this pass."""

    statefulset: bool  # it exists
    replicas: Optional[int] = None  # its spec.replicas
    desired_key: str = ""  # the phasegate.dev/desired-key annotation it was applied with
    pod: bool = False  # a pod of it exists (terminating or not)
    # The apiserver's refusal of the pod the status asks for (Pod Security, a quota, a
    # LimitRange, a missing ServiceAccount, a policy engine), from a server-side dry run.
    pod_refused: Optional[str] = None
    dry_run_key: str = ""  # the desired key of the pod that dry run was for ("" when none was made)
    # The halt sentinel stopped the pod (its annotation on the StatefulSet, policy/external.py).
    sentinel_stop: str = ""


@dataclass(frozen=True)
class PodRead:
    """Which book the pod that served a read was trading, from its annotations."""

    phase: Optional[str] = None
    mode: Optional[str] = None
    capital: Optional[Decimal] = None


@dataclass(frozen=True)
class Observation:
    """What the controller saw this time. Anything it did not look at is None."""

    metrics: Optional[MetricsSnapshot] = None  # a read made now
    metrics_error: Optional[str] = None  # a read was attempted and failed
    read_id: Optional[str] = None  # unique per read attempt: a read is folded in once
    pod: Optional[PodRead] = None  # the pod the read came from
    starting: bool = False  # no ready pod yet, inside the start-up grace: neither pass nor failure
    request: Optional[Request] = None
    request_error: Optional[str] = None
    request_id: Optional[str] = None  # id of an unreadable request, to answer it once
    backtest: Optional[BacktestObservation] = None
    emergency: Optional[EmergencyObservation] = None
    children: Optional[ChildrenObservation] = None
    # This pass is the strategy's interval evaluation (not a pass woken by a change): its
    # distance from the previous one is what the evaluation-lag rule checks.
    evaluated: bool = False
    # The first evaluation by this process: the previous one's time is only as fresh as the
    # last status write (up to a minute old), so its gap is not judged.
    first_evaluation: bool = False
