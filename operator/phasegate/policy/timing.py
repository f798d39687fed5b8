"""Timing rules shared by the controller and the decisions."""

from __future__ import annotations

import zlib
from datetime import timedelta

from phasegate.api.spec import StrategySpec


def spread(namespace: str, name: str) -> float:
    """A strategy's fixed place in [0, 1), from its name: where its evaluations fall in their
    interval and its bookkeeping in its cadence, so that thousands do not fall together."""
    return (zlib.crc32(f"{namespace}/{name}".encode()) % 10_000) / 10_000


def startup_grace(spec: StrategySpec) -> timedelta:
    """How long a new phase's pod may take to come up (a StatefulSet roll stops the old pod
    before it starts the new one) before a missing or old pod counts as a failed read."""
    return max(timedelta(seconds=30), 3 * spec.evaluation_interval, spec.grace_period / 3)


def roll_grace(spec: StrategySpec) -> timedelta:
    """How long a StatefulSet roll that is still in progress (its controller has pods on an
    older revision) counts as a start-up. A busy cluster can take minutes to replace a pod;
    a roll stalled longer than this is reported as what it is: no readable pod."""
    return max(timedelta(minutes=5), 4 * startup_grace(spec))
