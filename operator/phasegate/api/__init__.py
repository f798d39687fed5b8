"""Layer 1: the TradingStrategy API (spec and status models, defaults, parsing)."""

from . import contract
from .durations import format_duration, parse_duration
from .spec import (
    ACTION_SEVERITY,
    Action,
    Analysis,
    Approval,
    Gates,
    Limit,
    MetricsSourceType,
    Mode,
    Phase,
    RiskLimits,
    StrategySpec,
    StrategyTemplate,
    Supervision,
)
from .status import (
    ABSORBING_STATES,
    BreakerState,
    BreakerStatus,
    Condition,
    ConditionType,
    GateResult,
    HistoryEntry,
    RiskState,
    Severity,
    State,
    StrategyStatus,
)

__all__ = [
    "ABSORBING_STATES", "ACTION_SEVERITY", "Action", "Analysis", "Approval", "BreakerState",
    "BreakerStatus", "Condition", "ConditionType", "GateResult", "Gates", "HistoryEntry", "Limit",
    "MetricsSourceType", "Mode", "Phase", "RiskLimits", "RiskState", "Severity", "State",
    "StrategySpec", "StrategyStatus", "StrategyTemplate", "Supervision", "contract", "format_duration",
    "parse_duration",
]
