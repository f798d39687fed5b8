#!/usr/bin/env python3
"""A small controllable strategy for end-to-end tests (stdlib + prometheus_client only).

It honours the strategy pod contract of docs/architecture.md without trading anything:

* Serves Prometheus metrics under the contract names on
  $PHASEGATE_POD_IP (default 127.0.0.1) : $PHASEGATE_METRICS_PORT (default 9100), at /metrics.
* Ticks every $FAKE_TICK_SECONDS (default 1): submits and fills `tick_orders` orders
  (default 1) and observes `tick_latency` seconds (default 0.1) of order latency each,
  so that rate and latency gates have something to measure.
* Logs one JSON line per event to stdout. The first line, event "start", carries every
  PHASEGATE_* and FAKE_* variable of its environment, so tests can see the pod env.
* SIGTERM (or SIGINT): logs "shutdown.step" lines stop_accepting_orders,
  cancel_pending_orders, write_checkpoint, close_broker, flush_logs (each after
  $FAKE_SHUTDOWN_STEP_SECONDS, default 0), then "shutdown.done", and exits 0.
* PHASEGATE_MODE=backtest: writes $FAKE_BACKTEST_RESULT (default
  {"sharpe":1.8,"maxDrawdown":0.08,"walkForwardWindows":12,"monteCarloRuns":1000}) to
  $PHASEGATE_TERMINATION_MESSAGE_PATH (default /dev/termination-log) after
  $FAKE_BACKTEST_SECONDS (default 0), and exits $FAKE_BACKTEST_EXIT (default 0).
* PHASEGATE_MODE=flatten: logs "flatten", waits $FAKE_FLATTEN_SECONDS (default 0),
  exits $FAKE_FLATTEN_EXIT (default 0).

Healthy defaults: portfolio 1000000, cash 500000 (50%) for a 1,000,000 book (money is
scaled by PHASEGATE_CAPITAL / 1,000,000, as a strategy sizes its book), largest position 0.02, signal
alignment 0.99, execution quality 0.95, slippage 2 bps, position discrepancy 0, fill
rate 100%, latency 0.1 s, no breaker trips, no errors.

POST /control with a JSON object changes it at runtime; the reply is the new state.
Keys (all optional, applied in this order):

  reset_counters: true        counters and histogram back to zero (a process restart)
  portfolio_value, cash, largest_position_fraction, signal_alignment,
  execution_quality, position_discrepancy, slippage_bps, supervision_safe_mode:
                              set the gauge (number or decimal string); null stops
                              exporting it (as a strategy that does not have it)
  orders_submitted_inc: n     add n submitted orders
  orders_filled_inc: n        add n filled orders
  orders_inc: n               add n submitted and n filled orders
  errors_inc: n               add n errors
  breaker_trip: "type" | ["type", ...]   one trip of strategy_circuit_breaker_trips_total{breaker_type}
  latency_observe: s | [s, ...]          observe order latency in seconds
  tick: true | false          start or stop the background ticker
  tick_orders: n              orders per tick (0: none)
  tick_latency: s             latency observed per ticked order
  fail: true | false          /metrics answers HTTP 500 while true
  garbage: true | false       /metrics answers 200 with text that is not an exposition
  hang_seconds: s             /metrics waits s seconds before answering (0 to stop)
  exit: code                  log "exit" and leave at once with that code (a crash)

GET /control returns the state; GET /healthz returns "ok".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

DEFAULT_BACKTEST_RESULT = '{"sharpe":1.8,"maxDrawdown":0.08,"walkForwardWindows":12,"monteCarloRuns":1000}'
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SHUTDOWN_STEPS = ("stop_accepting_orders", "cancel_pending_orders", "write_checkpoint", "close_broker", "flush_logs")
GAUGES = {
    "portfolio_value": ("strategy_portfolio_value", "Portfolio value."),
    "cash": ("strategy_cash", "Cash."),
    "largest_position_fraction": ("strategy_largest_position_fraction", "Largest position / portfolio value."),
    "signal_alignment": ("strategy_signal_alignment_ratio", "Shadow signal alignment."),
    "execution_quality": ("strategy_execution_quality_ratio", "Execution quality."),
    "position_discrepancy": ("strategy_position_discrepancy_ratio", "Local vs broker positions."),
    "slippage_bps": ("strategy_slippage_bps", "Mean slippage in basis points."),
    # The SDK's dead-man's switch (0: supervised or unsupervised, trading normally).
    "supervision_safe_mode": ("strategy_supervision_safe_mode", "1 while supervision has lapsed."),
}

_log_lock = threading.Lock()


def log(event: str, **fields: Any) -> None:
    line = {"ts": round(time.time(), 3), "event": event, "mode": os.environ.get("PHASEGATE_MODE", ""), **fields}
    with _log_lock:
        sys.stdout.write(json.dumps(line, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gauges: dict[str, str | None] = {
            "portfolio_value": "1000000",
            "cash": "500000",
            "largest_position_fraction": "0.02",
            "signal_alignment": "0.99",
            "execution_quality": "0.95",
            "position_discrepancy": "0",
            "slippage_bps": "2",
            "supervision_safe_mode": "0",
        }
        self.tick = True
        self.tick_orders = 1
        self.tick_latency = 0.1
        self.fail = False
        self.garbage = False
        self.hang_seconds = 0.0
        self.reset_counters()

    def reset_counters(self) -> None:
        self.submitted = 0.0
        self.filled = 0.0
        self.errors = 0.0
        self.trips: dict[str, float] = {}
        self.bucket_counts = [0.0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        for i, le in enumerate(LATENCY_BUCKETS):
            if seconds <= le:
                self.bucket_counts[i] += 1
                break
        else:
            self.bucket_counts[-1] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def do_tick(self) -> None:
        with self.lock:
            if not self.tick or self.tick_orders <= 0:
                return
            self.submitted += self.tick_orders
            self.filled += self.tick_orders
            for _ in range(self.tick_orders):
                self.observe(self.tick_latency)

    def apply(self, body: dict[str, Any]) -> None:
        with self.lock:
            if body.get("reset_counters"):
                self.reset_counters()
            for key in GAUGES:
                if key in body:
                    v = body[key]
                    if v is not None:
                        float(v)  # reject what the exposition could not carry
                    self.gauges[key] = None if v is None else str(v)
            self.submitted += float(body.get("orders_submitted_inc", 0)) + float(body.get("orders_inc", 0))
            self.filled += float(body.get("orders_filled_inc", 0)) + float(body.get("orders_inc", 0))
            self.errors += float(body.get("errors_inc", 0))
            trips = body.get("breaker_trip")
            for btype in [trips] if isinstance(trips, str) else (trips or []):
                self.trips[btype] = self.trips.get(btype, 0.0) + 1
            obs = body.get("latency_observe")
            for s in [obs] if isinstance(obs, (int, float)) else (obs or []):
                self.observe(float(s))
            for key in ("tick", "fail", "garbage"):
                if key in body:
                    setattr(self, key, bool(body[key]))
            if "tick_orders" in body:
                self.tick_orders = int(body["tick_orders"])
            if "tick_latency" in body:
                self.tick_latency = float(body["tick_latency"])
            if "hang_seconds" in body:
                self.hang_seconds = float(body["hang_seconds"])

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "gauges": dict(self.gauges),
                "orders_submitted": self.submitted,
                "orders_filled": self.filled,
                "errors": self.errors,
                "breaker_trips": dict(self.trips),
                "latency_count": self.latency_count,
                "latency_sum": self.latency_sum,
                "tick": self.tick,
                "tick_orders": self.tick_orders,
                "tick_latency": self.tick_latency,
                "fail": self.fail,
                "garbage": self.garbage,
                "hang_seconds": self.hang_seconds,
            }

    def collect(self):  # the prometheus_client Collector protocol
        with self.lock:
            for key, (name, doc) in GAUGES.items():
                v = self.gauges[key]
                if v is not None:
                    scale = BOOK_SCALE if key in MONEY_GAUGES else 1.0
                    yield GaugeMetricFamily(name, doc, value=float(v) * scale)
            for name, doc, v in (
                ("strategy_orders_submitted", "Orders submitted.", self.submitted),
                ("strategy_orders_filled", "Orders filled.", self.filled),
                ("strategy_errors", "Errors.", self.errors),
            ):
                yield CounterMetricFamily(name, doc, value=v, created=self.created)
            trips = CounterMetricFamily(
                "strategy_circuit_breaker_trips", "Circuit breaker trips.", labels=["breaker_type"]
            )
            for btype, n in sorted(self.trips.items()):
                trips.add_metric([btype], n)
            yield trips
            cumulative, buckets = 0.0, []
            for le, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.bucket_counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            yield HistogramMetricFamily(
                "strategy_order_latency_seconds", "Order latency.", buckets=buckets, sum_value=self.latency_sum
            )


# The book is sized with PHASEGATE_CAPITAL, as the SDK sizes it: the values set through
# /control are for a 1,000,000 book, and a rung that allots more or less capital shows
# proportionally more or less money (so a rung change is a flow, not a gain or a loss).
MONEY_GAUGES = ("portfolio_value", "cash")
BOOK_SCALE = float(os.environ.get("PHASEGATE_CAPITAL") or 1_000_000) / 1_000_000 or 1.0

STATE = State()
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(STATE)


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-strategy/1"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep stdout JSON-only
        pass

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            hang = STATE.hang_seconds
            if hang > 0:
                time.sleep(hang)
            if STATE.fail:
                log("metrics.fail")
                self._reply(500, b"internal error (fail mode)\n")
            elif STATE.garbage:
                self._reply(200, b"this is not { a prometheus exposition\n")
            else:
                self._reply(200, generate_latest(REGISTRY), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/control":
            self._reply(200, json.dumps(STATE.as_dict()).encode(), "application/json")
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/control":
            self._reply(404, b"not found\n")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if "exit" in body:
                log("exit", code=int(body["exit"]))
                os._exit(int(body["exit"]))
            STATE.apply(body)
        except (ValueError, TypeError) as exc:
            self._reply(400, json.dumps({"error": str(exc)}).encode(), "application/json")
            return
        log("control", body=body)
        self._reply(200, json.dumps(STATE.as_dict()).encode(), "application/json")


def run_backtest() -> int:
    time.sleep(_env_float("FAKE_BACKTEST_SECONDS", 0))
    result = os.environ.get("FAKE_BACKTEST_RESULT", DEFAULT_BACKTEST_RESULT)
    path = os.environ.get("PHASEGATE_TERMINATION_MESSAGE_PATH", "/dev/termination-log")
    with open(path, "w", encoding="utf-8") as f:
        f.write(result)
    code = int(os.environ.get("FAKE_BACKTEST_EXIT", "0"))
    log("backtest.done", path=path, result=result, exit_code=code)
    return code


def run_flatten() -> int:
    log("flatten")
    time.sleep(_env_float("FAKE_FLATTEN_SECONDS", 0))
    code = int(os.environ.get("FAKE_FLATTEN_EXIT", "0"))
    log("flatten.done", exit_code=code)
    return code


def serve() -> int:
    host = os.environ.get("PHASEGATE_POD_IP") or "127.0.0.1"
    port = int(os.environ.get("PHASEGATE_METRICS_PORT") or 9100)
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log("signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log("listening", host=host, port=server.server_address[1])

    tick = _env_float("FAKE_TICK_SECONDS", 1.0)
    while not stop.wait(tick):
        STATE.do_tick()

    step_delay = _env_float("FAKE_SHUTDOWN_STEP_SECONDS", 0)
    for step in SHUTDOWN_STEPS:
        if step == "stop_accepting_orders":
            with STATE.lock:
                STATE.tick = False
        time.sleep(step_delay)
        log("shutdown.step", step=step)
    server.shutdown()
    server.server_close()
    log("shutdown.done", exit_code=0)
    return 0


def main() -> int:
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("PHASEGATE_", "FAKE_"))}
    log("start", pid=os.getpid(), env=env)
    mode = os.environ.get("PHASEGATE_MODE", "paper")
    if mode == "backtest":
        return run_backtest()
    if mode == "flatten":
        return run_flatten()
    return serve()


if __name__ == "__main__":
    sys.exit(main())
