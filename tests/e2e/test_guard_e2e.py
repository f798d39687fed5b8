"""The guard never goes blind, on the real control plane: an edit the operator cannot read,
losses straddling a rung change, a halt whose StatefulSet write fails, and a pod the
cluster refuses."""

from __future__ import annotations

import copy
import os
import time
from decimal import Decimal

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

import plans  # noqa: E402  (tests/support)

from .strategy_env import CRD, Strategies, install_crd, run_cli, wait_for
from .test_risk_e2e import condition, control, metrics_read, pod_of_phase, tripped

LIVE_AFTER_PAPER = [
    {"name": "paper", "mode": "paper", "minDuration": "2s"},
    {"name": "live-10", "mode": "live", "fraction": 0.10, "minDuration": "2s"},
    {"name": "live-35", "mode": "live", "fraction": 0.35, "minDuration": "1h"},
]


@pytest.fixture(scope="module", autouse=True)
def crd(k8s):
    install_crd(k8s)
    yield
    install_crd(k8s)  # whatever a test did to it


def _status_true(st: dict, ctype: str) -> bool:
    return any(c["type"] == ctype and c["status"] == "True" for c in st.get("conditions", []))


def _install_older_crd() -> None:
    """The CRD as an older release shipped it: no list of time zones, so the apiserver
    accepts an edit the operator's models refuse."""
    from phasegate.cli import crds
    from phasegate.cli.kube import connect

    body, _ = crds.load_crd(str(CRD))
    body = copy.deepcopy(body)
    props = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    props["tradingDay"]["properties"]["timeZone"].pop("enum", None)
    api = connect(kubeconfig=os.environ["KUBECONFIG"])
    crds.apply_crd(api, body)
    crds.wait_established(api, body["metadata"]["name"], 30)


@pytest.mark.timeout(180)
def test_an_edit_the_operator_cannot_read_keeps_the_strategy_guarded(op, ts, kubeconfig, namespace):
    ts.create(plans.strategy("unread", phases=LIVE_AFTER_PAPER, max_fraction=0.10,
                             risk_limits={"maxDrawdown": {"threshold": 0.10, "action": "halt"}}))
    ts.wait("unread", lambda s: s.get("phase") == "live-10", 60, "live-10")
    pod_of_phase(ts, "unread", "live-10")
    ts.wait("unread", lambda s: ((s.get("risk") or {}).get("book") or {}).get("name") == "live", 30, "the live book read")
    _install_older_crd()
    # Established is not "served everywhere yet": the apiserver may refuse with the old
    # schema for a moment after the CRD update.
    def edited() -> bool:
        try:
            ts.patch_spec("unread", {"tradingDay": {"timeZone": "Mars/Olympus_Mons"}})
            return True
        except ApiException as e:
            if e.status == 422 and "timeZone" in str(e.body):
                return False
            raise
    wait_for(edited, 30, "the edit accepted under the older CRD")
    st = ts.wait("unread", lambda s: _status_true(s, "SpecInvalid"), 20, "SpecInvalid=True")
    assert "timeZone" in condition(st, "SpecInvalid")["message"]
    assert condition(st, "Ready")["status"] == "False" and condition(st, "Ready")["reason"] == "SpecInvalid"
    assert any(h["kind"] == "SpecInvalid" for h in st["holds"])
    wait_for(lambda: any(e.get("reason") == "SpecInvalid" and e.get("type") == "Warning" for e in ts.events_for("unread")),
             20, "a Warning Event")
    # Still guarded with the last spec it could read: a 20% drawdown halts it.
    control(ts, "unread", {"portfolio_value": "800000"})
    st = ts.wait("unread", lambda s: s.get("state") == "Halted", 20, "Halted by maxDrawdown")
    assert "maxDrawdown" in tripped(st)
    wait_for(lambda: ts.replicas("unread") == 0, 20, "replicas 0")
    # Manual actions still work and are recorded: a person's halt on top.
    res = run_cli(kubeconfig, namespace, "halt", "unread", "--reason", "desk review")
    assert res.returncode == 0, res.stdout + res.stderr
    st = ts.wait("unread", lambda s: any(h.get("by") != "operator" and h["action"] == "halt" for h in s["history"]),
                 20, "the manual halt in history")
    assert st["phase"] == "live-10"


@pytest.mark.timeout(180)
def test_a_days_losses_add_up_across_a_rung_change(op, ts):
    ts.create(plans.strategy("straddle", phases=LIVE_AFTER_PAPER, max_fraction=0.10,
                             risk_limits={"maxDailyLoss": {"threshold": 0.10, "action": "halt"}}))
    ts.wait("straddle", lambda s: s.get("phase") == "live-10", 60, "live-10")
    pod_of_phase(ts, "straddle", "live-10")
    ts.wait("straddle", lambda s: ((s.get("risk") or {}).get("book") or {}).get("name") == "live", 30, "the live book read")
    control(ts, "straddle", {"portfolio_value": "940000"})  # 6% down on the live-10 book
    def index(s: dict) -> Decimal:
        return Decimal(((s.get("risk") or {}).get("book") or {}).get("index", "1"))
    try:
        ts.wait("straddle", lambda s: index(s) == Decimal("0.94"), 20, "the 6% loss on the index")
    except AssertionError:
        raise AssertionError(f"risk: {ts.status('straddle').get('risk')}") from None
    ts.patch_spec("straddle", {"maxFraction": 0.35})
    ts.wait("straddle", lambda s: s.get("phase") == "live-35", 30, "live-35")
    pod_of_phase(ts, "straddle", "live-35")
    st = ts.status("straddle")
    assert st.get("state") != "Halted", "the rung change itself was read as a loss"
    # The new rung's book: the 94,000 left plus 250,000 allotted; it loses 6% of that.
    lost = (Decimal("344000") * Decimal("0.94") / Decimal("0.35")).quantize(Decimal(1))  # in the fake's 1,000,000 units
    control(ts, "straddle", {"portfolio_value": str(lost)})
    st = ts.wait("straddle", lambda s: s.get("state") == "Halted", 20, "Halted by the day's losses")
    b = tripped(st)["maxDailyLoss"]
    assert Decimal(b["value"]).quantize(Decimal("0.001")) == Decimal("0.116")


@pytest.mark.timeout(180)
def test_a_halt_whose_statefulset_write_fails_reaches_the_pod_once_writes_work(op, ts, k8s, namespace):
    ts.create(plans.strategy("stuck", phases=[{"name": "paper", "mode": "paper", "minDuration": "1h"},
                                              {"name": "live-100", "mode": "live", "fraction": 1.0}],
                             risk_limits={"maxDrawdown": {"threshold": 0.10, "action": "halt"}}))
    metrics_read(ts, "stuck")
    pod_of_phase(ts, "stuck", "paper")
    adm = k8s_client.AdmissionregistrationV1Api(ts.api.api_client)
    sts_updates = {"apiGroups": ["apps"], "resources": ["statefulsets"], "operations": ["UPDATE"]}
    name = _deny(adm, f"deny-sts-{namespace}", namespace, sts_updates, "false", "writes to StatefulSets are frozen (test)")
    try:
        def frozen() -> bool:
            try:
                probe = {"metadata": {"labels": {"probe": str(time.time_ns())}}}
                ts.apps.patch_namespaced_stateful_set("stuck", namespace, probe, dry_run="All")
                return False
            except ApiException as exc:
                return exc.status in (400, 403, 422)
        wait_for(frozen, 30, "the admission policy in force")
        control(ts, "stuck", {"portfolio_value": "800000"})
        st = ts.wait("stuck", lambda s: s.get("state") == "Halted", 20, "Halted in status")
        time.sleep(3)
        st = ts.status("stuck")
        assert ts.replicas("stuck") == 1, "the write was supposed to fail"
        assert condition(st, "Actuated")["status"] == "False"
    finally:
        adm.delete_validating_admission_policy_binding(name)
        adm.delete_validating_admission_policy(name)
    # No flag in memory: the next passes see the difference and repair it.
    wait_for(lambda: ts.replicas("stuck") == 0, 30, "replicas 0 after the writes work again")
    wait_for(lambda: _pod_gone(ts, "stuck-0"), 30, "the pod gone")
    st = ts.wait("stuck", lambda s: _status_true(s, "Actuated"), 30, "Actuated=True")
    assert st["state"] == "Halted"


def _deny(adm, name: str, namespace: str, rule: dict, expression: str, message: str) -> str:
    """A ValidatingAdmissionPolicy (built in: no webhook server) that refuses what `expression`
    rejects, for one namespace. Returns its name, for the clean-up."""
    name = name[:60]
    adm.create_validating_admission_policy({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiVersions": ["v1"], **rule}]},
            "validations": [{"expression": expression, "message": message}],
        },
    })
    adm.create_validating_admission_policy_binding({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
    })
    return name


def _pod_gone(ts: Strategies, pod: str) -> bool:
    try:
        ts.core.read_namespaced_pod(pod, ts.ns)
        return False
    except ApiException as exc:
        return exc.status == 404


@pytest.mark.timeout(180)
def test_a_pod_the_cluster_refuses_is_reported_not_charged_and_the_running_pod_kept(op, ts, k8s, namespace):
    adm = k8s_client.AdmissionregistrationV1Api(ts.api.api_client)
    live_pod = ("!has(object.metadata.annotations) || !('phasegate.dev/mode' in object.metadata.annotations)"
                " || object.metadata.annotations['phasegate.dev/mode'] != 'live'")
    name = _deny(adm, f"deny-live-{namespace}", namespace, {"apiGroups": [""], "resources": ["pods"], "operations": ["CREATE"]},
                 live_pod, "live pods need the desk's sign-off label (test policy)")
    try:
        # The paper pod is admitted; the live-10 pod the ladder then asks for is not.
        ts.create(plans.strategy("refused", phases=LIVE_AFTER_PAPER, max_fraction=0.10,
                                 metrics_failure={"pauseAfter": 3, "haltAfter": 6}))
        metrics_read(ts, "refused")
        st = ts.wait("refused", lambda s: _status_true(s, "PodCreateFailed"), 60, "PodCreateFailed=True")
        assert "sign-off" in condition(st, "PodCreateFailed")["message"]
        assert condition(st, "Ready")["reason"] == "PodCreateFailed"
        wait_for(lambda: any(e.get("reason") == "PodRefused" and e.get("type") == "Warning" for e in ts.events_for("refused")),
                 20, "a Warning Event")
        time.sleep(10)  # more than haltAfter intervals
        st = ts.status("refused")
        assert st["state"] not in ("Halted", "Paused"), f"the refusal was charged as a metrics outage: {st.get('message')}"
        assert not st.get("holds") or all(h["kind"] == "ApprovalWait" for h in st["holds"])
        pod = ts.core.read_namespaced_pod("refused-0", namespace)
        assert (pod.metadata.annotations or {}).get("phasegate.dev/phase") == "paper", "the running pod was given up"
        assert pod.metadata.deletion_timestamp is None
    finally:
        adm.delete_validating_admission_policy_binding(name)
        adm.delete_validating_admission_policy(name)
    st = ts.wait("refused", lambda s: not _status_true(s, "PodCreateFailed"), 30, "PodCreateFailed=False")
    pod_of_phase(ts, "refused", "live-10", timeout=60)


@pytest.mark.timeout(120)
def test_the_strategy_network_policy_follows_the_spec(op, ts, k8s, namespace):
    """spec.networkPolicy on: the operator creates it (and puts it back if deleted); off: gone."""
    net = k8s_client.NetworkingV1Api(ts.api.api_client)

    def exists() -> bool:
        try:
            net.read_namespaced_network_policy("fenced", namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    ts.create(plans.strategy("fenced", phases=LIVE_AFTER_PAPER[:1] + [{"name": "live-100", "mode": "live", "fraction": 1.0}],
                             extra_spec={"networkPolicy": {"enabled": True}}))
    wait_for(exists, 30, "the NetworkPolicy")
    np = net.read_namespaced_network_policy("fenced", namespace)
    assert np.spec.pod_selector.match_labels == {"phasegate.dev/strategy": "fenced"}
    assert [p.port for p in np.spec.ingress[0].ports] == [9100]
    net.delete_namespaced_network_policy("fenced", namespace)
    wait_for(exists, 30, "the NetworkPolicy put back")
    ts.patch_spec("fenced", {"networkPolicy": {"enabled": False}})
    wait_for(lambda: not exists(), 30, "the NetworkPolicy removed")
