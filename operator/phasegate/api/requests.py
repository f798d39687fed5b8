"""Manual actions on the wire: the `phasegate.dev/request` annotation the CLI writes.

Whether a request may act is a policy question (phasegate.policy.requests); this module
only reads and writes the annotation, and refuses what cannot be a request at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Optional

from .types import _utc


class Verb(str, Enum):
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    HALT = "halt"
    RESET = "reset"
    EMERGENCY = "emergency"


SEVERITIES = ("low", "medium", "high", "critical")


class BadRequest(ValueError):
    """An annotation the operator cannot read as a request."""


@dataclass(frozen=True)
class Request:
    id: str
    verb: Verb
    reason: str
    by: str
    at: datetime
    severity: Optional[str] = None
    # For reset: the hold it lifts, as `phasegate status` shows it (#17, or an emergency id).
    target: Optional[str] = None

    def to_annotation(self) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "action": self.verb.value,
            "reason": self.reason,
            "by": self.by,
            "at": self.at.isoformat(),
        }
        if self.severity:
            body["severity"] = self.severity
        if self.target:
            body["target"] = self.target
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_annotation(cls, text: str) -> Request:
        try:
            body = json.loads(text)
            verb = Verb(body["action"])
            reason = str(body["reason"]).strip()
            target = body.get("target")
            req = cls(
                id=str(body["id"]).strip(),
                verb=verb,
                reason=reason,
                by=str(body.get("by") or "unknown"),
                at=_utc(datetime.fromisoformat(body["at"])),
                severity=body.get("severity"),
                target=str(target).strip() if target not in (None, "") else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadRequest(f"unreadable phasegate.dev/request annotation: {exc}") from exc
        if not req.id:
            raise BadRequest("a request needs an id")
        if not reason:
            raise BadRequest("a manual action needs a reason (--reason): it is blank")
        if req.severity is not None and req.severity not in SEVERITIES:
            raise BadRequest(f"severity {req.severity!r} is not one of {', '.join(SEVERITIES)}")
        return req


__all__ = ["BadRequest", "Request", "SEVERITIES", "Verb"]
