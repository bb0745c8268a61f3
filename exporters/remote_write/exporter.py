"""The remote-write exporter: OTLP metrics (or a gateway's decoded batches) in, remote-write requests out.

The chain, in order (docs/architecture.md, "the sending chain"): `consume_metrics` translates a request (`translate`) ->
the batcher holds one flush and cuts it into requests with each series whole (`batcher`) -> requests wait in
a FIFO queue -> one sender task delivers each through `send_with_retry` -> the connection encodes it in the
negotiated format (in a thread), posts it and says what the answer means (`connection`) -> the transport
does the HTTP exchange (`transport`).

One request in flight per endpoint: Prometheus refuses a sample older than the newest it holds for the
series, so requests must arrive in order, and the compact format's session allows one at a time. Every
sample ends in one counted outcome: sent, dropped (the receiver refused it with a 4xx, or it could not be
translated) or failed (retries ran out, or shutdown came first).

Shutdown order: stop the flusher, cut the pending flush, let the sender drain the queue within the timeout,
then cancel it, count what is left as failed and close the transport.

The queue lives in memory for now; `queued_bytes` (estimated uncompressed bytes) lets admission control
refuse new data before it grows without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from exporters.errors import PermanentError, RetryableError
from exporters.remote_write.batcher import Batcher
from exporters.remote_write.connection import COMPACT_HANDSHAKE, VM_HANDSHAKE, Connection, Delivered
from exporters.remote_write.cumulative import DeltaToCumulative
from exporters.remote_write.encoding import PROTOCOLS
from exporters.remote_write.formats import new_encoder, protocols_for
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.series_cache import SeriesCache
from exporters.remote_write.translate import Limits, translate, translate_wire
from exporters.remote_write.transport import USER_AGENT as USER_AGENT  # re-exported
from exporters.remote_write.transport import AiohttpTransport, Transport
from exporters.retry import RetryPolicy, send_with_retry

logger = logging.getLogger("headwater.exporters.remote_write")

# Headers a protocol or the HTTP client owns; a configured header may not replace them (the spec forbids
# letting users override the reserved ones). Authorization stays configurable until auth settings exist.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Encoding", "Content-Type", "X-Prometheus-Remote-Write-Version",
        "X-VictoriaMetrics-Remote-Write-Version",
        "X-Headwater-Session", "X-Headwater-Epoch", "X-Headwater-Sequence", "X-Headwater-Compact-Version",
        "User-Agent", "Content-Length", "Host", "Connection", "Transfer-Encoding",
    )
)
PROTOCOL_CHOICES = (*PROTOCOLS, "auto")
COMPRESSION_CHOICES = ("auto", "snappy", "zstd")


class RemoteWriteExporter:
    """Sends metrics to one remote-write endpoint, in the format it negotiated (or was told to use).

        exporter = RemoteWriteExporter("prometheus", "http://127.0.0.1:9090/api/v1/write", {}, timeout=30.0,
                                       retry=RetryPolicy(), max_samples=10_000, max_bytes=4 << 20,
                                       flush_interval=5.0, protocol="auto")
        await exporter.start()
        await exporter.consume_metrics(request)   # returns once queued
        await exporter.shutdown(timeout=10.0)      # flushes, delivers what it can, closes

    `timeout` bounds one HTTP attempt; `retry` bounds the whole delivery of a request. `protocol` is one of
    `PROTOCOL_CHOICES`, `compression` one of `COMPRESSION_CHOICES` (`auto`: the format's best), and
    `compression_level` is zstd's. `clock` (seconds, monotonic) decides when a flush is due and when to probe
    for a better format again; tests inject one. `transport` defaults to HTTP through aiohttp; tests pass a
    fake. `meter` defaults to the global meter provider's `headwater.exporters.remote_write` meter.
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
        protocol: str = "rw1",
        compression: str = "auto",
        compression_level: int = 3,
        reprobe_interval: float = 3600.0,
        transport: Transport | None = None,
    ) -> None:
        if not name:
            raise ValueError("name must not be empty")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        reserved = sorted(h for h in headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"headers may not set {', '.join(reserved)}: remote write or HTTP itself sets them")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if protocol not in PROTOCOL_CHOICES:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_CHOICES)}, got {protocol!r}")
        if compression not in COMPRESSION_CHOICES:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSION_CHOICES)}, got {compression!r}")
        if not 1 <= compression_level <= 22:
            raise ValueError(f"compression_level must be between 1 and 22 (zstd), got {compression_level}")
        protocols = protocols_for(protocol, compression)  # raises for a pair no format allows
        self._native_histograms = native_histograms
        self._limits = limits
        self._promote = tuple(promote)
        self._delta = delta_to_cumulative
        self._series = SeriesCache()  # this endpoint's series identities, kept across requests
        self.name = name
        self._url = url
        self._retry = retry
        self._clock = clock
        self._batcher = Batcher(max_samples, max_bytes, flush_interval, clock)
        self._flush_interval = flush_interval
        self._transport = transport or AiohttpTransport(timeout=timeout, headers=dict(headers))
        self._protocols = protocols
        self._connection = Connection(
            name,
            url,
            self._transport,
            protocols=protocols,
            new_encoder=lambda p: new_encoder(p, compression, compression_level),
            handshakes={"compact": COMPACT_HANDSHAKE, "vm": VM_HANDSHAKE},
            reprobe_interval=reprobe_interval,
            clock=clock,
            on_attempt=self._count_attempt,
        )

        self._pending_started = asyncio.Event()  # the batcher went from empty to not empty
        self._queue: deque[tuple[SampleBatch, int]] = deque()
        self._queue_bytes = 0
        self._queue_changed = asyncio.Event()
        self._closing = False  # the sender exits once the queue is empty
        self._started = False
        self._shut_down = False
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
            description="HTTP attempts by response status code (`error` when no response came) and wire format.",
        )
        self._body_bytes = meter.create_counter(
            "headwater_remote_write_body_bytes",
            unit="By",
            description="Compressed request body bytes of delivered requests, by wire format.",
        )
        meter.create_observable_gauge(
            "headwater_remote_write_protocol",
            callbacks=[self._observe_protocol],
            description="1 for the wire format this endpoint speaks now (confirmed or being tried), 0 for the "
            "other formats it may use.",
        )

    @property
    def protocol(self) -> str | None:
        """The wire format in use, None before the first request."""
        return self._connection.protocol

    @property
    def queued_bytes(self) -> int:
        """Estimated uncompressed bytes held: the pending flush plus requests waiting or in flight."""
        return self._batcher.nbytes + self._queue_bytes

    async def start(self) -> None:
        if self._started or self._shut_down:
            return
        self._started = True
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"remote_write[{self.name}].flusher")
        self._sender = asyncio.create_task(self._send_loop(), name=f"remote_write[{self.name}].sender")

    async def consume_metrics(self, request: ExportMetricsServiceRequest, wire: bytes | None = None) -> None:
        """Translate `request` and queue its samples; returns without waiting for delivery.

        `wire`: the bytes `request` was parsed from, when they hold exactly what it holds (nothing was taken
        out); the series cache then learns its shape for `match_wire`."""
        if self._shut_down:
            raise RuntimeError(f"remote write exporter {self.name!r} is shut down")
        skipped: dict[str, int] = {}
        if self._delta is not None:
            converted, skipped = self._delta.apply(request)
            if converted is not request:
                wire = None  # its delta points were rewritten: the bytes no longer say what is sent
            request = converted
            # On disk before these samples can leave and before the client is acknowledged (see cumulative.py).
            await self._delta.commit()
        batch = translate(
            request, native_histograms=self._native_histograms, limits=self._limits, promote=self._promote,
            cache=self._series, wire=wire,
        )
        batch.dropped.update(skipped)
        self._take(batch)

    def match_wire(self, wire: bytes) -> tuple[SampleBatch, int] | None:
        """The translation of the ExportMetricsServiceRequest in `wire` and its data points, when a request of
        the same shape was learnt (see `shapes`); None otherwise. Queues nothing: `consume_translated` does."""
        if self._shut_down:
            return None
        return translate_wire(wire, native_histograms=self._native_histograms, limits=self._limits,
                              promote=self._promote, cache=self._series)

    async def consume_translated(self, batch: SampleBatch) -> None:
        """Queue what `match_wire` returned. A shaped request holds no delta metric (its shape would differ),
        so delta-to-cumulative only forgets idle streams, as it does for every request."""
        if self._shut_down:
            raise RuntimeError(f"remote write exporter {self.name!r} is shut down")
        if self._delta is not None:
            self._delta.expire()
            await self._delta.commit()
        self._take(batch)

    def _take(self, batch: SampleBatch) -> None:
        for reason, count in batch.dropped.items():
            self._dropped.add(count, {**self._attributes, "reason": reason})
            # Warn once per reason: an app exporting delta sums every 10 s would otherwise flood the log.
            level = logging.DEBUG if reason in self._warned_reasons else logging.WARNING
            self._warned_reasons.add(reason)
            logger.log(level, "remote write %s: %d data points not sent: %s", self.name, count, reason)
        self._append(batch)

    async def consume_series(self, batch: SampleBatch) -> None:
        """Queue samples that are already series (a gateway's decoded request); `batch` is read, not kept."""
        if self._shut_down:
            raise RuntimeError(f"remote write exporter {self.name!r} is shut down")
        self._append(batch)

    async def shutdown(self, timeout: float) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._enqueue(self._batcher.cut())
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
        await self._connection.close()

    # -- batching ---------------------------------------------------------------------------------------

    def _append(self, batch: SampleBatch) -> None:
        was_empty = not self._batcher
        self._enqueue(self._batcher.add(batch))
        if was_empty and self._batcher:
            self._pending_started.set()

    def _enqueue(self, requests: list[tuple[SampleBatch, int]]) -> None:
        for batch, nbytes in requests:
            self._queue.append((batch, nbytes))
            self._queue_bytes += nbytes
        if requests:
            self._queue_changed.set()

    async def _flush_loop(self) -> None:
        while True:
            due = self._batcher.due()
            if due is None:
                self._pending_started.clear()
                await self._pending_started.wait()
                continue
            if due <= 0:
                self._enqueue(self._batcher.cut())
                continue
            # Re-read the clock at least every flush_interval, so an injected clock that jumps is noticed.
            await asyncio.sleep(min(due, self._flush_interval))

    # -- sending ----------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queue_changed.clear()
                await self._queue_changed.wait()
                continue
            batch, nbytes = self._queue[0]
            await self._deliver(batch)
            self._queue.popleft()
            self._queue_bytes -= nbytes

    async def _deliver(self, batch: SampleBatch) -> None:
        """Send one request and count its outcome; never raises for a delivery failure."""
        count = batch.samples
        delivered: list[Delivered] = []

        async def attempt() -> None:
            delivered.append(await self._connection.send(batch))

        try:
            await send_with_retry(attempt, self._retry, on_retry=self._log_retry, clock=self._clock)
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
            outcome = delivered[-1]
            attributes = {**self._attributes, "protocol": outcome.protocol}
            self._sent.add(count, self._attributes)
            self._body_bytes.add(outcome.body_bytes, attributes)

    def _log_retry(self, exc: RetryableError, delay: float) -> None:
        logger.warning("remote write %s: %s; retrying in %.1fs", self.name, exc, delay)

    def _count_attempt(self, protocol: str, status: str) -> None:
        self._requests.add(1, {**self._attributes, "status": status, "protocol": protocol})

    def _observe_protocol(self, _options: object) -> list[metrics.Observation]:
        current = self._connection.protocol
        return [
            metrics.Observation(1 if p == current else 0, {**self._attributes, "protocol": p})
            for p in self._protocols
        ]

    def _fail_queued(self) -> None:
        count = sum(batch.samples for batch, _ in self._queue) + len(self._batcher)
        if count:
            logger.error("remote write %s: shut down with %d samples undelivered", self.name, count)
            self._failed.add(count, self._attributes)
        self._queue.clear()
        self._queue_bytes = 0
        self._batcher.cut()
