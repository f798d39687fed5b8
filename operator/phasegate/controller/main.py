"""`phasegate run`: the operator process."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from phasegate.api import StrategySpec
from phasegate.metrics import make_source

from . import handlers, telemetry
from .kube import Kube, load_client
from .reconcile import Reconciler

_state: dict[str, Any] = {}


def _settings(settings: kopf.OperatorSettings) -> None:
    # Handler progress and diff-base in annotations: our status belongs to us alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.phasegate.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.phasegate.dev")
    settings.persistence.finalizer = "phasegate.dev/kopf-finalizer"
    # Watches behind load balancers used to freeze silently: bookmarks plus a bound.
    settings.watching.inactivity_timeout = 70.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 5.0
    settings.posting.level = 100  # our own Events carry the history; kopf's would double them
    settings.networking.request_timeout = 30.0


async def _metrics_app(port: int) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(telemetry.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    try:
        from .alerts import add_routes  # the Alertmanager receiver

        add_routes(app, token=os.environ.get("PHASEGATE_ALERTMANAGER_TOKEN", ""))
    except ImportError:
        pass
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    _settings(settings)
    api = await load_client()
    kube = Kube(api)
    sources: dict[str, Any] = {}

    def source_for(spec: StrategySpec):
        key = spec.analysis.model_dump_json()
        if key not in sources:
            sources[key] = make_source(spec)
        return sources[key]

    handlers.RECONCILER = Reconciler(kube, source_for)
    _state["api"] = api
    if _state.get("metrics_port"):
        _state["runner"] = await _metrics_app(_state["metrics_port"])
    telemetry.log_for("-", "-").info("operator started", metrics_port=_state.get("metrics_port"))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    runner = _state.pop("runner", None)
    if runner is not None:
        await runner.cleanup()
    api = _state.pop("api", None)
    if api is not None:
        await api.close()


def run(
    namespace: Optional[str] = None,
    metrics_port: int = 8080,
    liveness_port: int = 8081,
    verbose: bool = False,
) -> None:
    telemetry.configure_logging(verbose)
    _state["metrics_port"] = metrics_port
    kwargs: dict[str, Any] = {"standalone": True}
    if namespace:
        kwargs["namespaces"] = [namespace]
    else:
        kwargs["clusterwide"] = True
    if liveness_port:
        kwargs["liveness_endpoint"] = f"http://0.0.0.0:{liveness_port}/healthz"
    asyncio.run(kopf.operator(**kwargs))
