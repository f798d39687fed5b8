"""Shared fixtures.

- Every test under tests/e2e/ is marked `e2e`; `pytest -m "not e2e"` (make test-unit) needs no cluster.
- `cluster` (session): the local control plane of hack/cluster/localcluster.py. A cluster that
  `make cluster` already started is reused and left running; otherwise one is started for the
  session and stopped at its end (unless another test session still uses it, or
  PHASEGATE_KEEP_CLUSTER=1). The binaries are built (first run only) and the cluster
  started right after collection, outside any test's timeout, when an e2e test is selected.
- `kubeconfig` (path; also exported as KUBECONFIG), `k8s` (a kubernetes ApiClient),
  `namespace` (a fresh namespace per test, with its default ServiceAccount; deleted afterwards).
- `localcluster` and `local_kubelet` are importable (hack/cluster is put on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack" / "cluster"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "support"))

import localcluster  # noqa: E402

E2E_DIR = REPO / "tests" / "e2e"

_session: dict = {"cluster": None, "started_here": False, "error": None}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def _start_cluster(config=None) -> localcluster.LocalCluster:
    if _session["cluster"] is not None:
        return _session["cluster"]
    if _session["error"] is not None:
        raise _session["error"]
    cluster = localcluster.LocalCluster()
    capman = config.pluginmanager.getplugin("capturemanager") if config else None
    try:
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            if cluster.is_running():  # reused as it is: other test sessions may be using it
                cluster.reused = True
                localcluster._log(f"tests use the running cluster in {cluster.state_dir}")
                if cluster.kubelet_changed():
                    localcluster._log("warning: hack/cluster/local_kubelet.py changed since that cluster's kubelet "
                                      "started; `make cluster` restarts it with the new version")
            else:
                cluster.up()  # builds the binaries first if needed
    except BaseException as e:
        _session["error"] = e
        raise
    _session["started_here"] = not cluster.reused
    _user_file(cluster).parent.mkdir(parents=True, exist_ok=True)
    _user_file(cluster).write_text(str(os.getpid()))
    _session["cluster"] = cluster
    return cluster


def _user_file(cluster) -> Path:
    """Test sessions using a cluster register here, so that the one that started it does not
    stop it under another session's feet."""
    return cluster.state_dir / "test-sessions" / str(os.getpid())


def _other_users(cluster) -> list[int]:
    users = []
    for f in (cluster.state_dir / "test-sessions").glob("*"):
        pid = int(f.name)
        if pid != os.getpid() and localcluster._alive(pid):
            users.append(pid)
    return users


def pytest_collection_finish(session):
    """Start the cluster before the first e2e test, so that neither the first build nor the
    start-up counts against a test's timeout. Errors are reported by the e2e tests themselves."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("e2e") for item in session.items):
        try:
            _start_cluster(session.config)
        except BaseException as e:  # noqa: BLE001 - reported by the `cluster` fixture
            if isinstance(e, KeyboardInterrupt):
                raise


def pytest_sessionfinish(session, exitstatus):
    cluster = _session["cluster"]
    if cluster is None:
        return
    _user_file(cluster).unlink(missing_ok=True)
    if not _session["started_here"] or os.environ.get("PHASEGATE_KEEP_CLUSTER"):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        others = _other_users(cluster)
        if others:
            localcluster._log(f"leaving the cluster running: test sessions {others} still use it")
        else:
            cluster.down()


@pytest.fixture(scope="session")
def cluster(request) -> localcluster.LocalCluster:
    try:
        return _start_cluster(request.config)
    except Exception as e:
        pytest.fail(f"the local control plane is not available: {e}", pytrace=False)


@pytest.fixture(scope="session")
def kubeconfig(cluster) -> Path:
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def k8s(kubeconfig):
    """A kubernetes (sync) ApiClient for the local cluster: client.CoreV1Api(k8s), ..."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace(request, k8s) -> str:
    """A fresh namespace whose default ServiceAccount exists (pods can be created at once)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(k8s)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"phasegate.dev/test": "true"}}})
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise
