"""The Helm chart, installed with the real `helm` into the local control plane, running the
operator under the chart's own ServiceAccount and RBAC.

The chart's Deployment pods land on the `local-process` node (values below: nodeSelector,
tolerations; the image is not used there), where hack/cluster/local_kubelet.py runs their
command, `phasegate run ...`, from the virtualenv, and projects the ServiceAccount's token
as a kubelet does: a TokenRequest bound to the pod, behind a per-pod KUBECONFIG. So the
operator talks to the API as system:serviceaccount:<release namespace>:<fullname>, with
exactly the grants of charts/phasegate/templates/rbac.yaml, never as the admin. Checked
from the outside: SelfSubjectReview with the pod's credentials names the ServiceAccount,
and the operator process's environment points at that kubeconfig.

The chart runs with watchNamespace set (the namespaced Role plus the discovery ClusterRole):
a cluster-wide operator would also reconcile the strategies other tests leave in namespaces
being deleted, and write there. bindAddress is `$(POD_IP)`: both replicas share this host's
network, each listens on its own pod address.

Any missing RBAC verb fails the tests: after the ladder, a halt and a reset, an emergency
with its flatten Job, an Alertmanager alert and a leader failover, no operator log line may
carry a 403 / Forbidden. The installed roles grant no wildcard and nothing on Secrets.

The upgrade test installs the previous chart, tests/fixtures/phasegate-0.1.0.tgz (committed:
`helm package` of charts/phasegate at chart version 0.1.0; git history is not relied on, a
CI clone may be shallow), then `helm upgrade`s to charts/phasegate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

import plans  # noqa: E402  (tests/support)
from helm_bin import require_helm  # noqa: E402  (tests/support)
from operator_proc import free_port  # noqa: E402  (tests/support)

from .strategy_env import Strategies, history_actions, run_cli, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "phasegate"
PREVIOUS_CHART = ROOT / "tests" / "fixtures" / "phasegate-0.1.0.tgz"
TOKEN = "e2e-chart-alertmanager-token"
LEASE = "phasegate-leader"
EXPECTED = [("start", "paper"), ("advance", "shadow"), ("advance", "live-10"), ("advance", "live-50"), ("complete", "live-100")]
PAPER_ONLY = [{"name": "paper", "mode": "paper", "minDuration": "1h"}, {"name": "live-100", "mode": "live", "fraction": 1.0}]
LOCAL_NODE = {
    "nodeSelector": {"phasegate.dev/local-process": "true"},
    "tolerations": [{"key": "phasegate.dev/local-process", "operator": "Exists", "effect": "NoSchedule"}],
}
# A 403 as the operator's libraries report it: kopf's APIForbiddenError, the client's
# "(403)\nReason: Forbidden", a status code in a structured line.
FORBIDDEN = re.compile(r"forbidden|\(403\)|\b403\s+forbidden|[\"']?status[\"']?\s*[:=]\s*403\b|HTTP\s*403", re.I)


class Helm:
    """The real helm binary, as the installer (the admin's kubeconfig), with its own homes."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.bin = require_helm()
        self.env = dict(os.environ, KUBECONFIG=str(kubeconfig), HELM_CACHE_HOME=str(home / "cache"),
                        HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"))

    def run(self, *args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([self.bin, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert out.returncode == 0, f"helm {' '.join(args)}: rc {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out


def values_file(tmp_path: Path, name: str, values: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture
def helm(kubeconfig, tmp_path) -> Helm:
    return Helm(kubeconfig, tmp_path / "helm")


@pytest.fixture
def release_ns(k8s, helm):
    """The release's namespace, restricted by PodSecurity (operator pods and the test hook
    must pass it); whatever release the test installed there is uninstalled at the end."""
    core = client.CoreV1Api(k8s)
    name = f"pg-chart-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {
        "phasegate.dev/test": "true", "pod-security.kubernetes.io/enforce": "restricted"}}})
    yield name
    listed = helm.run("list", "-n", name, "-q", check=False).stdout.split()
    for rel in listed:
        helm.run("uninstall", rel, "-n", name, "--wait", "--timeout", "60s", check=False)
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise


def operator_pods(k8s, ns: str, release: str) -> list[Any]:
    pods = client.CoreV1Api(k8s).list_namespaced_pod(
        ns, label_selector=f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def ready(pod) -> bool:
    return pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def holder(k8s, ns: str) -> Optional[str]:
    try:
        return client.CoordinationV1Api(k8s).read_namespaced_lease(LEASE, ns).spec.holder_identity or None
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def healthz(ip: str, port: int = 8081) -> Optional[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def leader_pod(k8s, ns: str, release: str, health_port: int = 8081) -> Any:
    """The pod holding the Lease, which also says so on /healthz (kopf's probe)."""
    def find():
        by_name = {p.metadata.name: p for p in operator_pods(k8s, ns, release) if ready(p)}
        pod = by_name.get(holder(k8s, ns) or "")
        if pod is None:
            return None
        body = healthz(pod.status.pod_ip, health_port) or {}
        return pod if (body.get("leader") or {}).get("leading") is True else None
    return wait_for(find, 60, "a Ready operator pod holding the Lease and leading", interval=0.5)


def forbidden_lines(cluster, ns: str, pods: Optional[set[str]] = None) -> list[str]:
    """Every 403 in the logs of every operator pod the release ever ran (pods deleted since
    included: their folders stay on the local-process node), or of `pods` only."""
    out = []
    for log in sorted((cluster.pods_dir / ns).glob("*/operator.log")):
        if pods is not None and log.parent.name not in pods:
            continue
        out += [f"{log.parent.name}: {line}" for line in log.read_text(errors="replace").splitlines() if FORBIDDEN.search(line)]
    return out


def operator_logs(cluster, ns: str) -> list[Path]:
    return sorted((cluster.pods_dir / ns).glob("*/operator.log"))


def self_subject(kubeconfig: Path) -> dict[str, Any]:
    """Who the API server says the holder of these credentials is (SelfSubjectReview)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        resp = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, _preload_content=False)
        return json.loads(resp.data)["status"]["userInfo"]
    finally:
        api.close()


def can_i(kubeconfig: Path, ns: str, verb: str, resource: str, group: str = "") -> bool:
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        review = client.AuthorizationV1Api(api).create_self_subject_access_review({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": resource, "group": group}}})
        return bool(review.status.allowed)
    finally:
        api.close()


def pod_create(kubeconfig: Path, ns: str, dry_run: bool, admin: Any) -> Optional[str]:
    """Create a pod with these credentials: None when admitted, else the refusal. A pod
    admitted for real is deleted at once (by `admin`: the operator may not delete pods)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "e2e-by-the-operator-"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}], **LOCAL_NODE}}
    try:
        created = client.CoreV1Api(api).create_namespaced_pod(ns, body, **({"dry_run": "All"} if dry_run else {}))
        if not dry_run:  # admitted for real: the test fails on it; the pod must not stay
            admin.delete_namespaced_pod(created.metadata.name, ns, grace_period_seconds=0)
        return None
    except ApiException as e:
        return f"{e.status}: {json.loads(e.body).get('message', e.body)}"
    finally:
        api.close()


def process_env(cluster, ns: str, pod: str) -> dict[str, str]:
    pid = (cluster.pod_dir(ns, pod) / "pid").read_text().strip()
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def metrics_read(ts: Strategies, name: str, timeout: float = 60) -> None:
    ts.wait(name, lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s.get("conditions", [])),
            timeout, "metrics read")


def post_alert(ip: str, body: dict, token: Optional[str]) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{ip}:8080/alertmanager/webhook", data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def installed_rules(k8s, release: str, namespaces: list[str]) -> list[tuple[str, dict]]:
    rbac = client.RbacAuthorizationV1Api(k8s)
    sel = f"app.kubernetes.io/instance={release}"
    roles = [("ClusterRole " + r.metadata.name, r) for r in rbac.list_cluster_role(label_selector=sel).items]
    for ns in namespaces:
        roles += [(f"Role {ns}/{r.metadata.name}", r) for r in rbac.list_namespaced_role(ns, label_selector=sel).items]
    return [(name, rule.to_dict()) for name, r in roles for rule in r.rules or []]


def chart_values(strategies_ns: str) -> dict[str, Any]:
    return {
        **LOCAL_NODE,
        "image": {"repository": "phasegate", "tag": "e2e"},  # not pulled: the node runs the command
        "watchNamespace": strategies_ns,
        "bindAddress": "$(POD_IP)",
        "leaderElection": {"leaseDuration": 6, "renewDeadline": 4, "retryPeriod": 1},
        "readinessProbe": {"initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
        "alertmanager": {"tokenSecret": {"name": "alertmanager-token", "key": "token"}},
    }


@pytest.mark.timeout(420)
def test_chart_runs_the_operator_under_its_own_service_account_and_rbac(
    k8s, kubeconfig, cluster, helm, release_ns, namespace, tmp_path
):
    rel = "pgchart"
    ts = Strategies(k8s, namespace)
    core = client.CoreV1Api(k8s)
    core.create_namespaced_secret(release_ns, {"metadata": {"name": "alertmanager-token"}, "stringData": {"token": TOKEN}})
    helm.run("install", rel, str(CHART), "-n", release_ns, "-f", values_file(tmp_path, "values", chart_values(namespace)),
             "--wait", "--timeout", "180s")
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 2 and all(map(ready, ps)) else None)(
        operator_pods(k8s, release_ns, rel)), 90, "two Ready operator replicas")
    lead = leader_pod(k8s, release_ns, rel)
    standby = next(p for p in pods if p.metadata.name != lead.metadata.name)
    assert (healthz(standby.status.pod_ip) or {}).get("leader", {}).get("leading") is False

    # The operator's credentials are the ServiceAccount's, bound to its pod.
    sa = f"system:serviceaccount:{release_ns}:{rel}-phasegate"
    for pod in pods:
        pod_kubeconfig = cluster.pod_dir(release_ns, pod.metadata.name) / "kubeconfig"
        assert process_env(cluster, release_ns, pod.metadata.name)["KUBECONFIG"] == str(pod_kubeconfig)
        who = self_subject(pod_kubeconfig)
        assert who["username"] == sa, who
        assert who["extra"]["authentication.kubernetes.io/pod-name"] == [pod.metadata.name], who
    pod_kubeconfig = cluster.pod_dir(release_ns, lead.metadata.name) / "kubeconfig"
    assert can_i(pod_kubeconfig, namespace, "patch", "tradingstrategies", "phasegate.dev")
    for verb, resource, group in (("get", "secrets", ""), ("list", "secrets", ""), ("delete", "pods", ""),
                                  ("create", "deployments", "apps"), ("create", "rolebindings", "rbac.authorization.k8s.io")):
        assert not can_i(pod_kubeconfig, namespace, verb, resource, group), f"the operator may {verb} {resource}"
    # Its one pod grant, create, is for the dry run of a strategy's next pod: a real create
    # is refused by the chart's admission policy (rbac.podDryRunOnly).
    assert pod_create(pod_kubeconfig, namespace, dry_run=True, admin=core) is None
    refusal = pod_create(pod_kubeconfig, namespace, dry_run=False, admin=core)
    assert refusal is not None and "only as a server-side dry run" in refusal, refusal
    # Minimal RBAC: no wildcard anywhere, nothing on Secrets, as installed.
    rules = installed_rules(k8s, rel, [release_ns, namespace])
    assert rules, "no Role or ClusterRole of the release found"
    for name, rule in rules:
        for key in ("verbs", "resources", "api_groups"):
            assert "*" not in (rule.get(key) or []), f"{name}: wildcard {key}: {rule}"
        assert "secrets" not in (rule.get("resources") or []), f"{name}: {rule}"

    # The ladder, an emergency, an alert: all at once, under the leader.
    ts.create(plans.strategy("climber"))
    ts.create(plans.strategy("panic", phases=PAPER_ONLY))
    ts.create(plans.strategy("alerted", phases=PAPER_ONLY))
    st = ts.wait("climber", lambda s: s.get("state") == "Completed", 120, "Completed")
    assert history_actions(st) == EXPECTED, history_actions(st)
    assert st["phase"] == "live-100" and ts.replicas("climber") == 1

    # A halt, then a reset (a person, with the CLI; the operator acts).
    res = run_cli(kubeconfig, namespace, "halt", "climber", "--reason", "desk kill switch")
    assert res.returncode == 0, res.stdout + res.stderr
    ts.wait("climber", lambda s: s.get("state") == "Halted", 30, "Halted")
    wait_for(lambda: ts.replicas("climber") == 0, 20, "climber scaled to 0")
    res = run_cli(kubeconfig, namespace, "reset", "climber", "--reason", "post-mortem filed")
    assert res.returncode == 0, res.stdout + res.stderr
    ts.wait("climber", lambda s: s.get("state") in ("Progressing", "Completed"), 30, "reset")
    wait_for(lambda: ts.replicas("climber") == 1, 20, "climber back to 1 replica")

    # An emergency: stop, cancel, the flatten Job, lockdown.
    metrics_read(ts, "panic")
    res = run_cli(kubeconfig, namespace, "emergency", "panic", "--severity", "critical", "--reason", "exchange halted trading")
    assert res.returncode == 0, res.stdout + res.stderr
    st = ts.wait("panic", lambda s: (s.get("emergency") or {}).get("finished"), 90, "emergency sequence finished")
    assert st["state"] == "EmergencyStopped"
    assert {s["name"]: s["outcome"] for s in st["emergency"]["steps"]}["flatten"] == "Succeeded"
    jobs = client.BatchV1Api(k8s).list_namespaced_job(namespace).items
    flatten = [j for j in jobs if "-flatten-" in j.metadata.name]
    assert len(flatten) == 1 and flatten[0].status.succeeded == 1

    # The Alertmanager receiver: its token comes from the Secret, by reference.
    metrics_read(ts, "alerted")
    payload = {"version": "4", "status": "firing", "receiver": "phasegate", "alerts": [{
        "status": "firing", "startsAt": "2026-11-22T02:00:00Z",
        "labels": {"alertname": "HighOrderLatency", "namespace": namespace, "pod": "alerted-0", "severity": "critical"},
        "annotations": {"summary": "p95 order latency above 2s for 5m"}}]}
    assert post_alert(lead.status.pod_ip, payload, "wrong")[0] == 401
    code, body = post_alert(lead.status.pod_ip, payload, TOKEN)
    assert code == 200 and body["results"][0]["result"] == "tripped", body
    ts.wait("alerted", lambda s: s.get("state") == "Halted", 30, "Halted by the alert")
    wait_for(lambda: ts.replicas("alerted") == 0, 20, "alerted scaled to 0")

    # Leader election: the leader's pod is deleted. On SIGTERM it hands the Lease over before
    # its shutdown; the standby (or, if it started fast, the pod replacing the leader) leads.
    core.delete_namespaced_pod(lead.metadata.name, release_ns)
    new_lead = wait_for(lambda: (lambda p: p if p.metadata.name != lead.metadata.name else None)(
        leader_pod(k8s, release_ns, rel)), 60, "another replica leads")
    old_log = cluster.pods_dir / release_ns / lead.metadata.name / "operator.log"
    events = wait_for(lambda: (lambda ev: ev if "released the leader lease" in ev else None)(
        [json.loads(line).get("event", "") for line in old_log.read_text().splitlines() if line.startswith("{")]),
        30, "the old leader released the Lease")
    stopping = [i for i, e in enumerate(events) if "Operator is stopping" in e]
    assert stopping and events.index("released the leader lease") < stopping[0], events[-20:]
    wait_for(lambda: (lambda ps: len(ps) == 2 and all(map(ready, ps)))(operator_pods(k8s, release_ns, rel)), 90,
             "the Deployment back to two Ready replicas")
    seq = ts.status("climber")["historySeq"]
    res = run_cli(kubeconfig, namespace, "halt", "climber", "--reason", "the new leader acts")
    assert res.returncode == 0, res.stdout + res.stderr
    st = ts.wait("climber", lambda s: s.get("state") == "Halted", 30, "Halted by the new leader")
    assert st["historySeq"] == seq + 1

    # `helm test`: the hook Job, pointed at the leader's pod (no Service routing here). An
    # upgrade that changes only the hook's values leaves the Deployment alone.
    deploy = client.AppsV1Api(k8s).read_namespaced_deployment(f"{rel}-phasegate", release_ns)
    ip = new_lead.status.pod_ip
    helm.run("upgrade", rel, str(CHART), "-n", release_ns, "--reuse-values", "--wait", "--timeout", "120s",
             "--set", f"helmTest.metricsURL=http://{ip}:8080/metrics", "--set", f"helmTest.healthURL=http://{ip}:8081/healthz")
    assert client.AppsV1Api(k8s).read_namespaced_deployment(
        f"{rel}-phasegate", release_ns).metadata.generation == deploy.metadata.generation
    out = helm.run("test", rel, "-n", release_ns, "--timeout", "120s")
    assert "Phase:          Succeeded" in out.stdout, out.stdout
    # ... and it fails when the operator does not answer there.
    helm.run("upgrade", rel, str(CHART), "-n", release_ns, "--reuse-values", "--wait", "--timeout", "120s",
             "--set", f"helmTest.healthURL=http://{ip}:{free_port()}/healthz", "--set", "helmTest.timeoutSeconds=3")
    out = helm.run("test", rel, "-n", release_ns, "--timeout", "120s", check=False)
    assert out.returncode != 0 and "Failed" in out.stdout + out.stderr, out.stdout + out.stderr

    # No request of the operator was refused, in any replica's log.
    logs = operator_logs(cluster, release_ns)
    assert len(logs) >= 3, logs  # both replicas, and the one that replaced the deleted leader
    assert any('"transition"' in p.read_text() for p in logs), "the logs read are the operator's"
    assert forbidden_lines(cluster, release_ns) == []


def _strategy_pod(ts: Strategies, name: str) -> Any:
    return ts.core.read_namespaced_pod(f"{name}-0", ts.ns)


def _status_writes(obj: dict[str, Any], manager: str) -> list[datetime]:
    return [datetime.fromisoformat(m["time"].replace("Z", "+00:00")) for m in obj["metadata"].get("managedFields") or []
            if m.get("manager") == manager and m.get("subresource") == "status"]


@pytest.mark.timeout(720)
def test_helm_upgrade_from_the_previous_chart_leaves_a_live_strategy_untouched(
    k8s, kubeconfig, cluster, helm, release_ns, namespace, tmp_path
):
    """Chart 0.1.0 (tests/fixtures/phasegate-0.1.0.tgz), one replica, a strategy at live-10;
    `helm upgrade` to this checkout's chart with two replicas. The strategy's pod is the same
    pod, not restarted; no history entry; its StatefulSet's generation unchanged; a new
    replica leads and evaluates it.

    0.1.0 listens on 0.0.0.0, so on this node, where every pod shares the host's network, its
    ports would collide with those of the new pods during the rolling update (maxUnavailable
    0 keeps the old pod until a new one is Ready): the upgrade moves metrics.port and
    health.port. On a real cluster each pod has its own network and the ports stay. (The
    Deployment controller may scale the old ReplicaSet up with the new replica count for a
    moment; such a second 0.1.0 pod cannot bind those ports here and stands by until it goes.)

    0.1.0's RBAC lacks `create` on pods, which the operator's server-side dry run of a
    strategy's next pod needs (the gap this test module found; 0.2.0 grants it): with it
    alone, no rung change happens. The test grants exactly that verb to the 0.1.0 release's
    ServiceAccount with a Role of its own, and deletes it before the upgrade, so that the
    upgraded release runs on the chart's RBAC alone.
    """
    rel = "pgupgrade"
    ts = Strategies(k8s, namespace)
    old_ports = {"metrics": {"port": free_port()}, "health": {"port": free_port()}}
    old_values = {**LOCAL_NODE, "image": {"repository": "phasegate", "tag": "e2e"}, "watchNamespace": namespace,
                  "replicaCount": 1, **old_ports,
                  "readinessProbe": {"initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3}}
    helm.run("install", rel, str(PREVIOUS_CHART), "-n", release_ns, "-f", values_file(tmp_path, "old", old_values),
             "--wait", "--timeout", "180s")
    assert helm.run("list", "-n", release_ns, "-o", "json").stdout.count('"chart":"phasegate-0.1.0"') == 1
    (old_pod,) = wait_for(lambda: (lambda ps: ps if len(ps) == 1 and ready(ps[0]) else None)(
        operator_pods(k8s, release_ns, rel)), 90, "the 0.1.0 operator Ready")
    leader_pod(k8s, release_ns, rel, old_ports["health"]["port"])
    rbac = client.RbacAuthorizationV1Api(k8s)
    gap = "e2e-chart-0-1-0-dry-run"
    rbac.create_namespaced_role(namespace, {"metadata": {"name": gap}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": gap}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": gap},
        "subjects": [{"kind": "ServiceAccount", "name": f"{rel}-phasegate", "namespace": release_ns}]})

    phases = [{"name": "paper", "mode": "paper", "minDuration": "2s"},
              {"name": "live-10", "mode": "live", "fraction": 0.10, "minDuration": "1h"},
              {"name": "live-100", "mode": "live", "fraction": 1.0}]
    ts.create(plans.strategy("steady", phases=phases))
    ts.wait("steady", lambda s: s.get("phase") == "live-10" and s.get("state") == "Progressing", 60, "live-10")
    wait_for(lambda: (lambda p: p.metadata.annotations.get("phasegate.dev/phase") == "live-10" and ready(p))(
        _strategy_pod(ts, "steady")), 60, "steady-0 running live-10")
    time.sleep(3)  # a few evaluations at the rung: nothing is still moving
    before = ts.status("steady")
    pod = _strategy_pod(ts, "steady")
    sts = ts.apps.read_namespaced_stateful_set("steady", namespace)

    new_values = {**chart_values(namespace), "alertmanager": {"tokenSecret": {"name": "", "key": "token"}},
                  "metrics": {"port": 8080}, "health": {"port": 8081}}
    rbac.delete_namespaced_role_binding(gap, namespace)
    rbac.delete_namespaced_role(gap, namespace)
    upgraded_at = datetime.now(UTC).replace(microsecond=0)
    helm.run("upgrade", rel, str(CHART), "-n", release_ns, "-f", values_file(tmp_path, "new", new_values),
             "--wait", "--timeout", "180s")
    assert '"chart":"phasegate-0.2.0"' in helm.run("list", "-n", release_ns, "-o", "json").stdout
    new_pods = wait_for(lambda: (lambda ps: ps if len(ps) == 2 and all(map(ready, ps))
                                 and old_pod.metadata.name not in {p.metadata.name for p in ps} else None)(
        operator_pods(k8s, release_ns, rel)), 120, "two new Ready replicas, the 0.1.0 pod gone")
    lead = leader_pod(k8s, release_ns, rel)
    assert lead.metadata.name in {p.metadata.name for p in new_pods}
    # The new leader evaluates the strategy: it writes its status, under its own name, and
    # keeps doing so (a roll it decided would have started by then). A pass that changes
    # nothing a person needs writes its bookkeeping at most every 120 s (counted from when the
    # new process first read the strategy), so each write can take two minutes to come.
    manager = f"phasegate@{lead.metadata.name}"
    first = wait_for(lambda: max([t for t in _status_writes(ts.get("steady"), manager) if t >= upgraded_at], default=None),
                     180, "the new leader writes the strategy's status")
    wait_for(lambda: max(_status_writes(ts.get("steady"), manager)) >= first + timedelta(seconds=5), 180,
             "the new leader writes the status again later")

    after = ts.status("steady")
    assert after["history"] == before["history"] and after["historySeq"] == before["historySeq"]
    rung = ("phase", "state", "capitalFraction")
    assert [after[k] for k in rung] == [before[k] for k in rung]
    pod_after = _strategy_pod(ts, "steady")
    assert pod_after.metadata.uid == pod.metadata.uid, "the strategy's pod was replaced"
    restarts = [c.restart_count for c in pod.status.container_statuses]
    assert [c.restart_count for c in pod_after.status.container_statuses] == restarts, "the strategy was restarted"
    sts_after = ts.apps.read_namespaced_stateful_set("steady", namespace)
    assert sts_after.metadata.generation == sts.metadata.generation
    assert sts_after.spec.template == sts.spec.template
    assert forbidden_lines(cluster, release_ns, {p.metadata.name for p in new_pods}) == []
