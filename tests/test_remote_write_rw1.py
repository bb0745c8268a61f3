"""Remote write 1.0 bodies: grouping, ordering and the snappy block format."""

from __future__ import annotations

import struct

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings

from exporters.remote_write import rw1
from exporters.remote_write.batcher import Batcher
from exporters.remote_write.proto.remote_write_v1_pb2 import Histogram
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.translate import STALE_NAN, Exemplar, NativeHistogram
from tests.series_strategies import batches, flushes

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A = (("__name__", "a"), ("job", "j"))
B = (("__name__", "b"),)


def test_samples_of_one_series_share_a_single_timeseries_in_timestamp_order() -> None:
    request = rw1.build_write_request([A, B, A, A], [3.0, 9.0, 1.0, 2.0], [300, 900, 100, 200])
    assert len(request.timeseries) == 2
    first, second = request.timeseries
    assert [(label.name, label.value) for label in first.labels] == list(A)
    assert [(s.timestamp, s.value) for s in first.samples] == [(100, 1.0), (200, 2.0), (300, 3.0)]
    assert [(label.name, label.value) for label in second.labels] == list(B)
    assert [(s.timestamp, s.value) for s in second.samples] == [(900, 9.0)]


def test_series_appear_in_the_order_of_their_first_sample() -> None:
    request = rw1.build_write_request([B, A, B], [1.0, 2.0, 3.0], [1, 2, 3])
    assert [ts.labels[0].value for ts in request.timeseries] == ["b", "a"]


def test_samples_with_equal_timestamps_keep_their_arrival_order() -> None:
    request = rw1.build_write_request([A, A], [5.0, 6.0], [100, 100])
    assert [s.value for s in request.timeseries[0].samples] == [5.0, 6.0]


def test_a_body_is_snappy_block_format_of_the_serialized_write_request() -> None:
    body = rw1.encode([A], [1.5], [1000])
    raw = bytes(cramjam.snappy.decompress_raw(body))
    assert raw == rw1.build_write_request([A], [1.5], [1000]).SerializeToString()
    assert rw1.decode(body).timeseries[0].samples[0].value == 1.5


def test_the_schema_is_registered_under_a_file_name_of_our_own() -> None:
    from exporters.remote_write.proto import remote_write_v1_pb2

    assert remote_write_v1_pb2.DESCRIPTOR.name == "headwater/remote_write_v1.proto"
    assert remote_write_v1_pb2.WriteRequest.DESCRIPTOR.full_name == "prometheus.WriteRequest"


def test_the_required_protocol_headers_are_declared() -> None:
    assert rw1.HEADERS == {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }


H = (("__name__", "h"),)
NATIVE = NativeHistogram(
    timestamp=500,
    count=7,
    sum=12.5,
    schema=3,
    zero_threshold=1e-128,
    zero_count=1,
    negative_spans=((-1, 1),),
    negative_deltas=(2,),
    positive_spans=((1, 2), (3, 1)),
    positive_deltas=(1, 1, 1),
)


def test_native_histograms_go_in_timeseries_histograms_with_integer_counts_and_spans() -> None:
    request = rw1.decode(rw1.encode([], [], [], histogram_labels=[H], histograms=[NATIVE]))
    (series,) = request.timeseries
    assert [(label.name, label.value) for label in series.labels] == list(H)
    assert list(series.samples) == []
    (h,) = series.histograms
    assert h.WhichOneof("count") == "count_int" and h.count_int == 7
    assert h.WhichOneof("zero_count") == "zero_count_int" and h.zero_count_int == 1
    assert (h.sum, h.schema, h.zero_threshold, h.timestamp) == (12.5, 3, 1e-128, 500)
    assert [(s.offset, s.length) for s in h.positive_spans] == [(1, 2), (3, 1)]
    assert list(h.positive_deltas) == [1, 1, 1]
    assert [(s.offset, s.length) for s in h.negative_spans] == [(-1, 1)]
    assert list(h.negative_deltas) == [2]
    assert h.reset_hint == Histogram.UNKNOWN


def test_histograms_of_one_series_share_a_timeseries_in_timestamp_order() -> None:
    later = NATIVE._replace(timestamp=900)
    request = rw1.build_write_request([], [], [], histogram_labels=[H, H], histograms=[later, NATIVE])
    (series,) = request.timeseries
    assert [h.timestamp for h in series.histograms] == [500, 900]


def test_staleness_markers_keep_their_exact_nan_bits_on_the_wire() -> None:
    stale = NATIVE._replace(
        count=STALE_NAN, sum=STALE_NAN, positive_spans=(), positive_deltas=(), negative_spans=(), negative_deltas=()
    )
    request = rw1.decode(rw1.encode([A], [STALE_NAN], [100], histogram_labels=[H], histograms=[stale]))
    sample = request.timeseries[0].samples[0]
    h = request.timeseries[1].histograms[0]
    stale_bits = struct.pack("<Q", 0x7FF0000000000002)
    assert struct.pack("<d", sample.value) == stale_bits
    assert h.WhichOneof("count") == "count_float"
    assert struct.pack("<d", h.count_float) == struct.pack("<d", h.sum) == stale_bits


def test_exemplars_ride_on_their_series_timeseries_in_timestamp_order() -> None:
    late = Exemplar((("trace_id", "ab"),), 2.0, 300)
    early = Exemplar((("trace_id", "cd"),), 1.0, 200)
    request = rw1.build_write_request([A, B], [1.0, 2.0], [100, 100], exemplar_labels=[A, A], exemplars=[late, early])
    first, second = request.timeseries
    assert [(e.timestamp, e.value, [(label.name, label.value) for label in e.labels]) for e in first.exemplars] == [
        (200, 1.0, [("trace_id", "cd")]),
        (300, 2.0, [("trace_id", "ab")]),
    ]
    assert list(second.exemplars) == []


def test_exemplars_of_a_histogram_only_series_follow_it_in_a_second_timeseries() -> None:
    ex = Exemplar((("trace_id", "ab"),), 1.5, 500)
    request = rw1.build_write_request(
        [], [], [], histogram_labels=[H], histograms=[NATIVE], exemplar_labels=[H], exemplars=[ex]
    )
    histogram_series, exemplar_series = request.timeseries
    assert len(histogram_series.histograms) == 1 and list(histogram_series.exemplars) == []
    assert exemplar_series.labels == histogram_series.labels
    assert [e.value for e in exemplar_series.exemplars] == [1.5]
    assert list(exemplar_series.samples) == [] and list(exemplar_series.histograms) == []


def test_exemplars_of_a_series_without_samples_in_the_request_get_a_timeseries_of_their_own() -> None:
    ex = Exemplar((), 1.0, 10)
    request = rw1.build_write_request([A], [1.0], [10], exemplar_labels=[B], exemplars=[ex])
    assert [ts.labels[0].value for ts in request.timeseries] == ["a", "b"]
    assert len(request.timeseries[1].exemplars) == 1


@pytest.mark.parametrize(
    ("values", "timestamps"),
    [
        pytest.param([1.5, 2.5, 0.5], [300, 100, 200], id="one series, out of order"),
        pytest.param([0.0, -0.0, float("nan")], [0, 1, 2], id="zero, negative zero, NaN and a zero timestamp"),
        pytest.param([STALE_NAN, 1e308, -1e-308], [-5, 2**62, 1_700_000_000_123], id="stale, extremes, negative time"),
    ],
)
def test_the_direct_serializer_writes_exactly_what_protobuf_writes(values: list[float], timestamps: list[int]) -> None:
    unicode = (("__name__", "ü"), ("k", "v" * 300))
    labels = [A, unicode, A]
    ex = [Exemplar((("trace_id", "ab"),), 1.0, 7), Exemplar((), 2.0, 3), Exemplar((("span_id", "cd"),), 3.0, 1)]
    kwargs = {
        "histogram_labels": [H, H],
        "histograms": [NATIVE._replace(timestamp=900), NATIVE],
        "exemplar_labels": [A, H, B],
        "exemplars": ex,
    }
    for extra in ({}, kwargs):
        expected = rw1.build_write_request(labels, values, timestamps, **extra).SerializeToString()
        assert rw1.serialize(labels, values, timestamps, **extra) == expected
        assert rw1.serialize(labels, values, timestamps, **extra) == expected  # labels now from the cache


def test_the_label_cache_is_bounded_in_bytes_and_empties_when_full() -> None:
    cache = rw1.LabelCache(max_bytes=2000)
    many = [(("__name__", f"m{i}"),) for i in range(50)]
    body = rw1.serialize(many, [1.0] * 50, [1] * 50, cache=cache)
    assert body == rw1.build_write_request(many, [1.0] * 50, [1] * 50).SerializeToString()
    assert cache.nbytes <= 2000
    assert 0 < len(cache.entries) < 50


def test_a_cache_passed_in_is_reused_across_calls_and_changes_no_byte() -> None:
    cache = rw1.LabelCache()
    series = [(("__name__", "up"), ("job", "a"))]
    first = rw1.serialize(series, [1.0], [5], cache=cache)
    assert rw1.serialize(series, [1.0], [5], cache=cache) == first == rw1.serialize(series, [1.0], [5])
    assert list(cache.entries) == series

def columns(batch: SampleBatch) -> tuple[list, list, list]:
    return batch.labels, batch.values, batch.timestamps


def extras(batch: SampleBatch) -> dict:
    return {
        "histogram_labels": batch.histogram_labels,
        "histograms": batch.histograms,
        "exemplar_labels": batch.exemplar_labels,
        "exemplars": batch.exemplars,
    }


@PROPERTY
@given(batches(max_samples_per_series=5, metadata=False, start_timestamps=False))
def test_the_direct_serializer_writes_what_protobuf_writes_for_any_batch(batch: SampleBatch) -> None:
    expected = rw1.build_write_request(*columns(batch), **extras(batch)).SerializeToString()
    cache = rw1.LabelCache()
    assert rw1.serialize(*columns(batch), **extras(batch), cache=cache) == expected
    assert rw1.serialize(*columns(batch), **extras(batch), cache=cache) == expected  # labels from the cache


@PROPERTY
@given(flushes())
def test_a_batch_the_batcher_cut_as_grouped_is_written_exactly_as_protobuf_writes_it(flush: tuple) -> None:
    ticks, max_samples, max_bytes = flush
    batcher = Batcher(max_samples, max_bytes, 5.0, hold_factor=10**6)
    cache = rw1.LabelCache()
    for _ in range(2):  # the second time, labels come from the cache
        for tick in ticks:
            batcher.add(tick)
        for batch, _ in batcher.cut():
            expected = rw1.build_write_request(*columns(batch), **extras(batch)).SerializeToString()
            assert rw1.serialize(*columns(batch), **extras(batch), cache=cache, grouped=batch.grouped) == expected
            assert rw1.serialize(*columns(batch), **extras(batch), grouped=False) == expected


def test_a_grouped_batch_keeps_zeros_out_and_every_other_value_bit_for_bit() -> None:
    a = (("__name__", "a"),)
    values = [0.0, -0.0, STALE_NAN, float("nan"), float("inf"), float("-inf"), 1.5]
    stamps = [0, 1, 2, 3, 4, 5, 2**62]  # grouped: in time order
    expected = rw1.build_write_request([a] * 7, values, stamps).SerializeToString()
    assert rw1.serialize([a] * 7, values, stamps, grouped=True) == expected
    no_zero = values[1:]
    expected = rw1.build_write_request([a] * 6, no_zero, stamps[1:]).SerializeToString()
    assert rw1.serialize([a] * 6, no_zero, stamps[1:], grouped=True) == expected
