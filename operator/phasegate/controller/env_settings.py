"""Operator settings read from the environment: a bad value stops the start with a message
that names the variable, the range and the default."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Optional, TypeVar

N = TypeVar("N", int, float)


def bounded(name: str, raw: Optional[str], *, default: N, low: N, high: N, parse: Callable[[str], N], what: str) -> N:
    """The number `name` holds (or `raw`, when given), from `low` (off) to `high`; `default`
    when it is unset or empty. `what` says what it counts, for the message."""
    raw = (raw if raw is not None else os.environ.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and math.isnan(value)) or not low <= value <= high:
        raise SystemExit(f"{name}={raw!r}: set it to {what} from {low:g} (off) to {high:g}, or leave it unset ({default:g})")
    return value


__all__ = ["bounded"]
