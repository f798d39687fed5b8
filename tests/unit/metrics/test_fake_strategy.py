"""The e2e test strategy, run as a real subprocess on 127.0.0.1 and scraped by the real source."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from phasegate.metrics import MetricsUnavailable, ScrapeSource, ScrapeTarget

FAKE = Path(__file__).resolve().parents[2] / "support" / "fake_strategy.py"
NOW = datetime(2024, 3, 11, 14, 30, tzinfo=UTC)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHASEGATE_", "FAKE_"))}
    env.update(extra)
    return env


class Running:
    def __init__(self, port: int, **env: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE)],
            env=_env(PHASEGATE_POD_IP="127.0.0.1", PHASEGATE_METRICS_PORT=str(port), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake strategy did not start: {self.proc.communicate()}") from None
                time.sleep(0.05)

    def control(self, **body) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/control", data=json.dumps(body).encode(), method="POST"
        )
        return json.loads(urllib.request.urlopen(req, timeout=5).read())

    def scrape(self, timeout: float = 2.0):
        t = ScrapeTarget(namespace="ns", strategy="s", pod="s-0", pod_ip="127.0.0.1", port=self.port,
                         now=NOW, timeout_seconds=timeout)
        return asyncio.run(ScrapeSource().read(t))

    def stop(self) -> tuple[int, list[dict]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=15)
        return self.proc.returncode, [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def fake(free_port):
    r = Running(free_port, PHASEGATE_MODE="paper", PHASEGATE_CAPITAL_FRACTION="0", FAKE_TICK_SECONDS="0.05")
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def test_healthy_defaults_then_controlled_values_then_graceful_sigterm(fake):
    snap = fake.scrape()
    assert snap.portfolio_value == Decimal("1000000")
    assert snap.cash == Decimal("500000")
    assert snap.largest_position_fraction == Decimal("0.02")
    assert snap.signal_alignment == Decimal("0.99")
    assert snap.execution_quality == Decimal("0.95")
    assert snap.position_discrepancy == 0
    assert snap.breaker_trips == {}
    assert snap.orders_submitted == snap.orders_filled

    fake.control(tick=False)
    before = fake.scrape()
    fake.control(
        portfolio_value="900000", orders_submitted_inc=5, errors_inc=2, breaker_trip="drawdown",
        latency_observe=[0.2, 0.3], signal_alignment=None,
    )
    after = fake.scrape()
    assert after.portfolio_value == Decimal("900000")
    assert after.orders_submitted - before.orders_submitted == 5
    assert after.orders_filled == before.orders_filled
    assert after.errors - before.errors == 2
    assert after.breaker_trips == {"drawdown": Decimal(1)}
    assert after.order_latency.count - before.order_latency.count == 2
    assert after.signal_alignment is None

    fake.control(reset_counters=True)
    assert fake.scrape().orders_submitted == 0

    fake.control(fail=True)
    with pytest.raises(MetricsUnavailable, match="HTTP 500"):
        fake.scrape()
    fake.control(fail=False, garbage=True)
    with pytest.raises(MetricsUnavailable):
        fake.scrape()
    fake.control(garbage=False, hang_seconds=1)
    with pytest.raises(MetricsUnavailable, match="timeout"):
        fake.scrape(timeout=0.2)
    fake.control(hang_seconds=0)

    code, lines = fake.stop()
    assert code == 0
    start = lines[0]
    assert start["event"] == "start"
    assert start["env"]["PHASEGATE_MODE"] == "paper"
    assert start["env"]["PHASEGATE_CAPITAL_FRACTION"] == "0"
    steps = [line["step"] for line in lines if line["event"] == "shutdown.step"]
    assert steps == ["stop_accepting_orders", "cancel_pending_orders", "write_checkpoint", "close_broker", "flush_logs"]
    assert lines[-1]["event"] == "shutdown.done"


def test_ticker_submits_fills_and_observes_latency(fake):
    a = fake.scrape()
    time.sleep(0.3)
    b = fake.scrape()
    assert b.orders_submitted > a.orders_submitted
    assert b.orders_filled == b.orders_submitted
    # the fake sums floats, so the mean is 0.1 up to float rounding
    assert abs(b.order_latency.mean() - Decimal("0.1")) < Decimal("1e-9")


def test_bad_control_body_is_refused(fake):
    req = urllib.request.Request(f"http://127.0.0.1:{fake.port}/control", data=b"[1]", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400


def test_backtest_mode_writes_the_result(tmp_path, free_port):
    path = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, str(FAKE)],
        env=_env(PHASEGATE_MODE="backtest", PHASEGATE_TERMINATION_MESSAGE_PATH=str(path)),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0
    assert json.loads(path.read_text()) == {
        "sharpe": 1.8, "maxDrawdown": 0.08, "walkForwardWindows": 12, "monteCarloRuns": 1000
    }
    custom = '{"sharpe":0.4}'
    proc = subprocess.run(
        [sys.executable, str(FAKE)],
        env=_env(PHASEGATE_MODE="backtest", PHASEGATE_TERMINATION_MESSAGE_PATH=str(path), FAKE_BACKTEST_RESULT=custom),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0 and path.read_text() == custom


@pytest.mark.parametrize("code", ["0", "3"])
def test_flatten_mode(code):
    proc = subprocess.run(
        [sys.executable, str(FAKE)],
        env=_env(PHASEGATE_MODE="flatten", FAKE_FLATTEN_EXIT=code),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == int(code)
    events = [json.loads(line)["event"] for line in proc.stdout.splitlines()]
    assert "flatten" in events
