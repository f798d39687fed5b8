"""Field types shared by the spec and status models: money, fractions, durations, time.

Money is Decimal and travels as a string; fractions are Decimal in Python and numbers
in manifests (so CEL rules can compare them); durations are manifest strings; times are
timezone-aware UTC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import UnionType
from typing import Annotated, Any, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

from .durations import DURATION_BOUND_RULE, DURATION_HINT, DURATION_PATTERN, MAX_DURATION_HINT, parse_duration

# Money is checked by this one pattern in both validators: the model (`_money`) and the CRD.
MONEY_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
MONEY_MAX_LENGTH = 40
MONEY_HINT = 'a decimal string such as "1000000" or "2500.50" (digits, an optional point and digits; quoted in YAML)'


def to_decimal(value: Any, *, what: str = "value") -> Decimal:
    """A finite Decimal from a Decimal, int, str or float; floats via their shortest repr,
    so that 0.1 stays 0.1 rather than its binary approximation. The one parser of numbers
    for the operator, the metrics sources and the strategy SDK."""
    if type(value) is Decimal and value.is_finite():  # nearly every call, on every read
        return value
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
    # A manifest carries money as a string that the CRD's pattern accepts, and only that
    # (the apiserver refuses a number, "1e6", "-0", " 100"); Python callers may pass a Decimal.
    if isinstance(value, Decimal):
        out = to_decimal(value)
        if out < 0:
            raise ValueError(f"{value!r} is negative: an amount of money here must be >= 0")
        return out
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is a {type(value).__name__}: an amount of money is {MONEY_HINT}")
    if len(value) > MONEY_MAX_LENGTH or not re.fullmatch(MONEY_PATTERN, value):
        raise ValueError(f"{value!r} is not {MONEY_HINT}, at most {MONEY_MAX_LENGTH} characters")
    return Decimal(value)


def _number(value: Any, what: str) -> Decimal:
    # A manifest number (the CRD's `type: number`): never a boolean. Strings are still
    # accepted from Python callers and test helpers (maxFraction="0.5"); the apiserver
    # refuses them in a manifest, the one known case where the model is the laxer.
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean: write {what}")
    out = to_decimal(value, what=what)
    if not math.isfinite(float(out)):  # the apiserver reads a number as a float64
        raise ValueError(f"{value!r} is too large: write {what}")
    return out


def _fraction(value: Any) -> Decimal:
    out = _number(value, "a fraction such as 0.10 for 10%")
    if not (Decimal(0) <= out <= Decimal(1)):
        raise ValueError(f"{value} is outside [0, 1]: write a fraction such as 0.10 for 10%")
    return out


def _ratio(value: Any) -> Decimal:
    out = _number(value, "a number >= 0")
    if out < 0:
        raise ValueError(f"{value} is negative: write a number >= 0")
    return out


_INT64 = range(-(2**63), 2**63)


def _integer(value: Any, field: str) -> Any:
    # The CRD's `type: integer`: an int64. The apiserver also takes an integral float within
    # that range (3.0 as 3, 1e18), never a string ("3") or a boolean, which pydantic's lax
    # int would accept, nor an int past int64, which Python's int would.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field}: {value!r} is not an integer: write a whole number such as 3, unquoted")
    if isinstance(value, float) and not value.is_integer():
        return value  # pydantic's own error: "fractional part"
    if int(value) not in _INT64:
        raise ValueError(f"{field}: {value!r} is out of range: an integer here is at most {2**63 - 1}")
    return value


def _boolean(value: Any, field: str) -> Any:
    # The CRD's `type: boolean`: true or false, never "yes", "1" or 1 (pydantic's lax bool).
    if not isinstance(value, bool):
        raise ValueError(f"{field}: {value!r} is not a boolean: write true or false, unquoted")
    return value


def _string_map(value: Any, field: str) -> Any:
    # A map of strings (`additionalProperties: {type: string}`): the apiserver drops a
    # null value (`{"a": null}` is `{}`), like a null field.
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


def out_of_range_number(node: Any, path: str = "spec") -> Optional[str]:
    """The path of the first number in a manifest that the apiserver cannot decode (it reads
    every JSON number as an int64 or a float64: 10**400 or infinity fails the whole request,
    even inside a free-form object such as resources), or None."""
    if isinstance(node, dict):
        for k, v in node.items():
            found = out_of_range_number(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = out_of_range_number(v, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(node, (int, float, Decimal)) and not isinstance(node, bool):
        try:
            if not math.isfinite(float(node)):
                return path
        except OverflowError:
            return path
    return None


def json_type_check(annotation: Any) -> Optional[Callable[[Any, str], Any]]:
    """For a field annotated bool, int or dict[str, str] (Optional, Annotated or not): the
    function that returns its value as the apiserver reads it for the CRD's schema, or raises
    ValueError where the apiserver refuses it (`ApiModel` runs it before pydantic)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        else:
            break
    if annotation is bool:
        return _boolean
    if annotation is int:
        return _integer
    if get_origin(annotation) is dict and get_args(annotation) == (str, str):
        return _string_map
    return None


def _duration(value: str) -> str:
    if len(value) > 32:
        raise ValueError(f"a duration is at most 32 characters: write {DURATION_HINT}")
    parse_duration(value)
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time needs a timezone; phasegate stores times in UTC (suffix Z)")
    return value.astimezone(UTC)


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    # fixed-point: str(Decimal("1E+6")) would be "1E+6", which the pattern refuses
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema({"type": "string", "maxLength": MONEY_MAX_LENGTH, "pattern": MONEY_PATTERN}),
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
    BeforeValidator(_ratio),
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
                },
                {
                    "rule": f"!self.matches('{DURATION_PATTERN}') || {DURATION_BOUND_RULE}",
                    "message": f"must be {MAX_DURATION_HINT}",
                },
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
