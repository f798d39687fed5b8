"""The diff base kopf builds on every strategy event: ours (no deep copy of status) is kopf's own."""

from __future__ import annotations

import kopf

from phasegate.controller.main import SpecDiffBase

PREFIX = "kopf.phasegate.dev"
BODY = {
    "apiVersion": "phasegate.dev/v1alpha1", "kind": "TradingStrategy",
    "metadata": {"name": "a", "namespace": "n", "labels": {"desk": "fx"}, "resourceVersion": "5", "uid": "u",
                 "annotations": {"note": "v", f"{PREFIX}/last-handled-configuration": "{}"}},
    "spec": {"capital": "1000", "phases": [{"name": "paper", "mode": "paper"}]},
    "status": {"phase": "paper", "history": [{"seq": 1}], "conditions": [{"type": "Ready"}]},
}


def test_the_same_essence_as_kopf_builds() -> None:
    ours = SpecDiffBase(prefix=PREFIX).build(body=kopf.Body(BODY))
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX).build(body=kopf.Body(BODY))
    assert ours == theirs
    assert "status" not in ours and ours["spec"] == BODY["spec"]


def test_a_status_field_asked_for_is_kept() -> None:
    ours = SpecDiffBase(prefix=PREFIX).build(body=kopf.Body(BODY), extra_fields=["status.phase"])
    assert ours["status"] == {"phase": "paper"}
