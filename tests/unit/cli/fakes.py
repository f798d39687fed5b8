"""An in-memory cluster for the CLI's unit tests, and sample TradingStrategy objects
built with the api models (so they are exactly what the operator would write)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

from phasegate.api import (
    BreakerState,
    BreakerStatus,
    Condition,
    GateResult,
    HistoryEntry,
    Severity,
    State,
    StrategySpec,
    StrategyStatus,
    StrategyTemplate,
    contract,
)
from phasegate.api.spec import Action
from phasegate.api.status import BacktestResult, Cause, EmergencyRecord, EmergencyStep, Hold, HoldKind, RequestRecord
from phasegate.cli import kube

NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=30)


def spec(**over: Any) -> StrategySpec:
    """The default ladder (backtest, paper, shadow, live-10 manual, live-35, live-65,
    live-100) under a 50% ceiling."""
    fields: dict[str, Any] = dict(
        capital=Decimal("1000000"),
        account="DU123456",
        max_fraction=Decimal("0.5"),
        template=StrategyTemplate(image="example/momentum:1.0"),
    )
    fields.update(over)
    return StrategySpec(**fields)


def _history(n: int, last: Optional[HistoryEntry] = None) -> list[HistoryEntry]:
    steps = [
        ("start", "", "backtest", "0"),
        ("advance", "backtest", "paper", "0"),
        ("advance", "paper", "shadow", "0"),
        ("advance", "shadow", "live-10", "0.10"),
        ("pause", "live-10", "live-10", "0.10"),
        ("resume", "live-10", "live-10", "0.10"),
        ("approve", "live-10", "live-10", "0.10"),
    ]
    out = []
    for i, (action, frm, to, frac) in enumerate(steps[:n]):
        out.append(
            HistoryEntry(
                seq=i + 1,
                at=NOW - timedelta(days=25 - 3 * i),
                action=action,
                from_=frm,
                to=to,
                fraction=Decimal(frac),
                reason=f"reason-{i + 1}",
                by="operator" if action in ("start", "advance") else "alice",
            )
        )
    if last is not None:
        out.append(last)
    return out


def _cond(ctype: str, status: str, reason: str, message: str = "", ago: timedelta = timedelta(hours=1)) -> Condition:
    return Condition(type=ctype, status=status, reason=reason, message=message, last_transition_time=NOW - ago)


def mid_ladder_status(**over: Any) -> StrategyStatus:
    fields: dict[str, Any] = dict(
        observed_generation=1,
        phase="live-10",
        phase_index=3,
        state=State.PROGRESSING,
        capital_fraction=Decimal("0.10"),
        capital=Decimal("100000"),
        phase_started_at=NOW - timedelta(days=2, hours=3),
        message="live-10: waiting for 7d in phase (2d3h so far)",
        conditions=[
            _cond("Ready", "True", "Progressing"),
            _cond("Progressing", "True", "InPhase", "live-10"),
            _cond("RiskLimitBreached", "False", "WithinLimits"),
            _cond("CircuitBreakerTripped", "False", "Closed"),
            _cond("MetricsAvailable", "True", "Scraped"),
        ],
        breakers={
            "maxDrawdown": BreakerStatus(
                state=BreakerState.CLOSED, value=Decimal("0.031"), limit=Decimal("0.10"), action=Action.HALT
            ),
            "maxDailyLoss": BreakerStatus(
                state=BreakerState.CLOSED, value=Decimal("0.004"), limit=Decimal("0.05"), action=Action.HALT
            ),
        },
        gates=[
            GateResult(name="minDuration", passed=False, value="2d3h", threshold="7d", message="time in phase"),
            GateResult(name="noCriticalIncident", passed=True, value="0", threshold="0", message="no critical breach"),
        ],
        history=_history(7),
        history_seq=7,
        holds=[
            Hold(kind=HoldKind.APPROVAL_WAIT, id="v0", seq=7, source="live-10",
                 reason="leaving live-10 needs `phasegate promote`", since=NOW - timedelta(days=2, hours=3)),
        ],
        backtest=BacktestResult(
            job="momentum-backtest-1", outcome="Passed", sharpe=Decimal("1.42"), max_drawdown=Decimal("0.12"),
            walk_forward_windows=12, monte_carlo_runs=2000,
        ),
        last_request=RequestRecord(
            id="a" * 32, action="resume", outcome="Accepted", message="resumed at live-10", by="alice",
            at=NOW - timedelta(hours=5),
        ),
    )
    fields.update(over)
    return StrategyStatus(**fields)


def paused_status(**over: Any) -> StrategyStatus:
    pause = Hold(kind=HoldKind.MANUAL_PAUSE, id="#8", seq=8, source="manualPause", cause=Cause.MANUAL,
                 reason="investigating fills (manual pause)", since=NOW - timedelta(minutes=5), by="alice")
    return mid_ladder_status(state=State.PAUSED, holds=[*mid_ladder_status().holds, pause], **over)


def halted_status(**over: Any) -> StrategyStatus:
    halt = HistoryEntry(
        seq=8, at=NOW - timedelta(minutes=10), action="halt", from_="live-10", to="live-10",
        fraction=Decimal("0"), reason="maxDrawdown 0.23 > 0.10 (critical)", by="operator",
    )
    fields: dict[str, Any] = dict(
        phase="live-10",
        phase_index=3,
        state=State.HALTED,
        capital_fraction=Decimal("0"),
        phase_started_at=NOW - timedelta(days=2),
        message="halted: maxDrawdown 0.23 > limit 0.10",
        conditions=[
            _cond("Ready", "False", "Halted", "halted: maxDrawdown", ago=timedelta(minutes=10)),
            _cond("RiskLimitBreached", "True", "MaxDrawdown", "drawdown 23% > 10%", ago=timedelta(minutes=10)),
            _cond("Halted", "True", "RiskLimitBreached", ago=timedelta(minutes=10)),
        ],
        breakers={
            "maxDrawdown": BreakerStatus(
                state=BreakerState.TRIPPED, value=Decimal("0.23"), limit=Decimal("0.10"),
                severity=Severity.CRITICAL, action=Action.HALT, tripped_at=NOW - timedelta(minutes=10),
                reason="drawdown 23% from the high-water mark",
            ),
            "maxDailyLoss": BreakerStatus(
                state=BreakerState.CLOSED, value=Decimal("0.02"), limit=Decimal("0.05"), action=Action.HALT
            ),
        },
        history=_history(7, last=halt),
        history_seq=8,
        holds=[
            Hold(kind=HoldKind.HALT, id="#8", seq=8, source="maxDrawdown", cause=Cause.RISK_LIMIT_BREACHED,
                 reason="maxDrawdown: drawdown 23% from the high-water mark", since=NOW - timedelta(minutes=10)),
        ],
    )
    fields.update(over)
    return StrategyStatus(**fields)


def emergency_status() -> StrategyStatus:
    return halted_status(
        state=State.EMERGENCY_STOPPED,
        holds=[
            Hold(kind=HoldKind.EMERGENCY, id="e" * 32, seq=8, source="emergency", cause=Cause.MANUAL,
                 reason="emergency (critical): exchange outage", since=NOW - timedelta(minutes=3), by="bob"),
        ],
        emergency=EmergencyRecord(
            id="e" * 32, severity="critical", reason="exchange outage", by="bob",
            started_at=NOW - timedelta(minutes=3), finished=True,
            steps=[
                EmergencyStep(
                    name="stopOrders", outcome="Succeeded", started_at=NOW - timedelta(minutes=3), duration_seconds=0.4
                ),
                EmergencyStep(
                    name="cancelOrders", outcome="Succeeded", started_at=NOW - timedelta(minutes=3), duration_seconds=1.2
                ),
                EmergencyStep(
                    name="flatten", outcome="TimedOut", started_at=NOW - timedelta(minutes=2), duration_seconds=300.0,
                    message="3 positions left",
                ),
            ],
        ),
    )


def strategy_obj(
    name: str = "momentum",
    namespace: str = "default",
    the_spec: Optional[StrategySpec] = None,
    status: Optional[StrategyStatus] = None,
    rv: str = "100",
    annotations: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": rv,
            "generation": 1,
            "creationTimestamp": CREATED.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uid": f"uid-{namespace}-{name}",
        },
        "spec": (the_spec or spec()).wire(),
    }
    if annotations:
        obj["metadata"]["annotations"] = dict(annotations)
    if status is not None:
        obj["status"] = status.wire()
    return obj


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class FakeKube:
    """KubeApi in memory, with an optional fake operator that answers requests."""

    def __init__(self, *objs: dict[str, Any], user: str = "alice", default_namespace: str = "default") -> None:
        self.default_namespace = default_namespace
        self.description = "fake cluster"
        self.user = user
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.statefulsets: dict[tuple[str, str], int] = {}
        self.crds: dict[str, dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []
        self.scales: list[tuple[str, str, int]] = []
        self.gets = 0
        self.rv = 1000
        self.conflicts = 0  # how many patches to answer with 409 (someone else wrote first)
        self.on_conflict: Optional[Callable[[FakeKube, str, str], None]] = None
        self.operator: Optional[str] = None  # None (down), "Accepted" or "Rejected"
        self.operator_message = ""
        self.established = True
        for o in objs:
            self.add(o)

    def add(self, obj: dict[str, Any], replicas: Optional[int] = 1) -> None:
        m = obj["metadata"]
        self.objects[(m["namespace"], m["name"])] = copy.deepcopy(obj)
        if replicas is not None:
            self.statefulsets[(m["namespace"], m["name"])] = replicas

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def obj(self, namespace: str = "default", name: str = "momentum") -> dict[str, Any]:
        return self.objects[(namespace, name)]

    def request(self, namespace: str = "default", name: str = "momentum") -> Optional[dict[str, Any]]:
        text = (self.obj(namespace, name)["metadata"].get("annotations") or {}).get(contract.ANNOTATION_REQUEST)
        return json.loads(text) if text else None

    # --- KubeApi ---

    def get_strategy(self, namespace: str, name: str) -> dict[str, Any]:
        self.gets += 1
        obj = self.objects.get((namespace, name))
        if obj is None:
            raise kube.NotFound(kube.strategy_not_found(namespace, name))
        if self.operator:
            req = self.request(namespace, name)
            last = (obj.get("status") or {}).get("lastRequest") or {}
            if req and last.get("id") != req["id"]:
                obj.setdefault("status", {})["lastRequest"] = {
                    "id": req["id"], "action": req["action"], "outcome": self.operator,
                    "message": self.operator_message, "by": req["by"], "at": "2026-01-10T12:00:01Z",
                }
                self._bump(obj)
        return copy.deepcopy(obj)

    def list_strategies(self, namespace: Optional[str]) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (ns, _), o in sorted(self.objects.items()) if namespace is None or ns == namespace]

    def patch_strategy(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(patch))
        obj = self.objects.get((namespace, name))
        if obj is None:
            raise kube.NotFound(kube.strategy_not_found(namespace, name))
        if self.conflicts > 0:
            self.conflicts -= 1
            if self.on_conflict:
                self.on_conflict(self, namespace, name)
            self._bump(obj)
            raise kube.Conflict("the object has been modified")
        rv = (patch.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise kube.Conflict("the object has been modified")
        _merge(obj, {k: v for k, v in patch.items()})
        self._bump(obj)
        return copy.deepcopy(obj)

    def scale_statefulset(self, namespace: str, name: str, replicas: int) -> bool:
        self.scales.append((namespace, name, replicas))
        if (namespace, name) not in self.statefulsets:
            return False
        self.statefulsets[(namespace, name)] = replicas
        return True

    def whoami(self) -> str:
        return self.user

    def get_crd(self, name: str) -> Optional[dict[str, Any]]:
        crd = self.crds.get(name)
        return copy.deepcopy(crd) if crd else None

    def _store_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        crd = copy.deepcopy(body)
        self.rv += 1
        crd["metadata"]["resourceVersion"] = str(self.rv)
        status = "True" if self.established else "False"
        crd["status"] = {"conditions": [
            {"type": "NamesAccepted", "status": "True"},
            {"type": "Established", "status": status, "message": "" if self.established else "installing"},
        ]}
        self.crds[crd["metadata"]["name"]] = crd
        return copy.deepcopy(crd)

    def create_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["metadata"]["name"] in self.crds:
            raise kube.Conflict("already exists")
        return self._store_crd(body)

    def replace_crd(self, body: dict[str, Any]) -> dict[str, Any]:
        cur = self.crds[body["metadata"]["name"]]
        if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
            raise kube.Conflict("stale")
        return self._store_crd(body)
