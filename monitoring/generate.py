#!/usr/bin/env python3
"""Writes monitoring/dashboard.json and the chart's two monitoring templates.

    python monitoring/generate.py            # write them
    python monitoring/generate.py --check    # exit 1 if any is out of date (what the tests check)

Sources: `monitoring/alerts.yaml` (hand-written, the rules) and the panel list below (the
dashboard). Written from them:

- `monitoring/dashboard.json`: the Grafana dashboard, to import by hand;
- `charts/phasegate/templates/prometheusrule.yaml`: alerts.yaml as a PrometheusRule's spec,
  with the operator's scrape job following the release (`prometheusRule.operatorJob`);
- `charts/phasegate/templates/grafana-dashboard.yaml`: dashboard.json in a ConfigMap labelled
  `grafana_dashboard: "1"` for Grafana's dashboard sidecar.

Helm cannot read files outside the chart, nor files under templates/, so the chart gets
the text itself. Both files use `{{ ... }}` (alert templates, legend formats), which Helm
would take for its own actions; they are written as `{{ "\\x7b\\x7b" }}`, which Helm renders
back to the two braces.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "monitoring" / "alerts.yaml"
DASHBOARD = ROOT / "monitoring" / "dashboard.json"
TEMPLATES = ROOT / "charts" / "phasegate" / "templates"
RULE_TEMPLATE = TEMPLATES / "prometheusrule.yaml"
DASHBOARD_TEMPLATE = TEMPLATES / "grafana-dashboard.yaml"

OPERATOR_JOB = 'job="phasegate-metrics"'
"""How alerts.yaml names the operator's scrape job; the chart replaces it by the release's."""

DS = {"type": "prometheus", "uid": "${datasource}"}

# --------------------------------------------------------------------------- dashboard


def _panel(
    title: str, targets: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries",
    description: str = "", decimals: int | None = None, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }
    if extra:
        panel.update(extra)
    return panel


def _row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


STRATEGY = "{{namespace}}/{{pod}}"
"""Legend of a strategy pod's own series (labels of kubernetes_sd pod relabelling)."""

# The operator's series carry `strategy` and the strategy's own `namespace` (scraped with
# honor_labels: the chart's ServiceMonitor sets honorLabels). `without (phase, state)`: the
# phase gauge has one series per strategy, the phase and state it is in; the panel shows
# the index alone.
PANELS: list[tuple[int, dict[str, Any]]] = [
    (24, _row("Strategies (their own metrics)")),
    (12, _panel("Portfolio value", [("sum by (namespace, pod) (strategy_portfolio_value)", STRATEGY)],
                unit="currencyUSD", description="Cash plus positions at market, as the strategy exports it.")),
    (12, _panel("Orders per hour", [
        ("sum by (namespace, pod) (increase(strategy_orders_submitted_total[1h]))", STRATEGY + " submitted"),
        ("sum by (namespace, pod) (increase(strategy_orders_filled_total[1h]))", STRATEGY + " filled"),
    ], description="Orders submitted and filled over the last hour.")),
    (12, _panel("Circuit breaker trips", [
        ("sum by (namespace, pod, breaker_type) (increase(strategy_circuit_breaker_trips_total[$__rate_interval]))",
         STRATEGY + " {{breaker_type}}"),
    ], kind="timeseries", description="Trips by breaker type; any trip halts the strategy (CircuitBreakerTripped).",
        extra={"fieldConfig": {"defaults": {"unit": "short", "custom": {"drawStyle": "bars"}}, "overrides": []}})),
    (12, _panel("Order latency p95", [
        ("histogram_quantile(0.95, sum by (namespace, pod, le) (rate(strategy_order_latency_seconds_bucket[$__rate_interval])))",
         STRATEGY + " p95"),
        ("histogram_quantile(0.5, sum by (namespace, pod, le) (rate(strategy_order_latency_seconds_bucket[$__rate_interval])))",
         STRATEGY + " p50"),
    ], unit="s", description="Submission to complete fill. HighOrderLatency fires above 1 s for 5 minutes.")),
    (24, _row("The ladder (the operator's view)")),
    (12, _panel("Capital fraction", [("phasegate_strategy_capital_fraction", "{{strategy}}")],
                unit="percentunit", description="Fraction of capital the strategy may put at risk: the rung it is on.",
                extra={"fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1,
                                                    "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter"}},
                                       "overrides": []}})),
    (12, _panel("Phase index", [("max without (phase, state) (phasegate_strategy_phase_index)", "{{strategy}}")],
                decimals=0, description="Index of the current phase in the strategy's ladder (0 = the first phase).",
                extra={"fieldConfig": {"defaults": {"unit": "short", "decimals": 0, "min": 0,
                                                    "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter"}},
                                       "overrides": []}})),
    (12, _panel("Halted", [("phasegate_strategy_halted", "{{strategy}}")], kind="state-timeline",
                description="1 while the strategy holds a Halt or Emergency (PhasegateStrategyHalted).",
                extra={"fieldConfig": {"defaults": {"unit": "short", "mappings": [
                    {"type": "value", "options": {"0": {"text": "running", "color": "green"},
                                                  "1": {"text": "halted", "color": "red"}}}]},
                    "overrides": []}})),
    (12, _panel("Halts by reason", [
        ("sum by (strategy, reason) (increase(phasegate_halts_total[$__rate_interval]))", "{{strategy}} {{reason}}"),
    ], description="Halts recorded, by the breaker, limit or request that caused them.",
        extra={"fieldConfig": {"defaults": {"unit": "short", "custom": {"drawStyle": "bars"}}, "overrides": []}})),
    (24, _row("The operator")),
    (8, _panel("Reconcile time", [
        ("histogram_quantile(0.95, sum by (trigger, le) (rate(phasegate_reconcile_duration_seconds_bucket[$__rate_interval])))",
         "p95 {{trigger}}"),
        ("histogram_quantile(0.5, sum by (trigger, le) (rate(phasegate_reconcile_duration_seconds_bucket[$__rate_interval])))",
         "p50 {{trigger}}"),
    ], unit="s", description="One pass: observe, decide, write status, apply.")),
    (8, _panel("Reconciles per second", [
        ("sum by (trigger) (rate(phasegate_reconcile_duration_seconds_count[$__rate_interval]))", "{{trigger}}"),
        ("sum by (type) (rate(phasegate_reconcile_errors_total[$__rate_interval]))", "errors {{type}}"),
    ], unit="ops", description="interval: the strategy's evaluation tick; event: a change woke it.")),
    (8, _panel("Metrics read errors", [
        ("sum by (strategy) (rate(phasegate_metrics_read_errors_total[$__rate_interval]))", "{{strategy}}"),
        ("sum(rate(phasegate_status_conflicts_total[$__rate_interval]))", "status conflicts"),
    ], unit="ops", description="Failed reads count towards metricsFailure.pauseAfter / haltAfter.")),
    (8, _panel("Leader", [("phasegate_leader", "{{identity}}")], kind="state-timeline",
               description="1 on the replica holding the leader Lease, the only one that acts "
                           "(PhasegateNoLeader fires when no replica does for 1 minute).",
               extra={"fieldConfig": {"defaults": {"unit": "short", "mappings": [
                   {"type": "value", "options": {"0": {"text": "standby", "color": "blue"},
                                                 "1": {"text": "leading", "color": "green"}}}]},
                   "overrides": []}})),
    (8, _panel("Since last evaluation", [
        ("min by (namespace, strategy) (timestamp(phasegate_strategy_last_evaluation_timestamp_seconds)"
         " - phasegate_strategy_last_evaluation_timestamp_seconds)", "{{namespace}}/{{strategy}}"),
        ("max by (namespace, strategy) (3 * phasegate_strategy_evaluation_interval_seconds)",
         "{{namespace}}/{{strategy}} 3 intervals"),
    ], unit="s", description="Age of each strategy's last completed evaluation when scraped, and 3 of its "
                             "intervals: PhasegateStrategyNotEvaluated fires above that line.")),
    (8, _panel("Evaluation lag", [
        ("histogram_quantile(0.99, sum by (le) (rate(phasegate_evaluation_lag_seconds_bucket[$__rate_interval])))",
         "p99"),
        ("histogram_quantile(0.5, sum by (le) (rate(phasegate_evaluation_lag_seconds_bucket[$__rate_interval])))",
         "p50"),
    ], unit="s", description="How late evaluations start after they are due. PhasegateEvaluationLagging fires "
                             "when p99 stays above 5 s for 10 minutes: the operator is overloaded.")),
]


def dashboard() -> dict[str, Any]:
    panels = []
    x = y = row_height = 0
    for i, (width, panel) in enumerate(PANELS, start=1):
        height = 1 if panel["type"] == "row" else 8
        if x + width > 24:
            x, y = 0, y + row_height
        panels.append({"id": i, "gridPos": {"h": height, "w": width, "x": x, "y": y}, **panel})
        x, row_height = x + width, height
        if x >= 24:
            x, y, row_height = 0, y + height, 0
    return {
        "title": "phasegate",
        "uid": "phasegate",
        "description": "Strategies on the phasegate ladder: their books, orders, breakers and latency; "
                       "the operator's rungs, halts and reconciles.",
        "tags": ["phasegate"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "timezone": "",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [],
        }]},
        "panels": panels,
    }


def dashboard_text() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard (its panels' targets)."""
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


# --------------------------------------------------------------------------- chart templates

_BRACES = re.compile(r"\{\{|\}\}")


def helm_escape(text: str) -> str:
    """Text that Helm renders back to `text`: every `{{` and `}}` becomes an action printing it."""
    return _BRACES.sub(lambda m: '{{ "\\x7b\\x7b" }}' if m.group() == "{{" else '{{ "\\x7d\\x7d" }}', text)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.rstrip("\n").split("\n"))


def _spec_of_alerts(alerts: str) -> str:
    """The rule file without its leading comment block: the PrometheusRule's spec."""
    lines = alerts.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    return "\n".join(lines[start:])


def rule_template(alerts: str) -> str:
    spec = helm_escape(_spec_of_alerts(alerts))
    assert spec.count(OPERATOR_JOB) >= 1, f"alerts.yaml no longer selects {OPERATOR_JOB}"
    spec = spec.replace(OPERATOR_JOB, 'job="{{ $job }}"')
    return f"""{{{{- if .Values.prometheusRule.enabled }}}}
{{{{- /* Generated by monitoring/generate.py from monitoring/alerts.yaml: edit that file, then run it. */}}}}
{{{{- $job := .Values.prometheusRule.operatorJob | default (printf "%s-metrics" (include "phasegate.fullname" .)) }}}}
# Needs the Prometheus Operator's monitoring.coreos.com CRDs in the cluster.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{{{ include "phasegate.fullname" . }}}}
  namespace: {{{{ .Release.Namespace }}}}
  labels:
    {{{{- include "phasegate.labels" . | nindent 4 }}}}
    {{{{- with .Values.prometheusRule.labels }}}}
    {{{{- toYaml . | nindent 4 }}}}
    {{{{- end }}}}
spec:
{_indent(spec, 2)}
{{{{- end }}}}
"""


def dashboard_template(board_json: str) -> str:
    return f"""{{{{- if .Values.grafanaDashboard.enabled }}}}
{{{{- /* Generated by monitoring/generate.py (monitoring/dashboard.json): edit the generator, then run it. */}}}}
# Picked up by Grafana's dashboard sidecar (kube-prometheus-stack, the grafana chart),
# which loads every ConfigMap labelled grafana_dashboard: "1" in the namespaces it watches.
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ include "phasegate.fullname" . }}}}-dashboard
  namespace: {{{{ .Values.grafanaDashboard.namespace | default .Release.Namespace }}}}
  labels:
    {{{{- include "phasegate.labels" . | nindent 4 }}}}
    grafana_dashboard: "1"
    {{{{- with .Values.grafanaDashboard.labels }}}}
    {{{{- toYaml . | nindent 4 }}}}
    {{{{- end }}}}
  {{{{- with .Values.grafanaDashboard.annotations }}}}
  annotations:
    {{{{- toYaml . | nindent 4 }}}}
  {{{{- end }}}}
data:
  phasegate.json: |-
{_indent(helm_escape(board_json), 4)}
{{{{- end }}}}
"""


def outputs() -> dict[Path, str]:
    board = dashboard_text()
    return {
        DASHBOARD: board,
        RULE_TEMPLATE: rule_template(ALERTS.read_text()),
        DASHBOARD_TEMPLATE: dashboard_template(board),
    }


def main(argv: list[str]) -> int:
    stale = [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python monitoring/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
