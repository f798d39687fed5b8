"""SIGTERM runs the guide's shutdown sequence, in order, each step one JSON log line."""

from __future__ import annotations

import asyncio
import json

import pytest

from phasegate.sdk.backtest import NullLog
from phasegate.sdk.shutdown import (
    STEP_ORDER,
    ShutdownSequence,
    ShutdownStep,
)

from .helpers import DemoProcess, pod_env

EXPECTED = [
    "stop_accepting_orders",
    "cancel_pending_orders",
    "write_final_checkpoint",
    "close_broker_connection",
    "flush_logs",
]


class Recorder:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append({"event": event, "level": level, **kw})


def steps(ran: list, fail: str | None = None, hang: str | None = None):
    def action(name):
        async def run():
            ran.append(name)
            if name == fail:
                raise RuntimeError("boom")
            if name == hang:
                await asyncio.sleep(3600)
            return {"did": name}
        return run
    return [ShutdownStep(name, action(name)) for name in STEP_ORDER]


def test_the_documented_names_are_the_step_constants():
    assert list(STEP_ORDER) == EXPECTED


def test_steps_run_in_order_and_each_logs_one_line():
    ran, log = [], Recorder()
    assert asyncio.run(ShutdownSequence(steps(ran), log).run("SIGTERM")) is True
    assert ran == EXPECTED
    lines = [l for l in log.lines if l["event"] == "shutdown.step"]
    assert [(l["step"], l["index"], l["status"]) for l in lines] == [(n, i, "ok") for i, n in enumerate(EXPECTED, 1)]
    assert log.lines[0]["event"] == "shutdown.begin" and log.lines[-1]["event"] == "shutdown.complete"


def test_a_failing_step_is_logged_and_the_checkpoint_is_still_written():
    ran, log = [], Recorder()
    assert asyncio.run(ShutdownSequence(steps(ran, fail="cancel_pending_orders"), log).run("SIGTERM")) is False
    assert ran == EXPECTED
    statuses = {l["step"]: l["status"] for l in log.lines if l["event"] == "shutdown.step"}
    assert statuses["cancel_pending_orders"] == "failed" and statuses["write_final_checkpoint"] == "ok"
    assert log.lines[-1]["status"] == "degraded"


def test_a_hanging_step_cannot_eat_the_grace_period():
    ran, log = [], Recorder()
    sequence = ShutdownSequence(steps(ran, hang="stop_accepting_orders"), log, budget_seconds=0.5)
    asyncio.run(asyncio.wait_for(sequence.run("SIGTERM"), timeout=5))
    assert sequence.ran[0] == ("stop_accepting_orders", "timeout")
    assert [s for s, _ in sequence.ran] == EXPECTED
    assert all(status == "ok" for _, status in sequence.ran[1:])


def test_steps_out_of_order_are_refused():
    with pytest.raises(ValueError):
        ShutdownSequence(list(reversed(steps([]))), NullLog())


def test_sigterm_on_the_demo_runs_the_sequence_in_order(tmp_path, demo_processes):
    demo = DemoProcess.start(pod_env(tmp_path, mode="paper"), "--bar-seconds", "0.05")
    demo_processes.append(demo)
    demo.event("runtime.started")
    demo.event("engine.first_fill")  # trading, with orders in flight
    assert demo.terminate() == 0
    lines = demo.lines
    steps_logged = [l for l in lines if l.get("event") == "shutdown.step"]
    assert [l["step"] for l in steps_logged] == EXPECTED
    assert [l["index"] for l in steps_logged] == [1, 2, 3, 4, 5]
    assert all(l["status"] == "ok" and l["strategy"] == "momentum" for l in steps_logged)
    events = [l["event"] for l in lines]
    assert events.index("shutdown.requested") < events.index("shutdown.begin") < events.index("shutdown.step")
    assert events[-1] == "shutdown.complete"
    # Nothing traded after the gate closed: no order line follows the first step.
    after = lines[lines.index(steps_logged[0]):]
    assert not [l for l in after if l.get("event") in ("order.rejected", "breaker.tripped")]
    checkpoint = json.loads((tmp_path / "checkpoints" / "momentum.checkpoint.json").read_text())
    assert checkpoint["sequence"] == steps_logged[2]["sequence"]
    assert checkpoint["state"]["books"]["paper"]["local"] == checkpoint["state"]["books"]["paper"]["broker"]


def test_a_restarted_demo_restores_its_checkpoint(tmp_path, demo_processes):
    env = pod_env(tmp_path, mode="paper")
    first = DemoProcess.start(env, "--bar-seconds", "0.05")
    demo_processes.append(first)
    first.event("engine.first_fill")
    assert first.terminate() == 0
    written = [l for l in first.lines if l.get("step") == "write_final_checkpoint"][0]["sequence"]
    saved = json.loads((tmp_path / "checkpoints" / "momentum.checkpoint.json").read_text())["state"]

    second = DemoProcess.start(env, "--bar-seconds", "0.05")
    demo_processes.append(second)
    restored = second.event("checkpoint.restored")
    assert restored["sequence"] == written
    started = second.event("runtime.started")
    assert started["restored_sequence"] == written
    assert second.terminate() == 0
    again = json.loads((tmp_path / "checkpoints" / "momentum.checkpoint.json").read_text())["state"]
    assert again["market"]["index"] > saved["market"]["index"]  # the same market, continued


def test_a_corrupt_checkpoint_stops_the_start(tmp_path):
    from .helpers import run_demo

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "momentum.checkpoint.json").write_text('{"format": 1, "state": {')
    code, lines, _ = run_demo(pod_env(tmp_path, mode="paper"))
    assert code == 1
    assert lines[-1]["event"] == "checkpoint.corrupt" and "move" in lines[-1]["fix"]
    assert "not a readable checkpoint" in (tmp_path / "termination-log").read_text()
