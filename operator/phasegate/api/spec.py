"""The TradingStrategy spec: what the user asks for.

Every number of the deployment guide's protocol is a default here, never a constant in
the policy code. The CRD in crds/ is generated from these models (`make crds`), CEL
rules included, so that `kubectl apply` rejects bad input before the operator sees it.
"""

from __future__ import annotations

import functools
import sys
from datetime import timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .durations import DURATION_PATTERN, duration_ms_cel, format_duration, parse_duration
from .timezones import TIME_ZONES
from .types import Duration, Fraction, Money, Ratio, json_type_check, out_of_range_number

_TIME_ZONE_SET = frozenset(TIME_ZONES)
# pydantic gives every model instance its own set of the fields it was given: a few hundred
# bytes each, a third of a parsed status (36 models in a strategy's status and spec). On a
# frozen model nothing adds to such a set after validation (model_copy copies it before it
# updates it): instances given the same fields share one set. A model that is not frozen
# keeps its own (an assignment would add to it). Bounded, since the keys come from what
# manifests and statuses hold.
_SHARED_FIELD_SETS: dict[frozenset[str], set[str]] = {}
_SHARED_FIELD_SETS_MAX = 4096
# Short strings repeat across thousands of strategies (condition types and reasons, phase
# names, enum-like values) and each JSON decode makes new copies: values this short are
# interned as they are validated.
_INTERN_MAX = 64


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        frozen=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it travels to and from the apiserver."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def model_post_init(self, context: Any, /) -> None:
        if not self.model_config.get("frozen"):
            return
        key = frozenset(self.__pydantic_fields_set__)
        shared = _SHARED_FIELD_SETS.get(key)
        if shared is None:
            if len(_SHARED_FIELD_SETS) >= _SHARED_FIELD_SETS_MAX:
                return
            shared = _SHARED_FIELD_SETS[key] = set(key)
        object.__setattr__(self, "__pydantic_fields_set__", shared)

    @model_validator(mode="before")
    @classmethod
    def _as_the_apiserver_reads_it(cls, data: Any) -> Any:
        # The apiserver's verdict before pydantic's, for every model: (1) a field set to null
        # is absent, so its default applies (no field of the CRD is nullable: the apiserver
        # prunes the null, then defaults); (2) a bool field takes true or false and an int
        # field a JSON integer (an int64), where pydantic's lax mode would take "yes", 1, "3"
        # or true; a map of strings loses its null values.
        if not isinstance(data, dict):
            return data
        checks = _json_type_checks(cls)
        aliases = _wire_names(cls)
        out = {}
        for key, value in data.items():
            if value is None and key in aliases:
                continue
            if type(value) is str and len(value) <= _INTERN_MAX:
                value = sys.intern(value)
            check = checks.get(key)
            out[key] = value if check is None else check(value, key)
        return out


@functools.cache
def _wire_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(field.alias or name for name, field in model.model_fields.items())


@functools.cache
def _json_type_checks(model: type[BaseModel]) -> dict[str, Any]:
    """Field name and alias -> the JSON type check of its annotation (json_type_check), where it has one."""
    out = {}
    for name, field in model.model_fields.items():
        check = json_type_check(field.annotation)
        if check is not None:
            out[name] = out[field.alias or name] = check
    return out


class Mode(str, Enum):
    BACKTEST = "backtest"
    PAPER = "paper"
    SHADOW = "shadow"
    LIVE = "live"


class Approval(str, Enum):
    AUTO = "auto"
    MANUAL = "manual"


class Action(str, Enum):
    """What a breached limit does. Ordered by severity in `ACTION_SEVERITY`."""

    PAUSE = "pause"
    REDUCE = "reduce"
    HALT = "halt"


ACTION_SEVERITY = {Action.PAUSE: 1, Action.REDUCE: 2, Action.HALT: 3}

K8sObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
K8sObjectList = Annotated[
    list[dict[str, Any]],
    WithJsonSchema(
        {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    ),
]


class Gates(ApiModel):
    """Conditions a phase must meet, over its window, before the next rung.

    A gate left out is not checked. A gate whose value cannot be read fails (fail closed).
    """

    # backtest: read from the backtest Job's JSON result
    min_sharpe: Optional[Ratio] = Field(None, description="Backtest Sharpe ratio must be >= this.")
    max_backtest_drawdown: Optional[Fraction] = Field(
        None, description="Backtest max drawdown must be < this (0.20 is 20%)."
    )
    min_walk_forward_windows: Optional[int] = Field(None, ge=0, description="Walk-forward windows >= this.")
    min_monte_carlo_runs: Optional[int] = Field(None, ge=0, description="Monte Carlo resamples >= this.")
    # paper, shadow, live: read from the strategy's metrics over the phase window
    min_fill_rate: Optional[Fraction] = Field(None, description="Filled / submitted orders must be > this.")
    no_breaker_trips: Optional[bool] = Field(None, description="No circuit breaker trip during the phase.")
    min_signal_alignment: Optional[Fraction] = Field(None, description="Shadow signal alignment >= this.")
    min_execution_quality: Optional[Fraction] = Field(None, description="Execution quality >= this.")
    max_mean_latency: Optional[Duration] = Field(None, description="Mean order latency < this, e.g. 500ms.")
    no_critical_incident: Optional[bool] = Field(None, description="No critical breach during the phase.")
    max_slippage_bps: Optional[Ratio] = Field(None, description="Mean slippage in basis points <= this.")


class Phase(ApiModel):
    """One rung of the ladder."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.mode == 'live' ? double(self.fraction) > 0.0 : double(self.fraction) == 0.0",
                    "message": (
                        "fraction must be > 0 for a live phase and 0 for backtest, paper and shadow phases"
                        " (they put no capital at risk)"
                    ),
                }
            ]
        }
    )

    name: str = Field(
        ...,
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="A DNS label, unique in the ladder: paper, live-10...",
    )
    mode: Mode
    fraction: Fraction = Field(Decimal(0), description="Fraction of capital at risk in this phase.")
    min_duration: Optional[Duration] = Field(
        None,
        description=(
            "Least time in this phase before it may be left. Default by mode: paper 14d, shadow 7d, live 7d, backtest 0s."
        ),
    )
    gates: Optional[Gates] = Field(
        None, description="Gates to leave this phase. Omitted: the protocol's defaults for the mode; {} for none."
    )
    approval: Approval = Field(Approval.AUTO, description="manual: wait for `phasegate promote` after the gates pass.")

    @property
    def min_duration_delta(self) -> timedelta:
        if self.min_duration is not None:
            return parse_duration(self.min_duration)
        return DEFAULT_MIN_DURATION[self.mode]

    @property
    def effective_gates(self) -> Gates:
        return self.gates if self.gates is not None else DEFAULT_GATES[self.mode]


class Limit(ApiModel):
    threshold: Ratio = Field(..., description="The limit. A fraction for ratios, per minute for rates.")
    action: Action = Field(Action.HALT, description="halt | reduce | pause")


class RiskLimits(ApiModel):
    """Limits the operator checks itself, from the strategy's metrics. A limit left out is not checked."""

    max_drawdown: Optional[Limit] = Field(None, description="Drop from the high-water mark of portfolio value.")
    max_daily_loss: Optional[Limit] = Field(None, description="Drop from the value at the start of the trading day.")
    max_position_fraction: Optional[Limit] = Field(None, description="Largest position / portfolio value.")
    min_cash_fraction: Optional[Limit] = Field(None, description="Cash / portfolio value must stay >= this.")
    max_position_discrepancy: Optional[Limit] = Field(None, description="Local vs broker positions.")
    max_order_rate: Optional[Limit] = Field(None, description="Orders submitted per minute.")
    max_error_rate: Optional[Limit] = Field(None, description="Errors per minute.")


class TradingDay(ApiModel):
    start_time: str = Field("00:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM local time")
    # One list for both validators (api/timezones.py): the CRD's enum and this check.
    time_zone: str = Field(
        "UTC",
        description="IANA time zone, e.g. America/New_York",
        json_schema_extra={"enum": list(TIME_ZONES)},
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in _TIME_ZONE_SET:
            raise ValueError(
                f"spec.tradingDay.timeZone: {value!r} is not an IANA time zone: "
                "write a name such as America/New_York, Europe/London or UTC"
            )
        return value


class MetricsSourceType(str, Enum):
    SCRAPE = "scrape"
    PROMETHEUS = "prometheus"


class PrometheusSource(ApiModel):
    address: str = Field(..., min_length=1, description="Base URL of the Prometheus HTTP API.")
    queries: dict[str, str] = Field(
        default_factory=dict, description="PromQL overrides, keyed by metric name."
    )


class MetricsFailurePolicy(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.pauseAfter <= self.haltAfter",
                    "message": (
                        "pauseAfter must be <= haltAfter (the strategy pauses before it halts):"
                        " lower spec.analysis.metricsFailure.pauseAfter or raise haltAfter"
                    ),
                    "fieldPath": ".pauseAfter",
                }
            ]
        }
    )

    pause_after: int = Field(3, ge=1, description="Consecutive failed reads before the strategy pauses.")
    halt_after: int = Field(10, ge=1, description="Consecutive failed reads before the strategy halts.")

    @field_validator("pause_after", "halt_after", mode="before")
    @classmethod
    def _no_float(cls, value: Any, info: Any) -> Any:
        # The apiserver takes 10.0 for an integer field, but this class's CEL rule cannot
        # read it (it evaluates to an error, so the spec is refused): refuse it here too.
        if isinstance(value, float):
            raise ValueError(f"{to_camel(info.field_name)}: {value!r}: write a whole number such as 10, without .0")
        return value

    @model_validator(mode="after")
    def _pause_before_halt(self) -> MetricsFailurePolicy:
        if self.pause_after > self.halt_after:
            raise ValueError(
                f"spec.analysis.metricsFailure.pauseAfter: {self.pause_after} must be <= haltAfter "
                f"({self.halt_after}), the strategy pauses before it halts: lower pauseAfter or raise haltAfter"
            )
        return self


class Analysis(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.source != 'prometheus' || has(self.prometheus)",
                    "message": "source: prometheus needs spec.analysis.prometheus.address",
                }
            ]
        }
    )

    interval: Duration = Field("30s", description="How often metrics and gates are evaluated.")
    timeout: Duration = Field("5s", description="Timeout of one metrics read.")
    rate_window: Duration = Field("60s", description="Window of the order-rate and error-rate limits.")
    source: MetricsSourceType = MetricsSourceType.SCRAPE
    prometheus: Optional[PrometheusSource] = None
    metrics_failure: MetricsFailurePolicy = Field(default_factory=MetricsFailurePolicy)

    @model_validator(mode="after")
    def _prometheus_needs_address(self) -> Analysis:
        # the model's copy of this class's CEL rule
        if self.source == MetricsSourceType.PROMETHEUS and self.prometheus is None:
            raise ValueError("spec.analysis.prometheus: source: prometheus needs spec.analysis.prometheus.address")
        return self


MAX_SUPERVISION_TIMEOUT = timedelta(hours=24)
# Two evaluation intervals at least: a contact arrives once per interval, so a shorter timeout
# would put the strategy in safe mode between two healthy scrapes.
SUPERVISION_INTERVALS = 2
_SUPERVISED = "has(self.supervision) && has(self.supervision.timeout)"


class Supervision(ApiModel):
    """The dead-man's switch: every scrape by the leading operator carries a deadline (now +
    timeout); when the last one passes, the strategy goes to safe mode (no new exposure,
    reduce-only, working orders cancelled) until a scrape with a future deadline comes back."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.timeout) || !self.timeout.matches('{DURATION_PATTERN}') || "
                    f"({duration_ms_cel('self.timeout')} > 0 && {duration_ms_cel('self.timeout')} <= "
                    f"{int(MAX_SUPERVISION_TIMEOUT / timedelta(milliseconds=1))})",
                    "message": "spec.supervision.timeout must be more than 0s and at most 24h: write a duration "
                    "such as 90s (at least two spec.analysis.interval), or remove it to turn supervision off",
                    "fieldPath": ".timeout",
                }
            ]
        }
    )

    timeout: Optional[Duration] = Field(
        None,
        description=(
            "How long the strategy trades without a supervised scrape before it goes to safe mode, e.g. 90s; "
            f"at least {SUPERVISION_INTERVALS} x spec.analysis.interval, at most 24h. Absent: no supervision."
        ),
    )

    @field_validator("timeout")
    @classmethod
    def _bounded(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not timedelta(0) < parse_duration(value) <= MAX_SUPERVISION_TIMEOUT:
            raise ValueError(
                f"spec.supervision.timeout: {value!r} must be more than 0s and at most 24h: write a duration "
                "such as 90s (at least two spec.analysis.interval), or remove it to turn supervision off"
            )
        return value

    @property
    def timeout_delta(self) -> Optional[timedelta]:
        return parse_duration(self.timeout) if self.timeout is not None else None


class Emergency(ApiModel):
    stop_orders_timeout: Duration = Field("30s", description="Step 1, stop order acceptance.")
    cancel_orders_timeout: Duration = Field("60s", description="Step 2, cancel pending orders.")
    flatten_timeout: Duration = Field("300s", description="Step 3 (critical only), close all positions.")


class EnvVar(ApiModel):
    name: str = Field(..., min_length=1, max_length=253)
    value: Optional[str] = None
    value_from: Optional[K8sObject] = None


class StrategyTemplate(ApiModel):
    """The strategy's container. Secrets reach it only by reference (envFrom, valueFrom)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.env) || self.env.all(e, !e.name.startsWith('PHASEGATE_'))",
                    "message": (
                        "env names starting with PHASEGATE_ are set by the operator (mode, capital, fraction);"
                        " remove them from spec.template.env"
                    ),
                },
                {
                    "rule": "!has(self.automountServiceAccountToken) || !self.automountServiceAccountToken"
                    " || has(self.serviceAccountName)",
                    "message": "automountServiceAccountToken: true needs spec.template.serviceAccountName:"
                    " name the ServiceAccount whose token the strategy needs",
                    "fieldPath": ".automountServiceAccountToken",
                },
            ]
        }
    )

    image: str = Field(..., min_length=1)
    image_pull_policy: Optional[str] = Field(None, pattern=r"^(Always|IfNotPresent|Never)$")
    command: Optional[list[str]] = None
    args: Optional[list[str]] = None
    env: Optional[list[EnvVar]] = Field(None, max_length=200)
    env_from: Optional[K8sObjectList] = None
    resources: Optional[K8sObject] = None
    node_selector: Optional[dict[str, str]] = None
    tolerations: Optional[K8sObjectList] = None
    service_account_name: Optional[str] = None
    metrics_port: int = Field(9100, ge=1, le=65535)
    # Pod security (the `restricted` Pod Security Standard, always): these are the only
    # knobs, and none of them can loosen what that profile forbids.
    run_as_user: int = Field(
        65532, json_schema_extra={"minimum": 1, "maximum": 2147483647},
        description="UID the strategy runs as; never 0 (root). The pod always has runAsNonRoot: true.",
    )
    run_as_group: int = Field(
        65532, json_schema_extra={"minimum": 1, "maximum": 2147483647}, description="Primary GID; never 0."
    )
    fs_group: int = Field(
        65532, json_schema_extra={"minimum": 1, "maximum": 2147483647},
        description="GID owning the pod's volumes (checkpoints, /tmp); never 0.",
    )
    read_only_root_filesystem: bool = Field(
        True, description="false: the image's filesystem is writable (checkpoints and /tmp are volumes either way)."
    )
    automount_service_account_token: bool = Field(
        False, description="true: mount the token of serviceAccountName (required) for a strategy that calls the API."
    )

    @field_validator("run_as_user", "run_as_group", "fs_group")
    @classmethod
    def _not_root(cls, value: int, info: Any) -> int:
        name = to_camel(info.field_name)
        if not 1 <= value <= 2147483647:
            raise ValueError(
                f"spec.template.{name}: {value} is not allowed: use an id from 1 to 2147483647, such as 65532 "
                "(0 is root, which the restricted Pod Security profile forbids)"
            )
        return value

    @model_validator(mode="after")
    def _token_needs_account(self) -> StrategyTemplate:
        if self.automount_service_account_token and not self.service_account_name:
            raise ValueError(
                "spec.template.automountServiceAccountToken: true needs spec.template.serviceAccountName"
            )
        return self


class LabelSelectorRequirement(ApiModel):
    key: str = Field(..., min_length=1, max_length=317)
    operator: str = Field(..., pattern=r"^(In|NotIn|Exists|DoesNotExist)$")
    values: Optional[list[str]] = None


class LabelSelector(ApiModel):
    """A Kubernetes label selector. Empty ({}) selects everything."""

    match_labels: Optional[dict[str, str]] = None
    match_expressions: Optional[list[LabelSelectorRequirement]] = None


def _operator_namespaces() -> LabelSelector:
    return LabelSelector(match_labels={"kubernetes.io/metadata.name": "phasegate-system"})


def _operator_pods() -> LabelSelector:
    return LabelSelector(match_labels={"app.kubernetes.io/name": "phasegate", "app.kubernetes.io/component": "operator"})


class NetworkPolicySpec(ApiModel):
    """An ingress NetworkPolicy for the strategy's pods: the metrics port, from the operator
    (and Prometheus, when its selectors are given) only; every other ingress is refused.
    Egress is not restricted (the broker's address is the strategy's business)."""

    enabled: bool = Field(False, description="Create the NetworkPolicy.")
    operator_namespace_selector: LabelSelector = Field(
        default_factory=_operator_namespaces, description="Namespaces of the operator (the chart's release namespace)."
    )
    operator_pod_selector: LabelSelector = Field(
        default_factory=_operator_pods, description="The operator's pods (the chart's pod labels)."
    )
    prometheus_namespace_selector: Optional[LabelSelector] = Field(
        None, description="Namespaces of a Prometheus that scrapes the strategy. Unset, with no pod selector: none."
    )
    prometheus_pod_selector: Optional[LabelSelector] = Field(
        None, description="Prometheus pods (in the strategy's own namespace when no namespace selector is given)."
    )


def _default_phases() -> list[Phase]:
    return [
        Phase(name="backtest", mode=Mode.BACKTEST, min_duration="0s", gates=DEFAULT_GATES[Mode.BACKTEST]),
        Phase(name="paper", mode=Mode.PAPER, min_duration="14d", gates=DEFAULT_GATES[Mode.PAPER]),
        Phase(name="shadow", mode=Mode.SHADOW, min_duration="7d", gates=DEFAULT_GATES[Mode.SHADOW]),
        Phase(
            name="live-10",
            mode=Mode.LIVE,
            fraction=Decimal("0.10"),
            min_duration="7d",
            gates=Gates(no_critical_incident=True),
            approval=Approval.MANUAL,
        ),
        Phase(
            name="live-35", mode=Mode.LIVE, fraction=Decimal("0.35"), min_duration="7d", gates=Gates(no_critical_incident=True)
        ),
        Phase(
            name="live-65",
            mode=Mode.LIVE,
            fraction=Decimal("0.65"),
            min_duration="7d",
            gates=Gates(no_critical_incident=True, max_slippage_bps=Decimal("10")),
        ),
        Phase(name="live-100", mode=Mode.LIVE, fraction=Decimal("1"), min_duration="0s", gates=Gates()),
    ]


def _default_risk_limits() -> RiskLimits:
    return RiskLimits(
        max_drawdown=Limit(threshold=Decimal("0.10"), action=Action.HALT),
        max_daily_loss=Limit(threshold=Decimal("0.05"), action=Action.HALT),
        max_position_fraction=Limit(threshold=Decimal("0.05"), action=Action.REDUCE),
        min_cash_fraction=Limit(threshold=Decimal("0.10"), action=Action.PAUSE),
        max_position_discrepancy=Limit(threshold=Decimal("0.05"), action=Action.HALT),
        max_order_rate=Limit(threshold=Decimal("120"), action=Action.HALT),
        max_error_rate=Limit(threshold=Decimal("10"), action=Action.HALT),
    )


DEFAULT_MIN_DURATION = {
    Mode.BACKTEST: timedelta(0),
    Mode.PAPER: timedelta(days=14),
    Mode.SHADOW: timedelta(days=7),
    Mode.LIVE: timedelta(days=7),
}

DEFAULT_GATES = {
    Mode.BACKTEST: Gates(
        min_sharpe=Decimal("1.0"),
        max_backtest_drawdown=Decimal("0.20"),
        min_walk_forward_windows=10,
        min_monte_carlo_runs=1000,
    ),
    Mode.PAPER: Gates(min_fill_rate=Decimal("0.95"), no_breaker_trips=True),
    Mode.SHADOW: Gates(
        min_signal_alignment=Decimal("0.95"),
        min_execution_quality=Decimal("0.90"),
        max_mean_latency="500ms",
    ),
    Mode.LIVE: Gates(no_critical_incident=True),
}


class StrategySpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.phases.all(p, self.phases.filter(q, q.name == p.name).size() == 1)",
                    "message": "phase names must be unique: rename the duplicate in spec.phases",
                    "fieldPath": ".phases",
                },
                {
                    "rule": "self.phases.filter(p, p.mode == 'live').map(p, double(p.fraction)).isSorted()",
                    "message": (
                        "live fractions must not decrease along the ladder:"
                        " order spec.phases so that each live rung risks at least as much as the one before"
                    ),
                    "fieldPath": ".phases",
                },
                {
                    "rule": (
                        f"!({_SUPERVISED}) || !self.supervision.timeout.matches('{DURATION_PATTERN}')"
                        f" || !self.analysis.interval.matches('{DURATION_PATTERN}')"
                        f" || {duration_ms_cel('self.supervision.timeout')}"
                        f" >= {SUPERVISION_INTERVALS} * {duration_ms_cel('self.analysis.interval')}"
                    ),
                    "message": (
                        f"spec.supervision.timeout must be at least {SUPERVISION_INTERVALS} x spec.analysis.interval"
                        " (a supervised scrape comes once per interval): raise spec.supervision.timeout"
                        " or shorten spec.analysis.interval"
                    ),
                    "fieldPath": ".supervision.timeout",
                },
                {
                    "rule": f"!({_SUPERVISED}) || self.analysis.source != 'prometheus'",
                    "message": (
                        "spec.supervision.timeout needs spec.analysis.source: scrape (with prometheus the operator"
                        " never contacts the pod, so supervision would always lapse): use source scrape"
                        " or remove spec.supervision"
                    ),
                    "fieldPath": ".supervision.timeout",
                },
                {
                    "rule": (
                        "!self.phases.exists(p, p.mode == 'live')"
                        " || has(self.riskLimits.maxDrawdown) || has(self.riskLimits.maxDailyLoss)"
                    ),
                    "message": (
                        "a strategy with a live phase needs spec.riskLimits.maxDrawdown or spec.riskLimits.maxDailyLoss:"
                        " never deploy without circuit breakers"
                    ),
                    "fieldPath": ".riskLimits",
                },
            ]
        }
    )

    capital: Money = Field(..., description='Capital base of the account, a decimal string: "1000000".')
    paper_capital: Optional[Money] = Field(None, description="Capital for paper and shadow. Default: capital.")
    account: str = Field(..., min_length=1, description="Broker account the strategy trades.")
    max_fraction: Fraction = Field(
        ..., description="Ceiling on the capital fraction: the ladder stops below any rung above it."
    )
    template: StrategyTemplate
    phases: list[Phase] = Field(
        default_factory=_default_phases,
        min_length=1,
        max_length=16,
        description="The ladder, in order. Default: backtest, paper 14d, shadow 7d, live 10/35/65/100%.",
    )
    risk_limits: RiskLimits = Field(default_factory=_default_risk_limits)
    trading_day: TradingDay = Field(default_factory=TradingDay)
    analysis: Analysis = Field(default_factory=Analysis)
    emergency: Emergency = Field(default_factory=Emergency)
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="An ingress NetworkPolicy for the strategy's pods (off by default)."
    )
    supervision: Optional[Supervision] = Field(
        None, description="The strategy's dead-man's switch on the operator's scrapes (off when absent)."
    )
    termination_grace_period: Duration = Field(
        "90s", description="SIGTERM to SIGKILL: stop orders, cancel pending orders, checkpoint, disconnect."
    )
    history_limit: int = Field(50, ge=5, le=500, description="History entries kept in status.")

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> StrategySpec:
        """A manifest's spec, read by its wire (camelCase) names only, as the apiserver reads
        it: `min_duration` in a manifest is an unknown field to both. Python code uses the
        Python names through the constructor: StrategySpec(max_fraction=..., phases=[...])."""
        if kwargs.get("by_name") is None:
            kwargs["by_name"] = False
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _decodable_numbers(cls, data: Any) -> Any:
        where = out_of_range_number(data)
        if where:
            raise ValueError(f"{where}: the number is out of range (the apiserver reads numbers as 64-bit floats)")
        return data

    @model_validator(mode="after")
    def _check_reserved_env(self) -> StrategySpec:
        # The model's copy of StrategyTemplate's CEL rule on env names (checked here, where
        # the field path is known; the rule itself lives with StrategyTemplate).
        for i, e in enumerate(self.template.env or []):
            if e.name.startswith("PHASEGATE_"):
                raise ValueError(
                    f"spec.template.env[{i}].name: {e.name!r}: env names starting with PHASEGATE_ are set by "
                    "the operator (mode, capital, fraction); remove them from spec.template.env"
                )
        return self

    @model_validator(mode="after")
    def _check_ladder(self) -> StrategySpec:
        # The same rules the CRD's CEL enforces, so that the CLI, tests and a
        # manifest check outside the cluster give the same answer as the apiserver.
        names = [p.name for p in self.phases]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"spec.phases: duplicate phase name(s) {dups}: phase names must be unique")
        live = [p.fraction for p in self.phases if p.mode == Mode.LIVE]
        if any(b < a for a, b in zip(live, live[1:], strict=False)):
            raise ValueError("spec.phases: live fractions must not decrease along the ladder")
        for p in self.phases:
            if (p.mode == Mode.LIVE) != (p.fraction > 0):
                raise ValueError(
                    f"spec.phases[{p.name}].fraction: must be > 0 for a live phase and 0 otherwise"
                )
        if live and self.risk_limits.max_drawdown is None and self.risk_limits.max_daily_loss is None:
            raise ValueError(
                "spec.riskLimits: a strategy with a live phase needs maxDrawdown or maxDailyLoss"
            )
        return self

    @model_validator(mode="after")
    def _check_supervision(self) -> StrategySpec:
        # The model's copy of the two CEL rules on spec.supervision.timeout above.
        timeout = self.supervision_timeout
        if timeout is None:
            return self
        problems = []  # both, as the apiserver reports both rules
        if self.analysis.source == MetricsSourceType.PROMETHEUS:
            problems.append(
                "spec.supervision.timeout needs spec.analysis.source: scrape (with prometheus the operator never "
                "contacts the pod, so supervision would always lapse): use source scrape or remove spec.supervision"
            )
        least = SUPERVISION_INTERVALS * self.evaluation_interval
        if timeout < least:
            problems.append(
                f"spec.supervision.timeout: {format_duration(timeout)} is shorter than {SUPERVISION_INTERVALS} x "
                f"spec.analysis.interval ({self.analysis.interval}; a supervised scrape comes once per interval): "
                f"raise spec.supervision.timeout to {format_duration(least)} or more, or shorten spec.analysis.interval"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def supervision_timeout(self) -> Optional[timedelta]:
        """None when the strategy is not supervised."""
        return self.supervision.timeout_delta if self.supervision is not None else None

    @property
    def grace_period(self) -> timedelta:
        return parse_duration(self.termination_grace_period)

    @property
    def evaluation_interval(self) -> timedelta:
        return parse_duration(self.analysis.interval)

    def phase_named(self, name: str) -> Optional[Phase]:
        return next((p for p in self.phases if p.name == name), None)

    def capital_for(self, phase: Phase) -> Decimal:
        """Capital the strategy may use in a phase: paper capital until live, then base x fraction."""
        if phase.mode == Mode.LIVE:
            return self.capital * phase.fraction
        return self.paper_capital if self.paper_capital is not None else self.capital

    def ceiling_index(self) -> int:
        """Index of the last phase within maxFraction: the ladder never goes past it."""
        last = 0
        for i, p in enumerate(self.phases):
            if p.fraction > self.max_fraction:
                break
            last = i
        return last
