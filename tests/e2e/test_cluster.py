"""Proofs that the local control plane is a real one (issue 2).

Each test talks to the kube-apiserver started by hack/cluster/localcluster.py; pods on the
`local-process` node run tests/support/local_pod_app.py as a real local process.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

import local_kubelet
import localcluster

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "tests" / "support" / "local_pod_app.py"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers


def wait_for(fn, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
        except ApiException as e:
            value, last = None, f"HTTP {e.status} {e.reason}"
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")
        time.sleep(interval)


def as_dict(resp) -> dict:
    return json.loads(resp.data)


def read_pod(core: client.CoreV1Api, ns: str, name: str) -> dict:
    return as_dict(core.read_namespaced_pod(name, ns, _preload_content=False))


def gone(read, *args) -> bool:
    try:
        read(*args, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def condition(obj: dict, ctype: str) -> str | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c["type"] == ctype:
            return c["status"]
    return None


def local_pod(name: str, env: dict[str, str] | None = None, *, restart: str = "Always", grace: int = 30,
              extra_env: list | None = None, **container) -> dict:
    """A pod for the local-process node running tests/support/local_pod_app.py."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {local_kubelet.TAINT["key"]: "true"},
            "tolerations": [{"key": local_kubelet.TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "app", "image": "local/python",
                "command": ["python", str(APP)],
                "env": [{"name": k, "value": v} for k, v in (env or {}).items()] + (extra_env or []),
                **container,
            }],
        },
    }


def watch_pod(core: client.CoreV1Api, ns: str, name: str, resource_version: str, timeout: int = 60) -> list[dict]:
    """Every state of the pod from resource_version until it is deleted (run it in a thread)."""
    seen = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_pod, ns, field_selector=f"metadata.name={name}",
                       resource_version=resource_version, timeout_seconds=timeout):
        seen.append(ev["raw_object"])
        if ev["type"] == "DELETED":
            w.stop()
    return seen


def terminated_states(states: list[dict]) -> list[dict]:
    out = []
    for pod in states:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            if "terminated" in (cs.get("state") or {}):
                out.append(cs["state"]["terminated"])
    return out


def events(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    return [(w, float(t)) for w, t in (line.split() for line in path.read_text().splitlines())]


def delete_and_watch(core, ns, name, grace=None) -> tuple[list[dict], float]:
    """Delete a pod; return every state it went through and the seconds until it was gone."""
    rv = read_pod(core, ns, name)["metadata"]["resourceVersion"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(watch_pod, core, ns, name, rv)
        time.sleep(0.3)  # let the watch start
        t0 = time.monotonic()
        core.delete_namespaced_pod(name, ns, grace_period_seconds=grace)
        wait_for(lambda: gone(core.read_namespaced_pod, name, ns), 60, f"pod {name} to be removed", 0.05)
        elapsed = time.monotonic() - t0
        states = fut.result(timeout=60)
    return states, elapsed


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(120)
def test_deployment_gets_replicaset_and_pods_run_on_kwok_nodes(k8s, namespace, cluster):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"nodeSelector": {"type": "kwok"},
                                       "containers": [{"name": "web", "image": "nginx:fake"}]}}},
    })

    def replicaset():
        items = as_dict(apps.list_namespaced_replica_set(namespace, _preload_content=False))["items"]
        return [rs for rs in items if any(o["kind"] == "Deployment" and o["name"] == "web"
                                          for o in rs["metadata"].get("ownerReferences", []))]

    rs = wait_for(replicaset, 30, "a ReplicaSet owned by the Deployment")
    assert len(rs) == 1

    def running_pods():
        pods = as_dict(core.list_namespaced_pod(namespace, label_selector="app=web", _preload_content=False))["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running" and condition(p, "Ready") == "True"]
        return running if len(running) == 3 else None

    pods = wait_for(running_pods, 60, "3 Running and Ready pods")
    kwok_net = ipaddress.ip_network(cluster.info()["kwok_pod_cidr"])
    for p in pods:
        assert p["spec"]["nodeName"] in cluster.info()["kwok_nodes"]
        assert ipaddress.ip_address(p["status"]["podIP"]) in kwok_net
        assert p["metadata"]["ownerReferences"][0]["name"] == rs[0]["metadata"]["name"]
    wait_for(lambda: as_dict(apps.read_namespaced_deployment("web", namespace, _preload_content=False))
             ["status"].get("availableReplicas") == 3, 30, "the Deployment to report 3 available replicas")


@pytest.mark.timeout(120)
def test_local_process_pod_sees_env_serves_http_and_shuts_down_on_sigterm(k8s, namespace, cluster, tmp_path):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "broker"}, "stringData": {"api-key": "s3cret"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                  "data": {"venue": "paper", "LEVEL": "debug"}})
    events_file = tmp_path / "events"
    pod = local_pod(
        "app",
        {"APP_PORT": "8080", "APP_EVENTS": str(events_file), "APP_SHUTDOWN_SECS": "1.5",
         "GREETING": "hello", "GREETING_WORLD": "$(GREETING)-world",
         "PHASEGATE_CHECKPOINT_DIR": "/var/lib/phasegate/checkpoints/app"},
        grace=20,
        extra_env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "BROKER_KEY", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "api-key"}}},
            {"name": "VENUE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "venue"}}},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        volumeMounts=[{"name": "checkpoints", "mountPath": "/var/lib/phasegate/checkpoints"}],
    )
    pod["spec"]["volumes"] = [{"name": "checkpoints", "emptyDir": {}}]
    core.create_namespaced_pod(namespace, pod)

    ready = wait_for(lambda: (p := read_pod(core, namespace, "app"))["status"].get("phase") == "Running"
                     and condition(p, "Ready") == "True" and p, 30, "the pod to be Running and Ready")
    assert ready["spec"]["nodeName"] == local_kubelet.NODE_NAME
    ip = ready["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.info()["local_pod_cidr"])
    cs = ready["status"]["containerStatuses"][0]
    assert cs["ready"] and cs["restartCount"] == 0 and "running" in cs["state"]

    with NO_PROXY.open(f"http://{ip}:8080/env", timeout=5) as r:
        env = json.loads(r.read())
    assert env["PHASEGATE_POD_IP"] == ip == env["MY_IP"]
    assert env["POD_NAME"] == "app" and env["POD_NAMESPACE"] == namespace and env["APP_LABEL"] == "app"
    assert env["GREETING_WORLD"] == "hello-world"
    assert env["BROKER_KEY"] == "s3cret" and env["VENUE"] == "paper"
    assert env["CFG_venue"] == "paper" and env["CFG_LEVEL"] == "debug"
    ckpt = Path(env["PHASEGATE_CHECKPOINT_DIR"])
    assert ckpt.parent.is_dir() and cluster.state_dir in ckpt.parents, ckpt
    assert Path(env["PHASEGATE_TERMINATION_MESSAGE_PATH"]).parent == cluster.pod_dir(namespace, "app")
    assert f"serving on {ip}:8080" in cluster.pod_log(namespace, "app").read_text()

    states, elapsed = delete_and_watch(core, namespace, "app")
    ev = events(events_file)
    assert [w for w, _ in ev] == ["started", "sigterm", "done"], ev
    assert ev[2][1] - ev[1][1] >= 1.4, "the shutdown work ran to its end"
    assert 1.4 <= elapsed < 20, f"removed {elapsed:.1f}s after deletion: after the shutdown, before the grace period"
    final = terminated_states(states)
    assert final and final[-1]["exitCode"] == 0 and final[-1]["reason"] == "Completed", final
    log = cluster.pod_log(namespace, "app").read_text()
    assert "got SIGTERM" in log and "shutdown complete" in log


def _who(kubeconfig: str) -> dict:
    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        resp = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, _preload_content=False)
        return json.loads(resp.data)["status"]["userInfo"]
    finally:
        api.close()


@pytest.mark.timeout(120)
def test_local_process_pod_talks_to_the_api_as_its_service_account(k8s, namespace, cluster):
    """The token the kubelet projects is the pod's ServiceAccount's, bound to the pod: the
    apiserver names that account (and the pod), and refuses the token once the pod is gone."""
    core = client.CoreV1Api(k8s)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    with_token = local_pod("robot", {"APP_PORT": "8080"}, readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    with_token["spec"]["serviceAccountName"] = "robot"
    without = local_pod("anonymous", {"APP_PORT": "8080"}, readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    without["spec"]["automountServiceAccountToken"] = False
    core.create_namespaced_pod(namespace, with_token)
    core.create_namespaced_pod(namespace, without)
    envs = {}
    for name in ("robot", "anonymous"):
        pod = wait_for(lambda n=name: (p := read_pod(core, namespace, n))["status"].get("phase") == "Running"
                       and condition(p, "Ready") == "True" and p, 30, f"{name} Running and Ready")
        with NO_PROXY.open(f"http://{pod['status']['podIP']}:8080/env", timeout=5) as r:
            envs[name] = json.loads(r.read())
    assert "KUBECONFIG" not in envs["anonymous"], "no token is mounted: no credentials"
    kubeconfig = envs["robot"]["KUBECONFIG"]
    assert Path(kubeconfig) == cluster.pod_dir(namespace, "robot") / "kubeconfig"
    who = _who(kubeconfig)
    assert who["username"] == f"system:serviceaccount:{namespace}:robot", who
    assert who["extra"]["authentication.kubernetes.io/pod-name"] == ["robot"], who
    assert f"system:serviceaccounts:{namespace}" in who["groups"]
    core.delete_namespaced_pod("robot", namespace, grace_period_seconds=2)
    wait_for(lambda: gone(core.read_namespaced_pod, "robot", namespace), 30, "robot removed")

    def refused():
        try:
            _who(kubeconfig)
            return False
        except ApiException as e:
            return e.status == 401
    wait_for(refused, 30, "the bound token refused once its pod is gone", interval=1)


@pytest.mark.timeout(90)
def test_local_process_pod_is_killed_after_its_grace_period(k8s, namespace, tmp_path):
    core = client.CoreV1Api(k8s)
    events_file = tmp_path / "events"
    core.create_namespaced_pod(namespace, local_pod(
        "stubborn", {"APP_EVENTS": str(events_file), "APP_IGNORE_SIGTERM": "1"}, grace=3))
    wait_for(lambda: condition(read_pod(core, namespace, "stubborn"), "Ready") == "True", 30, "the pod to be Ready")
    wait_for(lambda: events(events_file), 10, "the process to start")

    states, elapsed = delete_and_watch(core, namespace, "stubborn")
    assert [w for w, _ in events(events_file)] == ["started", "sigterm"]
    assert 3 <= elapsed < 15, f"removed {elapsed:.1f}s after deletion, grace period 3s"
    final = terminated_states(states)
    assert final and final[-1]["exitCode"] == 137 and final[-1]["reason"] == "Error", final


@pytest.mark.timeout(90)
def test_restart_never_reports_exit_code_and_termination_message(k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, local_pod(
        "fails", {"APP_EXIT_CODE": "3", "APP_MESSAGE": "strategy halted: drawdown 12% > 10%"}, restart="Never"))
    core.create_namespaced_pod(namespace, local_pod("succeeds", {"APP_EXIT_CODE": "0"}, restart="Never"))

    failed = wait_for(lambda: (p := read_pod(core, namespace, "fails"))["status"].get("phase") == "Failed" and p,
                      30, "the pod to fail")
    term = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert term["message"] == "strategy halted: drawdown 12% > 10%"
    assert failed["status"]["containerStatuses"][0]["restartCount"] == 0

    ok = wait_for(lambda: (p := read_pod(core, namespace, "succeeds"))["status"].get("phase") == "Succeeded" and p,
                  30, "the pod to succeed")
    assert ok["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"

    # a finished pod is removed on deletion without being started again
    core.delete_namespaced_pod("fails", namespace)
    wait_for(lambda: gone(core.read_namespaced_pod, "fails", namespace), 30, "the failed pod to be removed")


@pytest.mark.timeout(90)
def test_restart_always_restarts_with_backoff(k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(namespace, local_pod("crashy", {"APP_EXIT_CODE": "1", "APP_MESSAGE": "crash"}))

    def restarted_twice():
        cs = (read_pod(core, namespace, "crashy")["status"].get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 2 else None

    cs = wait_for(restarted_twice, 30, "two restarts")
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert cs["lastState"]["terminated"]["message"] == "crash"
    assert read_pod(core, namespace, "crashy")["status"]["phase"] == "Running"


@pytest.mark.timeout(90)
def test_crd_cel_rule_rejects_bad_object_with_its_message(k8s, namespace):
    ext, custom = client.ApiextensionsV1Api(k8s), client.CustomObjectsApi(k8s)
    group = f"t{uuid.uuid4().hex[:8]}.e2e.phasegate.dev"
    crd_name = f"widgets.{group}"
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"minFraction": {"type": "number"}, "maxFraction": {"type": "number"}},
                    "x-kubernetes-validations": [{"rule": "self.minFraction <= self.maxFraction",
                                                  "message": "minFraction must not exceed maxFraction"}],
                }},
            }}}],
        },
    })
    try:
        wait_for(lambda: condition(as_dict(ext.read_custom_resource_definition(crd_name, _preload_content=False)),
                                   "Established") == "True", 30, "the CRD to be established")

        def create(name, spec):
            body = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}
            return custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)

        def rejected():
            try:
                create("bad", {"minFraction": 0.5, "maxFraction": 0.1})
            except ApiException as e:
                if e.status == 404:  # the new resource is not served yet
                    return None
                return e
            pytest.fail("the bad object was accepted")

        err = wait_for(rejected, 15, "the custom resource to be served")
        assert err.status == 422, err
        assert "minFraction must not exceed maxFraction" in err.body
        assert "spec" in json.loads(err.body)["details"]["causes"][0]["field"]
        good = create("good", {"minFraction": 0.1, "maxFraction": 0.5})
        assert good["spec"] == {"minFraction": 0.1, "maxFraction": 0.5}
    finally:
        ext.delete_custom_resource_definition(crd_name)


@pytest.mark.timeout(150)
def test_namespace_with_objects_is_deleted_completely(k8s, cluster):
    core, apps = client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    ns = f"doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(lambda: core.read_namespaced_service_account("default", ns), 30, "the default ServiceAccount")
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cm"}, "data": {"a": "b"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"a": "b"}})
    core.create_namespaced_service(ns, {"metadata": {"name": "svc"},
                                        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"nodeSelector": {"type": "kwok"},
                                       "containers": [{"name": "web", "image": "nginx:fake"}]}}},
    })
    core.create_namespaced_pod(ns, local_pod("local", {"APP_SHUTDOWN_SECS": "0.5"}, grace=10))
    wait_for(lambda: len([p for p in as_dict(core.list_namespaced_pod(ns, _preload_content=False))["items"]
                          if p["status"].get("phase") == "Running"]) == 3, 60, "3 running pods")
    pid = int((cluster.pod_dir(ns, "local") / "pid").read_text())
    assert localcluster._alive(pid)

    core.delete_namespace(ns)
    wait_for(lambda: gone(core.read_namespace, ns), 120, f"namespace {ns} to be deleted", 0.5)
    assert not localcluster._alive(pid), "the local pod's process was stopped"
    leftovers = as_dict(core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}",
                                                         _preload_content=False))["items"]
    assert leftovers == []


@pytest.mark.timeout(240)
def test_cluster_down_leaves_no_process_running(tmp_path, cluster):
    """A second, throwaway cluster (own state folder, free ports) with a local pod running."""
    state = tmp_path / "cluster"
    c = localcluster.LocalCluster(state, port_base="auto", local_pod_cidr="127.78.0.0/16",
                                  kwok_pod_cidr="127.101.0.0/16")
    try:
        t0 = time.monotonic()
        c.up()
        print(f"throwaway cluster up in {time.monotonic() - t0:.1f}s")
        assert c.is_running()
        pids = dict(c.info()["pids"])
        assert set(pids) == set(localcluster.COMPONENTS)

        again = localcluster.LocalCluster(state, port_base="auto")
        again.up()  # idempotent: finds the running cluster
        assert again.info()["pids"] == pids

        status = subprocess.run([sys.executable, str(REPO / "hack/cluster/localcluster.py"), "status",
                                 "--state-dir", str(state)], capture_output=True, text=True)
        assert status.returncode == 0 and json.loads(status.stdout)["running"], status.stderr

        api = config.new_client_from_config(config_file=str(c.kubeconfig))
        core = client.CoreV1Api(api)
        core.create_namespaced_pod("default", local_pod("sleeper", {}))
        wait_for(lambda: read_pod(core, "default", "sleeper")["status"].get("phase") == "Running", 30, "a local pod")
        pod_pid = int((c.pod_dir("default", "sleeper") / "pid").read_text())
        api.close()
        all_pids = set(pids.values()) | {pod_pid} | localcluster._descendants(set(pids.values()))

        down = subprocess.run([sys.executable, str(REPO / "hack/cluster/localcluster.py"), "down",
                               "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        alive = {p: localcluster._cmdline(p) for p in all_pids if localcluster._alive(p)}
        assert alive == {}, f"still running after down: {alive}"
        strays = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                  if str(state) in localcluster._cmdline(p) or localcluster._cwd(p).startswith(str(state))]
        assert strays == [], strays
        assert not state.exists()
        assert cluster.is_running(), "the session's cluster is untouched"
    finally:
        c.down()
