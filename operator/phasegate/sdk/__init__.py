"""phasegate.sdk: what runs inside a strategy pod (layer 7; depends only on phasegate.api).

A strategy author writes a `Strategy` (signals from market frames, orders from signals),
wraps it in a `StrategyApp` and calls `main(app)`. The runtime then keeps the pod's side
of the contract: it reads and checks the PHASEGATE_* environment, restores the last
checkpoint, serves the strategy_* metrics, trades through the paper broker behind the
in-process circuit breakers, and shuts down in the guide's order on SIGTERM.

Modules, one concern each:
    environment  the pod environment contract, checked at start
    runtime      main(), the trading loop, backtest and flatten modes
    engine       one trading step, shared by backtests and pods
    strategy     the Strategy interface and its TradingContext
    broker       orders, the cost model and the paper broker
    ledger       a Decimal book of cash and positions
    orders       the order gate every order passes
    breakers     drawdown, daily loss, order rate and error rate breakers (latching)
    sizing       fractional Kelly with cap, volatility scaling and cash limit
    reconcile    local vs broker positions, the discrepancy ratio
    shadow       signal alignment against a replay of the backtest
    quality      execution quality and slippage
    exporter     the Prometheus metrics and their HTTP server
    supervision  the dead-man's switch: safe mode when the operator's supervised scrapes stop
    checkpoint   atomic checkpoints
    shutdown     the SIGTERM sequence and its stable step names
    backtest     backtests, walk-forward windows, Monte Carlo
    market       bars, frames and the seeded synthetic market
    termination  the termination message
    logs         JSON logging (structlog)
    clock, money time and Decimal helpers
See README.md beside this file for the log events and endpoints other parts rely on.
"""

from .breakers import BreakerBoard, BreakerLimits, BreakerType
from .broker import CostModel, Order, OrderRequest, OrderStatus, PaperBroker, Side
from .environment import ConfigError, RunMode, RuntimeConfig, load_config
from .market import Bar, MarketFrame, SyntheticMarket
from .runtime import FeedStart, StrategyApp, StrategyRuntime, main
from .shutdown import STEP_ORDER
from .sizing import PositionSizer
from .strategy import Signals, Strategy, TradingContext

__all__ = [
    "Bar", "BreakerBoard", "BreakerLimits", "BreakerType", "ConfigError", "CostModel", "FeedStart", "MarketFrame",
    "Order", "OrderRequest", "OrderStatus", "PaperBroker", "PositionSizer", "RunMode", "RuntimeConfig", "STEP_ORDER",
    "Side", "Signals", "Strategy", "StrategyApp", "StrategyRuntime", "SyntheticMarket", "TradingContext",
    "load_config", "main",
]
