"""Field types shared by the spec and status models: money, fractions, durations, time.

Money is Decimal and travels as a string; fractions are Decimal in Python and numbers
in manifests (so CEL rules can compare them); durations are manifest strings; times are
timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

from .durations import DURATION_HINT, DURATION_PATTERN, parse_duration

MONEY_PATTERN = r"^[0-9]+(\.[0-9]+)?$"


def to_decimal(value: Any, *, what: str = "value") -> Decimal:
    """A finite Decimal from a Decimal, int, str or float; floats via their shortest repr,
    so that 0.1 stays 0.1 rather than its binary approximation. The one parser of numbers
    for the operator, the metrics sources and the strategy SDK."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a number, got a boolean")
    if isinstance(value, float):
        value = repr(value)
    try:
        out = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{what}: {value!r} is not a decimal number") from exc
    if not out.is_finite():
        raise ValueError(f"{what}: {value!r} is not a finite number")
    return out


def _money(value: Any) -> Decimal:
    out = to_decimal(value)
    if out < 0:
        raise ValueError(f"{value!r} is negative: an amount of money here must be >= 0")
    return out


def _fraction(value: Any) -> Decimal:
    out = to_decimal(value)
    if not (Decimal(0) <= out <= Decimal(1)):
        raise ValueError(f"{value} is outside [0, 1]: write a fraction such as 0.10 for 10%")
    return out


def _duration(value: str) -> str:
    if len(value) > 32:
        raise ValueError("a duration is at most 32 characters")
    parse_duration(value)
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time needs a timezone; phasegate stores times in UTC (suffix Z)")
    return value.astimezone(timezone.utc)


def _format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    PlainSerializer(lambda d: str(d), return_type=str),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN}),
]
"""An amount of money: a decimal string such as "1000000" or "2500.50"."""

Fraction = Annotated[
    Decimal,
    BeforeValidator(_fraction),
    PlainSerializer(lambda d: float(d), return_type=float),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]
"""A fraction in [0, 1], a number in manifests (0.10 is 10%)."""

Ratio = Annotated[
    Decimal,
    BeforeValidator(to_decimal),
    PlainSerializer(lambda d: float(d), return_type=float),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
"""A non-negative threshold that may exceed 1 (a rate, a Sharpe ratio, basis points)."""

DecimalString = Annotated[
    Decimal,
    BeforeValidator(to_decimal),
    PlainSerializer(lambda d: str(d), return_type=str),
    WithJsonSchema({"type": "string"}),
]
"""A Decimal stored in status as a string, so no precision is lost on the way."""

Duration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [
                {
                    "rule": f"self.matches('{DURATION_PATTERN}')",
                    "message": f"must be {DURATION_HINT}",
                }
            ],
        }
    ),
]
"""A duration as written in manifests: `30s`, `7d`, `1h30m`."""

UtcTime = Annotated[
    datetime,
    AfterValidator(_utc),
    PlainSerializer(_format_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def duration(text: str) -> timedelta:
    return parse_duration(text)
