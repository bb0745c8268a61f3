"""Kept traces upstream over OTLP/HTTP (protobuf), through the shared sending chain.

The chain (docs/architecture.md, "the sending chain"), read top to bottom: `consume_traces` serializes and
puts the request in a memory queue (`exporters.sending.memory_queue`, bounded by `max_queue_bytes`) -> the
sender (`exporters.sending.sender`) takes rounds of queued requests, merges small ones (the concatenation of
serialized ExportTraceServiceRequests is their merge, so nothing is parsed) up to `max_batch_bytes` and
`max_batch_spans`, and sends up to `max_concurrency` at once with retries -> `_post` gzips (in a thread for
large bodies), POSTs with the request timeout and classifies the answer as the OTLP spec says: 429, 502, 503
and 504 and no answer retry (Retry-After honoured), other statuses drop the batch. Traces have no order to
keep, so every request of a round may be in flight together. Every span ends in one counted outcome: sent,
rejected (4xx, or named in a partial_success), retries exhausted (`retry.max_elapsed`: this queue lives in
memory, so it does not wait out an outage for ever), queue full, or shut down.

Shutdown order: stop taking data, let the sender drain the queue until `timeout`, then end backoff waits and
cancel what is still in flight, count what is left as failed, close the HTTP session.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Mapping
from typing import Literal

import aiohttp
import yarl
from google.protobuf.message import DecodeError
from opentelemetry import metrics
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from exporters.client_security import ClientSecurity
from exporters.errors import (
    NetworkError,
    PermanentError,
    RetryableError,
    ThrottledError,
)
from exporters.leftover import Leftover
from exporters.otlp_json import OtlpJsonError, decode_json
from exporters.retry import RetryPolicy, parse_retry_after
from exporters.secrets import headers_for_log, redact
from exporters.sending.memory_queue import MemoryQueue
from exporters.sending.queue import Entry, QueueFull
from exporters.sending.sender import DROP_REASONS, Sender, SenderSettings
from exporters.span_counters import span_counters

log = logging.getLogger("headwater.exporters.otlp")

MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_SPANS = 8192
MAX_QUEUE_BYTES = 64 * 1024 * 1024
_COMPRESS_IN_THREAD_BYTES = 64 * 1024  # below this, gzip on the loop costs less than the thread hop
RESERVED_HEADERS = frozenset({"content-type", "content-encoding", "content-length", "user-agent", "host",
                              "connection", "transfer-encoding", "authorization"})
"""Headers OTLP/HTTP or the HTTP client set; configured `headers` may not replace them. Authorization comes from
basic_auth or bearer_token_file, whose secrets are read from files, never written in the config."""
THROTTLED = frozenset({429, 503})
RETRYABLE = frozenset({502, 504})
"""The OTLP spec's retryable statuses (429, 502, 503, 504); 429 and 503 may carry Retry-After."""


class OtlpHttpTraceExporter:
    """Send traces to an OTLP/HTTP receiver: `OtlpHttpTraceExporter("http://tempo:4318", {}, "gzip", 10.0,
    RetryPolicy())`, then `await start()`.

    Satisfies `Component`, `TraceConsumer` and `Queued`. Spans are counted in `headwater_exporter_sent_spans`
    and `headwater_exporter_failed_spans` (attributes `exporter="otlp"`, and `reason` on failures); the
    sender's own telemetry (`headwater_sender_*`) carries `exporter="otlp"`.
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
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        meter: metrics.Meter | None = None,
        security: ClientSecurity | None = None,
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
        reserved = sorted(h for h in (headers or {}) if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"headers may not set {', '.join(reserved)}: "
                             + ("Authorization comes from basic_auth or bearer_token_file"
                                if any(h.lower() == "authorization" for h in reserved) else "OTLP or HTTP sets them"))
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
        self._headers.update(headers or {})
        self._headers["Content-Type"] = "application/x-protobuf"
        if compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"

        meter = meter or metrics.get_meter("headwater.exporters.otlp")
        self._queue: MemoryQueue[bytes] = MemoryQueue(max_queue_bytes, "refuse")
        self._sender = Sender(
            "otlp", self._queue, deliver=self._post, on_outcome=self._outcome, backlog=self._backlog,
            group_of=lambda _entry: 1,  # no order to keep: a whole round may be in flight
            merge=b"".join,
            settings=SenderSettings(
                max_concurrency=max_concurrency, retry=self.retry, batch_samples=max_batch_spans,
                min_batch_samples=min(64, max_batch_spans), batch_bytes=max_batch_bytes,
                max_elapsed=self.retry.max_elapsed, sample_age_limit=float("inf")),
            meter=meter)
        self._started = False
        self._closing = False
        self._closed = False
        self._lost_at_shutdown = 0
        self._session: aiohttp.ClientSession | None = None
        self._security = security
        self._sent, self._failed = span_counters(meter, "otlp", (*DROP_REASONS, "partial_success", "queue_full"))

    @property
    def security(self) -> ClientSecurity | None:
        """TLS and credentials of each request; a reload renews its TLS context (`reload_tls`)."""
        return self._security

    @property
    def queued_bytes(self) -> int:
        """Serialized bytes queued or in flight, not yet sent or dropped."""
        return self._queue.memory_bytes

    async def start(self) -> None:
        if self._started or self._closing:
            return
        self._started = True
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.max_concurrency),
        )
        await self._sender.start()

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
        try:
            self._queue.put(body, len(body), 0.0, spans)
        except QueueFull as exc:
            self._drop(spans, "queue_full", str(exc))

    async def shutdown(self, timeout: float) -> None:
        """Stop taking data, deliver what is queued within `timeout` seconds, then cancel and count the rest as
        failed. Safe without start and twice."""
        if self._closed:
            return
        self._closing = True
        if self._started:
            await self._sender.stop(timeout)
        left = self._backlog()
        if left:
            reason = "shutdown_timeout" if self._started else "not_started"
            self._drop(left, reason, "still queued at shutdown")
            self._lost_at_shutdown = left
        await self._queue.close()
        self._queue = MemoryQueue(1, "refuse")  # what was left is counted; nothing more is taken
        if self._session is not None:
            await self._session.close()
        self._closed = True

    def leftover(self) -> Leftover:
        """After shutdown: spans still queued when it ended (the queue lives in memory: they are lost)."""
        return Leftover(dropped={"spans": self._lost_at_shutdown} if self._lost_at_shutdown else {},
                        why=f"undelivered to {self.url} when shutdown_timeout ran out")

    async def hand_over(self) -> list[tuple[bytes, int]]:
        """Stop without delivering, for a replacement (a reload changed the endpoint or another setting): requests
        in flight are given back to the queue, and everything it holds is returned, oldest first, as
        (serialized request, spans) for the replacement's `take_over`. Nothing is counted as failed."""
        if self._closed:
            return []
        self._closing = True
        if self._started:
            await self._sender.stop(0.0)
        queue, self._queue = self._queue, MemoryQueue(1, "refuse")
        await queue.close()  # entries are still handed out once closed, until none is left
        taken: list[tuple[bytes, int]] = []
        while entries := await queue.get(1024, 1 << 62):
            taken.extend((entry.item, entry.count) for entry in entries)
            queue.ack(entries)
        if self._session is not None:
            await self._session.close()
        self._closed = True
        return taken

    def take_over(self, requests: list[tuple[bytes, int]]) -> None:
        """Queue what the exporter this one replaces handed over; what does not fit is dropped and counted."""
        for body, spans in requests:
            try:
                self._queue.put(body, len(body), 0.0, spans)
            except QueueFull as exc:
                self._drop(spans, "queue_full", str(exc))

    def _backlog(self) -> int:
        return self._queue.count

    def _outcome(self, entry: Entry[bytes], outcome: str, reason: str, answer: object) -> None:
        if outcome == "sent":
            rejected = min(int(answer or 0), entry.count)
            if rejected:
                self._failed.add(rejected, {"exporter": "otlp", "reason": "partial_success"})
            if entry.count > rejected:
                self._sent.add(entry.count - rejected, {"exporter": "otlp"})
        else:
            self._failed.add(entry.count, {"exporter": "otlp", "reason": reason})

    async def _compress(self, body: bytes) -> bytes:
        if self.compression != "gzip":
            return body
        if len(body) < _COMPRESS_IN_THREAD_BYTES:
            return gzip.compress(body, compresslevel=6, mtime=0)
        return await asyncio.to_thread(gzip.compress, body, 6, mtime=0)

    async def _post(self, body: bytes) -> int:
        """One POST; returns the number of spans a 2xx answer's partial_success rejected."""
        assert self._session is not None
        payload = await self._compress(body)
        sent = self._headers
        tls: dict[str, object] = {}
        if (security := self._security) is not None:
            authorization = security.authorization()
            if authorization is not None:
                sent = {**sent, "Authorization": authorization}
            if security.ssl is not None:
                tls["ssl"] = security.ssl  # read per request: a reload may renew it (`reload_tls`)
            if security.server_name is not None:
                tls["server_hostname"] = security.server_name
        try:
            async with self._session.post(self.url, data=payload, headers=sent, **tls) as response:
                answer = await response.read()
                status, headers = response.status, response.headers
                content_type = response.content_type
            if log.isEnabledFor(logging.DEBUG):
                log.debug("exchange", extra={"kv": {"url": self.url, "status": status, "body_bytes": len(payload),
                                                    "headers": headers_for_log(sent)}})
        except aiohttp.ClientConnectorCertificateError as exc:
            trust = self._security.trust if self._security is not None else "the system's CA certificates"
            raise NetworkError(f"POST {self.url}: TLS: the server's certificate was not verified against {trust}: "
                               f"{exc.certificate_error}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NetworkError(f"POST {self.url}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            detail = f"HTTP {status}: {_error_text(answer, content_type).strip()[:512]}"
            if status in THROTTLED:
                raise ThrottledError(detail, parse_retry_after(headers.get("Retry-After")))
            if status in RETRYABLE:
                raise RetryableError(detail)
            raise PermanentError(detail)
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
                "otlp exporter: %s rejected %d spans: %s", self.url, partial.rejected_spans, redact(partial.error_message)
            )
        return partial.rejected_spans

    def _drop(self, spans: int, reason: str, detail: str) -> None:
        log.error("otlp exporter: dropped %d spans (%s): %s", spans, reason, detail)
        self._failed.add(spans, {"exporter": "otlp", "reason": reason})


def _error_text(answer: bytes, content_type: str) -> str:
    """The message of an error answer: OTLP receivers send a google.rpc.Status, in protobuf or JSON. Any known
    secret is taken out (a receiver may echo the token it refused)."""
    if content_type == "application/x-protobuf":
        return redact(_status_message(answer)) or f"<{len(answer)} bytes of protobuf>"
    return redact(answer[:2048].decode("utf-8", "replace"))


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
