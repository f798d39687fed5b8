"""The operator's side of the dead-man's switch: what a scrape carries, and who may send it.

The controller's `read_metrics` is driven with a pod object and a fence of its own, as the
leader election would give it (the headers on the wire: tests/unit/metrics/test_supervision_headers.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from phasegate.api import StrategySpec, StrategyStatus
from phasegate.controller.cache import PodView
from phasegate.controller.leader import NotLeading
from phasegate.controller.observe import read_metrics
from phasegate.manifests import Owner
from phasegate.metrics import ScrapeTarget

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
OWNER = Owner(name="momentum", namespace="trading", uid="1234")
BASE = {"capital": "1000000", "account": "DU1", "maxFraction": 0.1, "template": {"image": "x"},
        "analysis": {"interval": "1s"}}


def spec(supervision: Any = None) -> StrategySpec:
    return StrategySpec.model_validate({**BASE, **({"supervision": supervision} if supervision is not None else {})})


class Recorder:
    def __init__(self) -> None:
        self.targets: list[ScrapeTarget] = []

    async def read(self, target: ScrapeTarget) -> Any:
        self.targets.append(target)
        return SimpleNamespace()


class Fence:
    def __init__(self, leading: bool) -> None:
        self.leading = leading
        self.calls: list[tuple[str, str]] = []

    def fence(self, op: str, target: str) -> None:
        self.calls.append((op, target))
        if not self.leading:
            raise NotLeading(f"{op} {target}")


def ready_pod() -> PodView:
    return PodView(name="momentum-0", ip="10.0.0.7", ready=True)


def read(s: StrategySpec, kube: Fence, source: Recorder) -> dict[str, Any]:
    status = StrategyStatus(phase="paper", phase_index=1, phase_started_at=NOW - timedelta(hours=1))
    return asyncio.run(read_metrics(kube, source, OWNER, s, status, NOW, ready_pod(), None, "phasegate-7d9f"))  # type: ignore[arg-type]


def test_the_leader_vouches_for_the_pod_until_now_plus_the_timeout():
    kube, source = Fence(leading=True), Recorder()
    read(spec({"timeout": "6s"}), kube, source)
    [t] = source.targets
    assert t.supervisor == "phasegate-7d9f" and t.supervision_deadline == NOW + timedelta(seconds=6)
    assert kube.calls == [("supervise", "Pod trading/momentum-0")]


def test_a_fenced_operator_never_sends_a_supervised_scrape():
    kube, source = Fence(leading=False), Recorder()
    with pytest.raises(NotLeading):
        read(spec({"timeout": "6s"}), kube, source)
    assert source.targets == []


@pytest.mark.parametrize("supervision", [None, {}, {"timeout": None}])
def test_without_supervision_the_scrape_is_as_it_was(supervision):
    kube, source = Fence(leading=False), Recorder()  # not fenced either: a plain read is a read
    read(spec(supervision), kube, source)
    [t] = source.targets
    assert t.supervision_headers() == {} and kube.calls == []
