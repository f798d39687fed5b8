"""Graceful shutdown on SIGTERM, in the order of the going-live guide.

    1. stop_accepting_orders   close the order gate and stop the trading loop
    2. cancel_pending_orders   cancel every order still open at the broker
    3. write_final_checkpoint  persist the book, the strategy and the market
    4. close_broker_connection disconnect from the broker
    5. flush_logs              flush what is buffered; the last line written

Each step writes exactly one JSON log line when it ends:
    {"event": "shutdown.step", "step": "<name>", "index": <1..5>, "status": "ok|failed|timeout",
     "strategy": "<name>", "elapsed_ms": ..., ...}
framed by {"event": "shutdown.begin", "signal": ..., "budget_seconds": ...} and
{"event": "shutdown.complete", "status": "ok|degraded", ...}. These names are stable:
tests and the operator's end-to-end checks read them. A step that fails or overruns its
share of the grace budget is logged and the next step still runs: a checkpoint is worth
writing even when cancelling failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

STOP_ACCEPTING_ORDERS = "stop_accepting_orders"
CANCEL_PENDING_ORDERS = "cancel_pending_orders"
WRITE_FINAL_CHECKPOINT = "write_final_checkpoint"
CLOSE_BROKER_CONNECTION = "close_broker_connection"
FLUSH_LOGS = "flush_logs"

STEP_ORDER = (
    STOP_ACCEPTING_ORDERS,
    CANCEL_PENDING_ORDERS,
    WRITE_FINAL_CHECKPOINT,
    CLOSE_BROKER_CONNECTION,
    FLUSH_LOGS,
)

StepAction = Callable[[], Awaitable[dict | None]]


@dataclass
class ShutdownStep:
    name: str
    action: StepAction


class ShutdownSequence:
    def __init__(self, steps: list[ShutdownStep], log: Any, budget_seconds: float = 25.0,
                 flush: Callable[[], None] = lambda: None) -> None:
        names = tuple(s.name for s in steps)
        if names != STEP_ORDER:
            raise ValueError(f"shutdown steps must be {STEP_ORDER}, got {names}")
        self.steps = steps
        self.log = log
        self.budget = budget_seconds
        self.flush = flush
        self.ran: list[tuple[str, str]] = []

    async def run(self, signal_name: str) -> bool:
        """Run every step in order; True when all of them succeeded."""
        start = time.monotonic()
        self.log.info("shutdown.begin", signal=signal_name, budget_seconds=self.budget, steps=list(STEP_ORDER))
        self.flush()
        ok = True
        for index, step in enumerate(self.steps, start=1):
            remaining = self.budget - (time.monotonic() - start)
            # Each step may use what is left of the budget, shared among the steps still to run,
            # so one slow step cannot starve the checkpoint behind it.
            allowance = max(remaining / (len(self.steps) - index + 1), 0.05)
            began = time.monotonic()
            details: dict = {}
            try:
                details = await asyncio.wait_for(step.action(), timeout=allowance) or {}
                status = "ok"
            except TimeoutError:
                status = "timeout"
            except Exception as exc:
                status = "failed"
                details = {"error": repr(exc)}
            ok = ok and status == "ok"
            self.ran.append((step.name, status))
            log = self.log.info if status == "ok" else self.log.error
            log(
                "shutdown.step",
                step=step.name,
                index=index,
                status=status,
                elapsed_ms=round((time.monotonic() - began) * 1000, 3),
                **details,
            )
            self.flush()
        self.log.info(
            "shutdown.complete",
            status="ok" if ok else "degraded",
            elapsed_ms=round((time.monotonic() - start) * 1000, 3),
        )
        self.flush()
        return ok
