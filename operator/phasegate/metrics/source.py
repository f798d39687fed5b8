"""The one interface every metrics source implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Optional, Protocol, runtime_checkable

from phasegate.api import contract

from .snapshot import MetricsSnapshot


@dataclass(frozen=True)
class ScrapeTarget:
    """Which strategy pod to read, and when.

    `now` is the time the caller stamps on the snapshot: sources never read the clock,
    so a test (or a replay) decides what time it is.

    `supervision_deadline` (with the `supervisor` it comes from) is sent to a scraped pod
    as its dead-man's switch (spec.supervision): the caller sets it only while it leads.
    """

    namespace: str
    strategy: str
    pod: str
    pod_ip: str
    port: int
    now: datetime
    path: str = "/metrics"
    timeout_seconds: float = 5.0
    supervisor: str = ""
    supervision_deadline: Optional[datetime] = None

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("ScrapeTarget.now must be timezone-aware")
        object.__setattr__(self, "now", self.now.astimezone(UTC))
        if self.supervision_deadline is not None:
            if self.supervision_deadline.tzinfo is None:
                raise ValueError("ScrapeTarget.supervision_deadline must be timezone-aware")
            if not self.supervisor:
                raise ValueError("ScrapeTarget.supervision_deadline needs the supervisor's identity")
            object.__setattr__(self, "supervision_deadline", self.supervision_deadline.astimezone(UTC))
        if not self.path.startswith("/"):
            object.__setattr__(self, "path", "/" + self.path)

    def supervision_headers(self) -> dict[str, str]:
        """The dead-man's switch headers of the contract (docs/architecture.md); none when unsupervised."""
        if self.supervision_deadline is None:
            return {}
        deadline = self.supervision_deadline.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {contract.HEADER_SUPERVISOR: self.supervisor, contract.HEADER_SUPERVISION_DEADLINE: deadline}

    @property
    def url(self) -> str:
        host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
        return f"http://{host}:{self.port}{self.path}"


@runtime_checkable
class MetricsSource(Protocol):
    async def read(self, target: ScrapeTarget) -> MetricsSnapshot:
        """One snapshot of the target's metrics; MetricsUnavailable on any failure."""
        ...
