"""The Prometheus metrics source against a real Prometheus (Debian package) scraping the
strategy pods it discovers through the local apiserver."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from decimal import Decimal

import pytest
import yaml
from kubernetes import client

import plans  # noqa: E402  (tests/support)
from operator_proc import free_port

from .strategy_env import Strategies, install_crd, start_operator, wait_for
from .test_risk_e2e import control, pod_of_phase

pytestmark = pytest.mark.prometheus


@pytest.fixture
def prometheus(k8s, namespace, tmp_path):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: `make test` installs it (hack/install-prometheus.sh)")
    port = free_port()
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{
            "job_name": "phasegate-strategies",
            # Debian's prometheus 2.42 is built without kubernetes_sd_configs, so the pods
            # are discovered from the apiserver by `discover` below and handed over in a
            # file_sd file, with the labels kubernetes_sd relabelling would give.
            "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
        }],
    }
    stop = threading.Event()
    core = client.CoreV1Api(k8s)

    def discover() -> None:
        while not stop.is_set():
            groups = []
            for pod in core.list_namespaced_pod(namespace, label_selector="phasegate.dev/strategy").items:
                ports = [p.container_port for c in pod.spec.containers for p in (c.ports or []) if p.name == "metrics"]
                if pod.status.pod_ip and ports and pod.metadata.deletion_timestamp is None:
                    groups.append({"targets": [f"{pod.status.pod_ip}:{ports[0]}"],
                                   "labels": {"namespace": namespace, "pod": pod.metadata.name}})
            tmp = targets.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(targets)
            stop.wait(0.5)

    discoverer = threading.Thread(target=discover, daemon=True)
    discoverer.start()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{address}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 30, "prometheus ready")
        yield address
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.timeout(240)
def test_prometheus_source_gates_the_ladder_and_its_data_halts(k8s, kubeconfig, namespace, tmp_path, prometheus):
    install_crd(k8s)
    op = start_operator(kubeconfig, namespace, tmp_path)
    try:
        ts = Strategies(k8s, namespace)
        body = plans.strategy("promsourced", max_fraction=0.1, interval="2s")
        body["spec"]["analysis"]["source"] = "prometheus"
        body["spec"]["analysis"]["prometheus"] = {"address": prometheus}
        ts.create(body)
        # the gates of paper and shadow pass on data that came through Prometheus
        st = ts.wait("promsourced", lambda s: s.get("phase") == "live-10", 150, "live-10 on Prometheus data")
        assert [h["to"] for h in st["history"] if h["action"] != "new-book"] == ["paper", "shadow", "live-10"]
        pod_of_phase(ts, "promsourced", "live-10")
        time.sleep(4)  # a few scrapes of the live-10 pod into Prometheus
        control(ts, "promsourced", {"portfolio_value": "700000"})
        st = ts.wait("promsourced", lambda s: s.get("state") in ("Halted", "EmergencyStopped"), 30, "halted on Prometheus data")
        values = {k: Decimal(b["value"]) for k, b in st["breakers"].items()}
        assert values == {"maxDrawdown": Decimal("0.3"), "maxDailyLoss": Decimal("0.3")}, st["breakers"]
    finally:
        op.stop()
