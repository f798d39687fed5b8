"""Durations as users write them in manifests: `30s`, `15m`, `12h`, `7d`, `2w`, `1h30m`.

Bounded, in the model and in the CRD alike: at most 6 digits per number (the pattern) and
at most MAX_DURATION in total (parse_duration here, DURATION_BOUND_RULE in the CRD), so that
no accepted duration overflows timedelta or datetime arithmetic in the operator.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

DURATION_PATTERN = r"^([0-9]{1,6}(ms|s|m|h|d|w))+$"
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w)")
_UNIT = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
DURATION_HINT = "a duration such as 500ms, 30s, 15m, 12h, 7d or 2w (no spaces, at most 6 digits per number)"

MAX_DURATION = timedelta(days=3650)
MAX_DURATION_TEXT = "3650d"
MAX_DURATION_HINT = f"at most {MAX_DURATION_TEXT} (10 years): write a shorter duration, such as 7d or 52w"

# The same bound as a CEL rule on a string field: the parts' sum in milliseconds, each part
# found with the regex of _PART (RE2 and Python agree on it: `ms` is tried before `m`).
_MS = {u: int(d / timedelta(milliseconds=1)) for u, d in _UNIT.items()}


def duration_ms_cel(field: str) -> str:
    """A CEL expression for the duration string `field` (e.g. `self.analysis.interval`) in
    milliseconds: what a rule comparing two durations needs. Meaningful only for a string that
    matches DURATION_PATTERN, so guard it with `!field.matches(...) || ...`."""
    return (
        f"{field}.findAll('[0-9]+(ms|s|m|h|d|w)').map(p, int(p.find('^[0-9]+')) * "
        f"(p.endsWith('ms') ? {_MS['ms']} : p.endsWith('s') ? {_MS['s']} : p.endsWith('m') ? {_MS['m']} : "
        f"p.endsWith('h') ? {_MS['h']} : p.endsWith('d') ? {_MS['d']} : {_MS['w']})).sum()"
    )


DURATION_BOUND_RULE = f"{duration_ms_cel('self')} <= {int(MAX_DURATION / timedelta(milliseconds=1))}"


def parse_duration(text: str) -> timedelta:
    """Parse `7d`, `1h30m`... into a timedelta; raise ValueError naming the accepted form."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not {DURATION_HINT}")
    return _parse(text)


@functools.lru_cache(maxsize=4096)  # a spec's few durations are read on every pass
def _parse(text: str) -> timedelta:
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not {DURATION_HINT}")
    total = sum((int(n) * _UNIT[u] for n, u in _PART.findall(text)), timedelta())
    if total > MAX_DURATION:
        raise ValueError(f"{text!r} must be {MAX_DURATION_HINT}")
    return total


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
