"""What the operator's memory holds, on request: `kill -USR2 <pid>` logs a census.

RSS says how much, not what. The census counts the objects Python tracks by type (the
frozen ones included: controller/collector.py hides most of the heap from the collector,
not from this), and, when the process was started with PHASEGATE_TRACEMALLOC=<frames>, the
source lines that allocated the most memory still held; then how many of the counted objects
were cyclic garbage (a full collection finds them). tracemalloc slows every allocation:
it is for a diagnosis, not for production. The census is one JSON log line, so it can be
read where the logs go.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from collections.abc import Mapping
from typing import Any, Optional

TOP = 25


def start_tracing(env: Optional[Mapping[str, str]] = None) -> int:
    """PHASEGATE_TRACEMALLOC=<frames>: trace allocations from now on, `frames` deep.
    Returns the depth, 0 when not tracing."""
    raw = (os.environ if env is None else env).get("PHASEGATE_TRACEMALLOC", "").strip()
    if not raw or raw == "0":
        return 0
    try:
        frames = int(raw)
    except ValueError:
        raise SystemExit(f"PHASEGATE_TRACEMALLOC={raw!r}: set a number of frames (1 to 20), or leave it unset") from None
    if not 1 <= frames <= 20:
        raise SystemExit(f"PHASEGATE_TRACEMALLOC={raw!r}: set a number of frames from 1 to 20")
    tracemalloc.start(frames)
    return frames


def types(top: int = TOP) -> list[dict[str, Any]]:
    """The `top` object types by the memory of their instances (shallow sizes), with counts."""
    gc.unfreeze()  # get_objects() does not see the permanent generation
    try:
        objects = gc.get_objects()
    finally:
        gc.freeze()
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for obj in objects:
        name = type(obj).__qualname__
        count[name] += 1
        size[name] += sys.getsizeof(obj, 0)
    del objects
    return [{"type": t, "objects": count[t], "kib": round(b / 1024, 1)} for t, b in size.most_common(top)]


def allocations(top: int = TOP) -> list[dict[str, Any]]:
    """The `top` source lines by the memory they allocated that is still held (tracemalloc)."""
    if not tracemalloc.is_tracing():
        return []
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    out = []
    for stat in snapshot.statistics("traceback")[:top]:
        frames = [f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}" for f in stat.traceback]
        out.append({"kib": round(stat.size / 1024, 1), "blocks": stat.count, "at": frames})
    return out


def census(top: int = TOP) -> dict[str, Any]:
    """The heap by type (and by line when tracing), then a full collection: how much of what
    the census counted was cyclic garbage waiting for one. That collection is a pause like the
    hourly one, asked for by a person."""
    out: dict[str, Any] = {"frozen_objects": gc.get_freeze_count(), "types": types(top)}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out.update(traced_mib=round(current / 2**20, 1), traced_peak_mib=round(peak / 2**20, 1),
                   allocations=allocations(top))
    gc.unfreeze()
    try:
        out["unreachable_objects"] = gc.collect()
    finally:
        gc.freeze()
    return out


def install(loop: Any, log: Any) -> bool:
    """SIGUSR2 logs a census. False where the loop takes no signal handler."""
    def on_signal() -> None:
        log.info("memory census", **census())

    try:
        loop.add_signal_handler(signal.SIGUSR2, on_signal)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        return False
    return True


__all__ = ["allocations", "census", "install", "start_tracing", "types"]
