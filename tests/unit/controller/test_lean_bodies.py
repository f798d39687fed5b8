"""managedFields never reach kopf's memory of an object, nor the strategy loops; our own
status writes echoed back update kopf's copy without going through kopf again."""

from __future__ import annotations

import asyncio
import functools
import inspect
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from kopf._cogs.structs.finalizers import block_deletion
from kopf._cogs.structs.patches import Patch
from kopf._core.reactor import processing, running
from kopf._core.reactor.inventory import ResourceMemories

from phasegate.api import StrategyStatus, contract
from phasegate.controller import handlers, lean_bodies, telemetry


def test_the_wrapped_processor_sees_the_event_without_managed_fields(monkeypatch):
    seen: list[dict[str, Any]] = []

    async def original(*args: Any, raw_event: Any, **kwargs: Any) -> str:
        seen.append(raw_event)
        return f"{args}/{sorted(kwargs)}"

    monkeypatch.setattr(processing, "process_resource_event", original)
    assert lean_bodies.install()
    assert lean_bodies.install()  # twice: wrapped once
    wrapped = processing.process_resource_event
    assert wrapped is not original
    event = {"type": "MODIFIED", "object": {"metadata": {"name": "s", "resourceVersion": "7",
                                                         "managedFields": [{"manager": "x"}]}, "spec": {"a": 1}}}
    out = asyncio.run(wrapped("lifecycle", raw_event=event, stream_pressure=None))
    assert out == "('lifecycle',)/['stream_pressure']"
    assert seen == [{"type": "MODIFIED", "object": {"metadata": {"name": "s", "resourceVersion": "7"}, "spec": {"a": 1}}}]
    # Events without a body (kopf's own bookmarks, errors) pass untouched.
    asyncio.run(wrapped(raw_event={"type": "ERROR", "object": None}))
    assert seen[-1] == {"type": "ERROR", "object": None}


def test_kopf_looks_the_processor_up_when_the_operator_starts():
    """If a kopf upgrade bound the processor at import time, the wrapper would be silently
    skipped: this fails then, and lean_bodies must hook in elsewhere."""
    source = inspect.getsource(running.spawn_tasks)
    assert "processing.process_resource_event" in source


# Our own status writes echoed back: applied to kopf's copy, not processed again.

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def strategy(rv: str, status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": f"{contract.GROUP}/{contract.VERSION}", "kind": contract.KIND,
            "metadata": {"namespace": "desk", "name": "momo", "uid": "u1", "resourceVersion": rv, "generation": 3,
                         "finalizers": ["phasegate.dev/kopf-finalizer"], **meta},
            "spec": {"capital": "1000000"}, "status": status}


class Harness:
    """kopf's real memory of one strategy a daemon runs for, our loop's memo, and a processor
    standing for kopf's whole path."""

    def __init__(self, monkeypatch):
        self.processed: list[dict[str, Any]] = []

        async def original(*args: Any, raw_event: Any, **kwargs: Any) -> str:
            self.processed.append(raw_event)
            return "kopf"

        monkeypatch.setattr(processing, "process_resource_event", original)
        monkeypatch.setattr(handlers, "LOOPS", {})
        assert lean_bodies.install(own_echo=handlers.own_echo)
        self.wrapped = processing.process_resource_event
        self.memories = ResourceMemories()
        self.loop = handlers.loop_for("desk", "momo")
        base = strategy("10", {"phase": "live-10"})
        self.memory = asyncio.run(self.memories.recall(base))
        self.memory.daemons_memory.live_fresh_body = kopf.Body(base)
        self.loop.memo.load(base, NOW)
        self.written = {"phase": "live-35"}
        self.loop.memo.wrote(StrategyStatus.model_validate(self.written), self.written, "10", "11", NOW)

    def deliver(self, event_type: str, obj: dict[str, Any]) -> Any:
        return asyncio.run(self.wrapped(raw_event={"type": event_type, "object": obj}, memories=self.memories,
                                        memobase=None, stream_pressure=None))

    @property
    def live(self) -> dict[str, Any]:
        return self.memory.daemons_memory.live_fresh_body._src


def test_the_echo_of_our_own_write_only_replaces_kopfs_copy(monkeypatch):
    h = Harness(monkeypatch)
    before = telemetry.OWN_ECHOES._value.get()
    echo = strategy("11", {"phase": "live-35"})
    assert h.deliver("MODIFIED", echo) is None
    assert h.processed == [], "kopf's path is not taken for our own write"
    assert h.live["metadata"]["resourceVersion"] == "11"
    assert "status" not in h.live and h.live[lean_bodies.STATUS_ELIDED] == "11", "one copy of the status: the loop's"
    assert h.loop.memo.vouches_for(h.live), "the loop decides from its memo for this body"
    assert h.loop.memo.load(h.live, NOW)[0].phase == "live-35"
    assert telemetry.OWN_ECHOES._value.get() == before + 1


@pytest.mark.parametrize("why, event_type, obj", [
    ("someone else's write", "MODIFIED", strategy("12", {"phase": "live-35"})),
    ("a deletion under way", "MODIFIED", strategy("11", {"phase": "live-35"}, deletionTimestamp="2026-12-01T00:00:00Z")),
    ("a finalizer removed", "MODIFIED", {**strategy("11", {"phase": "live-35"}), "metadata": {
        **strategy("11", {})["metadata"], "finalizers": []}}),
    ("a spec edit", "MODIFIED", {**strategy("11", {"phase": "live-35"}), "spec": {"capital": "5"}}),
    ("a status field not ours", "MODIFIED", strategy("11", {"phase": "live-35", "kopf": {"x": 1}})),
    ("the object deleted", "DELETED", strategy("11", {"phase": "live-35"})),
    ("a listing", None, strategy("11", {"phase": "live-35"})),
])
def test_anything_else_takes_kopfs_whole_path(monkeypatch, why, event_type, obj):
    h = Harness(monkeypatch)
    assert h.deliver(event_type, obj) == "kopf", why
    assert h.processed and h.processed[0]["object"] is obj


def test_a_body_loaded_from_the_apiserver_is_not_an_echo(monkeypatch):
    """After a 409 the pass GETs the strategy: the version it loads is someone's write kopf
    has not processed yet (a deletion, perhaps), not ours."""
    h = Harness(monkeypatch)
    fresh = strategy("15", {"phase": "live-35"})
    h.loop.memo.forget_writes()
    h.loop.memo.load(fresh, NOW)
    assert h.loop.memo.persisted_rv == "15"
    assert h.deliver("MODIFIED", strategy("15", {"phase": "live-35"})) == "kopf"


def test_without_a_daemon_keeping_the_body_kopf_processes_it(monkeypatch):
    h = Harness(monkeypatch)
    h.memory.daemons_memory.live_fresh_body = None
    assert h.deliver("MODIFIED", strategy("11", {"phase": "live-35"})) == "kopf"


def test_an_echo_kopf_cannot_compare_with_what_it_holds_takes_its_path(monkeypatch):
    """kopf's copy older than the write's base (it lagged behind a GET): not only status moved."""
    h = Harness(monkeypatch)
    h.memory.daemons_memory.live_fresh_body = kopf.Body(strategy("9", {"phase": "paper"}, generation=2))
    assert h.deliver("MODIFIED", strategy("11", {"phase": "live-35"})) == "kopf"


def test_an_echo_while_kopf_has_a_patch_to_retry_takes_its_path(monkeypatch):
    """kopf's finalizer is a JSON patch conditional on the resourceVersion it saw; our first
    write races it, and kopf keeps what failed to retry on the next event it processes."""
    h = Harness(monkeypatch)
    h.memory.remaining_patch = Patch(fns=[functools.partial(block_deletion, finalizer="phasegate.dev/kopf-finalizer")])
    assert h.deliver("MODIFIED", strategy("11", {"phase": "live-35"})) == "kopf"
    h.memory.remaining_patch = None  # kopf's retry went through
    nxt = {"phase": "live-65"}
    h.loop.memo.wrote(StrategyStatus.model_validate(nxt), nxt, "11", "12", NOW)
    h.memory.daemons_memory.live_fresh_body._replace_with(strategy("11", {"phase": "live-35"}))
    assert h.deliver("MODIFIED", strategy("12", {"phase": "live-65"})) is None


def test_consecutive_own_writes_are_each_absorbed(monkeypatch):
    h = Harness(monkeypatch)
    assert h.deliver("MODIFIED", strategy("11", {"phase": "live-35"})) is None
    nxt = {"phase": "live-65"}
    h.loop.memo.wrote(StrategyStatus.model_validate(nxt), nxt, "11", "12", NOW)
    assert h.deliver("MODIFIED", strategy("12", {"phase": "live-65"})) is None
    assert h.processed == [] and h.live[lean_bodies.STATUS_ELIDED] == "12" and "status" not in h.live


def test_kopf_still_has_what_the_short_path_uses():
    """The short path reads kopf's memory of the object; if an upgrade moved it, these fail
    and lean_bodies must follow (absorb falls back to kopf's path when they are missing)."""
    source = inspect.getsource(processing)
    assert "memories: inventory.ResourceMemories" in source and "memobase: ephemera.AnyMemo" in source
    assert "live_fresh_body._replace_with(raw_body)" in source
    assert hasattr(kopf.Body({}), "_src") and hasattr(kopf.Body({}), "_replace_with")
