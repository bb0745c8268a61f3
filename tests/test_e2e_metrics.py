"""End to end: metrics recorded with the OpenTelemetry Python SDK go through the agent into a real Prometheus
2.42 over remote write 1.0, and PromQL returns the values sent."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


def metrics_pipeline(prometheus) -> dict:
    return {
        "exporters": {"remote_write": [{
            "name": "prom", "url": prometheus.remote_write_url,
            "batch": {"flush_interval": "200ms"},
            "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "1s"}},
        }]},
        "pipelines": {"metrics": {"exporters": ["prom"]}},
    }


def record(exporter, service: str) -> None:
    resource = Resource.create({"service.name": service, "service.instance.id": "node-1"})
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("e2e.meter", "1.2.3")
    requests = meter.create_counter("http.server.requests", unit="{request}")
    requests.add(3, {"route": "/a"})
    requests.add(4, {"route": "/a"})
    requests.add(5, {"route": "/b"})
    depth = meter.create_up_down_counter("queue.depth", unit="{item}")
    depth.add(10)
    depth.add(-3)
    temperature = meter.create_gauge("room.temperature", unit="Cel")
    temperature.set(21.5)
    meter.create_observable_gauge("disk.used", unit="By", callbacks=[lambda _o: [Observation(2048)]])
    assert provider.force_flush(10_000)
    provider.shutdown()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sdk_metrics_are_queryable_in_prometheus_with_the_values_sent(transport, prometheus, start_agent):
    agent = start_agent(extra_config=metrics_pipeline(prometheus))
    service = f"metrics-e2e-{transport}"
    if transport == "http":
        exporter = HttpMetricExporter(endpoint=agent.http_url + "/v1/metrics", timeout=10)
    else:
        exporter = GrpcMetricExporter(endpoint=agent.grpc_endpoint, insecure=True, timeout=10)
    record(exporter, service)
    agent.stop_cleanly()  # SIGTERM: the pending remote-write batch is delivered before exit 0

    selector = f'job="{service}",instance="node-1"'
    [series] = prometheus.wait_for_query(f'http_server_requests_total{{{selector},route="/a"}}', lambda r: len(r) == 1, timeout=20)
    assert float(series["value"][1]) == 7
    assert series["metric"]["otel_scope_name"] == "e2e.meter"
    assert series["metric"]["otel_scope_version"] == "1.2.3"
    [b] = prometheus.query(f'http_server_requests_total{{{selector},route="/b"}}')
    assert float(b["value"][1]) == 5
    [total] = prometheus.query(f"sum(http_server_requests_total{{{selector}}})")
    assert float(total["value"][1]) == 12
    [depth] = prometheus.query(f"queue_depth{{{selector}}}")
    assert float(depth["value"][1]) == 7
    [temp] = prometheus.query(f'{{__name__=~"room_temperature.*",{selector}}}')
    assert float(temp["value"][1]) == 21.5
    [disk] = prometheus.query(f"disk_used_bytes{{{selector}}}")
    assert float(disk["value"][1]) == 2048


@pytest.mark.parametrize("native", [False, True], ids=["classic-fallback", "native"])
def test_sdk_histograms_through_the_agent_answer_histogram_quantile_and_rate(native, tmp_path, start_agent):
    """An explicit and an exponential histogram recorded twice by the SDK: classic buckets for the explicit one;
    the exponential one as a native histogram where Prometheus runs with the feature, else as classic buckets."""
    import time

    from opentelemetry.sdk.metrics.view import (
        ExplicitBucketHistogramAggregation,
        ExponentialBucketHistogramAggregation,
        View,
    )

    from tests.peers.prometheus import PrometheusServer

    flags = ("--enable-feature=native-histograms",) if native else ()
    with PrometheusServer(tmp_path / "prometheus", extra_flags=flags) as prometheus:
        config = metrics_pipeline(prometheus)
        config["exporters"]["remote_write"][0]["native_histograms"] = native
        agent = start_agent(extra_config=config)
        resource = Resource.create({"service.name": "hist-e2e", "service.instance.id": "node-1"})
        reader = PeriodicExportingMetricReader(HttpMetricExporter(endpoint=agent.http_url + "/v1/metrics"),
                                               export_interval_millis=3_600_000)
        views = [View(instrument_name="payload.size", aggregation=ExponentialBucketHistogramAggregation()),
                 View(instrument_name="request.latency", aggregation=ExplicitBucketHistogramAggregation(
                     (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)))]
        provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
        meter = provider.get_meter("hist")
        latency = meter.create_histogram("request.latency", unit="s")
        size = meter.create_histogram("payload.size", unit="By")
        for _ in range(2):  # two exports 2 s apart, so rate() has two points per series
            for v in (0.003, 0.02, 0.02, 0.2, 0.7, 3.0):
                latency.record(v)
            for v in (100, 200, 300, 400, 5000):
                size.record(v)
            assert provider.force_flush(10_000)
            time.sleep(2.0)
        provider.shutdown()
        agent.stop_cleanly()

        sel = 'job="hist-e2e",instance="node-1"'
        [count] = prometheus.wait_for_query(f"request_latency_seconds_count{{{sel}}}", lambda r: len(r) == 1, timeout=20)
        assert float(count["value"][1]) == 12
        [total] = prometheus.query(f"request_latency_seconds_sum{{{sel}}}")
        assert abs(float(total["value"][1]) - 2 * 3.943) < 1e-9
        [p50] = prometheus.query(f"histogram_quantile(0.5, sum by (le) (rate(request_latency_seconds_bucket{{{sel}}}[1m])))")
        assert 0.01 < float(p50["value"][1]) <= 0.025  # ranks 3 and 4 of 6 are 0.02 and 0.2: bucket (0.01, 0.025]
        [rate] = prometheus.query(f"rate(request_latency_seconds_count{{{sel}}}[1m])")
        assert float(rate["value"][1]) > 0
        if native:
            [n] = prometheus.query(f"histogram_count(payload_size_bytes{{{sel}}})")
            assert float(n["value"][1]) == 10
            [s] = prometheus.query(f"histogram_sum(payload_size_bytes{{{sel}}})")
            assert float(s["value"][1]) == 2 * 6000
            [q] = prometheus.query(f"histogram_quantile(0.5, payload_size_bytes{{{sel}}})")
            assert 180 < float(q["value"][1]) < 330
        else:
            [n] = prometheus.query(f"payload_size_bytes_count{{{sel}}}")
            assert float(n["value"][1]) == 10
            [q] = prometheus.query(f"histogram_quantile(0.5, payload_size_bytes_bucket{{{sel}}})")
            assert 180 < float(q["value"][1]) < 330
