"""The controller's Kube against the real apiserver, where it relies on how the apiserver answers."""

from __future__ import annotations

import asyncio
import json

from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig

from phasegate.api import contract
from phasegate.controller.kube import _RESOURCE_VERSION, Kube

import plans

from .strategy_env import Strategies, install_crd


def test_a_status_write_returns_the_version_it_made_read_from_metadata_s_tail(k8s, kubeconfig, namespace):
    """patch_status reads the new resourceVersion where metadata ends (the apiserver writes an
    object's keys sorted and without spaces) instead of decoding it all: checked here on the
    apiserver's own bytes, and against a read of the object."""
    install_crd(k8s)
    ts = Strategies(k8s, namespace)
    ts.create(plans.strategy("rv"))

    async def go() -> tuple[str, str, bytes]:
        api = await aconfig.new_client_from_config(config_file=str(kubeconfig))
        try:
            kube = Kube(api)
            base = (await kube.get_strategy(namespace, "rv"))["metadata"]["resourceVersion"]
            rv = await kube.patch_status(namespace, "rv", {"message": "written by the test"}, base)
            got = (await kube.get_strategy(namespace, "rv"))["metadata"]["resourceVersion"]
            resp = await aclient.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, "rv",
                {"metadata": {"resourceVersion": got}, "status": {"message": "again"}},
                _content_type="application/merge-patch+json", _preload_content=False)
            raw = await resp.read()
            resp.release()
            return rv, got, raw
        finally:
            await api.close()

    rv, got, raw = asyncio.run(go())
    assert rv and rv == got
    assert raw.startswith(b'{"apiVersion":') and b'"managedFields":' in raw, raw[:200]
    m = _RESOURCE_VERSION.search(raw)
    assert m is not None, raw[:2000]
    assert m.group(1).decode() == json.loads(raw)["metadata"]["resourceVersion"]
