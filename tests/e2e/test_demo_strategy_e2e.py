"""The SDK's demo strategy under the operator, for real: a backtest Job graded on its
termination message, a short ladder, a market crash, the drawdown breaker halting it,
and the strategy's own SIGTERM sequence in the guide's order (from its own log)."""

from __future__ import annotations

import json
import urllib.request
from decimal import Decimal

import pytest

from .strategy_env import Strategies, install_crd, start_operator, wait_for
from .test_risk_e2e import pod_of_phase

SHUTDOWN_ORDER = [
    "stop_accepting_orders", "cancel_pending_orders", "write_final_checkpoint", "close_broker_connection", "flush_logs",
]


def demo_strategy(name: str) -> dict:
    return {
        "apiVersion": "phasegate.dev/v1alpha1",
        "kind": "TradingStrategy",
        "metadata": {"name": name},
        "spec": {
            "capital": "1000000",
            "account": "DEMO-E2E",
            "maxFraction": 0.1,
            "template": {
                "image": "phasegate/demo-strategy:local",
                "command": ["python", "-m", "phasegate.sdk.demo"],
                "args": ["--bar-seconds", "0.2"],
                "nodeSelector": {"phasegate.dev/local-process": "true"},
                "tolerations": [{"key": "phasegate.dev/local-process", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "phases": [
                {"name": "backtest", "mode": "backtest"},
                {"name": "paper", "mode": "paper", "minDuration": "4s"},
                {"name": "live-10", "mode": "live", "fraction": 0.1, "minDuration": "1h"},
            ],
            "riskLimits": {
                "maxDrawdown": {"threshold": 0.10, "action": "halt"},
                "maxDailyLoss": {"threshold": 0.50, "action": "halt"},
            },
            "analysis": {"interval": "1s", "timeout": "2s"},
            "terminationGracePeriod": "20s",
        },
    }


@pytest.mark.timeout(240)
def test_demo_strategy_climbs_then_a_crash_halts_it_and_it_shuts_down_in_order(k8s, kubeconfig, namespace, tmp_path, cluster):
    install_crd(k8s)
    op = start_operator(kubeconfig, namespace, tmp_path)
    try:
        ts = Strategies(k8s, namespace)
        ts.create(demo_strategy("demo"))
        st = ts.wait("demo", lambda s: s.get("phase") == "live-10", 150, "through backtest and paper to live-10")
        bt = st["backtest"]
        assert bt["outcome"] == "Passed" and Decimal(bt["sharpe"]) >= 1 and bt["monteCarloRuns"] >= 1000
        assert [h["to"] for h in st["history"] if h["action"] != "new-book"] == ["backtest", "paper", "live-10"]
        pod_of_phase(ts, "demo", "live-10", timeout=60)
        ts.wait(
            "demo", lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s["conditions"]),
            30, "metrics of live-10",
        )
        pod = ts.core.read_namespaced_pod("demo-0", namespace)
        req = urllib.request.Request(f"http://{pod.status.pod_ip}:9100/demo/crash", data=b"{}", method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        st = ts.wait("demo", lambda s: s.get("state") in ("Halted", "EmergencyStopped"), 30, "halted by the crash")
        # the operator's own drawdown check, or the strategy's in-process breaker, whichever
        # sees the crash first: both halt it
        assert any(k == "maxDrawdown" or k.startswith("strategyBreaker:") for k in st["breakers"]), st["breakers"]
        wait_for(lambda: ts.replicas("demo") == 0, 10, "replicas 0")
        wait_for(lambda: not _pod_exists(ts, "demo-0"), 40, "the pod to finish its shutdown")
        lines = [json.loads(x) for x in cluster.pod_log(namespace, "demo-0").read_text().splitlines() if x.startswith("{")]
        last_run = lines[max(i for i, x in enumerate(lines) if x.get("event") == "shutdown.requested"):]
        steps = [x["step"] for x in last_run if x.get("event") == "shutdown.step"]
        assert steps == SHUTDOWN_ORDER
        assert all(x["status"] == "ok" for x in last_run if x.get("event") == "shutdown.step")
        assert any(x.get("event") == "shutdown.complete" for x in last_run)
    finally:
        op.stop()


def _pod_exists(ts: Strategies, name: str) -> bool:
    try:
        ts.core.read_namespaced_pod(name, ts.ns)
        return True
    except Exception:
        return False
