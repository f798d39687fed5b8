"""The dead-man's switch for real: the SDK's demo strategy (the real runtime, order gate and
exporter) on the local-process node, supervised by a real operator's scrapes.

One namespace, two strategies on the live-10 rung: `watched` with spec.supervision.timeout 6s
(interval 1s), `plain` without supervision. Every operator replica is SIGKILLed: `watched`
goes to safe mode once the last deadline it was given passes (read from its /metrics and its
log), `plain` trades on as before. A new operator starts: `watched` leaves safe mode on its
first supervised scrape, which names the new operator.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from phasegate.api import contract

from .strategy_env import Strategies, install_crd, start_operator, wait_for
from .test_risk_e2e import metrics_read, pod_of_phase

TIMEOUT_S = 6


def strategy(name: str, supervision: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "capital": "1000000",
        "account": "DMS-E2E",
        "maxFraction": 0.1,
        "template": {
            "image": "phasegate/demo-strategy:local",
            "command": ["python", "-m", "phasegate.sdk.demo"],
            "args": ["--bar-seconds", "0.2"],
            "nodeSelector": {"phasegate.dev/local-process": "true"},
            "tolerations": [{"key": "phasegate.dev/local-process", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "phases": [
            {"name": "paper", "mode": "paper", "minDuration": "2s", "gates": {}},
            {"name": "live-10", "mode": "live", "fraction": 0.1, "minDuration": "1h"},
        ],
        "riskLimits": {
            "maxDrawdown": {"threshold": 0.50, "action": "halt"},
            "maxDailyLoss": {"threshold": 0.50, "action": "halt"},
        },
        "analysis": {"interval": "1s", "timeout": "2s"},
        "terminationGracePeriod": "20s",
    }
    if supervision is not None:
        spec["supervision"] = {"timeout": supervision}
    return {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "metadata": {"name": name}, "spec": spec}


def scrape(ts: Strategies, name: str) -> dict[str, float]:
    """The pod's own exposition, read without supervision headers (so not a contact)."""
    pod = ts.core.read_namespaced_pod(f"{name}-0", ts.ns)
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:9100/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def pod_lines(cluster, ns: str, name: str) -> list[dict[str, Any]]:
    path = cluster.pod_log(ns, f"{name}-0")
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [x for x in lines if x.get("event") == name]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pod_env(ts: Strategies, name: str) -> dict[str, str]:
    pod = ts.core.read_namespaced_pod(f"{name}-0", ts.ns)
    return {e.name: e.value for e in pod.spec.containers[0].env}


@pytest.mark.timeout(300)
def test_a_strategy_goes_to_safe_mode_when_no_operator_supervises_it_and_back_when_one_returns(
    k8s, kubeconfig, namespace, tmp_path, cluster,
):
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    first = start_operator(kubeconfig, namespace, tmp_path / "first")
    second = None
    try:
        ts.create(strategy("watched", f"{TIMEOUT_S}s"))
        ts.create(strategy("plain", None))
        for name in ("watched", "plain"):
            ts.wait(name, lambda s: s.get("phase") == "live-10", 120, "through paper to live-10")
            pod_of_phase(ts, name, "live-10", timeout=90)
            metrics_read(ts, name, timeout=60)
        assert pod_env(ts, "watched")[contract.ENV_SUPERVISION_TIMEOUT] == f"{TIMEOUT_S}s"
        assert contract.ENV_SUPERVISION_TIMEOUT not in pod_env(ts, "plain")

        # Supervised: the operator's scrapes keep moving the deadline; the pod trades normally.
        # (the gauge starts at the pod's start + timeout: only a contact moves it on)
        first_deadline = scrape(ts, "watched")[contract.M_SUPERVISION_DEADLINE]
        wait_for(lambda: scrape(ts, "watched")[contract.M_SUPERVISION_DEADLINE] > first_deadline, 30,
                 "a supervised contact moving the deadline")
        seen = scrape(ts, "watched")
        assert seen[contract.M_SUPERVISION_SAFE_MODE] == 0
        assert seen[contract.M_SUPERVISION_SAFE_MODE_ENTRIES] == 0
        # Unsupervised: the scrapes carry no headers, so the pod was never given a deadline.
        plain = scrape(ts, "plain")
        assert plain[contract.M_SUPERVISION_DEADLINE] == 0 and plain[contract.M_SUPERVISION_SAFE_MODE] == 0

        # Every operator replica gone: nobody vouches for the pod any more.
        first.kill(signal.SIGKILL)
        killed_at = datetime.now().astimezone()
        wait_for(lambda: scrape(ts, "watched")[contract.M_SUPERVISION_SAFE_MODE] == 1, 60, "safe mode")
        seen = scrape(ts, "watched")
        assert seen[contract.M_SUPERVISION_SAFE_MODE_ENTRIES] == 1
        entered = events(pod_lines(cluster, namespace, "watched"), "supervision.safe_mode")
        assert len(entered) == 1, entered
        entry = entered[0]
        assert entry["reason"] == "deadline-passed" and entry["strategy"] == "watched"
        assert entry["supervisor"] == f"{socket.gethostname()}_{first.proc.pid}"
        # The deadline that lapsed is the last one the killed operator gave: at most one timeout
        # after the kill. And safe mode came when it passed, not before.
        deadline = when(entry["deadline"])
        assert deadline <= killed_at + timedelta(seconds=TIMEOUT_S), (deadline, killed_at)
        assert when(entry["timestamp"]) >= deadline
        assert "cancelled_orders" in entry

        # With supervision off, nothing changed: same mode, no deadline, no safe-mode line.
        plain = scrape(ts, "plain")
        assert plain[contract.M_SUPERVISION_SAFE_MODE] == 0 and plain[contract.M_SUPERVISION_SAFE_MODE_ENTRIES] == 0
        assert not events(pod_lines(cluster, namespace, "plain"), "supervision.safe_mode")

        # A leader again: its first scrape lifts safe mode, and the pod says who supervises it.
        restart_at = datetime.now().astimezone()
        second = start_operator(kubeconfig, namespace, tmp_path / "second")
        wait_for(lambda: scrape(ts, "watched")[contract.M_SUPERVISION_SAFE_MODE] == 0, 60, "safe mode lifted")
        seen = scrape(ts, "watched")
        assert seen[contract.M_SUPERVISION_SAFE_MODE_EXITS] == 1 and seen[contract.M_SUPERVISION_SAFE_MODE_ENTRIES] == 1
        restored = events(pod_lines(cluster, namespace, "watched"), "supervision.restored")
        assert len(restored) == 1 and restored[0]["supervisor"] == f"{socket.gethostname()}_{second.proc.pid}"
        assert when(restored[0]["deadline"]) > when(restored[0]["timestamp"])
        # Figures for the record, not assertions (the machine is shared).
        print(f"\nkill -> deadline {(deadline - killed_at).total_seconds():.2f}s, deadline -> safe mode "
              f"{(when(entry['timestamp']) - deadline).total_seconds():.3f}s, second operator started -> restored "
              f"{(when(restored[0]['timestamp']) - restart_at).total_seconds():.2f}s")
        health = json.loads(urllib.request.urlopen(
            f"http://{ts.core.read_namespaced_pod('watched-0', namespace).status.pod_ip}:9100/healthz", timeout=5).read())
        assert health["supervision"] == "normal"
        assert ts.status("watched")["phase"] == "live-10"  # the operator's view did not move
    finally:
        for op in (first, second):
            if op is not None:
                op.stop()
