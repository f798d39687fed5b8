"""managedFields never reach kopf's memory of an object, nor the strategy loops."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from kopf._core.reactor import processing, running

from phasegate.controller import lean_bodies


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
