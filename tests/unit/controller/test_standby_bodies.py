"""Strategies this replica stands by for are kept as metadata only (lean_bodies.elide); the
loop that begins acting on one reads it fresh first (handlers.readable, controller/fresh.py),
and an elided body is never reconciled as a strategy without a status."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Optional

import pytest
from kopf._core.reactor import processing

from phasegate.api import StrategyStatus, contract
from phasegate.controller import handlers, lean_bodies, telemetry
from phasegate.controller.fresh import FreshBodies
from phasegate.controller.reconcile import ElidedBody, Memo, Reconciler

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def strategy(rv: str, name: str = "momo", namespace: str = "desk", **status: Any) -> dict[str, Any]:
    return {"apiVersion": f"{contract.GROUP}/{contract.VERSION}", "kind": contract.KIND,
            "metadata": {"namespace": namespace, "name": name, "uid": "u1", "resourceVersion": rv, "generation": 3,
                         "finalizers": ["phasegate.dev/kopf-finalizer"], "annotations": {"a": "b"},
                         "managedFields": [{"manager": "x"}]},
            "spec": {"capital": "1000000"}, "status": {"phase": "live-65", **status}}


@pytest.fixture
def wrapped(monkeypatch):
    """The installed processor, with `standby` the strategies this replica stands by for."""
    processed: list[dict[str, Any]] = []
    standby: set[tuple[str, str]] = set()

    async def original(*args: Any, raw_event: Any, **kwargs: Any) -> str:
        processed.append(raw_event)
        return "kopf"

    def echo(obj: dict[str, Any]) -> Optional[dict[str, Any]]:
        return {"phase": "live-65"}  # as if every event were our own write echoed back

    monkeypatch.setattr(processing, "process_resource_event", original)
    assert lean_bodies.install(own_echo=echo, standing_by=lambda ns, name: (ns, name) in standby)
    yield processing.process_resource_event, processed, standby
    lean_bodies.install()


def deliver(wrapped: Any, obj: dict[str, Any], event_type: Optional[str] = "MODIFIED") -> Any:
    return asyncio.run(wrapped(raw_event={"type": event_type, "object": obj}, memories=None, stream_pressure=None))


def test_a_strategy_this_replica_stands_by_for_reaches_kopf_as_metadata_only(wrapped):
    process, processed, standby = wrapped
    standby.add(("desk", "momo"))
    before = telemetry.ELIDED_BODIES._value.get()
    obj = strategy("41")
    assert deliver(process, obj) == "kopf", "kopf still handles it (finalizers, deletion), never as an echo"
    kept = processed[0]["object"]
    assert "spec" not in kept and "status" not in kept
    assert kept[lean_bodies.ELIDED] == "41" and lean_bodies.elided(kept)
    assert kept["metadata"] == {k: v for k, v in strategy("41")["metadata"].items() if k != "managedFields"}
    assert telemetry.ELIDED_BODIES._value.get() == before + 1
    for event_type in (None, "ADDED", "DELETED"):  # a listing, a creation, a deletion: the same
        processed.clear()
        deliver(process, strategy("42"), event_type)
        assert lean_bodies.elided(processed[0]["object"]), event_type


def test_strategies_it_acts_on_and_other_kinds_are_kept_whole(wrapped):
    process, processed, standby = wrapped
    standby.add(("desk", "other"))
    pod = {"kind": "Pod", "metadata": {"namespace": "desk", "name": "other"}, "spec": {"x": 1}}
    assert deliver(process, pod) == "kopf" and processed[-1]["object"]["spec"] == {"x": 1}
    obj = strategy("7")
    deliver(process, obj)  # not stood by: kept whole (and absorbed or not, as before)
    assert "spec" in obj and "status" in obj and not lean_bodies.elided(obj)


def test_an_elided_body_is_never_reconciled():
    """Read as a strategy it would have no status: a strategy halted at live-65 would start over."""
    body = strategy("9")
    lean_bodies.elide(body)
    with pytest.raises(ElidedBody):
        Memo().load(body, NOW)
    memo = Memo()
    memo.load(strategy("8", phase="live-65"), NOW)
    with pytest.raises(ElidedBody):  # not even with a memo that could vouch for it
        memo.load(body, NOW)

    class NoKube:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"an elided body made the pass call kube.{name}")

    reconciler = Reconciler(NoKube(), source_for=lambda spec: None)  # type: ignore[arg-type]
    with pytest.raises(ElidedBody):
        asyncio.run(reconciler.reconcile(body, memo=Memo(), trigger="interval", read_metrics=True, pod=None, sts=None))


class Reader:
    def __init__(self, bodies: dict[tuple[str, str], dict[str, Any]], fail: Optional[Exception] = None) -> None:
        self.bodies = bodies
        self.fail = fail
        self.gets: list[tuple[str, str]] = []
        self.lists: list[str] = []

    async def get_strategy(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        self.gets.append((namespace, name))
        if self.fail:
            raise self.fail
        return self.bodies.get((namespace, name))

    async def list_strategies(self, namespace: str, page: int = 500) -> Any:
        self.lists.append(namespace)
        items = [b for (ns, _), b in sorted(self.bodies.items()) if ns == namespace]
        for i, item in enumerate(items):
            if self.fail and i == 1:  # fails mid-listing: what was listed is answered
                raise self.fail
            await asyncio.sleep(0)
            yield item


def fleet(n: int, namespace: str = "desk") -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, f"s{i}"): strategy(str(100 + i), f"s{i}", namespace) for i in range(n)}


def test_a_takeover_reads_many_strategies_of_a_namespace_with_one_list():
    bodies = {**fleet(30), **fleet(3, "other")}
    reader = Reader(bodies)

    async def main() -> list[Any]:
        fresh = FreshBodies(reader, window=0.01, many=20)
        asks = [fresh.get(ns, name) for ns, name in [*bodies, ("desk", "gone")]]
        return await asyncio.gather(*asks)

    got = asyncio.run(main())
    assert reader.lists == ["desk"], "one LIST for the namespace with many asks"
    assert sorted(reader.gets) == [("other", "s0"), ("other", "s1"), ("other", "s2")], "a GET each for the few"
    assert [g["metadata"]["name"] for g in got[:-1]] == [name for _, name in bodies]
    assert got[-1] is None, "not listed: deleted"
    assert all("managedFields" not in g["metadata"] for g in got[:-1])


def test_a_failed_list_fails_the_asks_it_did_not_answer():
    reader = Reader(fleet(25), fail=RuntimeError("504"))

    async def main() -> list[Any]:
        fresh = FreshBodies(reader, window=0.01, many=20)
        return await asyncio.gather(*(fresh.get(*key) for key in reader.bodies), return_exceptions=True)

    got = asyncio.run(main())
    assert isinstance(got[0], dict) and all(isinstance(g, RuntimeError) for g in got[1:])


def test_a_cancelled_ask_does_not_disturb_the_round_and_later_asks_get_a_round_of_their_own():
    reader = Reader(fleet(3))

    async def main() -> tuple[Any, Any]:
        fresh = FreshBodies(reader, window=0.01, many=20)
        cancelled = asyncio.ensure_future(fresh.get("desk", "s0"))
        kept = asyncio.ensure_future(fresh.get("desk", "s1"))
        await asyncio.sleep(0)
        cancelled.cancel()
        first = await kept
        second = await fresh.get("desk", "s2")
        return first, second

    first, second = asyncio.run(main())
    assert first["metadata"]["name"] == "s1" and second["metadata"]["name"] == "s2"


class Fresh:
    def __init__(self, body: Optional[dict[str, Any]]) -> None:
        self.body = body
        self.calls: list[str] = []

    async def get(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        self.calls.append("get")
        return self.body

    async def now(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        self.calls.append("now")
        return self.body


def test_the_loop_reads_an_elided_strategy_fresh_and_keeps_it_until_kopf_has_a_newer_one(monkeypatch):
    me = handlers.Loop()
    fresh = Fresh(strategy("20"))
    monkeypatch.setattr(handlers, "FRESH", fresh)

    def elided(rv: str) -> dict[str, Any]:
        body = strategy(rv)
        lean_bodies.elide(body)
        return body

    def readable(body: dict[str, Any], at_once: bool = False) -> Optional[dict[str, Any]]:
        return asyncio.run(handlers.readable(me, body, "desk", "momo", at_once=at_once))

    assert readable(elided("18"))["metadata"]["resourceVersion"] == "20" and fresh.calls == ["get"]
    assert readable(elided("20"))["spec"] and fresh.calls == ["get"], "nothing newer: the read is kept"
    fresh.body = strategy("23")
    assert readable(elided("22"), at_once=True)["metadata"]["resourceVersion"] == "23"
    assert fresh.calls == ["get", "now"], "newer than the read: read again, at once for an urgent pass"
    whole = strategy("24")
    assert readable(whole) is whole and me.fetched is None, "kopf has the body whole again: the read is dropped"
    fresh.body = None
    assert readable(elided("25")) is None, "gone"


def test_a_loop_standing_by_forgets_its_memo_and_its_read():
    me = handlers.Loop()
    me.memo.load(strategy("8", phase="live-65"), NOW)
    me.fetched = strategy("8")
    handlers.stand_by(me)
    assert me.memo.status is None and me.fetched is None


# After our own write kopf keeps the body without its status (lean_bodies.STATUS_ELIDED): the
# loop's memo vouches for it, and nothing else may read it as a strategy.


def echoed(rv: str) -> dict[str, Any]:
    body = strategy(rv)
    body.pop("status")
    body[lean_bodies.STATUS_ELIDED] = rv
    return body


def written_memo() -> Memo:
    memo = Memo()
    memo.load(strategy("30", phase="live-65"), NOW)
    wire = {"phase": "live-65", "eventsPostedSeq": 4}
    memo.wrote(StrategyStatus.model_validate(wire), wire, "30", "31", NOW)
    return memo


def test_a_memo_vouches_only_for_its_own_writes_and_older_copies():
    memo = written_memo()
    assert memo.vouches_for(echoed("31")) and memo.vouches_for(echoed("30")) and memo.vouches_for(echoed("29"))
    assert memo.load(echoed("31"), NOW)[0].events_posted_seq == 4
    assert not memo.vouches_for(echoed("32"))
    with pytest.raises(ElidedBody):  # newer than our write: someone's, with a status we do not have
        memo.load(echoed("32"), NOW)
    memo.forget_writes()  # a 409: what the apiserver holds is unknown
    with pytest.raises(ElidedBody):
        memo.load(echoed("31"), NOW)
    with pytest.raises(ElidedBody):  # a loop that stood by starts with an empty memo
        Memo().load(echoed("31"), NOW)


def test_the_written_status_is_kept_as_json_and_read_back_whole():
    memo = written_memo()
    assert memo.persisted_json == '{"phase":"live-65","eventsPostedSeq":4}'
    assert memo.persisted_wire == {"phase": "live-65", "eventsPostedSeq": 4}
    assert memo.persisted_wire is not memo.persisted_wire, "a copy each time: nothing can edit what is written"
    assert Memo().persisted_wire == {} and not Memo().persisted_json


def test_a_loop_whose_memo_cannot_vouch_for_an_echoed_body_reads_it_fresh(monkeypatch):
    me = handlers.Loop()
    me.memo = written_memo()
    fresh = Fresh(strategy("33"))
    monkeypatch.setattr(handlers, "FRESH", fresh)

    def readable(body: dict[str, Any]) -> Optional[dict[str, Any]]:
        return asyncio.run(handlers.readable(me, body, "desk", "momo", at_once=True))

    body = echoed("31")
    assert readable(body) is body and fresh.calls == [], "the memo vouches: no read"
    me.memo.forget_writes()
    got = readable(echoed("31"))
    assert got["metadata"]["resourceVersion"] == "33" and fresh.calls == ["now"]
    assert me.memo.load(got, NOW)[0].phase == "live-65"
