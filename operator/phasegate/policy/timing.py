"""Timing rules shared by the controller and the decisions."""

from __future__ import annotations

from datetime import timedelta

from phasegate.api.spec import StrategySpec


def startup_grace(spec: StrategySpec) -> timedelta:
    """How long a new phase's pod may take to come up (a StatefulSet roll stops the old pod
    before it starts the new one) before a missing or old pod counts as a failed read."""
    return max(timedelta(seconds=30), 3 * spec.evaluation_interval, spec.grace_period / 3)
