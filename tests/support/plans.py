"""TradingStrategy manifests for tests: the fake strategy on the local-process node,
with a time-compressed ladder (seconds instead of weeks)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

FAKE_STRATEGY = str(Path(__file__).resolve().parent / "fake_strategy.py")

COMPRESSED_PHASES = [
    {"name": "paper", "mode": "paper", "minDuration": "3s"},
    {"name": "shadow", "mode": "shadow", "minDuration": "3s"},
    {"name": "live-10", "mode": "live", "fraction": 0.10, "minDuration": "3s"},
    {"name": "live-50", "mode": "live", "fraction": 0.50, "minDuration": "3s"},
    {"name": "live-100", "mode": "live", "fraction": 1.0, "minDuration": "0s"},
]


def strategy(
    name: str,
    *,
    max_fraction: float = 1.0,
    phases: Optional[list[dict[str, Any]]] = None,
    interval: str = "1s",
    env: Optional[dict[str, str]] = None,
    risk_limits: Optional[dict[str, Any]] = None,
    metrics_failure: Optional[dict[str, int]] = None,
    extra_spec: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "capital": "1000000",
        "account": "DU-TEST",
        "maxFraction": max_fraction,
        "template": {
            "image": "local/fake-strategy:test",
            "command": ["python", FAKE_STRATEGY],
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            "nodeSelector": {"phasegate.dev/local-process": "true"},
            "tolerations": [{"key": "phasegate.dev/local-process", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "phases": copy.deepcopy(phases if phases is not None else COMPRESSED_PHASES),
        "analysis": {
            "interval": interval, "timeout": "2s", "rateWindow": "5s",
            "metricsFailure": metrics_failure or {"pauseAfter": 3, "haltAfter": 6},
        },
        "terminationGracePeriod": "5s",
    }
    if risk_limits is not None:
        spec["riskLimits"] = risk_limits
    spec.update(extra_spec or {})
    return {
        "apiVersion": "phasegate.dev/v1alpha1",
        "kind": "TradingStrategy",
        "metadata": {"name": name},
        "spec": spec,
    }
