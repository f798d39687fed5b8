"""The Prometheus metrics source against a real Prometheus (Debian package), discovering
the strategy pods through kubernetes service discovery against the local apiserver."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from decimal import Decimal

import pytest
import yaml

import plans  # noqa: E402  (tests/support)
from operator_proc import free_port

from .strategy_env import Strategies, install_crd, start_operator, wait_for
from .test_risk_e2e import control

pytestmark = pytest.mark.prometheus


@pytest.fixture
def prometheus(kubeconfig, namespace, tmp_path):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: `make test` installs it (hack/install-prometheus.sh)")
    kc = yaml.safe_load(kubeconfig.read_text())
    server = kc["clusters"][0]["cluster"]["server"]
    token = kc["users"][0]["user"]["token"]
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{
            "job_name": "phasegate-strategies",
            "kubernetes_sd_configs": [{
                "role": "pod",
                "api_server": server,
                "authorization": {"type": "Bearer", "credentials": token},
                "tls_config": {"insecure_skip_verify": True},
                "namespaces": {"names": [namespace]},
            }],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_label_phasegate_dev_strategy"], "regex": ".+", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }],
    }
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
        assert [h["to"] for h in st["history"]] == ["paper", "shadow", "live-10"]
        control(ts, "promsourced", {"portfolio_value": "700000"})
        st = ts.wait("promsourced", lambda s: s.get("state") in ("Halted", "EmergencyStopped"), 30, "halted on Prometheus data")
        assert Decimal(st["breakers"]["maxDrawdown"]["value"]) == Decimal("0.3")
    finally:
        op.stop()
