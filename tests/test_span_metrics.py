"""agent/span_metrics.py: the aggregator's series as OTLP metrics named like the Collector's spanmetrics
connector, flushed on a timer and at shutdown. Async tests run with `asyncio.run` inside plain functions."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agent.span_metrics import SpanMetrics, build_requests
from exporters.remote_write.translate import translate
from samplers.red import RedAggregator
from tests.test_samplers_red import MS, SHOP, observe, request, span

BUCKETS = (0.005, 0.010, 0.100)
CREATED = 1_700_000_000.0
NOW = 1_700_000_060.0
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


class Recorder:
    """A metrics pipeline that keeps what it is given; `fail` makes it raise instead."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.fail: Exception | None = None
        self.arrived = asyncio.Event()

    async def consume(self, request: ExportMetricsServiceRequest) -> None:
        if self.fail is not None:
            raise self.fail
        self.requests.append(request)
        self.arrived.set()


def aggregator(**kwargs) -> RedAggregator:
    return RedAggregator(BUCKETS, clock=lambda: CREATED, **kwargs)


def attributes(point) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


def test_a_flush_sends_calls_and_a_duration_histogram_in_ms_per_series_cumulative_since_creation():
    red = aggregator(dimensions=("http.route",))
    observe(red, request((SHOP, [span(duration_ns=2 * MS, attributes={"http.route": "/a"}),
                                 span(duration_ns=50 * MS, attributes={"http.route": "/a"}),
                                 span(error=True, duration_ns=200 * MS, attributes={"http.route": "/a"})])))
    recorder = Recorder()
    metrics = SpanMetrics(red, recorder.consume, flush_interval=5.0, clock=lambda: NOW)
    assert asyncio.run(metrics.flush()) is True

    [sent] = recorder.requests
    [rm] = sent.resource_metrics
    assert attributes(rm.resource) == {"service.name": "shop", "service.namespace": "prod",
                                       "service.instance.id": "node-1"}
    [sm] = rm.scope_metrics
    assert sm.scope.name == "headwater.span_metrics"
    calls, duration = sm.metrics
    assert (calls.name, calls.unit) == ("traces.span.metrics.calls", "")
    assert calls.sum.is_monotonic and calls.sum.aggregation_temporality == CUMULATIVE
    assert (duration.name, duration.unit) == ("traces.span.metrics.duration", "ms")
    assert duration.histogram.aggregation_temporality == CUMULATIVE

    ok, error = sorted(calls.sum.data_points, key=lambda p: attributes(p)["status.code"], reverse=True)
    assert attributes(ok) == {"service.name": "shop", "span.name": "GET /a", "span.kind": "SPAN_KIND_SERVER",
                              "status.code": "STATUS_CODE_UNSET", "http.route": "/a"}
    assert attributes(error)["status.code"] == "STATUS_CODE_ERROR"
    assert (ok.as_int, error.as_int) == (2, 1)
    assert ok.start_time_unix_nano == int(CREATED * 1e9) and ok.time_unix_nano == int(NOW * 1e9)

    h_ok = next(p for p in duration.histogram.data_points if attributes(p) == attributes(ok))
    assert list(h_ok.explicit_bounds) == [5.0, 10.0, 100.0]
    assert list(h_ok.bucket_counts) == [1, 0, 1, 0]
    assert h_ok.count == 2
    assert h_ok.sum == pytest.approx(52.0)
    assert h_ok.start_time_unix_nano == int(CREATED * 1e9) and h_ok.time_unix_nano == int(NOW * 1e9)


def test_each_resource_identity_gets_its_own_resource_metrics_with_only_the_attributes_it_has():
    red = aggregator()
    observe(red, request((SHOP, [span()]), ({"service.name": "pay"}, [span(), span("x", Span.SPAN_KIND_CLIENT)])))
    recorder = Recorder()
    asyncio.run(SpanMetrics(red, recorder.consume, 5.0, clock=lambda: NOW).flush())
    [sent] = recorder.requests
    resources = {attributes(rm.resource)["service.name"]: rm for rm in sent.resource_metrics}
    assert attributes(resources["pay"].resource) == {"service.name": "pay"}
    assert len(resources["pay"].scope_metrics[0].metrics[0].sum.data_points) == 2
    assert len(resources["shop"].scope_metrics[0].metrics[0].sum.data_points) == 1


def test_calls_translate_to_the_prometheus_series_the_connector_gives_with_job_and_instance():
    red = aggregator()
    observe(red, request((SHOP, [span(), span(error=True)])))
    recorder = Recorder()
    asyncio.run(SpanMetrics(red, recorder.consume, 5.0, clock=lambda: NOW).flush())
    batch = translate(recorder.requests[0])
    samples = {labels: value for labels, value in zip(batch.labels, batch.values)
               if dict(labels)["__name__"] == "traces_span_metrics_calls_total"}
    assert samples == {
        (("__name__", "traces_span_metrics_calls_total"), ("instance", "node-1"), ("job", "prod/shop"),
         ("otel_scope_name", "headwater.span_metrics"), ("service_name", "shop"), ("span_kind", "SPAN_KIND_SERVER"),
         ("span_name", "GET /a"), ("status_code", code)): 1.0
        for code in ("STATUS_CODE_UNSET", "STATUS_CODE_ERROR")
    }


def test_an_overflow_series_carries_its_service_and_the_otel_overflow_attribute():
    red = aggregator(max_series=1)
    observe(red, request((SHOP, [span("a"), span("b"), span("c")])))
    recorder = Recorder()
    asyncio.run(SpanMetrics(red, recorder.consume, 5.0, clock=lambda: NOW).flush())
    points = recorder.requests[0].resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
    overflow = [p for p in points if "otel.metric.overflow" in attributes(p)]
    assert [(attributes(p), p.as_int) for p in overflow] == [
        ({"service.name": "shop", "otel.metric.overflow": True}, 2)]


def test_large_states_go_out_in_requests_of_at_most_max_points_series():
    red = aggregator()
    observe(red, request((SHOP, [span(f"n{i}") for i in range(7)]), ({"service.name": "pay"}, [span("p")])))
    requests = build_requests(red.snapshot(), [5.0, 10.0, 100.0], 1, 2, max_points=3)
    assert [sum(len(rm.scope_metrics[0].metrics[0].sum.data_points) for rm in r.resource_metrics)
            for r in requests] == [3, 3, 2]
    names = [attributes(p)["span.name"] for r in requests for rm in r.resource_metrics
             for p in rm.scope_metrics[0].metrics[0].sum.data_points]
    assert sorted(names) == sorted([f"n{i}" for i in range(7)] + ["p"])
    for r in requests:  # each histogram point pairs with a calls point
        for rm in r.resource_metrics:
            calls, duration = rm.scope_metrics[0].metrics
            assert len(calls.sum.data_points) == len(duration.histogram.data_points)


def test_nothing_is_sent_before_the_first_span():
    recorder = Recorder()
    assert asyncio.run(SpanMetrics(aggregator(), recorder.consume, 5.0).flush()) is True
    assert recorder.requests == []


def test_shutdown_flushes_the_final_totals_once_even_without_start_and_when_called_twice():
    red = aggregator()
    recorder = Recorder()
    metrics = SpanMetrics(red, recorder.consume, 5.0, clock=lambda: NOW)
    observe(red, request((SHOP, [span(), span()])))

    async def run() -> None:
        await metrics.shutdown(1.0)
        await metrics.shutdown(1.0)
        await metrics.start()  # after shutdown: stays stopped

    asyncio.run(run())
    assert len(recorder.requests) == 1
    assert recorder.requests[0].resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].as_int == 2
    assert metrics._task is None


def test_started_it_flushes_every_interval_and_shutdown_stops_the_timer_then_flushes():
    red = aggregator()
    recorder = Recorder()
    observe(red, request((SHOP, [span()])))

    async def run() -> None:
        metrics = SpanMetrics(red, recorder.consume, flush_interval=0.001, clock=lambda: NOW)
        await metrics.start()
        await metrics.start()  # twice: still one timer
        await asyncio.wait_for(recorder.arrived.wait(), 5.0)
        observe(red, request((SHOP, [span()])))
        await metrics.shutdown(1.0)
        assert metrics._task is None
        assert metrics.flushes == len(recorder.requests)

    asyncio.run(run())
    assert len(recorder.requests) >= 2
    last = recorder.requests[-1].resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert last.as_int == 2


def test_a_refused_flush_is_counted_and_logged_and_the_next_one_carries_the_same_totals(caplog):
    red = aggregator()
    recorder = Recorder()
    metrics = SpanMetrics(red, recorder.consume, 5.0, clock=lambda: NOW)
    observe(red, request((SHOP, [span()])))
    recorder.fail = RuntimeError("remote write exporter 'prom' is shut down")
    assert asyncio.run(metrics.flush()) is False
    assert metrics.failed_flushes == 1
    assert "span metrics flush failed" in caplog.text
    recorder.fail = None
    assert asyncio.run(metrics.flush()) is True
    assert recorder.requests[0].resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].as_int == 1


def test_the_timer_survives_a_failing_pipeline():
    red = aggregator()
    observe(red, request((SHOP, [span()])))

    class FailsOnce(Recorder):
        async def consume(self, request):
            if not self.fail_done:
                self.fail_done = True
                raise ConnectionError("boom")
            await super().consume(request)

    recorder = FailsOnce()
    recorder.fail_done = False

    async def run() -> None:
        metrics = SpanMetrics(red, recorder.consume, flush_interval=0.001)
        await metrics.start()
        await asyncio.wait_for(recorder.arrived.wait(), 5.0)
        await metrics.shutdown(1.0)
        assert metrics.failed_flushes == 1

    asyncio.run(run())


def test_a_final_flush_that_hangs_is_abandoned_at_the_timeout():
    red = aggregator()
    observe(red, request((SHOP, [span()])))

    async def run() -> SpanMetrics:
        never = asyncio.Event()

        async def hang(_request):
            await never.wait()

        metrics = SpanMetrics(red, hang, 5.0)
        await asyncio.wait_for(metrics.shutdown(0.01), 5.0)
        return metrics

    assert asyncio.run(run()).failed_flushes == 1


def test_time_never_precedes_the_start_time_even_when_the_clock_steps_back():
    red = aggregator()
    observe(red, request((SHOP, [span()])))
    recorder = Recorder()
    asyncio.run(SpanMetrics(red, recorder.consume, 5.0, clock=lambda: CREATED - 10).flush())
    point = recorder.requests[0].resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert point.time_unix_nano >= point.start_time_unix_nano


@pytest.mark.parametrize("interval", [0, -1.0])
def test_a_flush_interval_that_is_not_positive_is_refused(interval):
    with pytest.raises(ValueError, match="flush_interval"):
        SpanMetrics(aggregator(), Recorder().consume, interval)



def test_a_series_idle_past_idle_expiry_leaves_the_next_flush_and_comes_back_with_its_own_start_time():
    now = [NOW]
    red = RedAggregator(BUCKETS, idle_expiry=60.0, clock=lambda: now[0])
    recorder = Recorder()
    metrics = SpanMetrics(red, recorder.consume, flush_interval=5.0, clock=lambda: now[0])

    def flush_at(t: float) -> dict:
        now[0] = NOW + t
        asyncio.run(metrics.flush())
        points = recorder.requests[-1].resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
        return {attributes(p)["span.name"]: p for p in points}

    observe(red, request((SHOP, [span(name="old")])))
    assert set(flush_at(0)) == {"old"}
    observe(red, request((SHOP, [span(name="new")])))
    assert set(flush_at(30)) == {"old", "new"}
    assert set(flush_at(61)) == {"new"}  # "old": no span for 61 s
    assert metrics.expired_series == 1
    now[0] = NOW + 70
    observe(red, request((SHOP, [span(name="old")])))
    back = flush_at(75)["old"]
    assert back.as_int == 1 and back.start_time_unix_nano == int((NOW + 70) * 1e9)
