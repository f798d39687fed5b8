"""Which status changes are written at once, and which may wait.

Every pass decides a new status, but most passes change only bookkeeping that moves on every
read (when the last read happened, its id, the risk series' latest point, counter
baselines, condition messages with the latest figures). Writing those on every tick is one
API write per strategy per interval, a watch event to every watcher and a conflict with any
other writer. So the operator keeps the decided status in memory and writes it

- at once, when anything a person or a restart needs changes: phase, holds, history,
  conditions' status or reason, failure counts, limits unchecked or breaching, gates passing
  or failing, the trading day, a high-water mark risen by more than HWM_TOLERANCE;
- otherwise at the strategy's slot of every PERSIST_EVERY (`cadence_slot`: a hash of its
  name). A cadence counted from each strategy's last write keeps writes that once fell
  together falling together: a new leader passes every strategy at once (on purpose) and,
  counting from there, would write all of them within the same seconds of every
  PERSIST_EVERY, with a halt in those seconds waiting behind them at the apiserver.
  A late streak waits too, its start and end included (what it decides, a pause or a halt,
  is a hold and is written at once): while the operator is behind, nearly every evaluation
  is late, and a write for each, or for each time the lag crosses 2 intervals, would load
  the apiserver further for the same news (measured: at 1,000 strategies a fleet late after
  its set-up wrote status on every evaluation and stayed behind until the lag rule had
  halted it). An operator's own lateness costs at most two writes a strategy, the pause and
  the halt, over the cadence.

What a restart (or a failover) can lose is then the volatile part of the last PERSIST_EVERY,
and all of it errs on the safe side or is recomputed:

- the risk series keeps its last persisted point (value, capital, index): the first read
  after a restart computes one return across the whole gap, so the index is exact;
- the high-water mark can come back lower than it was by at most HWM_TOLERANCE (the
  intermediate peaks of the last PERSIST_EVERY), never higher;
- counter baselines come back older: the first delta spans the gap, so no increase is lost;
- the last evaluation time comes back older: the first evaluation by a new process is not
  judged late (rollout._check_evaluation_lag): its gap is the failover, bounded by the Lease
  and alerted on by itself;
- a late streak comes back as it was less than PERSIST_EVERY ago: shorter by fewer late
  evaluations than fit in PERSIST_EVERY (each more than 2 intervals after the one before),
  so a pause or halt for lateness can come that much later after a restart, as the first
  evaluation after a restart is not judged late at all; or longer, if it ended since, so
  the pause or halt comes sooner, and the first evaluation on time ends it again. Lateness
  is the operator's own health, not the strategy's: `phasegate_evaluation_lag_seconds` and
  its alerts report it from the first late evaluation. Failed reads and unchecked limits
  are counted at once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

from pydantic import BaseModel

from phasegate.api.status import StrategyStatus
from phasegate.policy.timing import spread

# 12 intervals at 10 s: at most 0.1 bookkeeping writes per strategy per interval there, and a
# restart loses two minutes of bookkeeping at most (see above: all of it on the safe side).
PERSIST_EVERY = timedelta(seconds=120)
HWM_TOLERANCE = Decimal("0.001")  # a relative rise of the high-water mark written at once
# A move of the risk index this large (up or down) is written at once: not for a restart (the
# index is recomputed exactly from the last written point) but for the person watching
# `phasegate status` while the book moves.
INDEX_MOVE = Decimal("0.005")


# What a status compares as, volatile fields blanked: a tuple of its fields' values, nested
# the same way. Comparing it needs no copy of the models (copies of the status, its risk book,
# metrics and every condition were a tenth of a pass).
Stable = tuple[Any, ...]


# Per model class: a getter of all its fields at once (in C) and each field's position.
_FIELDS: dict[type, tuple[Callable[[Any], tuple[Any, ...]], dict[str, int]]] = {}


def _blanked(model: BaseModel, blank: dict[str, Any]) -> Stable:
    """Every field of `model` in order, those named in `blank` replaced by the value given
    (a name that is not a field of the model is a KeyError)."""
    known = _FIELDS.get(type(model))
    if known is None:
        names = tuple(type(model).model_fields)
        getter = operator.attrgetter(*names)
        known = _FIELDS[type(model)] = ((lambda m: (getter(m),)) if len(names) == 1 else getter,
                                        {n: i for i, n in enumerate(names)})
    get, position = known
    values = list(get(model))
    for name, value in blank.items():
        values[position[name]] = value
    return tuple(values)


def stable(status: StrategyStatus) -> Stable:
    """The status with the fields that move on every read blanked out."""
    risk = status.risk
    book = risk.book
    book_form = None if book is None else _blanked(book, {
        "index": Decimal(1), "high_water_mark": Decimal(1), "last_value": None, "last_capital": None})
    risk_form = _blanked(risk, {
        "book": book_form, "last_sample_at": None, "counters": {}, "rate_since": None, "rate_counters": {},
        "window_totals": {}, "window_counters": {}, "window_started_at": None,
    })
    metrics = status.metrics
    read_at = metrics.phase_pod_read_at
    if read_at is not None and status.phase_started_at is not None and read_at >= status.phase_started_at:
        read_at = status.phase_started_at  # "read in this phase" matters, not when exactly
    metrics_form = _blanked(metrics, {
        "last_success_at": None, "last_attempt_at": None, "last_read_id": "", "last_evaluated_at": None,
        "phase_pod_read_at": read_at,
        # Lateness waits: what it decides (a pause, a halt) is a hold, written at once. A failed
        # read changes consecutive_errors, written at once with its own message.
        "late_streak": 0,
        "last_error": "" if metrics.late_streak and not metrics.consecutive_errors else metrics.last_error,
    })
    return _blanked(status, {
        "clock": None,
        "risk": risk_form,
        "metrics": metrics_form,
        "conditions": tuple(_blanked(c, {"message": ""}) for c in status.conditions),
        "gates": tuple(_blanked(g, {"value": None, "message": ""}) for g in status.gates),
        "breakers": {k: _blanked(b, {"value": None}) for k, b in status.breakers.items()},
        "message": "",
    })


def _hwm(status: StrategyStatus) -> Optional[Decimal]:
    return status.risk.book.high_water_mark if status.risk.book is not None else None


def significant(persisted: StrategyStatus, new: StrategyStatus, persisted_stable: Optional[Stable] = None) -> bool:
    """Whether `new` differs from what is written in something that may not wait.
    `persisted_stable` is stable(persisted) when the caller kept it (it changes per write, not per pass)."""
    if (persisted_stable if persisted_stable is not None else stable(persisted)) != stable(new):
        return True
    old_hwm, new_hwm = _hwm(persisted), _hwm(new)
    if old_hwm is not None and new_hwm is not None and new_hwm > old_hwm * (1 + HWM_TOLERANCE):
        return True
    old_book, new_book = persisted.risk.book, new.risk.book
    return old_book is not None and new_book is not None and abs(new_book.index - old_book.index) > old_book.index * INDEX_MOVE


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cadence_slot(namespace: str, name: str) -> timedelta:
    """Where in every PERSIST_EVERY a strategy's bookkeeping is written: spread by its name."""
    return PERSIST_EVERY * spread(namespace, name)


def _slots_by(at: datetime, slot: timedelta) -> int:
    return (at - _EPOCH - slot) // PERSIST_EVERY


def persist_due(persisted: Optional[StrategyStatus], new: StrategyStatus, now: datetime,
                persisted_at: Optional[datetime], persisted_stable: Optional[Stable] = None,
                slot: timedelta = timedelta(0)) -> bool:
    """Whether to write `new` now, given what is written (`persisted`, as of `persisted_at`).
    Bookkeeping alone is written once the strategy's `slot` of a PERSIST_EVERY has passed
    since `persisted_at`: never more than PERSIST_EVERY after it."""
    if persisted is None or persisted_at is None:
        return True
    if new == persisted:
        return False
    if significant(persisted, new, persisted_stable):
        return True
    return now < persisted_at or _slots_by(now, slot) > _slots_by(persisted_at, slot)


__all__ = ["HWM_TOLERANCE", "INDEX_MOVE", "PERSIST_EVERY", "Stable", "cadence_slot", "persist_due", "significant", "stable"]
