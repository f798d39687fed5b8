"""Manual actions: check, write the request annotation, wait for the operator's answer.

The CLI asks `refusal()` first so that a user hears "no" at once with the reason; the
operator checks again when it reads the request, because the state may have moved.
The request is written with a JSON merge patch that carries metadata.resourceVersion,
so it lands on exactly the version that was checked; on 409 Conflict the object is read
and checked again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Optional

from phasegate.api import contract
from phasegate.api.status import RequestRecord
from phasegate.policy.requests import SEVERITIES, Request, Verb, refusal

from .errors import NO_ANSWER, OK, REFUSED, CliError
from .kube import Conflict, KubeApi
from .model import Strategy

CONFLICT_RETRIES = 5
POLL_INTERVAL = 0.25

# Verbs that replace a request the operator has not answered yet: the kill switches.
OVERRIDING = (Verb.HALT, Verb.EMERGENCY)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def check_reason(reason: Optional[str]) -> str:
    text = (reason or "").strip()
    if not text:
        raise CliError(
            "--reason is empty: every manual action records why it was taken "
            '(history, Event); say why, e.g. --reason "fill rate checked by hand"',
            REFUSED,
        )
    return text


def check_severity(severity: Optional[str]) -> str:
    if severity not in SEVERITIES:
        raise CliError(f"--severity must be one of {', '.join(SEVERITIES)} (got {severity!r})", REFUSED)
    return severity


def _refused(verb: Verb, s: Strategy, why: str) -> CliError:
    why = why.replace("NAME", s.name)
    return CliError(f"cannot {verb.value} {s.namespace}/{s.name}: {why}", REFUSED)


def check(verb: Verb, s: Strategy, force: bool = False) -> None:
    """Raise CliError when `verb` is not allowed on this object now."""
    if s.spec is None:
        raise CliError(
            f"cannot {verb.value} {s.namespace}/{s.name}: its spec does not parse ({s.spec_error}); "
            "fix the manifest and apply it again",
            REFUSED,
        )
    why = refusal(s.spec, s.status, verb)
    if why:
        raise _refused(verb, s, why)
    p = s.pending
    if p is not None and verb not in OVERRIDING and not force:
        raise CliError(
            f"cannot {verb.value} {s.namespace}/{s.name}: request {p.id[:8]} ({p.verb.value} by {p.by} "
            f"at {p.at:%H:%M:%SZ}) has not been answered by the operator yet; wait for it "
            f"(`phasegate status {s.name}` shows status.lastRequest), or pass --force to replace it",
            REFUSED,
        )


def submit(
    kube: KubeApi,
    namespace: str,
    name: str,
    verb: Verb,
    reason: str,
    by: str,
    severity: Optional[str] = None,
    force: bool = False,
    now: Callable[[], datetime] = utcnow,
    make_id: Callable[[], str] = new_id,
) -> Request:
    """Check and write one request; returns it once it is stored on the object."""
    reason = check_reason(reason)
    if verb is Verb.EMERGENCY:
        severity = check_severity(severity)
    req = Request(id=make_id(), verb=verb, reason=reason, by=by, at=now(), severity=severity)
    for _ in range(CONFLICT_RETRIES):
        s = Strategy.from_obj(kube.get_strategy(namespace, name))
        check(verb, s, force)
        patch = {
            "metadata": {
                "resourceVersion": s.resource_version,
                "annotations": {contract.ANNOTATION_REQUEST: req.to_annotation()},
            }
        }
        try:
            kube.patch_strategy(namespace, name, patch)
        except Conflict:
            continue  # the object moved under us: read it and check again
        return req
    raise CliError(
        f"could not write the {verb.value} request on {namespace}/{name}: the object changed "
        f"{CONFLICT_RETRIES} times while writing (409 Conflict); run the command again",
        REFUSED,
    )


def _annotated(s: Strategy) -> Optional[Request]:
    text = s.request_annotation
    if not text:
        return None
    try:
        return Request.from_annotation(text)
    except ValueError:
        return None


@dataclass
class Answer:
    """How a request ended, from the CLI's point of view."""

    code: int
    record: Optional[RequestRecord] = None
    message: str = ""


def wait(
    kube: KubeApi,
    namespace: str,
    name: str,
    req: Request,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Answer:
    """Poll the object until status.lastRequest.id is the request's id, or time runs out."""
    deadline = clock() + timeout
    while True:
        s = Strategy.from_obj(kube.get_strategy(namespace, name))
        last = s.status.last_request
        if last is not None and last.id == req.id:
            if last.outcome == "Accepted":
                detail = f": {last.message}" if last.message else ""
                return Answer(OK, last, f"{req.verb.value} accepted by the operator{detail}")
            return Answer(
                REFUSED, last,
                f"{req.verb.value} rejected by the operator: {last.message or 'no reason given'}",
            )
        current = _annotated(s)
        if current is not None and current.id != req.id:
            return Answer(
                REFUSED, None,
                f"request {req.id[:8]} was replaced by another request ({current.verb.value} by "
                f"{current.by}) before the operator answered it; see `phasegate status {name}` "
                "and run the command again if it is still needed",
            )
        if clock() >= deadline:
            return Answer(
                NO_ANSWER, None,
                f"the operator did not answer within {timeout:g}s (status.lastRequest.id is still "
                f"{last.id[:8] if last else 'unset'}, not {req.id[:8]}): is it running? Check "
                "`kubectl -n phasegate-system get pods` (or start it with `phasegate run`). The request stays "
                f"in the {contract.ANNOTATION_REQUEST} annotation and is processed when the operator starts",
            )
        sleep(POLL_INTERVAL)
