"""The resourceVersion of a status write's answer, read without decoding the whole body."""

from __future__ import annotations

import json

from phasegate.controller.kube import written_version


def apiserver_json(obj: dict) -> bytes:
    """As the apiserver writes a custom object: keys sorted, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def strategy(rv: str) -> dict:
    return {
        "apiVersion": "phasegate.dev/v1alpha1", "kind": "TradingStrategy",
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                            json.dumps({"metadata": {"resourceVersion": "1"}}, separators=(",", ":"))},
            "generation": 3,
            "managedFields": [{"manager": "phasegate@x", "fieldsV1": {"f:status": {"f:phase": {}}},
                               "subresource": "status"}],
            "name": "s", "namespace": "ns", "resourceVersion": rv, "uid": "u",
        },
        "spec": {"note": '"resourceVersion":"2"'},
        "status": {"phase": "live-10"},
    }


def test_the_object_s_own_resource_version() -> None:
    assert written_version(apiserver_json(strategy("123456"))) == "123456"


def test_metadata_cannot_pass_for_the_tail() -> None:
    obj = strategy("900")
    obj["metadata"]["annotations"].update({"resourceVersion": "1", "spec": "x", "uid": "y"})
    obj["metadata"]["labels"] = {"resourceVersion": "2", "uid": "z"}
    assert written_version(apiserver_json(obj)) == "900"


def test_anything_else_is_decoded_in_full() -> None:
    spaced = json.dumps(strategy("77"), indent=1).encode()  # not the apiserver's spelling
    assert written_version(spaced) == "77"
    assert written_version(b'{"kind":"Status","metadata":{}}') == ""
