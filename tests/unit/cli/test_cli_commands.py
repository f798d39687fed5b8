"""The commands end to end over an in-memory cluster (phasegate.cli.kube.connect replaced)."""

from __future__ import annotations

import json
import sys
import types
from datetime import datetime
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from phasegate.api import contract
from phasegate.cli import actions, kube
from phasegate.cli.main import app
from phasegate.policy.requests import Request, Verb

from .fakes import NOW, FakeKube, emergency_status, halted_status, mid_ladder_status, paused_status, spec, strategy_obj

runner = CliRunner()


@pytest.fixture
def cluster(monkeypatch):
    """A fake cluster holding default/momentum mid-ladder (live-10, manual approval)."""
    fake = FakeKube(strategy_obj(status=mid_ladder_status()))
    calls = []

    def connect(kubeconfig=None, context=None):
        calls.append((kubeconfig, context))
        return fake

    monkeypatch.setattr(kube, "connect", connect)
    monkeypatch.setattr(actions, "POLL_INTERVAL", 0.001)
    fake.connect_calls = calls
    return fake


def invoke(*args: str):
    return runner.invoke(app, list(args))


def set_status(fake: FakeKube, status, ns="default", name="momentum"):
    fake.obj(ns, name)["status"] = status.wire()


# --- refusals -----------------------------------------------------------------------


def test_promote_while_halted_is_refused(cluster):
    set_status(cluster, halted_status())
    r = invoke("promote", "momentum", "--reason", "looks fine")
    assert r.exit_code == 1
    assert "cannot promote default/momentum" in r.stderr
    assert "Halted" in r.stderr
    assert "phasegate reset momentum --reason" in r.stderr  # what to do, with the real name
    assert cluster.patches == []
    assert cluster.request() is None


@pytest.mark.parametrize(
    "verb,status,words",
    [
        ("reset", mid_ladder_status(), "nothing to reset"),
        ("resume", mid_ladder_status(), "resume continues a paused strategy"),
        ("pause", paused_status(), "already paused"),
        ("promote", mid_ladder_status(holds=[]), "already approved"),
        ("promote", mid_ladder_status(phase="live-35", phase_index=4, holds=[]), "approval: auto"),
        ("promote", halted_status(), "only `phasegate reset"),
    ],
)
def test_refusals_name_why(cluster, verb, status, words):
    set_status(cluster, status)
    r = invoke(verb, "momentum", "--reason", "because")
    assert r.exit_code == 1, r.output
    assert f"cannot {verb} default/momentum" in r.stderr and words in r.stderr
    assert cluster.patches == []


def test_promote_above_the_ceiling_is_refused(cluster):
    cluster.obj()["spec"] = spec(max_fraction=Decimal("0.1")).wire()
    r = invoke("promote", "momentum", "--reason", "go")
    assert r.exit_code == 1
    assert "raise the ceiling first" in r.stderr and "spec.maxFraction" in r.stderr


def test_emergency_refused_when_already_emergency_stopped(cluster):
    set_status(cluster, emergency_status())
    r = invoke("emergency", "momentum", "--severity", "high", "--reason", "again")
    assert r.exit_code == 1 and "reset" in r.stderr


# --- writing a request and waiting for the answer -----------------------------------------


def test_promote_accepted(cluster):
    cluster.operator, cluster.operator_message = "Accepted", "live-10 approved"
    r = invoke("promote", "momentum", "--reason", "fill rate checked by hand")
    assert r.exit_code == 0, r.output
    assert "Accepted" in r.stdout and "live-10 approved" in r.stdout
    req = cluster.request()
    assert req["action"] == "promote"
    assert req["reason"] == "fill rate checked by hand"
    assert req["by"] == "alice"
    assert len(req["id"]) == 32 and int(req["id"], 16) >= 0  # uuid4 hex
    assert datetime.fromisoformat(req["at"]).utcoffset().total_seconds() == 0  # UTC
    # the annotation parses back into the operator's Request
    assert Request.from_annotation(json.dumps(req)).verb is Verb.PROMOTE
    # optimistic concurrency: the patch carries the resourceVersion that was checked
    assert cluster.patches[0]["metadata"]["resourceVersion"] == "100"
    assert set(cluster.patches[0]["metadata"]) == {"resourceVersion", "annotations"}
    assert cluster.scales == []  # only halt touches the StatefulSet


def test_rejected_by_the_operator_exits_1(cluster):
    cluster.operator, cluster.operator_message = "Rejected", "state moved: the strategy is Halted"
    r = invoke("pause", "momentum", "--reason", "vol spike")
    assert r.exit_code == 1
    assert "pause rejected by the operator: state moved: the strategy is Halted" in r.stderr


def test_no_answer_exits_2(cluster):
    r = invoke("pause", "momentum", "--reason", "vol spike", "--timeout", "0")
    assert r.exit_code == 2
    assert "operator did not answer within 0s" in r.stderr
    assert "phasegate run" in r.stderr
    assert cluster.request()["action"] == "pause"  # written all the same


def test_no_wait_returns_once_written(cluster):
    set_status(cluster, paused_status())
    r = invoke("resume", "momentum", "--reason", "calm again", "--no-wait")
    assert r.exit_code == 0, r.output
    assert "resume request" in r.stdout and "written on default/momentum" in r.stdout and "alice" in r.stdout
    assert cluster.request()["action"] == "resume"
    assert cluster.gets == 1  # one read for the check, none for waiting


def test_emergency_carries_severity(cluster):
    cluster.operator = "Accepted"
    r = invoke("emergency", "momentum", "--severity", "critical", "--reason", "exchange outage")
    assert r.exit_code == 0, r.output
    req = cluster.request()
    assert req["action"] == "emergency" and req["severity"] == "critical"


def test_reset_a_halted_strategy(cluster):
    set_status(cluster, halted_status())
    cluster.operator = "Accepted"
    r = invoke("reset", "momentum", "--reason", "post-mortem done")
    assert r.exit_code == 0, r.output
    assert cluster.request()["action"] == "reset"


# --- halt: the kill switch ---------------------------------------------------------------


def test_halt_scales_the_statefulset_even_with_the_operator_down(cluster):
    r = invoke("halt", "momentum", "--reason", "drawdown", "--timeout", "0")
    assert r.exit_code == 2
    assert cluster.statefulsets[("default", "momentum")] == 0
    assert cluster.scales == [("default", "momentum", 0)]
    assert "StatefulSet default/momentum scaled to 0 replicas" in r.stdout
    assert "did not answer" in r.stderr and "scaled to 0 anyway" in r.stderr
    assert cluster.request()["action"] == "halt"


def test_halt_accepted(cluster):
    cluster.operator = "Accepted"
    r = invoke("halt", "momentum", "--reason", "drawdown")
    assert r.exit_code == 0
    assert cluster.statefulsets[("default", "momentum")] == 0


def test_halt_without_statefulset(cluster):
    del cluster.statefulsets[("default", "momentum")]
    r = invoke("halt", "momentum", "--reason", "drawdown", "--timeout", "0")
    assert r.exit_code == 2
    assert "No StatefulSet default/momentum" in r.stdout
    assert "nothing was running" in r.stderr


def test_halt_is_allowed_when_already_halted(cluster):
    set_status(cluster, halted_status())
    cluster.operator = "Accepted"
    assert invoke("halt", "momentum", "--reason", "belt and braces").exit_code == 0


def test_halt_scales_even_when_the_request_cannot_be_written(cluster):
    cluster.conflicts = 100
    r = invoke("halt", "momentum", "--reason", "drawdown")
    assert r.exit_code == 1
    assert "409 Conflict" in r.stderr
    assert cluster.statefulsets[("default", "momentum")] == 0


def test_halt_of_a_missing_strategy_touches_nothing(cluster):
    r = invoke("halt", "nope", "--reason", "typo")
    assert r.exit_code == 3
    assert "'nope' not found in namespace 'default'" in r.stderr and "phasegate list" in r.stderr
    assert cluster.scales == []


# --- optimistic concurrency ------------------------------------------------------------


def test_conflict_is_retried_on_a_fresh_read(cluster):
    cluster.operator = "Accepted"
    cluster.conflicts = 2
    r = invoke("promote", "momentum", "--reason", "go")
    assert r.exit_code == 0, r.output
    assert len(cluster.patches) == 3
    rvs = [p["metadata"]["resourceVersion"] for p in cluster.patches]
    assert len(set(rvs)) == 3  # each attempt on the version it had just read


def test_conflict_rechecks_refusal(cluster):
    """Someone halts the strategy between our read and our write: the promote is refused."""

    def halt_it(fake, ns, name):
        fake.obj(ns, name)["status"] = halted_status().wire()

    cluster.conflicts = 1
    cluster.on_conflict = halt_it
    r = invoke("promote", "momentum", "--reason", "go")
    assert r.exit_code == 1
    assert "Halted" in r.stderr
    assert len(cluster.patches) == 1 and cluster.request() is None


def test_conflicts_without_end_give_up(cluster):
    cluster.conflicts = 100
    r = invoke("pause", "momentum", "--reason", "x")
    assert r.exit_code == 1
    assert "409 Conflict" in r.stderr and "run the command again" in r.stderr
    assert len(cluster.patches) == actions.CONFLICT_RETRIES


# --- a request the operator has not answered yet ------------------------------------------


def _pending(fake: FakeKube, verb=Verb.PAUSE):
    req = Request(id="c" * 32, verb=verb, reason="earlier", by="carol", at=NOW)
    fake.obj()["metadata"]["annotations"] = {contract.ANNOTATION_REQUEST: req.to_annotation()}


def test_pending_request_is_not_overwritten(cluster):
    _pending(cluster)
    r = invoke("promote", "momentum", "--reason", "go")
    assert r.exit_code == 1
    assert "cccccccc" in r.stderr and "pause by carol" in r.stderr and "--force" in r.stderr
    assert cluster.patches == []


def test_force_replaces_a_pending_request(cluster):
    _pending(cluster)
    r = invoke("promote", "momentum", "--reason", "go", "--force", "--no-wait")
    assert r.exit_code == 0, r.output
    assert cluster.request()["action"] == "promote"


def test_halt_replaces_a_pending_request(cluster):
    _pending(cluster)
    r = invoke("halt", "momentum", "--reason", "now", "--no-wait")
    assert r.exit_code == 0, r.output
    assert cluster.request()["action"] == "halt"


def test_wait_notices_a_replaced_request(cluster):
    original = cluster.get_strategy
    state = {"n": 0}

    def get(ns, name):
        state["n"] += 1
        if state["n"] == 2:  # after our write: someone else's halt replaces it
            other = Request(id="d" * 32, verb=Verb.HALT, reason="x", by="dave", at=NOW)
            cluster.obj()["metadata"]["annotations"][contract.ANNOTATION_REQUEST] = other.to_annotation()
        return original(ns, name)

    cluster.get_strategy = get
    r = invoke("pause", "momentum", "--reason", "x")
    assert r.exit_code == 1
    assert "replaced by another request (halt by dave)" in r.stderr


# --- argument validation ---------------------------------------------------------------


@pytest.mark.parametrize("verb", ["promote", "pause", "resume", "halt", "reset"])
def test_reason_is_required(cluster, verb):
    r = invoke(verb, "momentum")
    assert r.exit_code == 1  # not 2: 2 means "the operator did not answer"
    assert "Missing option '--reason'" in r.output
    assert cluster.connect_calls == [] and cluster.patches == []


@pytest.mark.parametrize("reason", ["", "   ", "\t"])
def test_empty_reason_is_refused(cluster, reason):
    r = invoke("halt", "momentum", "--reason", reason)
    assert r.exit_code == 1
    assert "--reason is empty" in r.stderr
    assert cluster.connect_calls == [] and cluster.scales == []


def test_emergency_needs_a_valid_severity(cluster):
    r = invoke("emergency", "momentum", "--reason", "x")
    assert r.exit_code == 1 and "--severity" in r.output
    r = invoke("emergency", "momentum", "--severity", "apocalyptic", "--reason", "x")
    assert r.exit_code == 1 and "critical" in r.output
    assert cluster.patches == []


def test_unknown_command_and_missing_name(cluster):
    assert invoke("frobnicate").exit_code == 1
    r = invoke("status")
    assert r.exit_code == 1 and "NAME" in r.output.upper()


def test_bare_command_shows_help():
    r = invoke()
    assert r.exit_code == 0 and "promote" in r.output and "install-crds" in r.output


# --- namespaces, contexts, who -------------------------------------------------------------


def test_namespace_before_or_after_the_command(cluster):
    cluster.add(strategy_obj("meanrev", "research", status=mid_ladder_status()))
    cluster.operator = "Accepted"
    assert invoke("-n", "research", "pause", "meanrev", "--reason", "x").exit_code == 0
    assert cluster.request("research", "meanrev")["action"] == "pause"
    set_status(cluster, paused_status(), "research", "meanrev")
    assert invoke("resume", "meanrev", "-n", "research", "--reason", "x").exit_code == 0
    assert cluster.request("research", "meanrev")["action"] == "resume"
    # without -n: the context's namespace (the fake's default is "default")
    assert invoke("pause", "meanrev", "--reason", "x").exit_code == 3


def test_kubeconfig_and_context_reach_connect(cluster):
    invoke("--kubeconfig", "/k1", "--context", "c1", "list")
    invoke("list", "--kubeconfig", "/k2", "--context", "c2")
    assert cluster.connect_calls == [("/k1", "c1"), ("/k2", "c2")]


def test_context_namespace_is_the_default(cluster):
    cluster.default_namespace = "research"
    cluster.add(strategy_obj("meanrev", "research", status=mid_ladder_status()))
    r = invoke("status", "meanrev")
    assert r.exit_code == 0 and "namespace research" in r.stdout


def test_who_is_recorded(cluster):
    cluster.user = "system:serviceaccount:ci:deployer"
    invoke("pause", "momentum", "--reason", "x", "--no-wait")
    assert cluster.request()["by"] == "system:serviceaccount:ci:deployer"


# --- read-only commands --------------------------------------------------------------------


def test_status_command(cluster):
    r = invoke("status", "momentum")
    assert r.exit_code == 0
    assert "Phase live-10 (4/7)" in r.stdout and "Ladder" in r.stdout and "Breakers" in r.stdout


def test_status_not_found(cluster):
    r = invoke("status", "ghost", "-n", "trading")
    assert r.exit_code == 3
    assert "'ghost' not found in namespace 'trading'" in r.stderr


def test_status_watch_exits_cleanly_on_ctrl_c(cluster, monkeypatch):
    import phasegate.cli.main as main

    ticks = {"n": 0}

    def sleep(_):
        ticks["n"] += 1
        if ticks["n"] == 1:
            set_status(cluster, halted_status())
        if ticks["n"] >= 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(main.time, "sleep", sleep)
    r = invoke("status", "momentum", "--watch")
    assert r.exit_code == 0, r.output
    assert cluster.gets >= 3  # re-read on every tick
    assert "Halted" in r.stdout


def test_status_watch_survives_a_blip_and_stops_when_deleted(cluster, monkeypatch):
    import phasegate.cli.main as main
    from phasegate.cli.errors import CliError

    original = cluster.get_strategy
    ticks = {"n": 0}

    def get(ns, name):
        ticks["n"] += 1
        if ticks["n"] == 2:
            raise CliError("cannot reach the cluster", 3)
        if ticks["n"] == 4:
            del cluster.objects[("default", "momentum")]
        return original(ns, name)

    cluster.get_strategy = get
    monkeypatch.setattr(main.time, "sleep", lambda _: None)
    r = invoke("status", "momentum", "-w")
    assert r.exit_code == 3 and "not found" in r.stderr


def test_list_and_all_namespaces(cluster):
    cluster.add(strategy_obj("meanrev", "research", status=halted_status()))
    r = invoke("list")
    assert r.exit_code == 0
    assert "momentum" in r.stdout and "meanrev" not in r.stdout
    r = invoke("list", "-A")
    assert "NAMESPACE" in r.stdout and "meanrev" in r.stdout and "Halted" in r.stdout
    r = invoke("list", "-n", "empty")
    assert r.exit_code == 0 and "No TradingStrategies found in namespace empty" in r.stderr


def test_history_command(cluster):
    r = invoke("history", "momentum", "--limit", "3")
    assert r.exit_code == 0
    assert "reason-7" in r.stdout and "reason-5" in r.stdout and "reason-4 " not in r.stdout
    r = invoke("history", "momentum", "--limit", "0")
    assert all(f"reason-{i}" in r.stdout for i in range(1, 8))


def test_version():
    r = invoke("version")
    assert r.exit_code == 0 and "phasegate 0.1.0" in r.stdout and contract.API_VERSION in r.stdout


# --- install-crds ----------------------------------------------------------------------------


def test_install_crds_creates_then_replaces(cluster):
    r = invoke("install-crds")
    assert r.exit_code == 0, r.output
    assert "created" in r.stdout and "Established" in r.stdout
    crd = cluster.crds["tradingstrategies.phasegate.dev"]
    assert crd["spec"]["names"]["kind"] == "TradingStrategy"
    rv = crd["metadata"]["resourceVersion"]
    r = invoke("install-crds")
    assert r.exit_code == 0 and "replaced" in r.stdout
    assert cluster.crds["tradingstrategies.phasegate.dev"]["metadata"]["resourceVersion"] != rv


def test_install_crds_from_file_and_bad_file(cluster, tmp_path):
    from phasegate.cli import crds

    path = tmp_path / "crd.yaml"
    path.write_text(crds.default_crd_file().read_text())
    assert invoke("install-crds", "--file", str(path)).exit_code == 0
    r = invoke("install-crds", "--file", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 1 and "no such file" in r.stderr
    (tmp_path / "cm.yaml").write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    r = invoke("install-crds", "-f", str(tmp_path / "cm.yaml"))
    assert r.exit_code == 1 and "not a CustomResourceDefinition" in r.stderr


def test_install_crds_not_established_in_time(cluster):
    cluster.established = False
    r = invoke("install-crds", "--timeout", "0")
    assert r.exit_code == 2 and "not Established" in r.stderr


def test_crd_file_is_found_relative_to_the_package():
    from phasegate.api.crd import crd
    from phasegate.cli import crds

    body, source = crds.load_crd(None)
    assert source.endswith("crds/phasegate.dev_tradingstrategies.yaml")
    assert body["metadata"]["name"] == crd()["metadata"]["name"]


def test_crd_falls_back_to_the_models_without_a_repository(monkeypatch, tmp_path):
    from phasegate.cli import crds

    monkeypatch.setattr(crds, "default_crd_file", lambda: tmp_path / "nope.yaml")
    body, source = crds.load_crd(None)
    assert "generated" in source and body["kind"] == "CustomResourceDefinition"


# --- run ---------------------------------------------------------------------------------------


def test_run_passes_options_through(monkeypatch):
    seen = {}
    fake = types.ModuleType("phasegate.controller.main")
    fake.run = lambda **kw: seen.update(kw)
    monkeypatch.setitem(sys.modules, "phasegate.controller.main", fake)
    r = invoke("run", "--namespace", "trading", "--metrics-port", "9000", "--liveness-port", "9001", "--verbose",
               "--bind-address", "127.78.0.5")
    assert r.exit_code == 0, r.output
    assert seen == {"namespace": "trading", "metrics_port": 9000, "liveness_port": 9001, "verbose": True,
                    "bind_address": "127.78.0.5"}
    seen.clear()
    assert invoke("run").exit_code == 0
    assert seen == {"namespace": None, "metrics_port": 8080, "liveness_port": 8081, "verbose": False,
                    "bind_address": "0.0.0.0"}


def test_run_without_the_controller_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "phasegate.controller.main", None)
    r = invoke("run")
    assert r.exit_code == 1 and "operator is not part of this installation" in r.stderr
    # the rest of the CLI does not need it
    assert invoke("version").exit_code == 0


def test_run_refuses_a_context(monkeypatch):
    fake = types.ModuleType("phasegate.controller.main")
    fake.run = lambda **kw: None
    monkeypatch.setitem(sys.modules, "phasegate.controller.main", fake)
    r = invoke("--context", "prod", "run")
    assert r.exit_code == 1 and "use-context" in r.stderr
