"""The dead-man's switch in the SDK: the pure state machine (hypothesis), the headers, the
order gate in safe mode, and a real demo process with no supervisor at all."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.api import contract
from phasegate.sdk.breakers import BreakerBoard
from phasegate.sdk.broker import CostModel, OrderRequest, PaperBroker, Side
from phasegate.sdk.clock import ManualClock, isoformat
from phasegate.sdk.environment import ConfigError, load_config
from phasegate.sdk.exporter import MetricsServer, StrategyMetrics
from phasegate.sdk.ledger import Ledger
from phasegate.sdk.orders import OrderGate
from phasegate.sdk.supervision import (
    BadContact,
    Supervision,
    SupervisionGuard,
    SupervisionMode,
    contact_from_headers,
    reduces_exposure,
)

from .helpers import DemoProcess, pod_env

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
S = timedelta(seconds=1)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.lines.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.lines if e == name]


# --- the state machine ---------------------------------------------------------------


def test_without_a_timeout_and_without_contact_it_is_unsupervised_for_ever():
    sup = Supervision(None, T0)
    assert sup.mode is SupervisionMode.UNSUPERVISED
    assert sup.evaluate(T0 + timedelta(days=400)) is None
    assert sup.mode is SupervisionMode.UNSUPERVISED and sup.seconds_left(T0) is None


def test_no_contact_within_the_timeout_after_start_is_safe_mode():
    sup = Supervision(6 * S, T0)
    assert sup.evaluate(T0 + 5.999 * S) is None and sup.mode is SupervisionMode.NORMAL
    change = sup.evaluate(T0 + 6 * S)
    assert change is not None and change.mode is SupervisionMode.SAFE and change.reason == "no-contact-since-start"


def test_contacts_move_the_deadline_and_a_lapse_is_safe_mode_until_a_fresh_contact():
    sup = Supervision(6 * S, T0)
    assert sup.contact(T0 + 7 * S, "op-a", T0 + 1 * S) is None  # already normal: no change to report
    assert sup.deadline == T0 + 7 * S and sup.supervisor == "op-a"
    assert sup.evaluate(T0 + 6.5 * S) is None  # the start's deadline no longer counts
    change = sup.evaluate(T0 + 7 * S)
    assert change is not None and change.reason == "deadline-passed" and change.supervisor == "op-a"
    assert sup.evaluate(T0 + 8 * S) is None  # entered once
    back = sup.contact(T0 + 15 * S, "op-b", T0 + 9 * S)
    assert back is not None and back.mode is SupervisionMode.NORMAL and back.reason == "contact"
    assert back.supervisor == "op-b"


def test_a_contact_whose_deadline_is_past_does_not_lift_safe_mode_and_ends_normal_mode():
    sup = Supervision(6 * S, T0)
    change = sup.contact(T0 + 1 * S, "op", T0 + 2 * S)
    assert change is not None and change.mode is SupervisionMode.SAFE and change.reason == "stale-contact"
    assert sup.contact(T0 + 3 * S, "op", T0 + 3 * S) is None and sup.mode is SupervisionMode.SAFE  # == now: past


def test_a_deadline_further_than_the_timeout_is_capped_at_now_plus_timeout():
    sup = Supervision(6 * S, T0)
    sup.contact(T0 + timedelta(days=1), "skewed", T0 + 1 * S)
    assert sup.deadline == T0 + 7 * S
    assert sup.evaluate(T0 + 7 * S) is not None and sup.mode is SupervisionMode.SAFE


def test_a_first_contact_arms_a_pod_started_without_a_timeout():
    sup = Supervision(None, T0)
    change = sup.contact(T0 + 10 * S, "op", T0)
    assert change is not None and change.reason == "first-contact" and sup.mode is SupervisionMode.NORMAL
    assert sup.evaluate(T0 + 10 * S) is not None and sup.mode is SupervisionMode.SAFE


def test_a_clock_stepped_back_never_lifts_safe_mode():
    sup = Supervision(6 * S, T0)
    sup.evaluate(T0 + 6 * S)
    assert sup.evaluate(T0) is None and sup.mode is SupervisionMode.SAFE


def test_times_must_be_aware_and_the_timeout_positive():
    with pytest.raises(ValueError):
        Supervision(timedelta(0), T0)
    with pytest.raises(ValueError):
        Supervision(6 * S, datetime(2026, 1, 1))


events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-3000, 9000)),  # clock moves, ms (backwards too)
        st.tuples(st.just("contact"), st.integers(-3000, 20000)),  # a contact, deadline = now + ms
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(timeout_ms=st.one_of(st.none(), st.integers(1, 10000)), steps=events)
def test_never_out_of_safe_mode_without_a_fresh_contact_whose_deadline_is_in_the_future(timeout_ms, steps):
    timeout = timedelta(milliseconds=timeout_ms) if timeout_ms is not None else None
    sup = Supervision(timeout, T0)
    now = T0
    entries = 0
    for kind, ms in steps:
        before = sup.mode
        if kind == "tick":
            now = now + timedelta(milliseconds=ms)
            change = sup.evaluate(now)
            # Only a contact lifts safe mode: evaluating never leaves it, whatever the clock does.
            assert not (before is SupervisionMode.SAFE and sup.mode is not SupervisionMode.SAFE)
        else:
            deadline = now + timedelta(milliseconds=ms)
            change = sup.contact(deadline, "op", now)
            if before is SupervisionMode.SAFE and sup.mode is not SupervisionMode.SAFE:
                assert deadline > now and sup.deadline is not None and sup.deadline > now
            if timeout is not None:
                assert sup.deadline is not None and sup.deadline <= now + timeout  # never more than the spec allows
        # Never late: right after any step, normal mode means the deadline is still ahead.
        if sup.mode is SupervisionMode.NORMAL:
            assert sup.deadline is not None and now < sup.deadline
        if sup.mode is SupervisionMode.UNSUPERVISED:
            assert timeout is None and sup.contacts == 0
        # Every change is reported once, and is a real change.
        assert (change is not None) == (sup.mode is not before)
        if change is not None and change.mode is SupervisionMode.SAFE:
            entries += 1
    assert entries <= len(steps)


# --- the headers ---------------------------------------------------------------------


def test_headers_carry_the_contact():
    deadline, who = contact_from_headers({
        contract.HEADER_SUPERVISOR: "phasegate-7d9f-abcde",
        contract.HEADER_SUPERVISION_DEADLINE: "2026-03-02T14:00:06.250Z",
    })
    assert who == "phasegate-7d9f-abcde" and deadline == T0 + timedelta(seconds=6.25)
    assert contact_from_headers({"Accept": "text/plain"}) is None


@pytest.mark.parametrize("headers, names", [
    ({contract.HEADER_SUPERVISOR: "op"}, contract.HEADER_SUPERVISION_DEADLINE),
    ({contract.HEADER_SUPERVISION_DEADLINE: "2026-03-02T14:00:06Z"}, contract.HEADER_SUPERVISOR),
    ({contract.HEADER_SUPERVISOR: "op", contract.HEADER_SUPERVISION_DEADLINE: "tomorrow"}, "RFC 3339"),
    ({contract.HEADER_SUPERVISOR: "op", contract.HEADER_SUPERVISION_DEADLINE: "2026-03-02T14:00:06"}, "UTC"),
])
def test_unreadable_headers_are_not_a_contact_and_say_why(headers, names):
    with pytest.raises(BadContact, match=names):
        contact_from_headers(headers)


# --- reduce-only ---------------------------------------------------------------------


@pytest.mark.parametrize("signed, position, pending, ok", [
    ("-10", "100", "0", True), ("-100", "100", "0", True), ("-101", "100", "0", False),  # flip: new exposure
    ("10", "100", "0", False), ("5", "-10", "0", True), ("-5", "-10", "0", False),
    ("-10", "0", "0", False), ("-10", "100", "-95", False), ("-5", "100", "-95", True), ("0", "100", "0", False),
])
def test_reduce_only_is_towards_zero_counting_working_orders(signed, position, pending, ok):
    assert reduces_exposure(Decimal(signed), Decimal(position), Decimal(pending)) is ok


# --- the order gate in safe mode ----------------------------------------------------


def gated(timeout: timedelta | None = 6 * S):
    clock = ManualClock(T0)
    broker = PaperBroker(clock, Ledger(Decimal("1000000")), CostModel())
    broker.on_bar({"ABC": Decimal(100)}, {"ABC": Decimal(10**6)}, clock.now())
    metrics, log = StrategyMetrics(), Log()
    guard = SupervisionGuard(Supervision(timeout, clock.now()), metrics, log, on_safe=lambda: len(broker.cancel_all()))
    gate = OrderGate(broker, BreakerBoard(), metrics, clock, log, supervision=guard)
    return clock, broker, metrics, log, guard, gate


def sample(metrics: StrategyMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_safe_mode_refuses_new_exposure_allows_reduce_only_and_cancels_working_orders():
    clock, broker, metrics, log, guard, gate = gated()
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(100))) is not None
    clock.advance(timedelta(milliseconds=100))
    broker.process()
    assert broker.positions() == {"ABC": Decimal(100)}
    working = gate.submit(OrderRequest("ABC", Side.BUY, Decimal(50)))
    assert working is not None and broker.open_orders()

    clock.advance(6 * S)  # the start's deadline passes, no contact came
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(1))) is None  # refused at the order itself
    assert not broker.open_orders()  # the working buy was cancelled on entry
    [entry] = log.events("supervision.safe_mode")
    assert entry["reason"] == "no-contact-since-start" and entry["cancelled_orders"] == 1
    assert sample(metrics, contract.M_SUPERVISION_SAFE_MODE) == 1
    assert sample(metrics, contract.M_SUPERVISION_SAFE_MODE_ENTRIES) == 1
    assert gate.submit(OrderRequest("ABC", Side.SELL, Decimal(101))) is None  # would turn short: new exposure
    assert gate.submit(OrderRequest("ABC", Side.SELL, Decimal(40))) is not None  # reduce-only goes through
    assert gate.submit(OrderRequest("ABC", Side.SELL, Decimal(61))) is None  # 40 working: only 60 left to reduce
    refusals = [kw for _, e, kw in log.lines if e == "orders.refused"]
    assert len(refusals) == 1 and "supervision" in refusals[0]["reason"]  # one line per episode

    guard.on_scrape({contract.HEADER_SUPERVISOR: "op-b",
                     contract.HEADER_SUPERVISION_DEADLINE: isoformat(clock.now() + 6 * S)}, clock.now())
    assert sample(metrics, contract.M_SUPERVISION_SAFE_MODE) == 0
    assert sample(metrics, contract.M_SUPERVISION_SAFE_MODE_EXITS) == 1
    assert sample(metrics, contract.M_SUPERVISION_DEADLINE) == (clock.now() + 6 * S).timestamp()
    assert log.events("supervision.restored")[0]["supervisor"] == "op-b"
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(1))) is not None


def test_orders_refused_in_safe_mode_are_never_sent_so_they_do_not_trip_the_order_rate_breaker():
    clock, broker, metrics, log, guard, gate = gated()
    clock.advance(6 * S)
    for _ in range(1000):  # a strategy that keeps asking, every bar
        assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(1))) is None
    assert not gate.breakers.tripped and gate.refused == 1000
    assert sample(metrics, contract.M_ORDERS_SUBMITTED) == 0


def test_a_scrape_without_headers_or_with_bad_ones_is_no_contact():
    clock, broker, metrics, log, guard, gate = gated()
    clock.advance(5 * S)
    guard.on_scrape({"Accept": "text/plain"}, clock.now())  # a readiness probe, a Prometheus
    guard.on_scrape({contract.HEADER_SUPERVISOR: "op", contract.HEADER_SUPERVISION_DEADLINE: "soon"}, clock.now())
    guard.on_scrape({contract.HEADER_SUPERVISOR: "op", contract.HEADER_SUPERVISION_DEADLINE: "soon"}, clock.now())
    assert len(log.events("supervision.bad_contact")) == 1
    clock.advance(1 * S)
    guard.on_scrape({"Accept": "text/plain"}, clock.now())
    assert guard.safe and log.events("supervision.safe_mode")[0]["reason"] == "no-contact-since-start"


def test_unsupervised_the_gate_is_as_it_was():
    clock, broker, metrics, log, guard, gate = gated(timeout=None)
    clock.advance(timedelta(days=30))
    assert gate.submit(OrderRequest("ABC", Side.BUY, Decimal(10))) is not None
    assert not log.lines and sample(metrics, contract.M_SUPERVISION_SAFE_MODE) == 0


# --- the pod environment and the metrics server ------------------------------------


def test_the_timeout_comes_from_the_pod_env(tmp_path):
    assert load_config(pod_env(tmp_path)).supervision_timeout is None
    assert load_config(pod_env(tmp_path, **{contract.ENV_SUPERVISION_TIMEOUT: "90s"})).supervision_timeout == 90 * S
    for bad in ("ninety", "0s"):
        with pytest.raises(ConfigError) as err:
            load_config(pod_env(tmp_path, **{contract.ENV_SUPERVISION_TIMEOUT: bad}))
        assert contract.ENV_SUPERVISION_TIMEOUT in str(err.value)


def test_the_exposition_answering_a_supervised_scrape_already_shows_its_effect():
    clock = ManualClock(T0)
    metrics, log = StrategyMetrics(), Log()
    guard = SupervisionGuard(Supervision(6 * S, T0), metrics, log)
    clock.advance(7 * S)
    guard.check(clock.now())

    async def go() -> str:
        server = MetricsServer(metrics, "127.0.0.1", 0, on_scrape=lambda h: guard.on_scrape(h, clock.now()))
        await server.start()
        try:
            headers = {contract.HEADER_SUPERVISOR: "op",
                       contract.HEADER_SUPERVISION_DEADLINE: isoformat(clock.now() + 6 * S)}
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/metrics",
                                                           headers=headers) as r:
                return await r.text()
        finally:
            await server.stop()

    text = asyncio.run(go())
    assert f"{contract.M_SUPERVISION_SAFE_MODE} 0.0" in text
    assert f"{contract.M_SUPERVISION_SAFE_MODE_EXITS} 1.0" in text


def test_the_demo_process_goes_to_safe_mode_when_nobody_supervises_it(tmp_path, demo_processes):
    demo = DemoProcess.start(pod_env(tmp_path, **{contract.ENV_SUPERVISION_TIMEOUT: "2s"}), "--bar-seconds", "0.1")
    demo_processes.append(demo)
    started = demo.event("runtime.started")
    assert started["supervision_timeout_s"] == 2.0
    entry = demo.event("supervision.safe_mode", timeout=60)
    assert entry["reason"] == "no-contact-since-start" and entry["strategy"] == "momentum"
    url = started["metrics"].replace("/metrics", "/healthz")
    assert json.loads(urllib.request.urlopen(url, timeout=5).read())["supervision"] == "safe"
    assert demo.terminate() == 0
