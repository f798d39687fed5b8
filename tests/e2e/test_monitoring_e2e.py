"""The dashboard's and the alerts' PromQL against a real Prometheus (Debian package) with data.

No cluster is needed: Prometheus scrapes the fake strategy (tests/support/fake_strategy.py,
the contract's metric names) under the labels kubernetes_sd relabelling would give
(`namespace`, `pod`), and the operator's own registry (`phasegate.controller.telemetry`,
served from this process after a pass's worth of values is set in it) under job
`phasegate-metrics`. Every dashboard expression must then return data; so must every alert
expression with its threshold taken off (the comparison), except those that need more
history than a test has (`offset 2h`).

The operator's target carries the label `namespace="phasegate-system"`, as kubernetes_sd
gives the chart's ServiceMonitor (the operator's own namespace), and is scraped with
honor_labels as the ServiceMonitor's honorLabels: the strategy's `namespace` on the
operator's series must survive the scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server

from phasegate.controller import telemetry

from operator_proc import free_port  # tests/support

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
OPERATOR_NAMESPACE = "phasegate-system"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _query(address: str, expr: str) -> list[dict[str, Any]]:
    body = _get(f"{address}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def scraped(tmp_path):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: `make test` installs it (hack/install-prometheus.sh)")
    strategy_port, operator_port, prom_port = free_port(), free_port(), free_port()
    fake = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "fake_strategy.py")],
        env={"PATH": "/usr/bin:/bin", "PHASEGATE_METRICS_PORT": str(strategy_port), "PHASEGATE_MODE": "paper",
             "FAKE_TICK_SECONDS": "0.2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # One pass's worth of the operator's series, named by its real registry.
    telemetry.STRATEGY_FRACTION.labels("trading", "momentum").set(0.1)
    telemetry.STRATEGY_HALTED.labels("trading", "momentum").set(0)
    telemetry.STRATEGY_PHASE.labels("trading", "momentum", "live-10", "Running").set(3)
    telemetry.HALTS.labels("trading", "momentum", "maxDrawdown")
    telemetry.METRICS_READ_ERRORS.labels("trading", "momentum")
    telemetry.RECONCILE_ERRORS.labels("ApiException")
    telemetry.STATUS_CONFLICTS.inc(0)
    telemetry.LEADER.labels("phasegate-test").set(1)
    telemetry.LAST_EVALUATION.labels("trading", "momentum").set(time.time())
    telemetry.EVALUATION_INTERVAL.labels("trading", "momentum").set(1)
    server, thread = start_http_server(operator_port, addr="127.0.0.1", registry=telemetry.REGISTRY)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": "phasegate-strategies", "static_configs": [
                {"targets": [f"127.0.0.1:{strategy_port}"], "labels": {"namespace": "trading", "pod": "momentum-0"}}]},
            {"job_name": "phasegate-metrics", "honor_labels": True, "static_configs": [
                {"targets": [f"127.0.0.1:{operator_port}"], "labels": {"namespace": OPERATOR_NAMESPACE}}]},
        ],
    }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(
        [exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{prom_port}"
    stop_ticking = time.monotonic() + 120
    try:
        _wait("prometheus ready", lambda: urllib.request.urlopen(f"{address}/-/ready", timeout=1).status == 200)
        _wait("both targets up", lambda: len(_query(address, "up == 1")) == 2)
        # the fake strategy exports a breaker's series from its first trip on
        trip = urllib.request.Request(f"http://127.0.0.1:{strategy_port}/control", method="POST",
                                      data=json.dumps({"breaker_trip": "drawdown"}).encode(),
                                      headers={"Content-Type": "application/json"})
        urllib.request.urlopen(trip, timeout=5).close()
        # reconciles keep happening while the test runs, as a live operator's would
        def observe() -> None:
            while time.monotonic() < stop_ticking:
                telemetry.RECONCILE_SECONDS.labels("interval").observe(0.02)
                telemetry.RECONCILE_SECONDS.labels("event").observe(0.01)
                telemetry.EVALUATION_LAG.observe(0.03)
                telemetry.LAST_EVALUATION.labels("trading", "momentum").set(time.time())
                time.sleep(0.2)

        threading.Thread(target=observe, daemon=True).start()
        yield address
    finally:
        stop_ticking = 0
        prom.terminate()
        fake.terminate()
        server.shutdown()
        for p in (prom, fake):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def _dashboard_exprs() -> list[str]:
    board = json.loads((ROOT / "monitoring" / "dashboard.json").read_text())
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append(expr)
    return out


def _alert_exprs_without_threshold() -> dict[str, str]:
    rules = [r for g in yaml.safe_load((ROOT / "monitoring" / "alerts.yaml").read_text())["groups"] for r in g["rules"]]
    out = {}
    for r in rules:
        expr = " ".join(r["expr"].split())
        if "offset" in expr:
            continue  # needs 2 h of history
        # the left side of the first comparison: the value the alert compares (for
        # PhasegateOperatorDown, the `up` of the job it names)
        out[r["alert"]] = re.split(r"\s(?:==|>|<|>=|<=|!=)\s", expr, maxsplit=1)[0]
    return out


@pytest.mark.timeout(180)
def test_every_dashboard_and_alert_expression_returns_data(scraped):
    exprs = {f"dashboard: {e}": e for e in _dashboard_exprs()}
    exprs.update({f"alert {name}: {e}": e for name, e in _alert_exprs_without_threshold().items()})
    assert len(exprs) >= 15
    empty: dict[str, str] = {}

    def all_have_data() -> bool:
        empty.clear()
        for label, expr in exprs.items():
            if not _query(scraped, expr):
                empty[label] = expr
        return not empty

    deadline = time.monotonic() + 90
    while not all_have_data():
        if time.monotonic() > deadline:
            pytest.fail("no data for:\n" + "\n".join(empty))
        time.sleep(1)
    # the values mean what the panels say
    (p95,) = _query(scraped, _dashboard_exprs()[[i for i, e in enumerate(_dashboard_exprs())
                                                  if "0.95" in e and "strategy_order_latency" in e][0]])
    assert 0.05 <= float(p95["value"][1]) <= 0.25, p95  # the fake strategy's 0.1 s
    (fraction,) = _query(scraped, "phasegate_strategy_capital_fraction")
    assert float(fraction["value"][1]) == 0.1


@pytest.mark.timeout(120)
def test_the_operators_series_keep_the_strategys_namespace_through_the_scrape(scraped):
    """honor_labels: the target's namespace (the operator's) does not replace the strategy's."""
    _wait("the operator's series scraped", lambda: _query(scraped, "phasegate_strategy_halted"))
    for name in ("phasegate_strategy_halted", "phasegate_strategy_capital_fraction",
                 "phasegate_strategy_phase_index", "phasegate_strategy_last_evaluation_timestamp_seconds"):
        (series,) = _query(scraped, name)
        labels = series["metric"]
        assert labels.get("namespace") == "trading" and labels.get("strategy") == "momentum", labels
        assert "exported_namespace" not in labels, labels
    # a series without its own namespace takes the target's, as any other target's would
    (up,) = _query(scraped, 'up{job="phasegate-metrics"}')
    assert up["metric"]["namespace"] == OPERATOR_NAMESPACE
    # the per-strategy alert reads the strategy's namespace
    age_expr = _alert_exprs_without_threshold()["PhasegateStrategyNotEvaluated"]
    (age,) = _query(scraped, age_expr)
    assert age["metric"] == {"namespace": "trading", "strategy": "momentum"}
    # evaluated every 0.2 s from now on: soon younger than 3 of its 1 s intervals at every scrape
    _wait("a fresh evaluation scraped", lambda: float(_query(scraped, age_expr)[0]["value"][1]) < 1.0, 30)
