"""The remote-write exporter: OTLP metrics (or a gateway's decoded batches) in, remote-write requests out.

The chain, in order (docs/architecture.md, "the sending chain"): `consume_metrics` translates a request (`translate`) ->
the batcher holds one flush and cuts it into requests with each series whole (`batcher`) -> each request is
one queue entry, in memory or in segment files under `state_dir` (`exporters.sending`), written and fsynced
`write_grace` after the cut unless acknowledged by then -> the sender delivers them, the requests of one cut in parallel (they share no series),
one cut after another, so each series stays in time order (`exporters.sending.sender`) -> the connection
encodes each in the negotiated format (in a thread when it is large), posts it and says what the answer means
(`connection`) -> the transport does the HTTP exchange (`transport`).

Every sample ends in one counted outcome: sent, dropped (refused with a 4xx, older than
`sample_age_limit`, not translatable, or dropped by a full queue under `drop_oldest`, or under `refuse` past
what may wait for room: SPILL_REQUESTS) or failed (a memory queue's entries left at shutdown, and requests
still waiting for room then). A disk queue's entries left at shutdown are sent after the next start.
`leftover()` tells the two apart for the agent's exit summary.

Shutdown order: stop the flusher, cut the pending flush into the queue, let the sender drain it within the
timeout, give back what is unfinished, close the queue (fsync, persist the send position), close the
transport. A replacement (a reload changed this endpoint's settings) is `hand_over` then the new exporter's
`take_over`: the same order without the drain, the queue handed on instead of delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from itertools import pairwise
from urllib.parse import urlsplit

from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from exporters.observed import OwnedMeter
from exporters.remote_write.batcher import Batcher
from exporters.remote_write.connection import (
    COMPACT_HANDSHAKE,
    VM_HANDSHAKE,
    Connection,
)
from exporters.remote_write.cumulative import DeltaToCumulative
from exporters.remote_write.encoding import PROTOCOLS
from exporters.remote_write.formats import new_encoder, protocols_for
from exporters.remote_write.records import SampleBatchCodec
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.series_cache import SeriesCache
from exporters.remote_write.series_limit import SeriesLimit
from exporters.remote_write.translate import Limits, translate, translate_wire
from exporters.remote_write.transport import USER_AGENT as USER_AGENT  # re-exported
from exporters.remote_write.transport import AiohttpTransport, Transport
from exporters.client_security import ClientSecurity
from exporters.leftover import Leftover
from exporters.retry import RetryPolicy
from exporters.sending.disk_queue import DiskQueue
from exporters.sending.memory_queue import MemoryQueue
from exporters.sending.queue import Entry, Queue, QueueFull, QueueSettings
from exporters.sending.sender import Sender, SenderSettings

logger = logging.getLogger("headwater.exporters.remote_write")

# Headers a protocol or the HTTP client owns; a configured header may not replace them (the spec forbids
# letting users override the reserved ones). Authorization comes from basic_auth or bearer_token_file, whose
# secrets are read from files: a header in the config would put a secret where config dumps show it.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Encoding", "Content-Type", "X-Prometheus-Remote-Write-Version",
        "X-VictoriaMetrics-Remote-Write-Version",
        "X-Headwater-Session", "X-Headwater-Epoch", "X-Headwater-Sequence", "X-Headwater-Compact-Version",
        "User-Agent", "Content-Length", "Host", "Connection", "Transfer-Encoding", "Authorization",
    )
)
PROTOCOL_CHOICES = (*PROTOCOLS, "auto")


def reserved_why(names: Sequence[str]) -> str:
    """Why configured headers named `names` (each reserved) are refused."""
    if any(n.lower() == "authorization" for n in names):
        return "Authorization comes from basic_auth or bearer_token_file (secrets are read from files)"
    return "remote write or HTTP itself sets them"
SPILL_REQUESTS = 4
WRITE_GRACE = 0.25
"""Seconds, at most a quarter of `flush_interval`, that a cut request waits for its acknowledgement before the disk
queue writes it: a receiver that keeps up then costs no disk writes (writing every request at its cut took about
half of the node agent's CPU in bench/remote_write.py). The batcher cuts that much before `flush_interval`, so
what clients were answered 200 for is still in the file within `flush_interval` unless delivered."""
"""Under `when_full: refuse`, requests cut when the queue had no room wait in memory, up to this many
`max_bytes` (what a flush may hold), instead of being dropped: receivers decide to admit a request before
they know what it translates to, so a request admitted just before the queue filled up must still fit
somewhere. The exporter reports `full` while any wait, so only requests admitted meanwhile join them."""
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
    for a better format again; tests inject one. `transport` defaults to HTTP through aiohttp, with TLS and
    credentials from `security`; tests pass a fake. `meter` defaults to the global meter provider's `headwater.exporters.remote_write` meter.
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
        security: ClientSecurity | None = None,
        queue: QueueSettings | None = None,
        sender: SenderSettings | None = None,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        series_limit: SeriesLimit | None = None,
    ) -> None:
        if not name:
            raise ValueError("name must not be empty")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        reserved = sorted(h for h in headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"headers may not set {', '.join(reserved)}: {reserved_why(reserved)}")
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
        self.series_limit = series_limit  # max_series_per_metric across requests (series_limit.py)
        self.name = name
        self._url = url
        self._retry = retry
        self._clock = clock
        self._queue_settings = queue or QueueSettings()
        self._write_grace = min(WRITE_GRACE, flush_interval / 4) if self._queue_settings.durable else 0.0
        self._batcher = Batcher(max_samples, max_bytes, flush_interval - self._write_grace, clock)
        self._flush_interval = flush_interval
        self._transport = transport or AiohttpTransport(timeout=timeout, headers=dict(headers), security=security)
        self.security = security
        """TLS and credentials of each request; a reload renews its TLS context (`reload_tls`)."""
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
            on_sent=self._count_body,
        )

        self._sender_settings = sender or SenderSettings(retry=retry, batch_samples=max_samples, batch_bytes=max_bytes,
                                                         min_batch_samples=min(500, max_samples))
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._pending_started = asyncio.Event()  # the batcher went from empty to not empty
        self._queue: Queue[SampleBatch] | None = None
        self._sender: Sender[SampleBatch] | None = None
        self._groups: dict[int, int] = {}  # entry seq -> its cut, for cuts whose requests may go in parallel
        # Requests cut but not queued yet, oldest first, with their cut's group (see SPILL_REQUESTS).
        self._spilled: deque[tuple[SampleBatch, int, int]] = deque()
        self._spilled_bytes = 0
        self._spill_limit = SPILL_REQUESTS * max_bytes
        self._next_group = 0
        self._queued_samples = 0  # in the queue, not yet acknowledged (entries restored from disk included)
        self._syncing: asyncio.Task[None] | None = None
        self._sync_waiting = False  # the sync task is in its write grace (may be cancelled for an immediate one)
        self._started = False
        self._shut_down = False
        self._lost_at_shutdown = 0  # samples shutdown could neither deliver nor keep on disk
        self._kept_at_shutdown = 0  # samples left in the disk queue, sent after the next start
        self._flusher: asyncio.Task[None] | None = None
        self._warned_reasons: set[str] = set()
        self._meter = meter

        self._observed = OwnedMeter(meter or metrics.get_meter("headwater.exporters.remote_write"), self)
        meter = self._observed  # its gauges report this endpoint, beside others and its replacement
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
            "headwater_queue_bytes", unit="By", callbacks=[self._observe_queue_bytes],
            description="Bytes the endpoint's queue holds, by medium: memory (estimated uncompressed, the pending "
            "flush included; queue.max_memory bounds the sum) and disk (segment files).")
        meter.create_observable_gauge(
            "headwater_queue_oldest_age_seconds", unit="s", callbacks=[self._observe_oldest],
            description="Age of the oldest data the endpoint's queue holds; 0 when empty.")
        for reason in ("rejected", "too_old", "queue_full", "corrupt", "error"):
            self._dropped.add(0, {**self._attributes, "reason": reason})
        # bounded state (issue 10, item 6)
        meter.create_observable_counter(
            "headwater_remote_write_state_evictions", unit="{entry}", callbacks=[self._observe_state_evictions],
            description="Entries of bounded per-endpoint state dropped to stay within their bound, by state: "
            "series_cache (label sets, 32 MiB), series_limit (series unseen for limits.idle_expiry), "
            "delta_to_cumulative (streams unseen for their staleness limit).")
        self._sent.add(0, self._attributes)
        self._failed.add(0, self._attributes)
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
        """Estimated uncompressed bytes held in memory: the pending flush, requests waiting for room in the
        queue, and queued requests kept in memory."""
        return (self._batcher.nbytes + self._spilled_bytes
                + (self._queue.memory_bytes if self._queue is not None else 0))

    @property
    def full(self) -> bool:
        """Whether requests wait for room in the queue, or it holds something and cannot take the pending flush
        and one more request's worth: receivers then refuse metrics with 429 / RESOURCE_EXHAUSTED (only under
        `when_full: refuse`; `drop_oldest` makes room). An empty queue takes any request, so it is never full,
        even with bounds smaller than `max_bytes`."""
        if self._queue is None or self._queue_settings.when_full != "refuse":
            return False
        if self._spilled:
            return True
        return len(self._queue) > 0 and self._queue.room() < self._batcher.nbytes + self._batcher.max_bytes

    @property
    def sender(self) -> Sender[SampleBatch] | None:
        return self._sender

    @property
    def delta_to_cumulative(self) -> DeltaToCumulative | None:
        """The delta-to-cumulative state, which a replacement of this endpoint goes on with."""
        return self._delta

    @property
    def queue_settings(self) -> QueueSettings:
        return self._queue_settings

    async def start(self) -> None:
        if self._started or self._shut_down:
            return
        self._started = True
        settings = self._queue_settings
        queue: Queue[SampleBatch]
        if settings.durable:
            assert settings.directory is not None
            disk = DiskQueue(settings.directory, SampleBatchCodec(), max_memory=settings.max_memory,
                             max_disk=settings.max_disk, when_full=settings.when_full,
                             on_drop=self._queue_dropped, on_error=self._queue_error)
            await disk.open()
            queue = disk
        else:
            queue = MemoryQueue(settings.max_memory, settings.when_full, on_drop=self._queue_dropped)
        self._queue = queue
        restored = len(queue)
        self._queued_samples = queue.count
        if restored:
            logger.info("remote write %s: %d requests queued before the last stop will be sent first", self.name,
                        restored)
        self._sender = Sender(
            self.name, queue, deliver=self._connection.send, settings=self._sender_settings,
            on_outcome=self._outcome, backlog=lambda: self._queued_samples, group_of=self._group_of,
            max_in_flight=self._max_in_flight, restored_below=queue.next_seq,
            clock=self._clock, wall_clock=self._wall_clock, sleep=self._sleep, meter=self._meter)
        await self._sender.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"remote_write[{self.name}].flusher")

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
        if self.series_limit is not None:
            batch = self.series_limit.apply(batch, self._clock())
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
        deadline = self._clock() + max(0.0, timeout)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._queue is not None:
            self._enqueue(self._batcher.cut())
        if self._sender is not None:
            await self._sender.stop(max(0.0, deadline - self._clock()))
        if self._queue is not None:
            if self._queue_settings.durable:
                self._queue_spilled(final=True)  # what the drain made room for is sent after the next start
            self._fail_spilled()
            if not self._queue_settings.durable:
                self._fail_queued()
            else:
                self._kept_at_shutdown = self._queued_samples
            if self._syncing is not None:
                self._syncing.cancel()  # close writes and fsyncs what is left
            queue, self._queue = self._queue, None
            await queue.close()
        elif len(self._batcher):
            self._failed.add(len(self._batcher), self._attributes)  # never started: nowhere to keep them
            self._lost_at_shutdown += len(self._batcher)
            self._batcher.cut()
        if self._delta is not None:
            await self._delta.commit()  # stale streams forgotten, or a save that failed earlier
            await self._delta.drain()  # a compaction in flight, before another instance reads the files
        await self._connection.close()
        self._observed.forget()

    def leftover(self) -> Leftover:
        """After shutdown: samples lost (a memory queue's, or what no queue could take) and samples kept in the
        disk queue for the next start."""
        where = str(self._queue_settings.directory) if self._queue_settings.durable else ""
        return Leftover(dropped={"samples": self._lost_at_shutdown} if self._lost_at_shutdown else {},
                        kept={"samples": self._kept_at_shutdown} if self._kept_at_shutdown else {},
                        why=f"undelivered to {self._url} when shutdown_timeout ran out"
                        + ("" if self._queue_settings.durable else " (queue.max_disk: 0 keeps the queue in memory)"),
                        kept_in=where)

    async def hand_over(self, *, keep_files: bool = True, max_bytes: int = 1 << 62) -> list[tuple[SampleBatch, int]]:
        """Stop without delivering, for a replacement of this endpoint (a reload changed its URL, batch or any
        other setting), and return what the replacement must queue itself (`take_over`), oldest first.

        Nothing is lost or counted: the pending flush is cut into the queue, requests in flight are given back
        to it, and it is closed. A disk queue persists its position, so a replacement on the same directory
        resumes from it (`keep_files`); the requests returned are then only those that waited for room. From a
        memory queue, or when the replacement keeps its queue in memory (`keep_files` False), the queued
        requests are returned too, up to `max_bytes` (what the replacement can hold); a disk queue keeps the
        rest in its files for a later exporter on the directory. The delta-to-cumulative state is left
        committed, for the replacement to go on with the same object."""
        if self._shut_down:
            return []
        self._shut_down = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        queue = self._queue
        if queue is None:  # never started: only the pending flush
            return self._batcher.cut()
        durable = self._queue_settings.durable
        if durable:
            self._enqueue(self._batcher.cut())  # on disk before anything else can happen to it
        else:
            for batch, nbytes in self._batcher.cut():
                self._spilled.append((batch, nbytes, 0))
                self._spilled_bytes += nbytes
        if self._sender is not None:
            await self._sender.stop(0.0)  # what is in flight goes back to the queue
        taken: list[tuple[SampleBatch, int]] = []
        if not (durable and keep_files):
            taken_bytes = 0
            while len(queue) and taken_bytes < max_bytes:  # every entry waits again after the sender's stop
                entries = await queue.get(max_entries=256, max_bytes=max_bytes - taken_bytes)
                if not entries:
                    break
                taken.extend((entry.item, entry.nbytes) for entry in entries)
                taken_bytes += sum(entry.nbytes for entry in entries)
                queue.ack(entries)
            if len(queue):
                logger.warning("remote write %s: %d queued requests stay in %s: the replacement keeps its queue in "
                               "memory and has no room for them; an exporter of this name on disk sends them",
                               self.name, len(queue), self._queue_settings.directory)
        taken.extend((batch, nbytes) for batch, nbytes, _ in self._spilled)
        self._spilled.clear()
        self._spilled_bytes = 0
        if self._syncing is not None:
            self._syncing.cancel()  # close writes and fsyncs what is left
        self._queue = None
        await queue.close()
        if self._delta is not None:
            await self._delta.commit()
            await self._delta.drain()
        await self._connection.close()
        self._observed.forget()
        return taken

    def take_over(self, requests: Sequence[tuple[SampleBatch, int]]) -> None:
        """Queue what the exporter this one replaces handed over (`hand_over`): behind what this one restored
        from its queue's files, before anything it takes from now on. Past the queue's bounds they wait for
        room or are dropped and counted, as any request the batcher cuts."""
        if not requests:
            return
        if self._queue is None:
            raise RuntimeError(f"remote write exporter {self.name!r} is not started")
        for batch, nbytes in requests:
            self._spilled.append((batch, nbytes, 0))
            self._spilled_bytes += nbytes
        self._queue_spilled()
        self._pending_started.set()  # the flush loop retries what still waits for room

    # -- batching ---------------------------------------------------------------------------------------

    def _append(self, batch: SampleBatch) -> None:
        was_empty = not self._batcher
        self._enqueue(self._batcher.add(batch))
        if was_empty and self._batcher:
            self._pending_started.set()
        if self._queue is not None:
            self._queue.reserve(self._batcher.nbytes + self._spilled_bytes)

    def _enqueue(self, requests: list[tuple[SampleBatch, int]]) -> None:
        if not requests:
            return
        if self._queue is None:
            raise RuntimeError(f"remote write exporter {self.name!r} is not started")
        group = 0
        if len(requests) > 1 and _parallel(requests):
            self._next_group += 1
            group = self._next_group
        for batch, nbytes in requests:  # behind any that wait, so every series stays in order
            self._spilled.append((batch, nbytes, group))
            self._spilled_bytes += nbytes
        self._queue_spilled()
        self._queue.reserve(self._batcher.nbytes + self._spilled_bytes)

    def _queue_spilled(self, final: bool = False) -> None:
        """Put the requests cut so far into the queue, oldest first, while it takes them. Under `refuse`, those
        it has no room for wait (up to SPILL_REQUESTS requests' worth, or none when `final`) and are tried
        again every flush_interval; the rest are dropped and counted (`queue_full`), as under `drop_oldest`
        (where the queue dropped its oldest to make room, and a request it still refuses fits nowhere)."""
        assert self._queue is not None
        now = self._wall_clock()
        queued = False
        behind = len(self._queue) > 0  # earlier requests still unacknowledged: no ack is coming soon
        while self._spilled:
            batch, nbytes, group = self._spilled[0]
            try:
                entry = self._queue.put(batch, nbytes, _oldest(batch, now), batch.samples)
            except QueueFull as exc:
                waits = self._queue_settings.when_full == "refuse" and not final
                if waits and self._spilled_bytes <= self._spill_limit:
                    break
                self._spilled.popleft()
                self._spilled_bytes -= nbytes
                if final:
                    self._lost_at_shutdown += batch.samples
                logger.error("remote write %s: queue full, %d samples dropped: %s", self.name, batch.samples, exc)
                self._dropped.add(batch.samples, {**self._attributes, "reason": "queue_full"})
                continue
            self._spilled.popleft()
            self._spilled_bytes -= nbytes
            queued = True
            if group:
                self._groups[entry.seq] = group
            self._queued_samples += entry.count
            if self._sender is not None:
                self._sender.observe_put(entry.count)
        if queued and self._queue_settings.durable:
            # In the file within flush_interval of the answer to the client (plus this write), unless delivered.
            # Behind a backlog, at once: entries not yet written cannot be evicted, and would only pin memory.
            grace = 0.0 if behind else self._write_grace
            if self._syncing is not None and not self._syncing.done() and grace == 0.0 and self._sync_waiting:
                self._syncing.cancel()
                self._syncing = None
            if self._syncing is None or self._syncing.done():
                self._syncing = asyncio.create_task(self._sync(grace), name=f"remote_write[{self.name}].sync")

    async def _sync(self, grace: float) -> None:
        """Write what was put, after `grace`: requests acknowledged by then are never written."""
        if grace:
            self._sync_waiting = True
            try:
                await asyncio.sleep(grace)
            finally:
                self._sync_waiting = False
        if self._queue is not None:
            await self._queue.flush()

    async def _flush_loop(self) -> None:
        while True:
            if self._spilled:
                self._queue_spilled()
            due = self._batcher.due()
            if due is None and self._spilled:  # waiting for room: try again after an interval
                await asyncio.sleep(self._flush_interval)
                continue
            if due is None:
                self._pending_started.clear()
                await self._pending_started.wait()
                continue
            if due <= 0:
                if self._sender is not None:
                    self._batcher.max_samples = self._sender.batch_samples
                self._enqueue(self._batcher.cut())
                continue
            # Re-read the clock at least every flush_interval, so an injected clock that jumps is noticed.
            await asyncio.sleep(min(due, self._flush_interval))

    # -- sending ----------------------------------------------------------------------------------------

    def _group_of(self, entry: Entry[SampleBatch]) -> int:
        return self._groups.get(entry.seq, 0)

    def _max_in_flight(self) -> int:
        """One request at a time while the format is being negotiated, and for compact (one session)."""
        if not self._connection.confirmed or self._connection.protocol == "compact":
            return 1
        return 1 << 30

    def _outcome(self, entry: Entry[SampleBatch], outcome: str, reason: str, _answer: object) -> None:
        self._groups.pop(entry.seq, None)
        self._queued_samples -= entry.count
        if outcome == "sent":
            self._sent.add(entry.count, self._attributes)
        else:
            self._dropped.add(entry.count, {**self._attributes, "reason": reason})

    def _queue_dropped(self, entry: Entry[SampleBatch], reason: str) -> None:
        self._groups.pop(entry.seq, None)
        self._queued_samples -= entry.count
        logger.error("remote write %s: queue dropped %d samples: %s", self.name, entry.count, reason)
        self._dropped.add(entry.count, {**self._attributes, "reason": reason})

    def _queue_error(self, message: str) -> None:
        logger.error("remote write %s: queue: %s", self.name, message)

    def _count_body(self, protocol: str, body_bytes: int) -> None:
        self._body_bytes.add(body_bytes, {**self._attributes, "protocol": protocol})

    def _count_attempt(self, protocol: str, status: str) -> None:
        self._requests.add(1, {**self._attributes, "status": status, "protocol": protocol})

    def _observe_protocol(self, _options: object) -> list[metrics.Observation]:
        current = self._connection.protocol
        return [
            metrics.Observation(1 if p == current else 0, {**self._attributes, "protocol": p})
            for p in self._protocols
        ]

    def _fail_spilled(self) -> None:
        """Requests still waiting for room at shutdown are lost: count them."""
        count = sum(batch.samples for batch, _, _ in self._spilled)
        if count:
            logger.error("remote write %s: shut down with %d samples the full queue could not take", self.name, count)
            self._failed.add(count, self._attributes)
            self._lost_at_shutdown += count
        self._spilled.clear()
        self._spilled_bytes = 0

    def _fail_queued(self) -> None:
        """A memory queue's entries left at shutdown are lost: count them."""
        count = self._queued_samples + len(self._batcher)
        if count:
            logger.error("remote write %s: shut down with %d samples undelivered", self.name, count)
            self._failed.add(count, self._attributes)
            self._lost_at_shutdown += count
        self._queued_samples = 0
        self._batcher.cut()

    def _observe_queue_bytes(self, _options: object) -> list[metrics.Observation]:
        queue = self._queue
        return [
            metrics.Observation(self.queued_bytes, {**self._attributes, "medium": "memory"}),
            metrics.Observation(queue.disk_bytes if queue is not None else 0, {**self._attributes, "medium": "disk"}),
        ]

    def _observe_state_evictions(self, _options: object) -> list[metrics.Observation]:
        limit, delta = self.series_limit, self._delta
        counts = {"series_cache": self._series.evicted,
                  "series_limit": limit.expired if limit is not None else 0,
                  "delta_to_cumulative": delta.stats().get("stale_forgotten", 0) if delta is not None else 0}
        return [metrics.Observation(n, {**self._attributes, "state": state}) for state, n in counts.items()]

    def _observe_oldest(self, _options: object) -> list[metrics.Observation]:
        oldest = self._queue.oldest_created() if self._queue is not None else None
        age = max(0.0, self._wall_clock() - oldest) if oldest is not None else 0.0
        return [metrics.Observation(age, self._attributes)]


def _oldest(batch: SampleBatch, now: float) -> float:
    """Wall-clock seconds of a request's oldest sample (its age decides `sample_age_limit`)."""
    oldest = min(batch.timestamps) if batch.timestamps else None
    if batch.histograms:
        first = min(h.timestamp for h in batch.histograms)
        oldest = first if oldest is None else min(oldest, first)
    return oldest / 1000.0 if oldest is not None else now


def _parallel(requests: Sequence[tuple[SampleBatch, int]]) -> bool:
    """Whether a cut's requests share no series, so they may be sent at once without reordering a series: the
    batcher keeps each series whole and in one request unless it alone passes a limit, and then its pieces
    are neighbours. Native histograms and exemplars ride in the last request, after their series' samples
    (a receiver drops an exemplar whose series it lacks), so such a cut goes in order."""
    for (a, _), (b, _) in pairwise(requests):
        if not (a.grouped and b.grouped) or a.histograms or a.exemplars or b.histograms or b.exemplars:
            return False
        if a.labels and b.labels and a.labels[-1] == b.labels[0]:
            return False
    return True
