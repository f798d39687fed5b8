"""Strategy pods under the `restricted` Pod Security Standard, on the real apiserver.

The namespace is labelled pod-security.kubernetes.io/enforce=restricted (and warn=restricted),
so kube-apiserver's built-in PodSecurity admission (on by default; localcluster.py neither
enables nor disables admission plugins) refuses any pod that breaks the profile. First a
negative control shows that it does refuse, field by field, in this namespace; then the
operator runs a strategy there through its backtest Job, to a live rung, a halt, a reset
and a critical emergency with its flatten Job, and every pod it asked for was admitted.
The SDK's demo strategy runs there too, writing its checkpoint into the checkpoint volume.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import time
import types
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from phasegate.api import State, StrategySpec, StrategyStatus, contract
from phasegate.manifests import Owner, backtest_job, flatten_job, statefulset

import local_kubelet
import plans  # noqa: E402  (tests/support)

from .strategy_env import Strategies, install_crd, pod_starts, run_cli, start_operator, wait_for
from .test_demo_strategy_e2e import SHUTDOWN_ORDER, demo_strategy
from .test_risk_e2e import pod_of_phase

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "support" / "local_pod_app.py"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}
LADDER = [
    {"name": "backtest", "mode": "backtest"},
    {"name": "paper", "mode": "paper", "minDuration": "3s"},
    {"name": "live-10", "mode": "live", "fraction": 0.1, "minDuration": "1h"},
]


def _rules():
    """The profile's rules, written out once in the unit test (tests/unit/manifests)."""
    path = ROOT / "tests" / "unit" / "manifests" / "test_pod_security.py"
    spec = importlib.util.spec_from_file_location("_restricted_rules", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RULES = _rules()


@pytest.fixture(scope="module", autouse=True)
def crd(k8s):
    install_crd(k8s)


@pytest.fixture
def restricted(k8s, namespace) -> str:
    label_restricted(client.CoreV1Api(k8s), namespace)
    return namespace


# --------------------------------------------------------------------------- helpers


def raw(resp) -> dict[str, Any]:
    return json.loads(resp.data)


def warnings_of(resp) -> list[str]:
    headers = resp.headers
    values = headers.getlist("Warning") if hasattr(headers, "getlist") else [headers.get("Warning") or ""]
    return [w for w in values if w]


def pod_from(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": copy.deepcopy(template["spec"])}


def built_objects(namespace: str) -> dict[str, dict[str, Any]]:
    """The StatefulSet and Jobs exactly as the operator builds them, for the fake strategy."""
    spec = StrategySpec.model_validate(plans.strategy("probe", phases=LADDER, max_fraction=0.1)["spec"])
    owner = Owner(name="probe", namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    live = StrategyStatus(phase="live-10", phase_index=2, state=State.PROGRESSING, capital_fraction=Decimal("0.1"))
    return {
        "statefulset": statefulset(spec, live, owner),
        "backtest": backtest_job(spec, StrategyStatus(phase="backtest", phase_index=0, state=State.VALIDATING), owner),
        "flatten": flatten_job(spec, live.model_copy(update={"state": State.EMERGENCY_STOPPED}), owner, "0123456789abcdef"),
    }


def _sc(pod: dict) -> dict:
    return pod["spec"]["containers"][0]["securityContext"]


def _privileged(pod: dict) -> None:
    _sc(pod).update(privileged=True)
    _sc(pod).pop("allowPrivilegeEscalation")  # privileged with it false is invalid, not just forbidden


# Each breaks one rule of the profile; PodSecurity's message names the rule.
LOOSENED = {
    "privileged": (_privileged, "privileged"),
    "allowPrivilegeEscalation unset": (lambda p: _sc(p).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation != false"),
    "capabilities not dropped": (lambda p: _sc(p).pop("capabilities"), "unrestricted capabilities"),
    "capability added": (lambda p: _sc(p)["capabilities"].update(add=["NET_ADMIN"]), "unrestricted capabilities"),
    "runAsNonRoot unset": (lambda p: (_sc(p).pop("runAsNonRoot"), p["spec"]["securityContext"].pop("runAsNonRoot")),
                           "runAsNonRoot != true"),
    "runAsUser 0": (lambda p: p["spec"]["securityContext"].update(runAsUser=0), "runAsUser=0"),
    "seccomp unset": (lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "seccomp Unconfined": (lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
                           "seccompProfile"),
    "hostNetwork": (lambda p: p["spec"].update(hostNetwork=True), "host namespaces"),
    "hostPath volume": (lambda p: p["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
    "hostPort": (lambda p: p["spec"]["containers"][0]["ports"][0].update(hostPort=9100), "hostPort"),
    "unsafe sysctl": (lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "65536"}]),
                      "sysctls"),
    "seLinux type": (lambda p: _sc(p).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions"),
    "appArmor Unconfined": (lambda p: _sc(p).update(appArmorProfile={"type": "Unconfined"}), "AppArmor"),
}


def label_restricted(core: client.CoreV1Api, ns: str) -> float:
    """Label the namespace, then wait until PodSecurity admission acts on the label (it reads
    namespaces from an informer, a moment behind the write). Returns the seconds that took."""
    core.patch_namespace(ns, {"metadata": {"labels": RESTRICTED}})
    t0 = time.monotonic()
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "label-probe"},
             "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]}}
    wait_for(lambda: forbidden(core, ns, probe), 15, f"PodSecurity to enforce restricted in {ns}", interval=0.05)
    return time.monotonic() - t0


def forbidden(core: client.CoreV1Api, ns: str, pod: dict) -> str:
    """The refusal message of a dry-run create, or "" when the pod is admitted."""
    try:
        core.create_namespaced_pod(ns, pod, dry_run="All", _preload_content=False)
        return ""
    except ApiException as e:
        assert e.status == 403, f"{e.status}: {e.body}"
        return json.loads(e.body)["message"]


def assert_restricted(pod: dict[str, Any], what: str) -> None:
    """A pod read back from the apiserver carries the hardened fields (and so passed admission)."""
    spec = pod["spec"]
    assert RULES.restricted_violations(spec, pod["metadata"].get("annotations")) == [], what
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 65532, what
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
    assert spec["automountServiceAccountToken"] is False, what
    assert not any(v["name"].startswith("kube-api-access") for v in spec["volumes"]), f"{what}: a token volume"
    sc = spec["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], what
    assert sc["readOnlyRootFilesystem"] is True, what


def pods_of(core: client.CoreV1Api, ns: str, strategy: str, component: str) -> list[dict[str, Any]]:
    selector = f"{contract.LABEL_STRATEGY}={strategy},{contract.LABEL_COMPONENT}={component}"
    return raw(core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False))["items"]


def pod_security_refusals(core: client.CoreV1Api, ns: str) -> list[str]:
    """FailedCreate Events of the StatefulSet and Job controllers that name PodSecurity."""
    items = raw(core.list_namespaced_event(ns, _preload_content=False))["items"]
    return [e.get("message", "") for e in items if e.get("reason") == "FailedCreate" and "PodSecurity" in e.get("message", "")]


def admitted(ts: Strategies, pred):
    """A wait predicate that fails at once, with the apiserver's words, when a pod was refused."""
    def check(status: dict[str, Any]) -> bool:
        refused = pod_security_refusals(ts.core, ts.ns)
        assert not refused, f"PodSecurity refused a pod: {refused[0]}"
        return pred(status)
    return check


def delete_strategy(ts: Strategies, name: str) -> None:
    """While the operator runs, so that its finalizer goes and the namespace can be deleted."""
    try:
        ts.api.delete_namespaced_custom_object("phasegate.dev", "v1alpha1", ts.ns, "tradingstrategies", name)
    except ApiException as e:
        if e.status != 404:
            raise

    def gone() -> bool:
        try:
            ts.get(name)
            return False
        except ApiException as e:
            return e.status == 404

    wait_for(gone, 30, f"{name} deleted")


# --------------------------------------------------------------------------- the admission is real


@pytest.mark.timeout(60)
def test_podsecurity_admission_refuses_each_loosened_field_and_admits_the_built_pods(k8s, namespace):
    core = client.CoreV1Api(k8s)
    objects = built_objects(namespace)
    privileged = pod_from(objects["statefulset"]["spec"]["template"], "bad")
    _privileged(privileged)
    # without the label the same privileged pod is admitted (the apiserver allows privileged
    # pods): what refuses it below is the namespace's PodSecurity level, nothing else
    assert forbidden(core, namespace, privileged) == ""
    lag = label_restricted(core, namespace)
    print(f"\n[pod-security] PodSecurity enforced the new label after {lag:.2f}s")

    message = forbidden(core, namespace, privileged)
    assert 'violates PodSecurity "restricted:latest"' in message and "privileged" in message, message
    for kind, obj in objects.items():
        pod = pod_from(obj["spec"]["template"], f"{kind}-probe")
        assert forbidden(core, namespace, pod) == "", f"the {kind} pod was refused"
        for what, (loosen, words) in LOOSENED.items():
            bad = copy.deepcopy(pod)
            loosen(bad)
            message = forbidden(core, namespace, bad)
            assert "violates PodSecurity" in message and words in message, f"{kind}, {what}: {message!r}"

    # The workload objects themselves: warn=restricted checks their pod templates at once.
    apps, batch = client.AppsV1Api(k8s), client.BatchV1Api(k8s)
    create = {"statefulset": apps.create_namespaced_stateful_set, "backtest": batch.create_namespaced_job,
              "flatten": batch.create_namespaced_job}
    for kind, obj in objects.items():
        resp = create[kind](namespace, obj, dry_run="All", _preload_content=False)
        assert not [w for w in warnings_of(resp) if "PodSecurity" in w], kind
        bad = copy.deepcopy(obj)
        _privileged(bad["spec"]["template"])
        resp = create[kind](namespace, bad, dry_run="All", _preload_content=False)
        assert any("would violate PodSecurity" in w for w in warnings_of(resp)), f"{kind}: no warning for a privileged template"


BAD_TEMPLATES = [
    ({"runAsUser": 0}, "spec.template.runAsUser"),
    ({"runAsGroup": 0}, "spec.template.runAsGroup"),
    ({"fsGroup": 0}, "spec.template.fsGroup"),
    ({"runAsUser": -5}, "spec.template.runAsUser"),
    ({"automountServiceAccountToken": True}, "automountServiceAccountToken: true needs spec.template.serviceAccountName"),
    ({"securityContext": {"privileged": True}}, "securityContext"),
    ({"hostNetwork": True}, "hostNetwork"),
    ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "volumes"),
]


@pytest.mark.timeout(90)
def test_the_crd_refuses_a_template_that_would_loosen_the_pod(k8s, namespace, cluster, kubeconfig, tmp_path):
    """At apply time, naming the field: root ids, a token without an account, and fields the
    template does not have (kubectl's strict field validation)."""
    kubectl = str(cluster.bin_dir / "kubectl")
    for i, (template, words) in enumerate(BAD_TEMPLATES):
        body = plans.strategy(f"bad-{i}", max_fraction=0.1)
        body["spec"]["template"].update(template)
        path = tmp_path / f"bad-{i}.yaml"
        path.write_text(yaml.safe_dump(body))
        res = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "apply", "-f", str(path)],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode != 0, f"{template} was accepted"
        assert words in res.stderr, f"{template}: {res.stderr}"
    good = plans.strategy("good", max_fraction=0.1)
    good["spec"]["template"].update(runAsUser=1000, runAsGroup=1000, fsGroup=1000, readOnlyRootFilesystem=False,
                                    serviceAccountName="strategy", automountServiceAccountToken=True)
    stored = Strategies(k8s, namespace).create(good)["spec"]["template"]
    assert stored["runAsUser"] == 1000 and stored["automountServiceAccountToken"] is True
    defaulted = Strategies(k8s, namespace).create(plans.strategy("defaults", max_fraction=0.1))["spec"]["template"]
    assert (defaulted["runAsUser"], defaulted["runAsGroup"], defaulted["fsGroup"]) == (65532, 65532, 65532)
    assert defaulted["readOnlyRootFilesystem"] is True and defaulted["automountServiceAccountToken"] is False
    assert defaulted.get("securityContext") is None


# --------------------------------------------------------------------------- the ladder there


@pytest.mark.timeout(240)
def test_the_ladder_runs_in_a_restricted_namespace(k8s, kubeconfig, restricted, tmp_path, cluster):
    ns = restricted
    ts = Strategies(k8s, ns)
    op = start_operator(kubeconfig, ns, tmp_path)
    name = "hardened"
    try:
        t0 = time.monotonic()
        ts.create(plans.strategy(name, phases=LADDER, max_fraction=0.1))
        st = ts.wait(name, admitted(ts, lambda s: s.get("phase") == "live-10"), 120,
                     "through the backtest Job and paper to live-10")
        assert st["backtest"]["outcome"] == "Passed"
        pod_of_phase(ts, name, "live-10", timeout=60)
        climb = time.monotonic() - t0
        (bt,) = pods_of(ts.core, ns, name, "backtest")
        assert bt["status"]["phase"] == "Succeeded"
        assert_restricted(bt, "backtest pod")
        live = raw(ts.core.read_namespaced_pod(f"{name}-0", ns, _preload_content=False))
        assert_restricted(live, "live-10 pod")
        # the local kubelet put the checkpoint dir into the pod's emptyDir folder
        env = pod_starts(cluster, ns, f"{name}-0")[-1]["env"]
        assert Path(env[contract.ENV_CHECKPOINT_DIR]) == cluster.pod_dir(ns, f"{name}-0") / "volumes" / "checkpoints"

        # a halt, then a reset: the pod comes back, admitted again
        res = run_cli(kubeconfig, ns, "halt", name, "--reason", "desk kill switch")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()
        ts.wait(name, lambda s: s.get("state") == "Halted", 20, "Halted")
        wait_for(lambda: ts.replicas(name) == 0, 15, "replicas 0")
        res = run_cli(kubeconfig, ns, "reset", name, "--reason", "post-mortem filed")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()
        ts.wait(name, lambda s: s.get("state") not in ("Halted", None), 20, "left Halted")
        wait_for(lambda: ts.replicas(name) == 1, 15, "replicas 1")
        pod_of_phase(ts, name, "live-10", timeout=60)
        assert_restricted(raw(ts.core.read_namespaced_pod(f"{name}-0", ns, _preload_content=False)), "pod after reset")
        ts.wait(name, lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s["conditions"]),
                30, "metrics after the reset")

        # a critical emergency: its flatten Job's pod is admitted and runs to the end
        res = run_cli(kubeconfig, ns, "emergency", name, "--severity", "critical", "--reason", "venue halted")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()
        st = ts.wait(name, admitted(ts, lambda s: (s.get("emergency") or {}).get("finished")), 90, "emergency sequence finished")
        assert st["state"] == "EmergencyStopped"
        steps = {s["name"]: s["outcome"] for s in st["emergency"]["steps"]}
        assert steps["flatten"] == "Succeeded", st["emergency"]
        (fl,) = pods_of(ts.core, ns, name, "flatten")
        assert fl["status"]["phase"] == "Succeeded"
        assert_restricted(fl, "flatten pod")
        assert ts.replicas(name) == 0

        # and the StatefulSet and Job controllers were never refused a pod
        assert pod_security_refusals(ts.core, ns) == []
        print(f"\n[pod-security] backtest -> live-10 in {climb:.1f}s; whole ladder {time.monotonic() - t0:.1f}s")
    finally:
        try:
            delete_strategy(ts, name)
        finally:
            op.stop()


@pytest.mark.timeout(240)
def test_the_sdk_demo_strategy_runs_and_checkpoints_under_the_defaults(k8s, kubeconfig, restricted, tmp_path, cluster):
    """The SDK, unchanged, in a restricted namespace: backtest Job graded, paper metrics read,
    and on SIGTERM its final checkpoint lands in the checkpoint volume."""
    ns = restricted
    ts = Strategies(k8s, ns)
    op = start_operator(kubeconfig, ns, tmp_path)
    body = demo_strategy("sdk")
    body["spec"]["phases"] = [{"name": "backtest", "mode": "backtest"}, {"name": "paper", "mode": "paper", "minDuration": "1h"},
                              {"name": "live-10", "mode": "live", "fraction": 0.1}]
    try:
        ts.create(body)
        ts.wait("sdk", admitted(ts, lambda s: s.get("phase") == "paper"), 150, "the backtest passed")
        pod_of_phase(ts, "sdk", "paper", timeout=60)
        ts.wait("sdk", lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s["conditions"]),
                30, "paper metrics")
        assert_restricted(raw(ts.core.read_namespaced_pod("sdk-0", ns, _preload_content=False)), "SDK pod")
        (bt,) = pods_of(ts.core, ns, "sdk", "backtest")
        assert_restricted(bt, "SDK backtest pod")
        res = run_cli(kubeconfig, ns, "halt", "sdk", "--reason", "stop to look at the checkpoint")
        assert res.returncode == 0, res.stdout + res.stderr + op.tail()

        def stopped() -> bool:
            try:
                ts.core.read_namespaced_pod("sdk-0", ns)
                return False
            except ApiException as e:
                return e.status == 404

        wait_for(stopped, 40, "the pod to finish its shutdown")
        lines = [json.loads(x) for x in cluster.pod_log(ns, "sdk-0").read_text().splitlines() if x.startswith("{")]
        steps = [x for x in lines if x.get("event") == "shutdown.step"]
        assert [x["step"] for x in steps] == SHUTDOWN_ORDER and all(x["status"] == "ok" for x in steps), steps
        checkpoints = cluster.pod_dir(ns, "sdk-0") / "volumes" / "checkpoints"
        written = sorted(p.name for p in checkpoints.iterdir())
        assert any(n.endswith(".checkpoint.json") for n in written), written
        assert pod_security_refusals(ts.core, ns) == []
    finally:
        try:
            delete_strategy(ts, "sdk")
        finally:
            op.stop()


# --------------------------------------------------------------------------- the local kubelet


@pytest.mark.timeout(60)
def test_the_local_kubelet_runs_a_hardened_pod_with_its_volumes(k8s, restricted, cluster):
    """The built pod shape (read-only root filesystem, emptyDirs at the checkpoint dir and
    /tmp) on the local-process node: admitted, running, the volumes mapped to its folder,
    TMPDIR at its /tmp volume, and the kubelet's own PATH left alone."""
    core = client.CoreV1Api(k8s)
    template = built_objects(restricted)["statefulset"]["spec"]["template"]
    pod = pod_from(template, "shape")
    c = pod["spec"]["containers"][0]
    c.update(command=["python", str(APP)], readinessProbe={"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1})
    c["env"] = [e for e in c["env"] if "valueFrom" not in e] + [{"name": "APP_PORT", "value": "8080"}]
    pod["spec"].update(nodeSelector={local_kubelet.TAINT["key"]: "true"},
                       tolerations=[{"key": local_kubelet.TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}])
    core.create_namespaced_pod(restricted, pod)

    def ready():
        p = raw(core.read_namespaced_pod("shape", restricted, _preload_content=False))
        return p if any(x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions", [])) else None

    p = wait_for(ready, 30, "the hardened pod Ready")
    with NO_PROXY.open(f"http://{p['status']['podIP']}:8080/env", timeout=5) as r:
        env = json.loads(r.read())
    folder = cluster.pod_dir(restricted, "shape") / "volumes"
    assert env["TMPDIR"] == str(folder / "tmp")
    assert env[contract.ENV_CHECKPOINT_DIR] == str(folder / "checkpoints")
    assert (folder / "tmp").is_dir() and (folder / "checkpoints").is_dir()
    kubelet_pid = cluster.status()["components"]["local-kubelet"]["pid"]
    kubelet_env = dict(x.split("=", 1) for x in Path(f"/proc/{kubelet_pid}/environ").read_text().split("\0") if "=" in x)
    assert env["PATH"] == kubelet_env["PATH"]
    core.delete_namespaced_pod("shape", restricted, grace_period_seconds=2)


def test_the_local_kubelet_rewrites_only_the_pods_own_paths(tmp_path, monkeypatch):
    """A checkout under /tmp: the kubelet's PATH and VIRTUAL_ENV start with /tmp, and a
    volume at /tmp must not move them; a pod's own /tmp path and TMPDIR do move."""
    monkeypatch.setenv("PATH", "/tmp/checkout/.venv/bin:/usr/bin")
    monkeypatch.setenv("VIRTUAL_ENV", "/tmp/checkout/.venv")
    kubelet = types.SimpleNamespace(pods_dir=tmp_path / "pods", state_dir=tmp_path, read_data=None)
    pod = {
        "metadata": {"namespace": "ns", "name": "p", "uid": "u"},
        "spec": {
            "containers": [{"name": "c", "env": [{"name": "SCRATCH", "value": "/tmp/work"}],
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    runner = local_kubelet.PodRunner(kubelet, pod)
    env = runner.build_env()
    local = tmp_path / "pods" / "ns" / "p" / "volumes" / "tmp"
    assert env["PATH"] == "/tmp/checkout/.venv/bin:/usr/bin" and env["VIRTUAL_ENV"] == "/tmp/checkout/.venv"
    assert env["SCRATCH"] == f"{local}/work" and env["TMPDIR"] == str(local)
