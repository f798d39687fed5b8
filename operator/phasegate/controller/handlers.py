"""kopf handlers: one loop per strategy, woken by any change to it or its children.

Why a daemon and not a kopf timer: a timer's interval is fixed when the handler is
registered, and each strategy has its own `spec.analysis.interval`. A daemon also
runs every reconcile of one strategy in one task, so two reconciles of the same
strategy never overlap (kopf runs timers concurrently with change handlers).
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf

from phasegate.api import StrategySpec, contract
from phasegate.api.observations import Observation

from . import telemetry
from .kube import Conflict
from .reconcile import Reconciler

STRATEGY = dict(group=contract.GROUP, version=contract.VERSION, plural=contract.PLURAL)
CHILD_LABELS = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}


@dataclass
class Loop:
    """What the watch handlers share with one strategy's loop: only a wake-up. Whether the
    children need writing is decided on every pass from what is observed, never remembered."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)


LOOPS: dict[tuple[str, str], Loop] = {}
RECONCILER: Optional[Reconciler] = None


def loop_for(namespace: str, name: str) -> Loop:
    return LOOPS.setdefault((namespace, name), Loop())


def wake(namespace: str, name: str) -> None:
    loop_for(namespace, name).wake.set()


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
    log = telemetry.log_for(namespace, name)
    log.info("watching strategy")
    try:
        while not stopped:
            try:
                await asyncio.wait_for(me.wake.wait(), timeout=max(0.0, next_tick - aio.time()))
            except TimeoutError:
                pass
            me.wake.clear()
            if stopped:
                break
            tick = aio.time() >= next_tick
            current: Optional[dict[str, Any]] = _plain(body)
            spec: Optional[StrategySpec] = None
            carry: Optional[Observation] = None
            failed = False
            for attempt in range(5):
                try:
                    spec, _ = await RECONCILER.reconcile(
                        current, trigger="interval" if tick else "event", read_metrics=tick, carry=carry,
                    )
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
                except Exception as exc:  # keep the loop alive; the next pass compares and repairs
                    telemetry.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                    log.exception("reconcile failed", error=str(exc))
                    await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                    failed = True
                    break
            if tick:
                next_tick = aio.time() + _interval(spec, body)
            if failed:
                next_tick = min(next_tick, aio.time() + 1.0)  # a failed write is repaired soon, not next interval
    finally:
        LOOPS.pop((namespace, name), None)
        log.info("stopped watching strategy")
