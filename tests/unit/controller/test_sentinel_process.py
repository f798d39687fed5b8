"""The halt sentinel's two pipes: the deadlines it acts by (the election's own), and the
records the operator's guard reads before each check (the process itself against a real
apiserver: tests/e2e/test_sentinel_e2e.py)."""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_sentinel import event, tripped

from phasegate.controller import telemetry
from phasegate.controller.leader import ElectionSettings, LeaderElector
from phasegate.controller.sentinel import Sentinel
from phasegate.controller.sentinel_process import (
    Lines,
    ParentLink,
    SentinelProcess,
    acts,
    count_line,
    no_election,
    stopped_line,
    until_line,
)
from phasegate.controller.shards import ShardElection, shard_of


def test_lines_come_out_whole_however_the_stream_is_cut():
    data = stopped_line(("desk", "momo"), "30") + count_line("scaled") + stopped_line(("desk", "momo"), None)
    for cut in range(len(data) + 1):
        lines = Lines()
        got = lines.feed(data[:cut]) + lines.feed(data[cut:])
        assert got == [["stopped", "desk", "momo", "30"], ["count", "scaled"], ["gone", "desk", "momo"]]


def pipe_link(now: float) -> tuple[ParentLink, int, int]:
    r, w = os.pipe()
    back_r, back_w = os.pipe()
    os.set_blocking(r, False)
    return ParentLink(r, back_w, clock=lambda: now), w, back_r


def test_the_sentinel_acts_by_the_deadlines_it_was_sent_and_on_nothing_before_them():
    link, w, back = pipe_link(now=100.0)
    try:
        assert not link.leading("desk", "momo"), "no deadlines yet: it acts on nothing"
        os.write(w, until_line([math.inf]))
        link.on_readable()
        assert link.leading("desk", "momo"), "no election: it acts on everything"
        os.write(w, until_line([99.0]))
        link.on_readable()
        assert not link.leading("desk", "momo"), "the deadline has passed"
        os.write(w, b"until garbage\n")
        link.on_readable()
        assert link.deadlines == [] and not link.leading("desk", "momo"), "unreadable: it acts on nothing"
        os.close(w)
        link.on_readable()
        assert link.gone.is_set(), "end of file: the operator is gone"
    finally:
        for fd in (link.read_fd, link.write_fd, back):
            os.close(fd)


@given(deadlines=st.lists(st.floats(0, 200), min_size=1, max_size=8), now=st.floats(0, 200),
       name=st.text("abcdefghij-", min_size=1, max_size=12))
def test_a_strategy_is_acted_on_by_its_own_shards_deadline(deadlines: list[float], now: float, name: str):
    assert acts(deadlines, "desk", name, now) == (now < deadlines[shard_of("desk", name, len(deadlines))])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def elector(clock: Clock) -> LeaderElector:
    settings = ElectionSettings(identity="me", namespace="ops", name="lease", lease_duration=15.0,
                                renew_deadline=10.0, retry_period=2.0)
    return LeaderElector(store=None, settings=settings, monotonic=clock)  # type: ignore[arg-type]


@given(renewed=st.one_of(st.none(), st.floats(0, 100)), after=st.floats(-20, 30),
       name=st.text("abcdefghij-", min_size=1, max_size=12))
def test_the_deadlines_say_what_the_electors_predicate_says(renewed: Any, after: float, name: str):
    # `now` near the renewal: the deadlines and the predicate part ways, if ever, within seconds of it.
    now = (renewed or 50.0) + after
    clock = Clock()
    one = elector(clock)
    one._renewed_at, clock.now = renewed, now
    assert acts(one.acting_until(), "desk", "momo", now) == one.leading()
    # A sharded replica: each strategy by its own shard's lease.
    sharded = ShardElection.__new__(ShardElection)
    sharded.shards = 3
    sharded.electors = [elector(clock) for _ in range(3)]
    sharded.electors[shard_of("desk", name, 3)]._renewed_at = renewed
    assert acts(sharded.acting_until(), "desk", name, now) == sharded.leading_for("desk", name)


def test_the_guard_reads_what_the_sentinel_wrote_before_it_answers():
    proc = SentinelProcess(namespace=None, identity="t", deadlines=no_election())
    r, w = os.pipe()
    os.set_blocking(r, False)
    proc._from = r
    try:
        assert proc.stopped_at("desk", "momo") is None
        os.write(w, stopped_line(("desk", "momo"), "30"))
        assert proc.stopped_at("desk", "momo") == "30", "read at the check, not by a later poll"
        before = telemetry.REGISTRY.get_sample_value("phasegate_sentinel_halts_total", {"result": "scaled"}) or 0.0
        os.write(w, count_line("scaled") + stopped_line(("desk", "momo"), None))
        assert proc.stopped_at("desk", "momo") is None, "a deleted strategy is forgotten"
        assert telemetry.REGISTRY.get_sample_value("phasegate_sentinel_halts_total", {"result": "scaled"}) == before + 1
    finally:
        os.close(r)
        os.close(w)


def test_the_record_goes_out_before_the_write():
    order: list[str] = []

    class Recording(Sentinel):
        async def scale_down(self, api: Any, key: Any, rv: str, what: str) -> None:
            order.append(f"write {rv}")

    async def nothing(*_: Any) -> None:
        return None

    sentinel = Recording(nothing, nothing, namespace=None, leading=lambda ns, name: True,
                         record=lambda key, rv: order.append(f"record {rv}"), count=lambda result: None)
    asyncio.run(sentinel.on_event(None, event(status=tripped())))
    asyncio.run(sentinel.on_event(None, event(rv="31", status=tripped())))
    assert order == ["record 30", "write 30"], "recorded first, and the same trip acted on once"
    asyncio.run(sentinel.on_event(None, event("DELETED")))
    assert order[-1] == "record None", "a deleted strategy is forgotten on the operator's side"
