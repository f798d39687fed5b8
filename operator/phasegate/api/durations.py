"""Durations as users write them in manifests: `30s`, `15m`, `12h`, `7d`, `2w`, `1h30m`."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w))+$"
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_UNIT = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
DURATION_HINT = "a duration such as 500ms, 30s, 15m, 12h, 7d or 2w (no spaces)"


def parse_duration(text: str) -> timedelta:
    """Parse `7d`, `1h30m`... into a timedelta; raise ValueError naming the accepted form."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not {DURATION_HINT}")
    return sum((int(n) * _UNIT[u] for n, u in _PART.findall(text)), timedelta())


def format_duration(delta: timedelta) -> str:
    """The shortest manifest spelling of a timedelta (whole milliseconds)."""
    ms = int(round(delta.total_seconds() * 1000))
    if ms == 0:
        return "0s"
    out = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = int(_UNIT[unit].total_seconds() * 1000)
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)
