"""The remote-write exporter: OTLP metrics in, Prometheus remote write 1.0 requests out.

The chain, in order: `consume_metrics` translates a request (`translate`) and appends its samples to the
pending batch -> the batch is cut into a request when it holds `max_samples`, or about `max_bytes`, or
`flush_interval` after its first sample (the flusher task) -> requests wait in a FIFO queue -> one sender
task encodes each (`rw1`, in a thread) and posts it through `send_with_retry`.

One request in flight per endpoint: Prometheus refuses a sample older than the newest it holds for the
series, so requests must arrive in order. Every sample ends in one counted outcome: sent, dropped (the
receiver refused it with a 4xx, or it could not be translated) or failed (retries ran out, or shutdown came
first).

Shutdown order: stop the flusher, cut the pending batch, let the sender drain the queue within the timeout,
then cancel it, count what is left as failed and close the HTTP session.

The queue lives in memory for now; `queued_bytes` (estimated uncompressed bytes) lets admission control
refuse new data before it grows without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from exporters.errors import PermanentError, RetryableError
from exporters.remote_write.cumulative import DeltaToCumulative
from exporters.remote_write import rw1
from exporters.remote_write.translate import Exemplar, Labels, Limits, NativeHistogram, SampleBatch, translate
from exporters.retry import RetryPolicy, raise_for_status, send_with_retry

logger = logging.getLogger("headwater.exporters.remote_write")

USER_AGENT = "headwater/0.1.0"
# Headers the protocol or the HTTP client owns; a configured header may not replace them (the spec forbids
# letting users override the reserved ones). Authorization stays configurable until auth settings exist.
RESERVED_HEADERS = frozenset(
    h.lower() for h in (*rw1.HEADERS, "User-Agent", "Content-Length", "Host", "Connection", "Transfer-Encoding")
)


@dataclass(slots=True)
class _Batch:
    """Samples waiting to be sent as one request, in columns (see `translate.SampleBatch`)."""

    labels: list[Labels] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    histogram_labels: list[Labels] = field(default_factory=list)
    histograms: list[NativeHistogram] = field(default_factory=list)
    exemplar_labels: list[Labels] = field(default_factory=list)
    exemplars: list[Exemplar] = field(default_factory=list)
    nbytes: int = 0

    def __len__(self) -> int:
        """Samples: float samples and native histograms (exemplars ride along uncounted)."""
        return len(self.values) + len(self.histograms)

    def __bool__(self) -> bool:
        return bool(self.values or self.histograms or self.exemplars)


class RemoteWriteExporter:
    """Sends metrics to one remote-write 1.0 endpoint.

        exporter = RemoteWriteExporter("prometheus", "http://127.0.0.1:9090/api/v1/write", {}, timeout=30.0,
                                       retry=RetryPolicy(), max_samples=10_000, max_bytes=4 << 20,
                                       flush_interval=5.0)
        await exporter.start()
        await exporter.consume_metrics(request)   # returns once queued
        await exporter.shutdown(timeout=10.0)      # flushes, delivers what it can, closes

    `timeout` bounds one HTTP attempt; `retry` bounds the whole delivery of a request. `clock` (seconds,
    monotonic) decides when a batch is `flush_interval` old; tests inject one. `meter` defaults to the global
    meter provider's `headwater.exporters.remote_write` meter.
    """

    def __init__(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str],
        timeout: float,
        retry: RetryPolicy,
        max_samples: int,
        max_bytes: int,
        flush_interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        meter: metrics.Meter | None = None,
        delta_to_cumulative: DeltaToCumulative | None = None,
        native_histograms: bool = False,
        limits: Limits | None = None,
        promote: tuple[str, ...] = (),
    ) -> None:
        self._native_histograms = native_histograms
        self._limits = limits
        self._promote = tuple(promote)
        self._delta = delta_to_cumulative
        if not name:
            raise ValueError("name must not be empty")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        reserved = sorted(h for h in headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"headers may not set {', '.join(reserved)}: remote write or HTTP itself sets them")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_samples <= 0:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.name = name
        self._url = url
        self._headers = {**rw1.HEADERS, "User-Agent": USER_AGENT, **headers}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry = retry
        self._max_samples = max_samples
        self._max_bytes = max_bytes
        self._flush_interval = flush_interval
        self._clock = clock

        self._pending = _Batch()
        self._pending_since = 0.0
        self._pending_started = asyncio.Event()  # the pending batch went from empty to not empty
        self._queue: deque[_Batch] = deque()
        self._queue_bytes = 0
        self._queue_changed = asyncio.Event()
        self._closing = False  # the sender exits once the queue is empty
        self._shut_down = False
        self._session: aiohttp.ClientSession | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._warned_reasons: set[str] = set()

        meter = meter or metrics.get_meter("headwater.exporters.remote_write")
        self._attributes = {"exporter": name}
        self._sent = meter.create_counter(
            "headwater_remote_write_samples_sent", unit="{sample}", description="Samples the receiver accepted."
        )
        self._failed = meter.create_counter(
            "headwater_remote_write_samples_failed",
            unit="{sample}",
            description="Samples not delivered: retries ran out or shutdown came first.",
        )
        self._dropped = meter.create_counter(
            "headwater_remote_write_samples_dropped",
            unit="{sample}",
            description="Samples (or OTLP data points) not sent on purpose, by reason: refused by the receiver "
            "with a 4xx, or not translatable yet.",
        )
        self._requests = meter.create_counter(
            "headwater_remote_write_requests",
            unit="{request}",
            description="HTTP attempts by response status code, or `error` when no response came.",
        )

    @property
    def queued_bytes(self) -> int:
        """Estimated uncompressed bytes held: the pending batch plus requests waiting or in flight."""
        return self._pending.nbytes + self._queue_bytes

    async def start(self) -> None:
        if self._session is not None or self._shut_down:
            return
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"remote_write[{self.name}].flusher")
        self._sender = asyncio.create_task(self._send_loop(), name=f"remote_write[{self.name}].sender")

    async def consume_metrics(self, request: ExportMetricsServiceRequest) -> None:
        """Translate `request` and queue its samples; returns without waiting for delivery."""
        if self._shut_down:
            raise RuntimeError(f"remote write exporter {self.name!r} is shut down")
        skipped: dict[str, int] = {}
        if self._delta is not None:
            request, skipped = self._delta.apply(request)
            # On disk before these samples can leave and before the client is acknowledged (see cumulative.py).
            await self._delta.commit()
        batch = translate(
            request, native_histograms=self._native_histograms, limits=self._limits, promote=self._promote
        )
        batch.dropped.update(skipped)
        for reason, count in batch.dropped.items():
            self._dropped.add(count, {**self._attributes, "reason": reason})
            # Warn once per reason: an app exporting delta sums every 10 s would otherwise flood the log.
            level = logging.DEBUG if reason in self._warned_reasons else logging.WARNING
            self._warned_reasons.add(reason)
            logger.log(level, "remote write %s: %d data points not sent: %s", self.name, count, reason)
        self._append(batch)

    async def shutdown(self, timeout: float) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._cut()
        self._closing = True
        self._queue_changed.set()
        if self._sender is not None:
            done, _ = await asyncio.wait({self._sender}, timeout=max(0.0, timeout))
            if not done:  # the deadline passed: stop mid-attempt or mid-backoff
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
        self._fail_queued()
        if self._delta is not None:
            await self._delta.commit()  # stale streams forgotten, or a save that failed earlier
        if self._session is not None:
            await self._session.close()

    # -- batching ---------------------------------------------------------------------------------------

    def _append(self, batch: SampleBatch) -> None:
        sizes = batch.sizes
        start, total = 0, len(batch)
        while start < total:
            pending = self._pending
            room = self._max_samples - len(pending)
            end, nbytes = start, pending.nbytes
            limit = min(total, start + room)
            while end < limit and (nbytes + sizes[end] <= self._max_bytes or (end == start and not pending)):
                nbytes += sizes[end]
                end += 1
            if end > start:
                if not pending:
                    self._pending_since = self._clock()
                    self._pending_started.set()
                pending.labels.extend(batch.labels[start:end])
                pending.values.extend(batch.values[start:end])
                pending.timestamps.extend(batch.timestamps[start:end])
                pending.nbytes = nbytes
                start = end
            if end < total or len(pending) >= self._max_samples:
                self._cut()
        if batch.histograms or batch.exemplars:
            # After the float samples, so an exemplar never reaches the receiver before its series exists.
            pending = self._pending
            if not pending:
                self._pending_since = self._clock()
                self._pending_started.set()
            pending.histogram_labels += batch.histogram_labels
            pending.histograms += batch.histograms
            pending.exemplar_labels += batch.exemplar_labels
            pending.exemplars += batch.exemplars
            pending.nbytes += sum(batch.histogram_sizes) + sum(batch.exemplar_sizes)
            if len(pending) >= self._max_samples or pending.nbytes >= self._max_bytes:
                self._cut()

    def _cut(self) -> None:
        """Move the pending batch to the send queue."""
        if not self._pending:
            return
        batch, self._pending = self._pending, _Batch()
        self._queue.append(batch)
        self._queue_bytes += batch.nbytes
        self._queue_changed.set()

    async def _flush_loop(self) -> None:
        while True:
            if not self._pending:
                self._pending_started.clear()
                await self._pending_started.wait()
                continue
            remaining = self._pending_since + self._flush_interval - self._clock()
            if remaining <= 0:
                self._cut()
                continue
            # Re-read the clock at least every flush_interval, so an injected clock that jumps is noticed.
            await asyncio.sleep(min(remaining, self._flush_interval))

    # -- sending ----------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queue_changed.clear()
                await self._queue_changed.wait()
                continue
            batch = self._queue[0]
            await self._deliver(batch)
            self._queue.popleft()
            self._queue_bytes -= batch.nbytes

    async def _deliver(self, batch: _Batch) -> None:
        """Send one request and count its outcome; never raises for a delivery failure."""
        count = len(batch)
        try:
            body = await asyncio.to_thread(
                rw1.encode,
                batch.labels,
                batch.values,
                batch.timestamps,
                histogram_labels=batch.histogram_labels,
                histograms=batch.histograms,
                exemplar_labels=batch.exemplar_labels,
                exemplars=batch.exemplars,
            )
            await send_with_retry(lambda: self._post(body), self._retry, on_retry=self._log_retry)
        except PermanentError as exc:
            logger.error("remote write %s: receiver refused %d samples, dropped: %s", self.name, count, exc)
            self._dropped.add(count, {**self._attributes, "reason": "rejected"})
        except RetryableError as exc:
            logger.error("remote write %s: gave up on %d samples: %s", self.name, count, exc)
            self._failed.add(count, self._attributes)
        except Exception:  # a bug must cost this request, not stop the sender and strand the queue
            logger.exception("remote write %s: unexpected error sending %d samples", self.name, count)
            self._failed.add(count, self._attributes)
        else:
            self._sent.add(count, self._attributes)

    async def _post(self, body: bytes) -> None:
        assert self._session is not None
        try:
            async with self._session.post(self._url, data=body) as response:
                status, headers = response.status, response.headers
                text = await response.text(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self._requests.add(1, {**self._attributes, "status": "error"})
            raise RetryableError(f"POST {self._url}: {type(exc).__name__}: {exc}") from exc
        self._requests.add(1, {**self._attributes, "status": str(status)})
        raise_for_status(status, headers, text)

    def _log_retry(self, exc: RetryableError, delay: float) -> None:
        logger.warning("remote write %s: %s; retrying in %.1fs", self.name, exc, delay)

    def _fail_queued(self) -> None:
        count = sum(len(batch) for batch in self._queue) + len(self._pending)
        if count:
            logger.error("remote write %s: shut down with %d samples undelivered", self.name, count)
            self._failed.add(count, self._attributes)
        self._queue.clear()
        self._queue_bytes = 0
        self._pending = _Batch()
