"""Identity shared by every child object: the owner reference, labels and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phasegate.api import contract


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": contract.API_VERSION,
            "kind": contract.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        contract.LABEL_STRATEGY: owner.name,
        contract.LABEL_COMPONENT: component,
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        "app.kubernetes.io/name": owner.name,
    }


def metadata(owner: Owner, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner.reference()],
    }
