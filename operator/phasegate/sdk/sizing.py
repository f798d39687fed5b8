"""Position sizing as the going-live guide does it.

Fractional Kelly (a quarter of full Kelly, from win rate and win/loss ratio), capped at
5% of capital per position, scaled down when the instrument is more volatile than a 2%
daily target, never above the cash available and never negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .money import ONE, ZERO, whole_shares


def full_kelly(win_rate: Decimal, win_loss_ratio: Decimal) -> Decimal:
    """f* = p - (1 - p) / b; may be negative (an edge against us)."""
    if not (ZERO <= win_rate <= ONE):
        raise ValueError(f"win rate {win_rate} must be within [0, 1]")
    if win_loss_ratio <= 0:
        raise ValueError(f"win/loss ratio {win_loss_ratio} must be > 0")
    return win_rate - (ONE - win_rate) / win_loss_ratio


@dataclass(frozen=True)
class PositionSizer:
    kelly_fraction: Decimal = Decimal("0.25")
    max_position_fraction: Decimal = Decimal("0.05")
    target_daily_volatility: Decimal = Decimal("0.02")

    def fraction(self, win_rate: Decimal, win_loss_ratio: Decimal, daily_volatility: Decimal) -> Decimal:
        """Fraction of capital for one position, in [0, max_position_fraction]."""
        if daily_volatility < 0:
            raise ValueError(f"volatility {daily_volatility} must be >= 0")
        f = max(full_kelly(win_rate, win_loss_ratio) * self.kelly_fraction, ZERO)
        f = min(f, self.max_position_fraction)
        if daily_volatility > self.target_daily_volatility:
            # Only ever scaled down: a quiet instrument does not earn more than the cap.
            f = f * self.target_daily_volatility / daily_volatility
        return f

    def position_value(
        self,
        capital: Decimal,
        available_cash: Decimal,
        win_rate: Decimal,
        win_loss_ratio: Decimal,
        daily_volatility: Decimal,
    ) -> Decimal:
        if capital <= 0:
            return ZERO
        value = capital * self.fraction(win_rate, win_loss_ratio, daily_volatility)
        return max(min(value, available_cash), ZERO)

    def shares(
        self,
        price: Decimal,
        capital: Decimal,
        available_cash: Decimal,
        win_rate: Decimal,
        win_loss_ratio: Decimal,
        daily_volatility: Decimal,
    ) -> Decimal:
        """Whole shares, rounded down, so that price x shares stays within every cap."""
        if price <= 0:
            raise ValueError(f"price {price} must be > 0")
        value = self.position_value(capital, available_cash, win_rate, win_loss_ratio, daily_volatility)
        return whole_shares(value / price)
