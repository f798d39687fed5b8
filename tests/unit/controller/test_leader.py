"""The leader elector against an in-memory Lease with resourceVersion semantics, a fake
clock and fake latency: acquisition, renewal, takeover only after expiry, fencing before
expiry, optimistic concurrency, release; the Kube write fence; the loop skipping while
not leading; the watchdog."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Optional
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.controller import handlers, leader
from phasegate.controller.kube import Kube
from phasegate.controller.leader import (
    ElectionSettings,
    LeaderElector,
    LeaseConflict,
    LeaseRecord,
    NotLeading,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeLeases:
    """One Lease; every call may take `latency` seconds of the shared clock; a candidate
    may be cut off (its calls fail) to model a partition."""

    def __init__(self, clock: Clock, latency: float = 0.0) -> None:
        self.clock = clock
        self.latency = latency
        self.rec: Optional[LeaseRecord] = None
        self.rv = 0
        self.writes: list[str] = []

    def store_for(self, who: str, cut: Optional[set[str]] = None) -> Any:
        fake = self

        class Store:
            async def _hop(self) -> None:
                await asyncio.sleep(0)
                fake.clock.advance(fake.latency)
                if cut is not None and who in cut:
                    raise ConnectionError("partitioned")

            async def get(self) -> Optional[LeaseRecord]:
                await self._hop()
                return fake.rec

            async def create(self, record: LeaseRecord) -> LeaseRecord:
                await self._hop()
                if fake.rec is not None:
                    raise LeaseConflict("exists")
                return fake._put(record, who)

            async def update(self, record: LeaseRecord) -> LeaseRecord:
                await self._hop()
                if fake.rec is None or record.resource_version != fake.rec.resource_version:
                    raise LeaseConflict("resourceVersion")
                return fake._put(record, who)

        return Store()

    def _put(self, record: LeaseRecord, who: str) -> LeaseRecord:
        self.rv += 1
        self.rec = replace(record, resource_version=str(self.rv))
        self.writes.append(who)
        return self.rec


def _settings(identity: str, **kw: Any) -> ElectionSettings:
    base = dict(identity=identity, namespace="ns", lease_duration=4.0, renew_deadline=3.0, retry_period=0.5)
    return ElectionSettings(**{**base, **kw})


def _elector(leases: FakeLeases, clock: Clock, identity: str, cut: Optional[set[str]] = None, **kw: Any) -> LeaderElector:
    is_dead = kw.pop("is_dead", lambda fp: False)
    return LeaderElector(
        leases.store_for(identity, cut), _settings(identity, **kw), monotonic=clock.mono, wall=clock.wall,
        is_dead=is_dead, fingerprint=f"fp-{identity}",
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_settings_need_duration_above_deadline_above_retry():
    for bad in [(4, 4, 1), (4, 5, 1), (4, 3, 3), (4, 3, 0)]:
        with pytest.raises(ValueError):
            _settings("a", lease_duration=bad[0], renew_deadline=bad[1], retry_period=bad[2])
    with pytest.raises(ValueError):
        ElectionSettings(identity="", namespace="ns")
    assert ElectionSettings(identity="a", namespace="ns").lease_duration == 15.0


def test_a_lone_candidate_creates_the_lease_and_leads_at_once():
    clock, leases = Clock(), FakeLeases(Clock())
    leases.clock = clock
    a = _elector(leases, clock, "a")
    started: list[str] = []
    a.on_started.append(lambda: started.append("a"))
    assert not a.leading()
    assert run(a.step()) is True
    assert a.leading() and started == ["a"]
    assert leases.rec is not None and leases.rec.holder == "a" and leases.rec.duration == 4
    assert leases.rec.transitions == 0 and leases.rec.process == "fp-a"


def test_the_holder_renews_and_a_standby_waits_while_it_does():
    clock = Clock()
    leases = FakeLeases(clock)
    a, b = _elector(leases, clock, "a"), _elector(leases, clock, "b")

    async def scenario() -> None:
        await a.step()
        for _ in range(20):
            clock.advance(0.5)
            await a.step()
            await b.step()
            assert a.leading() and not b.leading()
            assert b.holder == "a"

    run(scenario())
    assert leases.rec is not None and leases.rec.holder == "a" and leases.rec.transitions == 0


def test_a_standby_takes_an_expired_lease_only_after_the_old_leader_stopped_acting():
    clock = Clock()
    leases = FakeLeases(clock)
    cut: set[str] = set()
    a, b = _elector(leases, clock, "a", cut), _elector(leases, clock, "b", cut)
    stopped: list[float] = []
    a.on_stopped.append(lambda: stopped.append(clock.t))

    async def scenario() -> float:
        await a.step()
        t_renew = clock.t
        cut.add("a")  # a can no longer reach the apiserver
        while True:
            clock.advance(0.1)
            a_leads = a.observe()
            await a.step()
            if await b.step():
                assert not a_leads and not a.leading(), "both leading"
                return clock.t - t_renew
            if clock.t - t_renew > 10:
                raise AssertionError("b never took over")

    took_over_after = run(scenario())
    assert 4.0 < took_over_after <= 4.0 + 0.1 + 1e-9  # the lease duration, not the renew deadline
    assert stopped and stopped[0] - 1000.0 <= 3.0 + 0.1 + 1e-9  # a stopped at its renew deadline
    assert leases.rec is not None and leases.rec.holder == "b" and leases.rec.transitions == 1
    with pytest.raises(NotLeading):
        a.check("patch_status", "ns/x")
    b.check("patch_status", "ns/x")


def test_a_frozen_leader_is_fenced_the_moment_it_resumes():
    clock = Clock()
    leases = FakeLeases(clock)
    a = _elector(leases, clock, "a")
    run(a.step())
    assert a.leading()
    clock.advance(3.0)  # SIGSTOP for the renew deadline: the monotonic clock ran on
    assert not a.leading()
    with pytest.raises(NotLeading):
        a.check("apply", "StatefulSet ns/x")


def test_two_candidates_racing_for_an_expired_lease_never_both_win():
    clock = Clock()
    leases = FakeLeases(clock)
    leases.rec = LeaseRecord("old", 4, clock.wall(), clock.wall() - timedelta(seconds=60), 3, "", "7")
    leases.rv = 7
    a, b = _elector(leases, clock, "a"), _elector(leases, clock, "b")

    async def both() -> list[bool]:
        return list(await asyncio.gather(a.step(), b.step()))  # both read rv 7, both replace with it

    results = run(both())
    assert sorted(results) == [False, True]
    assert [a.leading(), b.leading()].count(True) == 1
    assert leases.rec is not None and leases.rec.transitions == 4 and len(leases.writes) == 1


def test_a_free_lease_is_taken_at_once_and_a_fresh_one_is_not():
    clock = Clock()
    leases = FakeLeases(clock)
    leases.rec = LeaseRecord("", 1, None, clock.wall(), 2, "", "1")
    a = _elector(leases, clock, "a")
    assert run(a.step()) is True and leases.rec.transitions == 3
    b = _elector(leases, clock, "b")
    assert run(b.step()) is False and not b.leading()


def test_a_dead_holder_process_does_not_make_the_successor_wait():
    clock = Clock()
    leases = FakeLeases(clock)
    a = _elector(leases, clock, "a")
    run(a.step())
    b = _elector(leases, clock, "b", is_dead=lambda fp: fp == "fp-a")
    assert run(b.step()) is True
    c = _elector(leases, clock, "c", is_dead=lambda fp: fp == "fp-a", dead_holder_check=False)
    leases.rec = replace(leases.rec, holder="a", process="fp-a")
    assert run(c.step()) is False  # with the check off it waits out the lease


def test_seeing_another_holder_stops_acting_at_once():
    clock = Clock()
    leases = FakeLeases(clock)
    a = _elector(leases, clock, "a")
    run(a.step())
    assert leases.rec is not None
    leases.rec = replace(leases.rec, holder="intruder", resource_version="99")
    run(a.step())
    assert not a.leading() and a.holder == "intruder"


def test_release_stops_acting_and_lets_a_standby_in_at_once():
    clock = Clock()
    leases = FakeLeases(clock)
    a, b = _elector(leases, clock, "a"), _elector(leases, clock, "b")
    run(a.step())
    assert run(b.step()) is False
    run(a.release())
    assert not a.leading()
    assert leases.rec is not None and leases.rec.holder == "" and leases.rec.duration == 1
    assert run(b.step()) is True


def test_a_failed_renewal_is_not_a_renewal_and_the_deadline_counts_from_the_attempt_start():
    clock = Clock()
    leases = FakeLeases(clock, latency=1.2)  # each call takes 1.2s: an attempt (get + update) 2.4s
    a = _elector(leases, clock, "a")
    start = clock.t
    assert run(a.step()) is True
    assert clock.t == pytest.approx(start + 2.4)
    clock.advance(0.59)
    assert a.leading()  # 2.99s after the attempt started
    clock.advance(0.02)
    assert not a.leading()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["step", "step", "step", "advance", "advance", "cut", "heal", "freeze", "release"]),
            st.integers(0, 2),
            st.floats(0.0, 2.5),
        ),
        min_size=5,
        max_size=80,
    ),
    st.floats(0.0, 0.4),
)
def test_never_two_leaders_at_once(actions, latency):
    """Random steps, clock jumps (a freeze), partitions and releases of three candidates:
    at no instant do two of them pass `leading()`."""
    clock = Clock()
    leases = FakeLeases(clock, latency=latency)
    cut: set[str] = set()
    electors = [_elector(leases, clock, n, cut) for n in "abc"]

    def check() -> None:
        assert sum(e.leading() for e in electors) <= 1, [(e.identity, e.leading()) for e in electors]

    async def scenario() -> None:
        for action, i, dt in actions:
            e = electors[i]
            if action == "step":
                await e.step()
            elif action == "advance":
                clock.advance(dt)
            elif action == "freeze":
                clock.advance(dt * 3)
            elif action == "cut":
                cut.add(e.identity)
            elif action == "heal":
                cut.discard(e.identity)
            elif action == "release":
                await e.release()
            check()

    run(scenario())


# --------------------------------------------------------------------------- the Kube fence


def test_kube_writes_are_refused_before_any_request_when_not_leading():
    api = mock.MagicMock()
    calls: list[tuple[str, str]] = []

    def fence(op: str, target: str) -> None:
        calls.append((op, target))
        raise NotLeading(op)

    kube = Kube(api, fence=fence)
    for name in ("custom", "apps", "core", "batch", "events", "networking"):
        setattr(kube, name, mock.AsyncMock())

    async def all_writes() -> None:
        with pytest.raises(NotLeading):
            await kube.patch_status("ns", "s", {"phase": "x"}, "1")
        with pytest.raises(NotLeading):
            await kube.apply({"kind": "StatefulSet", "metadata": {"namespace": "ns", "name": "s"}})
        with pytest.raises(NotLeading):
            await kube.scale_statefulset("ns", "s", 0)
        with pytest.raises(NotLeading):
            await kube.create_job({"metadata": {"namespace": "ns", "name": "j"}})
        with pytest.raises(NotLeading):
            await kube.delete_network_policy("ns", "s")
        with pytest.raises(NotLeading):
            await kube.create_event(namespace="ns", name="s", uid="u" * 8, event_name="e", reason="r", note="n",
                                    action="a", event_type="Normal", at=EPOCH)

    run(all_writes())
    assert [op for op, _ in calls] == ["patch_status", "apply", "scale", "create_job", "delete", "create_event"]
    for client in (kube.custom, kube.apps, kube.batch, kube.networking, kube.events):
        assert not client.method_calls, client


def test_the_alert_receiver_path_is_not_fenced():
    clock = Clock()
    a = _elector(FakeLeases(clock), clock, "a")
    with pytest.raises(NotLeading):
        a.check()
    with leader.unfenced():
        a.check()
    with pytest.raises(NotLeading):
        a.check()


# --------------------------------------------------------------------------- the loop and the watchdog


class _Stopped:
    def __init__(self) -> None:
        self.flag = False

    def __bool__(self) -> bool:
        return self.flag


def test_the_loop_skips_while_not_leading_and_evaluates_at_once_on_becoming_leader(monkeypatch):
    body = {"metadata": {"namespace": "ns", "name": "s", "uid": "u"}, "spec": {}}
    leading = {"now": False}
    passes: list[bool] = []
    stopped = _Stopped()

    class FakeReconciler:
        kube = None

        async def reconcile(self, current, *, read_metrics, **_):
            passes.append(read_metrics)
            return None, None

    monkeypatch.setattr(handlers, "RECONCILER", FakeReconciler())
    monkeypatch.setattr(handlers, "LEADING", lambda ns, name: leading["now"])
    monkeypatch.setattr(handlers, "STANDBY_POLL", 0.05)
    monkeypatch.setattr(handlers, "_interval", lambda spec, body: 30.0)

    async def scenario() -> None:
        task = asyncio.create_task(handlers.strategy_loop(
            body=body, namespace="ns", name="s", stopped=stopped,
            phasegate_pods={}, phasegate_statefulsets={}, phasegate_networkpolicies={}))
        await asyncio.sleep(0.3)
        assert passes == []  # a standby never reconciles
        leading["now"] = True
        handlers.wake_all()
        await asyncio.sleep(0.05)
        assert passes == [True]  # at once, and as an evaluation (metrics read)
        assert handlers.LOOPS[("ns", "s")].last_evaluation is not None
        handlers.wake("ns", "s")
        await asyncio.sleep(0.05)
        assert passes == [True, False]  # an event pass
        leading["now"] = False
        handlers.wake("ns", "s")
        await asyncio.sleep(0.1)
        assert passes == [True, False]
        stopped.flag = True
        handlers.wake("ns", "s")
        await asyncio.wait_for(task, 2)

    run(scenario())
    assert ("ns", "s") not in handlers.LOOPS


def test_the_watchdog_names_strategies_not_evaluated_for_three_intervals(monkeypatch):
    monkeypatch.setattr(handlers, "LOOPS", {})
    fresh, late, new = handlers.Loop(), handlers.Loop(), handlers.Loop()
    fresh.interval = late.interval = new.interval = 10.0
    fresh.started = late.started = 0.0
    fresh.last_evaluation, late.last_evaluation = 95.0, 69.0
    new.started = 80.0
    handlers.LOOPS.update({("ns", "fresh"): fresh, ("ns", "late"): late, ("ns", "new"): new})
    stale = handlers.stale_loops(lambda ns, n: 0.0, now=100.0)
    assert len(stale) == 1 and stale[0].startswith("ns/late:")
    # counted from when this process became leader at the earliest
    assert handlers.stale_loops(lambda ns, n: 90.0, now=100.0) == []
    assert len(handlers.stale_loops(lambda ns, n: 0.0, now=111.0)) == 2


# --------------------------------------------------------------------------- `phasegate status`: the holder line


def test_status_shows_the_lease_holder_and_skips_an_unreadable_lease():
    from phasegate.cli import main as cli_main
    from phasegate.cli import render

    now = EPOCH + timedelta(seconds=100)
    lease = {"metadata": {"namespace": "ops", "name": "phasegate-leader"},
             "spec": {"holderIdentity": "phasegate-7d9-x", "renewTime": "2026-01-01T00:01:38.000000Z",
                      "leaseDurationSeconds": 15}}
    text = render.leader_line(lease, now).plain
    assert text.startswith("operator leader: phasegate-7d9-x (lease ops/phasegate-leader, renewed 2s ago")
    assert "expired" not in text
    late = render.leader_line(dict(lease, spec=dict(lease["spec"], renewTime="2026-01-01T00:00:00Z")), now).plain
    assert "expired" in late
    assert "none" in render.leader_line({"spec": {"holderIdentity": ""}}, now).plain

    class K:
        def __init__(self, where):
            self.where, self.asked = where, []

        def _call(self, method, path):
            self.asked.append(path.split("/namespaces/")[1].split("/")[0])
            if f"/namespaces/{self.where}/" not in path:
                raise RuntimeError("404")
            return lease

    k = K("phasegate-system")
    assert cli_main._leader_lease(k, "trading") == lease and k.asked == ["trading", "phasegate-system"]
    assert cli_main._leader_lease(K("elsewhere"), "trading") is None
    assert cli_main._leader_lease(object(), "trading") is None  # a fake without the transport
