"""Risk limits and breakers on real evidence: real strategy processes serve metrics, the
operator scrapes them, grades them itself and halts, reduces or pauses."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest

import plans  # noqa: E402  (tests/support)

from .strategy_env import Strategies, install_crd, run_cli, start_operator, wait_for

TOKEN = "e2e-alertmanager-token"
PAPER_ONLY = [{"name": "paper", "mode": "paper", "minDuration": "1h"}, {"name": "live-100", "mode": "live", "fraction": 1.0}]


@pytest.fixture(scope="module", autouse=True)
def crd(k8s):
    install_crd(k8s)


@pytest.fixture
def op(kubeconfig, namespace, tmp_path):
    proc = start_operator(kubeconfig, namespace, tmp_path, env={"PHASEGATE_ALERTMANAGER_TOKEN": TOKEN})
    yield proc
    proc.stop()


def control(ts: Strategies, name: str, body: dict) -> dict:
    pod = ts.core.read_namespaced_pod(f"{name}-0", ts.ns)
    req = urllib.request.Request(
        f"http://{pod.status.pod_ip}:9100/control", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    for attempt in range(20):
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.URLError:
            if attempt == 19:
                raise
            time.sleep(0.25)


def pod_of_phase(ts: Strategies, name: str, phase: str, timeout: float = 30) -> None:
    """Wait until the strategy's pod is the one of `phase`, running and ready (a phase change rolls it)."""
    def ready():
        pod = ts.core.read_namespaced_pod(f"{name}-0", ts.ns)
        return (
            (pod.metadata.annotations or {}).get("phasegate.dev/phase") == phase
            and pod.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        )
    wait_for(ready, timeout, f"{name}-0 running {phase}")


def metrics_read(ts: Strategies, name: str, timeout: float = 60) -> None:
    ts.wait(
        name, lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s.get("conditions", [])),
        timeout, "metrics read",
    )


def tripped(status: dict) -> dict:
    return {k: b for k, b in (status.get("breakers") or {}).items() if b.get("state") == "Tripped"}


def condition(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


@pytest.mark.timeout(120)
def test_drawdown_breach_halts(op, ts):
    ts.create(plans.strategy("dd", phases=PAPER_ONLY, risk_limits={"maxDrawdown": {"threshold": 0.10, "action": "halt"}}))
    metrics_read(ts, "dd")
    control(ts, "dd", {"portfolio_value": "880000"})
    st = ts.wait("dd", lambda s: s.get("state") == "Halted", 20, "Halted")
    b = tripped(st)["maxDrawdown"]
    assert Decimal(b["value"]) == Decimal("0.12") and Decimal(b["limit"]) == Decimal("0.1")
    assert b["action"] == "halt" and b["severity"] == "low"
    assert condition(st, "RiskLimitBreached")["status"] == "True"
    wait_for(lambda: ts.replicas("dd") == 0, 10, "replicas 0")


@pytest.mark.timeout(120)
def test_daily_loss_breach_halts(op, ts):
    ts.create(plans.strategy("daily", phases=PAPER_ONLY, risk_limits={"maxDailyLoss": {"threshold": 0.05, "action": "halt"}}))
    metrics_read(ts, "daily")
    control(ts, "daily", {"portfolio_value": "935000"})
    st = ts.wait("daily", lambda s: s.get("state") == "Halted", 20, "Halted")
    assert "maxDailyLoss" in tripped(st)
    book = st["risk"]["book"]  # flow-adjusted: the day opened at the series' first read, index 1
    assert Decimal(book["dayOpen"]) == 1 and Decimal(book["index"]) == Decimal("0.935")


@pytest.mark.timeout(120)
def test_order_rate_breaker_trips(op, ts):
    ts.create(plans.strategy("rate", phases=PAPER_ONLY, risk_limits={
        "maxDrawdown": {"threshold": 0.10, "action": "halt"}, "maxOrderRate": {"threshold": 200, "action": "halt"}}))
    metrics_read(ts, "rate")
    control(ts, "rate", {"tick_orders": 4})  # 240 orders a minute against a limit of 200
    # a burst within one scrape interval can be more than twice the limit: critical,
    # which runs the emergency sequence rather than a plain halt
    st = ts.wait("rate", lambda s: s.get("state") in ("Halted", "EmergencyStopped"), 30, "Halted")
    assert "maxOrderRate" in tripped(st)


@pytest.mark.timeout(120)
def test_breaker_trip_reported_by_the_strategy_halts(op, ts):
    ts.create(plans.strategy("selftrip", phases=PAPER_ONLY))
    metrics_read(ts, "selftrip")
    control(ts, "selftrip", {"breaker_trip": "volatility"})
    st = ts.wait("selftrip", lambda s: s.get("state") == "Halted", 20, "Halted")
    assert any(k.startswith("strategyBreaker:volatility") for k in tripped(st))
    assert condition(st, "CircuitBreakerTripped")["status"] == "True"


@pytest.mark.timeout(180)
def test_reduce_action_steps_the_fraction_down(op, ts):
    ts.create(plans.strategy("reducer", max_fraction=0.5))
    ts.wait("reducer", lambda s: s.get("phase") == "live-50", 90, "live-50")
    pod_of_phase(ts, "reducer", "live-50")
    control(ts, "reducer", {"largest_position_fraction": "0.07"})
    st = ts.wait("reducer", lambda s: s.get("state") == "Paused", 20, "Paused after reduce")
    assert st["phase"] == "live-10" and Decimal(st["capitalFraction"]) == Decimal("0.1")
    assert st["history"][-1]["action"] == "reduce"
    assert tripped(st)["maxPositionFraction"]["action"] == "reduce"


@pytest.mark.timeout(120)
def test_metrics_that_go_away_pause_then_halt_and_never_pass_a_gate(op, ts):
    # paper's minimum duration runs out while the metrics are failing: no gate may pass then
    ts.create(plans.strategy("blind", phases=[
        {"name": "paper", "mode": "paper", "minDuration": "8s"},
        {"name": "live-10", "mode": "live", "fraction": 0.1},
    ], max_fraction=0.1, metrics_failure={"pauseAfter": 3, "haltAfter": 6}))
    metrics_read(ts, "blind")
    control(ts, "blind", {"fail": True})
    st = ts.wait("blind", lambda s: s.get("state") in ("Paused", "Halted"), 20, "Paused")
    assert st["history"][-1]["action"] in ("pause", "halt")
    assert any(h["action"] == "pause" for h in st["history"])
    assert st["phase"] == "paper"
    avail = condition(st, "MetricsAvailable")
    assert avail["status"] == "False" and avail["reason"] == "MetricsUnavailable"
    st = ts.wait("blind", lambda s: s.get("state") == "Halted", 20, "Halted")
    assert st["phase"] == "paper", "a gate passed while metrics were unavailable"
    # the status says this was an error, not a breach of a limit
    assert list(tripped(st)) == ["metricsUnavailable"]
    assert condition(st, "RiskLimitBreached")["status"] == "False"
    assert st["history"][-1]["cause"] == "MetricsError"
    assert "consecutive failed metrics reads" in tripped(st)["metricsUnavailable"]["reason"]


@pytest.mark.timeout(180)
def test_critical_emergency_runs_the_flatten_job_and_locks_down(op, ts, kubeconfig, namespace, cluster):
    ts.create(plans.strategy("panic", phases=PAPER_ONLY))
    metrics_read(ts, "panic")
    res = run_cli(kubeconfig, namespace, "emergency", "panic", "--severity", "critical", "--reason", "exchange halted trading")
    assert res.returncode == 0, res.stdout + res.stderr
    st = ts.wait("panic", lambda s: (s.get("emergency") or {}).get("finished"), 90, "emergency sequence finished")
    assert st["state"] == "EmergencyStopped"
    steps = {s["name"]: s for s in st["emergency"]["steps"]}
    assert [s["name"] for s in st["emergency"]["steps"]] == ["stop_orders", "cancel_orders", "flatten", "lockdown"]
    assert steps["stop_orders"]["outcome"] == "Succeeded" and steps["flatten"]["outcome"] == "Succeeded"
    assert steps["flatten"]["durationSeconds"] >= 0
    from kubernetes import client

    jobs = client.BatchV1Api(ts.core.api_client).list_namespaced_job(namespace).items
    flatten = [j for j in jobs if "-flatten-" in j.metadata.name]
    assert len(flatten) == 1 and flatten[0].status.succeeded == 1
    env = {e.name: e.value for e in flatten[0].spec.template.spec.containers[0].env}
    assert env["PHASEGATE_MODE"] == "flatten"
    # the strategy's own SIGTERM handler ran its shutdown in order
    log = cluster.pod_log(namespace, "panic-0").read_text()
    steps_logged = [json.loads(x)["step"] for x in log.splitlines() if '"shutdown.step"' in x]
    assert steps_logged == ["stop_accepting_orders", "cancel_pending_orders", "write_checkpoint", "close_broker", "flush_logs"]
    # locked down: resume refused, reset with a reason needed
    res = run_cli(kubeconfig, namespace, "resume", "panic", "--reason", "try")
    assert res.returncode != 0
    assert ts.replicas("panic") == 0


def post_alert(op, body: dict, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{op.metrics_port}/alertmanager/webhook",
                                 data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.timeout(120)
def test_alertmanager_webhook_halts_and_refuses_without_the_token(op, ts, namespace):
    ts.create(plans.strategy("alerted", phases=PAPER_ONLY))
    metrics_read(ts, "alerted")
    payload = {
        "version": "4", "status": "firing", "receiver": "phasegate",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "HighOrderLatency", "namespace": namespace, "pod": "alerted-0", "severity": "critical"},
            "annotations": {"summary": "p95 order latency above 2s for 5m"},
            "startsAt": "2026-11-22T02:00:00Z",
        }],
    }
    code, _ = post_alert(op, payload, None)
    assert code == 401
    code, _ = post_alert(op, payload, "wrong")
    assert code == 401
    time.sleep(2)
    assert ts.status("alerted")["state"] != "Halted"
    code, body = post_alert(op, payload, TOKEN)
    assert code == 200 and body["results"][0]["result"] == "tripped"
    st = ts.wait("alerted", lambda s: s.get("state") == "Halted", 15, "Halted by the alert")
    cond = condition(st, "CircuitBreakerTripped")
    assert cond["status"] == "True"
    wait_for(lambda: ts.replicas("alerted") == 0, 10, "replicas 0")
