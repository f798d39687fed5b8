"""The flow-adjusted return series (phasegate.policy.accounting): property tests of the
rules the README's risk section states."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.policy.accounting import rebase, step

D = Decimal
T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
DAY = date(2026, 3, 2)
RUNGS = [D("0.10"), D("0.35"), D("0.65"), D("1")]
BASE = D("1000000")

capitals = st.lists(st.sampled_from(RUNGS), min_size=1, max_size=12)
returns = st.decimals(min_value=D("-0.2"), max_value=D("0.2"), places=4)


def close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= D("1e-18")


@given(capitals)
def test_rung_changes_without_pnl_leave_drawdown_and_daily_loss_at_zero(fractions):
    value = BASE * fractions[0]
    s = step(None, "live", value, value, DAY, T0)
    cap = value
    for i, f in enumerate(fractions[1:], 1):
        new_cap = BASE * f
        value += new_cap - cap  # the pod books the new allotment as cash (the SDK's rebase)
        cap = new_cap
        s = step(s.book, "live", value, cap, DAY, T0 + timedelta(minutes=i))
        assert s.drawdown == 0 and s.daily_loss == 0
        assert s.book.index == 1


@settings(max_examples=300)
@given(st.lists(st.tuples(returns, st.sampled_from(RUNGS), st.booleans()), min_size=1, max_size=20))
def test_daily_loss_equals_the_paths_flow_adjusted_loss(path):
    """Any P&L path with rung changes (a flow, then the new rung trades): the measured daily
    loss is the loss of the path's time-weighted return, and a loss is never forgotten."""
    cap = BASE * RUNGS[0]
    value = cap
    s = step(None, "live", value, cap, DAY, T0)
    growth, peak = D(1), D(1)
    for i, (r, fraction, moves) in enumerate(path, 1):
        if moves and value + BASE * fraction - cap > 0:  # a cut never takes more than the book holds
            new_cap = BASE * fraction
            value += new_cap - cap
            cap = new_cap
        value = value * (1 + r)
        growth *= 1 + r
        peak = max(peak, growth)
        s = step(s.book, "live", value, cap, DAY, T0 + timedelta(minutes=i))
        assert close(s.book.index, growth)
        assert close(s.daily_loss, max(D(0), 1 - growth))
        assert close(s.drawdown, max(D(0), 1 - growth / peak))


def test_the_issue_example_losses_add_up_across_a_rung_change():
    """6% lost at live-10, the ceiling raised, another 6% at live-35 the same day: 11.64%."""
    s = step(None, "live", D("100000"), D("100000"), DAY, T0)
    s = step(s.book, "live", D("94000"), D("100000"), DAY, T0 + timedelta(hours=1))
    # live-35: the pod starts with 94000 + 250000 and loses 6% of that
    s = step(s.book, "live", (D("94000") + D("250000")) * D("0.94"), D("350000"), DAY, T0 + timedelta(hours=2))
    assert s.daily_loss.quantize(D("0.0001")) == D("0.1164")
    assert s.drawdown.quantize(D("0.0001")) == D("0.1164")


def test_a_new_book_starts_a_new_series_and_a_new_day_reopens():
    s = step(None, "paper", D("1000000"), D("1000000"), DAY, T0)
    s = step(s.book, "paper", D("900000"), D("1000000"), DAY, T0 + timedelta(hours=1))
    assert s.daily_loss == D("0.1")
    live = step(s.book, "live", D("100000"), D("100000"), DAY, T0 + timedelta(hours=2))
    assert live.started and live.book.name == "live" and live.daily_loss == 0
    nxt = step(live.book, "live", D("95000"), D("100000"), DAY + timedelta(days=1), T0 + timedelta(days=1))
    assert nxt.daily_loss == 0 and nxt.drawdown == D("0.05")  # the day opens at its first read; the mark carries


def test_rebase_accepts_the_losses_so_far():
    s = step(None, "live", D("100"), D("100"), DAY, T0)
    s = step(s.book, "live", D("80"), D("100"), DAY, T0 + timedelta(minutes=1))
    b = rebase(s.book)
    assert b is not None and b.high_water_mark == b.index == b.day_open
