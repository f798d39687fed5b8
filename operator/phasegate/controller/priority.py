"""The evaluation loop gives way to the halt path for the CPU.

The halt sentinel (controller/sentinel_process.py) and the lease renewals
(controller/election_thread.py) are small, rare and urgent; the event loop that evaluates
every strategy is large and steady. On a busy host the sentinel's watch answer or its write
can wait behind the loop's next burst of evaluations. Linux keeps a nice value per thread,
and a thread or a process starts with the value of the thread that made it; so once the
sentinel's supervisor (whose thread starts each sentinel process, restarts included) and
the election thread are running, the loop's own thread lowers only its own priority. The
halt path keeps the priority the operator was started with; a process may always lower its
own priority, so no capability is needed (the chart's pods drop all of them).

Only the share of CPU changes: under contention the scheduler gives a niced thread less, it
never stops it. An operator that falls behind for it says so (its evaluation lag and the
lag rule, docs/architecture.md), as it would for any other lack of CPU.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from .env_settings import bounded

ENV = "PHASEGATE_LOOP_NICENESS"
DEFAULT = 5
MAX = 19


def loop_niceness(raw: Optional[str] = None) -> int:
    """PHASEGATE_LOOP_NICENESS: how much lower than the halt path the loop runs (0 to 19,
    default 5; 0 leaves it alone)."""
    return bounded(ENV, raw, default=DEFAULT, low=0, high=MAX, parse=int, what="a whole number")


def thread_niceness(tid: Optional[int] = None) -> int:
    """The nice value of a thread of this process (the calling one by default)."""
    return os.getpriority(os.PRIO_PROCESS, tid if tid is not None else threading.get_native_id())


def lower_this_thread(by: int) -> Optional[int]:
    """Lower the calling thread's priority by `by` nice steps (capped at 19); its new nice
    value, or None where the system keeps no per-thread value (not Linux) or refuses."""
    if by <= 0 or not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return None
    tid = threading.get_native_id()
    try:
        target = min(MAX, thread_niceness(tid) + by)
        os.setpriority(os.PRIO_PROCESS, tid, target)
        return thread_niceness(tid)
    except OSError:
        return None


__all__ = ["DEFAULT", "ENV", "loop_niceness", "lower_this_thread", "thread_niceness"]
