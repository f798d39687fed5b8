"""The demo strategy on the SDK: its backtest passes the default gates, its trading passes the
paper and shadow gates, its crash trips the drawdown limit, and flatten closes its book."""

from __future__ import annotations

import json
import random
from collections import deque
from datetime import timedelta
from decimal import Decimal

import pytest

from phasegate.api import contract
from phasegate.sdk.backtest import NullLog, max_drawdown, monte_carlo, sharpe, walk_forward
from phasegate.sdk.broker import PaperBroker
from phasegate.sdk.clock import ManualClock
from phasegate.sdk.demo.app import DEFAULT_SEED, DEMO_SIZER, history, run_demo_backtest
from phasegate.sdk.demo.momentum import MomentumStrategy
from phasegate.sdk.engine import TradingEngine
from phasegate.sdk.ledger import Ledger
from phasegate.sdk.shadow import ShadowReplay

from .helpers import DemoProcess, pod_env, run_demo

BAR = timedelta(milliseconds=200)


class LiveSimulation:
    """The runtime's trading loop with a manual clock: a bar every 200 ms, fills 100 ms later."""

    def __init__(self, seed: int = DEFAULT_SEED, capital: Decimal = Decimal(1_000_000)):
        self.market, frames = history(seed)
        self.clock = ManualClock(frames[-1].at + timedelta(days=1))
        self.engine = TradingEngine(
            MomentumStrategy(), PaperBroker(self.clock, Ledger(capital)), Ledger(capital), capital, self.clock,
            NullLog(), sizer=DEMO_SIZER, shadow=ShadowReplay(MomentumStrategy()),
        )
        for frame in frames[-91:]:
            self.engine.warm_up(frame)
        self.values: list[Decimal] = []
        self.largest: list[Decimal] = []
        self.cash_fraction: list[Decimal] = []
        self.orders_per_bar: list[int] = []

    def run(self, bars: int) -> None:
        e = self.engine
        for _ in range(bars):
            submitted = e.gate.submitted
            e.step(self.market.next_frame(self.clock.now()))
            self.clock.advance(BAR / 2)
            e.process_due()
            self.clock.advance(BAR / 2)
            value = e.equity
            self.values.append(value)
            self.largest.append(e.book.largest_position_fraction(e.prices))
            self.cash_fraction.append(e.book.cash / value)
            self.orders_per_bar.append(e.gate.submitted - submitted)


def test_trading_passes_the_default_paper_and_shadow_gates_and_risk_limits():
    sim = LiveSimulation()
    sim.run(1500)  # five minutes of the demo at its default pace
    e = sim.engine
    fill_rate = e.metrics.orders_filled._value.get() / e.gate.submitted
    assert fill_rate > 0.95
    assert e.shadow.alignment.ratio >= Decimal("0.95")
    assert e.quality.ratio >= Decimal("0.90")
    assert e.quality.mean_slippage_bps <= Decimal("10")
    latency = e.metrics.order_latency
    assert latency._sum.get() / sum(b.get() for b in latency._buckets) < 0.5
    assert e.breakers.trips == []
    assert max(sim.largest) <= Decimal("0.05")
    assert min(sim.cash_fraction) >= Decimal("0.10")
    assert e.last_reconciliation.ratio < Decimal("0.05")
    peak, worst = Decimal(0), Decimal(0)
    for v in sim.values:
        peak = max(peak, v)
        worst = max(worst, (peak - v) / peak)
    assert worst < Decimal("0.05")  # far from the 10% drawdown and 5% daily loss limits
    window = deque(maxlen=300)  # a minute of bars
    busiest = 0
    for n in sim.orders_per_bar:
        window.append(n)
        busiest = max(busiest, sum(window))
    assert busiest < 120  # the operator's default order-rate limit, per minute
    assert e.gate.submitted > 50  # and it does trade


@pytest.mark.parametrize("crash_at", [60, 700, 1400])
def test_a_crash_takes_the_book_down_more_than_ten_percent_in_a_few_seconds(crash_at):
    sim = LiveSimulation()
    sim.run(crash_at)
    peak = max(sim.values)
    sim.market.crash()
    sim.run(15)  # three seconds at 200 ms a bar
    assert min(sim.values) < peak * Decimal("0.9")
    assert sim.engine.breakers.drawdown.tripped
    assert not sim.engine.gate.open


def test_statistics():
    assert max_drawdown([100, 120, 90, 130, 117]) == pytest.approx(0.25)
    assert sharpe([0.01, -0.01] * 10) == pytest.approx(0.0)
    assert sharpe([0.01, 0.02, 0.03], periods_per_year=1) == pytest.approx(2.0)


def test_walk_forward_rolls_windows_and_picks_on_training_data_only():
    seen = []

    def score(c, a, b):
        seen.append((a, b))
        return c if a < 200 else -c  # the best candidate changes after bar 200

    wf = walk_forward(1000, 200, 100, [1, 2, 3], score, lambda c, a, b: [0.001 * c] * (b - a))
    assert len(wf.windows) == 8
    assert [w.test for w in wf.windows][:2] == [(200, 300), (300, 400)]
    assert [w.params for w in wf.windows[:3]] == [3, 3, 1]  # training from bar 200 on prefers 1
    assert all(b <= w.test[0] for w, (a, b) in zip(wf.windows, seen[::3], strict=True))
    assert len(wf.out_of_sample_returns) == 800


def test_monte_carlo_is_reproducible_and_brackets_the_original():
    rng = random.Random(1)
    returns = [rng.gauss(0.0005, 0.01) for _ in range(1000)]
    a, b = monte_carlo(returns, runs=300, seed=5), monte_carlo(returns, runs=300, seed=5)
    assert a == b and a.runs == 300
    assert a != monte_carlo(returns, runs=300, seed=6)
    assert a.sharpe_p5 < sharpe(returns) < a.sharpe_p5 + 3
    assert a.max_drawdown_p95 > a.max_drawdown_median > 0


def test_backtest_mode_writes_results_that_pass_the_default_gates(tmp_path):
    env = pod_env(tmp_path, mode="backtest")
    code, lines, stderr = run_demo(env, timeout=120)
    assert code == 0, stderr
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["sharpe"] >= 1.0
    assert result["maxDrawdown"] < 0.20
    assert result["walkForwardWindows"] >= 10
    assert result["monteCarloRuns"] >= 1000
    assert len((tmp_path / "termination-log").read_bytes()) < 4096
    assert [l["event"] for l in lines] == ["backtest.start", "backtest.result"]
    assert not (tmp_path / "checkpoints").exists()


def test_backtest_results_are_reproducible_for_a_seed_and_differ_across_seeds():
    first = run_demo_backtest(3, Decimal(1_000_000))
    assert run_demo_backtest(3, Decimal(1_000_000)) == first
    assert run_demo_backtest(4, Decimal(1_000_000))["sharpe"] != first["sharpe"]


def test_the_crash_timer_crashes_the_market_and_trips_the_drawdown_breaker(tmp_path, demo_processes):
    env = pod_env(tmp_path, mode="paper", PHASEGATE_DEMO_CRASH_AFTER="1", PHASEGATE_DEMO_BAR_SECONDS="0.15")
    demo = DemoProcess.start(env)
    demo_processes.append(demo)
    assert demo.event("demo.crash_scheduled")["after_seconds"] == 1.0
    demo.event("demo.crash", source="timer")
    trip = demo.event("breaker.tripped", breaker_type="drawdown")
    assert Decimal(trip["value"]) > Decimal("0.10")
    assert demo.terminate() == 0


def test_flatten_closes_every_position_from_the_checkpoint(tmp_path, demo_processes):
    demo = DemoProcess.start(pod_env(tmp_path, mode="live"), "--bar-seconds", "0.15")
    demo_processes.append(demo)
    demo.event("live.paper_broker")
    demo.event("engine.first_fill")
    assert demo.terminate() == 0
    path = tmp_path / "checkpoints" / "momentum.checkpoint.json"
    held = json.loads(path.read_text())["state"]["books"]["live"]["broker"]["positions"]
    assert held

    env = pod_env(tmp_path, mode="flatten")
    del env[contract.ENV_CAPITAL], env[contract.ENV_CAPITAL_FRACTION]
    code, lines, stderr = run_demo(env)
    assert code == 0, stderr
    report = json.loads((tmp_path / "termination-log").read_text())
    assert report["flattened"] is True
    assert sorted(report["books"]["live"]["closed"]) == sorted(held)
    books = json.loads(path.read_text())["state"]["books"]
    assert books["live"]["broker"]["positions"] == {} == books["live"]["local"]["positions"]
    assert [l["event"] for l in lines if l["event"].startswith("flatten.")][-1] == "flatten.complete"


def test_flatten_without_a_checkpoint_has_nothing_to_do(tmp_path):
    code, lines, _ = run_demo(pod_env(tmp_path, mode="flatten"))
    assert code == 0
    assert json.loads((tmp_path / "termination-log").read_text()) == {"flattened": True, "closed": {}}
