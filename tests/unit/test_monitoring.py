"""The shipped alerts and dashboard: monitoring/ and the chart's copies of them.

- `promtool check rules` accepts monitoring/alerts.yaml, and `promtool test rules` runs
  tests/monitoring/alerts_test.yaml: each alert fires on its input series, with its labels
  and annotations, and stays quiet on healthy ones;
- every alert has a unit test, severity and summary;
- every PromQL expression of the dashboard parses (put in a temporary rule file for
  promtool) and every metric name in the rules and the dashboard is one that the strategy
  contract or the operator's registry really has;
- the generated files (dashboard.json, the chart's PrometheusRule and dashboard ConfigMap)
  are what monitoring/generate.py writes, and helm renders them back to exactly
  monitoring/alerts.yaml and monitoring/dashboard.json.

promtool comes with Debian's prometheus package (`make test` installs it:
hack/install-prometheus.sh); the promtool tests are skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from phasegate.api import contract
from phasegate.controller import telemetry

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
ALERT_TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool (Debian's prometheus package; hack/install-prometheus.sh)"
)

# Grafana's own variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitoring_generate", MONITORING / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _generate()


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in _rules() if "alert" in r}


def _board() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs() -> list[str]:
    out = []
    for expr in generate.expressions(_board()):
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        out.append(expr)
    return out


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the rules


def test_the_alerts_the_issue_asks_for_are_there():
    alerts = _alerts()
    assert {
        "CircuitBreakerTripped", "HighOrderLatency", "NoOrdersSubmitted",
        "PhasegateStrategyHalted", "PhasegateMetricsUnavailable", "PhasegateNotEvaluating",
        "PhasegateOperatorDown", "PhasegateNoLeader", "PhasegateStrategyNotEvaluated", "PhasegateEvaluationLagging",
    } <= set(alerts)
    assert (alerts["PhasegateNoLeader"]["for"], alerts["PhasegateNoLeader"]["labels"]["severity"]) == ("1m", "critical")
    assert "max(phasegate_leader" in alerts["PhasegateNoLeader"]["expr"]
    assert "absent(phasegate_leader" in alerts["PhasegateNoLeader"]["expr"]
    not_evaluated = " ".join(alerts["PhasegateStrategyNotEvaluated"]["expr"].split())
    assert "> 3 * max by (namespace, strategy) (phasegate_strategy_evaluation_interval_seconds)" in not_evaluated
    lagging = alerts["PhasegateEvaluationLagging"]
    assert (lagging["for"], lagging["labels"]["severity"]) == ("10m", "warning")
    assert "histogram_quantile(0.99" in lagging["expr"] and "phasegate_evaluation_lag_seconds_bucket[5m]" in lagging["expr"]
    assert lagging["expr"].rstrip().endswith("> 5")
    assert "overloaded" in lagging["annotations"]["description"]
    assert alerts["HighOrderLatency"]["for"] == "5m"
    assert "histogram_quantile(0.95" in alerts["HighOrderLatency"]["expr"]
    assert "_bucket[" in alerts["HighOrderLatency"]["expr"]
    assert "[2h]" in alerts["NoOrdersSubmitted"]["expr"]
    assert 'up{job="phasegate-metrics"} == 0' in alerts["PhasegateOperatorDown"]["expr"]
    assert 'absent(up{job="phasegate-metrics"})' in alerts["PhasegateOperatorDown"]["expr"]
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_a_promtool_unit_test_that_fires_it():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["../../monitoring/alerts.yaml"]
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    assert fired == set(_alerts()), "an alert without a test that fires it"
    assert quiet == set(_alerts()), "an alert without a test where it stays quiet"


@needs_promtool
def test_promtool_checks_the_rules():
    out = _promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass():
    out = _promtool("test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_unit_tests_fail_when_an_alert_breaks(tmp_path):
    """The unit tests bite: a rule file with the latency threshold moved fails them."""
    broken = ALERTS.read_text().replace("rate(strategy_order_latency_seconds_bucket[5m]))) > 1",
                                        "rate(strategy_order_latency_seconds_bucket[5m]))) > 5")
    assert broken != ALERTS.read_text()
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "tests" / "monitoring").mkdir(parents=True)
    (tmp_path / "monitoring" / "alerts.yaml").write_text(broken)
    (tmp_path / "tests" / "monitoring" / "alerts_test.yaml").write_text(ALERT_TESTS.read_text())
    out = _promtool("test", "rules", str(tmp_path / "tests" / "monitoring" / "alerts_test.yaml"))
    assert out.returncode != 0 and "HighOrderLatency" in out.stdout + out.stderr, out.stdout


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_has_the_panels_the_issue_asks_for():
    board = _board()
    titles = {p["title"] for p in board["panels"] if p["type"] != "row"}
    assert {
        "Portfolio value", "Orders per hour", "Circuit breaker trips", "Order latency p95",
        "Capital fraction", "Phase index", "Halted", "Halts by reason", "Reconcile time",
        "Leader", "Since last evaluation", "Evaluation lag",
    } <= titles
    assert board["uid"] == "phasegate" and board["title"] == "phasegate"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # Every panel reads the dashboard's datasource variable, so it imports anywhere.
    (var,) = board["templating"]["list"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
            assert [t["refId"] for t in p["targets"]] == [chr(ord("A") + i) for i in range(len(p["targets"]))]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


def test_dashboard_panels_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for p in _board()["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path):
    exprs = _dashboard_exprs()
    assert len(exprs) >= 12
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = _promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_a_broken_expression_would_be_caught(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (pod (strategy_portfolio_value)"}]}]}))
    assert _promtool("check", "rules", str(path)).returncode != 0


# --------------------------------------------------------------------------- metric names


def _known_metrics() -> set[str]:
    strategy = {v for k, v in vars(contract).items() if k.startswith("M_") and isinstance(v, str)}
    histograms = {contract.M_ORDER_LATENCY}
    names = strategy | {f"{h}_{s}" for h in histograms for s in ("bucket", "count", "sum")}
    operator = set(telemetry.REGISTRY._names_to_collectors)  # every sample name the operator exports
    return names | operator | {"up"}


_METRIC = re.compile(r"\b((?:strategy|phasegate)_[a-z0-9_]+|up)\b(?!\s*\()")


@pytest.mark.parametrize("where", ["alerts", "dashboard"])
def test_every_metric_name_is_one_that_is_exported(where: str):
    """The names the brief gave (phasegate_strategy_fraction, phasegate_reconcile_seconds)
    are not the registry's; this keeps the files to the names really exported."""
    exprs = [r["expr"] for r in _rules()] if where == "alerts" else _dashboard_exprs()
    used = {m for e in exprs for m in _METRIC.findall(re.sub(r'"[^"]*"', '""', e))}
    assert used, where
    unknown = used - _known_metrics()
    assert not unknown, f"{where} uses metrics nobody exports: {sorted(unknown)}"


def test_the_ladder_and_operator_metrics_are_on_the_dashboard():
    text = " ".join(_dashboard_exprs())
    for name in ("phasegate_strategy_capital_fraction", "phasegate_strategy_phase_index", "phasegate_strategy_halted",
                 "phasegate_halts_total", "phasegate_reconcile_duration_seconds_bucket",
                 "phasegate_leader", "phasegate_evaluation_lag_seconds_bucket",
                 "phasegate_strategy_last_evaluation_timestamp_seconds", "phasegate_strategy_evaluation_interval_seconds",
                 contract.M_PORTFOLIO_VALUE, contract.M_ORDERS_SUBMITTED, contract.M_BREAKER_TRIPS,
                 contract.M_ORDER_LATENCY + "_bucket"):
        assert name in text, name


# --------------------------------------------------------------------------- generated files


def test_generated_files_are_up_to_date():
    """`python monitoring/generate.py` was run after the last edit of alerts.yaml or the panels."""
    stale = [str(p.relative_to(ROOT)) for p, text in generate.outputs().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"out of date, run `python monitoring/generate.py`: {stale}"


def test_helm_escape_keeps_braces_out_of_helm_actions():
    text = 'summary: "{{ $labels.pod }}" legend {{namespace}}/{{pod}}'
    escaped = generate.helm_escape(text)
    # no literal braces pair left outside Helm's own actions: each one is an action
    assert re.sub(r'\{\{ "\\x7[bd]\\x7[bd]" \}\}', "", escaped).count("{{") == 0
    assert escaped.replace('{{ "\\x7b\\x7b" }}', "{{").replace('{{ "\\x7d\\x7d" }}', "}}") == text


def test_chart_dashboard_configmap_is_labelled_for_the_sidecar():
    text = generate.DASHBOARD_TEMPLATE.read_text()
    assert text.lstrip().startswith("{{- if .Values.grafanaDashboard.enabled }}")
    assert 'grafana_dashboard: "1"' in text
    rule = generate.RULE_TEMPLATE.read_text()
    assert rule.lstrip().startswith("{{- if .Values.prometheusRule.enabled }}")
    assert "kind: PrometheusRule" in rule
