"""Decimal helpers: money never goes through float on its way in or out."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Any

from phasegate.api.types import to_decimal

ZERO = Decimal(0)
ONE = Decimal(1)
BPS = Decimal(10_000)
SHARE = Decimal(1)


def D(value: Any) -> Decimal:
    """A finite Decimal from a str, int or Decimal; floats via repr so 0.1 stays 0.1."""
    return to_decimal(value, what="amount")


def whole_shares(quantity: Decimal) -> Decimal:
    """Round a quantity down to whole shares: sizing must never round up past a cap."""
    if quantity <= 0:
        return ZERO
    return quantity.to_integral_value(rounding=ROUND_FLOOR)


def money_json(mapping: dict[str, Decimal]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(mapping.items())}


def money_from_json(mapping: dict[str, Any] | None) -> dict[str, Decimal]:
    return {k: D(v) for k, v in (mapping or {}).items()}
