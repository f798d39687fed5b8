"""kopf handlers: one loop per strategy, woken by any change to it or its children.

Why a daemon and not a kopf timer: a timer's interval is fixed when the handler is
registered, and each strategy has its own `spec.analysis.interval`. A daemon also
runs every reconcile of one strategy in one task, so two reconciles of the same
strategy never overlap (kopf runs timers concurrently with change handlers).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf

from phasegate.api import StrategySpec, contract
from phasegate.api.observations import Observation

from . import telemetry
from .kube import Conflict
from .leader import NotLeading
from .reconcile import Reconciler

STRATEGY = dict(group=contract.GROUP, version=contract.VERSION, plural=contract.PLURAL)
CHILD_LABELS = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}


@dataclass
class Loop:
    """What the watch handlers share with one strategy's loop: only a wake-up. Whether the
    children need writing is decided on every pass from what is observed, never remembered."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The watchdog's view (monotonic seconds): when the loop started, its interval, and when
    # its last evaluation (an interval pass) completed.
    started: float = field(default_factory=time.monotonic)
    interval: float = 30.0
    last_evaluation: Optional[float] = None


LOOPS: dict[tuple[str, str], Loop] = {}
RECONCILER: Optional[Reconciler] = None
# Whether this process is the leader right now (controller/main.py sets the elector's
# predicate). A loop never reconciles unless it is; every write is fenced on it as well.
def always_leading() -> bool:
    return True


LEADING: Callable[[], bool] = always_leading
STANDBY_POLL = 5.0  # a standby's loops are woken when it starts leading; this is only a backstop
WATCHDOG_INTERVALS = 3.0


def loop_for(namespace: str, name: str) -> Loop:
    return LOOPS.setdefault((namespace, name), Loop())


def wake(namespace: str, name: str) -> None:
    loop_for(namespace, name).wake.set()


def wake_all() -> None:
    """On becoming leader: every loop evaluates at once (their ticks were kept due)."""
    for loop in list(LOOPS.values()):
        loop.wake.set()


def stale_loops(leading_since: Optional[float], now: Optional[float] = None) -> list[str]:
    """Strategies whose last evaluation is older than WATCHDOG_INTERVALS of their interval,
    counted at the earliest from when this process became leader."""
    now = time.monotonic() if now is None else now
    out = []
    for (ns, name), loop in list(LOOPS.items()):
        base = max(loop.last_evaluation or loop.started, leading_since or 0.0)
        if now - base > WATCHDOG_INTERVALS * loop.interval:
            out.append(f"{ns}/{name}: last evaluation {now - base:.1f}s ago (interval {loop.interval:g}s)")
    return out


def _interval(spec: Optional[StrategySpec], body: Any) -> float:
    """The spec's evaluation interval; read from the body only when no reconcile got as far."""
    try:
        spec = spec or StrategySpec.model_validate(body.get("spec") or {})
    except Exception:  # an unreadable spec is reported by reconcile; retry at a calm pace
        return 30.0
    return max(0.2, spec.evaluation_interval.total_seconds())


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.on.event(**STRATEGY)
async def strategy_changed(namespace: str, name: str, type: str, **_: Any) -> None:
    """Any write to a strategy (spec, status conditions, request annotation) wakes its loop."""
    if type != "DELETED":
        wake(namespace, name)


@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD_LABELS)
async def child_changed(namespace: str, labels: dict[str, str], **_: Any) -> None:
    """Someone scaled or edited our StatefulSet: put it back as the status says (a halt stays a halt)."""
    owner = labels.get(contract.LABEL_STRATEGY)
    if owner and (namespace, owner) in LOOPS:
        wake(namespace, owner)


@kopf.daemon(**STRATEGY, cancellation_timeout=10.0)
async def strategy_loop(body: kopf.Body, namespace: str, name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
    assert RECONCILER is not None, "phasegate.controller.main sets the reconciler at start-up"
    aio = asyncio.get_running_loop()
    me = loop_for(namespace, name)
    next_tick = aio.time()
    me.interval = _interval(None, body)
    log = telemetry.log_for(namespace, name)
    log.info("watching strategy")
    try:
        while not stopped:
            timeout = max(0.0, next_tick - aio.time()) if LEADING() else STANDBY_POLL
            try:
                await asyncio.wait_for(me.wake.wait(), timeout=timeout)
            except TimeoutError:
                pass
            me.wake.clear()
            if stopped:
                break
            if not LEADING():  # a standby (or a leader past its renew deadline) never reconciles
                next_tick = min(next_tick, aio.time())  # kept due: the first pass as leader evaluates
                continue
            tick = aio.time() >= next_tick
            current: Optional[dict[str, Any]] = _plain(body)
            spec: Optional[StrategySpec] = None
            carry: Optional[Observation] = None
            failed = completed = False
            for attempt in range(5):
                try:
                    spec, _ = await RECONCILER.reconcile(
                        current, trigger="interval" if tick else "event", read_metrics=tick, carry=carry,
                    )
                    completed = True
                    break
                except Conflict as exc:
                    # Someone wrote status after our read (a breaker condition, a request):
                    # decide again on what is there now, with the metrics already read, so a
                    # breach seen in this pass is never dropped.
                    telemetry.STATUS_CONFLICTS.inc()
                    carry = getattr(exc, "observation", None)
                    current = await RECONCILER.kube.get_strategy(namespace, name)
                    if current is None:
                        return
                except asyncio.CancelledError:
                    raise
                except NotLeading as exc:  # leadership lapsed mid-pass: the write was refused
                    log.warning("pass abandoned: not leading", error=str(exc))
                    next_tick = min(next_tick, aio.time())
                    tick = False
                    break
                except Exception as exc:  # keep the loop alive; the next pass compares and repairs
                    telemetry.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                    log.exception("reconcile failed", error=str(exc))
                    await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                    failed = True
                    break
            if tick:
                me.interval = _interval(spec, body)
                next_tick = aio.time() + me.interval
                if completed:
                    me.last_evaluation = time.monotonic()
                    telemetry.LAST_EVALUATION.labels(namespace, name).set(time.time())
                    telemetry.EVALUATION_INTERVAL.labels(namespace, name).set(me.interval)
            if failed:
                next_tick = min(next_tick, aio.time() + 1.0)  # a failed write is repaired soon, not next interval
    finally:
        LOOPS.pop((namespace, name), None)
        telemetry.forget_strategy(namespace, name)  # a deleted strategy exports nothing, halted or not
        log.info("stopped watching strategy")
