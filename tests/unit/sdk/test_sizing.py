"""Position sizing: quarter Kelly, 5% cap, volatility scaling to 2% daily, within cash, never negative."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from phasegate.sdk.sizing import PositionSizer, full_kelly

sizer = PositionSizer()
rates = st.decimals(min_value=Decimal(0), max_value=Decimal(1), places=4)
ratios = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(20), places=3)
vols = st.decimals(min_value=Decimal(0), max_value=Decimal(1), places=5)
money = st.decimals(min_value=Decimal(0), max_value=Decimal(10**9), places=2)


def test_defaults_are_the_guides():
    assert sizer.kelly_fraction == Decimal("0.25")
    assert sizer.max_position_fraction == Decimal("0.05")
    assert sizer.target_daily_volatility == Decimal("0.02")


def test_quarter_kelly_below_the_cap():
    # f* = 0.5 - 0.5/1.2 = 0.0833..., a quarter of it 0.0208...
    f = sizer.fraction(Decimal("0.5"), Decimal("1.2"), Decimal("0.01"))
    assert f == (Decimal("0.5") - Decimal("0.5") / Decimal("1.2")) * Decimal("0.25")


def test_the_cap_binds_a_large_edge():
    assert full_kelly(Decimal("0.6"), Decimal(2)) == Decimal("0.4")
    assert sizer.fraction(Decimal("0.6"), Decimal(2), Decimal("0.01")) == Decimal("0.05")


def test_volatility_above_target_scales_down_proportionally():
    assert sizer.fraction(Decimal("0.6"), Decimal(2), Decimal("0.04")) == Decimal("0.025")


def test_no_edge_means_no_position():
    assert sizer.fraction(Decimal("0.4"), Decimal(1), Decimal("0.01")) == 0
    assert sizer.shares(Decimal(10), Decimal(10**6), Decimal(10**6), Decimal("0.4"), Decimal(1), Decimal(0)) == 0


def test_cash_binds_before_the_cap():
    value = sizer.position_value(Decimal(10**6), Decimal(1000), Decimal("0.6"), Decimal(2), Decimal("0.01"))
    assert value == Decimal(1000)


@pytest.mark.parametrize("rate, ratio", [(Decimal("1.1"), Decimal(1)), (Decimal("-0.1"), Decimal(1)),
                                         (Decimal("0.5"), Decimal(0))])
def test_nonsense_inputs_are_refused(rate, ratio):
    with pytest.raises(ValueError):
        sizer.fraction(rate, ratio, Decimal("0.01"))


@given(rate=rates, ratio=ratios, vol=vols,
       cap=st.decimals(min_value=Decimal(0), max_value=Decimal("0.5"), places=3))
def test_fraction_is_within_zero_and_the_cap(rate, ratio, vol, cap):
    f = PositionSizer(max_position_fraction=cap).fraction(rate, ratio, vol)
    assert Decimal(0) <= f <= cap


@given(rate=rates, ratio=ratios, vol=vols, capital=money, cash=st.decimals(min_value=Decimal(-10**6),
       max_value=Decimal(10**9), places=2))
def test_position_value_is_never_negative_nor_above_cap_or_cash(rate, ratio, vol, capital, cash):
    value = sizer.position_value(capital, cash, rate, ratio, vol)
    assert value >= 0
    assert value <= capital * sizer.max_position_fraction
    assert value <= max(cash, Decimal(0))


@given(rate=rates, ratio=ratios, vol=vols, capital=money, cash=money,
       price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10**5), places=2))
def test_whole_shares_never_cost_more_than_the_sized_value(rate, ratio, vol, capital, cash, price):
    shares = sizer.shares(price, capital, cash, rate, ratio, vol)
    assert shares >= 0 and shares == shares.to_integral_value()
    assert shares * price <= sizer.position_value(capital, cash, rate, ratio, vol)


@given(rate=rates, ratio=ratios, low=vols, high=vols)
def test_more_volatility_never_means_a_bigger_position(rate, ratio, low, high):
    assume(low <= high)
    assert sizer.fraction(rate, ratio, high) <= sizer.fraction(rate, ratio, low)
