"""The `phasegate` CLI (the installed console script, run as a subprocess) against the
real control plane: install-crds, status/list/history of a real object, refusals, the
halt kill switch with the operator down, the kubectl plugin, and the request round
trip with a real operator answering."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

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
from phasegate.api.status import Cause, Hold, HoldKind

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

import plans  # noqa: E402
from operator_proc import OperatorProcess  # noqa: E402

BIN = Path(sys.executable).parent
PHASEGATE = BIN / "phasegate"
G, V, P = contract.GROUP, contract.VERSION, contract.PLURAL

pytestmark = pytest.mark.timeout(180)


def cli(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "220"}
    return subprocess.run([str(PHASEGATE), *args], capture_output=True, text=True, timeout=timeout, env=env)


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module", autouse=True)
def crd(kubeconfig):
    res = cli(kubeconfig, "install-crds")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Established" in res.stdout


@pytest.fixture
def api(k8s):
    return client.CustomObjectsApi(k8s)


def _spec() -> dict[str, Any]:
    return StrategySpec(
        capital=Decimal("1000000"), account="DU-E2E", max_fraction=Decimal("0.5"),
        template=StrategyTemplate(image="example/momentum:1.0", node_selector={"phasegate.dev/nowhere": "true"}),
    ).wire()


def _status(now: datetime, state: State = State.PROGRESSING) -> dict[str, Any]:
    cond = lambda t, s, r: Condition(type=t, status=s, reason=r, last_transition_time=now - timedelta(minutes=5))  # noqa: E731
    tripped = state is State.HALTED
    return StrategyStatus(
        observed_generation=1, phase="live-10", phase_index=3, state=state,
        capital_fraction=Decimal("0") if tripped else Decimal("0.10"), capital=Decimal("100000"),
        phase_started_at=now - timedelta(days=2, hours=3),
        conditions=[cond("Ready", "False" if tripped else "True", "Halted" if tripped else "Progressing")],
        breakers={
            "maxDrawdown": BreakerStatus(
                state=BreakerState.TRIPPED if tripped else BreakerState.CLOSED,
                value=Decimal("0.23") if tripped else Decimal("0.031"), limit=Decimal("0.10"),
                severity=Severity.CRITICAL if tripped else None, action=Action.HALT,
                tripped_at=now - timedelta(minutes=5) if tripped else None,
                reason="drawdown from the high-water mark" if tripped else "",
            )
        },
        gates=[GateResult(name="noCriticalIncident", passed=True, value="0", threshold="0")],
        history=[
            HistoryEntry(seq=i, at=now - timedelta(days=10 - i), action="advance", from_="a", to="b",
                         fraction=Decimal("0"), reason=f"e2e-reason-{i}", by="operator")
            for i in range(1, 7)
        ],
        history_seq=6,
        holds=[Hold(kind=HoldKind.HALT, id="#6", seq=6, source="maxDrawdown", cause=Cause.RISK_LIMIT_BREACHED,
                    reason="drawdown from the high-water mark", since=now - timedelta(minutes=5))] if tripped else [],
    ).wire()


def create(api, namespace: str, name: str, status: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    body = {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "metadata": {"name": name}, "spec": _spec()}
    obj = api.create_namespaced_custom_object(G, V, namespace, P, body)
    if status is not None:
        obj = api.patch_namespaced_custom_object_status(G, V, namespace, P, name, {"status": status})
    return obj


def annotation(api, namespace: str, name: str) -> Optional[dict[str, Any]]:
    obj = api.get_namespaced_custom_object(G, V, namespace, P, name)
    text = (obj["metadata"].get("annotations") or {}).get(contract.ANNOTATION_REQUEST)
    return json.loads(text) if text else None


def authenticated_user(k8s) -> str:
    review = client.AuthenticationV1Api(k8s).create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    )
    return review.status.user_info.username


def test_status_list_and_history_of_a_real_object(kubeconfig, namespace, api):
    now = datetime.now(UTC)
    create(api, namespace, "viewer", _status(now))
    res = cli(kubeconfig, "status", "viewer", "-n", namespace)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Phase live-10 (4/7)" in out and "State Progressing" in out and "Fraction 10%" in out
    assert "Ceiling 50% (spec.maxFraction)" in out
    assert "▶ current" in out and "2d3h / 7d" in out and "above ceiling" in out
    assert "Gates of live-10" in out and "noCriticalIncident" in out  # status fields survive the CRD schema
    assert "maxDrawdown" in out and "0.031" in out
    assert "e2e-reason-6" in out and "e2e-reason-1 " not in out  # the last 5 only

    res = cli(kubeconfig, "-n", namespace, "list")
    assert res.returncode == 0, res.stderr
    row = next(line.split() for line in res.stdout.splitlines() if line.startswith("viewer"))
    assert row[:6] == ["viewer", "live-10", "Progressing", "10%", "True", "Progressing"]

    res = cli(kubeconfig, "list", "-A")
    assert any(line.split()[:2] == [namespace, "viewer"] for line in res.stdout.splitlines())

    res = cli(kubeconfig, "history", "viewer", "-n", namespace, "--limit", "0")
    assert res.returncode == 0 and all(f"e2e-reason-{i}" in res.stdout for i in range(1, 7))


def test_refused_actions_leave_the_object_alone(kubeconfig, namespace, api):
    create(api, namespace, "stopped", _status(datetime.now(UTC), State.HALTED))
    res = cli(kubeconfig, "promote", "stopped", "-n", namespace, "--reason", "looks fine")
    assert res.returncode == 1
    assert f"cannot promote {namespace}/stopped" in res.stderr and "phasegate reset stopped" in res.stderr
    create(api, namespace, "running", _status(datetime.now(UTC)))
    res = cli(kubeconfig, "reset", "running", "-n", namespace, "--reason", "nothing")
    assert res.returncode == 1 and "nothing to reset" in res.stderr
    res = cli(kubeconfig, "pause", "running", "-n", namespace)
    assert res.returncode == 1 and "--reason" in res.stderr
    assert annotation(api, namespace, "stopped") is None and annotation(api, namespace, "running") is None


def test_halt_with_the_operator_down_scales_the_statefulset(kubeconfig, namespace, api, k8s):
    create(api, namespace, "killme", _status(datetime.now(UTC)))
    apps = client.AppsV1Api(k8s)
    labels = {"app": "killme"}
    apps.create_namespaced_stateful_set(namespace, {
        "metadata": {"name": "killme"},
        "spec": {
            "replicas": 1, "serviceName": "killme", "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": {"phasegate.dev/nowhere": "true"},
                "containers": [{"name": "strategy", "image": "example/momentum:1.0"}],
            }},
        },
    })
    res = cli(kubeconfig, "halt", "killme", "-n", namespace, "--reason", "desk kill switch", "--timeout", "2")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"StatefulSet {namespace}/killme scaled to 0 replicas" in res.stdout
    assert "did not answer" in res.stderr and "scaled to 0 anyway" in res.stderr
    assert apps.read_namespaced_stateful_set("killme", namespace).spec.replicas == 0
    req = annotation(api, namespace, "killme")
    assert req["action"] == "halt" and req["reason"] == "desk kill switch"
    assert req["by"] == authenticated_user(k8s)
    assert len(req["id"]) == 32
    res = cli(kubeconfig, "status", "killme", "-n", namespace)
    assert "Pending request halt" in res.stdout


def test_not_found_and_unreachable(kubeconfig, namespace, tmp_path):
    res = cli(kubeconfig, "status", "ghost", "-n", namespace)
    assert res.returncode == 3 and "not found" in res.stderr and "phasegate list" in res.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = tmp_path / "dead-kubeconfig"
    cfg = json.loads(Path(kubeconfig).read_text())
    cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    dead.write_text(json.dumps(cfg))
    res = cli(dead, "list", "--kubeconfig", str(dead))
    assert res.returncode == 3
    assert "cannot reach the cluster" in res.stderr and str(dead) in res.stderr


def test_kubectl_plugin(kubeconfig, namespace, api, cluster):
    local = cluster.bin_dir / "kubectl" if cluster.bin_dir else None
    kubectl = local if local and local.exists() else shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl binary")
    create(api, namespace, "plugged", _status(datetime.now(UTC)))
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": path, "COLUMNS": "200"}
    res = subprocess.run(
        [str(kubectl), "phasegate", "list", "-n", namespace], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("plugged") for line in res.stdout.splitlines())
    res = subprocess.run([str(kubectl), "phasegate", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and "kubectl phasegate" in res.stdout


def test_requests_answered_by_the_operator(kubeconfig, namespace, api, k8s, tmp_path):
    op = OperatorProcess(kubeconfig, tmp_path / "operator.log", namespace=namespace).start()
    try:
        api.create_namespaced_custom_object(G, V, namespace, P, plans.strategy("answered", max_fraction=0.10))
        status = lambda: api.get_namespaced_custom_object(G, V, namespace, P, "answered").get("status") or {}  # noqa: E731
        wait_for(lambda: status().get("state") == "Progressing", 60, "Progressing")

        res = cli(kubeconfig, "pause", "answered", "-n", namespace, "--reason", "vol spike")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()
        assert "Accepted" in res.stdout
        assert status()["state"] == "Paused"
        res = cli(kubeconfig, "promote", "answered", "-n", namespace, "--reason", "x")
        assert res.returncode == 1 and "paused" in res.stderr
        res = cli(kubeconfig, "resume", "answered", "-n", namespace, "--reason", "calm again")
        assert res.returncode == 0, res.stdout + res.stderr

        res = cli(kubeconfig, "halt", "answered", "-n", namespace, "--reason", "desk kill switch")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()
        assert "Accepted" in res.stdout
        st = status()
        assert st["state"] == "Halted"
        assert st["lastRequest"]["id"] == annotation(api, namespace, "answered")["id"]
        halt = [h for h in st["history"] if h["action"] == "halt"]
        assert halt and "desk kill switch" in halt[-1]["reason"] and halt[-1]["by"] == authenticated_user(k8s)
        apps = client.AppsV1Api(k8s)
        wait_for(lambda: apps.read_namespaced_stateful_set("answered", namespace).spec.replicas == 0, 10, "replicas 0")

        res = cli(kubeconfig, "promote", "answered", "-n", namespace, "--reason", "x")
        assert res.returncode == 1 and "Halted" in res.stderr
        res = cli(kubeconfig, "reset", "answered", "-n", namespace, "--reason", "post-mortem done")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()
        wait_for(lambda: status().get("state") not in ("Halted", None), 20, "left Halted after reset")
    finally:
        # Delete while the operator runs, so that its finalizer is removed and the
        # namespace can go.
        try:
            api.delete_namespaced_custom_object(G, V, namespace, P, "answered")
            wait_for(lambda: not _exists(api, namespace, "answered"), 30, "strategy deleted")
        finally:
            op.stop()


def _exists(api, namespace: str, name: str) -> bool:
    try:
        api.get_namespaced_custom_object(G, V, namespace, P, name)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise
