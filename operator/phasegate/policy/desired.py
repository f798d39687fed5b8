"""What the children must be, from the decided status; and whether they are.

The controller compares this with what it observes on every pass and repairs any
difference, including one its own failed write left behind: nothing in memory decides
whether to apply.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Optional, Protocol

from phasegate.api.observations import ChildrenObservation
from phasegate.api.spec import Mode, StrategySpec
from phasegate.api.status import STOPPING_HOLDS, BacktestResult, Hold, HoldKind


class Decided(Protocol):
    """What the children are made from: a StrategyStatus, or the decision's draft of one."""

    @property
    def phase(self) -> str: ...
    @property
    def capital_fraction(self) -> Decimal: ...
    @property
    def capital(self) -> Optional[Decimal]: ...
    @property
    def holds(self) -> Sequence[Hold]: ...
    @property
    def backtest(self) -> Optional[BacktestResult]: ...


@dataclass(frozen=True)
class Desired:
    replicas: int  # the strategy pod: 1 runs it, 0 stops it
    key: str  # digest of everything the pod is built from: a change rolls it
    backtest_job: bool
    flatten_job: Optional[str]  # emergency id of the flatten Job that must exist


def pod_runs(spec: StrategySpec, status: Decided) -> bool:
    """Never while a halt, an emergency or a failure holds it, nor in a backtest phase."""
    if not status.phase or any(h.kind in STOPPING_HOLDS or h.kind is HoldKind.FAILED for h in status.holds):
        return False
    phase = spec.phase_named(status.phase)
    return phase is not None and phase.mode is not Mode.BACKTEST


# desired_key by (spec object, rung): the same for every pass at a rung, and a tenth of a pass.
# Keyed by the spec's identity and checked against a weak reference to the spec, so that an
# entry neither keeps a replaced spec alive nor answers for another object given its id.
_KEYS: dict[tuple[int, str, str, str], tuple[weakref.ref[StrategySpec], str]] = {}
_KEYS_MAX = 65536


def desired_key(spec: StrategySpec, status: Decided) -> str:
    """Digest of everything the strategy pod is built from at this rung: a change rolls it."""
    fraction = str(status.capital_fraction)
    capital = str(status.capital if status.capital is not None else Decimal(0))
    cache_key = (id(spec), status.phase, fraction, capital)
    hit = _KEYS.get(cache_key)
    if hit is not None and hit[0]() is spec:
        return hit[1]
    key = _digest(spec, status.phase, fraction, capital)
    if len(_KEYS) >= _KEYS_MAX:
        _KEYS.clear()
    _KEYS[cache_key] = (weakref.ref(spec), key)
    return key


def _digest(spec: StrategySpec, phase_name: str, fraction: str, capital: str) -> str:
    phase = spec.phase_named(phase_name)
    body = {
        "phase": phase_name,
        "mode": phase.mode.value if phase else "",
        "fraction": fraction,
        "capital": capital,
        "account": spec.account,
        "template": spec.template.wire(),
        "grace": spec.termination_grace_period,
    }
    if spec.supervision is not None and spec.supervision.timeout is not None:
        # Only when set: the digest of an unsupervised strategy stays what it was (no roll).
        body["supervision"] = spec.supervision.timeout
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def desired_for(spec: StrategySpec, status: Decided, flatten: Optional[str]) -> Desired:
    phase = spec.phase_named(status.phase)
    in_backtest = phase is not None and phase.mode is Mode.BACKTEST
    failed = any(h.kind is HoldKind.FAILED for h in status.holds)
    stopped = any(h.kind in STOPPING_HOLDS for h in status.holds)
    done = status.backtest is not None and status.backtest.outcome in ("Passed", "Failed")
    return Desired(
        replicas=1 if pod_runs(spec, status) else 0,
        key=desired_key(spec, status),
        backtest_job=in_backtest and not failed and not stopped and not done,
        flatten_job=flatten,
    )


def mismatch(desired: Desired, seen: Optional[ChildrenObservation]) -> Optional[str]:
    """Why the cluster does not match the decision, or None when it does."""
    if seen is None:
        return "the StatefulSet was not observed"
    if not seen.statefulset:
        return "the StatefulSet does not exist"
    if seen.replicas != desired.replicas:
        return f"the StatefulSet has replicas {seen.replicas}, the decision says {desired.replicas}"
    if desired.replicas == 0 and seen.pod:
        return "the strategy pod is still there (stopping)"
    if desired.replicas == 1 and seen.desired_key != desired.key:
        return "the StatefulSet's pod template is not the decided one (rolling)"
    return None





def needs_apply(desired: Desired, seen: Optional[ChildrenObservation]) -> bool:
    """Whether the StatefulSet must be written (a pod still terminating needs no write)."""
    if seen is None or not seen.statefulset or seen.replicas != desired.replicas:
        return True
    return desired.replicas == 1 and seen.desired_key != desired.key
__all__ = ["Decided", "Desired", "desired_for", "desired_key", "mismatch", "needs_apply", "pod_runs"]
