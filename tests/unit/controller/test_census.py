"""controller/census.py: `kill -USR2` logs what the operator's memory holds."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import tracemalloc

import pytest

from phasegate.controller import census


class Held:
    def __init__(self, i: int) -> None:
        self.i = i


def test_types_counts_frozen_objects_too() -> None:
    held = [Held(i) for i in range(5000)]
    gc.freeze()
    try:
        rows = {row["type"]: row for row in census.types(top=200)}
    finally:
        gc.unfreeze()
    assert rows["Held"]["objects"] >= 5000, "the frozen instances were not counted"
    assert rows["Held"]["kib"] > 0
    del held


def test_types_leaves_what_was_frozen_frozen() -> None:
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        census.types()
        assert gc.get_freeze_count() >= before > 0
    finally:
        gc.unfreeze()


def test_allocations_name_the_line_that_holds_the_memory() -> None:
    tracemalloc.start(1)
    try:
        blob = [bytearray(1024) for _ in range(2000)]  # about 2 MiB, allocated on this line
        rows = census.census()["allocations"]
    finally:
        tracemalloc.stop()
    assert any("test_census.py" in row["at"][0] and row["kib"] >= 1500 for row in rows), rows
    del blob


def test_without_tracing_the_census_has_no_allocations() -> None:
    assert not tracemalloc.is_tracing()
    out = census.census()
    assert "allocations" not in out and out["types"]


@pytest.mark.parametrize(("raw", "frames"), [("", 0), ("0", 0), ("3", 3)])
def test_tracing_is_asked_for_by_depth(raw: str, frames: int) -> None:
    try:
        assert census.start_tracing({"PHASEGATE_TRACEMALLOC": raw}) == frames
        assert tracemalloc.is_tracing() == bool(frames)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("raw", ["yes", "25"])
def test_a_bad_depth_names_the_setting_and_the_fix(raw: str) -> None:
    with pytest.raises(SystemExit, match=f"PHASEGATE_TRACEMALLOC='{raw}'.*number of frames"):
        census.start_tracing({"PHASEGATE_TRACEMALLOC": raw})


def test_sigusr2_logs_a_census() -> None:
    logged: list[tuple[str, dict]] = []

    class Log:
        def info(self, event: str, **kw: object) -> None:
            logged.append((event, kw))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert census.install(loop, Log())
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100):
                if logged:
                    break
                await asyncio.sleep(0.01)
        finally:
            loop.remove_signal_handler(signal.SIGUSR2)

    asyncio.run(main())
    assert logged and logged[0][0] == "memory census"
    assert logged[0][1]["types"] and "frozen_objects" in logged[0][1]


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_census_counts_cyclic_garbage_the_freeze_hid() -> None:
    gc.collect()
    cycles = [Cycle() for _ in range(300)]
    gc.freeze()
    try:
        del cycles  # garbage now, out of the collector's sight
        out = census.census()
        assert out["unreachable_objects"] >= 300
        assert gc.get_freeze_count() > 0, "the census left the heap unfrozen"
    finally:
        gc.unfreeze()
