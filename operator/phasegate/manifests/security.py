"""Pod security of every pod phasegate creates: the `restricted` Pod Security Standard.

The strategy StatefulSet, the backtest Job and the flatten Job share one pod shape: a
non-root numeric user, the runtime's default seccomp profile, no capabilities, no
privilege escalation, a read-only root filesystem with writable emptyDir volumes where
the SDK writes (the checkpoint directory and /tmp), and no ServiceAccount token unless
the template names a ServiceAccount and asks for its token. The template's settings
(runAsUser, runAsGroup, fsGroup, readOnlyRootFilesystem, automountServiceAccountToken)
can change ids and those two switches only: nothing the restricted profile forbids.
"""

from __future__ import annotations

from typing import Any

from phasegate.api import StrategyTemplate, contract

CHECKPOINT_VOLUME = "checkpoints"
TMP_VOLUME = "tmp"
TMP_DIR = "/tmp"
TMP_SIZE_LIMIT = "128Mi"

# Template fields that shape the pod's security, not what the strategy computes: left
# out of the backtest's template hash, so changing them does not re-run a backtest.
SECURITY_FIELDS = frozenset({
    "runAsUser", "runAsGroup", "fsGroup", "readOnlyRootFilesystem", "automountServiceAccountToken",
})


def pod_security_context(t: StrategyTemplate) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": t.run_as_user,
        "runAsGroup": t.run_as_group,
        "fsGroup": t.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(t: StrategyTemplate) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": t.read_only_root_filesystem,
    }


def volume_mounts() -> list[dict[str, Any]]:
    """Where the SDK writes: checkpoints (PHASEGATE_CHECKPOINT_DIR) and temporary files."""
    return [
        {"name": CHECKPOINT_VOLUME, "mountPath": contract.DEFAULT_CHECKPOINT_DIR},
        {"name": TMP_VOLUME, "mountPath": TMP_DIR},
    ]


def volumes() -> list[dict[str, Any]]:
    return [
        {"name": CHECKPOINT_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
    ]


def automount_token(t: StrategyTemplate) -> bool:
    """Only for a named ServiceAccount whose token the template asks for (the model
    refuses the request without a name; checked here again, so a bug cannot mount one)."""
    return bool(t.automount_service_account_token and t.service_account_name)
