"""Names shared by the operator, the CLI and the strategy SDK.

These are the contracts of docs/architecture.md: changing one breaks every running strategy,
so they live in one place and nothing else spells them out.
"""

from __future__ import annotations

GROUP = "phasegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TradingStrategy"
PLURAL = "tradingstrategies"
SINGULAR = "tradingstrategy"
SHORT_NAMES = ["ts", "strategy"]

# --- strategy pod environment (set by the operator, read by the sdk) ---
ENV_STRATEGY = "PHASEGATE_STRATEGY"
ENV_PHASE = "PHASEGATE_PHASE"
ENV_MODE = "PHASEGATE_MODE"  # backtest | paper | shadow | live | flatten
ENV_CAPITAL_FRACTION = "PHASEGATE_CAPITAL_FRACTION"
ENV_CAPITAL = "PHASEGATE_CAPITAL"
ENV_SHADOW = "PHASEGATE_SHADOW"  # "true" | "false"
ENV_CHECKPOINT_DIR = "PHASEGATE_CHECKPOINT_DIR"
ENV_METRICS_PORT = "PHASEGATE_METRICS_PORT"
ENV_ACCOUNT = "PHASEGATE_ACCOUNT"
# Set only when spec.supervision.timeout is: the strategy expects supervised scrapes from
# its start, and goes to safe mode when none came within this duration (sdk/supervision.py).
ENV_SUPERVISION_TIMEOUT = "PHASEGATE_SUPERVISION_TIMEOUT"

POD_ENV_NAMES = (
    ENV_STRATEGY,
    ENV_PHASE,
    ENV_MODE,
    ENV_CAPITAL_FRACTION,
    ENV_CAPITAL,
    ENV_SHADOW,
    ENV_CHECKPOINT_DIR,
)

METRICS_PORT_NAME = "metrics"
DEFAULT_METRICS_PORT = 9100
DEFAULT_CHECKPOINT_DIR = "/var/lib/phasegate/checkpoints"

# --- strategy metrics (Prometheus exposition on the pod's metrics port) ---
M_ORDERS_SUBMITTED = "strategy_orders_submitted_total"
M_ORDERS_FILLED = "strategy_orders_filled_total"
M_PORTFOLIO_VALUE = "strategy_portfolio_value"
M_CASH = "strategy_cash"
M_LARGEST_POSITION_FRACTION = "strategy_largest_position_fraction"
M_ORDER_LATENCY = "strategy_order_latency_seconds"  # histogram
M_BREAKER_TRIPS = "strategy_circuit_breaker_trips_total"  # label breaker_type
M_ERRORS = "strategy_errors_total"
M_SIGNAL_ALIGNMENT = "strategy_signal_alignment_ratio"
M_POSITION_DISCREPANCY = "strategy_position_discrepancy_ratio"
M_EXECUTION_QUALITY = "strategy_execution_quality_ratio"
M_SLIPPAGE_BPS = "strategy_slippage_bps"
# The dead-man's switch (spec.supervision): 1 while the strategy is in safe mode (no new
# exposure, reduce-only), entries into it, and the deadline of the last supervised contact.
M_SUPERVISION_SAFE_MODE = "strategy_supervision_safe_mode"
M_SUPERVISION_SAFE_MODE_ENTRIES = "strategy_supervision_safe_mode_entries_total"
M_SUPERVISION_SAFE_MODE_EXITS = "strategy_supervision_safe_mode_exits_total"
M_SUPERVISION_DEADLINE = "strategy_supervision_deadline_timestamp_seconds"

# --- supervision headers (on every scrape by the leading operator, spec.supervision set) ---
# Who supervises (the leader's identity) and until when (RFC 3339, UTC): the strategy keeps
# trading normally only while the last deadline it received is in the future.
HEADER_SUPERVISOR = "Phasegate-Supervisor"
HEADER_SUPERVISION_DEADLINE = "Phasegate-Supervision-Deadline"

# --- labels and annotations on objects the operator owns ---
LABEL_STRATEGY = "phasegate.dev/strategy"
LABEL_COMPONENT = "phasegate.dev/component"  # strategy | backtest | flatten
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "phasegate"
ANNOTATION_PHASE = "phasegate.dev/phase"
ANNOTATION_REQUEST = "phasegate.dev/request"  # a manual action, JSON, written by the CLI
# On the strategy pod: which book it trades and with what capital, so that a read from a
# pod still running the previous rung is graded against its own book (flows).
ANNOTATION_MODE = "phasegate.dev/mode"
ANNOTATION_CAPITAL = "phasegate.dev/capital"
# On the StatefulSet: the digest of the decision it was applied for (policy.desired).
ANNOTATION_DESIRED_KEY = "phasegate.dev/desired-key"
# On the StatefulSet, written by the halt sentinel in the same patch as `replicas: 0`: which
# breaker conditions it stopped the pod on (policy/external.py). The strategy's pass halts on
# it even if the condition is gone by then, and removes it once a halt answers it.
ANNOTATION_SENTINEL_STOP = "phasegate.dev/sentinel-stop"

# The node of the local process runtime (tests and demo): pods that tolerate this
# taint run as real local processes.
LOCAL_PROCESS_NODE = "local-process"
LOCAL_PROCESS_TAINT_KEY = "phasegate.dev/local-process"

# Set from the downward API (status.podIP): the address the strategy binds its
# metrics server to, so that several strategies can share one host in tests.
ENV_POD_IP = "PHASEGATE_POD_IP"
# Where a local-process runtime asks the strategy to write its termination message
# (a real kubelet uses the container's terminationMessagePath, /dev/termination-log).
ENV_TERMINATION_MESSAGE_PATH = "PHASEGATE_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
