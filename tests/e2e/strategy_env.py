"""Shared pieces of the operator end-to-end tests: the CRD, a namespaced operator, waits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from kubernetes import client
from kubernetes.client.rest import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from operator_proc import OperatorProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "phasegate.dev_tradingstrategies.yaml"
G, V, P = "phasegate.dev", "v1alpha1", "tradingstrategies"


def install_crd(k8s) -> None:
    """The CRD installed the way `phasegate install-crds` does it (create or replace, then
    Established). `k8s` is asked for so that the session's cluster, and KUBECONFIG, exist."""
    import os

    from phasegate.cli import crds
    from phasegate.cli.kube import connect

    body, _ = crds.load_crd(str(CRD))
    api = connect(kubeconfig=os.environ["KUBECONFIG"])
    crds.apply_crd(api, body)
    crds.wait_established(api, body["metadata"]["name"], 30)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except ApiException as e:  # a 404 while something is being created
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


class Strategies:
    def __init__(self, k8s, namespace: str) -> None:
        self.api = client.CustomObjectsApi(k8s)
        self.apps = client.AppsV1Api(k8s)
        self.core = client.CoreV1Api(k8s)
        self.events = client.EventsV1Api(k8s)
        self.ns = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(G, V, self.ns, P, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(G, V, self.ns, P, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(G, V, self.ns, P, name, {"spec": spec})

    def set_condition(self, name: str, ctype: str, status: str, reason: str, message: str = "") -> None:
        for _ in range(10):
            obj = self.get(name)
            conds = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] != ctype]
            conds.append({"type": ctype, "status": status, "reason": reason, "message": message,
                          "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": {"conditions": conds}}
            try:
                self.api.patch_namespaced_custom_object_status(G, V, self.ns, P, name, body)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
        raise AssertionError("could not write the condition (conflicts)")

    def replicas(self, name: str) -> Optional[int]:
        try:
            return self.apps.read_namespaced_stateful_set(name, self.ns).spec.replicas
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def wait(self, name: str, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> dict[str, Any]:
        return wait_for(lambda: (lambda s: s if pred(s) else None)(self.status(name)), timeout, f"{name}: {what}")

    def events_for(self, name: str) -> list[dict[str, Any]]:
        # Raw JSON: the typed client refuses core Events whose eventTime is null.
        raw = self.events.list_namespaced_event(self.ns, _preload_content=False)
        items = json.loads(raw.data)["items"]
        return [
            e for e in items
            if (e.get("regarding") or {}).get("name") == name and e.get("reportingController") == "phasegate.dev/operator"
        ]


def history_actions(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The ladder's moves and the manual actions (a new book's series start is bookkeeping)."""
    return [(h["action"], h.get("to", "")) for h in status.get("history", []) if h["action"] != "new-book"]


def start_operator(kubeconfig: Path, namespace: str, tmp_path: Path, **kw: Any) -> OperatorProcess:
    return OperatorProcess(kubeconfig, tmp_path / "operator.log", namespace=namespace, **kw).start()


def run_cli(kubeconfig: Path, namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "phasegate"
    return subprocess.run(
        [str(exe), "-n", namespace, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def pod_starts(cluster, namespace: str, pod: str) -> list[dict[str, Any]]:
    """The `start` lines the fake strategy logged, one per process it ran as."""
    out = []
    path = cluster.pod_log(namespace, pod)
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "start":
            out.append(rec)
    return out
