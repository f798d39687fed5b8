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

from phasegate.api import StrategySpec, contract
from phasegate.api.status import RequestOutcome, RequestRecord
from phasegate.policy.holds import newest_stopping
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


def last_readable_spec(s: Strategy) -> Optional[StrategySpec]:
    try:
        return StrategySpec.model_validate(s.status.last_readable_spec) if s.status.last_readable_spec else None
    except ValueError:
        return None


def reset_target(s: Strategy) -> Optional[str]:
    """The halt a reset lifts when the user names none: the newest in force, as status shows it."""
    newest = newest_stopping(s.status.holds)
    return newest.id if newest is not None else None


def check(verb: Verb, s: Strategy, force: bool = False, req: Optional[Request] = None) -> None:
    """Raise CliError when `verb` is not allowed on this object now."""
    spec = s.spec
    if spec is None and verb in (Verb.HALT, Verb.RESET, Verb.EMERGENCY):
        # The kill switches work on a spec the operator cannot read: it guards with the last
        # one it could, and so does this check.
        spec = last_readable_spec(s)
    if spec is None:
        raise CliError(
            f"cannot {verb.value} {s.namespace}/{s.name}: its spec does not parse ({s.spec_error}); "
            "fix the manifest and apply it again",
            REFUSED,
        )
    why = refusal(spec, s.status, req if req is not None else verb)
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
    target: Optional[str] = None,
    make_id: Callable[[], str] = new_id,
) -> Request:
    """Check and write one request; returns it once it is stored on the object."""
    reason = check_reason(reason)
    if verb is Verb.EMERGENCY:
        severity = check_severity(severity)
    rid, at = make_id(), now()
    for _ in range(CONFLICT_RETRIES):
        s = Strategy.from_obj(kube.get_strategy(namespace, name))
        aim = target if target or verb is not Verb.RESET else reset_target(s)
        req = Request(id=rid, verb=verb, reason=reason, by=by, at=at, severity=severity, target=aim)
        check(verb, s, force, req)
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
            if last.outcome is RequestOutcome.ACCEPTED:
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
