"""What the operator keeps of the strategies' pods and StatefulSets between passes.

kopf indexes (one label-selected watch per kind) fill these: a pass reads its children from
memory instead of a GET of each per tick. kopf starts no handler and no daemon until every
index has finished its initial listing, so an empty entry means "there is none", never "not
listed yet". Only the fields a decision reads are kept (a few hundred bytes a strategy), taken
straight from the raw JSON: no client model is built on this path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from phasegate.api import contract
from phasegate.api.observations import PodRead

_POD_NOTES = (contract.ANNOTATION_PHASE, contract.ANNOTATION_MODE, contract.ANNOTATION_CAPITAL)


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str = ""
    ip: Optional[str] = None
    ready: bool = False
    deleting: bool = False
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def readable(self) -> bool:
        """Running, ready, not being deleted, with an address: a pod whose metrics count."""
        return bool(self.ip) and self.ready and not self.deleting

    def read(self) -> PodRead:
        """Which phase, mode and capital the pod was started with (its annotations)."""
        try:
            capital: Optional[Decimal] = Decimal(self.notes[contract.ANNOTATION_CAPITAL])
        except (KeyError, InvalidOperation, TypeError):
            capital = None
        return PodRead(phase=self.notes.get(contract.ANNOTATION_PHASE),
                       mode=self.notes.get(contract.ANNOTATION_MODE), capital=capital)


@dataclass(frozen=True)
class StatefulSetView:
    name: str
    replicas: Optional[int] = None
    desired_key: str = ""
    # A roll in progress: the StatefulSet controller has not yet brought every pod to the
    # newest revision (or has not seen the newest spec).
    rolling: bool = False
    sentinel_stop: str = ""  # the halt sentinel's annotation (policy/external.py)


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    notes = meta.get("annotations") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        ip=status.get("podIP") or None,
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        notes={k: notes[k] for k in _POD_NOTES if k in notes},
    )


def statefulset_view(body: Mapping[str, Any]) -> StatefulSetView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    replicas = spec.get("replicas")
    rolling = (
        (status.get("observedGeneration") or 0) < (meta.get("generation") or 0)
        or bool(status.get("updateRevision")) and status.get("updateRevision") != status.get("currentRevision")
        or (replicas or 0) > 0 and (status.get("updatedReplicas") or 0) < (replicas or 0)
    )
    return StatefulSetView(
        name=meta.get("name", ""),
        replicas=replicas,
        desired_key=(meta.get("annotations") or {}).get(contract.ANNOTATION_DESIRED_KEY, ""),
        rolling=rolling,
        sentinel_stop=(meta.get("annotations") or {}).get(contract.ANNOTATION_SENTINEL_STOP, ""),
    )


def first(store: Any) -> Any:
    """The value a kopf index holds under a key (namespace, name), or None. kopf keeps one
    value per object (uid), so for a moment after a pod is replaced the key holds both the
    old one, being deleted, and its successor: the one not being deleted is the answer."""
    if store is None:
        return None
    found = None
    for value in store:
        if not getattr(value, "deleting", False):
            return value
        found = value
    return found
