"""The one interface every metrics source implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from .snapshot import MetricsSnapshot


@dataclass(frozen=True)
class ScrapeTarget:
    """Which strategy pod to read, and when.

    `now` is the time the caller stamps on the snapshot: sources never read the clock,
    so a test (or a replay) decides what time it is.
    """

    namespace: str
    strategy: str
    pod: str
    pod_ip: str
    port: int
    now: datetime
    path: str = "/metrics"
    timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("ScrapeTarget.now must be timezone-aware")
        object.__setattr__(self, "now", self.now.astimezone(UTC))
        if not self.path.startswith("/"):
            object.__setattr__(self, "path", "/" + self.path)

    @property
    def url(self) -> str:
        host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
        return f"http://{host}:{self.port}{self.path}"


@runtime_checkable
class MetricsSource(Protocol):
    async def read(self, target: ScrapeTarget) -> MetricsSnapshot:
        """One snapshot of the target's metrics; MetricsUnavailable on any failure."""
        ...
