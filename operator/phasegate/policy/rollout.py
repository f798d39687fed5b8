"""The decision core: (spec, status, observation, now) -> the next status.

Pure: no I/O, no clock, no kopf. The controller gathers an Observation, calls
`decide`, writes the returned status (with a resourceVersion precondition) and then
makes the world match it. Everything that must survive a restart is in the status,
so deciding again on the returned status and the same observation adds nothing
(safety rule 5).

Safety rules proven by tests/unit/policy/test_rollout_properties.py:
- the fraction never exceeds the phase's fraction nor spec.maxFraction, and never rises
  while a breaker is tripped, a risk/breaker condition is true, metrics are not fresh,
  the strategy is paused, or before the phase's minimum duration and gates have passed;
- Halted and EmergencyStopped are left only by a reset request with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Optional

from phasegate.api import (
    ABSORBING_STATES,
    ACTION_SEVERITY,
    Action,
    Approval,
    BreakerState,
    BreakerStatus,
    ConditionType,
    HistoryEntry,
    Mode,
    Severity,
    State,
    StrategySpec,
    StrategyStatus,
)
from phasegate.api.status import BacktestResult, RequestRecord

from .conditions import set_condition
from .requests import Request, Verb, refusal

OPERATOR = "operator"
REDUCE_CUT = Decimal("0.8")  # a reduce with no lower live rung keeps 80% of the fraction


@dataclass(frozen=True)
class BacktestObservation:
    job: str
    state: str  # Running | Succeeded | Failed
    result: Optional[dict[str, Any]] = None
    message: str = ""


@dataclass(frozen=True)
class Observation:
    """What the controller saw this time. Anything it did not look at is None."""

    metrics: Any = None  # a MetricsSnapshot read now, from the pod of `metrics_phase`
    metrics_error: Optional[str] = None  # a read was attempted and failed
    metrics_phase: Optional[str] = None  # the phase the pod serving the metrics runs
    request: Optional[Request] = None
    request_error: Optional[str] = None
    request_id: Optional[str] = None  # id of an unreadable request, to answer it once
    backtest: Optional[BacktestObservation] = None
    emergency: Any = None  # an EmergencyObservation while a sequence runs


@dataclass(frozen=True)
class Decision:
    status: StrategyStatus
    history: tuple[HistoryEntry, ...]  # entries added by this decision, oldest first
    outcome: str  # advance | hold | pause | reduce | halt | reset | resume | complete | ...
    reason: str

    @property
    def changed(self) -> bool:
        return bool(self.history)


@dataclass
class _Work:
    """A mutable draft of the next status, turned back into the frozen model at the end."""

    spec: StrategySpec
    now: datetime
    generation: Optional[int]
    fields: dict[str, Any]
    added: list[HistoryEntry] = field(default_factory=list)
    new_trips: set[str] = field(default_factory=set)  # breakers tripped by this decision
    outcome: str = "hold"
    reason: str = ""

    @property
    def state(self) -> State:
        return self.fields["state"]

    @property
    def index(self) -> int:
        return self.fields["phase_index"]

    @property
    def phase(self):
        return self.spec.phases[self.index]

    def record(
        self, action: str, reason: str, by: str = OPERATOR, to: Optional[str] = None, frm: Optional[str] = None, cause: Optional[str] = None
    ) -> None:
        seq = self.fields["history_seq"] + 1
        entry = HistoryEntry(
            seq=seq,
            at=self.now,
            action=action,
            **{"from": frm if frm is not None else self.fields["phase"]},
            to=to if to is not None else self.fields["phase"],
            fraction=self.fields["capital_fraction"],
            reason=reason,
            by=by,
            cause=cause,
        )
        self.fields["history_seq"] = seq
        self.fields["history"] = (list(self.fields["history"]) + [entry])[-self.spec.history_limit :]
        self.added.append(entry)
        self.outcome, self.reason = action, reason

    def enter_phase(self, index: int, action: str, reason: str, by: str = OPERATOR, snapshot: Any = None, cause: Optional[str] = None) -> None:
        from .gates import start_phase_window

        frm = self.fields["phase"]
        phase = self.spec.phases[index]
        if self.spec.capital_for(phase) != self.fields.get("capital"):
            self.rearm_risk()
        self.fields.update(
            phase=phase.name,
            phase_index=index,
            capital_fraction=min(phase.fraction, self.spec.max_fraction),
            capital=self.spec.capital_for(phase),
            phase_started_at=self.now,
            approved_phase=None,
            gates=[],
            risk=start_phase_window(self.fields["risk"], snapshot, at=self.now),
        )
        if phase.mode is Mode.BACKTEST:
            self.fields["state"] = State.VALIDATING
            self.fields["backtest"] = None
        elif index == len(self.spec.phases) - 1:
            self.fields["state"] = State.COMPLETED
        else:
            self.fields["state"] = State.PROGRESSING
        self.record(action, reason, by=by, to=phase.name, frm=frm, cause=cause)

    def rearm_risk(self) -> None:
        """A new capital base is a new book: drawdown and daily loss start from its first read."""
        self.fields["risk"] = self.fields["risk"].model_copy(update={"high_water_mark": None, "day_open_value": None})

    def set_state(self, state: State, action: str, reason: str, by: str = OPERATOR, cause: Optional[str] = None) -> None:
        self.fields["state"] = state
        self.fields["message"] = reason
        self.record(action, reason, by=by, cause=cause)


def _tripped(fields: dict[str, Any]) -> dict[str, BreakerStatus]:
    return {k: b for k, b in fields["breakers"].items() if b.state is BreakerState.TRIPPED}


def _phase_index(spec: StrategySpec, status: StrategyStatus) -> Optional[int]:
    names = [p.name for p in spec.phases]
    return names.index(status.phase) if status.phase in names else None


def decide(
    spec: StrategySpec,
    status: StrategyStatus,
    obs: Observation,
    now: datetime,
    generation: Optional[int] = None,
) -> Decision:
    w = _Work(spec=spec, now=now, generation=generation, fields=dict(status))
    w.fields["message"] = status.message

    if not status.phase:
        w.enter_phase(0, "start", "strategy created: starting the ladder at its first phase")
    elif _phase_index(spec, status) is None:
        # A halt stays a halt whatever happens to the spec (safety rule 3).
        if w.state is not State.FAILED and w.state not in ABSORBING_STATES:
            w.set_state(State.FAILED, "fail", f"phase {status.phase!r} is no longer in spec.phases: restore it or reset the strategy")
        return _finish(w)
    else:
        w.fields["phase_index"] = _phase_index(spec, status)

    _answer_request(w, status, obs)

    if w.state in ABSORBING_STATES and w.fields["capital_fraction"] > spec.max_fraction:
        # Stopped already, but the record must obey the new ceiling too; the rung is
        # stepped down by the first reconcile after a reset.
        w.fields["capital_fraction"] = spec.max_fraction
        w.record("reduce", f"spec.maxFraction lowered to {spec.max_fraction} while {w.state.value}")
    if w.state not in ABSORBING_STATES:
        _retry_failed_on_new_generation(w, status)
        _obey_ceiling(w)
        snapshot_fresh = _observe_metrics(w, status, obs)
        if w.state not in ABSORBING_STATES:  # a critical breach may have begun an emergency
            _latch_external_conditions(w)
            _act_on_breakers(w)
        if w.state not in ABSORBING_STATES:
            _observe_backtest(w, obs)
            _maybe_advance(w, obs, snapshot_fresh)
    if w.state is State.EMERGENCY_STOPPED:
        from .emergency import progress

        progress(w, obs.emergency)
    return _finish(w)


def _answer_request(w: _Work, status: StrategyStatus, obs: Observation) -> None:
    last = status.last_request.id if status.last_request else None
    if obs.request is None:
        if obs.request_error and obs.request_id and obs.request_id != last:
            w.fields["last_request"] = RequestRecord(
                id=obs.request_id, action="unknown", outcome="Rejected", message=obs.request_error, at=w.now
            )
        return
    req = obs.request
    if req.id == last:
        return  # answered already: a replayed annotation never acts twice
    current = StrategyStatus.model_validate({**w.fields})
    why_not = refusal(w.spec, current, req.verb)
    if why_not is None:
        _apply_request(w, req)
    w.fields["last_request"] = RequestRecord(
        id=req.id,
        action=req.verb.value,
        outcome="Rejected" if why_not else "Accepted",
        message=why_not or f"{req.verb.value} accepted",
        by=req.by,
        at=w.now,
    )


def _apply_request(w: _Work, req: Request) -> None:
    reason = f"{req.reason} (manual {req.verb.value})"
    if req.verb is Verb.HALT:
        w.fields["breakers"] = {
            **w.fields["breakers"],
            "manualHalt": BreakerStatus(
                state=BreakerState.TRIPPED, kind="manual", action=Action.HALT, tripped_at=w.now, reason=req.reason
            ),
        }
        w.set_state(State.HALTED, "halt", reason, by=req.by)
    elif req.verb is Verb.EMERGENCY:
        from .emergency import begin_emergency

        begin_emergency(w, req)
    elif req.verb is Verb.RESET:
        w.fields["breakers"] = {}
        w.fields["metrics"] = w.fields["metrics"].model_copy(update={"consecutive_errors": 0})
        w.fields["emergency"] = None
        # Re-arm drawdown and daily loss from the value at the next read: otherwise a
        # strategy still below its old high-water mark would trip again at once.
        w.rearm_risk()
        # The rung must prove itself again: the minimum duration restarts now.
        w.fields["phase_started_at"] = w.now
        w.fields["conditions"] = [
            c
            for c in w.fields["conditions"]
            if c.type not in (ConditionType.RISK_LIMIT_BREACHED.value, ConditionType.CIRCUIT_BREAKER_TRIPPED.value)
        ]
        phase = w.phase
        state = State.VALIDATING if phase.mode is Mode.BACKTEST else State.PROGRESSING
        if w.index == len(w.spec.phases) - 1 and phase.mode is not Mode.BACKTEST:
            state = State.COMPLETED
        w.set_state(state, "reset", reason, by=req.by)
    elif req.verb is Verb.PAUSE:
        w.set_state(State.PAUSED, "pause", reason, by=req.by)
    elif req.verb is Verb.RESUME:
        # Resume clears pause and reduce latches; a halt latch would have made the
        # strategy Halted, and only reset clears those.
        w.fields["breakers"] = {k: b for k, b in w.fields["breakers"].items() if b.action is Action.HALT}
        w.fields["phase_started_at"] = w.now
        last = w.index == len(w.spec.phases) - 1
        w.set_state(State.COMPLETED if last else State.PROGRESSING, "resume", reason, by=req.by)
    elif req.verb is Verb.PROMOTE:
        w.fields["approved_phase"] = w.phase.name
        w.record("approve", reason, by=req.by)


def _retry_failed_on_new_generation(w: _Work, status: StrategyStatus) -> None:
    if w.state is State.FAILED and w.generation is not None and w.generation != status.observed_generation:
        w.fields["backtest"] = None
        w.set_state(
            State.VALIDATING if w.phase.mode is Mode.BACKTEST else State.PROGRESSING,
            "retry",
            "spec changed: retrying the phase",
        )


def _obey_ceiling(w: _Work) -> None:
    """A lowered ceiling takes capital off at once: step down to the highest rung within it."""
    if w.phase.fraction <= w.spec.max_fraction and w.fields["capital_fraction"] <= w.spec.max_fraction:
        return
    target = w.spec.ceiling_index()
    if target < w.index:
        w.enter_phase(target, "reduce", f"spec.maxFraction lowered to {w.spec.max_fraction}: stepping down to {w.spec.phases[target].name}")
        if w.state is State.COMPLETED:
            w.fields["state"] = State.PROGRESSING
    else:
        w.fields["capital_fraction"] = min(w.fields["capital_fraction"], w.spec.max_fraction)
        w.record("reduce", f"spec.maxFraction lowered to {w.spec.max_fraction}")


def _observe_metrics(w: _Work, status: StrategyStatus, obs: Observation) -> bool:
    """Fold a metrics read (or a failed one) into status. True when fresh metrics of this phase arrived."""
    from .gates import evaluate_metric_gates
    from .risk import evaluate_risk

    health = w.fields["metrics"]
    pol = w.spec.analysis.metrics_failure
    if obs.metrics is not None:
        already = health.last_attempt_at is not None and health.last_attempt_at >= obs.metrics.taken_at
        w.fields["metrics"] = health.model_copy(
            update={"consecutive_errors": 0, "last_error": "", "last_success_at": obs.metrics.taken_at, "last_attempt_at": obs.metrics.taken_at}
        )
        if already:
            return False
        if obs.metrics_phase is not None and obs.metrics_phase != w.phase.name:
            # The previous phase's pod, still shutting down, trades another book (another
            # capital base): its values would read as a loss against the new one.
            return False
        evaluation = evaluate_risk(w.spec, w.fields["risk"], obs.metrics, w.now)
        w.fields["risk"] = evaluation.state
        _trip(w, list(evaluation.breaches))
        if w.phase.mode is not Mode.BACKTEST:
            w.fields["gates"] = evaluate_metric_gates(w.phase.effective_gates, w.fields["risk"], obs.metrics)
        return True
    if obs.metrics_error is not None:
        if health.last_attempt_at is not None and health.last_attempt_at >= w.now:
            return False  # this failure is counted already
        errors = health.consecutive_errors + 1
        w.fields["metrics"] = health.model_copy(
            update={"consecutive_errors": errors, "last_error": obs.metrics_error, "last_attempt_at": w.now}
        )
        if errors >= pol.halt_after:
            _trip_one(w, "metricsUnavailable", "metrics", Action.HALT, f"{errors} consecutive failed metrics reads (haltAfter {pol.halt_after}): {obs.metrics_error}")
        elif errors >= pol.pause_after:
            _trip_one(w, "metricsUnavailable", "metrics", Action.PAUSE, f"{errors} consecutive failed metrics reads (pauseAfter {pol.pause_after}): {obs.metrics_error}")
    return False


def _trip_one(w: _Work, name: str, kind: str, action: Action, reason: str, **extra: Any) -> None:
    old = w.fields["breakers"].get(name)
    if old is not None and old.state is BreakerState.TRIPPED and ACTION_SEVERITY[old.action] >= ACTION_SEVERITY[action]:
        return
    w.fields["breakers"] = {
        **w.fields["breakers"],
        name: BreakerStatus(state=BreakerState.TRIPPED, kind=kind, action=action, tripped_at=w.now, reason=reason, **extra),
    }
    w.new_trips.add(name)


def _trip(w: _Work, breaches: list) -> None:
    for b in breaches:
        _trip_one(
            w, b.name, b.kind, b.action, b.reason,
            value=b.value, limit=b.limit, severity=b.severity,
        )
        if b.severity is Severity.CRITICAL and b.kind == "risk":
            from .emergency import begin_emergency_on_breach

            begin_emergency_on_breach(w, b)


def _latch_external_conditions(w: _Work) -> None:
    """A breaker condition set by someone else (a person, an alert) is a trip like any other."""
    tripped = _tripped(w.fields)
    conditions = {c.type: c for c in w.fields["conditions"]}
    # (condition, breaker kinds that already explain it, kind of the breaker it latches)
    for ctype, explained_by, kind in (
        (ConditionType.CIRCUIT_BREAKER_TRIPPED, ("circuit", "external", "manual"), "external"),
        (ConditionType.RISK_LIMIT_BREACHED, ("risk",), "risk"),
    ):
        cond = conditions.get(ctype.value)
        if cond is None or cond.status != "True":
            continue
        if any(b.kind in explained_by for b in tripped.values()):
            continue
        _trip_one(w, f"external{ctype.value}", kind, Action.HALT, f"{ctype.value}: {cond.reason}: {cond.message}".rstrip(": "))


# What made the operator act, as Events and history tell it: a metrics error is never
# shown as a risk breach (users of other tools complain that the two look the same).
CAUSE_OF_KIND = {
    "metrics": "MetricsError",
    "risk": "RiskLimitBreached",
    "circuit": "CircuitBreakerTripped",
    "external": "CircuitBreakerTripped",
    "alert": "CircuitBreakerTripped",
    "manual": "Manual",
}


def _act_on_breakers(w: _Work) -> None:
    tripped = _tripped(w.fields)
    if not tripped:
        return
    worst_name, worst = max(tripped.items(), key=lambda kv: (ACTION_SEVERITY[kv[1].action], kv[0]))
    cause = CAUSE_OF_KIND.get(worst.kind)
    if worst.action is Action.HALT:
        w.set_state(State.HALTED, "halt", f"{worst_name}: {worst.reason}", cause=cause)
        return
    # Only a trip of this decision reduces: a latched breaker seen again must not step down twice.
    reducing = sorted(n for n in w.new_trips if tripped.get(n) is not None and tripped[n].action is Action.REDUCE)
    if reducing:
        _reduce(w, f"{reducing[0]}: {tripped[reducing[0]].reason}", CAUSE_OF_KIND.get(tripped[reducing[0]].kind))
    elif w.state in (State.PROGRESSING, State.COMPLETED, State.VALIDATING):
        w.set_state(State.PAUSED, "pause", f"{worst_name}: {worst.reason}", cause=cause)


def _reduce(w: _Work, reason: str, cause: Optional[str]) -> None:
    """Step back one live rung, or cut the fraction by 20% where there is no lower live rung."""
    idx = w.index
    if w.phase.mode is Mode.LIVE and idx > 0 and w.spec.phases[idx - 1].mode is Mode.LIVE:
        w.enter_phase(idx - 1, "reduce", reason, cause=cause)
    elif w.fields["capital_fraction"] > 0:
        w.fields["capital_fraction"] = (w.fields["capital_fraction"] * REDUCE_CUT).quantize(Decimal("0.0001"))
        w.fields["capital"] = w.spec.capital * w.fields["capital_fraction"]
        w.fields["phase_started_at"] = w.now
        w.rearm_risk()
        w.record("reduce", f"{reason}; fraction cut by 20%", cause=cause)
    else:
        w.set_state(State.PAUSED, "pause", f"{reason}; no capital at risk to reduce, pausing", cause=cause)
        return
    w.fields["state"] = State.PAUSED
    w.fields["message"] = reason


def _observe_backtest(w: _Work, obs: Observation) -> None:
    from .gates import evaluate_backtest_gates

    if w.phase.mode is not Mode.BACKTEST or w.state is not State.VALIDATING or obs.backtest is None:
        return
    bt = obs.backtest
    current = w.fields.get("backtest")
    if current is not None and current.job == bt.job and current.outcome in ("Passed", "Failed"):
        return
    if bt.state == "Running":
        w.fields["backtest"] = BacktestResult(job=bt.job, outcome="Running", message=bt.message)
        return
    if bt.state == "Failed":
        w.fields["backtest"] = BacktestResult(job=bt.job, outcome="Failed", message=bt.message)
        w.set_state(State.FAILED, "fail", f"backtest job {bt.job} failed: {bt.message}")
        return
    gates = evaluate_backtest_gates(w.phase.effective_gates, bt.result or {})
    w.fields["gates"] = gates
    r = bt.result or {}
    passed = all(g.passed for g in gates)
    w.fields["backtest"] = BacktestResult(
        job=bt.job,
        outcome="Passed" if passed else "Failed",
        sharpe=r.get("sharpe"),
        max_drawdown=r.get("maxDrawdown"),
        walk_forward_windows=r.get("walkForwardWindows"),
        monte_carlo_runs=r.get("monteCarloRuns"),
        message="; ".join(f"{g.name}: {g.message}" for g in gates if not g.passed),
    )
    if not passed:
        w.set_state(State.FAILED, "fail", "backtest gates failed: " + w.fields["backtest"].message)


def blockers(w: _Work, snapshot_fresh: bool) -> list[str]:
    """Everything that stops the next rung now; empty means advance."""
    out: list[str] = []
    phase = w.phase
    if w.state not in (State.PROGRESSING, State.VALIDATING):
        out.append(f"state is {w.state.value}")
    if _tripped(w.fields):
        out.append("a breaker is tripped: " + ", ".join(sorted(_tripped(w.fields))))
    if w.index + 1 >= len(w.spec.phases):
        out.append("on the last rung")
        return out
    if w.index + 1 > w.spec.ceiling_index():
        nxt = w.spec.phases[w.index + 1]
        out.append(f"CeilingReached: next rung {nxt.name} ({nxt.fraction}) is above spec.maxFraction {w.spec.max_fraction}")
    started = w.fields["phase_started_at"]
    if started is None or w.now - started < phase.min_duration_delta:
        out.append(f"MinDuration: {phase.name} needs {phase.min_duration or 'its default duration'} in phase")
    if phase.mode is Mode.BACKTEST:
        bt = w.fields.get("backtest")
        if bt is None or bt.outcome != "Passed":
            out.append("WaitingForBacktest: no passing backtest result yet")
    else:
        failed = [g for g in w.fields["gates"] if not g.passed]
        if failed:
            out.append("GatesNotPassed: " + "; ".join(f"{g.name}: {g.message}" for g in failed))
    if phase.approval is Approval.MANUAL and w.fields["approved_phase"] != phase.name:
        out.append(f"AwaitingApproval: run `phasegate promote NAME --reason ...` to approve leaving {phase.name}")
    if phase.mode is not Mode.BACKTEST and not snapshot_fresh:
        # Last, so that the message reads the same whether or not this was the first look.
        out.append("MetricsNotFresh: gates need a new metrics read of this phase's pod")
    return out


def _maybe_advance(w: _Work, obs: Observation, snapshot_fresh: bool) -> None:
    block = blockers(w, snapshot_fresh)
    if block:
        if w.state in (State.PROGRESSING, State.VALIDATING, State.COMPLETED):
            w.fields["message"] = block[0]
        return
    nxt = w.spec.phases[w.index + 1]
    gates = ", ".join(f"{g.name}={g.value}" for g in w.fields["gates"] if g.passed) or "no gates"
    action = "complete" if w.index + 1 == len(w.spec.phases) - 1 else "advance"
    w.enter_phase(w.index + 1, action, f"{w.phase.name} passed ({gates}); entering {nxt.name} at {nxt.fraction}", snapshot=obs.metrics)
    # The snapshot was of the previous phase's pod: the new phase starts with no fresh read.
    w.fields["message"] = (blockers(w, False) or [""])[0]


def _ready_reason(w: _Work) -> tuple[bool, str]:
    state = w.state
    if state in ABSORBING_STATES:
        tripped = _tripped(w.fields)
        if tripped:
            name, b = max(tripped.items(), key=lambda kv: (ACTION_SEVERITY[kv[1].action], kv[0]))
            return False, _camel_reason(name)
        return False, state.value
    if state is State.FAILED:
        return False, "Failed"
    if state is State.PAUSED:
        return False, "Paused"
    if state is State.COMPLETED:
        return True, "Completed"
    msg = w.fields.get("message") or ""
    head = msg.split(":", 1)[0]
    if head in ("CeilingReached", "MinDuration", "WaitingForBacktest", "MetricsNotFresh", "GatesNotPassed", "AwaitingApproval"):
        return True, head
    return True, state.value


def _camel_reason(name: str) -> str:
    return name[:1].upper() + name[1:]


def _finish(w: _Work) -> Decision:
    f = w.fields
    now, gen = w.now, w.generation
    tripped = _tripped(f)
    conds = list(f["conditions"])
    # A metrics error is neither a risk breach nor a breaker trip: MetricsAvailable says it.
    risk = {n: b for n, b in tripped.items() if b.kind == "risk"}
    circuit = {n: b for n, b in tripped.items() if b.kind not in ("risk", "metrics")}
    conds = set_condition(
        conds, ConditionType.RISK_LIMIT_BREACHED, bool(risk),
        _camel_reason(min(risk)) if risk else "WithinLimits",
        "; ".join(f"{n}: {b.reason}" for n, b in sorted(risk.items())), now, gen,
    )
    conds = set_condition(
        conds, ConditionType.CIRCUIT_BREAKER_TRIPPED, bool(circuit),
        _camel_reason(min(circuit)) if circuit else "Closed",
        "; ".join(f"{n}: {b.reason}" for n, b in sorted(circuit.items())), now, gen,
    )
    health = f["metrics"]
    phases = w.spec.phases
    known = 0 <= w.index < len(phases) and phases[w.index].name == f["phase"]
    if not known or phases[w.index].mode is Mode.BACKTEST:
        conds = set_condition(conds, ConditionType.METRICS_AVAILABLE, None, "NotApplicable", "no strategy pod in this phase", now, gen)
    elif health.consecutive_errors > 0:
        conds = set_condition(conds, ConditionType.METRICS_AVAILABLE, False, "MetricsUnavailable", f"{health.consecutive_errors} consecutive failed reads: {health.last_error}", now, gen)
    elif health.last_success_at is not None:
        conds = set_condition(conds, ConditionType.METRICS_AVAILABLE, True, "MetricsRead", f"last read {health.last_success_at.isoformat()}", now, gen)
    else:
        conds = set_condition(conds, ConditionType.METRICS_AVAILABLE, None, "NotYetRead", "no metrics read yet", now, gen)
    halted = w.state in ABSORBING_STATES
    conds = set_condition(conds, ConditionType.HALTED, halted, w.state.value if halted else "Trading", f["message"] if halted else "", now, gen)
    ready, reason = _ready_reason(w)
    conds = set_condition(conds, ConditionType.READY, ready, reason, f["message"], now, gen)
    progressing = w.state in (State.PROGRESSING, State.VALIDATING) and reason not in ("CeilingReached", "AwaitingApproval")
    conds = set_condition(conds, ConditionType.PROGRESSING, progressing, reason if not progressing else "Climbing", f["message"], now, gen)
    f["conditions"] = conds
    if gen is not None:
        f["observed_generation"] = gen
    new_status = StrategyStatus.model_validate(f)
    return Decision(status=new_status, history=tuple(w.added), outcome=w.outcome, reason=w.reason or f["message"])
