"""A real OTLP/HTTP trace receiver for tests, and the span records both it and the file exporter decode to.

Use it as a context manager; it serves on 127.0.0.1 on a port the OS picks, from its own thread and event
loop, so synchronous tests can use it:

    with OtlpSink() as sink:
        ...point an exporter at sink.url (the agent appends /v1/traces)...
        spans = sink.wait_for_span_ids(expected_ids, timeout=30)

Every ExportTraceServiceRequest POSTed to /v1/traces as protobuf (optionally gzip) is recorded and answered
200 with an empty ExportTraceServiceResponse. A body it cannot decode is answered 400 (unsupported content
type 415) and recorded in `sink.rejections`, so a test failure can say what the sender did wrong.

`SpanRecord` is what tests compare: IDs as lowercase hex, the name, the service name and the attributes with
their OTLP types (`("int", 3)` differs from `("double", 3.0)` and from `("bool", True)`).
`spans_from_request`, `spans_from_otlp_json` and `read_jsonl_spans` build records from protobuf, from
OTLP/JSON and from the file exporter's output; `typed_attributes` builds them from the values a client sent.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PROTOBUF = "application/x-protobuf"
_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()

TypedValue = tuple[str, Any]
"""An attribute value tagged with its OTLP type: string, int, double, bool, bytes, array, kvlist or empty."""


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, order=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service_name: str
    attributes: tuple[tuple[str, TypedValue], ...]
    """Sorted by key, so equal attribute sets compare equal whatever order they were sent in."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.trace_id, self.span_id)

    def attribute_dict(self) -> dict[str, TypedValue]:
        return dict(self.attributes)


def typed_value(value: Any) -> TypedValue:
    """The OTLP type a client SDK gives a Python value (as json.loads or an SDK's attributes hold it)."""
    if isinstance(value, bool):  # before int: bool is an int in Python
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("double", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, bytes):
        return ("bytes", value)
    if isinstance(value, (list, tuple)):
        return ("array", tuple(typed_value(v) for v in value))
    if isinstance(value, Mapping):
        return ("kvlist", tuple(sorted((k, typed_value(v)) for k, v in value.items())))
    raise TypeError(f"no OTLP type for {value!r}")


def typed_attributes(attributes: Mapping[str, Any]) -> tuple[tuple[str, TypedValue], ...]:
    return tuple(sorted((key, typed_value(value)) for key, value in attributes.items()))


def typed_value_from_proto(value: AnyValue) -> TypedValue:
    kind = value.WhichOneof("value")
    if kind is None:
        return ("empty", None)
    if kind == "string_value":
        return ("string", value.string_value)
    if kind == "int_value":
        return ("int", value.int_value)
    if kind == "double_value":
        return ("double", value.double_value)
    if kind == "bool_value":
        return ("bool", value.bool_value)
    if kind == "bytes_value":
        return ("bytes", value.bytes_value)
    if kind == "array_value":
        return ("array", tuple(typed_value_from_proto(v) for v in value.array_value.values))
    if kind == "kvlist_value":
        return ("kvlist", tuple(sorted((kv.key, typed_value_from_proto(kv.value)) for kv in value.kvlist_value.values)))
    raise ValueError(f"unknown AnyValue field {kind!r}")


def typed_value_from_json(value: Mapping[str, Any]) -> TypedValue:
    """OTLP/JSON AnyValue: int64 may be a JSON string or number; bytes are base64."""
    if not value:
        return ("empty", None)
    ((kind, inner),) = value.items()
    if kind == "stringValue":
        return ("string", inner)
    if kind == "intValue":
        return ("int", int(inner))
    if kind == "doubleValue":
        return ("double", float(inner))
    if kind == "boolValue":
        return ("bool", inner)
    if kind == "bytesValue":
        return ("bytes", base64.b64decode(inner))
    if kind == "arrayValue":
        return ("array", tuple(typed_value_from_json(v) for v in inner.get("values", [])))
    if kind == "kvlistValue":
        return (
            "kvlist",
            tuple(sorted((kv["key"], typed_value_from_json(kv.get("value", {}))) for kv in inner.get("values", []))),
        )
    raise ValueError(f"unknown OTLP/JSON AnyValue field {kind!r}")


def spans_from_request(request: ExportTraceServiceRequest) -> list[SpanRecord]:
    records = []
    for resource_spans in request.resource_spans:
        service = ""
        for kv in resource_spans.resource.attributes:
            if kv.key == "service.name":
                service = kv.value.string_value
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        service_name=service,
                        attributes=tuple(sorted((kv.key, typed_value_from_proto(kv.value)) for kv in span.attributes)),
                    )
                )
    return records


def spans_from_otlp_json(document: Mapping[str, Any]) -> list[SpanRecord]:
    """One OTLP/JSON ExportTraceServiceRequest (camelCase keys, hex IDs)."""
    records = []
    for resource_spans in document.get("resourceSpans", []):
        service = ""
        for kv in resource_spans.get("resource", {}).get("attributes", []):
            if kv["key"] == "service.name":
                service = kv["value"].get("stringValue", "")
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                records.append(
                    SpanRecord(
                        trace_id=span.get("traceId", "").lower(),
                        span_id=span.get("spanId", "").lower(),
                        parent_span_id=span.get("parentSpanId", "").lower(),
                        name=span.get("name", ""),
                        service_name=service,
                        attributes=tuple(
                            sorted((kv["key"], typed_value_from_json(kv.get("value", {}))) for kv in span.get("attributes", []))
                        ),
                    )
                )
    return records


def read_jsonl_spans(path: str | Path) -> list[SpanRecord]:
    """Every span in a file of one OTLP/JSON request per line. A last line still being written is ignored;
    any other line that is not valid JSON raises."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    complete = text.split("\n")[:-1]  # text after the last newline is a line still being written
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path}:{number} is not JSON ({exc}): {line[:200]!r}") from None
        records.extend(spans_from_otlp_json(document))
    return records


def wait_for_file_spans(path: str | Path, span_keys: Iterable[tuple[str, str]], timeout: float) -> list[SpanRecord]:
    """Poll `path` until every (trace_id, span_id) in `span_keys` is in it; return the records of those
    traces (duplicates included). Raises AssertionError naming what is missing after `timeout` seconds."""
    wanted = set(span_keys)
    trace_ids = {trace_id for trace_id, _ in wanted}
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in read_jsonl_spans(path) if r.trace_id in trace_ids]
        missing = wanted - {r.key for r in records}
        if not missing:
            return records
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} spans not in {path} after {timeout}s: {sorted(missing)[:5]}"
            )
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- the sink


@dataclass(frozen=True)
class ReceivedRequest:
    headers: dict[str, str]
    wire_bytes: int
    request: ExportTraceServiceRequest


class OtlpSink:
    """An OTLP/HTTP protobuf trace receiver on 127.0.0.1, served from a background thread."""

    def __init__(self, max_body_size: int = 64 << 20) -> None:
        self._max_body_size = max_body_size
        self._cond = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._spans: list[SpanRecord] = []
        self.rejections: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # lifecycle

    def start(self) -> OtlpSink:
        if self._thread is not None:
            raise RuntimeError("OtlpSink already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-sink", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; safe without start and safe twice."""
        if self._thread is None or self._loop is None:
            return
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._thread = self._loop = self._runner = None

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, as an OTLP exporter's `endpoint` takes it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return f"{self.url}/v1/traces"

    # what arrived

    def requests(self) -> list[ReceivedRequest]:
        with self._cond:
            return list(self._requests)

    def spans(self) -> list[SpanRecord]:
        with self._cond:
            return list(self._spans)

    def wait_for_span_count(self, count: int, timeout: float) -> list[SpanRecord]:
        """Block until at least `count` spans arrived; return all spans received so far."""
        return self._wait(lambda spans: len(spans) >= count, timeout, lambda spans: f"{len(spans)} of {count} spans")

    def wait_for_trace_ids(self, trace_ids: Iterable[str], timeout: float) -> list[SpanRecord]:
        """Block until a span of each trace arrived; return every span received of those traces."""
        wanted = set(trace_ids)
        return self._wait_for(wanted, lambda r: r.trace_id, wanted, timeout, "traces")

    def wait_for_span_ids(self, span_keys: Iterable[tuple[str, str]], timeout: float) -> list[SpanRecord]:
        """Block until every (trace_id, span_id) arrived; return every span received of those traces
        (duplicates included, so a test can assert there are none)."""
        wanted = set(span_keys)
        return self._wait_for(wanted, lambda r: r.key, {t for t, _ in wanted}, timeout, "spans")

    def _wait_for(self, wanted: set, key_of, trace_ids: set[str], timeout: float, what: str) -> list[SpanRecord]:
        def missing(spans: list[SpanRecord]) -> set:
            return wanted - {key_of(r) for r in spans}

        spans = self._wait(
            lambda spans: not missing(spans),
            timeout,
            lambda spans: f"{len(wanted) - len(missing(spans))} of {len(wanted)} {what}; missing {sorted(missing(spans))[:5]}",
        )
        return [r for r in spans if r.trace_id in trace_ids]

    def _wait(self, done, timeout: float, describe) -> list[SpanRecord]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self._spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    rejected = f"; rejected requests: {self.rejections[:3]}" if self.rejections else ""
                    raise AssertionError(f"the sink received {describe(self._spans)} after {timeout}s{rejected}")
                self._cond.wait(remaining)
            return list(self._spans)

    # serving

    async def _serve(self) -> None:
        app = web.Application(client_max_size=self._max_body_size)
        app.router.add_post("/v1/traces", self._handle_traces)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)  # decode ourselves, count wire bytes
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle_traces(self, http_request: web.Request) -> web.Response:
        body = await http_request.read()
        wire_bytes = len(body)
        content_type = http_request.content_type
        if content_type != PROTOBUF:
            return self._reject(415, f"Content-Type {content_type!r}, expected {PROTOBUF!r}")
        encoding = http_request.headers.get("Content-Encoding", "identity").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("identity", ""):
                return self._reject(415, f"Content-Encoding {encoding!r}")
            request = ExportTraceServiceRequest.FromString(body)
        except (OSError, EOFError, zlib.error, DecodeError) as exc:
            return self._reject(400, f"undecodable body ({encoding}, {wire_bytes} bytes): {exc}")
        received = ReceivedRequest(dict(http_request.headers), wire_bytes, request)
        spans = spans_from_request(request)
        with self._cond:
            self._requests.append(received)
            self._spans.extend(spans)
            self._cond.notify_all()
        return web.Response(body=_EMPTY_RESPONSE, content_type=PROTOBUF)

    def _reject(self, status: int, reason: str) -> web.Response:
        with self._cond:
            self.rejections.append(reason)
            self._cond.notify_all()
        return web.Response(status=status, text=reason)
