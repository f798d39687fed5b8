"""The decision core: (spec, status, observation, now) -> the next status and the children it needs.

Pure: no I/O, no clock, no kopf. The controller gathers an Observation, calls `decide`,
writes the returned status (with a resourceVersion precondition) and then makes the
children match `Decision.desired`, on every pass. Everything that must survive a
restart is in the status, so deciding again on the returned status and the same
observation adds nothing (safety rule 5).

The shape that keeps the guard from going blind:
- holds, not a state field: pauses, approvals, halts, emergencies and "spec invalid"
  are typed holds with one owner and one way out; `state` is derived from them;
- every configured limit is checked on every read or counted as a failed read for
  that limit, and metricsFailure decides when that pauses or halts;
- risk is graded on a flow-adjusted series (phasegate.policy.accounting) on every read,
  whichever pod served it;
- decisions never see time go backwards (status.clock).

Safety rules proven by tests/unit/policy/test_state_machine.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Optional

from phasegate.api.observations import BacktestObservation, Observation
from phasegate.api.requests import Request, Verb
from phasegate.api.spec import ACTION_SEVERITY, Action, Approval, Mode, Phase, StrategySpec
from phasegate.api.status import (
    STOPPING_HOLDS,
    BacktestResult,
    BreakerState,
    BreakerStatus,
    Cause,
    Condition,
    ConditionType,
    EmergencyRecord,
    GateResult,
    HistoryEntry,
    Hold,
    HoldKind,
    MetricsHealth,
    RequestOutcome,
    RequestRecord,
    RiskState,
    Severity,
    State,
    StrategyStatus,
    Transition,
)

from . import accounting
from . import holds as H
from .conditions import ConditionSet
from .desired import Desired, desired_for, mismatch
from .emergency import begin_emergency, begin_emergency_on_breach, flatten_wanted, progress
from .external import external_halts, unanswered_stop
from .gates import evaluate_backtest_gates, evaluate_metric_gates, start_phase_window
from .requests import refusal
from .risk import KIND_CIRCUIT, KIND_RISK, Breach, configured_limits, evaluate_risk, failed_read
from .timing import startup_grace

OPERATOR = "operator"
REDUCE_CUT = Decimal("0.8")  # a reduce with no lower live rung keeps 80% of the fraction
ANSWERED_KEPT = 32  # request ids remembered, so that a replayed request never acts twice

# Observation and Request are part of this module's interface for its callers.
__all__ = ["BacktestObservation", "Decision", "Observation", "Request", "Verb", "blockers", "decide"]


@dataclass(frozen=True)
class Decision:
    status: StrategyStatus
    history: tuple[HistoryEntry, ...]  # entries added by this decision, oldest first
    outcome: str  # the last transition, or "hold"
    reason: str
    desired: Optional[Desired] = None  # None: the spec does not say what the children are

    @property
    def changed(self) -> bool:
        return bool(self.history)


@dataclass
class Draft:
    """The next status being decided, field by field (typed; turned into the model at the end)."""

    spec: StrategySpec
    now: datetime
    generation: Optional[int]
    observed_generation: Optional[int]
    phase: str
    phase_index: int
    visit: int
    capital_fraction: Decimal
    capital: Optional[Decimal]
    phase_started_at: Optional[datetime]
    holds: list[Hold]
    message: str
    conditions: list[Condition]
    history: list[HistoryEntry]
    history_seq: int
    last_request: Optional[RequestRecord]
    answered: list[str]
    risk: RiskState
    metrics: MetricsHealth
    gates: list[GateResult]
    backtest: Optional[BacktestResult]
    emergency: Optional[EmergencyRecord]
    events_posted_seq: int
    spec_generation: Optional[int]
    last_readable_spec: Optional[dict]
    added: list[HistoryEntry] = field(default_factory=list)
    base: Optional[StrategyStatus] = None  # the status decided on
    refused: Optional[str] = None  # the apiserver refuses the pod this status asks for
    outcome: str = "hold"
    reason: str = ""

    @classmethod
    def of(cls, spec: StrategySpec, status: StrategyStatus, now: datetime, generation: Optional[int]) -> Draft:
        clock = max(now, status.clock) if status.clock is not None else now
        return cls(
            spec=spec, now=clock, generation=generation, observed_generation=status.observed_generation,
            phase=status.phase, phase_index=status.phase_index, visit=status.visit,
            capital_fraction=status.capital_fraction, capital=status.capital,
            phase_started_at=status.phase_started_at, holds=list(status.holds), message=status.message,
            conditions=list(status.conditions), history=list(status.history), history_seq=status.history_seq,
            last_request=status.last_request, answered=list(status.answered), risk=status.risk,
            metrics=status.metrics, gates=list(status.gates), backtest=status.backtest,
            emergency=status.emergency, events_posted_seq=status.events_posted_seq,
            spec_generation=status.spec_generation, last_readable_spec=status.last_readable_spec,
            base=status,
        )

    # --- reading -------------------------------------------------------------------

    @property
    def current(self) -> Optional[Phase]:
        if 0 <= self.phase_index < len(self.spec.phases) and self.spec.phases[self.phase_index].name == self.phase:
            return self.spec.phases[self.phase_index]
        return None

    @property
    def stopped(self) -> bool:
        return any(h.kind in STOPPING_HOLDS for h in self.holds)

    def held(self, *kinds: HoldKind) -> list[Hold]:
        return [h for h in self.holds if h.kind in kinds]

    def state(self) -> State:
        return H.derive_state(self.spec, self.phase, self.phase_index, self.holds)

    # --- writing -------------------------------------------------------------------

    def record(
        self, action: Transition, reason: str, *, by: str = OPERATOR, to: Optional[str] = None,
        frm: Optional[str] = None, cause: Optional[Cause] = None,
    ) -> HistoryEntry:
        self.history_seq += 1
        entry = HistoryEntry(
            seq=self.history_seq, at=self.now, action=action,
            **{"from": frm if frm is not None else self.phase},
            to=to if to is not None else self.phase,
            fraction=self.capital_fraction, reason=reason, by=by, cause=cause,
        )
        self.history = (self.history + [entry])[-self.spec.history_limit:]
        self.added.append(entry)
        self.outcome, self.reason = action.value, reason
        return entry

    def hold(
        self, kind: HoldKind, action: Optional[Transition], reason: str, *, source: str, by: str = OPERATOR,
        cause: Optional[Cause] = None, breach: Optional[Breach] = None, hold_id: Optional[str] = None,
    ) -> Hold:
        """Add a hold and the history entry that records it (safety rule 4); with `action`
        None the hold belongs to the entry just recorded (a reduce and its pause are one step)."""
        entry = self.record(action, reason, by=by, cause=cause) if action is not None else self.added[-1]
        h = Hold(
            kind=kind, id=hold_id or f"#{entry.seq}", seq=entry.seq, source=source, cause=cause,
            reason=reason, since=self.now, by=by, visit=self.visit,
            value=breach.value if breach else None, limit=breach.limit if breach else None,
            severity=breach.severity if breach else None, action=breach.action if breach else None,
        )
        self.holds.append(h)
        self.message = reason
        return h

    def lift(self, *remove: Hold) -> None:
        ids = {id(h) for h in remove}
        self.holds = [h for h in self.holds if id(h) not in ids]

    def new_visit(self) -> None:
        """A new phase visit: the minimum duration restarts and a manual phase needs a new approval."""
        self.visit += 1
        self.phase_started_at = self.now
        self.holds = [h for h in self.holds if h.kind is not HoldKind.APPROVAL_WAIT]
        phase = self.current
        if phase is not None and phase.approval is Approval.MANUAL and self.phase_index < len(self.spec.phases) - 1:
            self.holds.append(
                Hold(kind=HoldKind.APPROVAL_WAIT, id=f"v{self.visit}", seq=self.history_seq, source=phase.name,
                     reason=f"leaving {phase.name} needs `phasegate promote`", since=self.now, visit=self.visit)
            )

    def enter_phase(self, index: int, action: Transition, reason: str, *, by: str = OPERATOR,
                    cause: Optional[Cause] = None, snapshot: object = None) -> None:
        frm = self.phase
        phase = self.spec.phases[index]
        self.phase, self.phase_index = phase.name, index
        self.capital_fraction = min(phase.fraction, self.spec.max_fraction)
        self.capital = capital_of(self.spec, phase, self.capital_fraction)
        self.gates = []
        self.risk = start_phase_window(self.risk, snapshot, at=self.now)  # type: ignore[arg-type]
        if phase.mode is Mode.BACKTEST:
            self.backtest = None
        self.record(action, reason, by=by, to=phase.name, frm=frm, cause=cause)
        self.new_visit()

    def to_status(self) -> StrategyStatus:
        return StrategyStatus(
            observed_generation=self.observed_generation, phase=self.phase, phase_index=self.phase_index,
            state=self.state(), capital_fraction=self.capital_fraction, capital=self.capital,
            phase_started_at=self.phase_started_at, visit=self.visit, clock=self.now, holds=self.holds,
            message=self.message, conditions=self.conditions, breakers=breakers_of(self.holds),
            history=self.history, history_seq=self.history_seq, last_request=self.last_request,
            answered=self.answered, events_posted_seq=self.events_posted_seq,
            spec_generation=self.spec_generation, last_readable_spec=self.last_readable_spec,
            risk=self.risk, metrics=self.metrics, gates=self.gates, backtest=self.backtest,
            emergency=self.emergency,
        )


def capital_of(spec: StrategySpec, phase: Phase, fraction: Decimal) -> Decimal:
    """Capital the strategy may use: paper capital until live, then base x fraction."""
    if phase.mode is Mode.LIVE:
        return spec.capital * fraction
    return spec.paper_capital if spec.paper_capital is not None else spec.capital


def breakers_of(holds: list[Hold]) -> dict[str, BreakerStatus]:
    """The breakers view of status: what tripped, derived from the holds (never read back)."""
    kind_of = {Cause.RISK_LIMIT_BREACHED: "risk", Cause.CIRCUIT_BREAKER_TRIPPED: "circuit",
               Cause.METRICS_ERROR: "metrics", Cause.MANUAL: "manual"}
    # (An emergency is shown by status.emergency, with its steps: it is not a breaker.)
    action_of = {HoldKind.HALT: Action.HALT, HoldKind.RISK_PAUSE: Action.PAUSE, HoldKind.METRICS_PAUSE: Action.PAUSE}
    out: dict[str, BreakerStatus] = {}
    for h in sorted(holds, key=lambda h: h.seq):
        if h.kind not in action_of or not h.source:
            continue
        old = out.get(h.source)
        action = h.action or action_of[h.kind]
        if old is not None and old.action is not None and ACTION_SEVERITY[old.action] >= ACTION_SEVERITY[action]:
            continue
        out[h.source] = BreakerStatus(
            state=BreakerState.TRIPPED, kind=kind_of.get(h.cause, "external") if h.cause else "external",
            value=h.value, limit=h.limit, severity=h.severity, action=h.action or action_of[h.kind],
            tripped_at=h.since, reason=h.reason,
        )
    return out


def decide(
    spec: StrategySpec,
    status: StrategyStatus,
    obs: Observation,
    now: datetime,
    generation: Optional[int] = None,
    *,
    spec_error: Optional[str] = None,
) -> Decision:
    """Decide the next status.

    `spec` is the spec to guard with: the object's own, or, when that one cannot be read
    (`spec_error` says why), the last one the operator could read. With a spec error the
    strategy never advances, but its limits are checked and every manual action works.
    """
    d = Draft.of(spec, status, now, generation)
    if not d.phase:
        d.enter_phase(0, Transition.START, "strategy created: starting the ladder at its first phase")
    elif d.current is None:
        index = next((i for i, p in enumerate(spec.phases) if p.name == d.phase), None)
        if index is not None:
            d.phase_index = index
    _note_refusal(d, obs)
    _sync_spec_hold(d, spec_error if d.current is not None else (
        spec_error or f"phase {d.phase!r} is not in spec.phases: restore it (the operator keeps the strategy where it is)"))
    _latch_external_conditions(d)
    _latch_sentinel_stop(d, obs)
    _answer_request(d, obs)
    if d.current is not None:
        if spec_error is None:
            _retry_failed_on_new_generation(d, status)
        _obey_ceiling(d)
        errors_before = d.metrics.consecutive_errors
        fresh = _observe_metrics(d, obs)
        _check_evaluation_lag(d, obs, counted=d.metrics.consecutive_errors > errors_before)
        _act_on_metrics_failures(d)
        _observe_backtest(d, obs.backtest)
        if spec_error is None:
            _maybe_advance(d, obs, fresh)
        if spec_error is None and generation is not None:
            d.observed_generation = generation
            if d.spec_generation != generation:
                d.spec_generation, d.last_readable_spec = generation, spec.wire()
    if d.emergency is not None and not d.emergency.finished:
        progress(d, obs.emergency)
    return _finish(d, obs, spec_error)


# --- spec and admission -----------------------------------------------------------------


def _note_refusal(d: Draft, obs: Observation) -> None:
    d.refused = obs.children.pod_refused if obs.children is not None else None
    was = any(c.type == ConditionType.POD_CREATE_FAILED.value and c.status == "True" for c in d.conditions)
    if d.refused and not was:
        d.record(Transition.POD_REFUSED, f"the cluster refuses the strategy pod: {d.refused}")


def _sync_spec_hold(d: Draft, error: Optional[str]) -> None:
    held = d.held(HoldKind.SPEC_INVALID)
    reason = f"the spec cannot be read ({error}): guarding with the last spec that could be read, not advancing"
    if error is not None and not held:
        d.hold(HoldKind.SPEC_INVALID, Transition.SPEC_INVALID, reason, source="spec", cause=Cause.SPEC)
    elif error is not None:
        d.holds = [h.model_copy(update={"reason": reason}) if h in held else h for h in d.holds]
    elif held:
        d.lift(*held)
        d.record(Transition.SPEC_VALID, "the spec can be read again", cause=Cause.SPEC)


def _retry_failed_on_new_generation(d: Draft, status: StrategyStatus) -> None:
    failed = d.held(HoldKind.FAILED)
    if failed and d.generation is not None and d.generation != status.observed_generation:
        d.lift(*failed)
        d.backtest = None
        d.record(Transition.RETRY, "spec changed: retrying the phase")


# --- requests ---------------------------------------------------------------------------


def _answer(d: Draft, rid: str, verb: str, outcome: RequestOutcome, message: str, by: str = "") -> None:
    d.last_request = RequestRecord(id=rid, action=verb, outcome=outcome, message=message, by=by, at=d.now)
    d.answered = (d.answered + [rid])[-ANSWERED_KEPT:]


def _answer_request(d: Draft, obs: Observation) -> None:
    if obs.request is None:
        if obs.request_error and obs.request_id and obs.request_id not in d.answered:
            _answer(d, obs.request_id, "unknown", RequestOutcome.REJECTED, obs.request_error)
        return
    req = obs.request
    if req.id in d.answered:
        return  # answered already: a replayed annotation never acts twice
    why_not = refusal(d.spec, d.to_status(), req)
    if why_not is None:
        _apply_request(d, req)
    _answer(d, req.id, req.verb.value, RequestOutcome.REJECTED if why_not else RequestOutcome.ACCEPTED,
            why_not or f"{req.verb.value} accepted", req.by)


def _apply_request(d: Draft, req: Request) -> None:
    reason = f"{req.reason} (manual {req.verb.value})"
    if req.verb is Verb.HALT:
        d.hold(HoldKind.HALT, Transition.HALT, reason, source="manualHalt", by=req.by, cause=Cause.MANUAL)
    elif req.verb is Verb.EMERGENCY:
        begin_emergency(d, req)
    elif req.verb is Verb.RESET:
        d.lift(*d.held(*STOPPING_HOLDS))
        d.emergency = None
        d.metrics = d.metrics.model_copy(update={"consecutive_errors": 0})
        # The person accepts the losses so far: the series is re-based, not restarted.
        d.risk = d.risk.model_copy(update={"book": accounting.rebase(d.risk.book), "limit_failures": {}})
        d.record(Transition.RESET, reason, by=req.by)
        d.new_visit()  # the rung proves itself again; an approval given before the halt is void
    elif req.verb is Verb.PAUSE:
        d.hold(HoldKind.MANUAL_PAUSE, Transition.PAUSE, reason, source="manualPause", by=req.by, cause=Cause.MANUAL)
    elif req.verb is Verb.RESUME:
        d.lift(*H.resumable(d.to_status()))
        d.record(Transition.RESUME, reason, by=req.by)
    elif req.verb is Verb.PROMOTE:
        d.lift(*[h for h in d.held(HoldKind.APPROVAL_WAIT) if h.visit == d.visit])
        d.record(Transition.APPROVE, reason, by=req.by)


# --- the ceiling ------------------------------------------------------------------------


def _obey_ceiling(d: Draft) -> None:
    """The capital fraction never exceeds the rung's fraction nor spec.maxFraction (safety rule 2)."""
    phase = d.current
    assert phase is not None
    cap = min(phase.fraction, d.spec.max_fraction)
    if phase.fraction > d.spec.max_fraction and not d.stopped:
        target = d.spec.ceiling_index()
        if target < d.phase_index:
            d.enter_phase(target, Transition.REDUCE,
                          f"spec.maxFraction {d.spec.max_fraction} is below {phase.name}'s fraction {phase.fraction}: "
                          f"stepping down to {d.spec.phases[target].name}")
            return
    if d.capital_fraction > cap:
        d.capital_fraction = cap
        d.capital = capital_of(d.spec, phase, cap)
        d.record(Transition.REDUCE, f"capital fraction capped at {cap} (the rung's fraction {phase.fraction}, "
                                    f"spec.maxFraction {d.spec.max_fraction})")
        d.new_visit()
        return
    expected = capital_of(d.spec, phase, d.capital_fraction)
    if d.capital != expected:
        d.capital = expected  # a capital edit: the pod rolls with it, the flow is accounted at the next read


# --- metrics and risk -------------------------------------------------------------------


def _observe_metrics(d: Draft, obs: Observation) -> bool:
    """Fold this pass's read into status. True when a fresh read of this phase's pod was graded."""
    if obs.read_id is not None and obs.read_id == d.metrics.last_read_id:
        return False  # folded in already (a 409 retry, or the same observation twice)
    phase = d.current
    assert phase is not None
    if obs.metrics is not None:
        snap = obs.metrics
        pod = obs.pod
        pod_phase = pod.phase if pod is not None and pod.phase else d.phase
        pod_spec_phase = d.spec.phase_named(pod_phase)
        if pod_spec_phase is not None:
            mode = pod_spec_phase.mode
        else:
            mode = Mode(pod.mode) if pod is not None and pod.mode in {m.value for m in Mode} else phase.mode
        capital = pod.capital if pod is not None and pod.capital is not None else (d.capital if pod_phase == d.phase else None)
        evaluation = evaluate_risk(d.spec, d.risk, snap, d.now, book=accounting.book_of(mode), capital=capital)
        d.risk = evaluation.state
        d.metrics = d.metrics.model_copy(update={
            "consecutive_errors": 0, "last_error": "", "last_success_at": snap.taken_at,
            "last_attempt_at": snap.taken_at, "last_read_id": obs.read_id or "",
        })
        if evaluation.new_book and evaluation.state.book is not None:
            d.record(Transition.NEW_BOOK, f"the {evaluation.state.book.name} book's risk series starts at this read")
        _trip(d, evaluation.breaches)
        other_pod = pod_phase != d.phase
        refused = obs.children is not None and obs.children.pod_refused is not None
        if other_pod and obs.starting is False and _past_grace(d) and not refused:
            # The roll has not completed: the pod trading is not the one decided on.
            why = f"the pod still runs phase {pod_phase}, not {d.phase}: the roll has not completed"
            d.risk = failed_read(d.spec, d.risk, why)
            d.metrics = d.metrics.model_copy(update={"consecutive_errors": d.metrics.consecutive_errors + 1,
                                                     "last_error": f"the pod still runs phase {pod_phase}"})
        if other_pod or phase.mode is Mode.BACKTEST:
            return False
        d.metrics = d.metrics.model_copy(update={"phase_pod_read_at": d.now})
        d.gates = evaluate_metric_gates(phase.effective_gates, d.risk, snap)
        return True
    no_pod_refused = obs.children.pod_refused if obs.children is not None and not obs.children.pod else None
    if obs.metrics_error is not None and no_pod_refused is not None:
        # No pod runs because the cluster refuses it: said as PodCreateFailed, not charged as a
        # metrics outage (nothing trades, so nothing is unguarded).
        d.metrics = d.metrics.model_copy(
            update={"last_error": f"the pod is refused: {no_pod_refused}", "last_read_id": obs.read_id or ""})
        return False
    if obs.metrics_error is not None:
        errors = d.metrics.consecutive_errors + 1
        d.metrics = d.metrics.model_copy(update={
            "consecutive_errors": errors, "last_error": obs.metrics_error, "last_attempt_at": d.now,
            "last_read_id": obs.read_id or "",
        })
        d.risk = failed_read(d.spec, d.risk, obs.metrics_error)
    return False


def _check_evaluation_lag(d: Draft, obs: Observation, *, counted: bool) -> None:
    """An evaluation later than 2 intervals after the previous one counts like a failed read
    for metricsFailure (unless this pass's read failed already, which counts by itself): an
    operator that falls behind pauses, then halts, instead of silently guarding less often
    than the spec says. The streak survives a successful read (the read was late all the
    same) and ends at the first evaluation on time. The read made is graded as usual: a
    breach seen late is acted on all the same."""
    if not obs.evaluated:
        return
    previous = d.metrics.last_evaluated_at
    update: dict[str, object] = {"last_evaluated_at": d.now}
    phase = d.current
    if (previous is not None and not obs.first_evaluation and phase is not None
            and phase.mode is not Mode.BACKTEST and not d.stopped):
        gap, allowed = d.now - previous, 2 * d.spec.evaluation_interval
        if gap <= allowed:
            update["late_streak"] = 0
        elif not counted:
            update["late_streak"] = d.metrics.late_streak + 1
            update["last_error"] = (f"evaluated {gap.total_seconds():.0f}s after the previous evaluation "
                                    f"(at most {allowed.total_seconds():.0f}s, 2 intervals): the operator is behind")
    d.metrics = d.metrics.model_copy(update=update)


def _past_grace(d: Draft) -> bool:
    return d.phase_started_at is None or d.now - d.phase_started_at >= startup_grace(d.spec)


def _act_on_metrics_failures(d: Draft) -> None:
    """metricsFailure: a limit not checked for pauseAfter reads pauses; for haltAfter, halts."""
    if not d.risk.limit_failures and not d.metrics.late_streak:
        return
    pol = d.spec.analysis.metrics_failure
    worst_name, worst = max(d.risk.limit_failures.items(), key=lambda kv: (kv[1], kv[0]), default=("", 0))
    why = next((u for u in d.risk.unchecked if u.startswith(worst_name + ":")), worst_name)
    if d.metrics.late_streak > worst:
        worst, why = d.metrics.late_streak, f"every limit on time ({d.metrics.last_error})"
    if worst >= pol.halt_after and not H.active(d.holds, HoldKind.HALT, "metricsUnavailable") and not d.stopped:
        d.hold(HoldKind.HALT, Transition.HALT,
               f"metricsUnavailable: {worst} consecutive failed metrics reads could not check {why} "
               f"(haltAfter {pol.halt_after})",
               source="metricsUnavailable", cause=Cause.METRICS_ERROR)
    elif worst >= pol.pause_after and not H.active(d.holds, HoldKind.METRICS_PAUSE, "metricsUnavailable") and not d.stopped:
        d.hold(HoldKind.METRICS_PAUSE, Transition.PAUSE,
               f"metricsUnavailable: {worst} consecutive failed metrics reads could not check {why} "
               f"(pauseAfter {pol.pause_after})",
               source="metricsUnavailable", cause=Cause.METRICS_ERROR)


CAUSE_OF_KIND = {KIND_RISK: Cause.RISK_LIMIT_BREACHED, KIND_CIRCUIT: Cause.CIRCUIT_BREAKER_TRIPPED}


def _trip(d: Draft, breaches: tuple[Breach, ...]) -> None:
    """Every breach seen becomes a hold, unless one from the same limit is already in force."""
    for b in sorted(breaches, key=lambda b: (-ACTION_SEVERITY[b.action], b.name)):
        cause = CAUSE_OF_KIND.get(b.kind, Cause.CIRCUIT_BREAKER_TRIPPED)
        reason = f"{b.name}: {b.reason}"
        if b.severity is Severity.CRITICAL and b.kind == KIND_RISK and not d.held(HoldKind.EMERGENCY):
            begin_emergency_on_breach(d, b)
        if b.action is Action.HALT:
            if not H.active(d.holds, HoldKind.HALT, b.name):
                d.hold(HoldKind.HALT, Transition.HALT, reason, source=b.name, cause=cause, breach=b)
        elif not H.active(d.holds, HoldKind.RISK_PAUSE, b.name) and not H.active(d.holds, HoldKind.HALT, b.name):
            reduced = b.action is Action.REDUCE and not d.stopped and _reduce(d, reason, cause)
            d.hold(HoldKind.RISK_PAUSE, None if reduced else Transition.PAUSE, reason, source=b.name, cause=cause, breach=b)


def _reduce(d: Draft, reason: str, cause: Cause) -> bool:
    """Step back one live rung, or cut the fraction by 20% where there is no lower live rung."""
    idx, phase = d.phase_index, d.current
    assert phase is not None
    if phase.mode is Mode.LIVE and idx > 0 and d.spec.phases[idx - 1].mode is Mode.LIVE:
        d.enter_phase(idx - 1, Transition.REDUCE, reason, cause=cause)
        return True
    if d.capital_fraction > 0:
        d.capital_fraction = (d.capital_fraction * REDUCE_CUT).quantize(Decimal("0.0001"))
        d.capital = capital_of(d.spec, phase, d.capital_fraction)
        d.record(Transition.REDUCE, f"{reason}; fraction cut by 20%", cause=cause)
        d.new_visit()
        return True
    return False


def _latch_external_conditions(d: Draft) -> None:
    """A breaker condition set by someone else (a person, an alert) is a halt like any other,
    latched as a hold even while halted, so that a reset of an older halt cannot erase it
    (policy/external.py: the halt sentinel reads the same rule from the raw object)."""
    for cond, cause in external_halts(d.conditions, d.holds):
        source = f"external{cond.type}"
        d.hold(HoldKind.HALT, Transition.HALT, f"{source}: {cond.reason}: {cond.message}".rstrip(": "),
               source=source, cause=cause)


def _latch_sentinel_stop(d: Draft, obs: Observation) -> None:
    """The halt sentinel stopped the pod on a breaker condition (its annotation on the
    StatefulSet). Where no halt records that cause yet (the condition was cleared before this
    pass read it), the stop is a halt of its own: the pod stays stopped, with a history entry,
    until a reset."""
    seen = obs.children
    if seen is None or not seen.sentinel_stop:
        return
    for ctype, cause in unanswered_stop(seen.sentinel_stop, d.holds):
        source = f"sentinel{ctype}"
        d.hold(HoldKind.HALT, Transition.HALT,
               f"{source}: the halt sentinel stopped the pod on {ctype}, which was cleared before this pass read it",
               source=source, cause=cause)


# --- backtest and advancing -------------------------------------------------------------


def _observe_backtest(d: Draft, bt: Optional[BacktestObservation]) -> None:
    phase = d.current
    if phase is None or phase.mode is not Mode.BACKTEST or bt is None or d.stopped or d.held(HoldKind.FAILED):
        return
    current = d.backtest
    if current is not None and current.job == bt.job and current.outcome in ("Passed", "Failed"):
        return
    if bt.state == "Running":
        d.backtest = BacktestResult(job=bt.job, outcome="Running", message=bt.message)
        return
    if bt.state == "Failed":
        d.backtest = BacktestResult(job=bt.job, outcome="Failed", message=bt.message)
        d.hold(HoldKind.FAILED, Transition.FAIL, f"backtest job {bt.job} failed: {bt.message}", source="backtest",
               cause=Cause.BACKTEST)
        return
    gates = evaluate_backtest_gates(phase.effective_gates, bt.result or {})
    d.gates = gates
    r = bt.result or {}
    passed = all(g.passed for g in gates)
    d.backtest = BacktestResult(
        job=bt.job, outcome="Passed" if passed else "Failed", sharpe=r.get("sharpe"),
        max_drawdown=r.get("maxDrawdown"), walk_forward_windows=r.get("walkForwardWindows"),
        monte_carlo_runs=r.get("monteCarloRuns"),
        message="; ".join(f"{g.name}: {g.message}" for g in gates if not g.passed),
    )
    if not passed:
        d.hold(HoldKind.FAILED, Transition.FAIL, "backtest gates failed: " + d.backtest.message, source="backtest",
               cause=Cause.BACKTEST)


BLOCKER_REASONS = ("Held", "PodCreateFailed", "CeilingReached", "MinDuration", "WaitingForBacktest", "GatesNotPassed",
                   "AwaitingApproval", "RiskUnguarded", "MetricsNotFresh")


def blockers(d: Draft, fresh: bool) -> list[str]:
    """Everything that stops the next rung now; empty means advance."""
    out: list[str] = []
    phase = d.current
    if phase is None:
        return ["Held: the current phase is not in the spec"]
    blocking = [h for h in d.holds if h.kind is not HoldKind.APPROVAL_WAIT]
    if blocking:
        out.append("Held: " + "; ".join(f"{h.kind.value} {h.id} ({h.source or h.by})" for h in blocking))
    if d.phase_index + 1 >= len(d.spec.phases):
        out.append("on the last rung")
        return out
    if d.phase_index + 1 > d.spec.ceiling_index():
        nxt = d.spec.phases[d.phase_index + 1]
        out.append(f"CeilingReached: next rung {nxt.name} ({nxt.fraction}) is above spec.maxFraction {d.spec.max_fraction}")
    started = d.phase_started_at
    if started is None or d.now - started < phase.min_duration_delta:
        out.append(f"MinDuration: {phase.name} needs {phase.min_duration or 'its default duration'} in phase")
    if phase.mode is Mode.BACKTEST:
        if d.backtest is None or d.backtest.outcome != "Passed":
            out.append("WaitingForBacktest: no passing backtest result yet")
    else:
        failed = [g for g in d.gates if not g.passed]
        if failed:
            out.append("GatesNotPassed: " + "; ".join(f"{g.name}: {g.message}" for g in failed))
    if any(h.kind is HoldKind.APPROVAL_WAIT and h.visit == d.visit for h in d.holds):
        out.append(f"AwaitingApproval: run `phasegate promote NAME --reason ...` to approve leaving {phase.name}")
    if d.refused:
        out.append(f"PodCreateFailed: the cluster refuses the strategy pod: {d.refused}")
    if phase.mode is not Mode.BACKTEST:
        if d.risk.unchecked:
            out.append("RiskUnguarded: limits not checked: " + "; ".join(d.risk.unchecked))
        if not fresh:
            out.append("MetricsNotFresh: gates need a new metrics read of this phase's pod")
    return out


def _maybe_advance(d: Draft, obs: Observation, fresh: bool) -> None:
    block = blockers(d, fresh)
    if block:
        if not d.holds or all(h.kind is HoldKind.APPROVAL_WAIT for h in d.holds):
            d.message = block[0]
        return
    nxt = d.spec.phases[d.phase_index + 1]
    gates = ", ".join(f"{g.name}={g.value}" for g in d.gates if g.passed) or "no gates"
    action = Transition.COMPLETE if d.phase_index + 1 == len(d.spec.phases) - 1 else Transition.ADVANCE
    d.enter_phase(d.phase_index + 1, action, f"{d.phase} passed ({gates}); entering {nxt.name} at {nxt.fraction}",
                  snapshot=obs.metrics)
    # The read was of the previous phase's pod: the new phase starts with no fresh read.
    d.message = (blockers(d, False) or [""])[0]


# --- conditions -------------------------------------------------------------------------


def _reason_of(d: Draft, state: State) -> tuple[bool, str]:
    if state in (State.HALTED, State.EMERGENCY_STOPPED):
        newest = H.newest_stopping(d.holds)
        src = newest.source if newest is not None else ""
        return False, (src[:1].upper() + src[1:]) if src else state.value
    if state is State.FAILED:
        return False, "Failed"
    if state is State.PAUSED:
        kinds = [h.kind for h in d.holds]
        return False, next((k.value for k in (HoldKind.SPEC_INVALID, HoldKind.METRICS_PAUSE, HoldKind.RISK_PAUSE,
                                               HoldKind.MANUAL_PAUSE) if k in kinds), "Paused")
    if d.refused:
        return False, "PodCreateFailed"
    if d.risk.unchecked and d.current is not None and d.current.mode is not Mode.BACKTEST:
        return True, "RiskUnguarded"
    if state is State.COMPLETED:
        return True, "Completed"
    head = (d.message or "").split(":", 1)[0]
    if head in BLOCKER_REASONS:
        return True, head
    return True, state.value


def _finish(d: Draft, obs: Observation, spec_error: Optional[str]) -> Decision:
    now, gen = d.now, d.observed_generation
    state = d.state()
    conds = ConditionSet(d.conditions, now, gen)
    risk_holds = sorted({h.source for h in d.holds if h.cause is Cause.RISK_LIMIT_BREACHED})
    circuit = sorted({h.source for h in d.holds if h.cause is Cause.CIRCUIT_BREAKER_TRIPPED})
    conds.set(ConditionType.RISK_LIMIT_BREACHED, bool(risk_holds),
              _camel(risk_holds[0]) if risk_holds else "WithinLimits",
              "; ".join(h.reason for h in d.holds if h.cause is Cause.RISK_LIMIT_BREACHED))
    conds.set(ConditionType.CIRCUIT_BREAKER_TRIPPED, bool(circuit),
              _camel(circuit[0]) if circuit else "Closed",
              "; ".join(h.reason for h in d.holds if h.cause is Cause.CIRCUIT_BREAKER_TRIPPED))
    phase = d.current
    health = d.metrics
    if phase is None or phase.mode is Mode.BACKTEST:
        for ctype in (ConditionType.METRICS_AVAILABLE, ConditionType.RISK_GUARDED):
            conds.set(ctype, None, "NotApplicable", "no strategy pod in this phase")
    else:
        if health.consecutive_errors > 0:
            conds.set(ConditionType.METRICS_AVAILABLE, False, "MetricsUnavailable",
                      f"{health.consecutive_errors} consecutive failed reads: {health.last_error}")
        elif health.last_success_at is not None:
            conds.set(ConditionType.METRICS_AVAILABLE, True, "MetricsRead", "the last read succeeded")
        else:
            conds.set(ConditionType.METRICS_AVAILABLE, None, "NotYetRead", "no metrics read yet")
        configured = sorted(configured_limits(d.spec))
        if d.risk.unchecked:
            conds.set(ConditionType.RISK_GUARDED, False, "LimitsNotChecked",
                      "; ".join(d.risk.unchecked))
        elif health.last_success_at is None:
            conds.set(ConditionType.RISK_GUARDED, None, "NotYetRead", "no metrics read yet")
        else:
            conds.set(ConditionType.RISK_GUARDED, True, "AllLimitsChecked",
                      "checked at the last read: " + ", ".join(configured))
    conds.set(ConditionType.POD_CREATE_FAILED, d.refused is not None,
              "AdmissionRefused" if d.refused else "PodAdmitted", d.refused or "")
    conds.set(ConditionType.SPEC_INVALID, spec_error is not None,
              "SpecUnreadable" if spec_error else "SpecRead", spec_error or "")
    halted = state in (State.HALTED, State.EMERGENCY_STOPPED)
    conds.set(ConditionType.HALTED, halted, state.value if halted else "Trading",
              d.message if halted else "")
    ready, reason = _reason_of(d, state)
    conds.set(ConditionType.READY, ready, reason, d.message)
    stalled = ("CeilingReached", "AwaitingApproval", "RiskUnguarded", "PodCreateFailed")
    progressing = state in (State.PROGRESSING, State.VALIDATING) and reason not in stalled
    conds.set(ConditionType.PROGRESSING, progressing, "Climbing" if progressing else reason, d.message)

    desired: Optional[Desired] = None
    if phase is not None:
        desired = desired_for(d.spec, d, d.emergency.id if d.emergency is not None and flatten_wanted(d.emergency) else None)
        why = mismatch(desired, obs.children)
        if obs.children is None:
            conds.set(ConditionType.ACTUATED, None, "NotObserved", "the children were not observed")
        else:
            conds.set(ConditionType.ACTUATED, why is None, "Actuated" if why is None else "Pending",
                      why or ("stopped: replicas 0 and no pod left" if desired.replicas == 0
                              else "the pod runs the decided template"))
    elif d.stopped:
        # The spec does not say what the pod is, but a halt needs no spec: stop it.
        desired = Desired(replicas=0, key="", backtest_job=False, flatten_job=None)
    d.conditions = conds.result()
    status = d.to_status()
    if d.base is not None and status.model_copy(update={"clock": d.base.clock}) == d.base:
        # Nothing else changed: time alone is no reason to write (a write wakes another pass).
        status = d.base
    return Decision(status=status, history=tuple(d.added), outcome=d.outcome, reason=d.reason or d.message,
                    desired=desired)


def _camel(name: str) -> str:
    return name[:1].upper() + name[1:]
