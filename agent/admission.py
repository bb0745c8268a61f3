"""Admission control: one byte budget for everything the agent holds in flight.

Receivers ask before they decode a request; exporters report what they have queued. Past the budget a
request is refused with a retryable status, so memory stays bounded and the client keeps the data. A request
is always admitted when nothing else is in flight, so a budget smaller than one request cannot wedge a
receiver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics


class Refused(Exception):
    """Over budget: answer 429 / RESOURCE_EXHAUSTED and ask the client to retry after `retry_after` seconds."""

    def __init__(self, requested: int, in_flight: int, limit: int, retry_after: float) -> None:
        super().__init__(
            f"the agent holds {in_flight} bytes in flight and admitting {requested} more would pass its "
            f"budget of {limit} bytes (admission.max_inflight); retry after {retry_after:g}s"
        )
        self.retry_after = retry_after


@dataclass
class Lease:
    """Bytes a receiver holds while it decodes and hands over one request; release exactly once."""

    admission: "Admission"
    nbytes: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._held -= self.nbytes

    def resize(self, nbytes: int) -> None:
        """Hold `nbytes` instead (the decoded size once known); never refuses, the request is already in."""
        if not self.released:
            self.admission._held += nbytes - self.nbytes
            self.nbytes = nbytes

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    def __init__(self, limit: int, retry_after: float, queued: Iterable[Callable[[], int]] = ()) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self._queued = list(queued)
        self._held = 0
        meter = metrics.get_meter("headwater.agent.admission")
        self._refused = meter.create_counter(
            "headwater_admission_refused_requests", description="Requests refused because the in-flight byte budget was spent")
        meter.create_observable_gauge(
            "headwater_admission_inflight_bytes", callbacks=[self._observe], unit="By",
            description="Bytes held by receivers and queued in exporters")

    def add_queue(self, queued_bytes: Callable[[], int]) -> None:
        self._queued.append(queued_bytes)

    def in_flight(self) -> int:
        return self._held + sum(q() for q in self._queued)

    def acquire(self, nbytes: int, signal: str) -> Lease:
        """Hold `nbytes`, or raise Refused."""
        in_flight = self.in_flight()
        if in_flight > 0 and in_flight + nbytes > self.limit:
            self._refused.add(1, {"signal": signal})
            raise Refused(nbytes, in_flight, self.limit, self.retry_after)
        self._held += nbytes
        return Lease(self, nbytes)

    def _observe(self, _options: object) -> list[metrics.Observation]:
        return [metrics.Observation(self.in_flight())]
