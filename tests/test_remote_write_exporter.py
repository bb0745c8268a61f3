"""RemoteWriteExporter against a tiny in-test receiver: batching, headers, ordering, retries, shutdown, counters.

The receiver is an aiohttp app on a free local port that answers from a script and records what it got.
Async tests run with `asyncio.run` inside plain test functions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exporters.remote_write import rw1
from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.remote_write.proto.remote_write_v1_pb2 import WriteRequest
from exporters.retry import RetryPolicy
from exporters.sending.queue import QueueSettings
from exporters.sending.sender import SenderSettings
from tests.peers.prometheus import free_port

FAST_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_elapsed=5.0)
T0_NS = 1_700_000_000_000_000_000


# -- a scripted receiver ------------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    request: WriteRequest

    @property
    def samples(self) -> int:
        return sum(len(ts.samples) for ts in self.request.timeseries)


@dataclass
class Receiver:
    """Answers each POST with the next (status, body, headers) of `script`, then 204s; records every body."""

    script: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    async def handle(self, http_request: web.Request) -> web.Response:
        self.attempts += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await http_request.read()
            if self.delay:
                await asyncio.sleep(self.delay)
            status, text, headers = self.script.pop(0) if self.script else (204, "", {})
            if 200 <= status < 300:
                self.received.append(Received(dict(http_request.headers), rw1.decode(body)))
            return web.Response(status=status, text=text, headers=headers)
        finally:
            self.in_flight -= 1

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/api/v1/write", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/api/v1/write"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()

    def sample_counts(self) -> list[int]:
        return [r.samples for r in self.received]


# -- helpers ------------------------------------------------------------------------------------------------


def gauge_request(count: int, *, name: str = "g", start: int = 0, label_value: str = "") -> ExportMetricsServiceRequest:
    """`count` gauge points, each its own series (attribute i), timestamps one second apart."""
    points = [
        NumberDataPoint(
            time_unix_nano=T0_NS + (start + i) * 10**9,
            as_double=float(start + i),
            attributes=[KeyValue(key="i", value=AnyValue(string_value=f"{start + i}{label_value}"))],
        )
        for i in range(count)
    ]
    metric = Metric(name=name, gauge=Gauge(data_points=points))
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=Resource(), scope_metrics=[ScopeMetrics(metrics=[metric])])]
    )


class Counters:
    """Reads the exporter's counters from an in-memory SDK reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter = MeterProvider(metric_readers=[self.reader]).get_meter("test")

    def value(self, name: str, **attributes: str) -> int:
        data = self.reader.get_metrics_data()
        total = 0
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != f"headwater_remote_write_{name}":
                        continue
                    for point in metric.data.data_points:
                        if all(point.attributes.get(k) == v for k, v in attributes.items()):
                            total += point.value
        return total


def exporter(url: str, counters: Counters | None = None, **overrides: object) -> RemoteWriteExporter:
    settings: dict[str, object] = dict(
        name="test",
        url=url,
        headers={},
        timeout=5.0,
        retry=FAST_RETRY,
        max_samples=1000,
        max_bytes=1 << 20,
        flush_interval=60.0,
        wall_clock=lambda: T0_NS / 1e9 + 600.0,  # the test data is ten minutes old, well within sample_age_limit
    )
    settings.update(overrides)
    return RemoteWriteExporter(**settings, meter=(counters or Counters()).meter)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        await asyncio.sleep(0.005)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


# -- batching -----------------------------------------------------------------------------------------------


def test_a_flush_is_cut_into_requests_of_at_most_max_samples() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_samples=3, flush_interval=0.05)
            await exp.start()
            await exp.consume_metrics(gauge_request(7))
            await until(lambda: len(receiver.received) == 3)
            assert receiver.sample_counts() == [3, 3, 1]
            await exp.shutdown(timeout=5)

    run(scenario)


def test_the_samples_of_a_series_within_one_flush_go_in_one_request_when_the_limits_allow() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_samples=4)
            await exp.consume_metrics(gauge_request(4))  # series i=0..3 at t=0..3
            later = gauge_request(4)
            for point in later.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points:
                point.time_unix_nano += 60 * 10**9
            await exp.consume_metrics(later)  # the same four series, a minute later
            await exp.start()
            await exp.shutdown(timeout=5)
            assert receiver.sample_counts() == [4, 4]
            for received in receiver.received:
                assert [len(ts.samples) for ts in received.request.timeseries] == [2, 2]

    run(scenario)


def test_a_flush_too_large_to_hold_is_cut_before_its_interval_passes() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_samples=2)  # holds at most four requests' worth: 8 samples
            await exp.start()
            await exp.consume_metrics(gauge_request(9))
            await until(lambda: sum(receiver.sample_counts()) == 9)
            assert max(receiver.sample_counts()) <= 2
            await exp.shutdown(timeout=5)

    run(scenario)


def test_a_batch_is_cut_before_it_exceeds_max_bytes() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_bytes=600)
            await exp.start()
            await exp.consume_metrics(gauge_request(10, label_value="x" * 100))  # ~160 estimated bytes each
            await exp.shutdown(timeout=5)
            counts = receiver.sample_counts()
            assert sum(counts) == 10
            assert len(counts) > 1
            assert all(1 <= count <= 4 for count in counts)

    run(scenario)


def test_a_single_sample_larger_than_max_bytes_is_still_sent_alone() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_bytes=10)
            await exp.start()
            await exp.consume_metrics(gauge_request(2))
            await exp.shutdown(timeout=5)
            assert receiver.sample_counts() == [1, 1]

    run(scenario)


def test_flush_interval_sends_a_partial_batch_without_shutdown() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, flush_interval=0.05)
            await exp.start()
            await exp.consume_metrics(gauge_request(2))
            await until(lambda: receiver.sample_counts() == [2])
            await exp.shutdown(timeout=5)

    run(scenario)


def test_a_batch_waits_until_flush_interval_has_passed_on_the_injected_clock() -> None:
    async def scenario() -> None:
        now = [1000.0]
        async with Receiver() as receiver:
            exp = exporter(receiver.url, flush_interval=0.02, clock=lambda: now[0])
            await exp.start()
            await exp.consume_metrics(gauge_request(1))
            await asyncio.sleep(0.1)  # five flush intervals of real time, none on the clock
            assert receiver.received == []
            assert exp.queued_bytes > 0
            now[0] += 0.02
            await until(lambda: receiver.sample_counts() == [1])
            await exp.shutdown(timeout=5)

    run(scenario)


def test_queued_bytes_counts_pending_and_queued_samples_and_returns_to_zero_once_sent() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_samples=2, flush_interval=0.05)
            assert exp.queued_bytes == 0
            await exp.consume_metrics(gauge_request(3))  # not started: the flush is pending
            assert exp.queued_bytes > 0
            await exp.start()
            await until(lambda: len(receiver.received) == 2)
            # the receiver holds the request before its answer reaches the exporter: wait for the answer
            await until(lambda: exp.queued_bytes == 0)
            await exp.shutdown(timeout=5)
            assert exp.queued_bytes == 0
            assert receiver.sample_counts() == [2, 1]

    run(scenario)


# -- the wire -----------------------------------------------------------------------------------------------


def test_a_request_carries_the_remote_write_headers_and_the_configured_ones() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, headers={"X-Scope-OrgID": "tenant-a"})
            await exp.start()
            await exp.consume_metrics(gauge_request(1))
            await exp.shutdown(timeout=5)
            headers = receiver.received[0].headers
            assert headers["Content-Encoding"] == "snappy"
            assert headers["Content-Type"] == "application/x-protobuf"
            assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
            assert headers["User-Agent"] == "headwater/0.1.0"
            assert headers["X-Scope-OrgID"] == "tenant-a"

    run(scenario)


def test_samples_of_one_series_from_several_consumes_share_one_timeseries_in_timestamp_order() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url)
            await exp.start()
            for seconds in (3, 1, 2):
                point = NumberDataPoint(time_unix_nano=T0_NS + seconds * 10**9, as_double=float(seconds))
                await exp.consume_metrics(
                    ExportMetricsServiceRequest(
                        resource_metrics=[
                            ResourceMetrics(
                                scope_metrics=[ScopeMetrics(metrics=[Metric(name="g", gauge=Gauge(data_points=[point]))])]
                            )
                        ]
                    )
                )
            await exp.shutdown(timeout=5)
            (received,) = receiver.received
            (series,) = received.request.timeseries
            assert [s.value for s in series.samples] == [1.0, 2.0, 3.0]

    run(scenario)


def test_requests_are_sent_one_at_a_time_in_the_order_they_were_cut() -> None:
    async def scenario() -> None:
        async with Receiver(delay=0.02) as receiver:
            exp = exporter(receiver.url, max_samples=1)
            await exp.start()
            await exp.consume_metrics(gauge_request(5))
            await exp.shutdown(timeout=10)
            assert receiver.max_in_flight == 1
            firsts = [r.request.timeseries[0].samples[0].value for r in receiver.received]
            assert firsts == [0.0, 1.0, 2.0, 3.0, 4.0]

    run(scenario)


# -- outcomes -----------------------------------------------------------------------------------------------


def test_delivered_samples_are_counted_as_sent() -> None:
    counters = Counters()

    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, counters, max_samples=2)
            await exp.start()
            await exp.consume_metrics(gauge_request(3))
            await exp.shutdown(timeout=5)

    run(scenario)
    assert counters.value("samples_sent", exporter="test") == 3
    assert counters.value("requests", exporter="test", status="204") == 2
    assert counters.value("samples_failed") == 0


def test_a_4xx_answer_drops_the_request_at_once_counts_it_and_logs_the_receivers_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = Counters()

    async def scenario() -> None:
        async with Receiver(script=[(400, "out of order sample", {})]) as receiver:
            exp = exporter(receiver.url, counters, max_samples=2)
            await exp.start()
            await exp.consume_metrics(gauge_request(4))
            await exp.shutdown(timeout=5)
            assert receiver.attempts == 2
            assert receiver.sample_counts() == [2]

    with caplog.at_level(logging.ERROR, logger="headwater.exporters.remote_write"):
        run(scenario)
    assert counters.value("samples_dropped", exporter="test", reason="rejected") == 2
    assert counters.value("samples_sent", exporter="test") == 2
    assert counters.value("requests", status="400") == 1
    assert any("out of order sample" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_5xx_or_429_answer_is_retried_until_it_succeeds(status: int) -> None:
    counters = Counters()

    async def scenario() -> None:
        async with Receiver(script=[(status, "busy", {}), (status, "busy", {})]) as receiver:
            exp = exporter(receiver.url, counters)
            await exp.start()
            await exp.consume_metrics(gauge_request(2))
            await exp.shutdown(timeout=5)
            assert receiver.attempts == 3
            assert receiver.sample_counts() == [2]

    run(scenario)
    assert counters.value("samples_sent") == 2
    assert counters.value("requests", status=str(status)) == 2
    assert counters.value("requests", status="204") == 1


def test_a_request_that_keeps_failing_is_retried_until_its_data_passes_the_sample_age_limit_then_dropped() -> None:
    counters = Counters()
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_elapsed=0.0)  # max_elapsed: not for remote write
    now = [T0_NS / 1e9 + 10.0]

    async def scenario() -> None:
        async with Receiver(script=[(503, "down", {})] * 1000) as receiver:
            exp = exporter(receiver.url, counters, retry=retry, max_samples=2, flush_interval=0.05,
                           sender=SenderSettings(retry=retry, sample_age_limit=60.0), wall_clock=lambda: now[0])
            await exp.start()
            await exp.consume_metrics(gauge_request(2))
            await until(lambda: receiver.attempts > 3)
            assert counters.value("samples_dropped", reason="too_old") == 0
            now[0] += 60.0  # the samples are now more than a minute old
            await until(lambda: counters.value("samples_dropped", reason="too_old") == 2)
            await exp.shutdown(timeout=5)

    run(scenario)
    assert counters.value("samples_sent") == 0
    assert counters.value("samples_failed") == 0


def test_a_connection_error_is_retried_and_counted_as_a_request_without_status() -> None:
    counters = Counters()
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_elapsed=0.2)

    async def scenario() -> None:
        exp = exporter(f"http://127.0.0.1:{free_port()}/api/v1/write", counters, retry=retry)
        await exp.start()
        await exp.consume_metrics(gauge_request(3))
        await exp.shutdown(timeout=5)

    run(scenario)
    assert counters.value("requests", status="error") > 1
    assert counters.value("samples_failed") == 3


def test_untranslatable_points_are_counted_as_dropped_with_their_reason() -> None:
    counters = Counters()
    delta = Metric(
        name="d",
        sum=Sum(
            data_points=[NumberDataPoint(time_unix_nano=T0_NS, as_int=1)],
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
            is_monotonic=True,
        ),
    )
    request = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[delta])])])

    async def scenario() -> None:
        exp = exporter("http://127.0.0.1:9/api/v1/write", counters)
        await exp.consume_metrics(request)
        await exp.shutdown(timeout=1)

    run(scenario)
    assert counters.value("samples_dropped", exporter="test", reason="unsupported_delta_temporality") == 1


# -- a full queue -------------------------------------------------------------------------------------------


def test_requests_cut_when_the_queue_is_full_under_refuse_wait_for_room_and_none_is_dropped() -> None:
    # Receivers admit a request before they know what it translates to: what was admitted just before the
    # queue filled up waits in memory (and the exporter reports full meanwhile), it is not dropped.
    counters = Counters()

    async def scenario() -> None:
        async with Receiver(script=[(503, "down", {})] * 10_000) as receiver:
            exp = exporter(receiver.url, counters, max_samples=2, max_bytes=100, flush_interval=0.02,
                           queue=QueueSettings(max_memory=300, max_disk=0, when_full="refuse"))
            await exp.start()
            for start in range(0, 12, 2):  # a request of ~94 bytes each: the queue takes three
                await exp.consume_metrics(gauge_request(2, start=start))
                await asyncio.sleep(0.03)
            assert counters.value("samples_dropped", reason="queue_full") == 0
            assert exp.full
            assert exp.queued_bytes > 300
            receiver.script.clear()  # the receiver is back
            await until(lambda: sum(receiver.sample_counts()) == 12)
            assert not exp.full
            await exp.shutdown(timeout=5)
            timestamps = [s.timestamp for r in receiver.received for ts in r.request.timeseries for s in ts.samples]
            assert timestamps == sorted(timestamps)  # in the order they were cut

    run(scenario)
    assert counters.value("samples_dropped") == 0
    assert counters.value("samples_sent") == 12


def test_an_empty_queue_is_never_full_even_when_its_bounds_are_smaller_than_a_request() -> None:
    # queue.max_memory below batch.max_bytes: an empty queue still takes any request, so the receivers must
    # not be told to refuse metrics (they were, for ever).
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url, max_bytes=4 << 20,
                           queue=QueueSettings(max_memory=1 << 20, max_disk=0, when_full="refuse"))
            await exp.start()
            assert not exp.full
            await exp.consume_metrics(gauge_request(3))
            await exp.shutdown(timeout=5)
            assert receiver.sample_counts() == [3]

    run(scenario)


def test_past_what_may_wait_the_oldest_waiting_are_dropped_and_what_waits_at_shutdown_is_failed() -> None:
    counters = Counters()

    async def scenario() -> None:
        async with Receiver(script=[(503, "down", {})] * 1000) as receiver:
            exp = exporter(receiver.url, counters, max_samples=2, max_bytes=100, flush_interval=0.02,
                           queue=QueueSettings(max_memory=300, max_disk=0, when_full="refuse"))
            await exp.start()
            for start in range(0, 40, 2):
                await exp.consume_metrics(gauge_request(2, start=start))
                await asyncio.sleep(0.03)
            assert exp.full
            assert 0 < exp.queued_bytes <= 300 + 4 * 100 + 100  # the queue, what may wait, one more request
            await exp.shutdown(timeout=0.1)
            assert receiver.sample_counts() == []

    run(scenario)
    dropped, failed = counters.value("samples_dropped", reason="queue_full"), counters.value("samples_failed")
    assert dropped > 0 and failed > 0
    assert dropped + failed == 40  # every sample has its outcome


# -- lifecycle ----------------------------------------------------------------------------------------------


def test_shutdown_without_start_is_safe_and_so_is_a_second_shutdown() -> None:
    async def scenario() -> None:
        exp = exporter("http://127.0.0.1:9/api/v1/write")
        await exp.shutdown(timeout=1)
        await exp.shutdown(timeout=1)

    run(scenario)


def test_shutdown_after_start_twice_is_safe() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            exp = exporter(receiver.url)
            await exp.start()
            await exp.shutdown(timeout=1)
            await exp.shutdown(timeout=1)

    run(scenario)


def test_shutdown_gives_up_at_its_timeout_and_counts_what_is_left_as_failed() -> None:
    counters = Counters()
    slow_retry = RetryPolicy(initial_backoff=10.0, max_backoff=10.0, max_elapsed=300.0)

    async def scenario() -> None:
        async with Receiver(script=[(503, "down", {})] * 10) as receiver:
            exp = exporter(receiver.url, counters, retry=slow_retry, max_samples=2, flush_interval=0.05)
            await exp.start()
            await exp.consume_metrics(gauge_request(5))
            await until(lambda: receiver.attempts == 1)
            started = time.monotonic()
            await exp.shutdown(timeout=0.2)
            assert time.monotonic() - started < 2.0
            assert exp.queued_bytes == 0

    run(scenario)
    assert counters.value("samples_failed") == 5
    assert counters.value("samples_sent") == 0


def test_consume_after_shutdown_is_refused() -> None:
    async def scenario() -> None:
        exp = exporter("http://127.0.0.1:9/api/v1/write")
        await exp.shutdown(timeout=1)
        with pytest.raises(RuntimeError, match="shut down"):
            await exp.consume_metrics(gauge_request(1))

    run(scenario)


def test_consume_never_modifies_the_request() -> None:
    async def scenario() -> None:
        exp = exporter("http://127.0.0.1:9/api/v1/write")
        request = gauge_request(3)
        before = request.SerializeToString(deterministic=True)
        await exp.consume_metrics(request)
        assert request.SerializeToString(deterministic=True) == before
        await exp.shutdown(timeout=0)

    run(scenario)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"headers": {"Content-Encoding": "zstd"}}, "Content-Encoding"),
        ({"headers": {"x-prometheus-remote-write-version": "2.0.0"}}, "x-prometheus-remote-write-version"),
        ({"headers": {"User-Agent": "other"}}, "User-Agent"),
        ({"url": "ftp://host/write"}, "url"),
        ({"timeout": 0}, "timeout"),
        ({"max_samples": 0}, "max_samples"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"flush_interval": 0}, "flush_interval"),
    ],
)
def test_an_invalid_setting_is_refused_with_a_message_naming_it(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exporter(str(overrides.pop("url", "http://127.0.0.1:9/api/v1/write")), **overrides)


def test_a_translation_drop_is_logged_as_a_warning_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    delta = Metric(
        name="d",
        sum=Sum(
            data_points=[NumberDataPoint(time_unix_nano=T0_NS, as_int=1)],
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
        ),
    )
    request = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[delta])])])

    async def scenario() -> None:
        exp = exporter("http://127.0.0.1:9/api/v1/write")
        for _ in range(3):
            await exp.consume_metrics(request)
        await exp.shutdown(timeout=0)

    with caplog.at_level(logging.DEBUG, logger="headwater.exporters.remote_write"):
        run(scenario)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unsupported_delta" in r.getMessage()]
    assert len(warnings) == 1


def test_the_exporter_satisfies_the_component_and_consumer_protocols() -> None:
    from agent.component import Component, MetricConsumer, Queued

    exp = exporter("http://127.0.0.1:9/api/v1/write")
    assert isinstance(exp, Component)
    consumer: MetricConsumer = exp
    queued: Queued = exp
    assert consumer is queued
