"""kopf handlers: one loop per strategy, woken by any change to it or its children.

Why a daemon and not a kopf timer: a timer's interval is fixed when the handler is
registered, and each strategy has its own `spec.analysis.interval`. A daemon also
runs every reconcile of one strategy in one task, so two reconciles of the same
strategy never overlap (kopf runs timers concurrently with change handlers).

Load: interval evaluations (the ones that read metrics) take a slot of a bounded pool, so
thousands of strategies queue instead of all scraping at once; a change written by someone
else (a breaker condition, a halt request, a spec edit) is urgent: its pass takes no slot,
reads no metrics, and pre-empts the strategy's own evaluation if that one is still reading.
A halt never waits behind routine evaluations. Children come from watch caches (kopf
indexes, controller/cache.py), not a GET per pass; our own status writes do not wake the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf

from phasegate.api import StrategySpec, contract
from phasegate.api.observations import Observation
from phasegate.policy.timing import spread

from . import cache, telemetry
from .env_settings import bounded
from .fresh import FreshBodies
from .kube import PRIORITY, Conflict, Urgency
from .leader import NotLeading
from .lean_bodies import ELIDED, STATUS_ELIDED, elided
from .reconcile import STATUS_KEYS, Memo, Reconciler, newer
from .shards import CURRENT_SHARD

STRATEGY = dict(group=contract.GROUP, version=contract.VERSION, plural=contract.PLURAL)
CHILD_LABELS = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}
POD_LABELS = {**CHILD_LABELS, contract.LABEL_COMPONENT: "strategy"}


@dataclass
class Loop:
    """What the watch handlers share with one strategy's loop: a wake-up, whether the news is
    urgent, and the loop's memory of its own writes. Whether the children need writing is
    decided on every pass from what is observed, never remembered."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    urgent: bool = False
    memo: Memo = field(default_factory=Memo)
    # The evaluation in flight while it still reads (it may be pre-empted then, not later).
    reading: Optional[asyncio.Task[Any]] = None
    # The watchdog's view (monotonic seconds): when the loop started, its interval, and when
    # its last evaluation (an interval pass) completed.
    started: float = field(default_factory=time.monotonic)
    interval: float = 30.0
    last_evaluation: Optional[float] = None
    urgent_since: Optional[float] = None  # when the oldest urgent change not acted on yet arrived
    urgency: Optional[Urgency] = None  # of the pass in flight: raised when an urgent change arrives
    # The body read fresh while kopf keeps this strategy elided (lean_bodies), until kopf has a newer one.
    fetched: Optional[dict[str, Any]] = None


LOOPS: dict[tuple[str, str], Loop] = {}
RECONCILER: Optional[Reconciler] = None
# Whether this process is the leader right now (controller/main.py sets the elector's
# predicate). A loop never reconciles unless it is; every write is fenced on it as well.
def always_leading(namespace: str = "", name: str = "") -> bool:
    return True


LEADING: Callable[[str, str], bool] = always_leading
# The shard of a strategy when the operator is sharded (controller/shards.py), else None.
def unsharded(namespace: str, name: str) -> Optional[int]:
    return None


SHARD_OF: Callable[[str, str], Optional[int]] = unsharded
FRESH: Optional[FreshBodies] = None  # set with RECONCILER (controller/main.py)


def never_stopped(namespace: str, name: str) -> Optional[str]:
    return None


# The resourceVersion of a strategy the halt sentinel stopped the pod of (controller/sentinel.py).
SENTINEL_STOPPED: Callable[[str, str], Optional[str]] = never_stopped


def standing_by(namespace: str, name: str) -> bool:
    """For lean_bodies: this replica does not act on the strategy now (LEADING says so)."""
    return not LEADING(namespace, name)


STANDBY_POLL = 5.0  # a standby's loops are woken when it starts leading; this is only a backstop
WATCHDOG_INTERVALS = 3.0
URGENT_LATE = 1.0  # seconds from someone's change to the end of the pass acting on it: worth a warning
GRID_ENV = "PHASEGATE_TICK_GRID_SECONDS"
GRID_DEFAULT = 0.1
GRID_MAX = 1.0


def tick_grid(raw: Optional[str] = None) -> float:
    """PHASEGATE_TICK_GRID_SECONDS: evaluations come due on a grid of this many seconds
    (default 0.1; 0 turns it off), so that those of neighbouring strategies fire in one turn
    of the event loop and their scrape answers are read in one wake-up: at a thousand
    strategies the 0.1 s grid took the operator from about 0.24 core to 0.12 to 0.19. An
    urgent pass waits behind the CPU of the burst in progress (docs/architecture.md); halts
    are the sentinel's first, and it has a process of its own."""
    return bounded(GRID_ENV, raw, default=GRID_DEFAULT, low=0.0, high=GRID_MAX, parse=float,
                   what="a number of seconds")


TICK_GRID = tick_grid()
# Interval evaluations in flight at once (each mostly waits on a scrape).
EVALUATION_SLOTS = asyncio.Semaphore(int(os.environ.get("PHASEGATE_MAX_CONCURRENT_EVALUATIONS", "256")))


def loop_for(namespace: str, name: str) -> Loop:
    return LOOPS.setdefault((namespace, name), Loop())


def wake(namespace: str, name: str) -> None:
    loop_for(namespace, name).wake.set()


def wake_all() -> None:
    """On becoming leader: every loop evaluates at once (their ticks were kept due)."""
    for loop in list(LOOPS.values()):
        loop.wake.set()


def stale_loops(leading_since: Callable[[str, str], Optional[float]], now: Optional[float] = None) -> list[str]:
    """Strategies this process leads whose last evaluation is older than WATCHDOG_INTERVALS
    of their interval, counted at the earliest from when it began leading them
    (`leading_since(namespace, name)`, None when it does not lead that strategy)."""
    now = time.monotonic() if now is None else now
    out = []
    for (ns, name), loop in list(LOOPS.items()):
        since = leading_since(ns, name)
        if since is None:
            continue
        base = max(loop.last_evaluation or loop.started, since)
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


def on_grid(t: float, grid: float = TICK_GRID) -> float:
    """The first point of the tick grid at or after loop time t (never before it: a timer
    firing before the evaluation is due would run a pass that evaluates nothing)."""
    if grid <= 0:
        return t
    due = math.ceil(t / grid) * grid
    return due if due >= t else due + grid


def first_tick_offset(namespace: str, name: str, interval: float) -> float:
    """Where in its interval a strategy's first evaluation falls: spread by a hash of its name,
    so that thousands of strategies do not all come due when the operator starts. (On a
    takeover they are due at once, on purpose: the slots bound the rush.)"""
    return spread(namespace, name) * interval


@kopf.index("v1", "pods", labels=POD_LABELS)
def phasegate_pods(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], cache.PodView]:
    return {(namespace, name): cache.pod_view(body)}


@kopf.index("apps", "v1", "statefulsets", labels=CHILD_LABELS)
def phasegate_statefulsets(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], cache.StatefulSetView]:
    return {(namespace, name): cache.statefulset_view(body)}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
def phasegate_networkpolicies(namespace: str, name: str, **_: Any) -> dict[tuple[str, str], bool]:
    return {(namespace, name): True}


async def readable(me: Loop, body: dict[str, Any], namespace: str, name: str, *, at_once: bool) -> Optional[dict[str, Any]]:
    """The body to reconcile: kopf's, unless kopf keeps it elided (it came while this replica
    stood by for the strategy); then one read fresh, kept until kopf has a newer body. None
    when the strategy is gone. `at_once`: an urgent pass, which waits for no batch.

    A body older than the one the halt sentinel acted on is not decided from: the strategy is
    read fresh (the sentinel stopped its pod on a condition this body does not have yet)."""
    stopped_at = SENTINEL_STOPPED(namespace, name)
    if stopped_at is not None and newer(stopped_at, body["metadata"].get("resourceVersion")):
        if me.fetched is None or newer(stopped_at, me.fetched["metadata"].get("resourceVersion")):
            assert FRESH is not None, "phasegate.controller.main sets FRESH with the reconciler"
            me.fetched = await FRESH.now(namespace, name)
        return dict(me.fetched) if me.fetched is not None else None
    if not elided(body) and (STATUS_ELIDED not in body or me.memo.vouches_for(body)):
        me.fetched = None
        return body
    at = body.get(ELIDED) or body.get(STATUS_ELIDED)
    if me.fetched is None or newer(at, me.fetched["metadata"].get("resourceVersion")):
        assert FRESH is not None, "phasegate.controller.main sets FRESH with the reconciler"
        me.fetched = await (FRESH.now if at_once else FRESH.get)(namespace, name)
    return dict(me.fetched) if me.fetched is not None else None


def stand_by(me: Loop) -> None:
    """A loop whose strategy this replica no longer acts on forgets what it knew: when it acts
    again, it starts from what the apiserver holds, as after a restart (every transition is
    written before it is acted on; a volatile field can only come back as persisted)."""
    if me.memo.status is not None or me.fetched is not None:
        me.memo, me.fetched = Memo(), None


def own_echo(obj: dict[str, Any]) -> bool:
    """For controller/lean_bodies.py: whether a watched strategy is exactly at the
    resourceVersion its loop's last write produced (its echo) and carries no status field but
    ours (then the loop's memo vouches for it and kopf need not keep its status)."""
    if obj.get("kind") != contract.KIND:
        return False
    meta = obj.get("metadata") or {}
    loop = LOOPS.get((meta.get("namespace"), meta.get("name")))
    if loop is None:
        return False
    memo = loop.memo
    rv = meta.get("resourceVersion")
    if not rv or rv != memo.echo_rv or not memo.persisted_json:
        return False
    # A field someone else keeps in status: kopf gets the body as it came.
    return STATUS_KEYS.issuperset(obj.get("status") or {})


@kopf.on.event(**STRATEGY)
async def strategy_changed(namespace: str, name: str, type: str, body: kopf.Body, **_: Any) -> None:
    """A write to a strategy by anyone but us (a spec edit, a breaker condition, a request
    annotation) wakes its loop at once, as urgent; our own write echoed back is no news."""
    if type == "DELETED":
        return
    loop = LOOPS.get((namespace, name))
    if loop is None:
        return
    rv = (body.get("metadata") or {}).get("resourceVersion")
    if loop.memo.is_own(rv) or loop.memo.is_stale(rv):
        return
    loop.urgent = True
    if loop.urgent_since is None:
        loop.urgent_since = time.monotonic()
    if loop.reading is not None and not loop.reading.done():
        loop.reading.cancel()  # the evaluation still reading: the urgent pass goes first
    if loop.urgency is not None:
        loop.urgency.raise_()  # a pass past its reads finishes unthrottled, then the urgent one runs
    loop.wake.set()


@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD_LABELS)
async def child_changed(namespace: str, labels: dict[str, str], **_: Any) -> None:
    """Someone scaled or edited our StatefulSet: put it back as the status says (a halt stays a halt)."""
    owner = labels.get(contract.LABEL_STRATEGY)
    if owner and (namespace, owner) in LOOPS:
        wake(namespace, owner)


@kopf.on.event("v1", "pods", labels=POD_LABELS)
async def pod_changed(namespace: str, labels: dict[str, str], **_: Any) -> None:
    """The strategy pod came up, went away or changed readiness: a halt waits for that."""
    owner = labels.get(contract.LABEL_STRATEGY)
    if owner and (namespace, owner) in LOOPS:
        wake(namespace, owner)


@kopf.daemon(**STRATEGY, cancellation_timeout=10.0)
async def strategy_loop(
    body: kopf.Body, namespace: str, name: str, stopped: kopf.DaemonStopped,
    phasegate_pods: kopf.Index, phasegate_statefulsets: kopf.Index, phasegate_networkpolicies: kopf.Index,
    **_: Any,
) -> None:
    assert RECONCILER is not None, "phasegate.controller.main sets the reconciler at start-up"
    reconciler = RECONCILER
    aio = asyncio.get_running_loop()
    me = loop_for(namespace, name)
    me.interval = _interval(None, body)
    next_tick = aio.time() + first_tick_offset(namespace, name, me.interval)
    log = telemetry.log_for(namespace, name)
    log.info("watching strategy")
    me.wake.set()  # the first pass at once (no metrics read); evaluations then fall at the offset

    async def evaluation(due: float) -> tuple[Optional[StrategySpec], bool, bool]:
        if elided(body):  # read before queueing for a slot: a takeover's loops are read in one round
            with contextlib.suppress(Exception):  # the pass reads again, and reports what fails
                await readable(me, dict(body), namespace, name, at_once=False)
        async with EVALUATION_SLOTS:
            telemetry.EVALUATION_LAG.observe(max(0.0, aio.time() - due))
            return await one_pass(dict(body), True, False)

    async def one_pass(current: dict[str, Any], tick: bool, urgent: bool) -> tuple[Optional[StrategySpec], bool, bool]:
        """(spec, completed, failed) of one pass, with its 409 retries."""
        spec: Optional[StrategySpec] = None
        carry: Optional[Observation] = None
        me.urgency = Urgency(urgent)
        PRIORITY.set(me.urgency)
        CURRENT_SHARD.set(SHARD_OF(namespace, name))

        def observing(still: bool) -> None:
            if not still:
                me.reading = None

        for attempt in range(5):
            try:
                if attempt == 0:
                    fresh = await readable(me, current, namespace, name, at_once=urgent)
                    if fresh is None:
                        return spec, False, False
                    current = fresh
                spec, _ = await reconciler.reconcile(
                    current, memo=me.memo, trigger="event" if not tick else "interval", read_metrics=tick,
                    pod=cache.first(phasegate_pods.get((namespace, f"{name}-0"))),
                    sts=cache.first(phasegate_statefulsets.get((namespace, name))),
                    network_policy=cache.first(phasegate_networkpolicies.get((namespace, name))) is not None,
                    carry=carry, observing=observing,
                )
                return spec, True, False
            except Conflict as exc:
                # Someone wrote status after our read (a breaker condition, a request):
                # decide again on what is there now, with the metrics already read, so a
                # breach seen in this pass is never dropped.
                telemetry.STATUS_CONFLICTS.inc()
                carry = getattr(exc, "observation", None)
                fresh = await reconciler.kube.get_strategy(namespace, name)
                if fresh is None:
                    return spec, False, False
                current = fresh
            except NotLeading as exc:  # leadership lapsed mid-pass: the write was refused
                log.warning("pass abandoned: not leading", error=str(exc))
                return spec, False, False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the loop alive; the next pass compares and repairs
                telemetry.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                log.exception("reconcile failed", error=str(exc))
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                return spec, False, True
        return spec, False, False

    try:
        while not stopped:
            due = on_grid(next_tick) if LEADING(namespace, name) else aio.time() + STANDBY_POLL
            if not me.wake.is_set() and due > aio.time():
                # A timer that sets the wake-up, rather than wait_for (a task per wait, for
                # thousands of loops every interval).
                timer = aio.call_at(due, me.wake.set)
                try:
                    await me.wake.wait()
                finally:
                    timer.cancel()
            me.wake.clear()
            if stopped:
                break
            if not LEADING(namespace, name):  # a standby (or a leader past its renew deadline) never reconciles
                next_tick = min(next_tick, aio.time())  # kept due: the first pass as leader evaluates
                stand_by(me)
                continue
            urgent, me.urgent = me.urgent, False
            tick = not urgent and aio.time() >= next_tick
            # An evaluation may wait for a slot and then for a scrape: an urgent change
            # cancels it until it has read (see strategy_changed). Any other pass runs now.
            task = asyncio.ensure_future(evaluation(next_tick) if tick else one_pass(dict(body), False, urgent))
            me.reading = task if tick else None
            try:
                spec, completed, failed = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    task.cancel()  # the loop itself is being stopped
                    raise
                # Pre-empted by an urgent change: the urgent pass runs now, the evaluation
                # right after it (it stays due).
                me.wake.set()
                continue
            finally:
                me.reading = None
            if tick:
                me.interval = _interval(spec, body)
                next_tick = max(next_tick + me.interval, aio.time()) if completed else aio.time() + 1.0
                if completed:
                    me.last_evaluation = time.monotonic()
                    telemetry.LAST_EVALUATION.labels(namespace, name).set(time.time())
                    telemetry.EVALUATION_INTERVAL.labels(namespace, name).set(me.interval)
            elif failed:
                next_tick = min(next_tick, aio.time() + 1.0)  # a failed write is repaired soon, not next interval
            if urgent and me.urgent_since is not None and not me.urgent:
                waited = time.monotonic() - me.urgent_since
                telemetry.URGENT_LATENCY.observe(waited)
                if waited > URGENT_LATE:
                    log.warning("urgent change acted on late", waited_s=round(waited, 3),
                                watching_for_s=round(time.monotonic() - me.started, 1), completed=completed)
                me.urgent_since = None
    finally:
        LOOPS.pop((namespace, name), None)
        telemetry.forget_strategy(namespace, name)  # a deleted strategy exports nothing, halted or not
        log.info("stopped watching strategy")
