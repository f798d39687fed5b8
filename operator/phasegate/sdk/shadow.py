"""Shadow mode: the live signal path checked against a replay of the backtest.

The replay is a second instance of the strategy, driven the way the backtest drives it,
fed exactly the frames the live path sees. Signal alignment is the share of (bar,
symbol) signals on which the two agree; a live path that drifts from what was
backtested (state lost in a restart, missed bars, code that behaves differently
incrementally) shows up here before capital is at risk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from .market import MarketFrame
from .strategy import Strategy


@dataclass
class SignalAlignment:
    compared: int = 0
    matched: int = 0

    def record(self, live: Mapping[str, int], replay: Mapping[str, int]) -> None:
        for symbol in set(live) | set(replay):
            self.compared += 1
            if live.get(symbol, 0) == replay.get(symbol, 0):
                self.matched += 1

    @property
    def ratio(self) -> Decimal | None:
        return Decimal(self.matched) / Decimal(self.compared) if self.compared else None


class ShadowReplay:
    def __init__(self, replay: Strategy) -> None:
        self.replay = replay
        self.alignment = SignalAlignment()
        self.last_mismatch: dict | None = None

    def observe(self, frame: MarketFrame, live_signals: Mapping[str, int]) -> None:
        replay_signals = self.replay.on_frame(frame)
        before = self.alignment.matched
        self.alignment.record(live_signals, replay_signals)
        if self.alignment.matched - before < len(set(live_signals) | set(replay_signals)):
            self.last_mismatch = {"bar": frame.index, "live": dict(live_signals), "replay": dict(replay_signals)}
