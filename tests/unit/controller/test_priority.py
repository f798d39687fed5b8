"""The loop's thread lowers its own priority; the threads made before it, and the processes
they start (the halt sentinel's), keep theirs. These are the kernel's rules, checked on the
kernel: each test runs in a thread of its own so the test process keeps its priority."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from phasegate.controller import priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def in_thread(fn: Callable[[], Any]) -> Any:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def child_niceness() -> int:
    return int(subprocess.check_output([sys.executable, "-c", "import os; print(os.nice(0))"], text=True))


def test_only_the_calling_thread_is_lowered_and_what_an_earlier_thread_starts_is_not() -> None:
    def scenario() -> dict[str, int]:
        base = priority.thread_niceness()
        asked = threading.Event()
        done = threading.Event()
        seen: dict[str, int] = {}

        def supervisor() -> None:  # made before the loop lowers itself, like the sentinel's
            asked.wait(10)
            seen["supervisor"] = priority.thread_niceness()
            seen["its child"] = child_niceness()
            done.set()

        sup = threading.Thread(target=supervisor)
        sup.start()
        lowered = priority.lower_this_thread(3)
        asked.set()
        done.wait(30)
        sup.join(10)
        later = in_thread(priority.thread_niceness)  # a thread the loop makes afterwards
        return {"base": base, "lowered": lowered or -100, "loop": priority.thread_niceness(),
                "later": later, "loop's child": child_niceness(), **seen}

    got = in_thread(scenario)
    want = min(priority.MAX, got["base"] + 3)
    assert got["lowered"] == got["loop"] == want
    assert got["later"] == want and got["loop's child"] == want
    assert got["supervisor"] == got["base"] and got["its child"] == got["base"]


def test_zero_leaves_the_thread_alone_and_the_cap_is_19() -> None:
    def scenario() -> tuple[int, Any, int, Any, int]:
        base = priority.thread_niceness()
        none = priority.lower_this_thread(0)
        after_zero = priority.thread_niceness()
        capped = priority.lower_this_thread(100)
        return base, none, after_zero, capped, priority.thread_niceness()

    base, none, after_zero, capped, final = in_thread(scenario)
    assert none is None and after_zero == base
    assert capped == final == priority.MAX


@pytest.mark.parametrize("raw, want", [("", priority.DEFAULT), ("0", 0), (" 7 ", 7), ("19", 19)])
def test_the_setting(raw: str, want: int) -> None:
    assert priority.loop_niceness(raw) == want


@pytest.mark.parametrize("raw", ["-1", "20", "high", "2.5"])
def test_a_bad_setting_names_the_variable_and_the_range(raw: str) -> None:
    with pytest.raises(SystemExit) as exc:
        priority.loop_niceness(raw)
    assert priority.ENV in str(exc.value) and "0 (off) to 19" in str(exc.value)
