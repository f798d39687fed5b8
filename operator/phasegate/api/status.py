"""The TradingStrategy status: what the operator has decided and observed.

Everything a restart must not lose lives here (the phase and when it started, the
high-water mark and day-open value, breaker latches, the history sequence), so the
operator holds no state of its own between reconciles.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Optional

from pydantic import ConfigDict, Field

from .spec import Action, ApiModel, K8sObject
from .types import DecimalString, UtcTime


class State(str, Enum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    HALTED = "Halted"
    EMERGENCY_STOPPED = "EmergencyStopped"
    COMPLETED = "Completed"
    FAILED = "Failed"


# States left only by an explicit `reset` with a reason (safety rule 3).
ABSORBING_STATES = frozenset({State.HALTED, State.EMERGENCY_STOPPED})


class ConditionType(str, Enum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    RISK_LIMIT_BREACHED = "RiskLimitBreached"
    CIRCUIT_BREAKER_TRIPPED = "CircuitBreakerTripped"
    METRICS_AVAILABLE = "MetricsAvailable"
    RISK_GUARDED = "RiskGuarded"
    ACTUATED = "Actuated"
    SPEC_INVALID = "SpecInvalid"
    POD_CREATE_FAILED = "PodCreateFailed"
    HALTED = "Halted"


class HoldKind(str, Enum):
    """Why a strategy is not free to trade or to climb. Each kind has one owner and one way out."""

    MANUAL_PAUSE = "ManualPause"  # a person: `pause`; out by `resume`
    RISK_PAUSE = "RiskPause"  # a pause/reduce limit: out by `resume` once the limit is back in bounds
    METRICS_PAUSE = "MetricsPause"  # metricsFailure.pauseAfter: out by `resume` once every limit is checked
    APPROVAL_WAIT = "ApprovalWait"  # a manual phase: out by `promote`, void when its phase visit ends
    HALT = "Halt"  # a halt limit, a breaker, a person: out only by `reset` naming it
    EMERGENCY = "Emergency"  # the emergency sequence: out only by `reset` naming it, once finished
    SPEC_INVALID = "SpecInvalid"  # the operator cannot read the spec: out when it can again
    FAILED = "Failed"  # the phase failed (a backtest): out by a new spec generation


# Holds that stop the strategy pod (safety rule 3: only a reset lifts them).
STOPPING_HOLDS = frozenset({HoldKind.HALT, HoldKind.EMERGENCY})
# Holds that keep the ladder where it is.
PAUSING_HOLDS = frozenset({HoldKind.MANUAL_PAUSE, HoldKind.RISK_PAUSE, HoldKind.METRICS_PAUSE, HoldKind.SPEC_INVALID})


class Cause(str, Enum):
    """What made the operator act, as history, Events and holds tell it."""

    METRICS_ERROR = "MetricsError"
    RISK_LIMIT_BREACHED = "RiskLimitBreached"
    CIRCUIT_BREAKER_TRIPPED = "CircuitBreakerTripped"
    MANUAL = "Manual"
    SPEC = "Spec"
    BACKTEST = "Backtest"


class Transition(str, Enum):
    """The actions recorded in history."""

    START = "start"
    ADVANCE = "advance"
    COMPLETE = "complete"
    PAUSE = "pause"
    RESUME = "resume"
    REDUCE = "reduce"
    HALT = "halt"
    RESET = "reset"
    APPROVE = "approve"
    EMERGENCY = "emergency"
    EMERGENCY_COMPLETE = "emergency-complete"
    FAIL = "fail"
    RETRY = "retry"
    SPEC_INVALID = "spec-invalid"
    SPEC_VALID = "spec-valid"
    NEW_BOOK = "new-book"
    POD_REFUSED = "pod-refused"


class RequestOutcome(str, Enum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class StatusModel(ApiModel):
    """Status is written by the operator and read back by the next one, maybe of another
    version: a field it no longer knows is ignored, never fatal (the guard must keep running
    across an upgrade)."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusModel):
    """metav1.Condition."""

    model_config = ConfigDict(frozen=True)

    type: str
    status: str = Field(..., pattern=r"^(True|False|Unknown)$")
    reason: str = Field(..., min_length=1)
    message: str = ""
    last_transition_time: UtcTime
    observed_generation: Optional[int] = None


class BreakerState(str, Enum):
    CLOSED = "Closed"
    TRIPPED = "Tripped"


class Severity(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class BreakerStatus(StatusModel):
    """A latched breaker: once tripped, only reset (or resume, for pause/reduce) clears it."""

    state: BreakerState
    kind: str = Field("risk", description="risk | circuit | metrics | external")
    value: Optional[DecimalString] = None
    limit: Optional[DecimalString] = None
    severity: Optional[Severity] = None
    action: Optional[Action] = None
    tripped_at: Optional[UtcTime] = None
    reason: str = ""


class Hold(StatusModel):
    """One reason the strategy is held; `state` is derived from the list of these."""

    kind: HoldKind
    id: str = Field(..., min_length=1, description="What a reset names: the history seq (#17) or the emergency id.")
    seq: int = Field(0, ge=0, description="History seq of the entry that recorded the hold.")
    source: str = Field("", description="The limit, breaker or request behind it: maxDrawdown, metricsUnavailable, manual...")
    cause: Optional[Cause] = None
    reason: str = ""
    since: UtcTime
    by: str = "operator"
    visit: int = Field(0, ge=0, description="The phase visit it belongs to (status.visit when it was set).")
    value: Optional[DecimalString] = None
    limit: Optional[DecimalString] = None
    severity: Optional[Severity] = None
    action: Optional[Action] = Field(None, description="The action of the limit behind it (halt, reduce, pause).")


class HistoryEntry(StatusModel):
    seq: int = Field(..., ge=1)
    at: UtcTime
    action: Transition
    from_: str = Field("", alias="from")
    to: str = ""
    fraction: Optional[DecimalString] = None
    reason: str
    by: str = Field(..., description="operator, or the user who ran the command")
    cause: Optional[Cause] = None


class RequestRecord(StatusModel):
    """The last manual action the operator processed (from the request annotation)."""

    id: str
    action: str
    outcome: RequestOutcome
    message: str = ""
    by: str = ""
    at: UtcTime


class Book(StatusModel):
    """The flow-adjusted return series of one book (live, or paper for paper and shadow).

    `index` is the book's growth since the series began with every capital change the
    operator made taken out: a rung change moves the capital, not the index. Drawdown
    and daily loss are read off the index, so they continue across rung changes.
    """

    name: str
    started_at: UtcTime
    index: DecimalString = Decimal(1)
    high_water_mark: DecimalString = Decimal(1)
    day_open: DecimalString = Decimal(1)
    trading_day: Optional[date] = None
    last_value: Optional[DecimalString] = None
    last_capital: Optional[DecimalString] = None


class RiskState(StatusModel):
    """What the operator's own risk arithmetic must remember across restarts."""

    book: Optional[Book] = None
    # Consecutive evaluations each configured limit could not be checked (fail closed).
    limit_failures: dict[str, int] = Field(default_factory=dict)
    # Limits not checked at the last evaluation, with why.
    unchecked: list[str] = Field(default_factory=list)
    # Limits in breach at the last evaluation: what `resume` looks at.
    breaching: list[str] = Field(default_factory=list)

    last_sample_at: Optional[UtcTime] = None
    # counters seen at the last sample, for rates with counter resets handled
    counters: dict[str, DecimalString] = Field(default_factory=dict)
    # counters at the start of the phase, for gates over the phase window
    # counters at the start of the current rate window (spec.analysis.rateWindow)
    rate_since: Optional[UtcTime] = None
    rate_counters: dict[str, DecimalString] = Field(default_factory=dict)
    # The phase window, kept as running totals rather than "now minus phase start":
    # a pod restart mid-phase resets its counters, and a single baseline cannot tell
    # how much was counted before the restart. window_totals holds each counter's
    # increase since the phase began, up to the counters in window_counters.
    window_totals: dict[str, DecimalString] = Field(default_factory=dict)
    window_counters: dict[str, DecimalString] = Field(default_factory=dict)
    window_started_at: Optional[UtcTime] = None
    # Incidents since the phase began, for the noCriticalIncident and noBreakerTrips gates.
    phase_critical_incidents: int = 0
    phase_circuit_trips: int = 0
    # Names of the breaches critical at the last sample: a breach that stays critical
    # is one incident, not one per evaluation.
    critical_breaches: list[str] = Field(default_factory=list)


class MetricsHealth(StatusModel):
    consecutive_errors: int = 0
    last_error: str = ""
    last_success_at: Optional[UtcTime] = None
    last_attempt_at: Optional[UtcTime] = None
    last_read_id: str = Field("", description="Id of the last read folded in: a read counts once.")
    phase_pod_read_at: Optional[UtcTime] = Field(
        None,
        description=(
            "When the pod of the current phase was last read: after that, an unready pod is a failed read, not a start-up."
        ),
    )
    last_evaluated_at: Optional[UtcTime] = Field(
        None,
        description=(
            "When the operator last evaluated the strategy on its interval. Evaluated later than 2 intervals after "
            "the one before counts as a failed metrics read: an operator that falls behind pauses advancement."
        ),
    )
    late_streak: int = Field(0, ge=0, description="Consecutive evaluations late by more than 2 intervals.")


class GateResult(StatusModel):
    name: str
    passed: bool
    value: Optional[str] = None
    threshold: Optional[str] = None
    message: str = ""


class BacktestResult(StatusModel):
    job: str = ""
    outcome: str = Field("", description="Running | Passed | Failed")
    sharpe: Optional[DecimalString] = None
    max_drawdown: Optional[DecimalString] = None
    walk_forward_windows: Optional[int] = None
    monte_carlo_runs: Optional[int] = None
    message: str = ""


class EmergencyStep(StatusModel):
    name: str
    outcome: str = Field(..., description="Succeeded | Failed | TimedOut | Skipped | Running")
    started_at: Optional[UtcTime] = None
    duration_seconds: Optional[float] = None
    message: str = ""


class EmergencyRecord(StatusModel):
    id: str
    severity: str
    reason: str
    by: str
    started_at: UtcTime
    steps: list[EmergencyStep] = Field(default_factory=list)
    finished: bool = False


class StrategyStatus(StatusModel):
    model_config = ConfigDict(frozen=True)

    observed_generation: Optional[int] = None
    phase: str = ""
    phase_index: int = 0
    state: State = State.PENDING
    capital_fraction: DecimalString = Decimal(0)
    capital: Optional[DecimalString] = None
    phase_started_at: Optional[UtcTime] = None
    visit: int = Field(0, ge=0, description="Phase visits so far; a reset or a reduce starts a new one.")
    # The latest time a decision has seen: decisions never see time go backwards, so a
    # clock stepped back neither shortens a phase nor re-arms a window.
    clock: Optional[UtcTime] = None
    holds: list[Hold] = Field(default_factory=list)
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    breakers: dict[str, BreakerStatus] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    history_seq: int = Field(0, description="Seq of the newest history entry, ever.")
    last_request: Optional[RequestRecord] = None
    answered: list[str] = Field(default_factory=list, description="Ids of the last requests answered, newest last.")
    events_posted_seq: int = Field(0, description="Seq of the newest history entry whose Event was posted.")
    spec_generation: Optional[int] = Field(None, description="Generation of last_readable_spec.")
    last_readable_spec: Optional[K8sObject] = Field(
        None, description="The last spec the operator could read: it guards with it while a newer one cannot be read."
    )
    risk: RiskState = Field(default_factory=RiskState)
    metrics: MetricsHealth = Field(default_factory=MetricsHealth)
    gates: list[GateResult] = Field(default_factory=list)
    backtest: Optional[BacktestResult] = None
    emergency: Optional[EmergencyRecord] = None

    def holds_of(self, *kinds: HoldKind) -> list[Hold]:
        return [h for h in self.holds if h.kind in kinds]

    def condition(self, ctype: ConditionType | str) -> Optional[Condition]:
        key = ctype.value if isinstance(ctype, ConditionType) else ctype
        return next((c for c in self.conditions if c.type == key), None)

    def is_true(self, ctype: ConditionType | str) -> bool:
        c = self.condition(ctype)
        return c is not None and c.status == "True"
