"""A stateful model of the guard: decide() and a fake cluster driven by random steps.

Hypothesis' RuleBasedStateMachine runs random sequences of time steps (forward and clock
steps back), metric reads (healthy, losing, breaching, absurd, missing, failed), the
StatefulSet controller rolling or stopping the pod, manual requests (stale, duplicated,
blank reasons, wrong halt ids), spec edits (ceiling up and down, a rung's fraction,
capital, a renamed phase, an edit the operator cannot read), externally set breaker
conditions and failed child writes. After every step it checks the safety rules, the
hold rules, history numbering and idempotence (see `check_step`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from phasegate.api import StrategySpec, StrategyStatus
from phasegate.api.observations import ChildrenObservation, MetricsSnapshot, Observation, PodRead
from phasegate.api.requests import BadRequest, Request, Verb
from phasegate.api.spec import Mode
from phasegate.api.status import STOPPING_HOLDS, Condition, HoldKind, RequestOutcome, Transition
from phasegate.controller.reconcile import spec_to_guard_with
from phasegate.policy.desired import desired_key, needs_apply, pod_runs
from phasegate.policy.external import external_halts, external_halts_wire, sentinel_stop, unanswered_stop
from phasegate.policy.holds import derive_state, newest_stopping
from phasegate.policy.rollout import Decision, decide
from phasegate.policy.timing import startup_grace

D = Decimal
T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
STATS: dict[str, int] = {"sentinel": 0, "blips": 0, "loss-checks": 0, "steps": 0, "halts": 0, "resets": 0, "live": 0,
                         "advances": 0}

BASE_SPEC: dict[str, Any] = {
    "capital": "1000000",
    "paperCapital": "1000000",
    "account": "acct-1",
    "maxFraction": 0.35,
    "template": {"image": "strategy:1"},
    "analysis": {"interval": "30s", "metricsFailure": {"pauseAfter": 3, "haltAfter": 6}},
    "terminationGracePeriod": "30s",
    "phases": [
        {"name": "paper", "mode": "paper", "minDuration": "10m", "gates": {}},
        {"name": "shadow", "mode": "shadow", "minDuration": "10m", "gates": {"minSignalAlignment": 0.95}},
        {"name": "live-10", "mode": "live", "fraction": 0.10, "minDuration": "10m", "gates": {}, "approval": "manual"},
        {"name": "live-35", "mode": "live", "fraction": 0.35, "minDuration": "10m", "gates": {}},
        {"name": "live-100", "mode": "live", "fraction": 1.0, "minDuration": "0s", "gates": {}},
    ],
    "riskLimits": {
        "maxDrawdown": {"threshold": 0.10, "action": "halt"},
        "maxDailyLoss": {"threshold": 0.05, "action": "halt"},
        "maxPositionFraction": {"threshold": 0.05, "action": "reduce"},
        "minCashFraction": {"threshold": 0.10, "action": "pause"},
    },
}


@dataclass
class Pod:
    phase: str
    mode: str
    capital: Decimal
    key: str
    ready: bool = False


@dataclass
class Cluster:
    """The StatefulSet, its pod, and the strategy's books as the SDK keeps them."""

    sts: bool = False
    replicas: int = 0
    key: str = ""
    template: Optional[tuple[str, str, Decimal]] = None
    pod: Optional[Pod] = None
    books: dict[str, list[Decimal]] = field(default_factory=dict)  # book -> [value, capital]
    refusing: bool = False  # admission refuses every new strategy pod (a policy, a quota)
    # The flow-adjusted truth per book, as the desk would compute it: [index, high-water mark, day open, day]
    truth: dict[str, list[Any]] = field(default_factory=dict)
    sentinel_stop: str = ""  # the halt sentinel's annotation on the StatefulSet

    def children(self) -> ChildrenObservation:
        return ChildrenObservation(statefulset=self.sts, replicas=self.replicas if self.sts else None,
                                   desired_key=self.key, pod=self.pod is not None, sentinel_stop=self.sentinel_stop)

    def roll(self) -> None:
        """The StatefulSet controller and kubelet: one step towards the applied template."""
        if not self.sts or self.replicas == 0:
            self.pod = None
            return
        if self.pod is not None and self.pod.key == self.key:
            self.pod.ready = True
            return
        if self.pod is not None:
            self.pod = None  # OrderedReady: the old pod goes first
            return
        if self.refusing:
            return  # the StatefulSet controller's create is refused
        assert self.template is not None
        phase, mode, capital = self.template
        book = "live" if mode == "live" else "paper"
        if book not in self.books:
            self.books[book] = [capital, capital]
            self.truth.pop(book, None)
        else:
            value, old = self.books[book]
            self.books[book] = [value + capital - old, capital]  # the SDK books the new allotment as cash
        self.pod = Pod(phase=phase, mode=mode, capital=capital, key=self.key)


def spec_of(wire: dict[str, Any]) -> StrategySpec:
    return StrategySpec.model_validate(wire)


class GuardMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.wire = json.loads(json.dumps(BASE_SPEC))
        self.spec = spec_of(self.wire)
        self.spec_error: Optional[str] = None
        self.generation = 1
        self.status = StrategyStatus()
        self.now = T0
        self.cluster = Cluster()
        self.ids = itertools.count(1)
        self.last_request: Optional[str] = None
        self.annotation: Optional[str] = None
        self.steps = 0
        self.decide_step(Observation(children=self.cluster.children()))

    series_book = ""
    approved: Optional[tuple[str, int]] = None

    def rebase_truth(self) -> None:
        for t in self.cluster.truth.values():
            t[1] = t[2] = t[0]

    # --- driving ------------------------------------------------------------------

    def children(self) -> ChildrenObservation:
        """What the controller sees, with its dry run of the pod the status asks for."""
        seen = self.cluster.children()
        c, st = self.cluster, self.status
        if c.refusing and st.phase and self.spec.phase_named(st.phase) and pod_runs(self.spec, st):
            if not (c.sts and c.pod is not None and c.key == desired_key(self.spec, st)):
                seen = replace(seen, pod_refused="admission webhook denied the request (test)")
        return seen

    def observe(self, **kw: Any) -> Observation:
        req: dict[str, Any] = {}
        if self.annotation is not None:
            try:
                req["request"] = Request.from_annotation(self.annotation)
            except BadRequest as exc:
                req = {"request_error": str(exc), "request_id": json.loads(self.annotation)["id"]}
        return Observation(children=self.children(), **req, **kw)

    def decide_step(self, obs: Observation, *, write_fails: bool = False) -> Decision:
        old = self.status
        # As the controller does: the object's spec, or the last readable one when it cannot be used.
        guard, self.spec_error = spec_to_guard_with({"spec": self.wire}, old)
        assert guard is not None
        self.spec = guard
        d = decide(self.spec, old, obs, self.now, self.generation, spec_error=self.spec_error)
        check_step(self, old, d, obs)
        check_sentinel(old, d)
        check_sentinel_stop(obs, d)
        again = decide(self.spec, d.status, obs, self.now, self.generation, spec_error=self.spec_error)
        assert not again.history, f"deciding twice added {[(e.action, e.reason) for e in again.history]} (rule 5)"
        assert again.status.wire() == d.status.wire(), "deciding twice changed the status (rule 5)"
        self.status = d.status
        self.steps += 1
        held = (d.desired is not None and d.desired.replicas == 1 and self.cluster.pod is not None
                and self.cluster.refusing and needs_apply(d.desired, obs.children))  # the dry run before a roll
        if not write_fails and not held and d.desired is not None and needs_apply(d.desired, obs.children):
            c = self.cluster
            c.sts, c.replicas, c.key = True, d.desired.replicas, d.desired.key
            phase = self.spec.phase_named(d.status.phase)
            if phase is not None and d.desired.replicas == 1:
                cap = d.status.capital if phase.mode is Mode.LIVE else (self.spec.paper_capital or self.spec.capital)
                c.template = (d.status.phase, phase.mode.value, cap)
        if not write_fails and self.cluster.sentinel_stop and not unanswered_stop(self.cluster.sentinel_stop,
                                                                                   d.status.holds):
            self.cluster.sentinel_stop = ""  # Reconciler._actuate: a halt written answers it
        if not write_fails and not held and d.desired is not None:
            # The controller applied what differed: the StatefulSet now says what the decision says.
            assert self.cluster.replicas == d.desired.replicas and (d.desired.replicas == 0 or self.cluster.key == d.desired.key)
        return d

    def read(self, pnl: Decimal, kind: str) -> Observation:
        pod = self.cluster.pod
        rid = f"r{next(self.ids)}"
        grace = startup_grace(self.spec)
        started = self.status.phase_started_at or self.now
        if kind == "error":
            return self.observe(metrics_error="connection refused", read_id=rid)
        if pod is None or not pod.ready:
            seen = self.status.metrics.phase_pod_read_at
            if self.now - started < grace and (seen is None or seen <= started):
                return self.observe(starting=True)
            return self.observe(metrics_error="strategy pod is not running and ready", read_id=rid)
        book = "live" if pod.mode == "live" else "paper"
        value, cap = self.cluster.books[book]
        graded = kind in ("ok", "position", "no-cash", "misaligned")
        if graded and (book != self.series_book or book not in self.cluster.truth):
            # The operator starts this book's series at this read: so does the truth.
            self.cluster.truth[book] = [D(1), D(1), D(1), self.now.date()]
            self.series_book = book
        elif graded:  # P&L accrues between reads the operator can grade (so the truth is exact)
            value = value * (1 + pnl)
            self.cluster.books[book] = [value, cap]
            t = self.cluster.truth[book]
            day = max(self.now.date(), t[3])
            t[0] *= 1 + pnl
            t[1] = max(t[1], t[0])
            if day > t[3]:
                t[2], t[3] = t[0], day
        fields: dict[str, Any] = dict(cash=value / 2, largest_position_fraction=D("0.01"), position_discrepancy=D(0),
                                      signal_alignment=D("0.5") if kind == "misaligned" else D("0.99"))
        shown = value
        if kind == "position":
            fields["largest_position_fraction"] = D("0.09")
        elif kind == "no-cash":
            fields.pop("cash")
        elif kind == "absurd":
            shown = D(0)
        elif kind == "negative":
            shown = D(-5)
        snap = MetricsSnapshot(taken_at=self.now, portfolio_value=shown, **fields)
        return self.observe(metrics=snap, read_id=rid, pod=PodRead(phase=pod.phase, mode=pod.mode, capital=pod.capital),
                            starting=self.now - started < grace)

    # --- rules --------------------------------------------------------------------

    @rule(ticks=st.lists(st.tuples(
              st.sampled_from([5, 30, 30, 120, 300, 600, 600, 3600]),
              st.sampled_from([D(0)] * 4 + [D("0.004"), D("-0.004"), D("0.004"), D("-0.004"), D("0.02"), D("-0.03"), D("-0.2")]),
              st.sampled_from(["ok"] * 10 + ["error", "position", "no-cash", "absurd", "negative", "misaligned", "misaligned"]),
              st.sampled_from([False] * 8 + [True]),
              st.sampled_from([0, 1, 2, 2, 2, 3])), min_size=1, max_size=6))
    def time_passes(self, ticks: list[tuple[int, Decimal, str, bool, int]]) -> None:
        """Intervals go by: the kubelet moves on, the pod trades, the operator reads and decides."""
        for seconds, pnl, kind, fails, rolls in ticks:
            self.now += timedelta(seconds=seconds)
            for _ in range(rolls):
                self.cluster.roll()
            self.decide_step(self.read(pnl, kind), write_fails=fails)

    @rule(verb=st.sampled_from([Verb.PROMOTE, Verb.PROMOTE, Verb.RESET, Verb.RESET, Verb.RESET, Verb.RESUME, Verb.RESUME,
                                Verb.PAUSE, Verb.HALT, Verb.EMERGENCY]),
          reason=st.sampled_from(["because"] * 5 + ["  "]),
          aim_at=st.sampled_from(["newest", "newest", "stale", "none"]),
          replay=st.sampled_from([False, False, True]))
    def request(self, verb: Verb, reason: str, aim_at: str, replay: bool) -> None:
        if replay and self.annotation is not None:
            self.decide_step(self.observe())  # the same annotation seen again
            return
        newest = newest_stopping(self.status.holds)
        aim = None
        if verb is Verb.RESET and aim_at == "newest" and newest is not None:
            aim = newest.id
        elif verb is Verb.RESET and aim_at == "stale":
            aim = "#1"
        rid = f"q{next(self.ids)}"
        body = {"id": rid, "action": verb.value, "reason": reason, "by": "alice", "at": self.now.isoformat()}
        if aim:
            body["target"] = aim
        if verb is Verb.EMERGENCY:
            body["severity"] = "high"
        self.annotation = json.dumps(body)
        self.last_request = rid
        self.decide_step(self.observe())

    @rule(edit=st.sampled_from(["ceiling-up", "ceiling-down", "ceiling-below-first-live", "fraction-down",
                                "capital", "rename-current", "unreadable", "fixed"]))
    def spec_edit(self, edit: str) -> None:
        w = json.loads(json.dumps(self.wire))
        if edit == "ceiling-up":
            w["maxFraction"] = 1.0
        elif edit == "ceiling-down":
            w["maxFraction"] = 0.10
        elif edit == "ceiling-below-first-live":
            w["maxFraction"] = 0.05
        elif edit == "fraction-down":
            for p in w["phases"]:
                if p["name"] == self.status.phase and p["mode"] == "live":
                    p["fraction"] = round(p["fraction"] / 2, 4)
        elif edit == "capital":
            w["capital"] = "800000" if w["capital"] == "1000000" else "1000000"
        elif edit == "rename-current":
            for p in w["phases"]:
                if p["name"] == self.status.phase:
                    p["name"] = p["name"] + "-v2"
        if edit == "unreadable":
            w.setdefault("tradingDay", {})["timeZone"] = "Mars/Olympus_Mons"  # an older CRD let it through
            self.wire = w
        else:
            w.pop("tradingDay", None)
            try:
                spec_of(w)
            except ValueError:
                return  # the apiserver refuses it: nothing changes
            self.wire = w
        self.generation += 1
        self.decide_step(self.observe())

    @rule(what=st.sampled_from(["clock-back-30s", "clock-back-10m", "clock-back-2h", "circuit-condition", "risk-condition",
                                "circuit-blip", "risk-blip", "admission-on", "admission-off", "admission-off", "rolls"]))
    def the_world_intervenes(self, what: str) -> None:
        """A clock stepped back, a breaker condition set by someone else (a person, an alert),
        an admission policy switched on or off, the StatefulSet controller moving on."""
        if what.startswith("clock-back"):
            self.now -= {"30s": timedelta(seconds=30), "10m": timedelta(minutes=10), "2h": timedelta(hours=2)}[what[11:]]
            self.decide_step(self.read(D(0), "ok"))
            return
        if what.endswith("blip"):
            # A breaker condition set and cleared again before the strategy's pass read it: the
            # halt sentinel saw it (where it was a new halt) and stopped the pod, annotating why.
            ctype = "CircuitBreakerTripped" if what.startswith("circuit") else "RiskLimitBreached"
            tripped = Condition(type=ctype, status="True", reason="AlertFiring", message="", last_transition_time=self.now)
            seen = self.status.model_copy(update={"conditions": [c for c in self.status.conditions if c.type != ctype]
                                                  + [tripped]})
            if ctype in external_halts_wire(seen.wire()) and self.cluster.sts:
                STATS["blips"] += 1
                self.cluster.replicas = 0
                self.cluster.sentinel_stop = sentinel_stop([ctype], f"{self.steps}")
                self.cluster.roll()
        elif what.endswith("condition"):
            ctype = "CircuitBreakerTripped" if what.startswith("circuit") else "RiskLimitBreached"
            conds = [c for c in self.status.conditions if c.type != ctype]
            conds.append(Condition(type=ctype, status="True", reason="AlertFiring", message="via Alertmanager",
                                   last_transition_time=self.now))
            self.status = self.status.model_copy(update={"conditions": conds})
        elif what.startswith("admission"):
            self.cluster.refusing = what == "admission-on"
        else:
            for _ in range(3):
                self.cluster.roll()
        self.decide_step(self.observe())

    @invariant()
    def state_is_derived(self) -> None:
        s = self.status
        assert s.state is derive_state(self.spec, s.phase, s.phase_index, s.holds)


def _accepted(d: Decision, old: StrategyStatus, obs: Observation, verb: Verb) -> bool:
    req = obs.request
    return (req is not None and req.verb is verb and req.id not in old.answered
            and d.status.last_request is not None and d.status.last_request.id == req.id
            and d.status.last_request.outcome is RequestOutcome.ACCEPTED)


def check_sentinel(old: StrategyStatus, d: Decision) -> None:
    """The halt sentinel stops the pod from the raw object, before any pass: only where the
    pass then decides a halt (else the pass would start it again), and it reads the rule the
    way decide() does."""
    fast = external_halts_wire(old.wire())
    assert fast == [c.type for c, _ in external_halts(old.conditions, old.holds)], "the sentinel reads another rule"
    if fast:
        STATS["sentinel"] += 1
        assert any(h.kind in STOPPING_HOLDS for h in d.status.holds), f"the sentinel stopped {fast}, the pass did not halt"
        assert d.desired is None or d.desired.replicas == 0, "the sentinel stopped a pod the pass runs"


def check_sentinel_stop(obs: Observation, d: Decision) -> None:
    """A pod the sentinel stopped stays stopped, with a halt on record for each cause it
    stopped on, even when the condition is gone by the pass (no quiet restart)."""
    stop = obs.children.sentinel_stop if obs.children is not None else ""
    if stop:
        assert not unanswered_stop(stop, d.status.holds), "the sentinel stopped the pod and no halt records why"
        assert d.desired is None or d.desired.replicas == 0, "a pod the sentinel stopped is started again"


def check_step(m: GuardMachine, old: StrategyStatus, d: Decision, obs: Observation) -> None:
    new = d.status
    spec = m.spec
    actions = [e.action for e in d.history]
    STATS["steps"] += 1
    STATS["halts"] += actions.count(Transition.HALT)
    STATS["resets"] += actions.count(Transition.RESET)
    STATS["advances"] += actions.count(Transition.ADVANCE) + actions.count(Transition.COMPLETE)
    STATS["live"] += new.capital_fraction > 0
    # History: numbered with no gaps, the newest seq recorded.
    seqs = [e.seq for e in new.history]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, f"history gaps: {seqs}"
    assert not seqs or new.history_seq == seqs[-1]
    assert [e.seq for e in d.history] == list(range(old.history_seq + 1, new.history_seq + 1))
    # Rule 2: the fraction within the rung and the ceiling.
    phase = spec.phase_named(new.phase)
    if phase is not None and not any(h.kind in STOPPING_HOLDS for h in new.holds):
        assert new.capital_fraction <= phase.fraction, f"fraction {new.capital_fraction} above {phase.name}'s {phase.fraction}"
        assert new.capital_fraction <= spec.max_fraction, f"fraction {new.capital_fraction} above maxFraction {spec.max_fraction}"
    # Rule 2: it never rises unless every gate of the old rung passed in this step.
    if new.capital_fraction > old.capital_fraction:
        assert Transition.ADVANCE in actions or Transition.COMPLETE in actions, f"fraction rose without an advance: {actions}"
        assert m.spec_error is None, "advanced on a spec the operator cannot read"
        blocking = [h for h in old.holds if h.kind is not HoldKind.APPROVAL_WAIT]
        assert not blocking, f"advanced while held: {blocking}"
        assert obs.metrics is not None and obs.pod is not None and obs.pod.phase == old.phase, \
            "advanced without a fresh read of the rung's pod"
        assert obs.metrics.portfolio_value > 0 and obs.metrics.cash is not None, \
            "advanced on a read that did not check every limit"
        old_phase = spec.phase_named(old.phase)
        assert old_phase is not None and old.phase_started_at is not None
        assert m.now - old.phase_started_at >= old_phase.min_duration_delta or (
            old.clock and old.clock - old.phase_started_at >= old_phase.min_duration_delta
        ), "advanced before the minimum duration"
        gate = old_phase.effective_gates.min_signal_alignment
        if gate is not None:
            seen = obs.metrics.signal_alignment
            assert seen is not None and seen >= gate, "advanced past a failing gate"
        if old_phase.approval.value == "manual":
            waited = any(h.kind is HoldKind.APPROVAL_WAIT and h.visit == old.visit for h in old.holds)
            assert not waited or _accepted(d, old, obs, Verb.PROMOTE), "left a manual phase without promote"
    # Rule 3 and the hold rules: each hold leaves only by its one way out.
    new_keys = {(h.kind, h.id) for h in new.holds}
    for h in old.holds:
        if (h.kind, h.id) in new_keys:
            continue
        if h.kind in STOPPING_HOLDS:
            assert _accepted(d, old, obs, Verb.RESET), f"{h.kind.value} {h.id} lifted without a reset"
            assert obs.request is not None and obs.request.target is not None
        elif h.kind in (HoldKind.MANUAL_PAUSE, HoldKind.RISK_PAUSE, HoldKind.METRICS_PAUSE):
            assert _accepted(d, old, obs, Verb.RESUME), f"{h.kind.value} {h.id} lifted without a resume"
        elif h.kind is HoldKind.APPROVAL_WAIT:
            assert _accepted(d, old, obs, Verb.PROMOTE) or new.visit > old.visit, "an approval wait vanished"
        elif h.kind is HoldKind.SPEC_INVALID:
            assert m.spec_error is None
        elif h.kind is HoldKind.FAILED:
            assert m.generation != old.observed_generation
    if any(h.kind in STOPPING_HOLDS for h in new.holds):
        assert not pod_runs(spec, new), "a halted strategy's pod is to run"
        assert d.desired is not None and d.desired.replicas == 0
    # A halt is never lifted by a reset naming an older one.
    if _accepted(d, old, obs, Verb.RESET):
        newest = newest_stopping(old.holds)
        assert newest is not None and obs.request is not None and obs.request.target is not None
        named = [
            h for h in old.holds
            if h.kind in STOPPING_HOLDS and obs.request.target.lstrip("#") in (h.id.lstrip("#"), str(h.seq))
        ]
        assert named and all(h.since <= named[0].since for h in old.holds if h.kind in STOPPING_HOLDS), \
            f"a reset naming {obs.request.target} lifted a newer halt {newest.id}"
        m.rebase_truth()
    # A request is answered exactly once; one with a blank reason never acts.
    if obs.request is not None and obs.request.id in old.answered:
        assert new.last_request == old.last_request and new.answered == old.answered
    if obs.request is None and obs.request_error:
        assert not any(e.by == "alice" for e in d.history), "an unreadable request acted"
    # An approval belongs to one phase visit: a manual phase waits for promote in every visit.
    if _accepted(d, old, obs, Verb.PROMOTE):
        m.approved = (new.phase, new.visit)
    cur = spec.phase_named(new.phase)
    if cur is not None and cur.approval.value == "manual" and new.phase_index < len(spec.phases) - 1 and m.spec_error is None:
        waits = any(h.kind is HoldKind.APPROVAL_WAIT and h.visit == new.visit for h in new.holds)
        assert waits or m.approved == (new.phase, new.visit), "a manual phase without an approval wait in this visit"
    # Every hold of this visit or kept; approvals of past visits are gone.
    assert all(h.visit == new.visit for h in new.holds if h.kind is HoldKind.APPROVAL_WAIT)
    # Risk accounting stays in range.
    b = new.risk.book
    if b is not None:
        assert b.index >= 0 and b.high_water_mark >= b.index and b.high_water_mark > 0
    # Losses: a read past a halt limit halts, in the same step; a read within limits never
    # halts on a loss limit (flow-adjusted, across rung changes, measured by the model).
    if obs.metrics is not None and obs.pod is not None and obs.metrics.portfolio_value > 0:
        book = "live" if obs.pod.mode == "live" else "paper"
        truth = m.cluster.truth.get(book)
        if truth is not None and b is not None and b.name == book:
            STATS["loss-checks"] += 1
            idx, hwm, day_open, _ = truth
            losses = {"maxDrawdown": 1 - idx / hwm, "maxDailyLoss": 1 - idx / day_open}
            for limit_name, loss in losses.items():
                lim = getattr(spec.risk_limits, "max_drawdown" if limit_name == "maxDrawdown" else "max_daily_loss")
                held = any(h.source == limit_name and h.kind is HoldKind.HALT for h in new.holds)
                if loss > lim.threshold + D("1e-9"):
                    assert held or new.holds_of(HoldKind.EMERGENCY), f"{limit_name} {loss:.4f} > {lim.threshold} did not halt"
                elif loss < lim.threshold - D("1e-9") and not any(h.source == limit_name for h in old.holds):
                    assert not held, f"{limit_name} {loss:.4f} within {lim.threshold} halted"
    # A pod the cluster refuses is said so, and not charged as a metrics outage.
    if obs.children is not None and obs.children.pod_refused and not obs.children.pod:
        assert new.metrics.consecutive_errors == old.metrics.consecutive_errors, "a refused pod was charged as a failed read"
        assert new.risk.limit_failures == old.risk.limit_failures or obs.metrics is not None
        assert new.is_true("PodCreateFailed")
    # Spec invalid: never advances, and says so.
    if m.spec_error is not None:
        assert new.holds_of(HoldKind.SPEC_INVALID), "an unreadable spec is not held"
        assert not (set(actions) & {Transition.ADVANCE, Transition.COMPLETE})


GuardMachine.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("PHASEGATE_STATE_MACHINE_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Shrinking a failure can take minutes: more than the suite's per-test timeout allows.
TestGuardMachine = pytest.mark.timeout(1200)(GuardMachine.TestCase)


def teardown_module() -> None:
    print(f"\nstate machine coverage: {STATS}")
