"""The strategy runtime: what `main()` does inside a strategy pod.

It reads the environment contract, restores the last checkpoint, serves metrics, runs
the trading loop (a bar every `bar_seconds`, fills processed the moment they are due),
checkpoints periodically, and on SIGTERM runs the graceful shutdown sequence. In
`backtest` mode it runs the strategy's backtest and writes the result to the
termination message; in `flatten` mode it closes every position in the checkpoint.

There is no real broker here: every mode trades with the paper broker. In `live` mode
the book is the live book, sized with PHASEGATE_CAPITAL, and the log says so.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from phasegate.api import contract

from .breakers import BreakerBoard, BreakerLimits
from .broker import BrokerError, CostModel, OrderRequest, PaperBroker, Side
from .checkpoint import Checkpoint, CheckpointCorrupt, CheckpointStore
from .clock import Clock, ManualClock, SystemClock, isoformat
from .engine import TradingEngine
from .environment import ConfigError, RunMode, RuntimeConfig, load_config, termination_path_from_env
from .exporter import MetricsServer, Route, StrategyMetrics
from .ledger import Ledger
from .logs import configure_logging, flush_logs, get_logger
from .market import MarketFeed, MarketFrame
from .money import D, money_from_json, money_json
from .shadow import ShadowReplay
from .shutdown import (
    CANCEL_PENDING_ORDERS,
    CLOSE_BROKER_CONNECTION,
    FLUSH_LOGS,
    STOP_ACCEPTING_ORDERS,
    WRITE_FINAL_CHECKPOINT,
    ShutdownSequence,
    ShutdownStep,
)
from .sizing import PositionSizer
from .strategy import Signals, Strategy, TradingContext
from .supervision import Supervision, SupervisionGuard
from .termination import write_termination_message

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


@dataclass
class FeedStart:
    feed: MarketFeed
    warm_up: Sequence[MarketFrame] = ()
    """History the strategy sees before trading starts (skipped when state was restored)."""


@dataclass
class StrategyApp:
    """What a strategy author hands to the runtime."""

    make_strategy: Callable[[], Strategy]
    make_feed: Callable[[RuntimeConfig, Mapping | None], FeedStart]
    backtest: Callable[[RuntimeConfig], dict] | None = None
    bar_seconds: float = 0.2
    costs: CostModel = field(default_factory=CostModel)
    sizer: PositionSizer = field(default_factory=PositionSizer)
    limits: BreakerLimits = field(default_factory=BreakerLimits)
    routes: Callable[[StrategyRuntime], list[Route]] = lambda runtime: []
    on_started: Callable[[StrategyRuntime], None] | None = None
    checkpoint_seconds: float = 5.0
    heartbeat_seconds: float = 10.0
    shutdown_budget_seconds: float = 25.0
    flatten_max_bars: int = 2000


class FlattenStrategy(Strategy):
    """Sells whatever the broker says we hold; signals are irrelevant when flattening."""

    def __init__(self, broker: PaperBroker) -> None:
        self.broker = broker

    def on_frame(self, frame: MarketFrame) -> Signals:
        return {}

    def orders(self, signals: Signals, ctx: TradingContext) -> list[OrderRequest]:
        out = []
        for symbol, held in sorted(self.broker.positions().items()):
            if held > 0 and ctx.pending(symbol) == 0 and symbol in ctx.prices:
                out.append(OrderRequest(symbol, Side.SELL, held, "flatten"))
        return out


class StrategyRuntime:
    def __init__(self, app: StrategyApp, config: RuntimeConfig, clock: Clock | None = None) -> None:
        self.app = app
        self.config = config
        self.clock = clock or SystemClock()
        self.log = get_logger()
        self.store = CheckpointStore(config.checkpoint_dir, config.strategy)
        self.metrics = StrategyMetrics()
        self.engine: TradingEngine | None = None
        self.feed: MarketFeed | None = None
        self.server: MetricsServer | None = None
        self.restored: Checkpoint | None = None
        self._state: dict = {}
        self._stop: asyncio.Event | None = None
        self._signal: str | None = None
        self._trading: asyncio.Task | None = None
        self._supervising: asyncio.Task | None = None
        self.supervision: SupervisionGuard | None = None
        self._started_at = time.monotonic()

    # --- entry --------------------------------------------------------------------
    def run(self) -> int:
        mode = self.config.mode
        if mode is RunMode.BACKTEST:
            return self.run_backtest()
        try:
            self._restore()
        except CheckpointCorrupt as exc:
            return self._fail("checkpoint.corrupt", str(exc),
                              fix=f"move {self.store.path} aside to start from scratch, or restore a backup")
        if mode is RunMode.FLATTEN:
            return self.run_flatten()
        return asyncio.run(self.run_trading())

    def _fail(self, event: str, message: str, **details: Any) -> int:
        self.log.error(event, error=message, **details)
        write_termination_message(self.config.termination_message_path, {"error": message, **details})
        flush_logs()
        return EXIT_FAILED

    # --- backtest -----------------------------------------------------------------
    def run_backtest(self) -> int:
        if self.app.backtest is None:
            return self._fail("backtest.unsupported", "this strategy has no backtest")
        started = time.monotonic()
        self.log.info("backtest.start")
        try:
            result = self.app.backtest(self.config)
        except Exception as exc:
            return self._fail("backtest.failed", repr(exc))
        result = dict(result)
        self.log.info("backtest.result", elapsed_s=round(time.monotonic() - started, 3), **result)
        written = write_termination_message(self.config.termination_message_path, result)
        if not written:
            self.log.warning("termination_message.skipped", path=str(self.config.termination_message_path),
                             fix=f"set {contract.ENV_TERMINATION_MESSAGE_PATH} when running outside a pod")
        flush_logs()
        return EXIT_OK

    # --- restore and checkpoint ---------------------------------------------------
    def _restore(self) -> None:
        removed = self.store.remove_stale_temp_files()
        if removed:
            self.log.warning("checkpoint.stale_temp_removed", files=[p.name for p in removed],
                             reason="a previous process was killed while writing a checkpoint")
        self.restored = self.store.load()
        self._state = dict(self.restored.state) if self.restored else {}
        if self.restored:
            self.log.info(
                "checkpoint.restored",
                sequence=self.restored.sequence,
                written_at=isoformat(self.restored.written_at),
                path=str(self.store.path),
            )
        else:
            self.log.info("checkpoint.none", path=str(self.store.path), note="starting from a fresh book")
        for trip in self._state.get("breakerTrips", []):
            self.log.warning("breaker.previous_trip", **trip,
                             note="tripped in an earlier process; the operator decides whether trading resumes")

    def _book(self, name: str, capital: Decimal) -> tuple[Ledger, Ledger]:
        saved = self._state.get("books", {}).get(name)
        if not saved:
            return Ledger(cash=capital), Ledger(cash=capital)
        local, account = Ledger.from_json(saved["local"]), Ledger.from_json(saved["broker"])
        previous = D(saved["capital"])
        if capital != previous and self.config.mode.trades:
            # A new rung changes the capital allotted; the difference arrives (or leaves) as cash.
            delta = capital - previous
            local.cash += delta
            account.cash += delta
            self.log.info("capital.rebased", book=name, previous=previous, capital=capital, delta=delta)
        return local, account

    def checkpoint_state(self) -> dict:
        assert self.engine is not None and self.feed is not None
        state = dict(self._state)
        books = dict(state.get("books", {}))
        books[self.config.book] = {
            "capital": str(self.engine.capital),
            "local": self.engine.book.to_json(),
            "broker": self.engine.broker.account.to_json(),
        }
        state.update(
            strategy=self.config.strategy,
            phase=self.config.phase,
            mode=self.config.mode.value,
            books=books,
            strategyState=self.engine.strategy.snapshot(),
            market=self.feed.snapshot(),
            prices=money_json(self.engine.prices),
            breakerTrips=list(self._state.get("breakerTrips", []))
            + [t.to_json() for t in self.engine.breakers.trips],
        )
        return state

    def save_checkpoint(self) -> Checkpoint:
        return self.store.save(self.checkpoint_state(), self.clock.now())

    # --- trading ------------------------------------------------------------------
    def _build_engine(self) -> None:
        config = self.config
        start = self.app.make_feed(config, self._state.get("market"))
        self.feed = start.feed
        local, account = self._book(config.book, config.capital)
        strategy = self.app.make_strategy()
        saved_strategy = self._state.get("strategyState")
        if saved_strategy is not None:
            strategy.restore(saved_strategy)
        shadow = None
        if config.shadow:
            replay = self.app.make_strategy()
            if saved_strategy is not None:
                replay.restore(saved_strategy)
            shadow = ShadowReplay(replay)
        # Order ids carry the start time so that ids never repeat across restarts.
        prefix = f"{config.strategy}-{self.clock.now().strftime('%Y%m%dT%H%M%S%f')}"
        broker = PaperBroker(self.clock, account, self.app.costs, order_prefix=prefix)
        # Supervision runs from here: with a timeout in the env, a first supervised scrape
        # is due within it, counted from the start of trading.
        self.supervision = SupervisionGuard(
            Supervision(config.supervision_timeout, self.clock.now()), self.metrics, self.log,
            on_safe=self._cancel_working_orders,
        )
        self.engine = TradingEngine(
            strategy, broker, local, config.capital, self.clock, self.log,
            metrics=self.metrics, breakers=BreakerBoard(self.app.limits), sizer=self.app.sizer, shadow=shadow,
            supervision=self.supervision,
        )
        # The book is valued at the last prices seen, until the first bar brings new ones.
        self.engine.prices.update(money_from_json(self._state.get("prices")))
        if saved_strategy is None:
            for frame in start.warm_up:
                self.engine.warm_up(frame)
        self.engine.publish()

    def _cancel_working_orders(self) -> int:
        """Safe mode's first act. A broker already closed (shutdown under way) has none left."""
        if self.engine is None:
            return 0
        try:
            return self.engine.cancel_pending()
        except BrokerError:
            return 0

    async def _supervision_loop(self) -> None:
        """Enters safe mode the moment the deadline passes, whatever the bar interval: the
        order gate checks on every order too, this is for cancelling what is working."""
        assert self._stop is not None and self.supervision is not None
        while not self._stop.is_set():
            self.supervision.check(self.clock.now())
            left = self.supervision.supervision.seconds_left(self.clock.now())
            wait = 1.0 if left is None or left == 0 else min(max(left, 0.01), 1.0)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            except TimeoutError:
                pass

    def _on_scrape(self, headers: Mapping[str, str]) -> None:
        if self.supervision is not None:
            self.supervision.on_scrape(headers, self.clock.now())

    def health(self) -> dict:
        engine = self.engine
        sup = self.supervision.supervision if self.supervision is not None else None
        return {
            "supervision": sup.mode.value if sup is not None else None,
            "status": "stopping" if self._signal else "ok",
            "strategy": self.config.strategy,
            "mode": self.config.mode.value,
            "phase": self.config.phase,
            "acceptingOrders": bool(engine and engine.gate.open),
            "breakersTripped": [t.breaker_type.value for t in engine.breakers.trips] if engine else [],
        }

    def request_shutdown(self, signal_name: str) -> None:
        if self._signal is not None:
            self.log.warning("shutdown.signal_ignored", signal=signal_name, reason="shutdown already under way")
            return
        self._signal = signal_name
        self.log.info("shutdown.requested", signal=signal_name)
        assert self._stop is not None
        self._stop.set()

    async def run_trading(self) -> int:
        config = self.config
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown, sig.name)
        self._build_engine()
        assert self.engine is not None
        self.server = MetricsServer(self.metrics, config.bind_address, config.metrics_port, self.health,
                                    self.app.routes(self), on_scrape=self._on_scrape)
        try:
            await self.server.start()
        except OSError as exc:
            return self._fail("metrics.bind_failed", f"cannot listen on {config.bind_address}:{config.metrics_port}: {exc}",
                              fix=f"free the port or set {contract.ENV_METRICS_PORT}")
        self.log.info(
            "runtime.started",
            phase=config.phase,
            capital=config.capital,
            capital_fraction=config.capital_fraction,
            shadow=config.shadow,
            book=config.book,
            account=config.account,
            broker="paper",
            bar_seconds=self.app.bar_seconds,
            restored_sequence=self.restored.sequence if self.restored else None,
            metrics=f"http://{config.bind_address}:{self.server.port}/metrics",
            supervision_timeout_s=config.supervision_timeout.total_seconds() if config.supervision_timeout else None,
        )
        if config.mode is RunMode.LIVE:
            self.log.warning(
                "live.paper_broker",
                message="live mode, but there is no real broker here: orders go to the paper broker; "
                        f"positions are sized with {contract.ENV_CAPITAL}={config.capital}",
                capital=config.capital,
                capital_fraction=config.capital_fraction,
            )
        latency = self.app.costs.latency.total_seconds()
        if self.app.bar_seconds < latency * 1.25:
            self.log.warning(
                "runtime.bars_faster_than_latency",
                bar_seconds=self.app.bar_seconds,
                latency_seconds=latency,
                consequence="orders fill at a later bar's price than the one they were decided on, unlike the "
                            "backtest: slippage rises and execution quality falls",
            )
        if self.app.on_started is not None:
            self.app.on_started(self)
        self._trading = asyncio.create_task(self._trading_loop())
        self._supervising = asyncio.create_task(self._supervision_loop())
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({self._trading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        crashed = None
        if self._trading.done() and not self._trading.cancelled() and self._trading.exception() is not None:
            crashed = self._trading.exception()
            self.log.error("runtime.crashed", error=repr(crashed))
            self._signal = self._signal or "internal-error"
        stop_wait.cancel()
        ok = await self._shutdown(self._signal or "unknown")
        if self._supervising is not None:
            self._supervising.cancel()
        return EXIT_FAILED if crashed is not None or not ok else EXIT_OK

    async def _trading_loop(self) -> None:
        assert self.engine is not None and self.feed is not None and self._stop is not None
        engine, feed, loop = self.engine, self.feed, asyncio.get_running_loop()
        interval = self.app.bar_seconds
        next_bar = loop.time()
        last_checkpoint = last_heartbeat = loop.time()
        while not self._stop.is_set():
            engine.step(feed.next_frame(self.clock.now()))
            # A slow step skips bars instead of replaying them in a burst.
            next_bar = max(next_bar + interval, loop.time())
            while not self._stop.is_set():
                now = loop.time()
                if now >= next_bar:
                    break
                wake = next_bar
                due = engine.broker.next_due()
                if due is not None:
                    wake = min(wake, now + max((due - self.clock.now()).total_seconds(), 0.0))
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=max(wake - now, 0.0))
                except TimeoutError:
                    pass
                if self._stop.is_set():
                    return
                if due is not None and self.clock.now() >= due:
                    engine.process_due()
            now = loop.time()
            if now - last_checkpoint >= self.app.checkpoint_seconds:
                self.save_checkpoint()
                last_checkpoint = now
            if now - last_heartbeat >= self.app.heartbeat_seconds:
                last_heartbeat = now
                self._heartbeat()

    def _heartbeat(self) -> None:
        engine = self.engine
        assert engine is not None
        self.log.info(
            "runtime.heartbeat",
            bars=engine.bars,
            orders_submitted=engine.gate.submitted,
            fills=engine.fills,
            portfolio_value=engine.equity.quantize(Decimal("0.01")),
            cash=engine.book.cash.quantize(Decimal("0.01")),
            positions=len(engine.book.positions),
            signal_alignment=engine.shadow.alignment.ratio if engine.shadow else None,
            breakers_tripped=[t.breaker_type.value for t in engine.breakers.trips],
            supervision=self.supervision.supervision.mode.value if self.supervision is not None else None,
        )

    async def _shutdown(self, signal_name: str) -> bool:
        engine = self.engine
        assert engine is not None

        async def stop_accepting() -> dict:
            engine.gate.stop_accepting()
            if self._stop is not None:
                self._stop.set()
            if self._trading is not None and not self._trading.done():
                await self._trading
            return {"open_orders": len(engine.broker.open_orders())}

        async def cancel_pending() -> dict:
            return {"cancelled": engine.cancel_pending()}

        async def write_checkpoint() -> dict:
            checkpoint = self.save_checkpoint()
            return {"sequence": checkpoint.sequence, "path": str(self.store.path)}

        async def close_broker() -> dict:
            engine.broker.close()
            if self.server is not None:
                # The scrape endpoint goes with the broker: nothing it reports will change any more.
                await self.server.stop()
            return {}

        async def flush() -> dict:
            flush_logs()
            return {}

        sequence = ShutdownSequence(
            [
                ShutdownStep(STOP_ACCEPTING_ORDERS, stop_accepting),
                ShutdownStep(CANCEL_PENDING_ORDERS, cancel_pending),
                ShutdownStep(WRITE_FINAL_CHECKPOINT, write_checkpoint),
                ShutdownStep(CLOSE_BROKER_CONNECTION, close_broker),
                ShutdownStep(FLUSH_LOGS, flush),
            ],
            self.log,
            budget_seconds=self.app.shutdown_budget_seconds,
            flush=flush_logs,
        )
        return await sequence.run(signal_name)

    # --- flatten ------------------------------------------------------------------
    def run_flatten(self) -> int:
        """Close every position of every book in the checkpoint, then record the flat books."""
        books = self._state.get("books", {})
        holding = {n: b for n, b in books.items() if b.get("broker", {}).get("positions")}
        if not holding:
            self.log.info("flatten.nothing_to_close", books=sorted(books))
            write_termination_message(self.config.termination_message_path, {"flattened": True, "closed": {}})
            flush_logs()
            return EXIT_OK
        start = self.app.make_feed(self.config, self._state.get("market"))
        self.feed = start.feed
        # Flattening needs no wall-clock pacing: the paper broker's latency is simulated.
        clock = ManualClock(self.clock.now())
        step = timedelta(seconds=self.app.bar_seconds)
        result: dict[str, dict] = {}
        for name in sorted(holding):
            local, account = self._book(name, D(books[name]["capital"]))
            broker = PaperBroker(clock, account, self.app.costs, order_prefix=f"{self.config.strategy}-flatten-{name}")
            # Closing positions reduces risk: drawdown and daily loss must not block it.
            board = BreakerBoard(self.app.limits, value_breakers_armed=False)
            engine = TradingEngine(FlattenStrategy(broker), broker, local, D(books[name]["capital"]), clock,
                                   self.log, metrics=StrategyMetrics(), breakers=board, sizer=self.app.sizer)
            before = dict(account.positions)
            self.log.info("flatten.start", book=name, positions=before)
            for _ in range(self.app.flatten_max_bars):
                engine.step(self.feed.next_frame(clock.now()))
                clock.advance(self.app.costs.latency)
                engine.process_due()
                if not account.positions and not broker.open_orders():
                    break
                clock.advance(step)
            engine.cancel_pending()
            self.engine = engine
            self._state.setdefault("books", {})[name] = {
                "capital": books[name]["capital"], "local": local.to_json(), "broker": account.to_json(),
            }
            result[name] = {"closed": sorted(before), "remaining": dict(account.positions), "cash": str(account.cash),
                            "orders": engine.gate.submitted, "bars": engine.bars}
            self.log.info("flatten.done", book=name, **result[name])
        state = dict(self._state)
        state["market"] = self.feed.snapshot()
        self.store.save(state, self.clock.now())
        flat = all(not r["remaining"] for r in result.values())
        write_termination_message(self.config.termination_message_path, {"flattened": flat, "books": result})
        self.log.info("flatten.complete", flat=flat)
        flush_logs()
        return EXIT_OK if flat else EXIT_FAILED


def main(app: StrategyApp, environ: Mapping[str, str] | None = None) -> int:
    """Run a strategy under the pod contract; returns the process exit code."""
    try:
        config = load_config(environ)
    except ConfigError as exc:
        configure_logging()
        get_logger().error("runtime.config_invalid", problems=exc.problems)
        print(exc.render(), file=sys.stderr, flush=True)
        write_termination_message(termination_path_from_env(environ), exc.render())
        flush_logs()
        return EXIT_CONFIG
    configure_logging(strategy=config.strategy, mode=config.mode.value, phase=config.phase)
    return StrategyRuntime(app, config).run()
