"""The operator's own logs (structlog, JSON, strategy on every line) and Prometheus metrics."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

PER_STRATEGY: list[tuple[Any, tuple[str, ...]]] = []
"""Every metric with a series per strategy, and its label names (namespace and strategy
first): forget_strategy() removes all of a strategy's series from each of them."""


def _per_strategy(kind: Any, name: str, doc: str, *extra: str) -> Any:
    labels = ("namespace", "strategy", *extra)
    metric = kind(name, doc, list(labels), registry=REGISTRY)
    PER_STRATEGY.append((metric, labels))
    return metric


STRATEGY_PHASE = _per_strategy(
    Gauge, "phasegate_strategy_phase_index", "Index of the current phase in the strategy's ladder.", "phase", "state",
)
STRATEGY_FRACTION = _per_strategy(
    Gauge, "phasegate_strategy_capital_fraction", "Fraction of capital the strategy may put at risk.",
)
STRATEGY_HALTED = _per_strategy(
    Gauge, "phasegate_strategy_halted", "1 while the strategy is Halted or EmergencyStopped.",
)
TRANSITIONS = _per_strategy(Counter, "phasegate_transitions_total", "History entries written, by action.", "action")
HALTS = _per_strategy(
    Counter, "phasegate_halts_total", "Halts, by the breaker or request that caused them.", "reason",
)
RECONCILE_SECONDS = Histogram(
    "phasegate_reconcile_duration_seconds", "Time of one reconcile (observe, decide, write, apply).",
    ["trigger"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "phasegate_reconcile_errors_total", "Reconciles that raised, by exception type.",
    ["type"], registry=REGISTRY,
)
METRICS_READ_ERRORS = _per_strategy(
    Counter, "phasegate_metrics_read_errors_total", "Failed reads of a strategy's metrics.",
)
STATUS_CONFLICTS = Counter(
    "phasegate_status_conflicts_total", "Status writes refused by resourceVersion (someone wrote first).",
    registry=REGISTRY,
)

LEADER = Gauge(
    "phasegate_leader", "1 while this process holds the leader Lease and may act (renewed within the renew deadline).",
    ["identity"], registry=REGISTRY,
)
FENCED_WRITES = Counter(
    "phasegate_fenced_writes_total", "Writes refused because this process was not the leader at that moment.",
    ["op"], registry=REGISTRY,
)
LAST_EVALUATION = _per_strategy(
    Gauge, "phasegate_strategy_last_evaluation_timestamp_seconds",
    "Unix time of the strategy's last completed evaluation (an interval pass of its loop, on the leader).",
)
EVALUATION_INTERVAL = _per_strategy(
    Gauge, "phasegate_strategy_evaluation_interval_seconds",
    "The strategy's evaluation interval (spec.analysis.interval), seconds: PhasegateStrategyNotEvaluated "
    "compares the age of its last evaluation with it.",
)
EVALUATION_LAG = Histogram(
    "phasegate_evaluation_lag_seconds", "How late an evaluation started after it was due, seconds.",
    registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

URGENT_LATENCY = Histogram(
    "phasegate_urgent_pass_latency_seconds",
    "From a change by someone else (a breaker condition, a halt request) reaching the operator "
    "to the end of the pass that acted on it, seconds.",
    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GC_PAUSE = Histogram(
    "phasegate_gc_pause_seconds", "Pauses of Python's cyclic garbage collector, by generation.",
    ["generation"], registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
GC_FROZEN = Gauge(
    "phasegate_gc_frozen_objects",
    "Objects moved out of the cyclic collector's sight (gc.freeze, controller/collector.py), garbage among them "
    "until the next full collection.", registry=REGISTRY,
)
GC_FULL_UNREACHABLE = Counter(
    "phasegate_gc_full_collection_unreachable_objects_total",
    "Unreachable objects the collector's full collections of frozen and young objects found (cyclic garbage).",
    registry=REGISTRY,
)


def watch_gc() -> None:
    """Time every collection: a full one over a large heap stops the event loop, halts included."""
    import gc
    import time

    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            GC_PAUSE.labels(str(info.get("generation", ""))).observe(time.perf_counter() - started.pop("t"))

    if not any(getattr(cb, "phasegate", False) for cb in gc.callbacks):  # once per process
        callback.phasegate = True  # type: ignore[attr-defined]
        gc.callbacks.append(callback)
        GC_FROZEN.set_function(lambda: float(gc.get_freeze_count()))


def _series_of(metric: Any, labels: tuple[str, ...], namespace: str, name: str) -> set[tuple[str, ...]]:
    """The label values of every series `metric` has for this strategy (read back from its
    samples, the public way: prometheus_client keeps no index by label)."""
    out = set()
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace and sample.labels.get("strategy") == name:
                out.add(tuple(sample.labels[label] for label in labels))
    return out


_PHASE_LABELS: dict[tuple[str, str], tuple[str, str]] = {}
"""The (phase, state) of each strategy's one phase series: set_phase runs on every pass, so it
looks up the series to replace here rather than scanning the gauge."""


def set_phase(namespace: str, name: str, phase: str, state: str, index: int) -> None:
    """The phase gauge with exactly one series per strategy: the one it is in now. Its
    phase and state are labels, so a strategy that moved would otherwise leave every label
    set it has been in behind, each still saying its old index."""
    STRATEGY_PHASE.labels(namespace, name, phase, state).set(index)  # the new one first: no scrape sees none
    previous = _PHASE_LABELS.get((namespace, name))
    _PHASE_LABELS[(namespace, name)] = (phase, state)
    if previous is not None and previous != (phase, state):
        try:
            STRATEGY_PHASE.remove(namespace, name, *previous)
        except KeyError:  # forgotten meanwhile
            pass


# What export_strategy last set for each strategy: a pass that changes none of it sets nothing
# (four labelled-child lookups on every pass were a few percent of one).
_EXPORTED: dict[tuple[str, str], tuple[float, int, str, str, int]] = {}


def export_strategy(namespace: str, name: str, fraction: float, halted: bool, phase: str, state: str,
                    index: int) -> None:
    """The per-strategy gauges of the decided status."""
    now = (fraction, 1 if halted else 0, phase, state, index)
    if _EXPORTED.get((namespace, name)) == now:
        return
    STRATEGY_FRACTION.labels(namespace, name).set(fraction)
    STRATEGY_HALTED.labels(namespace, name).set(now[1])
    set_phase(namespace, name, phase, state, index)
    _EXPORTED[(namespace, name)] = now


def forget_strategy(namespace: str, name: str) -> None:
    """Removes every series of a strategy no longer watched (deleted): without this a
    deleted strategy kept exporting its last values until the operator restarted, and a
    deleted halted one kept PhasegateStrategyHalted firing."""
    _PHASE_LABELS.pop((namespace, name), None)
    _EXPORTED.pop((namespace, name), None)
    _LOGGERS.pop((namespace, name), None)
    for metric, labels in PER_STRATEGY:
        for values in _series_of(metric, labels, namespace, name):
            try:
                metric.remove(*values)
            except KeyError:  # removed meanwhile
                pass

SHARDS_HELD = Gauge(
    "phasegate_shards_held", "Shards this replica holds and acts on (sharded operators: --shards > 1).",
    ["identity"], registry=REGISTRY,
)
OWN_ECHOES = Counter(
    "phasegate_own_write_echoes_total",
    "Watch events that were our own status write echoed back, applied to kopf's copy without its processing.",
    registry=REGISTRY,
)
ELIDED_BODIES = Counter(
    "phasegate_elided_bodies_total",
    "Watch events of strategies this replica stands by for (another shard, or not the leader), kept as metadata only.",
    registry=REGISTRY,
)
FRESH_BODY_READS = Counter(
    "phasegate_fresh_body_reads_total",
    "Strategies read from the apiserver because this replica began acting on them while kopf kept them elided, "
    "by how (one LIST for many at a takeover, else a GET).",
    ["read"], registry=REGISTRY,
)
SENTINEL_HALTS = Counter(
    "phasegate_sentinel_halts_total",
    "StatefulSets the halt sentinel scaled to 0 on a breaker condition, before the strategy's pass "
    "(result: scaled, absent when there was none, error).",
    ["result"], registry=REGISTRY,
)
SENTINEL_WATCH_RESTARTS = Counter(
    "phasegate_sentinel_watch_restarts_total",
    "Times the halt sentinel's watch of the strategies failed and was started again.",
    registry=REGISTRY,
)
SENTINEL_UP = Gauge(
    "phasegate_sentinel_up",
    "1 while the halt sentinel's process runs (0: it is being started again; halts take the strategy's pass).",
    registry=REGISTRY,
)
SENTINEL_PROCESS_RESTARTS = Counter(
    "phasegate_sentinel_process_restarts_total",
    "Times the halt sentinel's process ended unasked and was started again.",
    registry=REGISTRY,
)
STATUS_WRITES = Counter(
    "phasegate_status_writes_total",
    "Status writes of the strategies (volatile fields are written at most every 120 s; decisions at once).",
    registry=REGISTRY,
)


def configure_logging(verbose: bool = False) -> None:
    """JSON lines on stdout for our logs and kopf's alike."""
    level = logging.DEBUG if verbose else logging.INFO
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _KopfObject()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf logs every handler run at INFO; our own transition lines carry what matters.
    for noisy in ("aiohttp.access", "kubernetes_asyncio.client.rest", "kopf.objects", "kopf.activities"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


class _KopfObject:
    """Names the strategy on kopf's own lines too (kopf passes the object as `k8s_ref`)."""

    def __call__(self, logger, method, event_dict):
        record = event_dict.get("_record")
        ref = getattr(record, "k8s_ref", None) if record is not None else None
        if isinstance(ref, dict):
            event_dict.setdefault("namespace", ref.get("namespace"))
            event_dict.setdefault("strategy" if ref.get("kind") == "TradingStrategy" else "object", ref.get("name"))
        return event_dict


_LOGGERS: dict[tuple[str, str], Any] = {}


def log_for(namespace: str, name: str):
    """The strategy's bound logger, made once (binding one on every pass was 3% of a pass)."""
    log = _LOGGERS.get((namespace, name))
    if log is None:
        log = _LOGGERS[(namespace, name)] = structlog.get_logger("phasegate").bind(namespace=namespace, strategy=name)
    return log
