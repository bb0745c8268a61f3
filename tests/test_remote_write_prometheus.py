"""End to end with a real Prometheus 2.42: what the exporter sends is what PromQL returns.

Each test gets a fresh Prometheus (the `prometheus` fixture in conftest.py), feeds OTLP requests to a
RemoteWriteExporter pointed at it, shuts the exporter down (which flushes), then polls PromQL.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
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
from opentelemetry.sdk.resources import Resource as SdkResource

from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.retry import RetryPolicy
from tests.peers.prometheus import PrometheusServer


def text(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def one_metric_request(metric: Metric, service: str = "checkout") -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=[text("service.name", service)]),
                scope_metrics=[ScopeMetrics(metrics=[metric])],
            )
        ]
    )


def counter_request(name: str, value: int, time_unix_nano: int, service: str = "checkout") -> ExportMetricsServiceRequest:
    point = NumberDataPoint(time_unix_nano=time_unix_nano, start_time_unix_nano=time_unix_nano - 10**9, as_int=value)
    metric = Metric(
        name=name,
        sum=Sum(
            data_points=[point],
            is_monotonic=True,
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
        ),
    )
    return one_metric_request(metric, service)


class Counters:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter = MeterProvider(metric_readers=[self.reader]).get_meter("test")

    def value(self, name: str, **attributes: str) -> int:
        data = self.reader.get_metrics_data()
        return sum(
            point.value
            for rm in (data.resource_metrics if data else ())
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == f"headwater_remote_write_{name}"
            for point in metric.data.data_points
            if all(point.attributes.get(k) == v for k, v in attributes.items())
        )


def exporter_for(prometheus: PrometheusServer, counters: Counters, **overrides: object) -> RemoteWriteExporter:
    settings: dict[str, object] = dict(
        timeout=10.0,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.5, max_elapsed=10.0),
        max_samples=1000,
        max_bytes=4 << 20,
        flush_interval=5.0,
    )
    settings.update(overrides)
    return RemoteWriteExporter("prometheus", prometheus.remote_write_url, {}, meter=counters.meter, **settings)  # type: ignore[arg-type]


def scalar(result: list[dict]) -> float:
    (series,) = result
    return float(series["value"][1])


def test_metrics_recorded_with_the_opentelemetry_sdk_are_queryable_in_prometheus(
    prometheus: PrometheusServer,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=SdkResource.create({"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-7"}),
    )
    meter = provider.get_meter("io.shop.cart", "1.2.0")
    meter.create_counter("orders.placed", unit="{order}").add(5, {"payment.method": "card"})
    meter.create_up_down_counter("carts.open").add(3)
    meter.create_histogram("request.duration", unit="s").record(0.2)  # 16 buckets, _count and _sum
    request = encode_metrics(reader.get_metrics_data())
    counters = Counters()

    async def send() -> None:
        exporter = exporter_for(prometheus, counters)
        await exporter.start()
        await exporter.consume_metrics(request)
        await exporter.shutdown(timeout=10)

    asyncio.run(send())

    orders = prometheus.wait_for_query('orders_placed_total{job="shop/checkout"}')
    assert scalar(orders) == 5
    assert orders[0]["metric"] == {
        "__name__": "orders_placed_total",
        "job": "shop/checkout",
        "instance": "pod-7",
        "payment_method": "card",
        "otel_scope_name": "io.shop.cart",
        "otel_scope_version": "1.2.0",
    }
    assert scalar(prometheus.wait_for_query('carts_open{job="shop/checkout"}')) == 3
    # 2 samples, 18 of the histogram, and one target_info series.
    assert counters.value("samples_sent") == 21
    assert counters.value("samples_dropped") == 0


def test_a_gauge_and_a_monotonic_sum_reach_prometheus_under_their_translated_names(
    prometheus: PrometheusServer,
) -> None:
    now_ns = time.time_ns()
    gauge = Metric(
        name="queue.depth",
        unit="{item}",
        gauge=Gauge(data_points=[NumberDataPoint(time_unix_nano=now_ns, as_double=12.5, attributes=[text("queue", "q1")])]),
    )
    counters = Counters()

    async def send() -> None:
        exporter = exporter_for(prometheus, counters)
        await exporter.start()
        await exporter.consume_metrics(one_metric_request(gauge, service="worker"))
        await exporter.consume_metrics(counter_request("jobs.done", 42, now_ns, service="worker"))
        await exporter.shutdown(timeout=10)

    asyncio.run(send())

    assert scalar(prometheus.wait_for_query('jobs_done_total{job="worker"}')) == 42
    assert scalar(prometheus.wait_for_query('queue_depth{job="worker", queue="q1"}')) == 12.5
    assert counters.value("samples_sent", exporter="prometheus") == 2


def test_an_out_of_order_sample_refused_with_400_is_dropped_and_counted_not_retried(
    prometheus: PrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    now_ns = time.time_ns()
    counters = Counters()

    async def send() -> None:
        # Two flushes, so the older sample travels after the newer one in a request of its own (within one
        # flush the batcher would put them in time order).
        exporter = exporter_for(prometheus, counters, flush_interval=0.05)
        await exporter.start()
        await exporter.consume_metrics(counter_request("retries", 10, now_ns))
        while counters.value("samples_sent") < 1:
            await asyncio.sleep(0.01)
        await exporter.consume_metrics(counter_request("retries", 7, now_ns - 30 * 10**9))
        await exporter.shutdown(timeout=10)

    with caplog.at_level(logging.ERROR, logger="headwater.exporters.remote_write"):
        started = time.monotonic()
        asyncio.run(send())
        elapsed = time.monotonic() - started

    assert elapsed < 5, "a 400 must not be retried"
    assert counters.value("samples_sent") == 1
    assert counters.value("samples_dropped", exporter="prometheus", reason="rejected") == 1
    assert counters.value("requests", status="400") == 1
    assert counters.value("samples_failed") == 0
    assert any("out of order" in record.getMessage() for record in caplog.records)
    assert scalar(prometheus.wait_for_query('retries_total{job="checkout"}')) == 10
