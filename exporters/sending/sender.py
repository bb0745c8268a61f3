"""The sender link of the sending chain (docs/architecture.md, "the sending chain", link 3): takes entries from
one endpoint's queue, sends them through the connection, retries what may succeed later, and acknowledges.

How it keeps every series in order at any concurrency: the batcher cuts a flush into requests that share no
series (each series whole), and each such request is one queue entry, marked with the same `group`. A
*round* is the next run of entries of one group: they are sent in parallel (up to the concurrency), each
with its own retries, and acknowledged once every one of them has an outcome. The next round starts after
that, so a series' later samples never overtake its earlier ones. Entries are sent exactly as they were cut
and queued, never merged or split here, so a request resent after a restart is the same request as before:
a receiver that refuses it as a duplicate already holds all of it.

Retry classes are the connection's: it raises `ThrottledError` (429, 503 with Retry-After), `RetryableError`
(no answer, 5xx, timeouts) or `PermanentError` (other 4xx), and `Duplicate` for a refusal that says the
receiver already holds these samples. A request retries until it succeeds, its data passes
`sample_age_limit` (dropped, reason `too_old`), or shutdown comes; nothing else ends a retry, so an outage of
any length costs only queue space. A `Retry-After` pauses the whole endpoint until it expires, however long;
repeated failures open the circuit breaker, which lets one probe through every `max_backoff`.

How hard to push is decided by pure functions of what the last control interval showed (`control`): the
concurrency, the samples per request, and an optional byte rate.

Every request ends in one outcome reported to `on_outcome(entry, outcome, reason, answer)`: `sent` (with what
`deliver` returned), `dropped` (refused with a 4xx: reason `rejected`; `too_old`; `error` for a bug),
`failed` (only with `max_elapsed`: `retries_exhausted`) or, at shutdown, none: its entries are given back to
the queue (`nack`), which keeps them on disk for the next start or lets its owner count them as lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry import metrics

from exporters.errors import (
    Duplicate,
    NetworkError,
    PermanentError,
    RetryableError,
    ThrottledError,
)
from exporters.observed import OwnedMeter
from exporters.retry import RetryPolicy
from exporters.sending.breaker import CircuitBreaker, TokenBucket
from exporters.sending.control import Window, batch_decision, concurrency_decision
from exporters.sending.queue import Entry, Queue

T = TypeVar("T")
logger = logging.getLogger("headwater.exporters.sender")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: from a receiver next door to one that needs its whole timeout."""

RETRY_REASONS = ("network", "server", "throttled")
DROP_REASONS = ("rejected", "too_old", "error")


@dataclass(frozen=True)
class SenderSettings:
    """How one endpoint's sender behaves.

        SenderSettings(max_concurrency=8, retry=RetryPolicy(initial_backoff=0.5, max_backoff=30.0),
                       sample_age_limit=3600.0, max_bytes_per_second=0)

    `max_concurrency` bounds requests in flight (the sender starts at 1 and adapts); `batch_samples` is the
    most samples per request, which the sender adapts between `min_batch_samples` and it from acknowledgement
    latency (the owner's batcher reads `Sender.batch_samples` when it cuts); `max_bytes_per_second` limits the
    rate of body bytes (0: unlimited);
    `sample_age_limit` drops data older than this instead of retrying it further; `breaker_failures`
    consecutive failures open the circuit; `control_interval` is how often concurrency and batch size adapt.
    `max_elapsed`, when set, gives up on a request that kept failing that long (outcome `failed`, reason
    `retries_exhausted`): for exporters whose queue is memory (OTLP traces); remote write leaves it None.
    """

    max_concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sample_age_limit: float = 3600.0
    max_bytes_per_second: int = 0
    batch_samples: int = 10_000
    min_batch_samples: int = 500
    batch_bytes: int = 4 << 20
    target_latency: float = 1.0
    breaker_failures: int = 5
    control_interval: float = 2.0
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.sample_age_limit <= 0:
            raise ValueError(f"sample_age_limit must be positive, got {self.sample_age_limit}")
        if self.max_bytes_per_second < 0:
            raise ValueError(f"max_bytes_per_second must not be negative, got {self.max_bytes_per_second}")
        if not 1 <= self.min_batch_samples <= self.batch_samples:
            raise ValueError(f"min_batch_samples must be between 1 and batch_samples, got {self.min_batch_samples}")


class Stopped(Exception):
    """Shutdown came while a request was waiting or in flight: its entries go back to the queue."""


class Sender(Generic[T]):
    """Delivers one endpoint's queue.

        sender = Sender("prometheus", queue, deliver=connection.send, settings=SenderSettings(),
                        on_outcome=count, backlog=lambda: queued_samples)
        await sender.start()
        ...
        await queue.close(); await sender.stop(timeout=10.0)   # drains what it can, gives the rest back

    `deliver(item)` sends one request; it raises the `exporters.errors` types, and what it returns is passed
    to `on_outcome` for a sent request. `group_of(entry)`: entries of the same nonzero group may be in flight
    together (0: alone). `merge(items)`: when given, a round packs consecutive entries into one request each
    up to `batch_bytes` and `batch_samples` (OTLP: serialized requests concatenate into their merge). `max_in_flight()` caps the
    concurrency below the settings (a compact session allows one request at a time). `backlog()` is the
    samples waiting (the controller's input). `restored_below`: entries with a smaller seq were queued by an
    earlier run and may have been in flight when it stopped. `clock` is monotonic seconds (timers, latency),
    `wall_clock` epoch seconds (the age of data), `sleep` the wait; tests inject all three.
    """

    def __init__(
        self,
        name: str,
        queue: Queue[T],
        *,
        deliver: Callable[[T], Awaitable[object]],
        settings: SenderSettings,
        on_outcome: Callable[[Entry[T], str, str, object], None],
        backlog: Callable[[], int],
        group_of: Callable[[Entry[T]], int] = lambda entry: 0,
        merge: Callable[[Sequence[T]], T] | None = None,
        max_in_flight: Callable[[], int] = lambda: 1 << 30,
        restored_below: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.name = name
        self._queue = queue
        self._deliver = deliver
        self._settings = settings
        self._on_outcome = on_outcome
        self._backlog = backlog
        self._group_of = group_of
        self._merge = merge
        self._max_in_flight = max_in_flight
        self._restored_below = restored_below
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._breaker = CircuitBreaker(settings.breaker_failures, settings.retry.max_backoff, clock)
        self._bucket = (
            TokenBucket(settings.max_bytes_per_second, max(settings.batch_bytes, settings.max_bytes_per_second), clock)
            if settings.max_bytes_per_second else None
        )
        self.concurrency = 1
        self.batch_samples = settings.batch_samples
        self._stop = asyncio.Event()  # the deadline passed: end waits and give entries back
        # Futures resolved when `_stop` is set: what an attempt or a wait races against, without a task each.
        self._stop_futures: set[asyncio.Future[None]] = set()
        self._draining = False
        self._drained = asyncio.Event()  # draining, and nothing unacknowledged is left
        self._waiting = False  # in the queue's get, holding no entries
        self._task: asyncio.Task[None] | None = None
        self._control: asyncio.Task[None] | None = None
        # What the current control window observed.
        self._window_start = clock()
        self._delivered = 0
        self._requests = 0
        self._errors = 0
        self._throttled = False
        self._latencies: list[float] = []
        self._changed_at = clock()  # when the number in flight last changed
        self._busy = 0.0  # requests in flight integrated over time, this window
        self._in_flight = 0
        self._reading = False  # in the queue's get while entries wait: reading the next round back, not idle
        self._previous: Window | None = None
        self._backlog_before = 0
        self._incoming = 0

        self._observed = OwnedMeter(meter or metrics.get_meter("headwater.exporters.sender"), self)
        meter = self._observed  # its gauges report this endpoint, beside others and its replacement
        self._attributes = {"exporter": name}
        self._retries = meter.create_counter(
            "headwater_sender_retries", unit="{request}",
            description="Requests sent again, by reason: network (no answer), server (5xx), throttled (429 or "
            "Retry-After).")
        self._drops = meter.create_counter(
            "headwater_sender_dropped_samples", unit="{sample}",
            description="Samples (or spans) the sender dropped on purpose, by reason: rejected (a 4xx refusal), "
            "too_old (older than sample_age_limit), error (a bug; logged with its traceback).")
        self._latency = meter.create_histogram(
            "headwater_sender_latency_seconds", unit="s",
            description="Time from sending a request to its answer, for requests that got one.",
            # The SDK's default boundaries (0, 5, 10, ... 10000) are meant for milliseconds: in seconds every
            # answer fell in the first bucket above 0.
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        for reason in RETRY_REASONS:
            self._retries.add(0, {**self._attributes, "reason": reason})
        for reason in DROP_REASONS:
            self._drops.add(0, {**self._attributes, "reason": reason})
        meter.create_observable_gauge(
            "headwater_sender_concurrency",
            callbacks=[lambda _o: [metrics.Observation(self.concurrency, self._attributes)]],
            description="Requests the sender may have in flight now (adapts to throughput, latency and errors).")
        meter.create_observable_gauge(
            "headwater_sender_batch_samples",
            callbacks=[lambda _o: [metrics.Observation(self.batch_samples, self._attributes)]],
            description="Most samples per request now (adapts to acknowledgement latency).")
        meter.create_observable_gauge(
            "headwater_sender_circuit_open",
            callbacks=[lambda _o: [metrics.Observation(int(self._breaker.is_open), self._attributes)]],
            description="1 while the endpoint failed repeatedly and is only probed every max_backoff.")

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sender[{self.name}]")
            self._control = asyncio.create_task(self._control_loop(), name=f"sender[{self.name}].control")

    async def stop(self, timeout: float) -> None:
        """Deliver until the queue holds nothing unacknowledged or `timeout` passes; then end every wait and
        attempt, giving unfinished entries back to the queue (`nack`). Its gauges stop reporting."""
        try:
            await self._stop_sending(timeout)
        finally:
            self._observed.forget()

    async def _stop_sending(self, timeout: float) -> None:
        if self._control is not None:
            self._control.cancel()
            await asyncio.gather(self._control, return_exceptions=True)
        task = self._task
        if task is None or task.done():
            return
        self._draining = True
        self._drained_changed()
        if not self._drained.is_set():
            waiter = asyncio.ensure_future(self._drained.wait())
            await asyncio.wait({task, waiter}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        self._stop.set()
        for future in list(self._stop_futures):
            if not future.done():
                future.set_result(None)
        if self._waiting:  # idle in the queue's get: nothing in hand to give back
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:  # an attempt that ignores the stop: cancel it outright (its entries are given back)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _drained_changed(self) -> None:
        if self._draining and len(self._queue) == 0:
            self._drained.set()

    def observe_put(self, count: int) -> None:
        """The owner put `count` samples into the queue (the incoming rate the controller sizes against)."""
        self._incoming += count

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- rounds -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            width = max(1, min(self.concurrency, self._max_in_flight()))
            many = width * 64 if self._merge is not None else width
            # Between rounds the sender holds no entry: any the queue counts are waiting, and this get only reads
            # them back (from disk, after an outage), which is work for the slots, not a lack of it.
            self._set_reading(len(self._queue) > 0)
            self._waiting = True
            try:
                entries = await self._queue.get(max_entries=many, max_bytes=width * self._settings.batch_bytes)
            finally:
                self._waiting = False
                self._set_reading(False)
            if not entries:
                return
            group = self._group_of(entries[0])
            take = 1
            while group and take < len(entries) and self._group_of(entries[take]) == group:
                take += 1
            if take < len(entries):
                self._queue.nack(entries[take:])
                entries = entries[:take]
            try:
                await self._round(entries)
            except Stopped:
                self._queue.nack(entries)
                return
            except asyncio.CancelledError:
                self._queue.nack(entries)
                raise

    async def _round(self, entries: Sequence[Entry[T]]) -> None:
        requests = self._packed(entries) if self._merge is not None else list(entries)
        results: list[object]
        if len(requests) == 1:  # as gather(return_exceptions=True) would report it, without a task for it
            try:
                await self._send(requests[0])
                results = [None]
            except Exception as exc:  # noqa: BLE001 - handled below, as gather's results are
                results = [exc]
        else:
            results = await asyncio.gather(*(self._send(e) for e in requests), return_exceptions=True)
        stopped = False
        for entry, result in zip(requests, results):
            if isinstance(result, Stopped):
                stopped = True
            elif isinstance(result, BaseException):
                # A bug costs this request, not the sender and the queue behind it.
                logger.error("sender %s: unexpected error; dropping %d samples", self.name, entry.count,
                             exc_info=result)
                self._drops.add(entry.count, {**self._attributes, "reason": "error"})
                self._on_outcome(entry, "dropped", "error", None)
        if stopped:
            raise Stopped()
        self._queue.ack(entries)
        self._drained_changed()

    def _packed(self, entries: Sequence[Entry[T]]) -> list[Entry[T]]:
        """Consecutive entries merged into requests within `batch_bytes` and `batch_samples`."""
        assert self._merge is not None
        packs: list[list[Entry[T]]] = []
        nbytes = count = 0
        for entry in entries:
            if packs and nbytes + entry.nbytes <= self._settings.batch_bytes and count + entry.count <= self.batch_samples:
                packs[-1].append(entry)
                nbytes += entry.nbytes
                count += entry.count
            else:
                packs.append([entry])
                nbytes, count = entry.nbytes, entry.count
        return [
            pack[0] if len(pack) == 1 else Entry(
                pack[0].seq, self._merge([e.item for e in pack]), sum(e.nbytes for e in pack),
                min(e.created for e in pack), sum(e.count for e in pack))
            for pack in packs
        ]

    async def _send(self, entry: Entry[T]) -> None:
        """One request until it has an outcome; raises Stopped at shutdown."""
        attempt = 0
        first = self._clock()
        maybe_stored = entry.seq < self._restored_below  # an earlier attempt may have reached the receiver
        while True:
            if self._stop.is_set():
                raise Stopped()
            age = self._wall_clock() - entry.created
            if age > self._settings.sample_age_limit:
                self._drop(entry, "too_old", f"its oldest data is {age:.0f}s old, past sample_age_limit "
                                             f"({self._settings.sample_age_limit:g}s)")
                return
            await self._wait_until_allowed(entry.nbytes)
            attempt += 1
            started = self._clock()
            self._in_flight_change(+1)
            try:
                answer = await self._attempt(entry.item)
            except Duplicate as exc:
                self._answered(started)
                if maybe_stored:  # the receiver holds this very request already: delivered
                    self._delivered_entry(entry, None)
                else:
                    self._drop(entry, "rejected", str(exc))
                return
            except PermanentError as exc:
                self._answered(started)
                self._drop(entry, "rejected", str(exc))
                return
            except RetryableError as exc:
                self._in_flight_change(-1)
                maybe_stored = True
                delay = self._settings.retry.backoff(attempt)
                if isinstance(exc, ThrottledError):  # the endpoint works and asks us to wait: not a failure
                    self._throttled = True
                    reason = "throttled"
                    if exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                        self._breaker.pause_until(self._clock() + exc.retry_after)
                else:
                    self._errors += 1
                    reason = "network" if isinstance(exc, NetworkError) else "server"
                    self._breaker.record_failure()
                limit = self._settings.max_elapsed
                if limit is not None and self._clock() - first + delay > limit:
                    logger.error("sender %s: gave up on %d after %.0fs: %s", self.name, entry.count,
                                 self._clock() - first, exc)
                    self._on_outcome(entry, "failed", "retries_exhausted", None)
                    return
                self._retries.add(1, {**self._attributes, "reason": reason})
                logger.warning("sender %s: %s; retrying in %.1fs", self.name, exc, delay)
                await self._wait(delay)
            except BaseException:
                self._in_flight_change(-1)
                raise
            else:
                self._answered(started)
                self._delivered_entry(entry, answer)
                return

    async def _attempt(self, item: T) -> object:
        """`deliver(item)`, abandoned (cancelled, then Stopped) when shutdown's deadline passes meanwhile."""
        attempt = asyncio.ensure_future(self._deliver(item))
        stop = self._stopped()
        try:
            await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            attempt.cancel()
            raise
        finally:
            stop.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            raise Stopped()
        return attempt.result()

    def _stopped(self) -> asyncio.Future[None]:
        """A future done once shutdown's deadline passed (`_stop`). Why not `ensure_future(_stop.wait())`: that is
        a task per request, started and then cancelled, ~3 turns of the event loop each."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._stop.is_set():
            future.set_result(None)
        else:
            self._stop_futures.add(future)
            future.add_done_callback(self._stop_futures.discard)
        return future

    def _answered(self, started: float) -> None:
        """The endpoint answered (whatever it said): it is up, and the answer's latency counts."""
        self._in_flight_change(-1)
        self._breaker.record_success()
        latency = self._clock() - started
        self._latency.record(latency, self._attributes)
        self._latencies.append(latency)

    async def _wait_until_allowed(self, nbytes: int) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped()
            if self._breaker.allow():
                break
            await self._wait(max(0.001, self._breaker.wait()))
        if self._bucket is not None:
            delay = self._bucket.delay(nbytes)
            if delay:
                await self._wait(delay)

    async def _wait(self, seconds: float) -> None:
        """Sleep, ended early by shutdown's deadline (then Stopped)."""
        if self._stop.is_set():
            raise Stopped()
        waiter = self._stopped()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        if self._stop.is_set():
            raise Stopped()

    def _delivered_entry(self, entry: Entry[T], answer: object) -> None:
        self._delivered += entry.count
        self._requests += 1
        self._on_outcome(entry, "sent", "", answer)

    def _drop(self, entry: Entry[T], reason: str, detail: str) -> None:
        logger.error("sender %s: dropped %d samples (%s): %s", self.name, entry.count, reason, detail)
        self._drops.add(entry.count, {**self._attributes, "reason": reason})
        self._on_outcome(entry, "dropped", reason, None)

    def _in_flight_change(self, delta: int) -> None:
        self._accrue_busy()
        self._in_flight += delta

    def _set_reading(self, reading: bool) -> None:
        self._accrue_busy()
        self._reading = reading

    def _accrue_busy(self) -> None:
        """Integrate `Window.busy`: requests in flight over time; while the next round is read back (its entries
        wait on disk) every slot counts as busy, since the sender is not idle for want of work."""
        now = self._clock()
        occupied = max(self._in_flight, self.concurrency) if self._reading else self._in_flight
        self._busy += occupied * (now - self._changed_at)
        self._changed_at = now

    # -- control ------------------------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            await self._sleep(self._settings.control_interval)
            self.adapt()

    def adapt(self) -> None:
        """Close the current control window and let the control laws set concurrency and batch size."""
        now = self._clock()
        duration = max(1e-9, now - self._window_start)
        self._accrue_busy()
        latencies = sorted(self._latencies)
        backlog = self._backlog()
        window = Window(
            duration=duration,
            delivered=self._delivered,
            requests=self._requests,
            latency=latencies[len(latencies) // 2] if latencies else None,
            errors=self._errors,
            throttled=self._throttled,
            backlog=backlog,
            backlog_growth=backlog - self._backlog_before,
            incoming=self._incoming,
            concurrency=self.concurrency,
            busy=min(1.0, self._busy / (duration * self.concurrency)),  # how full the slots were
        )
        maximum = max(1, min(self._settings.max_concurrency, self._max_in_flight()))
        concurrency = concurrency_decision(self.concurrency, window, self._previous, minimum=1, maximum=maximum)
        batch = batch_decision(self.batch_samples, window, minimum=self._settings.min_batch_samples,
                               maximum=self._settings.batch_samples, target_latency=self._settings.target_latency)
        logger.debug("sender %s: concurrency %d -> %d (%s), batch %d -> %d (%s); %r", self.name, self.concurrency,
                     concurrency.value, concurrency.reason, self.batch_samples, batch.value, batch.reason, window)
        self.concurrency, self.batch_samples = concurrency.value, batch.value
        self._previous = window
        self._window_start = now
        self._delivered = self._requests = self._errors = self._incoming = 0
        self._throttled = False
        self._latencies = []
        self._busy = 0.0
        self._backlog_before = backlog
