from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from phasegate.sdk.demo.momentum import MomentumStrategy
from phasegate.sdk.market import MarketFrame, SyntheticMarket
from phasegate.sdk.shadow import ShadowReplay, SignalAlignment

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def frames(market: SyntheticMarket, n: int) -> list[MarketFrame]:
    return [market.next_frame(T0 + timedelta(seconds=i)) for i in range(n)]


def closes(fs):
    return [[b.close for b in f.bars.values()] for f in fs]


def test_the_same_seed_gives_the_same_market_and_another_seed_does_not():
    assert closes(frames(SyntheticMarket(7), 50)) == closes(frames(SyntheticMarket(7), 50))
    assert closes(frames(SyntheticMarket(7), 50)) != closes(frames(SyntheticMarket(8), 50))


def test_a_restored_market_continues_exactly_where_the_snapshot_was_taken():
    a = SyntheticMarket(3)
    frames(a, 40)
    snapshot = json.loads(json.dumps(a.snapshot()))  # as it goes through a checkpoint
    b = SyntheticMarket.restore(snapshot)
    assert closes(frames(a, 30)) == closes(frames(b, 30))


def test_a_crash_drops_every_price_and_dries_up_volume():
    m = SyntheticMarket(7)
    before = frames(m, 5)[-1]
    m.crash()
    during = frames(m, m.params.crash_bars)
    assert not m.crashing
    for symbol, bar in during[-1].bars.items():
        assert bar.close < before.bars[symbol].close * Decimal("0.2")
    assert all(b.volume == 0 for f in during for b in f.bars.values())
    assert all(b.volume > 0 for b in frames(m, 1)[0].bars.values())


def test_alignment_counts_agreeing_signals():
    a = SignalAlignment()
    a.record({"A": 1, "B": 0}, {"A": 1, "B": 1})
    a.record({"A": 1}, {"A": 1, "C": 1})  # C missing from live counts as flat vs long: a mismatch
    assert (a.matched, a.compared) == (2, 4)


def test_a_faithful_live_path_aligns_fully_with_its_replay():
    market = SyntheticMarket(11)
    live, shadow = MomentumStrategy(), ShadowReplay(MomentumStrategy())
    for frame in frames(market, 300):
        shadow.observe(frame, live.on_frame(frame))
    assert shadow.alignment.ratio == 1 and shadow.last_mismatch is None


def test_a_live_path_that_missed_bars_shows_up_as_misalignment():
    market = SyntheticMarket(11)
    live, shadow = MomentumStrategy(), ShadowReplay(MomentumStrategy())
    for i, frame in enumerate(frames(market, 600)):
        if 100 <= i < 160:  # the live path lost these bars (a restart without its state, say)
            shadow.replay.on_frame(frame)
            continue
        shadow.observe(frame, live.on_frame(frame))
    assert shadow.alignment.ratio < 1
    assert shadow.last_mismatch is not None
