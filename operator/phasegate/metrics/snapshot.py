"""The snapshot types live in phasegate.api.observations, below both policy and metrics."""

from phasegate.api.observations import (  # noqa: F401
    C_BREAKER_PREFIX,
    C_CREATED,
    C_ERRORS,
    C_LATENCY_COUNT,
    C_LATENCY_SUM,
    C_ORDERS_FILLED,
    C_ORDERS_SUBMITTED,
    Histogram,
    MetricsSnapshot,
    MetricsUnavailable,
    counter_increases,
)
