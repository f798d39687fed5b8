"""`phasegate install-crds`: create or replace the TradingStrategy CRD, wait until Established."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import NO_ANSWER, REFUSED, CliError
from .kube import Conflict, KubeApi

CRD_FILE = "phasegate.dev_tradingstrategies.yaml"


def default_crd_file() -> Path:
    """crds/ at the repository root: three levels above operator/phasegate/cli."""
    return Path(__file__).resolve().parents[3] / "crds" / CRD_FILE


def load_crd(path: Optional[str]) -> tuple[dict[str, Any], str]:
    """The CRD to install and where it came from.

    Without --file: the repository's crds/ file; when the package is installed without
    the repository (a wheel), the same CRD generated from the installed api models.
    """
    if path:
        source = Path(path)
        if not source.is_file():
            raise CliError(f"--file {path}: no such file; pass the path of {CRD_FILE}", REFUSED)
    else:
        source = default_crd_file()
        if not source.is_file():
            from phasegate.api.crd import crd

            return crd(), "generated from the installed phasegate.api models"
    try:
        body = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise CliError(f"{source} is not valid YAML: {exc}", REFUSED) from exc
    if not isinstance(body, dict) or body.get("kind") != "CustomResourceDefinition":
        kind = body.get("kind") if isinstance(body, dict) else "?"
        raise CliError(f"{source} is not a CustomResourceDefinition (kind: {kind})", REFUSED)
    return body, str(source)


def apply_crd(kube: KubeApi, body: dict[str, Any], retries: int = 5) -> str:
    """Create, or replace on the current resourceVersion; 'created' or 'replaced'."""
    name = body["metadata"]["name"]
    for _ in range(retries):
        existing = kube.get_crd(name)
        try:
            if existing is None:
                kube.create_crd(body)
                return "created"
            new = copy.deepcopy(body)
            new["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            kube.replace_crd(new)
            return "replaced"
        except Conflict:
            continue
    raise CliError(f"CRD {name} kept changing while it was written (409 Conflict); run the command again", REFUSED)


def _condition(crd: dict[str, Any], ctype: str) -> Optional[dict[str, Any]]:
    for c in (crd.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def wait_established(
    kube: KubeApi,
    name: str,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    deadline = clock() + timeout
    while True:
        crd = kube.get_crd(name) or {}
        est = _condition(crd, "Established")
        if est and est.get("status") == "True":
            return
        names = _condition(crd, "NamesAccepted")
        if names and names.get("status") == "False":
            raise CliError(f"CRD {name}: names not accepted: {names.get('message', '')}", REFUSED)
        if clock() >= deadline:
            msg = est.get("message", "") if est else "no Established condition yet"
            raise CliError(
                f"CRD {name} was written but is not Established after {timeout:g}s ({msg}); "
                f"check `kubectl get crd {name} -o yaml`",
                NO_ANSWER,
            )
        sleep(0.2)
