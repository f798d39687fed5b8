"""Every pod phasegate creates passes the `restricted` Pod Security Standard, field by field,
and no template setting can loosen it.

The rules are written out below from the Pod Security Standards (Kubernetes 1.35,
https://kubernetes.io/docs/concepts/security/pod-security-standards/), baseline and
restricted, as a checker that returns each violation it finds. The checker is tested on
pods broken one field at a time, so that it is known to fail. tests/e2e/
test_pod_security_e2e.py proves the same pods on the apiserver's own PodSecurity admission.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from phasegate.api import State, StrategySpec, StrategyStatus, contract
from phasegate.api.crd import crd
from phasegate.manifests import Owner, backtest_job, backtest_job_name, flatten_job, statefulset, template_hash

# --------------------------------------------------------------------------- the profile

# Restricted: "Volume Types" (every volume source other than these is refused; hostPath first of all)
ALLOWED_VOLUME_SOURCES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
# Restricted: "Capabilities": drop ALL, add NET_BIND_SERVICE at most
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
# Baseline: "Sysctls": the safe set only
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
# Baseline: "SELinux": these types, and no user or role
ALLOWED_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Baseline: "AppArmor" (field and the older annotation)
ALLOWED_APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
# Restricted: "Seccomp": RuntimeDefault or Localhost, on the pod or on every container
ALLOWED_SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in pod.get(key) or []]


def restricted_violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """The rules of the baseline and restricted profiles that `pod` (a PodSpec) breaks."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = _containers(pod)

    # ---- baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field} is true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod windowsOptions.hostProcess")
    for v in pod.get("volumes") or []:
        sources = set(v) - {"name"}
        if "hostPath" in sources:
            out.append(f"volume {v['name']}: hostPath")
        if sources - ALLOWED_VOLUME_SOURCES:
            out.append(f"volume {v['name']}: type {sorted(sources - ALLOWED_VOLUME_SOURCES)} not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')} is not a safe sysctl")
    for key, value in (annotations or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            out.append(f"annotation {key}={value}")

    def selinux(where: str, opts: dict[str, Any] | None) -> None:
        if not opts:
            return
        if opts.get("type", "") not in ALLOWED_SELINUX_TYPES:
            out.append(f"{where} seLinuxOptions.type {opts['type']}")
        for k in ("user", "role"):
            if opts.get(k):
                out.append(f"{where} seLinuxOptions.{k} is set")

    def apparmor(where: str, profile: dict[str, Any] | None) -> None:
        if profile and profile.get("type") not in ALLOWED_APPARMOR_TYPES:
            out.append(f"{where} appArmorProfile.type {profile.get('type')}")

    selinux("pod", psc.get("seLinuxOptions"))
    apparmor("pod", psc.get("appArmorProfile"))

    # ---- restricted, pod level
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP_TYPES:
        out.append(f"pod seccompProfile.type {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser is 0")

    for c in containers:
        name = f"container {c.get('name')}"
        sc = c.get("securityContext") or {}
        # baseline
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{name}: windowsOptions.hostProcess")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{name}: hostPort {p['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount {sc['procMount']}")
        selinux(name, sc.get("seLinuxOptions"))
        apparmor(name, sc.get("appArmorProfile"))
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop does not include ALL")
        added = set(caps.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
        if added:
            out.append(f"{name}: capabilities.add {sorted(added)}")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"{name}: runAsNonRoot is not true (on the pod or the container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ALLOWED_SECCOMP_TYPES:
            out.append(f"{name}: seccompProfile.type {seccomp}")
        if seccomp is None and pod_seccomp is None:
            out.append(f"{name}: no seccompProfile (on the pod or the container)")
    return out


# --------------------------------------------------------------------------- the pods

OWNER = Owner(name="momentum", namespace="trading", uid="1234-5678")
BASE_TEMPLATE: dict[str, Any] = {
    "image": "example/momentum:1",
    "envFrom": [{"secretRef": {"name": "broker-credentials"}}],
    "resources": {"requests": {"cpu": "100m"}},
    "nodeSelector": {"disk": "ssd"},
    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
}


def spec_with(**template: Any) -> StrategySpec:
    return StrategySpec.model_validate({
        "capital": "1000000", "account": "DU1", "maxFraction": 1,
        "template": {**BASE_TEMPLATE, **template},
    })


def status(spec: StrategySpec, phase: str, state: State = State.PROGRESSING, fraction: str = "0") -> StrategyStatus:
    idx = [p.name for p in spec.phases].index(phase)
    return StrategyStatus(phase=phase, phase_index=idx, state=state, capital_fraction=Decimal(fraction))


def all_pods(spec: StrategySpec) -> dict[str, dict[str, Any]]:
    """The pod template of every object phasegate creates, by what creates it."""
    sts = statefulset(spec, status(spec, "live-35", fraction="0.35"), OWNER)
    bt = backtest_job(spec, status(spec, "backtest", State.VALIDATING), OWNER)
    fl = flatten_job(spec, status(spec, "live-35", State.EMERGENCY_STOPPED, "0.35"), OWNER, "abcdef123456")
    return {"statefulset": sts["spec"]["template"], "backtest": bt["spec"]["template"], "flatten": fl["spec"]["template"]}


SETTINGS = {
    "defaults": {},
    "custom ids": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
    "writable root filesystem": {"readOnlyRootFilesystem": False},
    "service account without token": {"serviceAccountName": "strategy"},
    "service account with token": {"serviceAccountName": "strategy", "automountServiceAccountToken": True},
    "every opt-out": {"readOnlyRootFilesystem": False, "serviceAccountName": "strategy",
                      "automountServiceAccountToken": True, "runAsUser": 2147483647},
}
POD_KINDS = ["statefulset", "backtest", "flatten"]


@pytest.mark.parametrize("kind", POD_KINDS)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_generated_pod_passes_the_restricted_profile(kind: str, setting: str):
    template = all_pods(spec_with(**SETTINGS[setting]))[kind]
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []


@pytest.mark.parametrize("kind", POD_KINDS)
def test_the_pod_fields_field_by_field(kind: str):
    pod = all_pods(spec_with())[kind]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "hostUsers"):
        assert field not in pod, field
    assert not pod.get("initContainers") and not pod.get("ephemeralContainers")
    (c,) = pod["containers"]
    assert c["securityContext"] == {
        "runAsNonRoot": True, "privileged": False, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
    }
    assert all("hostPort" not in p for p in c["ports"])
    assert pod["volumes"] == [
        {"name": "checkpoints", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "128Mi"}},
    ]


@pytest.mark.parametrize("kind", POD_KINDS)
def test_the_sdk_write_paths_are_writable_volumes(kind: str):
    """With a read-only root filesystem, the SDK writes its checkpoints (PHASEGATE_CHECKPOINT_DIR)
    and temporary files into emptyDir volumes; the termination message is the kubelet's own mount."""
    pod = all_pods(spec_with())[kind]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    for path in (env[contract.ENV_CHECKPOINT_DIR], "/tmp"):
        mount = mounts[path]
        assert not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]], path
    assert env[contract.ENV_CHECKPOINT_DIR] == contract.DEFAULT_CHECKPOINT_DIR
    assert c["terminationMessagePath"] == contract.DEFAULT_TERMINATION_MESSAGE_PATH


def test_template_settings_reach_the_pod():
    pods = all_pods(spec_with(runAsUser=1000, runAsGroup=3000, fsGroup=2000, readOnlyRootFilesystem=False,
                              serviceAccountName="strategy", automountServiceAccountToken=True))
    for pod in pods.values():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["securityContext"]["runAsGroup"] == 3000 and spec["securityContext"]["fsGroup"] == 2000
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
        assert spec["serviceAccountName"] == "strategy" and spec["automountServiceAccountToken"] is True


def test_no_token_unless_a_named_account_asks_for_it():
    assert all(p["spec"]["automountServiceAccountToken"] is False for p in all_pods(spec_with()).values())
    named = all_pods(spec_with(serviceAccountName="strategy"))
    assert all(p["spec"]["automountServiceAccountToken"] is False for p in named.values())


# --------------------------------------------------------------------------- the checker can fail

Mutation = Callable[[dict[str, Any]], None]


def _c(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]


def _csc(pod: dict[str, Any]) -> dict[str, Any]:
    return _c(pod)["securityContext"]


MUTATIONS: dict[str, Mutation] = {
    "privileged": lambda p: _csc(p).update(privileged=True),
    "capabilities add SYS_ADMIN": lambda p: _csc(p)["capabilities"].update(add=["SYS_ADMIN"]),
    "capabilities drop nothing": lambda p: _csc(p)["capabilities"].update(drop=[]),
    "allowPrivilegeEscalation true": lambda p: _csc(p).update(allowPrivilegeEscalation=True),
    "allowPrivilegeEscalation unset": lambda p: _csc(p).pop("allowPrivilegeEscalation"),
    "runAsNonRoot false on the container": lambda p: _csc(p).update(runAsNonRoot=False),
    "runAsNonRoot unset everywhere": lambda p: (_csc(p).pop("runAsNonRoot"), p["securityContext"].pop("runAsNonRoot")),
    "pod runAsUser 0": lambda p: p["securityContext"].update(runAsUser=0),
    "container runAsUser 0": lambda p: _csc(p).update(runAsUser=0),
    "seccomp Unconfined": lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "seccomp unset": lambda p: p["securityContext"].pop("seccompProfile"),
    "hostNetwork": lambda p: p.update(hostNetwork=True),
    "hostPID": lambda p: p.update(hostPID=True),
    "hostIPC": lambda p: p.update(hostIPC=True),
    "hostPort": lambda p: _c(p)["ports"][0].update(hostPort=9100),
    "hostPath volume": lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    "nfs volume": lambda p: p["volumes"].append({"name": "nfs", "nfs": {"server": "x", "path": "/"}}),
    "procMount Unmasked": lambda p: _csc(p).update(procMount="Unmasked"),
    "unsafe sysctl": lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    "appArmor Unconfined": lambda p: _csc(p).update(appArmorProfile={"type": "Unconfined"}),
    "seLinux spc_t": lambda p: p["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
    "seLinux user": lambda p: _csc(p).update(seLinuxOptions={"user": "system_u"}),
    "hostProcess": lambda p: p["securityContext"].update(windowsOptions={"hostProcess": True}),
    "privileged init container": lambda p: p.update(initContainers=[
        {**copy.deepcopy(_c(p)), "name": "init", "securityContext": {**_csc(p), "privileged": True}}]),
}


@pytest.mark.parametrize("kind", POD_KINDS)
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_checker_refuses_a_pod_broken_in_one_field(kind: str, mutation: str):
    pod = copy.deepcopy(all_pods(spec_with())[kind]["spec"])
    MUTATIONS[mutation](pod)
    assert restricted_violations(pod), f"{mutation} was not caught"


def test_the_checker_refuses_an_unconfined_apparmor_annotation():
    pod = all_pods(spec_with())["statefulset"]["spec"]
    assert restricted_violations(pod, {APPARMOR_ANNOTATION + "strategy": "unconfined"})


# --------------------------------------------------------------------------- no opt-out loosens it


@pytest.mark.parametrize("field", ["runAsUser", "runAsGroup", "fsGroup"])
@pytest.mark.parametrize("value", [0, -1, 2147483648])
def test_ids_must_be_non_zero_and_in_range(field: str, value: int):
    with pytest.raises(ValidationError) as err:
        spec_with(**{field: value})
    assert f"spec.template.{field}" in str(err.value)


def test_a_token_needs_a_named_service_account():
    with pytest.raises(ValidationError, match="automountServiceAccountToken"):
        spec_with(automountServiceAccountToken=True)


@pytest.mark.parametrize("field, value", [
    ("securityContext", {"privileged": True}),
    ("podSecurityContext", {"runAsUser": 0}),
    ("privileged", True),
    ("runAsNonRoot", False),
    ("allowPrivilegeEscalation", True),
    ("capabilities", {"add": ["NET_ADMIN"]}),
    ("hostNetwork", True),
    ("hostPID", True),
    ("hostIPC", True),
    ("volumes", [{"name": "h", "hostPath": {"path": "/"}}]),
    ("volumeMounts", [{"name": "h", "mountPath": "/host"}]),
    ("seccompProfile", {"type": "Unconfined"}),
    ("initContainers", [{"name": "i", "image": "x"}]),
])
def test_the_template_has_no_field_that_loosens_the_profile(field: str, value: Any):
    with pytest.raises(ValidationError, match=field):
        spec_with(**{field: value})


@settings(max_examples=200, deadline=None)
@given(
    run_as_user=st.integers(1, 2147483647),
    run_as_group=st.integers(1, 2147483647),
    fs_group=st.integers(1, 2147483647),
    read_only=st.booleans(),
    account=st.sampled_from([None, "strategy"]),
    token=st.booleans(),
)
def test_any_allowed_combination_of_settings_stays_restricted(run_as_user, run_as_group, fs_group, read_only, account, token):
    template: dict[str, Any] = {"runAsUser": run_as_user, "runAsGroup": run_as_group, "fsGroup": fs_group,
                                "readOnlyRootFilesystem": read_only}
    if account:
        template["serviceAccountName"] = account
        template["automountServiceAccountToken"] = token
    for kind, pod in all_pods(spec_with(**template)).items():
        assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == [], kind
        assert pod["spec"]["automountServiceAccountToken"] is bool(account and token)


def test_the_crd_refuses_what_the_model_refuses():
    """The apiserver refuses the same at apply time: minimum 1 on the ids (the error names the
    field), the token rule in CEL, and no property that could carry a security setting."""
    version = crd()["spec"]["versions"][0]
    template = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]
    props = template["properties"]
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        assert props[field]["type"] == "integer" and props[field]["minimum"] == 1 and props[field]["maximum"] == 2147483647
        assert props[field]["default"] == 65532
    assert props["readOnlyRootFilesystem"] == {**props["readOnlyRootFilesystem"], "type": "boolean", "default": True}
    assert props["automountServiceAccountToken"]["default"] is False
    rules = {r["rule"]: r for r in template["x-kubernetes-validations"]}
    (token_rule,) = [r for r in rules if "automountServiceAccountToken" in r]
    assert "serviceAccountName" in token_rule and rules[token_rule]["fieldPath"] == ".automountServiceAccountToken"
    forbidden = {"securityContext", "privileged", "hostNetwork", "hostPID", "hostIPC", "volumes", "volumeMounts",
                 "capabilities", "allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile", "initContainers"}
    assert not forbidden & set(props)
    assert not template.get("x-kubernetes-preserve-unknown-fields")


def test_security_settings_do_not_change_the_backtest():
    """They shape the pod, not what the strategy computes: the same backtest Job, and the
    same hash as before these settings existed (an upgraded operator re-runs no backtest)."""
    base = spec_with(serviceAccountName="s")
    other = spec_with(serviceAccountName="s", runAsUser=1000, runAsGroup=7, fsGroup=8, readOnlyRootFilesystem=False,
                      automountServiceAccountToken=True)
    assert template_hash(base) == template_hash(other)
    assert backtest_job_name(OWNER, base) == backtest_job_name(OWNER, other)
    assert template_hash(base) != template_hash(spec_with(serviceAccountName="s", image="example/momentum:2"))
    assert template_hash(spec_with()) == "47392706"  # the value of the release before these fields
