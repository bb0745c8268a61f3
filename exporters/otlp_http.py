"""Kept traces upstream over OTLP/HTTP (protobuf), with a queue, concurrent senders and retries.

The chain, built here and read top to bottom: `consume_traces` serializes and queues (bytes, counted in
`queued_bytes`) -> up to `max_concurrency` sender tasks take a batch, merging small queued requests (the
concatenation of serialized ExportTraceServiceRequests is their merge, so nothing is parsed) -> optional gzip
(in a thread for large bodies) -> `send_with_retry` (one deadline, backoff, Retry-After) -> one POST with the
request timeout. Every batch ends in one counted outcome: sent, rejected by the receiver (4xx, or spans named
in a partial_success), retries exhausted, or shut down.

Shutdown order: stop taking data, let the senders drain the queue until `timeout`, then end backoff waits and
cancel what is still in flight, count what is left as failed, close the HTTP session.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp
import yarl
from google.protobuf.message import DecodeError
from opentelemetry import metrics
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from exporters.errors import PermanentError, RetryableError
from exporters.otlp_json import OtlpJsonError, decode_json
from exporters.retry import RetryPolicy, raise_for_status, send_with_retry
from exporters.span_counters import span_counters

log = logging.getLogger("headwater.exporters.otlp")

MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_SPANS = 8192
_COMPRESS_IN_THREAD_BYTES = 64 * 1024  # below this, gzip on the loop costs less than the thread hop
_OWN_HEADERS = frozenset({"content-type", "content-encoding", "content-length"})


@dataclass(frozen=True)
class _Item:
    body: bytes  # a serialized ExportTraceServiceRequest
    spans: int


class OtlpHttpTraceExporter:
    """Send traces to an OTLP/HTTP receiver: `OtlpHttpTraceExporter("http://tempo:4318", {}, "gzip", 10.0,
    RetryPolicy())`, then `await start()`.

    Satisfies `Component`, `TraceConsumer` and `Queued`. Spans are counted in `headwater_exporter_sent_spans`
    and `headwater_exporter_failed_spans` (attributes `exporter="otlp"`, and `reason` on failures).
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        compression: Literal["none", "gzip"] = "none",
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        *,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_batch_spans: int = MAX_BATCH_SPANS,
        meter: metrics.Meter | None = None,
    ) -> None:
        url = yarl.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"endpoint must be an http:// or https:// URL with a host, got {endpoint!r}")
        if compression not in ("none", "gzip"):
            raise ValueError(f"compression must be 'none' or 'gzip', got {compression!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_batch_bytes < 1 or max_batch_spans < 1:
            raise ValueError(f"max_batch_bytes and max_batch_spans must be positive, got {max_batch_bytes}, {max_batch_spans}")
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.compression = compression
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_spans = max_batch_spans
        self._headers = {"User-Agent": "headwater"}
        self._headers.update({k: v for k, v in (headers or {}).items() if k.lower() not in _OWN_HEADERS})
        self._headers["Content-Type"] = "application/x-protobuf"
        if compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"

        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()  # set when the queue gains an item or the exporter is closing
        self._stop = asyncio.Event()  # set at the shutdown deadline: ends backoff waits
        self._closing = False
        self._closed = False
        self._session: aiohttp.ClientSession | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._sent, self._failed = span_counters(meter or metrics.get_meter("headwater.exporters.otlp"))

    @property
    def queued_bytes(self) -> int:
        """Serialized bytes queued or in flight, not yet sent or dropped."""
        return self._queued_bytes

    async def start(self) -> None:
        if self._session is not None or self._closing:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.max_concurrency),
        )
        self._senders = [
            asyncio.create_task(self._sender(), name=f"otlp-sender-{i}") for i in range(self.max_concurrency)
        ]

    async def consume_traces(self, request: ExportTraceServiceRequest | bytes, spans: int | None = None) -> None:
        """Queue `request` for sending: a message (read, never mutated) or its serialized bytes, in which case
        `spans` says how many spans they hold (counted by parsing when not given)."""
        if isinstance(request, (bytes, bytearray)):
            body = bytes(request)
            if spans is None:
                parsed = ExportTraceServiceRequest.FromString(body)
                spans = sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)
        else:
            body = b""
            spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        if self._closing:
            self._drop(spans, "shut_down", "the exporter is shut down")
            return
        if spans == 0:
            return
        if not body:
            body = request.SerializeToString()
        self._queue.append(_Item(body, spans))
        self._queued_bytes += len(body)
        self._ready.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop taking data, deliver what is queued within `timeout` seconds, then cancel and count the rest as
        failed. Safe without start and twice."""
        if self._closed:
            return
        self._closing = True
        self._ready.set()
        if self._senders:
            _, pending = await asyncio.wait(self._senders, timeout=max(0.0, timeout))
            if pending:
                self._stop.set()
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        left = sum(item.spans for item in self._queue)
        if left:
            reason = "shutdown_timeout" if self._session is not None else "not_started"
            self._drop(left, reason, "still queued at shutdown")
        self._queue.clear()
        self._queued_bytes = 0
        if self._session is not None:
            await self._session.close()
        self._closed = True

    async def _sender(self) -> None:
        while not self._stop.is_set():
            if not self._queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._deliver(self._take_batch())

    def _take_batch(self) -> list[_Item]:
        """The first queued request, plus the next ones while the merged batch stays within both limits."""
        batch = [self._queue.popleft()]
        size, spans = len(batch[0].body), batch[0].spans
        while self._queue:
            item = self._queue[0]
            if size + len(item.body) > self.max_batch_bytes or spans + item.spans > self.max_batch_spans:
                break
            batch.append(self._queue.popleft())
            size += len(item.body)
            spans += item.spans
        return batch

    async def _deliver(self, batch: list[_Item]) -> None:
        body = b"".join(item.body for item in batch)
        spans = sum(item.spans for item in batch)
        rejected = 0

        async def attempt() -> None:
            nonlocal rejected
            rejected = await self._post(payload)

        try:
            payload = await self._compress(body)
            await send_with_retry(attempt, self.retry, stop=self._stop, on_retry=self._on_retry)
        except PermanentError as exc:
            self._drop(spans, "rejected", str(exc))
        except RetryableError as exc:
            reason = "shutdown_timeout" if self._stop.is_set() else "retries_exhausted"
            self._drop(spans, reason, str(exc))
        except asyncio.CancelledError:
            self._drop(spans, "shutdown_timeout", "in flight when shutdown ended")
            raise
        except Exception as exc:  # a bug must cost this batch, not the sender task
            log.exception("otlp exporter: unexpected error sending %d spans", spans)
            self._drop(spans, "internal_error", repr(exc))
        else:
            if rejected:
                self._failed.add(min(rejected, spans), {"exporter": "otlp", "reason": "partial_success"})
            if spans > rejected:
                self._sent.add(spans - rejected, {"exporter": "otlp"})
        finally:
            self._queued_bytes -= len(body)

    async def _compress(self, body: bytes) -> bytes:
        if self.compression != "gzip":
            return body
        if len(body) < _COMPRESS_IN_THREAD_BYTES:
            return gzip.compress(body, compresslevel=6, mtime=0)
        return await asyncio.to_thread(gzip.compress, body, 6, mtime=0)

    async def _post(self, payload: bytes) -> int:
        """One POST; returns the number of spans a 2xx answer's partial_success rejected."""
        assert self._session is not None
        try:
            async with self._session.post(self.url, data=payload, headers=self._headers) as response:
                answer = await response.read()
                status, headers = response.status, response.headers
                content_type = response.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"POST {self.url}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise_for_status(status, headers, _error_text(answer, content_type))
        return self._partial_success(answer, content_type)

    def _partial_success(self, answer: bytes, content_type: str) -> int:
        if not answer:
            return 0
        try:
            if content_type == "application/json":
                response = decode_json(answer, ExportTraceServiceResponse)
            else:
                response = ExportTraceServiceResponse.FromString(answer)
        except (DecodeError, OtlpJsonError):
            return 0
        partial = response.partial_success
        if partial.rejected_spans or partial.error_message:
            log.warning(
                "otlp exporter: %s rejected %d spans: %s", self.url, partial.rejected_spans, partial.error_message
            )
        return partial.rejected_spans

    def _on_retry(self, exc: RetryableError, delay: float) -> None:
        log.info("otlp exporter: %s; retrying in %.2fs", exc, delay)

    def _drop(self, spans: int, reason: str, detail: str) -> None:
        log.error("otlp exporter: dropped %d spans (%s): %s", spans, reason, detail)
        self._failed.add(spans, {"exporter": "otlp", "reason": reason})


def _error_text(answer: bytes, content_type: str) -> str:
    """The message of an error answer: OTLP receivers send a google.rpc.Status, in protobuf or JSON."""
    if content_type == "application/x-protobuf":
        return _status_message(answer) or f"<{len(answer)} bytes of protobuf>"
    return answer[:2048].decode("utf-8", "replace")


def _status_message(data: bytes) -> str:
    """Field 2 (`message`) of a serialized google.rpc.Status, read by hand so we need no googleapis package."""
    i = 0
    try:
        while i < len(data):
            tag, i = _varint(data, i)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _, i = _varint(data, i)
            elif wire == 2:
                length, i = _varint(data, i)
                if field == 2:
                    return data[i : i + length].decode("utf-8", "replace")
                i += length
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return ""
    except IndexError:
        pass
    return ""


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")
