"""Per-strategy series in the operator's real prometheus_client registry: one phase series
per strategy, and nothing left of a strategy once forget_strategy() ran (the loop's end).

Read back as Prometheus would: the registry's exposition text, parsed."""

from __future__ import annotations

import uuid

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from phasegate.controller import telemetry


def _series(namespace: str, strategy: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, of every sample the registry exports for this strategy."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(generate_latest(telemetry.REGISTRY).decode()):
        for s in family.samples:
            if s.labels.get("namespace") == namespace and s.labels.get("strategy") == strategy:
                out.setdefault(s.name, []).append(dict(s.labels))
    return out


def _ns() -> str:
    return f"ns-{uuid.uuid4().hex[:6]}"  # the registry is process-wide: each test its own strategies


def _export_everything(ns: str, name: str) -> None:
    """What a strategy's loop and reconciles set over its life, one of each."""
    telemetry.set_phase(ns, name, "live-10", "Progressing", 3)
    telemetry.STRATEGY_FRACTION.labels(ns, name).set(0.1)
    telemetry.STRATEGY_HALTED.labels(ns, name).set(1)
    telemetry.TRANSITIONS.labels(ns, name, "advance").inc()
    telemetry.TRANSITIONS.labels(ns, name, "halt").inc()
    telemetry.HALTS.labels(ns, name, "maxDrawdown").inc()
    telemetry.METRICS_READ_ERRORS.labels(ns, name).inc()
    telemetry.LAST_EVALUATION.labels(ns, name).set(1.7e9)
    telemetry.EVALUATION_INTERVAL.labels(ns, name).set(30)


def test_every_metric_with_a_strategy_label_is_forgotten_with_the_strategy():
    """A metric added later with a per-strategy label but not through _per_strategy would
    keep exporting a deleted strategy: fail here instead."""
    with_strategy = {
        m._name for m in set(telemetry.REGISTRY._collector_to_names) if "strategy" in getattr(m, "_labelnames", ())
    }
    assert with_strategy == {m._name for m, _ in telemetry.PER_STRATEGY}
    assert len(with_strategy) == 8


def test_forget_strategy_removes_every_series_of_that_strategy_and_only_those():
    ns = _ns()
    _export_everything(ns, "gone")
    _export_everything(ns, "kept")
    _export_everything(ns + "-other", "gone")  # the same name in another namespace
    before = _series(ns, "gone")
    assert {
        "phasegate_strategy_phase_index", "phasegate_strategy_capital_fraction", "phasegate_strategy_halted",
        "phasegate_transitions_total", "phasegate_halts_total", "phasegate_metrics_read_errors_total",
        "phasegate_strategy_last_evaluation_timestamp_seconds", "phasegate_strategy_evaluation_interval_seconds",
    } <= set(before)
    assert len(before["phasegate_transitions_total"]) == 2

    telemetry.forget_strategy(ns, "gone")

    assert _series(ns, "gone") == {}
    shape = {k: len(v) for k, v in before.items()}
    assert {k: len(v) for k, v in _series(ns, "kept").items()} == shape
    assert {k: len(v) for k, v in _series(ns + "-other", "gone").items()} == shape
    telemetry.forget_strategy(ns, "gone")  # twice (a loop ending again) is harmless
    telemetry.forget_strategy(ns, "never-seen")


def test_a_forgotten_strategy_that_comes_back_exports_afresh():
    ns = _ns()
    _export_everything(ns, "again")
    telemetry.forget_strategy(ns, "again")
    telemetry.STRATEGY_HALTED.labels(ns, "again").set(0)
    assert _series(ns, "again") == {"phasegate_strategy_halted": [{"namespace": ns, "strategy": "again"}]}


def test_the_phase_gauge_keeps_one_series_per_strategy_the_current_one():
    ns = _ns()
    for index, (phase, state) in enumerate([("paper", "Progressing"), ("shadow", "Progressing"),
                                            ("live-10", "Progressing"), ("live-10", "Halted")]):
        telemetry.set_phase(ns, "climber", phase, state, min(index, 2))
        telemetry.set_phase(ns, "other", "paper", "Progressing", 0)
        (only,) = _series(ns, "climber")["phasegate_strategy_phase_index"]
        assert (only["phase"], only["state"]) == (phase, state)
    assert telemetry.STRATEGY_PHASE.labels(ns, "climber", "live-10", "Halted")._value.get() == 2
    assert len(_series(ns, "other")["phasegate_strategy_phase_index"]) == 1
