"""Decimal helpers: money never goes through float on its way in or out."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

ZERO = Decimal(0)
ONE = Decimal(1)
BPS = Decimal(10_000)
SHARE = Decimal(1)


def D(value: Any) -> Decimal:
    """A finite Decimal from a str, int or Decimal; floats via repr so 0.1 stays 0.1."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount")
    if isinstance(value, float):
        value = repr(value)
    try:
        out = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{value!r} is not a decimal number") from exc
    if not out.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return out


def whole_shares(quantity: Decimal) -> Decimal:
    """Round a quantity down to whole shares: sizing must never round up past a cap."""
    if quantity <= 0:
        return ZERO
    return quantity.to_integral_value(rounding=ROUND_FLOOR)


def money_json(mapping: dict[str, Decimal]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(mapping.items())}


def money_from_json(mapping: dict[str, Any] | None) -> dict[str, Decimal]:
    return {k: D(v) for k, v in (mapping or {}).items()}
