"""The halt sentinel's reading of watch events, and how the loop and the pass defer to what
it did (its writes against a real apiserver: tests/e2e/test_sentinel_e2e.py)."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import pytest

from phasegate.api import contract
from phasegate.controller import handlers, main
from phasegate.controller.sentinel import halt_due, signature


def event(kind: str = "MODIFIED", rv: str = "30", status: Optional[dict[str, Any]] = None, **meta: Any) -> dict[str, Any]:
    return {"type": kind, "object": {
        "apiVersion": f"{contract.GROUP}/{contract.VERSION}", "kind": contract.KIND,
        "metadata": {"namespace": "desk", "name": "momo", "resourceVersion": rv, **meta},
        "status": status if status is not None else {}}}


def tripped(at: str = "2026-03-02T14:00:00Z", holds: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    return {"conditions": [{"type": "CircuitBreakerTripped", "status": "True", "reason": "AlertFiring",
                            "lastTransitionTime": at}], "holds": holds or []}


def test_a_new_breaker_condition_is_due_and_nothing_else_is():
    assert halt_due(event(status=tripped())) == (("desk", "momo"), "30", "CircuitBreakerTripped")
    assert halt_due(event("ADDED", status=tripped())) is not None, "found on the first list too"
    assert halt_due(event("DELETED", status=tripped())) is None
    assert halt_due(event("BOOKMARK", status=tripped())) is None
    assert halt_due(event(status={})) is None
    answered = tripped(holds=[{"kind": "Halt", "id": "#4", "cause": "CircuitBreakerTripped"}])
    assert halt_due(event(status=answered)) is None, "already latched: the pod is stopped by the halt"
    off = {"conditions": [{"type": "CircuitBreakerTripped", "status": "False"}]}
    assert halt_due(event(status=off)) is None
    other = event(status=tripped())
    other["object"]["kind"] = "StatefulSet"
    assert halt_due(other) is None


def test_a_condition_set_again_later_is_a_new_trip():
    first = signature(event(status=tripped("2026-03-02T14:00:00Z"))["object"], "CircuitBreakerTripped")
    same = signature(event(rv="31", status=tripped("2026-03-02T14:00:00Z"))["object"], "CircuitBreakerTripped")
    again = signature(event(rv="40", status=tripped("2026-03-02T15:00:00Z"))["object"], "CircuitBreakerTripped")
    assert first == same and first != again


class Fresh:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body, self.calls = body, 0

    async def now(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls += 1
        return self.body


def test_a_pass_never_decides_from_a_body_older_than_the_one_the_sentinel_acted_on(monkeypatch):
    newer = event(rv="30", status=tripped())["object"]
    fresh = Fresh(newer)
    monkeypatch.setattr(handlers, "FRESH", fresh)
    stopped: dict[tuple[str, str], str] = {}
    monkeypatch.setattr(handlers, "SENTINEL_STOPPED", lambda ns, name: stopped.get((ns, name)))
    me = handlers.Loop()

    def readable(rv: str) -> dict[str, Any]:
        body = event(rv=rv)["object"]
        got = asyncio.run(handlers.readable(me, body, "desk", "momo", at_once=False))
        assert got is not None
        return got

    assert readable("28")["metadata"]["resourceVersion"] == "28" and fresh.calls == 0, "nothing stopped: kopf's body"
    stopped[("desk", "momo")] = "30"
    assert readable("28")["metadata"]["resourceVersion"] == "30" and fresh.calls == 1, "older: read fresh"
    assert readable("29")["metadata"]["resourceVersion"] == "30" and fresh.calls == 1, "the read is kept"
    assert readable("30")["metadata"]["resourceVersion"] == "30" and me.fetched is None, "kopf caught up"


def test_the_setting_names_itself_and_its_values():
    assert main.halt_sentinel_enabled("") and main.halt_sentinel_enabled("true")
    assert not main.halt_sentinel_enabled("false") and not main.halt_sentinel_enabled("off")
    with pytest.raises(SystemExit, match="PHASEGATE_HALT_SENTINEL='maybe': set it to true or false"):
        main.halt_sentinel_enabled("maybe")
