"""The dead-man's switch (spec.supervision): trade normally only while the operator supervises.

Every scrape of /metrics by the leading operator carries two headers (names in
`phasegate.api.contract`): who supervises, and a deadline (RFC 3339, UTC) until which it
vouches for the pod. When the last deadline passes, or no contact came within the timeout
after start, the strategy goes to **safe mode**: orders that would increase exposure are
refused, reduce-only orders still go through, and working orders are cancelled. It leaves
safe mode only on a contact whose deadline is still in the future.

`Supervision` is the pure state machine (contacts, deadlines, an injected `now` -> mode),
with no I/O; `SupervisionGuard` wraps it with the effects: the log lines, the metrics and
the cancellation of working orders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from phasegate.api import contract

from .clock import isoformat, require_utc


class SupervisionMode(str, Enum):
    UNSUPERVISED = "unsupervised"  # no timeout in the pod env and no contact yet: nothing to lose
    NORMAL = "normal"
    SAFE = "safe"


@dataclass(frozen=True)
class Change:
    """A change of mode, for the log line and the metrics."""

    mode: SupervisionMode
    at: datetime
    reason: str
    deadline: datetime | None
    supervisor: str | None


class Supervision:
    """Contacts, deadlines and now -> mode. Every method takes `now`: this class never reads a clock.

    Rules:
    - with a timeout (PHASEGATE_SUPERVISION_TIMEOUT), the first deadline is start + timeout;
      without one, the pod is unsupervised until a first contact arms it (the header is the
      authority; the env only says supervision is expected from the start);
    - each contact replaces the deadline with its own, capped at now + timeout when the timeout
      is known: a skewed or forged header cannot buy more time than the spec allows;
    - the mode is SAFE once now >= deadline, and goes back to NORMAL only in `contact`, with a
      deadline after now; a clock stepped back never lifts safe mode on its own.
    """

    def __init__(self, timeout: timedelta | None, started_at: datetime) -> None:
        if timeout is not None and timeout <= timedelta(0):
            raise ValueError(f"supervision timeout must be > 0, got {timeout}")
        started_at = require_utc(started_at)
        self.timeout = timeout
        self.started_at = started_at
        self.deadline: datetime | None = started_at + timeout if timeout is not None else None
        self.supervisor: str | None = None
        self.contacts = 0
        self.mode = SupervisionMode.NORMAL if timeout is not None else SupervisionMode.UNSUPERVISED

    @property
    def armed(self) -> bool:
        return self.deadline is not None

    def contact(self, deadline: datetime, supervisor: str, now: datetime) -> Change | None:
        """A supervised scrape arrived at `now`, vouching for the pod until `deadline`."""
        deadline, now = require_utc(deadline), require_utc(now)
        if self.timeout is not None:
            deadline = min(deadline, now + self.timeout)
        self.deadline = deadline
        self.supervisor = supervisor
        self.contacts += 1
        if now < deadline:
            if self.mode is not SupervisionMode.NORMAL:
                was = self.mode
                self.mode = SupervisionMode.NORMAL
                reason = "contact" if was is SupervisionMode.SAFE else "first-contact"
                return Change(SupervisionMode.NORMAL, now, reason, deadline, supervisor)
            return None
        return self._enter_safe(now, "stale-contact")

    def evaluate(self, now: datetime) -> Change | None:
        """The mode at `now` without a contact: SAFE once the deadline has passed, never back."""
        now = require_utc(now)
        if self.deadline is None or self.mode is SupervisionMode.SAFE or now < self.deadline:
            return None
        return self._enter_safe(now, "deadline-passed" if self.contacts else "no-contact-since-start")

    def _enter_safe(self, now: datetime, reason: str) -> Change | None:
        if self.mode is SupervisionMode.SAFE:
            return None
        self.mode = SupervisionMode.SAFE
        return Change(SupervisionMode.SAFE, now, reason, self.deadline, self.supervisor)

    def seconds_left(self, now: datetime) -> float | None:
        """Until the deadline (0 when past); None when unsupervised."""
        if self.deadline is None:
            return None
        return max((self.deadline - require_utc(now)).total_seconds(), 0.0)


class BadContact(ValueError):
    """Supervision headers that cannot be read: not a contact."""


def contact_from_headers(headers: Mapping[str, str]) -> tuple[datetime, str] | None:
    """(deadline, supervisor) from a scrape's headers; None when it carries no supervision."""
    raw_deadline = (headers.get(contract.HEADER_SUPERVISION_DEADLINE) or "").strip()
    supervisor = (headers.get(contract.HEADER_SUPERVISOR) or "").strip()
    if not raw_deadline and not supervisor:
        return None
    if not raw_deadline or not supervisor:
        missing = contract.HEADER_SUPERVISION_DEADLINE if not raw_deadline else contract.HEADER_SUPERVISOR
        raise BadContact(f"header {missing} is missing: a supervised scrape sends both "
                         f"{contract.HEADER_SUPERVISOR} and {contract.HEADER_SUPERVISION_DEADLINE}")
    try:
        deadline = datetime.fromisoformat(raw_deadline.replace("Z", "+00:00"))
    except ValueError:
        raise BadContact(f"header {contract.HEADER_SUPERVISION_DEADLINE}={raw_deadline[:64]!r} is not an "
                         "RFC 3339 time such as 2026-01-02T15:04:05.000Z") from None
    if deadline.tzinfo is None:
        raise BadContact(f"header {contract.HEADER_SUPERVISION_DEADLINE}={raw_deadline[:64]!r} has no UTC "
                         "offset: write it as 2026-01-02T15:04:05.000Z")
    return require_utc(deadline), supervisor[:253]


def reduces_exposure(signed_quantity: Decimal, position: Decimal, pending: Decimal) -> bool:
    """Whether an order only brings the position (with what is still working) towards zero."""
    projected = position + pending
    if projected == 0 or signed_quantity == 0:
        return False
    return (signed_quantity > 0) != (projected > 0) and abs(signed_quantity) <= abs(projected)


class SupervisionGuard:
    """The state machine with its effects: log lines, metrics, cancelling working orders.

    `check(now)` is called by the runtime's watchdog and before every order, `on_scrape` by
    the metrics server before it answers, so the exposition already shows the new mode.
    """

    def __init__(self, supervision: Supervision, metrics: Any, log: Any,
                 on_safe: Callable[[], int] | None = None) -> None:
        self.supervision = supervision
        self.metrics = metrics
        self.log = log
        self.on_safe = on_safe
        self._bad_logged: set[str] = set()
        metrics.supervision_safe_mode.set(0)
        self._publish_deadline()

    @property
    def safe(self) -> bool:
        return self.supervision.mode is SupervisionMode.SAFE

    def check(self, now: datetime) -> bool:
        """Evaluate at `now`; True when in safe mode."""
        self._apply(self.supervision.evaluate(now))
        return self.safe

    def on_scrape(self, headers: Mapping[str, str], now: datetime) -> None:
        try:
            found = contact_from_headers(headers)
        except BadContact as exc:
            # Once per distinct problem: a misconfigured scraper would otherwise flood the log.
            if str(exc) not in self._bad_logged:
                self._bad_logged.add(str(exc))
                self.log.warning("supervision.bad_contact", error=str(exc), counted_as="no contact")
            self.check(now)
            return
        if found is None:
            # A scrape without supervision (a readiness probe, a Prometheus): not a contact.
            self.check(now)
            return
        deadline, supervisor = found
        self._apply(self.supervision.contact(deadline, supervisor, now))
        self._publish_deadline()

    def _publish_deadline(self) -> None:
        deadline = self.supervision.deadline
        self.metrics.supervision_deadline.set(deadline.timestamp() if deadline is not None else 0)

    def _apply(self, change: Change | None) -> None:
        if change is None:
            return
        deadline = isoformat(change.deadline) if change.deadline is not None else None
        if change.mode is SupervisionMode.SAFE:
            self.metrics.supervision_safe_mode.set(1)
            self.metrics.supervision_safe_mode_entries.inc()
            cancelled = self.on_safe() if self.on_safe is not None else 0
            self.log.warning(
                "supervision.safe_mode", reason=change.reason, deadline=deadline, supervisor=change.supervisor,
                timeout_s=self.supervision.timeout.total_seconds() if self.supervision.timeout else None,
                cancelled_orders=cancelled,
                action="no new exposure: orders that increase a position are refused, reduce-only orders allowed",
            )
        else:
            self.metrics.supervision_safe_mode.set(0)
            if change.reason == "contact":
                self.metrics.supervision_safe_mode_exits.inc()
            self.log.info("supervision.restored" if change.reason == "contact" else "supervision.contact",
                          reason=change.reason, deadline=deadline, supervisor=change.supervisor)
