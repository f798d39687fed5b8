"""A TradingStrategy object as the apiserver returns it, read into the api models.

The renderers must show something even for an object the models refuse (an operator of
another version, a half-written status), so parsing never raises here: the errors are
kept next to the parts that did parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from pydantic import ValidationError

from phasegate.api import StrategySpec, StrategyStatus, contract
from phasegate.api.types import _utc
from phasegate.policy.requests import BadRequest, Request


def _errors(exc: ValidationError, prefix: str) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{prefix}.{loc}: {e.get('msg')}" if loc else f"{prefix}: {e.get('msg')}")
    return "; ".join(parts)


def parse_status(raw: Any) -> tuple[StrategyStatus, Optional[str]]:
    """The status model, dropping unknown top-level fields (and then any field that fails)."""
    if not isinstance(raw, dict) or not raw:
        return StrategyStatus(), None
    known = {f.alias or n for n, f in StrategyStatus.model_fields.items()} | set(StrategyStatus.model_fields)
    data = {k: v for k, v in raw.items() if k in known}
    try:
        return StrategyStatus.model_validate(data), None
    except ValidationError as exc:
        error = _errors(exc, "status")
        bad = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")}
        try:
            return StrategyStatus.model_validate({k: v for k, v in data.items() if k not in bad}), error
        except ValidationError:
            return StrategyStatus(), error


@dataclass
class Strategy:
    obj: dict[str, Any]
    spec: Optional[StrategySpec]
    status: StrategyStatus
    spec_error: Optional[str] = None
    status_error: Optional[str] = None
    has_status: bool = False
    pending: Optional[Request] = field(default=None)
    annotation_error: Optional[str] = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def metadata(self) -> dict[str, Any]:
        return self.obj.get("metadata") or {}

    @property
    def resource_version(self) -> Optional[str]:
        return self.metadata.get("resourceVersion")

    @property
    def created(self) -> Optional[datetime]:
        return parse_time(self.metadata.get("creationTimestamp"))

    @property
    def request_annotation(self) -> Optional[str]:
        return (self.metadata.get("annotations") or {}).get(contract.ANNOTATION_REQUEST)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Strategy:
        spec: Optional[StrategySpec] = None
        spec_error = None
        try:
            spec = StrategySpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            spec_error = _errors(exc, "spec")
        raw_status = obj.get("status")
        status, status_error = parse_status(raw_status)
        out = cls(
            obj=obj,
            spec=spec,
            status=status,
            spec_error=spec_error,
            status_error=status_error,
            has_status=bool(raw_status),
        )
        text = out.request_annotation
        if text:
            try:
                req = Request.from_annotation(text)
            except BadRequest as exc:
                out.annotation_error = str(exc)
            else:
                last = status.last_request
                if last is None or last.id != req.id:
                    out.pending = req
        return out


def parse_time(value: Any) -> Optional[datetime]:
    if not value:
        return None
    if isinstance(value, datetime):
        return _utc(value) if value.tzinfo else None
    try:
        return _utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return None
