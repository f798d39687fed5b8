"""Phase gates: may the strategy leave its phase? Pure; fail closed.

A gate the spec leaves out (None) is not checked. A gate whose input is missing fails,
with a message that says what is missing: "could not read" is never "passed".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Optional, Union

from phasegate.api.durations import parse_duration
from phasegate.api.observations import (
    C_BREAKER_PREFIX,
    C_LATENCY_COUNT,
    C_LATENCY_SUM,
    C_ORDERS_FILLED,
    C_ORDERS_SUBMITTED,
    MetricsSnapshot,
)
from phasegate.api.spec import Gates
from phasegate.api.status import GateResult, RiskState

from .risk import advance_counters, fmt, pct, seconds

ZERO = Decimal(0)


@dataclass(frozen=True)
class PhaseWindow:
    """What happened since the phase began, as RiskState keeps it.

    `totals` are counter increases up to the counters in `counters`; the increase up to
    a snapshot adds the step from `counters` to it, which is zero when that snapshot has
    already gone through evaluate_risk. So gates may be evaluated with the state from
    before or after evaluate_risk, and count the same.
    """

    totals: Mapping[str, Decimal]
    counters: Mapping[str, Decimal]
    critical_incidents: int = 0
    circuit_trips: int = 0
    started_at: Optional[datetime] = None

    @classmethod
    def of(cls, state: RiskState) -> PhaseWindow:
        return cls(
            totals={k: Decimal(v) for k, v in state.window_totals.items()},
            counters={k: Decimal(v) for k, v in state.window_counters.items()},
            critical_incidents=state.phase_critical_incidents,
            circuit_trips=state.phase_circuit_trips,
            started_at=state.window_started_at,
        )

    def increases(self, snap: Optional[MetricsSnapshot]) -> dict[str, Decimal]:
        """Each counter's increase since the phase began, up to `snap` when given."""
        out = dict(self.totals)
        if snap is not None:
            step, _, _ = advance_counters(self.counters, snap.counters())
            for k, n in step.items():
                out[k] = out.get(k, ZERO) + n
        return out


def start_phase_window(
    state: RiskState, snap: Optional[MetricsSnapshot], *, at: Optional[datetime] = None
) -> RiskState:
    """RiskState with a fresh phase window; call on every phase change.

    The window starts from `snap` when it is newer than the state's last sample, else
    from the last sample's counters. Without either, the window starts from zero: the
    phase's pod is new, so its counters count from its start, which is inside the phase.
    Critical breaches still open at the phase change count as incidents of the new phase.
    """
    reference = {k: Decimal(v) for k, v in state.counters.items()}
    if snap is not None and (state.last_sample_at is None or snap.taken_at > state.last_sample_at):
        _, _, reference = advance_counters(reference, snap.counters())
    started = at if at is not None else (snap.taken_at if snap is not None else state.last_sample_at)
    return state.model_copy(
        update={
            "window_counters": dict(reference),
            "window_totals": {},
            "window_started_at": started,
            "phase_critical_incidents": len(state.critical_breaches),
            "phase_circuit_trips": 0,
        }
    )


def _result(name: str, passed: bool, value: Optional[str], threshold: str, message: str) -> GateResult:
    return GateResult(name=name, passed=passed, value=value, threshold=threshold, message=message)


def _missing(name: str, threshold: str, what: str) -> GateResult:
    return _result(name, False, None, threshold, f"cannot evaluate: {what}")


def evaluate_metric_gates(
    gates: Gates,
    window: Union[PhaseWindow, RiskState],
    snap: Optional[MetricsSnapshot],
) -> list[GateResult]:
    """The metric gates of a phase (backtest gates are ignored here), in Gates field order.

    `snap` None means the metrics could not be read: every gate set fails.
    """
    if isinstance(window, RiskState):
        window = PhaseWindow.of(window)
    out: list[GateResult] = []
    inc = window.increases(snap) if snap is not None else {}
    unread = "metrics unavailable"

    if gates.min_fill_rate is not None:
        name, thr = "minFillRate", gates.min_fill_rate
        t = fmt(thr, 4)
        if snap is None:
            out.append(_missing(name, t, unread))
        elif C_ORDERS_SUBMITTED not in inc or C_ORDERS_FILLED not in inc:
            out.append(
                _missing(name, t, "the strategy does not export strategy_orders_submitted_total and strategy_orders_filled_total")
            )
        elif inc[C_ORDERS_SUBMITTED] <= 0:
            out.append(_missing(name, t, "no orders submitted during the phase yet"))
        else:
            sub, fill = inc[C_ORDERS_SUBMITTED], inc[C_ORDERS_FILLED]
            rate = fill / sub
            ok = rate > thr
            out.append(
                _result(
                    name, ok, fmt(rate, 4), t,
                    f"fill rate {pct(rate, thr)} ({fmt(fill)} of {fmt(sub)} orders this phase) "
                    f"{'is above' if ok else 'is not above'} {pct(thr, rate)}",
                )
            )

    if gates.no_breaker_trips:
        name = "noBreakerTrips"
        if snap is None:
            out.append(_missing(name, "0", unread))
        else:
            by_type = {
                k[len(C_BREAKER_PREFIX) :]: n for k, n in inc.items() if k.startswith(C_BREAKER_PREFIX) and n > 0
            }
            trips = sum(by_type.values(), ZERO)
            ok = trips == 0 and window.circuit_trips == 0
            if ok:
                msg = "no circuit breaker tripped during the phase"
            else:
                detail = ", ".join(f"{t}: {fmt(n)}" for t, n in sorted(by_type.items())) or "none counted"
                msg = (
                    f"circuit breaker trips during the phase ({detail}); "
                    f"{window.circuit_trips} circuit breach(es) recorded"
                )
            out.append(_result(name, ok, fmt(max(trips, Decimal(window.circuit_trips))), "0", msg))

    ratio_gates: tuple[tuple[str, Optional[Decimal], Optional[Decimal], str, str], ...] = (
        ("minSignalAlignment", gates.min_signal_alignment, snap.signal_alignment if snap else None,
         "strategy_signal_alignment_ratio", "signal alignment"),
        ("minExecutionQuality", gates.min_execution_quality, snap.execution_quality if snap else None,
         "strategy_execution_quality_ratio", "execution quality"),
    )
    # The loop has its own names: `thr` above is a Decimal, these thresholds may be unset.
    for name, ratio_thr, value, metric, noun in ratio_gates:
        if ratio_thr is None:
            continue
        t = fmt(ratio_thr, 4)
        if snap is None:
            out.append(_missing(name, t, unread))
        elif value is None:
            out.append(_missing(name, t, f"the strategy does not export {metric}"))
        else:
            ok = value >= ratio_thr
            out.append(
                _result(name, ok, fmt(value, 4), t,
                        f"{noun} {pct(value, ratio_thr)} {'>=' if ok else '<'} {pct(ratio_thr, value)}")
            )

    if gates.max_mean_latency is not None:
        name, t = "maxMeanLatency", gates.max_mean_latency
        limit = seconds(parse_duration(gates.max_mean_latency))
        if snap is None:
            out.append(_missing(name, t, unread))
        elif C_LATENCY_COUNT not in inc or C_LATENCY_SUM not in inc:
            out.append(_missing(name, t, "the strategy does not export the strategy_order_latency_seconds histogram"))
        elif inc[C_LATENCY_COUNT] <= 0:
            out.append(_missing(name, t, "no order latency observed during the phase yet"))
        else:
            mean = inc[C_LATENCY_SUM] / inc[C_LATENCY_COUNT]
            ok = mean < limit
            out.append(
                _result(name, ok, f"{fmt(mean * 1000, 1)}ms", t,
                        f"mean order latency {fmt(mean * 1000, 1)}ms over {fmt(inc[C_LATENCY_COUNT])} orders "
                        f"{'<' if ok else '>='} {fmt(limit * 1000, 1)}ms")
            )

    if gates.no_critical_incident:
        name = "noCriticalIncident"
        n = window.critical_incidents
        if snap is None:
            # An incident may be happening right now, unseen: not a pass.
            out.append(_missing(name, "0", unread))
        else:
            ok = n == 0
            out.append(
                _result(name, ok, str(n), "0",
                        "no critical incident during the phase" if ok else f"{n} critical incident(s) during the phase")
            )

    if gates.max_slippage_bps is not None:
        name, thr = "maxSlippageBps", gates.max_slippage_bps
        t = fmt(thr, 4)
        if snap is None:
            out.append(_missing(name, t, unread))
        elif snap.slippage_bps is None:
            out.append(_missing(name, t, "the strategy does not export strategy_slippage_bps"))
        else:
            v = snap.slippage_bps
            ok = v <= thr
            out.append(_result(name, ok, fmt(v, 4), t,
                               f"slippage {fmt(v, 2)} bps {'<=' if ok else '>'} {fmt(thr, 2)} bps"))
    return out


def _number(result: Mapping[str, Any], key: str) -> tuple[Optional[Decimal], str]:
    """(value, problem) for one field of the backtest result."""
    if key not in result or result[key] is None:
        return None, f"the backtest result has no {key!r}"
    raw = result[key]
    if isinstance(raw, bool):
        return None, f"the backtest result's {key!r} is not a number: {raw!r}"
    try:
        v = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(str(raw).strip())
    except ArithmeticError:
        return None, f"the backtest result's {key!r} is not a number: {raw!r}"
    if not v.is_finite():
        return None, f"the backtest result's {key!r} is not a finite number: {raw!r}"
    return v, ""


def evaluate_backtest_gates(gates: Gates, result: Optional[Mapping[str, Any]]) -> list[GateResult]:
    """The backtest gates against the Job's JSON {"sharpe","maxDrawdown","walkForwardWindows","monteCarloRuns"}."""
    out: list[GateResult] = []
    checks = (
        ("minSharpe", gates.min_sharpe, "sharpe", ">="),
        ("maxBacktestDrawdown", gates.max_backtest_drawdown, "maxDrawdown", "<"),
        ("minWalkForwardWindows", gates.min_walk_forward_windows, "walkForwardWindows", ">="),
        ("minMonteCarloRuns", gates.min_monte_carlo_runs, "monteCarloRuns", ">="),
    )
    for name, thr, key, op in checks:
        if thr is None:
            continue
        threshold = Decimal(thr)
        t = fmt(threshold, 4)
        if not isinstance(result, Mapping):
            out.append(_missing(name, t, "no backtest result (the Job wrote no JSON termination message)"))
            continue
        v, problem = _number(result, key)
        if v is None:
            out.append(_missing(name, t, problem))
            continue
        if key == "maxDrawdown":
            # Some backtesters report drawdown as a negative return; the size is what counts,
            # and a sign must not turn a 25% drawdown into a pass.
            v = abs(v)
        ok = v >= threshold if op == ">=" else v < threshold
        out.append(
            _result(name, ok, fmt(v, 4), t,
                    f"backtest {key} {fmt(v, 4)} {op if ok else ('<' if op == '>=' else '>=')} {t}")
        )
    return out


__all__ = ["PhaseWindow", "evaluate_backtest_gates", "evaluate_metric_gates", "start_phase_window"]
