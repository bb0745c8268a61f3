"""Traces and metrics to local files, one OTLP/JSON request per line, for inspection and replay.

Each line is exactly a body the OTLP/HTTP receiver accepts, so one can be replayed with
`curl --data-binary @line -H 'Content-Type: application/json' http://127.0.0.1:4318/v1/traces` (or
`/v1/metrics` for a line of the metrics file). Metrics are written as they arrived (no translation to
Prometheus series), so the file is where a default install's metrics land with nothing else running.

`consume_traces` and `consume_metrics` only encode and append to memory; one background task hands the buffered
lines to a worker thread at least every `flush_interval` seconds, so the loop never waits on the disk and data
reaches it within about that interval. A write error is logged and counted and the lines are dropped: a full
disk must not make the receiver refuse data that other exporters can still deliver. What shutdown could not
write is reported by `leftover()` for the agent's exit summary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporters.leftover import Leftover
from exporters.otlp_json import encode_json
from exporters.span_counters import span_counters

log = logging.getLogger("headwater.exporters.file")

DEFAULT_MAX_FILE_SIZE = 128 * 1024 * 1024
"""Bytes a file may reach before it is rotated to `<name>.1` (one old file is kept)."""
_EARLY_FLUSH_BYTES = 4 * 1024 * 1024  # past this many buffered bytes the writer is woken before its interval


class _Lines:
    """One file's buffered lines and what happens to them. `unit` names what `count` counts ("spans", ...)."""

    def __init__(self, path: Path, unit: str, sent: metrics.Counter, failed: metrics.Counter,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> None:
        self.path = path
        self.max_file_size = max_file_size
        self.unit = unit
        self.buffer: list[tuple[bytes, int]] = []  # (line, items)
        self.queued_bytes = 0
        self.lock = threading.Lock()  # writes run in worker threads; one at a time, in order
        self._sent = sent
        self._failed = failed
        self.dropped_at_shutdown = 0

    def append(self, line: bytes, items: int) -> None:
        self.buffer.append((line, items))
        self.queued_bytes += len(line)

    async def flush(self, at_shutdown: bool = False) -> None:
        if not self.buffer:
            return
        lines, self.buffer = self.buffer, []
        data = b"".join(line for line, _ in lines)
        items = sum(n for _, n in lines)
        try:
            await asyncio.to_thread(self._write, data)
        except Exception as exc:  # any failure to write is counted and logged, never raised into a receiver
            self.drop(items, "write_error", f"writing {self.path} failed: {exc}", at_shutdown=at_shutdown)
        except asyncio.CancelledError:
            # The thread may still finish the write, but nothing will confirm it: count the items as lost.
            self.drop(items, "shutdown_timeout", "shutdown timed out while they were being written")
            raise
        else:
            self._sent.add(items, {"exporter": "file"})
        finally:
            self.queued_bytes -= len(data)

    def discard(self, reason: str, detail: str) -> None:
        """Drop what is still buffered (shutdown ran out of time before writing it), counted."""
        items = sum(n for _, n in self.buffer)
        self.buffer, self.queued_bytes = [], 0
        if items:
            self.drop(items, reason, detail, at_shutdown=True)

    def _write(self, data: bytes) -> None:
        """Runs in a worker thread. Opening the file for each write (about once a second) keeps no handle on a
        file that logrotate moved or a user deleted, and recreates the directory if it went away."""
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_file_size:
                # Rotate: the full file becomes `<name>.1` (the one before goes), so at most twice the bound.
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with open(self.path, "ab") as f:
                f.write(data)

    def drop(self, items: int, reason: str, detail: str, *, at_shutdown: bool = False) -> None:
        log.error("file exporter: dropped %d %s (%s): %s", items, self.unit, reason, detail)
        self._failed.add(items, {"exporter": "file", "reason": reason})
        if at_shutdown or reason == "shutdown_timeout":
            self.dropped_at_shutdown += items


class FileExporter:
    """Append each consumed ExportTraceServiceRequest to `traces_path`, and each ExportMetricsServiceRequest to
    `metrics_path`, as one line of OTLP/JSON.

        exporter = FileExporter("data/traces.jsonl", "data/metrics.jsonl")
        await exporter.start()
        await exporter.consume_traces(request)     # or consume_metrics(request): returns once buffered
        await exporter.shutdown(timeout=5.0)       # writes what is buffered
        exporter.leftover()                        # what shutdown could not write

    Satisfies `Component`, `TraceConsumer`, `MetricConsumer` and `Queued` (`queued_bytes` covers both files).
    Without `metrics_path`, `consume_metrics` is refused. A file's parent directory is created when first
    written; a file nothing was sent to is never created.
    """

    def __init__(self, traces_path: str | Path, metrics_path: str | Path | None = None, flush_interval: float = 1.0,
                 *, meter: metrics.Meter | None = None, max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        if max_file_size <= 0:
            raise ValueError(f"max_file_size must be positive, got {max_file_size}")
        meter = meter or metrics.get_meter("headwater.exporters.file")
        self.path = Path(traces_path)
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.flush_interval = flush_interval
        self._traces = _Lines(self.path, "spans", *span_counters(meter, "file", ("write_error",)), max_file_size)
        self._metrics = (_Lines(self.metrics_path, "data points", *_point_counters(meter), max_file_size)
                         if self.metrics_path is not None else None)
        self._files = [f for f in (self._traces, self._metrics) if f is not None]
        self._wake = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_bytes(self) -> int:
        """Bytes of encoded lines waiting to be written, both files together."""
        return sum(f.queued_bytes for f in self._files)

    async def start(self) -> None:
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name=f"file-exporter:{self.path}")

    async def consume_traces(self, request: ExportTraceServiceRequest | bytes, spans: int | None = None) -> None:
        """Encode `request` (a message, read and never mutated, or its serialized bytes) as one buffered line."""
        if isinstance(request, (bytes, bytearray)):
            request = ExportTraceServiceRequest.FromString(bytes(request))
        self._take(self._traces, request, _count_spans(request))

    async def consume_metrics(self, request: ExportMetricsServiceRequest) -> None:
        """Encode `request` (read, never mutated) as one buffered line of the metrics file."""
        if self._metrics is None:
            raise RuntimeError("this file exporter has no metrics_path")
        self._take(self._metrics, request, _count_points(request))

    def _take(self, lines: _Lines, request: Any, items: int) -> None:
        if self._stopping:
            lines.drop(items, "shut_down", "the exporter is shut down", at_shutdown=True)
            return
        lines.append(encode_json(request) + b"\n", items)
        if self.queued_bytes >= _EARLY_FLUSH_BYTES:
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
            await asyncio.wait_for(self._flush(at_shutdown=True), timeout=max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            for lines in self._files:
                lines.discard("shutdown_timeout", f"shutdown timed out after {timeout:.1f}s before writing them")
        self._closed = True

    def leftover(self) -> Leftover:
        """What shutdown could not write (timed out, failed, or arrived after it began), per unit."""
        return Leftover(dropped={f.unit: f.dropped_at_shutdown for f in self._files if f.dropped_at_shutdown},
                        why="not written to " + ", ".join(str(f.path) for f in self._files if f.dropped_at_shutdown))

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
            await self._flush(at_shutdown=self._stopping)  # woken by shutdown: what fails now is its loss

    async def _flush(self, at_shutdown: bool = False) -> None:
        for lines in self._files:
            await lines.flush(at_shutdown)


def _count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def _count_points(request: ExportMetricsServiceRequest) -> int:
    count = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind in _POINT_FIELDS:
                    count += len(getattr(metric, kind).data_points)
    return count


def _point_counters(meter: metrics.Meter) -> tuple[metrics.Counter, metrics.Counter]:
    """(sent, failed) for metric data points, named like the span counters."""
    sent = meter.create_counter(
        "headwater_exporter_sent_data_points", unit="{data_point}",
        description="Metric data points the exporter delivered (the file exporter: written).")
    failed = meter.create_counter(
        "headwater_exporter_failed_data_points", unit="{data_point}",
        description="Metric data points the exporter dropped, by reason.")
    return sent, failed

