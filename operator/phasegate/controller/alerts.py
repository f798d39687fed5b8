"""Alertmanager webhook receiver: a firing alert about a strategy trips its breaker.

The receiver writes the `CircuitBreakerTripped` condition into the strategy's status,
the same way a person would, and the strategy's loop halts it from there. Going through
the status (not memory) means an alert is not lost if the operator restarts before
acting on it.
"""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime
from typing import Any, Optional

from aiohttp import web

from phasegate.api import ConditionType
from phasegate.api.status import Condition

from . import handlers, telemetry
from .kube import Conflict

PATH = "/alertmanager/webhook"
_STS_POD = re.compile(r"^(?P<name>.+)-0$")


def strategy_of(labels: dict[str, str]) -> Optional[tuple[str, str]]:
    ns = labels.get("namespace")
    name = labels.get("strategy") or labels.get("tradingstrategy")
    if not name and labels.get("pod"):
        m = _STS_POD.match(labels["pod"])
        name = m.group("name") if m else None
    return (ns, name) if ns and name else None


def _reason(alertname: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9]", "", alertname) or "Alert"
    return "Alert" + cleaned[:1].upper() + cleaned[1:]


async def trip_from_alert(namespace: str, name: str, alert: dict[str, Any]) -> str:
    kube = handlers.RECONCILER.kube
    labels, annotations = alert.get("labels") or {}, alert.get("annotations") or {}
    alertname = labels.get("alertname", "alert")
    message = annotations.get("summary") or annotations.get("description") or f"Alertmanager alert {alertname} is firing"
    for _ in range(5):
        obj = await kube.get_strategy(namespace, name)
        if obj is None:
            return "not-found"
        status = obj.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != ConditionType.CIRCUIT_BREAKER_TRIPPED.value]
        old = next(
            (c for c in status.get("conditions") or [] if c.get("type") == ConditionType.CIRCUIT_BREAKER_TRIPPED.value), None
        )
        if old is not None and old.get("status") == "True":
            return "already-tripped"
        cond = Condition(
            type=ConditionType.CIRCUIT_BREAKER_TRIPPED.value,
            status="True",
            reason=_reason(alertname),
            message=f"{message} (via Alertmanager)",
            last_transition_time=datetime.now(UTC),
        )
        try:
            await kube.patch_status(
                namespace, name, {"conditions": conditions + [cond.wire()]}, obj["metadata"]["resourceVersion"]
            )
        except Conflict:
            continue
        telemetry.log_for(namespace, name).warning("alert tripped the breaker", alertname=alertname, message=message)
        return "tripped"
    return "conflict"


def add_routes(app: web.Application, token: str) -> None:
    async def receive(request: web.Request) -> web.Response:
        if not token:
            return web.json_response({"error": "the receiver is disabled: set PHASEGATE_ALERTMANAGER_TOKEN"}, status=403)
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            payload = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        results = []
        for alert in payload.get("alerts") or []:
            if alert.get("status", "firing") != "firing":
                continue  # a resolved alert never re-enables trading: only reset does
            target = strategy_of(alert.get("labels") or {})
            if target is None:
                results.append({"alert": (alert.get("labels") or {}).get("alertname"), "result": "no strategy labels"})
                continue
            results.append({"strategy": "/".join(target), "result": await trip_from_alert(*target, alert)})
        return web.json_response({"results": results})

    app.router.add_post(PATH, receive)
