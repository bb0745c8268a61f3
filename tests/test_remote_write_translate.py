"""OTLP metrics to Prometheus samples: which points become which series, and which are counted as dropped."""

from __future__ import annotations

import math
import struct

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporters.remote_write.translate import STALE_NAN, SampleBatch, translate

T_NS = 1_700_000_000_123_456_789
T_MS = 1_700_000_000_123
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


def attrs(**values: object) -> list[KeyValue]:
    return [KeyValue(key=key.replace("__", "."), value=any_value(v)) for key, v in values.items()]


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def point(value: float | int, attributes: list[KeyValue] = (), time_unix_nano: int = T_NS, flags: int = 0):
    kwargs = {"as_int": value} if isinstance(value, int) else {"as_double": value}
    return NumberDataPoint(time_unix_nano=time_unix_nano, attributes=attributes, flags=flags, **kwargs)


def request(*metrics: Metric, resource: list[KeyValue] = (), scope: InstrumentationScope | None = None):
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=resource),
                scope_metrics=[ScopeMetrics(scope=scope, metrics=list(metrics))],
            )
        ]
    )


def gauge(name: str, *points: NumberDataPoint, unit: str = "") -> Metric:
    return Metric(name=name, unit=unit, gauge=Gauge(data_points=points))


def sum_metric(name: str, *points: NumberDataPoint, monotonic: bool = True, temporality=CUMULATIVE, unit=""):
    return Metric(
        name=name,
        unit=unit,
        sum=Sum(data_points=points, is_monotonic=monotonic, aggregation_temporality=temporality),
    )


def samples(batch: SampleBatch) -> list[tuple[dict[str, str], float, int]]:
    return [(dict(labels), value, ts) for labels, value, ts in zip(batch.labels, batch.values, batch.timestamps)]


def test_a_double_gauge_point_becomes_one_sample_with_its_value_and_millisecond_timestamp() -> None:
    batch = translate(request(gauge("queue.depth", point(2.5))))
    assert samples(batch) == [({"__name__": "queue_depth"}, 2.5, T_MS)]
    assert not batch.dropped


def test_an_int_gauge_point_becomes_a_float_sample() -> None:
    batch = translate(request(gauge("queue.depth", point(7))))
    assert samples(batch) == [({"__name__": "queue_depth"}, 7.0, T_MS)]
    assert isinstance(batch.values[0], float)


def test_a_cumulative_monotonic_sum_becomes_a_counter_named_total() -> None:
    batch = translate(request(sum_metric("http.requests", point(42))))
    assert samples(batch) == [({"__name__": "http_requests_total"}, 42.0, T_MS)]


def test_a_cumulative_non_monotonic_sum_becomes_a_gauge_without_total() -> None:
    batch = translate(request(sum_metric("queue.items", point(-3), monotonic=False)))
    assert samples(batch) == [({"__name__": "queue_items"}, -3.0, T_MS)]


def test_the_unit_is_part_of_the_metric_name() -> None:
    batch = translate(request(sum_metric("process.cpu.time", point(1.5), unit="s")))
    assert batch.labels[0] == (("__name__", "process_cpu_time_seconds_total"),)


def test_data_point_attributes_become_sanitized_labels() -> None:
    batch = translate(request(gauge("g", point(1.0, attrs(http__route="/a", http__response__status_code=200)))))
    assert samples(batch)[0][0] == {"__name__": "g", "http_route": "/a", "http_response_status_code": "200"}


def test_non_string_attribute_values_become_text_per_the_attribute_spec() -> None:
    point_attrs = attrs(flag=True, ratio=0.25, count=3, blob=b"\x01\x02", tags=["a", 1, False])
    batch = translate(request(gauge("g", point(1.0, point_attrs))))
    labels = samples(batch)[0][0]
    assert labels["flag"] == "true"
    assert labels["ratio"] == "0.25"
    assert labels["count"] == "3"
    assert labels["blob"] == "AQI="
    assert labels["tags"] == '["a",1,false]'


def test_attributes_that_collide_after_sanitizing_are_joined_in_original_key_order() -> None:
    point_attrs = [KeyValue(key="k.b", value=any_value("dot")), KeyValue(key="k-b", value=any_value("dash"))]
    batch = translate(request(gauge("g", point(1.0, point_attrs))))
    assert samples(batch)[0][0]["k_b"] == "dash;dot"


def test_empty_attribute_values_are_left_out() -> None:
    batch = translate(request(gauge("g", point(1.0, attrs(empty="", kept="x")))))
    assert samples(batch)[0][0] == {"__name__": "g", "kept": "x"}


def test_job_is_service_namespace_slash_service_name_and_instance_is_the_instance_id() -> None:
    resource = attrs(
        service__name="checkout", service__namespace="shop", service__instance__id="pod-1", host__name="n1"
    )
    batch = translate(request(gauge("g", point(1.0)), resource=resource))
    assert samples(batch)[0][0] == {"__name__": "g", "job": "shop/checkout", "instance": "pod-1"}


def test_job_is_the_service_name_alone_without_a_namespace_and_instance_is_omitted_without_an_id() -> None:
    batch = translate(request(gauge("g", point(1.0)), resource=attrs(service__name="checkout")))
    assert samples(batch)[0][0] == {"__name__": "g", "job": "checkout"}


def test_the_resource_job_wins_over_a_data_point_attribute_named_job() -> None:
    batch = translate(request(gauge("g", point(1.0, attrs(job="attr"))), resource=attrs(service__name="svc")))
    assert samples(batch)[0][0]["job"] == "svc"


def test_scope_name_and_version_become_otel_scope_labels() -> None:
    scope = InstrumentationScope(name="io.shop.cart", version="1.2.0")
    batch = translate(request(gauge("g", point(1.0)), scope=scope))
    assert samples(batch)[0][0] == {"__name__": "g", "otel_scope_name": "io.shop.cart", "otel_scope_version": "1.2.0"}


def test_an_empty_scope_version_is_omitted() -> None:
    batch = translate(request(gauge("g", point(1.0)), scope=InstrumentationScope(name="lib")))
    assert samples(batch)[0][0] == {"__name__": "g", "otel_scope_name": "lib"}


def test_labels_of_every_sample_are_sorted_by_name() -> None:
    resource = attrs(service__name="svc", service__instance__id="i-1")
    point_attrs = attrs(zeta="z", alpha="a", otel="o", _under="u")
    batch = translate(
        request(gauge("g", point(1.0, point_attrs)), resource=resource, scope=InstrumentationScope(name="s"))
    )
    names = [name for name, _ in batch.labels[0]]
    assert names == sorted(names)
    assert names == ["__name__", "alpha", "instance", "job", "key_under", "otel", "otel_scope_name", "zeta"]


def test_every_point_of_a_metric_becomes_its_own_sample() -> None:
    batch = translate(
        request(gauge("g", point(1.0, attrs(k="a")), point(2.0, attrs(k="b")), point(3.0, time_unix_nano=T_NS + 10**9)))
    )
    assert samples(batch) == [
        ({"__name__": "g", "k": "a"}, 1.0, T_MS),
        ({"__name__": "g", "k": "b"}, 2.0, T_MS),
        ({"__name__": "g"}, 3.0, T_MS + 1000),
    ]


def test_a_delta_sum_is_dropped_and_counted_as_unsupported_temporality() -> None:
    batch = translate(request(sum_metric("d", point(1), point(2), temporality=DELTA)))
    assert len(batch) == 0
    assert batch.dropped == {"unsupported_delta_temporality": 2}


def test_a_sum_without_temporality_is_dropped_and_counted() -> None:
    unspecified = AggregationTemporality.AGGREGATION_TEMPORALITY_UNSPECIFIED
    batch = translate(request(sum_metric("d", point(1), temporality=unspecified)))
    assert batch.dropped == {"unsupported_unspecified_temporality": 1}


def test_delta_histograms_and_exponential_histograms_are_dropped_and_counted_as_unsupported_temporality() -> None:
    histogram = Metric(
        name="h",
        histogram=Histogram(data_points=[HistogramDataPoint(time_unix_nano=T_NS)], aggregation_temporality=DELTA),
    )
    exponential = Metric(
        name="e",
        exponential_histogram=ExponentialHistogram(
            data_points=[ExponentialHistogramDataPoint(time_unix_nano=T_NS)] * 2, aggregation_temporality=DELTA
        ),
    )
    batch = translate(request(histogram, exponential, gauge("g", point(1.0))))
    assert samples(batch) == [({"__name__": "g"}, 1.0, T_MS)]
    assert batch.dropped == {"unsupported_delta_temporality": 3}


def test_every_metric_type_is_translated_and_nothing_is_dropped() -> None:
    histogram = Metric(
        name="h",
        histogram=Histogram(
            data_points=[HistogramDataPoint(time_unix_nano=T_NS, count=1, bucket_counts=[1])],
            aggregation_temporality=CUMULATIVE,
        ),
    )
    exponential = Metric(
        name="e",
        exponential_histogram=ExponentialHistogram(
            data_points=[ExponentialHistogramDataPoint(time_unix_nano=T_NS)], aggregation_temporality=CUMULATIVE
        ),
    )
    summary = Metric(name="s", summary=Summary(data_points=[SummaryDataPoint(time_unix_nano=T_NS)]))
    batch = translate(request(histogram, exponential, summary, gauge("g", point(1.0))))
    names = {dict(labels)["__name__"] for labels in batch.labels}
    assert names == {"h_bucket", "h_count", "e_bucket", "e_count", "s_sum", "s_count", "g"}
    assert not batch.dropped


def test_a_point_flagged_no_recorded_value_becomes_a_staleness_marker() -> None:
    flag = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    batch = translate(request(gauge("g", point(1.0, flags=flag), point(2.0, time_unix_nano=T_NS + 10**9))))
    assert [struct.pack("<d", v) for v in batch.values] == [
        struct.pack("<Q", 0x7FF0000000000002),
        struct.pack("<d", 2.0),
    ]
    assert math.isnan(STALE_NAN)
    assert batch.timestamps == [T_MS, T_MS + 1000]
    assert not batch.dropped


def test_a_stale_counter_point_carries_no_exemplar() -> None:
    flag = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    stale = point(1, flags=flag)
    stale.exemplars.add(time_unix_nano=T_NS, as_double=1.0, trace_id=b"\x01" * 16)
    batch = translate(request(sum_metric("c", stale)))
    assert batch.exemplars == []


def test_a_point_without_a_timestamp_is_skipped_and_counted() -> None:
    batch = translate(request(gauge("g", point(1.0, time_unix_nano=0))))
    assert len(batch) == 0
    assert batch.dropped == {"missing_timestamp": 1}


def test_a_metric_without_a_name_is_dropped_and_counted() -> None:
    batch = translate(request(gauge("", point(1.0))))
    assert batch.dropped == {"invalid_metric_name": 1}


def test_translating_never_modifies_the_request() -> None:
    original = request(
        sum_metric("c", point(1, attrs(a="1"))),
        resource=attrs(service__name="svc"),
        scope=InstrumentationScope(name="s"),
    )
    before = original.SerializeToString(deterministic=True)
    translate(original)
    assert original.SerializeToString(deterministic=True) == before


def test_each_sample_has_a_positive_size_estimate_that_grows_with_its_labels() -> None:
    batch = translate(request(gauge("g", point(1.0), point(1.0, attrs(long="x" * 100)))))
    assert 0 < batch.sizes[0] < batch.sizes[1]
    assert batch.sizes[1] - batch.sizes[0] >= 100
