"""Admission control: receivers ask before they decode a request, per signal.

Two reasons to refuse, each with a retryable status so the client keeps the data: the bytes being received
and decoded for that signal (plus what the signal's memory queues report, `add_queue`) would pass the
budget (`admission.max_inflight`), or an exporter of that signal says its queue is full (`add_pressure`: a
remote-write queue whose memory and disk bounds are both reached under `when_full: refuse`). Signals are kept
apart: a metrics store that is down must not make the agent refuse traces. A request is always admitted when
nothing else of its signal is in flight, so a budget smaller than one request cannot wedge a receiver.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics


class Refused(Exception):
    """Over budget or a full queue: answer 429 / RESOURCE_EXHAUSTED and ask the client to retry after
    `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(f"{message}; retry after {retry_after:g}s")
        self.retry_after = retry_after


@dataclass
class Lease:
    """Bytes a receiver holds while it decodes and hands over one request; release exactly once."""

    admission: Admission
    nbytes: int
    signal: str = ""
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._held[self.signal] -= self.nbytes

    def resize(self, nbytes: int) -> None:
        """Hold `nbytes` instead (the decoded size once known); never refuses, the request is already in."""
        if not self.released:
            self.admission._held[self.signal] += nbytes - self.nbytes
            self.nbytes = nbytes

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """`queued`: callables reporting bytes held in memory queues, counted against every signal's budget
    (use `add_queue` to name the signal)."""

    def __init__(self, limit: int, retry_after: float, queued: Iterable[Callable[[], int]] = ()) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self._queued: dict[str | None, list[Callable[[], int]]] = {None: list(queued)}
        self._full: dict[str, list[tuple[str, Callable[[], bool]]]] = {}
        self._held: dict[str, int] = defaultdict(int)
        meter = metrics.get_meter("headwater.agent.admission")
        self._refused = meter.create_counter(
            "headwater_admission_refused_requests",
            description="Requests refused, by signal and reason: budget (admission.max_inflight) or queue_full")
        for signal in ("traces", "metrics"):
            for reason in ("budget", "queue_full"):
                self._refused.add(0, {"signal": signal, "reason": reason})
        meter.create_observable_gauge(
            "headwater_admission_inflight_bytes", callbacks=[self._observe], unit="By",
            description="Bytes being received and decoded, plus what memory queues of the signal hold, by signal")

    def add_queue(self, queued_bytes: Callable[[], int], signal: str | None = None) -> None:
        """Count what a memory queue holds against `signal`'s budget (every signal's when None)."""
        self._queued.setdefault(signal, []).append(queued_bytes)

    def add_pressure(self, signal: str, name: str, full: Callable[[], bool]) -> None:
        """Refuse `signal` while `full()` says the exporter `name` cannot queue more."""
        self._full.setdefault(signal, []).append((name, full))

    def clear_sources(self) -> None:
        """Forget every queue and pressure source (a reload rebuilt the exporters and adds them again)."""
        self._queued = {None: []}
        self._full = {}

    def in_flight(self, signal: str | None = None) -> int:
        queued = self._queued.get(None, []) + (self._queued.get(signal, []) if signal is not None else [])
        held = self._held[signal] if signal is not None else sum(self._held.values())
        return held + sum(q() for q in queued)

    def acquire(self, nbytes: int, signal: str) -> Lease:
        """Hold `nbytes` for `signal`, or raise Refused."""
        for name, full in self._full.get(signal, ()):
            if full():
                self._refused.add(1, {"signal": signal, "reason": "queue_full"})
                raise Refused(f"the {signal} queue of exporter {name!r} is full (queue.max_memory and queue.max_disk "
                              f"reached, when_full: refuse)", self.retry_after)
        in_flight = self.in_flight(signal)
        if in_flight > 0 and in_flight + nbytes > self.limit:
            self._refused.add(1, {"signal": signal, "reason": "budget"})
            raise Refused(f"the agent holds {in_flight} bytes of {signal} in flight and admitting {nbytes} more "
                          f"would pass its budget of {self.limit} bytes (admission.max_inflight)", self.retry_after)
        self._held[signal] += nbytes
        return Lease(self, nbytes, signal)

    def _observe(self, _options: object) -> list[metrics.Observation]:
        return [metrics.Observation(self.in_flight(s), {"signal": s}) for s in ("traces", "metrics")]
