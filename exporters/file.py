"""Traces to a local file, one OTLP/JSON request per line, for inspection and replay.

Each line is exactly a body the OTLP/HTTP receiver accepts, so one can be replayed with
`curl --data-binary @line -H 'Content-Type: application/json' http://127.0.0.1:4318/v1/traces`.

`consume_traces` only encodes and appends to memory; a background task hands the buffered lines to a worker
thread at least every `flush_interval` seconds, so the loop never waits on the disk and data reaches it within
about that interval. A write error is logged and counted and the lines are dropped: a full disk must not
make the receiver refuse data that other exporters can still deliver.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from opentelemetry import metrics
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporters.otlp_json import encode_json
from exporters.span_counters import span_counters

log = logging.getLogger("headwater.exporters.file")

_EARLY_FLUSH_BYTES = 4 * 1024 * 1024  # past this many buffered bytes the writer is woken before its interval


class FileTraceExporter:
    """Append each consumed ExportTraceServiceRequest to `path` as one line of OTLP/JSON.

    Satisfies `Component`, `TraceConsumer` and `Queued`. The parent directory is created when first needed.
    """

    def __init__(self, path: str | Path, flush_interval: float = 1.0, *, meter: metrics.Meter | None = None) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._buffer: list[tuple[bytes, int]] = []  # (line, span count)
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()  # writes run in worker threads; one at a time, in order
        self._sent, self._failed = span_counters(meter or metrics.get_meter("headwater.exporters.file"))

    @property
    def queued_bytes(self) -> int:
        """Bytes of encoded lines waiting to be written."""
        return self._queued_bytes

    async def start(self) -> None:
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name=f"file-exporter:{self.path}")

    async def consume_traces(self, request: ExportTraceServiceRequest | bytes, spans: int | None = None) -> None:
        """Encode `request` (a message, read and never mutated, or its serialized bytes) as one buffered line."""
        if isinstance(request, (bytes, bytearray)):
            request = ExportTraceServiceRequest.FromString(bytes(request))
        spans = _count_spans(request)
        if self._stopping:
            self._drop(spans, "shut_down", "the exporter is shut down")
            return
        line = encode_json(request) + b"\n"
        self._buffer.append((line, spans))
        self._queued_bytes += len(line)
        if self._queued_bytes >= _EARLY_FLUSH_BYTES:
            self._wake.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop taking data, write what is buffered within `timeout` seconds. Safe without start and twice."""
        if self._closed:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                self._task.cancel()
        try:
            # The writer task has ended (or never started): write whatever it left.
            await asyncio.wait_for(self._flush(), timeout=max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            log.error("file exporter: shutdown timed out after %.1fs writing %s", timeout, self.path)
        self._closed = True

    async def _run(self) -> None:
        """Write buffered lines at least every `flush_interval` seconds until shutdown."""
        while not self._stopping:
            try:
                # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that lands as the event
                # fires, and the task would then outlive its loop.
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        data = b"".join(line for line, _ in lines)
        spans = sum(n for _, n in lines)
        try:
            await asyncio.to_thread(self._write, data)
        except Exception as exc:  # any failure to write is counted and logged, never raised into a receiver
            self._drop(spans, "write_error", f"writing {self.path} failed: {exc}")
        except asyncio.CancelledError:
            # The thread may still finish the write, but nothing will confirm it: count the spans as lost.
            self._drop(spans, "shutdown_timeout", "shutdown timed out while they were being written")
            raise
        else:
            self._sent.add(spans, {"exporter": "file"})
        finally:
            self._queued_bytes -= len(data)

    def _write(self, data: bytes) -> None:
        """Runs in a worker thread. Opening the file for each write (about once a second) keeps no handle on a
        file that logrotate moved or a user deleted, and recreates the directory if it went away."""
        with self._write_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)

    def _drop(self, spans: int, reason: str, detail: str) -> None:
        log.error("file exporter: dropped %d spans (%s): %s", spans, reason, detail)
        self._failed.add(spans, {"exporter": "file", "reason": reason})


def _count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
