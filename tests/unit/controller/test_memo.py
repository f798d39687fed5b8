"""The loop's memory of its own writes (controller.reconcile.Memo): which body is news, and
how a write by someone else is combined with what was decided but not written yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from phasegate.api.status import Condition, MetricsHealth, StrategyStatus
from phasegate.controller.cache import pod_view, statefulset_view
from phasegate.controller.reconcile import Memo

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


def body(rv: str, status: StrategyStatus, generation: int = 1) -> dict:
    return {"metadata": {"name": "s", "namespace": "ns", "uid": "u", "resourceVersion": rv, "generation": generation},
            "spec": {}, "status": {**status.wire(), "kopfOwned": {"x": 1}}}


def test_first_load_reads_the_body_and_ignores_fields_of_others():
    st = StrategyStatus(phase="paper")
    memo = Memo()
    status, rv = memo.load(body("10", st), T0)
    assert status.phase == "paper" and rv == "10"
    assert "kopfOwned" not in memo.persisted_wire


def test_our_own_write_echoed_back_or_a_lagging_copy_is_not_news():
    memo = Memo()
    written = StrategyStatus(phase="paper")
    memo.load(body("10", written), T0)
    ahead = written.model_copy(update={"metrics": MetricsHealth(last_attempt_at=T0 + timedelta(seconds=5))})
    memo.wrote(written, written.wire(), "10", "11", T0)
    memo.status = ahead  # decided, not written yet (volatile)
    for rv in ("10", "11"):  # kopf's copy before our write, and our write itself
        assert memo.is_own(rv)
        status, base = memo.load(body(rv, written), T0)
        assert status is ahead and base == "11"
    assert not memo.is_own("12")


def test_a_foreign_write_wins_its_fields_and_keeps_our_unwritten_ones():
    memo = Memo()
    written = StrategyStatus(phase="paper", metrics=MetricsHealth(last_attempt_at=T0))
    memo.load(body("10", written), T0)
    memo.status = written.model_copy(update={"metrics": MetricsHealth(last_attempt_at=T0 + timedelta(seconds=30))})
    breaker = Condition(type="CircuitBreakerTripped", status="True", reason="Alert", last_transition_time=T0)
    theirs = written.model_copy(update={"conditions": [breaker]})
    status, base = memo.load(body("12", theirs), T0)
    assert base == "12"
    assert status.is_true("CircuitBreakerTripped")  # theirs
    assert status.metrics.last_attempt_at == T0 + timedelta(seconds=30)  # ours, not written yet
    assert memo.persisted.is_true("CircuitBreakerTripped") and memo.persisted.metrics.last_attempt_at == T0


def test_a_field_both_changed_is_theirs():
    memo = Memo()
    written = StrategyStatus(phase="paper", metrics=MetricsHealth(last_attempt_at=T0))
    memo.load(body("10", written), T0)
    memo.status = written.model_copy(update={"metrics": MetricsHealth(last_attempt_at=T0 + timedelta(seconds=30))})
    other = written.model_copy(update={"metrics": MetricsHealth(last_attempt_at=T0 + timedelta(seconds=50))})
    status, _ = memo.load(body("12", other), T0)
    assert status.metrics.last_attempt_at == T0 + timedelta(seconds=50)


def test_a_spec_edit_alone_keeps_the_decided_status():
    memo = Memo()
    written = StrategyStatus(phase="paper")
    memo.load(body("10", written), T0)
    ahead = written.model_copy(update={"metrics": MetricsHealth(last_attempt_at=T0 + timedelta(seconds=5))})
    memo.status = ahead
    status, base = memo.load(body("13", written, generation=2), T0)
    assert status is ahead and base == "13"


def test_views_read_the_raw_json():
    pod = pod_view({"metadata": {"name": "s-0", "uid": "p", "annotations": {"phasegate.dev/phase": "live-10",
                                                                          "phasegate.dev/capital": "100000", "x": "y"}},
                    "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}})
    assert pod.readable and pod.read().phase == "live-10" and str(pod.read().capital) == "100000"
    assert "x" not in pod.notes
    gone = pod_view({"metadata": {"name": "s-0", "deletionTimestamp": "2026-11-02T14:00:00Z"},
                     "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}})
    assert not gone.readable
    sts = statefulset_view({"metadata": {"name": "s", "generation": 3, "annotations": {"phasegate.dev/desired-key": "k"}},
                            "spec": {"replicas": 1},
                            "status": {"observedGeneration": 3, "currentRevision": "a", "updateRevision": "b",
                                       "updatedReplicas": 0}})
    assert sts.rolling and sts.replicas == 1 and sts.desired_key == "k"
    done = statefulset_view({"metadata": {"name": "s", "generation": 3}, "spec": {"replicas": 1},
                             "status": {"observedGeneration": 3, "currentRevision": "b", "updateRevision": "b",
                                        "updatedReplicas": 1}})
    assert not done.rolling


def test_a_replaced_pod_answers_for_its_name_not_the_one_being_deleted():
    from phasegate.controller.cache import PodView, first

    old = PodView(name="s-0", uid="old", ip="10.0.0.7", ready=True, deleting=True)
    new = PodView(name="s-0", uid="new", ip="10.0.0.8", ready=False)
    assert first([old, new]) is new and first([new, old]) is new
    assert first([old]) is old and first(None) is None and first([]) is None


def test_a_late_event_from_before_our_last_write_neither_regresses_nor_wedges_the_memo():
    """kopf's stream can deliver someone's earlier patch (rv 1200) after our own write (1288)
    returned: that body is stale, and the next write is still based on 1288. A 409 makes the
    memo forget its writes, so the fresh body after it is read as news, not as an echo."""
    memo = Memo()
    first = StrategyStatus(phase="paper")
    memo.load(body("1100", first), T0)
    ours_ = first.model_copy(update={"phase": "live-10"})
    memo.wrote(ours_, ours_.wire(), "1100", "1288", T0)
    older = first.model_copy(update={"message": "kopf finalizer era"})
    assert memo.is_stale("1200")
    status, base = memo.load(body("1200", older), T0)
    assert status is ours_ and base == "1288"
    memo.forget_writes()
    status, base = memo.load(body("1288", ours_), T0)
    assert base == "1288" and status.phase == "live-10"
    assert not Memo().is_stale("5") and not memo.is_stale("abc")
