"""Which halts send their scale-down together with the status write: only those whose cause
the apiserver already holds (a pass that read no metrics). A breach read by this pass exists
nowhere else, so its halt is written before it is acted on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from phasegate.api import StrategySpec, StrategyStatus
from phasegate.api.observations import ChildrenObservation
from phasegate.api.status import Transition
from phasegate.controller.reconcile import Owner, Reconciler
from phasegate.policy.desired import Desired

import plans


class Kube:
    def __init__(self) -> None:
        self.scaled: list[tuple[str, str, int]] = []

    async def scale_statefulset(self, ns: str, name: str, replicas: int) -> bool:
        self.scaled.append((ns, name, replicas))
        return True


def decision(action: Transition, replicas: int = 0) -> Any:
    return SimpleNamespace(desired=Desired(replicas=replicas, key="k", backtest_job=False, flatten_job=None),
                           history=[SimpleNamespace(action=action)])


RUNNING = SimpleNamespace(children=ChildrenObservation(statefulset=True, replicas=1, desired_key="k", pod=True))


async def early(d: Any, obs: Any, read_metrics: bool) -> list[tuple[str, str, int]]:
    kube = Kube()
    r = Reconciler.__new__(Reconciler)
    r.kube = kube  # type: ignore[assignment]
    fut = r._stop_with_the_write("ns", "s", d, obs, read_metrics)
    if fut is not None:
        await fut
    return kube.scaled


@pytest.mark.parametrize("action", [Transition.HALT, Transition.EMERGENCY])
def test_a_halt_from_a_written_cause_scales_down_with_the_write(action: Transition) -> None:
    assert asyncio.run(early(decision(action), RUNNING, read_metrics=False)) == [("ns", "s", 0)]


@pytest.mark.parametrize("d, obs, read_metrics", [
    (decision(Transition.HALT), RUNNING, True),                      # a breach this pass read: written first
    (decision(Transition.PAUSE, replicas=1), RUNNING, False),        # not a stop
    (decision(Transition.HALT), SimpleNamespace(children=ChildrenObservation(statefulset=True, replicas=0)), False),
    (decision(Transition.HALT), SimpleNamespace(children=None), False),  # no StatefulSet to scale
])
def test_anything_else_is_written_first(d: Any, obs: Any, read_metrics: bool) -> None:
    assert asyncio.run(early(d, obs, read_metrics)) == []


class Applying(Kube):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []

    async def apply(self, body: dict[str, Any]) -> None:
        self.applied.append(body["kind"])


@pytest.mark.parametrize("stopped_at, started", [(None, True), ("41", True), ("42", True), ("43", False)])
def test_a_pass_that_read_before_the_sentinel_stopped_the_pod_starts_nothing(stopped_at: Any, started: bool) -> None:
    """The sentinel stopped the pod on a condition written after this pass's read (at 42): the
    pass would start it again from its older body; the next pass decides from the newer one."""
    kube = Applying()
    r = Reconciler.__new__(Reconciler)
    r.kube = kube  # type: ignore[assignment]
    r.sentinel_stopped = lambda ns, name: stopped_at
    spec = StrategySpec.model_validate(plans.strategy("s")["spec"])
    status = StrategyStatus(phase=spec.phases[0].name)
    stopped = SimpleNamespace(children=ChildrenObservation(statefulset=True, replicas=0, desired_key="k", pod=False))
    asyncio.run(r._actuate(Owner(name="s", namespace="ns", uid="u"), spec, status, decision(Transition.ADVANCE, replicas=1),
                           stopped, network_policy=False, spec_changed=False, decided_at="42"))  # type: ignore[arg-type]
    assert bool(kube.applied) is started and kube.scaled == []
