"""Specifications of series identity across `translate` calls (`SeriesCache`)."""

from __future__ import annotations

import gc
import struct
import tracemalloc

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    SummaryDataPoint,
)

from exporters.remote_write.series_cache import SeriesCache
from exporters.remote_write.translate import Limits, SampleBatch, translate

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
T0 = 1_764_000_000_000_000_000
STEP = 15_000_000_000


def _attrs(**values: object) -> list[KeyValue]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            out.append(KeyValue(key=key, value=AnyValue(bool_value=value)))
        elif isinstance(value, int):
            out.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            out.append(KeyValue(key=key, value=AnyValue(string_value=str(value))))
    return out


def _request(
    step: int,
    *,
    hosts: int = 2,
    cpus: int = 2,
    instance: str = "node",
    scope_version: str = "1.0",
    extra_resource: str = "a",
) -> ExportMetricsServiceRequest:
    """A node-exporter-like request at scrape `step`: values move every step; `cpus` decides how many series."""
    now = T0 + step * STEP
    request = ExportMetricsServiceRequest()
    for host in range(hosts):
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend(
            _attrs(**{"service.name": "node-exporter", "service.instance.id": f"{instance}-{host}:9100"})
        )
        rm.resource.attributes.extend(_attrs(**{"host.arch": extra_resource}))
        sm = rm.scope_metrics.add()
        sm.scope.name = "prometheusreceiver"
        sm.scope.version = scope_version
        cpu = sm.metrics.add(name="node_cpu_seconds_total")
        cpu.sum.aggregation_temporality = CUMULATIVE
        cpu.sum.is_monotonic = True
        for c in range(cpus):
            for mode in ("idle", "user", "system"):
                point = cpu.sum.data_points.add(start_time_unix_nano=T0, time_unix_nano=now)
                point.as_double = 100.0 * step + c + len(mode)
                point.attributes.extend(_attrs(cpu=c, mode=mode, cluster="prod"))
        avail = sm.metrics.add(name="node_filesystem_avail_bytes")
        for mount in ("/", "/var", "/data"):
            point = avail.gauge.data_points.add(time_unix_nano=now, as_double=1e9 - step * 1000.0)
            point.attributes.extend(_attrs(device="nvme0n1", fstype="ext4", mountpoint=mount, readonly=False))
        ints = sm.metrics.add(name="node_procs_running")
        ints.gauge.data_points.add(time_unix_nano=now, as_int=step + 3).attributes.extend(_attrs(cluster="prod"))
        # a stale series, an exemplar, a point without a timestamp: the paths off the fast one
        gone = avail.gauge.data_points.add(
            time_unix_nano=now, flags=DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
        )
        gone.attributes.extend(_attrs(device="sdz", fstype="ext4", mountpoint="/old", readonly=False))
        with_exemplar = cpu.sum.data_points.add(start_time_unix_nano=T0, time_unix_nano=now, as_double=step * 2.0)
        with_exemplar.attributes.extend(_attrs(cpu=99, mode="idle", cluster="prod"))
        with_exemplar.exemplars.append(Exemplar(time_unix_nano=now, as_double=1.5, trace_id=b"\x01" * 16))
        avail.gauge.data_points.add(as_double=1.0).attributes.extend(_attrs(device="x"))
        latency = sm.metrics.add(name="http.server.duration", unit="s")
        latency.histogram.aggregation_temporality = CUMULATIVE
        latency.histogram.data_points.append(
            HistogramDataPoint(
                time_unix_nano=now,
                count=10 + step,
                sum=3.5 + step,
                explicit_bounds=[0.1, 1.0],
                bucket_counts=[2, 3, 5 + step],
                attributes=_attrs(route="/a"),
            )
        )
        sizes = sm.metrics.add(name="response.size", unit="By")
        sizes.exponential_histogram.aggregation_temporality = CUMULATIVE
        point = ExponentialHistogramDataPoint(
            time_unix_nano=now, count=4 + step, sum=40.0, scale=2, zero_count=1, attributes=_attrs(route="/a")
        )
        point.positive.offset = 3
        point.positive.bucket_counts.extend([1, 2, step])
        sizes.exponential_histogram.data_points.append(point)
        rpc = sm.metrics.add(name="rpc.latency", unit="ms")
        rpc.summary.data_points.append(
            SummaryDataPoint(
                time_unix_nano=now,
                count=5,
                sum=9.0 + step,
                quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=1.0 + step)],
                attributes=_attrs(method="Get"),
            )
        )
    return request


def _comparable(batch: SampleBatch) -> tuple:
    """The whole batch, NaNs compared by their bits (a staleness marker is one NaN bit pattern)."""
    bits = [struct.pack("<d", v) for v in batch.values]
    return (
        batch.labels,
        bits,
        batch.timestamps,
        batch.sizes,
        batch.histogram_labels,
        [tuple(struct.pack("<d", x) if isinstance(x, float) else x for x in h) for h in batch.histograms],
        batch.histogram_sizes,
        batch.exemplar_labels,
        batch.exemplars,
        batch.exemplar_sizes,
        dict(batch.dropped),
    )


@pytest.mark.parametrize("native", [False, True])
def test_translation_with_a_cache_equals_translation_without_over_changing_requests(native: bool) -> None:
    cache = SeriesCache()
    requests = [_request(1), _request(2), _request(3, cpus=4), _request(4, cpus=4, hosts=3), _request(5)]
    for request in requests:
        with_cache = translate(request, native_histograms=native, cache=cache)
        without = translate(request, native_histograms=native)
        assert _comparable(with_cache) == _comparable(without)
        assert with_cache.dropped["missing_timestamp"] > 0  # the odd paths were taken
        assert with_cache.exemplars


def test_the_series_limit_applies_per_call_with_or_without_a_cache() -> None:
    limits = Limits(max_series_per_metric=4)
    cache = SeriesCache()
    for step in range(1, 5):
        request = _request(step, cpus=3)
        with_cache = translate(request, limits=limits, cache=cache)
        assert _comparable(with_cache) == _comparable(translate(request, limits=limits))
        # node_cpu_seconds_total has 2 hosts x (9 + 1) points; 4 series pass per call, whatever the cache saw
        cpu = [labels for labels in with_cache.labels if ("__name__", "node_cpu_seconds_total") in labels]
        assert len(set(cpu)) == 4
        assert with_cache.dropped["too_many_series"] > 0


def test_label_tuples_are_the_same_objects_in_every_batch_while_cached() -> None:
    cache = SeriesCache()
    first = translate(_request(1), cache=cache)
    second = translate(_request(2), cache=cache)
    assert len(first.labels) == len(second.labels)
    assert all(a is b for a, b in zip(first.labels, second.labels, strict=True))  # buckets, sums, counts too
    assert all(a is b for a, b in zip(first.exemplar_labels, second.exemplar_labels, strict=True))


def test_a_series_keeps_its_id_and_equal_tuples_built_elsewhere_have_none() -> None:
    cache = SeriesCache()
    first = translate(_request(1), cache=cache)
    ids = [cache.series_id(labels) for labels in first.labels]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == len(set(first.labels))  # one id per distinct series
    second = translate(_request(2), cache=cache)
    assert [cache.series_id(labels) for labels in second.labels] == ids
    rebuilt = tuple(list(first.labels[0]))
    assert rebuilt == first.labels[0] and cache.series_id(rebuilt) is None


def test_a_stale_point_of_a_known_series_carries_the_same_label_tuple() -> None:
    cache = SeriesCache()
    live = _request(1, cpus=1)
    stale = _request(2, cpus=1)
    for point in stale.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points:
        point.flags = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    first = translate(live, cache=cache)
    second = translate(stale, cache=cache)
    assert second.labels[0] is first.labels[0]
    assert struct.pack("<d", second.values[0]) == struct.pack("<Q", 0x7FF0000000000002)


def test_a_different_resource_or_scope_gives_different_series() -> None:
    cache = SeriesCache()
    base = translate(_request(1), cache=cache)
    other_instance = translate(_request(1, instance="other"), cache=cache)
    other_scope = translate(_request(1, scope_version="2.0"), cache=cache)
    assert not set(base.labels) & set(other_instance.labels)
    assert ("otel_scope_version", "2.0") in other_scope.labels[0]
    shared = set(base.labels) & set(other_scope.labels)
    assert shared and all(("__name__", "target_info") in labels for labels in shared)  # target_info has no scope
    # A resource attribute that only target_info carries changes target_info, not the other series
    other_arch = translate(_request(1, extra_resource="b"), cache=cache)
    changed = set(other_arch.labels) - set(base.labels)
    assert changed and all(("__name__", "target_info") in labels for labels in changed)
    assert _comparable(other_arch) == _comparable(translate(_request(1, extra_resource="b")))


def test_the_cache_stays_within_its_byte_bound_and_evicts() -> None:
    cache = SeriesCache(max_bytes=64_000)
    for step in range(1, 30):
        request = _request(step, cpus=step % 7 + 1, hosts=step % 4 + 1, instance=f"i{step % 5}")
        batch = translate(request, cache=cache)
        assert cache.nbytes <= cache.max_bytes
        assert _comparable(batch) == _comparable(translate(request))
    assert cache.rotations > 0
    assert cache.evicted > 0  # counted for self-telemetry (headwater_remote_write_state_evictions_total)


def test_a_working_set_in_half_the_bound_is_never_evicted() -> None:
    cache = SeriesCache()
    translate(_request(1), cache=cache)
    held = cache.nbytes
    for step in range(2, 10):
        translate(_request(step), cache=cache)
    assert cache.rotations == 0 and cache.evicted == 0
    assert cache.nbytes == held  # nothing new was built


def test_the_byte_estimate_covers_the_memory_the_entries_really_hold() -> None:
    requests = [_request(1, cpus=64, hosts=8, instance=f"n{i}") for i in range(4)]
    cache = SeriesCache()
    translate(_request(1), cache=cache)  # lru caches and plans warmed outside the measure
    gc.collect()
    tracemalloc.start()
    before_bytes = cache.nbytes
    before, _ = tracemalloc.get_traced_memory()
    for request in requests:
        translate(request, cache=cache)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    measured = after - before
    accounted = cache.nbytes - before_bytes
    assert cache.rotations == 0
    assert measured <= accounted <= 2.5 * measured, (measured, accounted)


def test_a_cache_rejects_a_bound_that_is_not_a_positive_integer() -> None:
    with pytest.raises(ValueError):
        SeriesCache(max_bytes=0)
