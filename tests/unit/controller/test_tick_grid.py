"""Where evaluations fall: spread by name over the interval, then rounded up onto the grid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.controller.handlers import GRID_DEFAULT, GRID_ENV, first_tick_offset, on_grid, tick_grid


@settings(max_examples=2000)
@given(t=st.floats(0, 1e7, allow_nan=False), grid=st.sampled_from([0.05, 0.1, 0.25, 1.0]))
def test_a_due_time_moves_later_by_less_than_one_grid_step_never_earlier(t, grid):
    due = on_grid(t, grid)
    assert t <= due < t + grid + 1e-6


def test_neighbouring_due_times_share_a_grid_point():
    assert on_grid(10.01, 0.1) == on_grid(10.09, 0.1) != on_grid(10.11, 0.1)


def test_no_grid_leaves_the_time_alone():
    assert on_grid(12.345, 0.0) == 12.345


def test_first_ticks_spread_over_the_interval():
    offsets = [first_tick_offset("trading", f"s-{i}", 10.0) for i in range(1000)]
    assert all(0 <= o < 10.0 for o in offsets)
    assert len({int(o) for o in offsets}) == 10, "every second of the interval gets some"


@pytest.mark.parametrize("raw, want", [("", GRID_DEFAULT), ("0", 0.0), (" 0.25 ", 0.25), ("1", 1.0)])
def test_the_grid_setting(raw, want):
    assert tick_grid(raw) == want


@pytest.mark.parametrize("raw", ["-0.1", "1.5", "nan", "100ms", "fast"])
def test_a_bad_grid_setting_names_the_variable_and_the_range(raw):
    with pytest.raises(SystemExit) as exc:
        tick_grid(raw)
    assert GRID_ENV in str(exc.value) and "from 0 (off) to 1" in str(exc.value)
