"""Packaging: the Helm chart, the Dockerfile, the Terraform module and the example manifests.

No Docker engine here, and no Helm or Terraform provider from their release sites, so
most checks read the files themselves: YAML parses, templates are balanced and refer
only to declared values, the RBAC grants nothing on Secrets, the image runs
`phasegate run`, and every example strategy validates against the API model.

With a real `helm` binary (on PATH, in ~/.cache/phasegate/bin, or named by $PHASEGATE_HELM;
`hack/install-helm.sh` builds one from the Go module proxy) the chart is also linted and
rendered, and the rendered objects are checked. Without one those tests skip, except under
`make test` (PHASEGATE_REQUIRE_HELM=1) and CI=true, where they fail. When `terraform` is
on PATH, the module is checked with `terraform fmt`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from phasegate.api import StrategySpec, contract

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "phasegate"
TEMPLATES = CHART / "templates"
STRATEGIES = ROOT / "strategies"
TERRAFORM = ROOT / "terraform"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _values() -> dict[str, Any]:
    return _load(CHART / "values.yaml")


def _template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.rglob("*") if p.suffix in {".yaml", ".yml", ".tpl", ".txt"})


def _strip_template_comments(text: str) -> str:
    return re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", text, flags=re.S)


def _strip_yaml_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


# --------------------------------------------------------------------------- chart files


def test_chart_yaml_follows_helm_conventions():
    chart = _load(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "phasegate" == CHART.name
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", chart["version"]), "version must be SemVer 2"
    project = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert project and chart["appVersion"] == project.group(1), "appVersion follows pyproject's version"
    assert chart.get("description")


def test_values_yaml_parses_and_has_the_documented_keys():
    values = _values()
    for key in (
        "image", "resources", "nodeSelector", "tolerations", "affinity", "podAnnotations",
        "logLevel", "watchNamespace", "serviceMonitor", "alertmanager", "serviceAccount", "rbac",
    ):
        assert key in values, key
    assert set(values["image"]) >= {"repository", "tag", "pullPolicy"}
    assert values["serviceMonitor"]["enabled"] is False
    assert values["watchNamespace"] == ""
    assert set(values["alertmanager"]["tokenSecret"]) == {"name", "key"}
    # The defaults are a restricted-profile pod.
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    sc = values["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert values["resources"]["requests"] and values["resources"]["limits"]


def test_values_schema_covers_values_yaml():
    """values.schema.json (which helm checks on lint, install and upgrade) knows every key."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = _values()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) - {"global"} == set(values)
    for key, sub in schema["properties"].items():
        if sub.get("additionalProperties") is False:
            assert set(sub["properties"]) == set(values[key]), key
    assert set(schema["properties"]["logLevel"]["enum"]) >= {values["logLevel"]}


def test_every_top_level_value_is_documented():
    """Each top-level key of values.yaml has a comment right above it (or above its block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z]\w*:", line):
            above = lines[i - 1] if i else ""
            documented = above.startswith("#") or any(
                l.strip().startswith("#") for l in lines[i + 1 : i + 3]
            )
            assert documented, f"values.yaml: {line.split(':')[0]} has no comment"


def test_helpers_define_the_standard_names_and_labels():
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    for name in (
        "phasegate.name", "phasegate.fullname", "phasegate.chart", "phasegate.labels",
        "phasegate.selectorLabels", "phasegate.serviceAccountName",
    ):
        assert f'define "{name}"' in helpers, name
    for label in (
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by", "helm.sh/chart",
    ):
        assert label in helpers, label
    assert (TEMPLATES / "NOTES.txt").is_file()


# --------------------------------------------------------------------------- templates

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_BLOCK_OPEN = re.compile(r"^-?\s*(if|with|range|define|block)\b")
_BLOCK_END = re.compile(r"^-?\s*end\s*-?$")


@pytest.mark.parametrize("path", _template_files(), ids=lambda p: p.name)
def test_template_actions_are_balanced(path: Path):
    text = _strip_template_comments(path.read_text())
    assert text.count("{{") == text.count("}}"), f"{path.name}: unbalanced {{{{ }}}}"
    # No action opens before the previous one closed.
    depth = 0
    for m in re.finditer(r"\{\{|\}\}", text):
        depth += 1 if m.group() == "{{" else -1
        assert depth in (0, 1), f"{path.name}: nested or stray delimiter at offset {m.start()}"
    # Control blocks are closed by as many {{ end }}.
    stack: list[str] = []
    for m in _ACTION.finditer(text):
        body = m.group(1).strip()
        if _BLOCK_OPEN.match(body):
            stack.append(body)
        elif _BLOCK_END.match(body):
            assert stack, f"{path.name}: {{{{ end }}}} without an opening block"
            stack.pop()
    assert not stack, f"{path.name}: unclosed block(s): {stack}"


def _value_paths() -> list[tuple[str, str]]:
    out = []
    for path in _template_files():
        for m in re.finditer(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", path.read_text()):
            out.append((path.name, m.group(1)))
    return out


def test_templates_reference_only_declared_values():
    values = _values()
    paths = _value_paths()
    assert len(paths) > 20  # the regex does find them
    missing = []
    for name, dotted in paths:
        node: Any = values
        for part in dotted.strip(".").split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(f"{name}: .Values{dotted}")
                break
            node = node[part]
    assert not missing, "templates refer to values that values.yaml does not declare:\n" + "\n".join(missing)


def test_every_value_is_used_by_a_template():
    """Each leaf of values.yaml is read, itself or through a parent (toYaml of a block)."""
    used = {dotted for _, dotted in _value_paths()}

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}")]
        return [prefix]

    unused = [
        leaf for leaf in leaves(_values(), "")
        if not any(leaf == u or leaf.startswith(u + ".") for u in used)
    ]
    assert not unused, f"values.yaml declares values no template uses: {unused}"


def _rbac_rules(define: str) -> list[dict[str, Any]]:
    text = (TEMPLATES / "rbac.yaml").read_text()
    m = re.search(r'\{\{-?\s*define "%s"\s*-?\}\}(.*?)\{\{-?\s*end\s*-?\}\}' % re.escape(define), text, re.S)
    assert m, define
    rules = yaml.safe_load(m.group(1))
    assert isinstance(rules, list) and rules
    return rules


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def test_rbac_grants_nothing_on_secrets():
    """Safety rule 7: the operator never reads Secret values, so it gets no access to them."""
    text = (TEMPLATES / "rbac.yaml").read_text()
    code = _strip_yaml_comments(_strip_template_comments(text))
    assert not re.search(r"secret", code, re.I), "rbac.yaml grants something on Secrets"
    assert "*" not in code, "no wildcard in RBAC rules"
    # ...and says why, for the next person who reads it.
    assert re.search(r"#.*NO rule for Secrets", text)


def test_rbac_is_least_privilege():
    grants = _grants(_rbac_rules("phasegate.rbac.namespacedRules"))
    discovery = _grants(_rbac_rules("phasegate.rbac.discoveryRules"))
    write = {"get", "list", "watch", "create", "patch", "update", "delete"}
    assert grants == {
        ("phasegate.dev", "tradingstrategies"): {"get", "list", "watch", "patch", "update"},
        ("phasegate.dev", "tradingstrategies/status"): {"get", "patch", "update"},
        ("apps", "statefulsets"): write,
        ("batch", "jobs"): write,
        ("", "services"): write,
        ("networking.k8s.io", "networkpolicies"): write,
        ("", "pods"): {"get", "list", "watch", "create"},  # create: the dry run of the next pod
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
        ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    }
    assert discovery == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }
    # Leader election (and shards): Leases in the release namespace, listed to count the live
    # replicas; no delete, no watch.
    assert _grants(_rbac_rules("phasegate.rbac.leaderElectionRules")) == {
        ("coordination.k8s.io", "leases"): {"get", "list", "create", "update"},
    }
    text = (TEMPLATES / "rbac.yaml").read_text()
    assert "clusterkopfpeerings" in text
    assert _strip_yaml_comments(text).count("coordination.k8s.io") == 1
    assert "name: {{ include \"phasegate.fullname\" . }}-leader-election\n  namespace: {{ .Release.Namespace }}" in text
    # Namespaced mode: a Role and RoleBinding in watchNamespace.
    assert "kind: Role\n" in text and "kind: RoleBinding\n" in text
    assert "namespace: {{ .Values.watchNamespace }}" in text


def test_deployment_runs_one_operator_with_a_locked_down_pod():
    text = (TEMPLATES / "deployment.yaml").read_text()
    # Several replicas, one acting (the leader Lease); rolled with no pod unavailable.
    assert re.search(r"^  replicas: \{\{ \.Values\.replicaCount \}\}$", text, re.M)
    assert _values()["replicaCount"] == 2
    assert re.search(r"strategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0", text)
    assert re.search(r"#.*(two|2) operators", text, re.I), "the HA decision is explained"
    assert 'command: ["phasegate"]' in text
    args = re.search(r"args:\n((?:\s+- .*\n|\s+\{\{.*\}\}\n)+)", text).group(1)
    assert "- run" in args and "--metrics-port" in args and "--liveness-port" in args
    assert re.search(r"\{\{-? with \.Values\.watchNamespace \}\}\s*- --namespace", args)
    assert "path: /healthz" in text
    assert "secretKeyRef" in text and "PHASEGATE_ALERTMANAGER_TOKEN" in text
    assert re.search(r'\{\{-? if eq \.Values\.logLevel "debug" \}\}\s*- --verbose', text)
    assert "toYaml .Values.securityContext" in text
    service_monitor = (TEMPLATES / "servicemonitor.yaml").read_text()
    assert service_monitor.lstrip().startswith("{{- if .Values.serviceMonitor.enabled }}")


def test_chart_crd_copy_matches_crds_folder():
    """`make crds` copies the generated CRD into the chart; the two must not drift."""
    generated = ROOT / "crds" / "phasegate.dev_tradingstrategies.yaml"
    copy = CHART / "crds" / generated.name
    if not (generated.exists() and copy.exists()):
        pytest.skip("run `make crds` to generate the CRD")
    assert copy.read_text() == generated.read_text()


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_phasegate_run_as_non_root():
    instr = _dockerfile_instructions()
    froms = [rest for word, rest in instr if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    args = dict(rest.split("=", 1) for word, rest in instr if word == "ARG" and "=" in rest)
    assert args.get("PYTHON_IMAGE") == "python:3.11-slim"
    final = max(i for i, (word, _) in enumerate(instr) if word == "FROM")
    stage = instr[final:]
    entrypoint = [json.loads(rest) for word, rest in stage if word == "ENTRYPOINT"]
    cmd = [json.loads(rest) for word, rest in stage if word == "CMD"]
    assert entrypoint and cmd, "exec-form ENTRYPOINT and CMD in the final stage"
    assert entrypoint[-1] + cmd[-1] == ["phasegate", "run"]
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "numeric USER, so runAsNonRoot can verify it"
    # The chart runs the same UID.
    assert str(_values()["podSecurityContext"]["runAsUser"]) == users[-1].split(":")[0]
    build = instr[:final]
    assert any(word == "RUN" and "pip install ." in rest for word, rest in build)


def test_dockerignore_is_an_allowlist():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!operator/"} <= set(lines)
    assert not any(l.startswith("!") and (".venv" in l or ".state" in l or "tests" in l) for l in lines)


# --------------------------------------------------------------------------- strategies


def _strategy_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(STRATEGIES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def test_example_strategies_exist():
    names = {p.name for p in STRATEGIES.glob("*.yaml")}
    assert {"phase1.yaml", "phase2.yaml", "full.yaml"} <= names
    assert (STRATEGIES / "README.md").is_file()


@pytest.mark.parametrize("name,doc", _strategy_docs(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_strategy_manifest_validates_against_the_api(name: str, doc: dict[str, Any]):
    assert doc["apiVersion"] == contract.API_VERSION
    assert doc["kind"] == contract.KIND
    assert doc["metadata"]["name"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = StrategySpec.model_validate(doc["spec"])
    # Secrets only by reference: no literal credential-looking env values.
    for env in spec.template.env or []:
        assert not re.search(r"(?i)password|secret|token|api_?key", env.name) or env.value is None, env.name


def _rung_reached(spec: StrategySpec) -> str:
    """The highest rung the ceiling allows (the ladder stops below any rung above it)."""
    allowed = [p for p in spec.phases if p.fraction <= spec.max_fraction]
    return allowed[-1].name


def test_phase_files_differ_only_in_the_ceiling():
    docs = {n: _load(STRATEGIES / n) for n in ("phase1.yaml", "phase2.yaml", "full.yaml")}
    expected = {"phase1.yaml": "0.10", "phase2.yaml": "0.50", "full.yaml": "1.0"}
    stops = {"phase1.yaml": "live-10", "phase2.yaml": "live-50", "full.yaml": "live-100"}
    stripped = []
    for n, doc in docs.items():
        spec = StrategySpec.model_validate(doc["spec"])
        assert spec.max_fraction == Decimal(expected[n]), n
        assert _rung_reached(spec) == stops[n], n
        doc = json.loads(json.dumps(doc))
        del doc["spec"]["maxFraction"]
        stripped.append(doc)
    assert stripped[0] == stripped[1] == stripped[2]


def test_momentum_uses_the_explicit_ladder_and_limits():
    doc = _load(STRATEGIES / "phase1.yaml")
    assert doc["metadata"]["name"] == "momentum"
    spec = StrategySpec.model_validate(doc["spec"])
    ladder = [(p.name, p.mode.value, p.fraction, p.min_duration_delta.days) for p in spec.phases]
    assert ladder == [
        ("backtest", "backtest", Decimal(0), 0),
        ("paper", "paper", Decimal(0), 14),
        ("shadow", "shadow", Decimal(0), 7),
        ("live-10", "live", Decimal("0.10"), 7),
        ("live-25", "live", Decimal("0.25"), 7),
        ("live-50", "live", Decimal("0.50"), 7),
        ("live-100", "live", Decimal("1.0"), 0),
    ]
    assert spec.phases[3].approval.value == "manual"
    assert all(p.approval.value == "auto" for i, p in enumerate(spec.phases) if i != 3)
    assert spec.capital == Decimal("1000000") and spec.account == "DU1234567"
    assert spec.template.image == "ghcr.io/example/momentum:1.4.2"
    assert spec.template.env_from == [{"secretRef": {"name": "broker-credentials"}}]
    limits = {
        name: (limit.threshold, limit.action.value)
        for name, limit in spec.risk_limits
        if limit is not None
    }
    assert limits == {
        "max_drawdown": (Decimal("0.10"), "halt"),
        "max_daily_loss": (Decimal("0.05"), "halt"),
        "max_position_fraction": (Decimal("0.05"), "reduce"),
        "min_cash_fraction": (Decimal("0.10"), "pause"),
        "max_position_discrepancy": (Decimal("0.05"), "halt"),
        "max_order_rate": (Decimal("120"), "halt"),
        "max_error_rate": (Decimal("10"), "halt"),
    }
    assert spec.evaluation_interval.total_seconds() == 30


# --------------------------------------------------------------------------- terraform


def test_terraform_module_files_and_pins():
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (TERRAFORM / name).is_file(), name
    versions = (TERRAFORM / "versions.tf").read_text()
    for provider in ("hashicorp/helm", "hashicorp/kubernetes"):
        block = re.search(r'source\s*=\s*"%s"\s*\n\s*version\s*=\s*"([^"]+)"' % provider, versions)
        assert block and re.match(r"(~>|=)\s*\d+\.\d+", block.group(1)), f"{provider} is pinned"
    variables = set(re.findall(r'^variable "(\w+)"', (TERRAFORM / "variables.tf").read_text(), re.M))
    assert {"kubeconfig_path", "namespace", "image_tag", "watch_namespace"} <= variables
    used = set(re.findall(r"\bvar\.(\w+)", "".join(p.read_text() for p in TERRAFORM.glob("*.tf"))))
    assert used <= variables, f"undeclared variables: {used - variables}"
    assert variables <= used, f"unused variables: {variables - used}"
    for path in TERRAFORM.glob("*.tf"):
        text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', _strip_hcl_comments(path.read_text()))
        for a, b in ("{}", "[]", "()"):
            assert text.count(a) == text.count(b), f"{path.name}: unbalanced {a}{b}"
    main = (TERRAFORM / "main.tf").read_text()
    assert 'resource "helm_release"' in main and 'resource "kubernetes_namespace_v1"' in main


def _strip_hcl_comments(text: str) -> str:
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith(("#", "//")))


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_fmt():
    """Parses every file (a syntax error fails fmt). `validate` would need the providers,
    which come only from the Terraform registry, out of reach here."""
    env = dict(os.environ, TF_CLI_CONFIG_FILE=os.devnull, CHECKPOINT_DISABLE="1")
    out = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", "-recursive", str(TERRAFORM)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- helm, when present


from helm_bin import find_helm, require_helm  # noqa: E402  (tests/support)

HELM = find_helm()


@pytest.fixture
def helm_binary() -> str:
    return require_helm()


# Not a skipif: without helm these fail under `make test` and CI (tests/support/helm_bin.py).
needs_helm = pytest.mark.usefixtures("helm_binary")


VALUE_SETS = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespace=trading"],
    "everything": [
        "--set", "serviceMonitor.enabled=true",
        "--set", "logLevel=debug",
        "--set", "bindAddress=$(POD_IP)",
        "--set", "alertmanager.tokenSecret.name=alertmanager-token",
        "--set", "image.tag=9.9.9",
        "--set", "podAnnotations.a=b",
        "--set", "nodeSelector.disk=ssd",
        "--set", "prometheusRule.enabled=true",
        "--set", "prometheusRule.labels.release=kube-prometheus-stack",
        "--set", "grafanaDashboard.namespace=monitoring",
        "--set", "grafanaDashboard.annotations.grafana_folder=Trading",
    ],
}


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/phasegate-helm/cache",
               HELM_CONFIG_HOME="/tmp/phasegate-helm/config", HELM_DATA_HOME="/tmp/phasegate-helm/data")
    return subprocess.run([require_helm(), *args], capture_output=True, text=True, env=env, timeout=120)


@needs_helm
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=str)
def test_helm_lint(values: str):
    out = _run_helm("lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert out.returncode == 0, out.stdout + out.stderr


def _render(values: str) -> list[dict[str, Any]]:
    out = _run_helm("template", "phasegate", str(CHART), "-n", "phasegate-system",
                    "--include-crds", *VALUE_SETS[values])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@needs_helm
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=str)
def test_helm_template_renders_the_expected_objects(values: str):
    docs = _render(values)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    namespaced = values == "namespaced"
    for d in docs:
        labels = d["metadata"].get("labels", {})
        if d["kind"] != "CustomResourceDefinition":
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", d["kind"]
            assert labels.get("app.kubernetes.io/name") == "phasegate", d["kind"]
            assert labels.get("app.kubernetes.io/instance") == "phasegate", d["kind"]
        if d["kind"] in {"ClusterRole", "Role"}:
            for rule in d["rules"]:
                assert "secrets" not in rule["resources"] and "*" not in rule["resources"]
                assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"]
        if d["kind"] == "Role" and d["metadata"]["name"] != "phasegate-leader-election":
            assert d["metadata"]["namespace"] == "trading"
    assert ("ServiceAccount", "phasegate") in kinds
    assert ("Deployment", "phasegate") in kinds and ("Service", "phasegate-metrics") in kinds
    if namespaced:
        assert {("Role", "phasegate"), ("RoleBinding", "phasegate"),
                ("ClusterRole", "phasegate-discovery"), ("ClusterRoleBinding", "phasegate-discovery")} <= kinds
        assert ("ClusterRole", "phasegate") not in kinds
    else:
        assert {("ClusterRole", "phasegate"), ("ClusterRoleBinding", "phasegate")} <= kinds
        assert not any(k == "Role" and n != "phasegate-leader-election" for k, n in kinds)
    assert {("Role", "phasegate-leader-election"), ("RoleBinding", "phasegate-leader-election")} <= kinds
    (lease_role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "phasegate-leader-election"]
    assert lease_role["metadata"]["namespace"] == "phasegate-system"
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["get", "list", "create", "update"]}]
    # `create` on pods is for dry runs only: an admission policy refuses the operator's real ones.
    (vap,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (vapb,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert vapb["spec"] == {"policyName": vap["metadata"]["name"], "validationActions": ["Deny"]}
    assert vap["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    (cond,) = vap["spec"]["matchConditions"]
    assert cond["expression"] == 'request.userInfo.username == "system:serviceaccount:phasegate-system:phasegate"'
    assert [v["expression"] for v in vap["spec"]["validations"]] == ["request.dryRun == true"]
    assert vap["spec"]["failurePolicy"] == "Fail"
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert (("ServiceMonitor", "phasegate") in kinds) == (values == "everything")

    deploy = next(d for d in docs if d["kind"] == "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert anti["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (c,) = pod["containers"]
    argv = c["command"] + c["args"]
    assert argv[:6] == ["phasegate", "run", "--metrics-port", "8080", "--liveness-port", "8081"]
    expected_tail = {"namespaced": ["--namespace", "trading"], "everything": ["--bind-address", "$(POD_IP)", "--verbose"]}
    assert argv[6:] == expected_tail.get(values, [])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # the operator's own NetworkPolicy: its metrics port (metrics, Alertmanager receiver) only
    (np,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert np["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rule, hook_rule = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in rule["from"]] == ["prometheus", "alertmanager"]
    # ... and the `helm test` pod of this release, on the two ports it checks
    assert hook_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}, {"port": "health", "protocol": "TCP"}]
    assert hook_rule["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "phasegate", "app.kubernetes.io/component": "helm-test"}}}]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "phasegate"
    env = {e["name"]: e for e in c.get("env") or []}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert {k: env[k]["value"] for k in ("PHASEGATE_LEASE_DURATION", "PHASEGATE_RENEW_DEADLINE",
                                         "PHASEGATE_RETRY_PERIOD")} == {
        "PHASEGATE_LEASE_DURATION": "15", "PHASEGATE_RENEW_DEADLINE": "10", "PHASEGATE_RETRY_PERIOD": "2"}
    if values == "everything":
        assert c["image"] == "phasegate:9.9.9"
        assert env["PHASEGATE_ALERTMANAGER_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "alertmanager-token", "key": "token"}
        }
        assert spec["template"]["metadata"]["annotations"] == {"a": "b"}
        assert pod["nodeSelector"] == {"disk": "ssd"}
    else:
        assert "PHASEGATE_ALERTMANAGER_TOKEN" not in env
        assert c["image"] == "phasegate:" + _load(CHART / "Chart.yaml")["appVersion"]
    # No Secret is rendered, ever: credentials are references only.
    assert not any(d["kind"] == "Secret" for d in docs)
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"] == selector
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "metrics": (8080, "metrics"), "health": (8081, "health")}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # The `helm test` hook: through the Service by default, restricted like the operator,
    # no API token, and labels that neither the Service nor the PDB select.
    (hook,) = [d for d in docs if d["kind"] == "Job"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    hook_pod = hook["spec"]["template"]["spec"]
    (hc,) = hook_pod["containers"]
    assert hc["command"][:2] == ["python", "-c"]
    assert hc["command"][3:] == ["http://phasegate-metrics.phasegate-system.svc:8080/metrics",
                                 "http://phasegate-metrics.phasegate-system.svc:8081/healthz", "60"]
    assert hc["securityContext"] == c["securityContext"] and hook_pod["securityContext"] == pod["securityContext"]
    assert hook_pod["automountServiceAccountToken"] is False and hook_pod["restartPolicy"] == "Never"
    hook_labels = hook["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= hook_labels.items()
    assert hook_labels.items() >= hook_rule["from"][0]["podSelector"]["matchLabels"].items()


@needs_helm
def test_helm_service_monitor_honours_the_operators_namespace_label():
    """The operator's series name the strategy's namespace; the scrape must keep it."""
    docs = _render("everything")
    (sm,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


# --------------------------------------------------------------------------- alerts and dashboard


def test_values_declare_the_monitoring_switches():
    values = _values()
    # A PrometheusRule needs the Prometheus Operator's CRDs: off unless asked for.
    assert values["prometheusRule"]["enabled"] is False
    assert values["prometheusRule"]["operatorJob"] == ""
    # The dashboard is a plain ConfigMap: on by default (docs/operations.md).
    assert values["grafanaDashboard"]["enabled"] is True
    for name in ("prometheusrule.yaml", "grafana-dashboard.yaml"):
        assert (TEMPLATES / name).is_file(), name


@needs_helm
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=str)
def test_helm_renders_the_shipped_alerts_and_dashboard(values: str):
    """The chart's PrometheusRule and dashboard ConfigMap are monitoring/alerts.yaml and
    monitoring/dashboard.json, byte for byte once parsed."""
    docs = _render(values)
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "phasegate-dashboard"]
    assert len(rules) == (1 if values == "everything" else 0)
    (cm,) = dashboards
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["phasegate.json"]) == json.loads((ROOT / "monitoring" / "dashboard.json").read_text())
    if values == "everything":
        (rule,) = rules
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["metadata"]["namespace"] == "phasegate-system"
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert rule["spec"] == _load(ROOT / "monitoring" / "alerts.yaml")
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Trading"}
    else:
        assert cm["metadata"]["namespace"] == "phasegate-system"
        assert "annotations" not in cm["metadata"]


@needs_helm
def test_helm_prometheus_rule_follows_the_release_and_operator_job():
    def rule_of(*args: str) -> dict[str, Any]:
        out = _run_helm("template", *args, str(CHART), "-n", "ops", "--set", "prometheusRule.enabled=true")
        assert out.returncode == 0, out.stderr
        (rule,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "PrometheusRule"]
        return rule

    def down_expr(rule: dict[str, Any]) -> str:
        return next(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]
                    if r.get("alert") == "PhasegateOperatorDown")

    # the ServiceMonitor's job is the Service's name: <fullname>-metrics
    assert 'up{job="trading-phasegate-metrics"}' in down_expr(rule_of("trading"))
    custom = rule_of("phasegate", "--set", "prometheusRule.operatorJob=my-job")
    assert 'up{job="my-job"} == 0 or absent(up{job="my-job"})' == down_expr(custom)
    assert "phasegate-metrics" not in json.dumps(custom["spec"])
    off = _run_helm("template", "phasegate", str(CHART), "--set", "grafanaDashboard.enabled=false")
    assert off.returncode == 0 and "grafana_dashboard" not in off.stdout


@needs_helm
def test_helm_pod_dry_run_policy_can_be_turned_off():
    off = _run_helm("template", "phasegate", str(CHART), "--set", "rbac.podDryRunOnly=false")
    assert off.returncode == 0, off.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(off.stdout) if d}
    assert "ValidatingAdmissionPolicy" not in kinds and "ValidatingAdmissionPolicyBinding" not in kinds
    assert "ClusterRole" in kinds
