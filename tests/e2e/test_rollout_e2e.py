"""The operator against the real control plane: ladder, ceiling, manual gate, halt, reset.

The strategy pods run for real (tests/support/fake_strategy.py on the local-process
node), serving metrics the operator scrapes; the durations are compressed to seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal

import pytest
import yaml

from phasegate.api.contract import ANNOTATION_SENTINEL_STOP as SENTINEL_STOP
from phasegate.controller import priority
from phasegate.policy.external import sentinel_stop

import plans  # noqa: E402  (tests/support, put on sys.path by strategy_env)

from .strategy_env import (
    history_actions,
    install_crd,
    pod_starts,
    run_cli,
    start_operator,
    wait_for,
)


@pytest.fixture(scope="module", autouse=True)
def crd(k8s):
    install_crd(k8s)


@pytest.mark.timeout(180)
def test_whole_ladder_climbs_in_order_with_the_right_pod_environment(op, ts, cluster, namespace):
    ts.create(plans.strategy("climber"))
    st = ts.wait("climber", lambda s: s.get("state") == "Completed", 120, "Completed")
    assert history_actions(st) == [
        ("start", "paper"), ("advance", "shadow"), ("advance", "live-10"), ("advance", "live-50"), ("complete", "live-100")
    ]
    # numbered with no gaps; the paper and live books each record where their series starts
    assert [h["seq"] for h in st["history"]] == list(range(1, len(st["history"]) + 1))
    assert [h["to"] for h in st["history"] if h["action"] == "new-book"] == ["paper", "live-10"]
    assert Decimal(st["capitalFraction"]) == 1 and st["phase"] == "live-100"
    # every history entry has its Event, and the watermark says so
    wait_for(lambda: len(ts.events_for("climber")) >= len(st["history"]), 20, "one Event per history entry")
    wait_for(lambda: ts.status("climber").get("eventsPostedSeq") == st["historySeq"], 20, "the Events watermark")
    # the pod carried the right mode and fraction at each rung, in order
    def five_rungs():
        s = pod_starts(cluster, namespace, "climber-0")
        return s if len({x["env"]["PHASEGATE_PHASE"] for x in s}) >= 5 else None

    starts = wait_for(five_rungs, 30, "a pod per rung")
    seen = []
    for rec in starts:
        env = rec["env"]
        key = (env["PHASEGATE_PHASE"], env["PHASEGATE_MODE"], env["PHASEGATE_CAPITAL_FRACTION"], env["PHASEGATE_SHADOW"])
        if not seen or seen[-1] != key:
            seen.append(key)
    assert seen == [
        ("paper", "paper", "0", "false"),
        ("shadow", "shadow", "0", "true"),
        ("live-10", "live", "0.1", "true"),
        ("live-50", "live", "0.5", "true"),
        ("live-100", "live", "1", "true"),
    ]
    assert starts[-1]["env"]["PHASEGATE_CAPITAL"] == "1000000"
    assert ts.replicas("climber") == 1
    # the operator's own metrics tell the same story
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(op.metrics_text()) for s in f.samples}
    labels = (("namespace", namespace), ("strategy", "climber"))
    assert samples[("phasegate_strategy_capital_fraction", labels)] == 1.0
    assert samples[("phasegate_transitions_total", tuple(sorted(labels + (("action", "advance"),))))] == 3.0
    assert any(name == "phasegate_reconcile_duration_seconds_count" for name, _ in samples)


@pytest.mark.timeout(180)
def test_ceiling_stops_the_ladder_and_raising_it_lets_it_continue(op, ts):
    ts.create(plans.strategy("ceiling", max_fraction=0.10))
    ts.wait(
        "ceiling", lambda s: s.get("phase") == "live-10" and "CeilingReached" in s.get("message", ""),
        90, "held at live-10 by the ceiling",
    )
    time.sleep(5)
    st = ts.status("ceiling")
    assert st["phase"] == "live-10" and Decimal(st["capitalFraction"]) == Decimal("0.1")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "CeilingReached"
    # phase2.yaml: the same strategy with the ceiling raised to 50%
    ts.patch_spec("ceiling", {"maxFraction": 0.5})
    st = ts.wait("ceiling", lambda s: s.get("phase") == "live-50", 60, "continued to live-50")
    time.sleep(5)
    st = ts.status("ceiling")
    assert st["phase"] == "live-50" and Decimal(st["capitalFraction"]) == Decimal("0.5")
    assert [a for a, _ in history_actions(st)].count("advance") == 3


@pytest.mark.timeout(180)
def test_manual_phase_waits_for_promote(op, ts, kubeconfig, namespace):
    phases = [dict(p) for p in plans.COMPRESSED_PHASES]
    phases[2]["approval"] = "manual"
    ts.create(plans.strategy("manual", phases=phases))
    ts.wait("manual", lambda s: s.get("message", "").startswith("AwaitingApproval"), 90, "awaiting approval at live-10")
    time.sleep(4)
    assert ts.status("manual")["phase"] == "live-10"
    res = run_cli(kubeconfig, namespace, "promote", "manual", "--reason", "risk review passed")
    assert res.returncode == 0, res.stdout + res.stderr
    st = ts.wait("manual", lambda s: s.get("phase") in ("live-50", "live-100"), 30, "advanced after promote")
    approve = [h for h in st["history"] if h["action"] == "approve"]
    assert len(approve) == 1 and "risk review passed" in approve[0]["reason"] and approve[0]["by"]


@pytest.mark.timeout(240)
def test_breaker_condition_halts_and_the_halt_survives_restart_reapply_and_scaling(op, ts, kubeconfig, namespace, tmp_path):
    ts.create(plans.strategy("halter", max_fraction=0.10))
    ts.wait("halter", lambda s: s.get("phase") == "live-10", 90, "live-10")
    ts.set_condition("halter", "CircuitBreakerTripped", "True", "DeskKillSwitch", "venue outage")
    st = ts.wait("halter", lambda s: s.get("state") == "Halted", 15, "Halted")
    wait_for(lambda: ts.replicas("halter") == 0, 10, "StatefulSet scaled to 0")
    assert st["history"][-1]["action"] == "halt"
    # The halt sentinel stopped the pod first, from its own process; the pass wrote the halt.
    stopped = [json.loads(line) for line in op.log_path.read_text().splitlines() if "halt sentinel: the pod is stopped" in line]
    assert [(e["strategy"], e["condition"]) for e in stopped] == [("halter", "CircuitBreakerTripped")], stopped
    # The loop's thread gave way to the halt path; the sentinel's process kept the priority
    # the operator was started with (the test's own).
    spawned = [json.loads(line) for line in op.log_path.read_text().splitlines() if "halt sentinel: process started" in line]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, op.proc.pid) == min(priority.MAX, base + priority.loop_niceness())
    assert os.getpriority(os.PRIO_PROCESS, spawned[-1]["pid"]) == base
    # Its note on the StatefulSet is removed once the halt answering it is written.
    wait_for(lambda: SENTINEL_STOP not in (ts.apps.read_namespaced_stateful_set("halter", namespace).metadata.annotations
                                           or {}), 10, "the sentinel's note removed")
    wait_for(
        lambda: any(e["reason"] == "HaltCircuitBreakerTripped" and e["type"] == "Warning" for e in ts.events_for("halter")),
        15, "a Halt Event",
    )
    seq = st["historySeq"]

    # an operator restart does not resume it
    op.stop()
    op2 = start_operator(kubeconfig, namespace, tmp_path / "second")
    try:
        time.sleep(5)
        assert ts.status("halter")["state"] == "Halted" and ts.replicas("halter") == 0
        # re-applying the manifest does not resume it
        ts.patch_spec("halter", plans.strategy("halter", max_fraction=0.10)["spec"])
        ts.patch_spec("halter", {"maxFraction": 0.5})
        time.sleep(4)
        assert ts.status("halter")["state"] == "Halted" and ts.replicas("halter") == 0
        # someone scaling the StatefulSet up by hand is put back
        ts.apps.patch_namespaced_stateful_set("halter", namespace, {"spec": {"replicas": 1}})
        wait_for(lambda: ts.replicas("halter") == 0, 15, "scaled back to 0")
        assert ts.status("halter")["historySeq"] == seq
        # resume and promote are refused, reset resumes
        res = run_cli(kubeconfig, namespace, "resume", "halter", "--reason", "try")
        assert res.returncode != 0 and "reset" in (res.stdout + res.stderr)
        res = run_cli(kubeconfig, namespace, "reset", "halter", "--reason", "venue back, post-mortem filed")
        assert res.returncode == 0, res.stdout + res.stderr
        st = ts.wait("halter", lambda s: s.get("state") in ("Progressing", "Completed"), 20, "resumed")
        assert st["history"][-1]["action"] in ("reset", "advance", "complete")
        assert not any(c["type"] == "CircuitBreakerTripped" and c["status"] == "True" for c in st["conditions"])
        wait_for(lambda: ts.replicas("halter") == 1, 15, "StatefulSet back to 1")
    finally:
        op2.stop()


@pytest.mark.timeout(120)
def test_a_pod_the_sentinel_stopped_on_a_condition_since_cleared_stays_stopped_with_a_halt(op, ts, namespace):
    """The sentinel saw a breaker condition that was cleared before the strategy's pass read
    it: its stop is on the StatefulSet, and the pass halts on it instead of starting the pod."""
    ts.create(plans.strategy("blip", max_fraction=0.10))
    ts.wait("blip", lambda s: s.get("phase") == "live-10", 90, "live-10")
    seq = ts.status("blip")["historySeq"]
    ts.apps.patch_namespaced_stateful_set("blip", namespace, {
        "metadata": {"annotations": {SENTINEL_STOP: sentinel_stop(["RiskLimitBreached"], "1")}}, "spec": {"replicas": 0}})
    st = ts.wait("blip", lambda s: s.get("state") == "Halted", 15, "Halted")
    entry = st["history"][-1]
    assert entry["action"] == "halt" and "halt sentinel stopped the pod on RiskLimitBreached" in entry["reason"], entry
    assert st["historySeq"] == seq + 1
    assert [h["source"] for h in st["holds"] if h["kind"] == "Halt"] == ["sentinelRiskLimitBreached"]
    wait_for(lambda: SENTINEL_STOP not in (ts.apps.read_namespaced_stateful_set("blip", namespace).metadata.annotations
                                           or {}), 10, "the sentinel's note removed")
    time.sleep(3)
    assert ts.replicas("blip") == 0 and ts.status("blip")["historySeq"] == seq + 1, "stopped, recorded once"


BAD = [
    ({"maxFraction": 1.5}, "maxFraction"),
    ({"phases": [{"name": "l1", "mode": "live", "fraction": 0.5, "minDuration": "1s"},
                 {"name": "l2", "mode": "live", "fraction": 0.1, "minDuration": "1s"}]}, "must not decrease"),
    ({"phases": [{"name": "paper", "mode": "paper", "minDuration": "1s"},
                 {"name": "paper", "mode": "shadow", "minDuration": "1s"}]}, "unique"),
    ({"phases": [{"name": "paper", "mode": "paper", "minDuration": "7 days"}]}, "minDuration"),
    ({"riskLimits": {}}, "circuit breakers"),
    ({"bogusField": 1}, "bogusField"),
    ({"phases": [{"name": "p", "mode": "paper", "fraction": 1.2}]}, "fraction"),
]


@pytest.mark.timeout(180)
def test_bad_manifests_are_rejected_naming_the_field_and_a_running_strategy_is_untouched(
    op, ts, cluster, kubeconfig, namespace, tmp_path
):
    good = plans.strategy("guarded", max_fraction=0.10)
    ts.create(good)
    ts.wait("guarded", lambda s: s.get("phase") == "shadow", 60, "running")
    before = ts.get("guarded")
    kubectl = str(cluster.bin_dir / "kubectl")
    for patch, words in BAD:
        # as a new strategy (client-side apply), and over the running one (server-side
        # apply, so that the manifest's fields replace the stored ones)
        targets = [("fresh", [])]
        if "riskLimits" not in patch:
            # (an empty riskLimits merged over stored limits keeps them: checked below)
            targets.append(("guarded", ["--server-side", "--force-conflicts"]))
        for name, mode in targets:
            bad = plans.strategy(name, max_fraction=0.10)
            bad["spec"].update(patch)
            path = tmp_path / "bad.yaml"
            path.write_text(yaml.safe_dump(bad))
            res = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "apply", *mode, "-f", str(path)],
                                 capture_output=True, text=True, timeout=30)
            assert res.returncode != 0, f"{patch} was accepted for {name}"
            assert words in res.stderr, f"{patch}: {res.stderr}"
    after = ts.get("guarded")
    assert after["spec"]["riskLimits"]["maxDrawdown"]["threshold"] == 0.1
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    assert after["status"]["state"] in ("Progressing", "Completed")


@pytest.mark.timeout(120)
def test_a_template_change_rolls_the_pod_without_a_transition(op, ts, namespace):
    ts.create(plans.strategy("retemplated", phases=[{"name": "paper", "mode": "paper", "minDuration": "1h"},
                                                    {"name": "live-100", "mode": "live", "fraction": 1.0}]))
    ts.wait(
        "retemplated", lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in s.get("conditions", [])),
        60, "running",
    )
    time.sleep(3)  # the pod is settled: no StatefulSet event will re-apply it by chance
    seq = ts.status("retemplated")["historySeq"]
    ts.patch_spec("retemplated", {"template": {"env": [{"name": "FAKE_TICK_SECONDS", "value": "2"}]}})

    def rolled():
        sts = ts.apps.read_namespaced_stateful_set("retemplated", namespace)
        env = {e.name: e.value for e in sts.spec.template.spec.containers[0].env}
        return env.get("FAKE_TICK_SECONDS") == "2"

    wait_for(rolled, 20, "the StatefulSet carrying the new env")
    assert ts.status("retemplated")["historySeq"] == seq


def _series_of(op, namespace: str) -> dict[str, list[dict[str, str]]]:
    """The operator's /metrics samples for strategies of this test's namespace, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(op.metrics_text()):
        for s in family.samples:
            if s.labels.get("namespace") == namespace:
                out.setdefault(s.labels["strategy"], []).append({"sample": s.name, **s.labels, "value": str(s.value)})
    return out


@pytest.mark.timeout(180)
def test_a_deleted_strategy_leaves_no_series_behind_and_the_phase_gauge_has_one(op, ts, namespace):
    """A deleted halted strategy kept phasegate_strategy_halted 1 (and PhasegateStrategyHalted
    firing) until the operator restarted; every phase it had been in kept a series."""
    ts.create(plans.strategy("doomed", max_fraction=0.10))
    ts.create(plans.strategy("bystander", max_fraction=0.10))
    for name in ("doomed", "bystander"):
        ts.wait(name, lambda s: s.get("phase") == "live-10", 90, "live-10")
    ts.set_condition("doomed", "CircuitBreakerTripped", "True", "DeskKillSwitch", "venue outage")
    ts.wait("doomed", lambda s: s.get("state") == "Halted", 15, "Halted")

    def halted_exported():
        mine = _series_of(op, namespace).get("doomed", [])
        return mine if any(s["sample"] == "phasegate_strategy_halted" and s["value"] == "1.0" for s in mine) else None

    mine = wait_for(halted_exported, 15, "phasegate_strategy_halted 1 for the halted strategy")
    names = {s["sample"] for s in mine}
    assert {"phasegate_strategy_phase_index", "phasegate_strategy_capital_fraction", "phasegate_halts_total",
            "phasegate_transitions_total", "phasegate_strategy_last_evaluation_timestamp_seconds",
            "phasegate_strategy_evaluation_interval_seconds"} <= names, names
    # paper, shadow and live-10 visited, then Halted: one phase series, the current one
    (phase,) = [s for s in mine if s["sample"] == "phasegate_strategy_phase_index"]
    assert (phase["phase"], phase["state"]) == ("live-10", "Halted"), phase
    interval = [s for s in mine if s["sample"] == "phasegate_strategy_evaluation_interval_seconds"]
    assert [s["value"] for s in interval] == ["1.0"]  # spec.analysis.interval 1s

    ts.api.delete_namespaced_custom_object("phasegate.dev", "v1alpha1", namespace, "tradingstrategies", "doomed")
    wait_for(lambda: "doomed" not in _series_of(op, namespace), 30, "no series of the deleted strategy", interval=0.5)
    def names() -> list[str]:
        items = ts.api.list_namespaced_custom_object("phasegate.dev", "v1alpha1", namespace, "tradingstrategies")["items"]
        return [i["metadata"]["name"] for i in items]

    wait_for(lambda: names() == ["bystander"], 30, "the strategy gone")
    time.sleep(2.0)  # a late pass of the deleted strategy's loop would export again
    series = _series_of(op, namespace)
    assert "doomed" not in series, series.get("doomed")
    assert any(s["sample"] == "phasegate_strategy_halted" and s["value"] == "0.0" for s in series["bystander"])
