"""Translating a metrics request from its wire bytes once a request of its shape was translated
(`translate(..., wire=...)` learns, `translate_wire` replays): the result is always exactly what the full
translation of the same request gives, and anything a shape cannot reproduce goes the full way."""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    Exemplar,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporters.remote_write import shapes
from exporters.remote_write.series import STALE_NAN, SampleBatch
from exporters.remote_write.series_cache import SeriesCache
from exporters.remote_write.translate import Limits, translate, translate_wire

T0 = 1_700_000_000_000_000_000
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
NO_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK


def attrs(**items: str) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in items.items()]


def node(values: list[float | int], times: list[int], *, host: str = "node-1", flags: int = 0,
         extra: Metric | None = None) -> ExportMetricsServiceRequest:
    """A node-exporter-like request: a gauge and a counter over devices, values and times as given."""
    gauge_points = [NumberDataPoint(time_unix_nano=t, attributes=attrs(device=f"sd{i}"), flags=flags,
                                    **({"as_int": v} if isinstance(v, int) else {"as_double": v}))
                    for i, (v, t) in enumerate(zip(values, times))]
    counter_points = [NumberDataPoint(start_time_unix_nano=T0 - 10**9, time_unix_nano=t,
                                      attributes=attrs(cpu=str(i), mode="idle"),
                                      **({"as_int": v} if isinstance(v, int) else {"as_double": v}))
                      for i, (v, t) in enumerate(zip(values, times))]
    metrics = [
        Metric(name="node_disk_free_bytes", description="free", gauge=Gauge(data_points=gauge_points)),
        Metric(name="node_cpu_seconds_total", sum=Sum(data_points=counter_points, is_monotonic=True,
                                                      aggregation_temporality=CUMULATIVE)),
    ]
    if extra is not None:
        metrics.append(extra)
    resource = Resource(attributes=attrs(**{"service.name": "node", "service.instance.id": host, "os": "linux"}))
    return ExportMetricsServiceRequest(resource_metrics=[
        ResourceMetrics(resource=resource, scope_metrics=[ScopeMetrics(metrics=metrics)])])


def learn(request: ExportMetricsServiceRequest, cache: SeriesCache, **options) -> SampleBatch:
    return translate(request, cache=cache, wire=request.SerializeToString(), **options)


def same(a: SampleBatch, b: SampleBatch) -> bool:
    def bits(values: list[float]) -> bytes:
        return struct.pack(f"<{len(values)}d", *values)

    return (a.labels == b.labels and bits(a.values) == bits(b.values) and a.timestamps == b.timestamps
            and a.sizes == b.sizes and a.metadata == b.metadata and +a.dropped == +b.dropped)


doubles = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, STALE_NAN, math.inf])
times = st.integers(min_value=10**6, max_value=2**63 - 1)  # from 1 ms: see the sub-millisecond test


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(doubles, times), min_size=3, max_size=3))
def test_a_request_of_a_learnt_shape_translates_exactly_as_the_full_path(points: list[tuple[float, int]]) -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0, T0, T0]), cache)
    later = node([v for v, _ in points], [t for _, t in points])

    replayed = translate_wire(later.SerializeToString(), cache=cache)

    assert replayed is not None
    batch, data_points = replayed
    assert same(batch, translate(later))
    assert data_points == 6


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=-(2**63), max_value=2**63 - 1), times), min_size=3, max_size=3))
def test_int_points_are_replayed_as_float_samples(points: list[tuple[int, int]]) -> None:
    cache = SeriesCache()
    learn(node([1, 2, 3], [T0, T0, T0]), cache)
    later = node([v for v, _ in points], [t for _, t in points])

    batch, _ = translate_wire(later.SerializeToString(), cache=cache)

    assert same(batch, translate(later))
    assert all(type(v) is float for v in batch.values)


def test_a_request_that_differs_outside_times_and_values_is_not_replayed() -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3, host="node-1"), cache)

    assert translate_wire(node([1.0, 2.0, 3.0], [T0] * 3, host="node-2").SerializeToString(), cache=cache) is None


def test_the_next_learnt_shape_replaces_one_that_stopped_matching() -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3, host="node-1"), cache)
    moved = node([1.0, 2.0, 3.0], [T0] * 3, host="node-2")
    assert translate_wire(moved.SerializeToString(), cache=cache) is None
    learn(moved, cache)

    later = node([4.0, 5.0, 6.0], [T0 + 10**9] * 3, host="node-2")
    batch, _ = translate_wire(later.SerializeToString(), cache=cache)

    assert same(batch, translate(later))


def test_stale_points_stay_staleness_markers() -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3, flags=NO_VALUE), cache)
    later = node([7.0, 8.0, 9.0], [T0 + 10**9] * 3, flags=NO_VALUE)

    batch, _ = translate_wire(later.SerializeToString(), cache=cache)

    stale = struct.pack("<d", STALE_NAN)
    assert [struct.pack("<d", v) for v in batch.values[:3]] == [stale] * 3  # the gauge's points are flagged
    assert same(batch, translate(later))


def test_a_point_without_a_timestamp_goes_the_full_way() -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3), cache)

    assert translate_wire(node([1.0, 2.0, 3.0], [T0, 0, T0]).SerializeToString(), cache=cache) is None


def test_a_resource_whose_points_are_all_at_millisecond_zero_goes_the_full_way() -> None:
    """Translation leaves out a target_info series whose newest timestamp is 0."""
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3), cache)

    assert translate_wire(node([1.0, 2.0, 3.0], [1, 2, 3]).SerializeToString(), cache=cache) is None


def test_target_info_takes_the_newest_timestamp_of_its_resource() -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3), cache)
    later = node([1.0, 2.0, 3.0], [T0 + 5 * 10**9, T0 + 9 * 10**9, T0 + 7 * 10**9])

    batch, _ = translate_wire(later.SerializeToString(), cache=cache)

    target = [ts for labels, ts in zip(batch.labels, batch.timestamps) if dict(labels)["__name__"] == "target_info"]
    assert target == [(T0 + 9 * 10**9) // 10**6]


def test_points_dropped_by_a_limit_are_dropped_and_counted_the_same_way() -> None:
    cache = SeriesCache()
    limits = Limits(max_series_per_metric=2)
    learn(node([1.0, 2.0, 3.0], [T0] * 3), cache, limits=limits)
    later = node([4.0, 5.0, 6.0], [T0 + 10**9] * 3)

    batch, data_points = translate_wire(later.SerializeToString(), cache=cache, limits=limits)

    assert same(batch, translate(later, limits=limits))
    assert batch.dropped["too_many_series"] == 2
    assert data_points == 6


def test_options_are_part_of_the_shape() -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3), cache)

    assert translate_wire(node([1.0, 2.0, 3.0], [T0] * 3).SerializeToString(), cache=cache,
                          promote=("os",)) is None


def test_requests_with_histograms_are_never_replayed() -> None:
    histogram = Metric(name="latency", histogram=Histogram(aggregation_temporality=CUMULATIVE, data_points=[
        HistogramDataPoint(time_unix_nano=T0, count=2, sum=3.0, bucket_counts=[1, 1], explicit_bounds=[1.0])]))
    cache = SeriesCache()
    request = node([1.0, 2.0, 3.0], [T0] * 3, extra=histogram)
    learn(request, cache)

    assert translate_wire(request.SerializeToString(), cache=cache) is None


def test_requests_with_exemplars_are_never_replayed() -> None:
    with_exemplar = Metric(name="requests", sum=Sum(is_monotonic=True, aggregation_temporality=CUMULATIVE,
                                                   data_points=[NumberDataPoint(
                                                       time_unix_nano=T0, as_double=1.0,
                                                       exemplars=[Exemplar(time_unix_nano=T0, as_double=1.0,
                                                                           trace_id=b"\1" * 16,
                                                                           span_id=b"\2" * 8)])]))
    cache = SeriesCache()
    request = node([1.0, 2.0, 3.0], [T0] * 3, extra=with_exemplar)
    learn(request, cache)

    assert translate_wire(request.SerializeToString(), cache=cache) is None


def test_a_sender_whose_requests_never_repeat_is_learnt_ever_less_often(monkeypatch) -> None:
    """Learning walks the whole request; a shape never used doubles the misses before the next attempt."""
    walks = []
    real_walk = shapes.variable_fields
    monkeypatch.setattr(shapes, "variable_fields", lambda wire: walks.append(1) or real_walk(wire))
    cache = SeriesCache()
    for i in range(200):
        request = node([1.0, 2.0, 3.0], [T0] * 3, host=f"node-{i:03d}")  # same length, new bytes every time
        wire = request.SerializeToString()
        assert translate_wire(wire, cache=cache) is None
        translate(request, cache=cache, wire=wire)

    assert len(walks) <= 2 + 6 + 200 // shapes.MAX_BACKOFF  # 1, 2, 4, ... 64, then every 64th


def test_a_shape_that_is_used_is_learnt_again_at_the_first_miss(monkeypatch) -> None:
    cache = SeriesCache()
    learn(node([1.0, 2.0, 3.0], [T0] * 3, host="node-1"), cache)
    assert translate_wire(node([4.0, 5.0, 6.0], [T0] * 3, host="node-1").SerializeToString(), cache=cache)
    moved = node([1.0, 2.0, 3.0], [T0] * 3, host="node-2")
    assert translate_wire(moved.SerializeToString(), cache=cache) is None
    learn(moved, cache)

    assert translate_wire(moved.SerializeToString(), cache=cache) is not None


def test_a_replayed_request_leaves_its_series_ids_stable() -> None:
    cache = SeriesCache()
    first = learn(node([1.0, 2.0, 3.0], [T0] * 3), cache)
    ids = [cache.series_id(labels) for labels in first.labels]

    batch, _ = translate_wire(node([4.0, 5.0, 6.0], [T0 + 10**9] * 3).SerializeToString(), cache=cache)

    assert [cache.series_id(labels) for labels in batch.labels] == ids
    assert None not in ids
