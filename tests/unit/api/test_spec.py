"""Spec parsing: defaults, Decimal money, durations, and errors that name the field."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from phasegate.api import StrategySpec, format_duration, parse_duration

BASE = {"capital": "1000000", "account": "DU1", "maxFraction": 0.1, "template": {"image": "x"}}


def test_defaults_are_the_deployment_guides_protocol():
    s = StrategySpec.model_validate(BASE)
    assert [p.name for p in s.phases] == ["backtest", "paper", "shadow", "live-10", "live-35", "live-65", "live-100"]
    assert s.phases[1].min_duration_delta == timedelta(days=14)
    assert s.phases[1].effective_gates.min_fill_rate == Decimal("0.95")
    assert s.risk_limits.max_drawdown.threshold == Decimal("0.10")
    assert s.capital == Decimal("1000000") and isinstance(s.capital, Decimal)


def test_fraction_parses_exactly():
    s = StrategySpec.model_validate({**BASE, "maxFraction": 0.35})
    assert s.max_fraction == Decimal("0.35")


def test_capital_for_each_mode():
    s = StrategySpec.model_validate({**BASE, "paperCapital": "50000"})
    paper, live35 = s.phases[1], s.phases[4]
    assert s.capital_for(paper) == Decimal("50000")
    assert s.capital_for(live35) == Decimal("350000.00")


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"maxFraction": 1.5}, "maxFraction"),
        ({"capital": "a lot"}, "capital"),
        ({"phases": [{"name": "paper", "mode": "paper", "minDuration": "7 days"}]}, "minDuration"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_errors_name_the_field(patch, field):
    with pytest.raises(ValidationError) as err:
        StrategySpec.model_validate({**BASE, **patch})
    assert field in str(err.value)


@pytest.mark.parametrize(
    "phases, words",
    [
        ([{"name": "a", "mode": "paper"}, {"name": "a", "mode": "shadow"}], "duplicate"),
        ([{"name": "l1", "mode": "live", "fraction": 0.5}, {"name": "l2", "mode": "live", "fraction": 0.1}], "must not decrease"),
        ([{"name": "p", "mode": "paper", "fraction": 0.1}], "fraction"),
    ],
)
def test_ladder_rules(phases, words):
    with pytest.raises(ValidationError) as err:
        StrategySpec.model_validate({**BASE, "phases": phases})
    assert words in str(err.value)


def test_live_phase_needs_a_loss_limit():
    with pytest.raises(ValidationError) as err:
        StrategySpec.model_validate({**BASE, "riskLimits": {}})
    assert "circuit breakers" in str(err.value) or "maxDrawdown" in str(err.value)


def test_ceiling_index():
    s = StrategySpec.model_validate({**BASE, "maxFraction": 0.5})
    assert s.phases[s.ceiling_index()].name == "live-35"
    s = StrategySpec.model_validate({**BASE, "maxFraction": 0})
    assert s.phases[s.ceiling_index()].name == "shadow"


@pytest.mark.parametrize("text, delta", [
    ("30s", timedelta(seconds=30)), ("7d", timedelta(days=7)), ("1h30m", timedelta(minutes=90)),
    ("500ms", timedelta(milliseconds=500)), ("2w", timedelta(weeks=2)),
])
def test_durations(text, delta):
    assert parse_duration(text) == delta


@pytest.mark.parametrize("bad", ["7 days", "", "7", "d7", "1.5h", "-3s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration such as"):
        parse_duration(bad)


@given(st.integers(0, 10**10))
def test_duration_round_trip(ms):
    d = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(d)) == d
