"""The OTLP/HTTP trace exporter against a scripted in-test receiver (unit tests; real peers are tested elsewhere)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exporters.otlp_http import OtlpHttpTraceExporter
from exporters.retry import RetryPolicy

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_elapsed=2.0)
SENT = ("headwater_exporter_sent_spans", (("exporter", "otlp"),))


def failed(reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("headwater_exporter_failed_spans", (("exporter", "otlp"), ("reason", reason)))


def traces(n_spans: int = 2, service: str = "web") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    spans = rs.scope_spans.add().spans
    for i in range(n_spans):
        spans.add(trace_id=bytes(range(16)), span_id=bytes([i + 1]) * 8, name=f"{service}-{i}")
    return request


def span_names(request: ExportTraceServiceRequest) -> list[str]:
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def counter_values(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    """Every nonzero span counter point as {(name, sorted attributes): value} (the sender's own telemetry and
    the counters exported at 0 from the start are left out)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if not metric.name.startswith("headwater_exporter_"):
                    continue
                for point in metric.data.data_points:
                    if point.value:
                        out[(metric.name, tuple(sorted(point.attributes.items())))] = point.value
    return out


@dataclass
class Arrival:
    at: float
    headers: dict[str, str]
    raw: bytes  # as it came over the wire (the test server does not decompress)

    def request(self) -> ExportTraceServiceRequest:
        body = gzip.decompress(self.raw) if self.headers.get("Content-Encoding") == "gzip" else self.raw
        return ExportTraceServiceRequest.FromString(body)


Answer = Callable[[], Awaitable[web.Response]]


@dataclass
class Receiver:
    """A test double of an OTLP/HTTP receiver: answers POST /v1/traces from a script, records each arrival.

    When the script runs out it answers 200 with an empty ExportTraceServiceResponse.
    """

    script: list[Answer] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    url: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(Arrival(time.monotonic(), dict(request.headers), await request.read()))
        self.changed.set()
        if self.script:
            return await self.script.pop(0)()
        return ok()

    async def wait_for_arrivals(self, n: int, timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.arrivals) < n:
                self.changed.clear()
                await self.changed.wait()


def ok(body: bytes = b"") -> web.Response:
    return web.Response(status=200, body=body or ExportTraceServiceResponse().SerializeToString(),
                        content_type="application/x-protobuf")


def status(code: int, headers: dict[str, str] | None = None) -> Answer:
    async def answer() -> web.Response:
        return web.Response(status=code, headers=headers, text=f"status {code}")

    return answer


@asynccontextmanager
async def receiver(*script: Answer) -> AsyncIterator[Receiver]:
    double = Receiver(list(script))
    app = web.Application()
    app.router.add_post("/v1/traces", double.handle)
    runner = web.AppRunner(app, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    double.url = f"http://{host}:{port}/"
    try:
        yield double
    finally:
        await runner.cleanup()


def exporter_with_reader(url: str, **kwargs: object) -> tuple[OtlpHttpTraceExporter, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    options: dict[str, object] = {"headers": {}, "compression": "none", "timeout": 2.0, "retry": FAST}
    options.update(kwargs)
    return OtlpHttpTraceExporter(url, meter=meter, **options), reader  # type: ignore[arg-type]


def test_the_request_arrives_as_protobuf_with_the_same_spans_and_configured_headers() -> None:
    async def scenario() -> None:
        async with receiver() as rx:
            exporter, reader = exporter_with_reader(rx.url, headers={"X-Scope-OrgID": "tenant-a"})
            await exporter.start()
            await exporter.consume_traces(traces(3))
            await exporter.shutdown(timeout=3)
        [arrival] = rx.arrivals
        assert arrival.headers["Content-Type"] == "application/x-protobuf"
        assert arrival.headers["X-Scope-OrgID"] == "tenant-a"
        assert "Content-Encoding" not in arrival.headers
        assert arrival.request() == traces(3)
        assert counter_values(reader) == {SENT: 3}

    asyncio.run(scenario())


def test_the_body_is_gzipped_when_compression_is_gzip() -> None:
    async def scenario() -> None:
        async with receiver() as rx:
            exporter, _ = exporter_with_reader(rx.url, compression="gzip")
            await exporter.start()
            await exporter.consume_traces(traces(3))
            await exporter.shutdown(timeout=3)
        [arrival] = rx.arrivals
        assert arrival.headers["Content-Encoding"] == "gzip"
        assert arrival.raw[:2] == b"\x1f\x8b"
        assert arrival.request() == traces(3)

    asyncio.run(scenario())


def test_a_503_with_retry_after_is_retried_once_after_the_asked_wait_and_delivered_once() -> None:
    async def scenario() -> None:
        async with receiver(status(503, {"Retry-After": "1"})) as rx:
            exporter, reader = exporter_with_reader(rx.url)
            await exporter.start()
            await exporter.consume_traces(traces(2))
            await rx.wait_for_arrivals(2)
            await exporter.shutdown(timeout=3)
        assert len(rx.arrivals) == 2
        assert rx.arrivals[1].at - rx.arrivals[0].at >= 0.95
        assert rx.arrivals[1].request() == traces(2)
        assert counter_values(reader) == {SENT: 2}

    asyncio.run(scenario())


def test_a_400_is_dropped_and_counted_without_a_retry() -> None:
    async def scenario() -> None:
        async with receiver(status(400)) as rx:
            exporter, reader = exporter_with_reader(rx.url)
            await exporter.start()
            await exporter.consume_traces(traces(2))
            await exporter.shutdown(timeout=3)
        assert len(rx.arrivals) == 1
        assert counter_values(reader) == {failed("rejected"): 2}

    asyncio.run(scenario())


def test_a_retryable_error_that_outlasts_max_elapsed_is_dropped_and_counted() -> None:
    async def scenario() -> None:
        async with receiver(*[status(502)] * 100) as rx:
            exporter, reader = exporter_with_reader(
                rx.url, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_elapsed=0.2)
            )
            await exporter.start()
            await exporter.consume_traces(traces(2))
            await exporter.shutdown(timeout=3)
        assert len(rx.arrivals) > 1
        assert counter_values(reader) == {failed("retries_exhausted"): 2}

    asyncio.run(scenario())


def test_an_unreachable_endpoint_is_retried_then_dropped_and_counted() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the exporter connects: nothing listens there

    async def scenario() -> None:
        exporter, reader = exporter_with_reader(
            f"http://127.0.0.1:{port}", retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_elapsed=0.1)
        )
        await exporter.start()
        await exporter.consume_traces(traces(1))
        await exporter.shutdown(timeout=3)
        assert counter_values(reader) == {failed("retries_exhausted"): 1}

    asyncio.run(scenario())


def test_spans_a_partial_success_rejects_are_counted_as_failed_and_the_rest_as_sent() -> None:
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = 1
    response.partial_success.error_message = "span too old"

    async def answer() -> web.Response:
        return ok(response.SerializeToString())

    async def scenario() -> None:
        async with receiver(answer) as rx:
            exporter, reader = exporter_with_reader(rx.url)
            await exporter.start()
            await exporter.consume_traces(traces(3))
            await exporter.shutdown(timeout=3)
        assert counter_values(reader) == {SENT: 2, failed("partial_success"): 1}

    asyncio.run(scenario())


def test_shutdown_delivers_what_is_queued() -> None:
    async def scenario() -> None:
        async with receiver() as rx:
            exporter, reader = exporter_with_reader(rx.url, max_concurrency=2)
            await exporter.start()
            for service in ("a", "b", "c", "d", "e"):
                await exporter.consume_traces(traces(2, service))
            await exporter.shutdown(timeout=3)
            assert exporter.queued_bytes == 0
        delivered = sorted(name for arrival in rx.arrivals for name in span_names(arrival.request()))
        assert delivered == sorted(name for s in "abcde" for name in span_names(traces(2, s)))
        assert counter_values(reader) == {SENT: 10}

    asyncio.run(scenario())


def test_small_queued_requests_are_merged_into_one_post() -> None:
    async def scenario() -> None:
        async with receiver() as rx:
            exporter, _ = exporter_with_reader(rx.url)
            for service in ("a", "b", "c"):
                await exporter.consume_traces(traces(1, service))
            await exporter.start()
            await exporter.shutdown(timeout=3)
        [arrival] = rx.arrivals
        merged = arrival.request()
        assert [rs.resource.attributes[0].value.string_value for rs in merged.resource_spans] == ["a", "b", "c"]

    asyncio.run(scenario())


def test_a_merged_post_never_passes_the_span_limit() -> None:
    async def scenario() -> None:
        async with receiver() as rx:
            exporter, _ = exporter_with_reader(rx.url, max_batch_spans=2)
            for service in ("a", "b", "c"):
                await exporter.consume_traces(traces(1, service))
            await exporter.start()
            await exporter.shutdown(timeout=3)
        assert sorted(len(span_names(a.request())) for a in rx.arrivals) == [1, 2]

    asyncio.run(scenario())


def test_queued_bytes_grows_by_the_serialized_size_until_sent() -> None:
    async def scenario() -> None:
        async with receiver() as rx:
            exporter, _ = exporter_with_reader(rx.url)
            await exporter.consume_traces(traces(2))
            assert exporter.queued_bytes == traces(2).ByteSize()
            await exporter.start()
            await exporter.shutdown(timeout=3)
            assert exporter.queued_bytes == 0

    asyncio.run(scenario())


def test_shutdown_cancels_a_send_that_outlasts_its_timeout_and_counts_it_failed() -> None:
    release = asyncio.Event()

    async def hang() -> web.Response:
        await release.wait()
        return ok()

    async def scenario() -> None:
        async with receiver(hang) as rx:
            exporter, reader = exporter_with_reader(rx.url, timeout=30.0)
            await exporter.start()
            await exporter.consume_traces(traces(2))
            await rx.wait_for_arrivals(1)
            started = time.monotonic()
            await exporter.shutdown(timeout=0.1)
            assert time.monotonic() - started < 1.0
            assert counter_values(reader) == {failed("shutdown_timeout"): 2}
            assert exporter.queued_bytes == 0
            release.set()

    asyncio.run(scenario())


def test_shutdown_without_start_and_twice_is_safe_and_counts_what_was_never_sent() -> None:
    async def scenario() -> None:
        idle, reader = exporter_with_reader("http://127.0.0.1:9")
        await idle.consume_traces(traces(2))
        await idle.shutdown(timeout=1)
        await idle.shutdown(timeout=1)
        assert counter_values(reader) == {failed("not_started"): 2}
        async with receiver() as rx:
            started, _ = exporter_with_reader(rx.url)
            await started.start()
            await started.shutdown(timeout=1)
            await started.shutdown(timeout=1)

    asyncio.run(scenario())


def test_data_consumed_after_shutdown_is_dropped_and_counted() -> None:
    async def scenario() -> None:
        exporter, reader = exporter_with_reader("http://127.0.0.1:9")
        await exporter.shutdown(timeout=1)
        await exporter.consume_traces(traces(3))
        assert counter_values(reader) == {failed("shut_down"): 3}

    asyncio.run(scenario())


def test_consume_never_mutates_the_request() -> None:
    request = traces(2)
    before = request.SerializeToString()

    async def scenario() -> None:
        async with receiver() as rx:
            exporter, _ = exporter_with_reader(rx.url)
            await exporter.start()
            await exporter.consume_traces(request)
            await exporter.shutdown(timeout=3)

    asyncio.run(scenario())
    assert request.SerializeToString() == before


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"endpoint": "127.0.0.1:4318"}, "endpoint"),
        ({"compression": "zstd"}, "compression"),
        ({"timeout": 0}, "timeout"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_invalid_settings_are_refused_naming_the_argument(kwargs: dict[str, object], argument: str) -> None:
    options: dict[str, object] = {"endpoint": "http://127.0.0.1:4318", "headers": {}, "compression": "none",
                                  "timeout": 1.0, "retry": FAST}
    options.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        OtlpHttpTraceExporter(**options)  # type: ignore[arg-type]
