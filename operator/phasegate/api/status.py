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

from .spec import Action, ApiModel
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
    HALTED = "Halted"


class Condition(ApiModel):
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


class BreakerStatus(ApiModel):
    """A latched breaker: once tripped, only reset (or resume, for pause/reduce) clears it."""

    state: BreakerState
    kind: str = Field("risk", description="risk | circuit | metrics | external")
    value: Optional[DecimalString] = None
    limit: Optional[DecimalString] = None
    severity: Optional[Severity] = None
    action: Optional[Action] = None
    tripped_at: Optional[UtcTime] = None
    reason: str = ""


class HistoryEntry(ApiModel):
    seq: int = Field(..., ge=1)
    at: UtcTime
    action: str = Field(..., description="advance, pause, resume, reduce, halt, reset, promote, complete, ...")
    from_: str = Field("", alias="from")
    to: str = ""
    fraction: Optional[DecimalString] = None
    reason: str
    by: str = Field(..., description="operator, or the user who ran the command")
    cause: Optional[str] = Field(
        None, description="What made the operator act: RiskLimitBreached, CircuitBreakerTripped, MetricsError, Manual"
    )


class RequestRecord(ApiModel):
    """The last manual action the operator processed (from the request annotation)."""

    id: str
    action: str
    outcome: str = Field(..., pattern=r"^(Accepted|Rejected)$")
    message: str = ""
    by: str = ""
    at: UtcTime


class RiskState(ApiModel):
    """What the operator's own risk arithmetic must remember across restarts."""

    high_water_mark: Optional[DecimalString] = None
    day_open_value: Optional[DecimalString] = None
    trading_day: Optional[date] = None
    last_value: Optional[DecimalString] = None
    last_sample_at: Optional[UtcTime] = None
    # counters seen at the last sample, for rates with counter resets handled
    counters: dict[str, DecimalString] = Field(default_factory=dict)
    # counters at the start of the phase, for gates over the phase window
    phase_counters: dict[str, DecimalString] = Field(default_factory=dict)
    critical_incidents: int = 0
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


class MetricsHealth(ApiModel):
    consecutive_errors: int = 0
    last_error: str = ""
    last_success_at: Optional[UtcTime] = None
    last_attempt_at: Optional[UtcTime] = None


class GateResult(ApiModel):
    name: str
    passed: bool
    value: Optional[str] = None
    threshold: Optional[str] = None
    message: str = ""


class BacktestResult(ApiModel):
    job: str = ""
    outcome: str = Field("", description="Running | Passed | Failed")
    sharpe: Optional[DecimalString] = None
    max_drawdown: Optional[DecimalString] = None
    walk_forward_windows: Optional[int] = None
    monte_carlo_runs: Optional[int] = None
    message: str = ""


class EmergencyStep(ApiModel):
    name: str
    outcome: str = Field(..., description="Succeeded | Failed | TimedOut | Skipped | Running")
    started_at: Optional[UtcTime] = None
    duration_seconds: Optional[float] = None
    message: str = ""


class EmergencyRecord(ApiModel):
    id: str
    severity: str
    reason: str
    by: str
    started_at: UtcTime
    steps: list[EmergencyStep] = Field(default_factory=list)
    finished: bool = False


class StrategyStatus(ApiModel):
    model_config = ConfigDict(frozen=True)

    observed_generation: Optional[int] = None
    phase: str = ""
    phase_index: int = 0
    state: State = State.PENDING
    capital_fraction: DecimalString = Decimal(0)
    capital: Optional[DecimalString] = None
    phase_started_at: Optional[UtcTime] = None
    approved_phase: Optional[str] = Field(None, description="A manual phase approved by promote.")
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    breakers: dict[str, BreakerStatus] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    history_seq: int = Field(0, description="Seq of the newest history entry, ever.")
    last_request: Optional[RequestRecord] = None
    risk: RiskState = Field(default_factory=RiskState)
    metrics: MetricsHealth = Field(default_factory=MetricsHealth)
    gates: list[GateResult] = Field(default_factory=list)
    backtest: Optional[BacktestResult] = None
    emergency: Optional[EmergencyRecord] = None

    def condition(self, ctype: ConditionType | str) -> Optional[Condition]:
        key = ctype.value if isinstance(ctype, ConditionType) else ctype
        return next((c for c in self.conditions if c.type == key), None)

    def is_true(self, ctype: ConditionType | str) -> bool:
        c = self.condition(ctype)
        return c is not None and c.status == "True"
