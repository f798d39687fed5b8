"""Keeping Python's garbage collector from stopping the event loop at the wrong moment.

A full (generation 2) collection scans every tracked object: the strategies' bodies as kopf
holds them and their decided and written status are hundreds of thousands of objects (2,000
strategies' worth, 550,000 objects, took 290 ms to scan on the development host), and the
collector runs such a collection every minute or so under a steady churn: a halt that arrives
then waits for it. So the objects that have lived through a freeze period are moved
out of the collector's sight (`gc.freeze()`, which is a list splice, not a scan) and the
collections in between look only at what is new. What the freeze hides and later becomes
cyclic garbage is reclaimed by one full collection every `full_every` (one pause an hour
instead of one a minute); plain garbage (no cycle) is freed by reference counting as always.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Mapping
from typing import Optional

from phasegate.api.durations import parse_duration

from . import telemetry

FREEZE_EVERY = 60.0
FULL_EVERY = 3600.0


def step(now: float, last_full: float, full_every: float = FULL_EVERY,
         collect: Callable[[], int] = gc.collect) -> float:
    """One round: a full collection of everything when one is due, then freeze what lives.
    Returns when the last full collection ran."""
    if now - last_full >= full_every:
        gc.unfreeze()
        telemetry.GC_FULL_UNREACHABLE.inc(collect())
        last_full = now
    gc.freeze()
    return last_full


def full_every_from_env(env: Optional[Mapping[str, str]] = None) -> float:
    """PHASEGATE_GC_FULL_EVERY (a duration: `1h`, `10m`): how often the full collection runs."""
    raw = (os.environ if env is None else env).get("PHASEGATE_GC_FULL_EVERY", "").strip()
    if not raw:
        return FULL_EVERY
    try:
        seconds = parse_duration(raw).total_seconds()
    except ValueError as exc:
        raise SystemExit(f"PHASEGATE_GC_FULL_EVERY={raw!r}: {exc}; set a duration such as 1h or 10m") from None
    if seconds < FREEZE_EVERY:
        raise SystemExit(f"PHASEGATE_GC_FULL_EVERY={raw!r}: at least {FREEZE_EVERY:g}s (one freeze period)")
    return seconds


async def keep_collections_short(freeze_every: float = FREEZE_EVERY, full_every: float = FULL_EVERY) -> None:
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(freeze_every)
        last_full = step(time.monotonic(), last_full, full_every)


__all__ = ["FREEZE_EVERY", "FULL_EVERY", "full_every_from_env", "keep_collections_short", "step"]
