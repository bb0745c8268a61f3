"""Remote write 2.0 (rc.4) bodies: what the encoder writes, what the decoder accepts and refuses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings

from exporters.remote_write import rw2
from exporters.remote_write.encoding import DecodeError, decompress
from exporters.remote_write.proto.remote_write_v2_pb2 import Exemplar as ExemplarMessage
from exporters.remote_write.proto.remote_write_v2_pb2 import (
    Histogram,
    Request,
    Sample,
    TimeSeries,
)
from exporters.remote_write.series import (
    STALE_NAN,
    Exemplar,
    Metadata,
    NativeHistogram,
    SampleBatch,
    group_by_series,
)
from tests.series_strategies import batches, canonical

A = (("__name__", "up"), ("job", "node"))
B = (("__name__", "b"),)
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
    start_timestamp=100,
)


def batch_of(
    samples: list[tuple[tuple[tuple[str, str], ...], float, int]] = (),  # type: ignore[assignment]
    *,
    starts: list[int] | None = None,
    histograms: list[tuple[tuple[tuple[str, str], ...], NativeHistogram]] = (),  # type: ignore[assignment]
    exemplars: list[tuple[tuple[tuple[str, str], ...], Exemplar]] = (),  # type: ignore[assignment]
    metadata: dict[str, Metadata] | None = None,
) -> SampleBatch:
    batch = SampleBatch()
    for labels, value, stamp in samples:
        batch.labels.append(labels)
        batch.values.append(value)
        batch.timestamps.append(stamp)
        batch.sizes.append(0)
    batch.start_timestamps = list(starts or [])
    for labels, h in histograms:
        batch.histogram_labels.append(labels)
        batch.histograms.append(h)
        batch.histogram_sizes.append(0)
    for labels, e in exemplars:
        batch.exemplar_labels.append(labels)
        batch.exemplars.append(e)
        batch.exemplar_sizes.append(0)
    batch.metadata = dict(metadata or {})
    return batch


def round_trip(batch: SampleBatch) -> SampleBatch:
    encoded = rw2.Rw2Encoder().encode(batch)
    return rw2.Rw2Decoder().decode(decompress("snappy", encoded.body, 1 << 30), encoded.headers)


def request_of(batch: SampleBatch) -> Request:
    return Request.FromString(rw2.Rw2Encoder().serialize(batch))


def labels_of(request: Request, ts: TimeSeries) -> list[tuple[str, str]]:
    refs = list(ts.labels_refs)
    return [(request.symbols[refs[i]], request.symbols[refs[i + 1]]) for i in range(0, len(refs), 2)]


def body(request: Request) -> bytes:
    return request.SerializeToString()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_any_batch_survives_a_round_trip_bit_for_bit(batch: SampleBatch) -> None:
    assert canonical(round_trip(batch)) == canonical(batch)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_samples_per_series=3))
def test_the_hand_written_body_is_byte_for_byte_what_protobuf_writes(batch: SampleBatch) -> None:
    encoder = rw2.Rw2Encoder()
    expected = rw2.build_request(batch).SerializeToString()
    assert encoder.serialize(batch) == expected
    assert encoder.serialize(batch) == expected  # again, label strings now from the encoder's cache


@pytest.mark.parametrize(
    ("values", "timestamps", "starts"),
    [
        pytest.param([1.5, 2.5, 0.5], [300, 100, 200], [], id="one series out of order, no start timestamps"),
        pytest.param([0.0, -0.0, float("nan")], [0, 1, 2], [0, 5, 0], id="zeros, NaN, a zero timestamp"),
        pytest.param([STALE_NAN, 1e308, -1e-308], [-5, 2**62, 1_700_000_000_123], [-7, 0, 2**40], id="extremes"),
    ],
)
def test_the_hand_written_body_matches_protobuf_on_awkward_values(
    values: list[float], timestamps: list[int], starts: list[int]
) -> None:
    unicode = (("__name__", "ü"), ("k", "v" * 300))
    many = tuple(sorted({"__name__": "wide", **{f"l{i:03}": "x" * 40 for i in range(120)}}.items()))  # > 4 KiB
    for labels in ([A, unicode, A], [A, unicode, many]):
        batch = batch_of(list(zip(labels, values, timestamps, strict=True)), starts=starts)
        batch.histogram_labels, batch.histograms = [H, A], [NATIVE._replace(timestamp=900), NATIVE]
        batch.exemplar_labels = [A, H, B]
        batch.exemplars = [Exemplar((("trace_id", "ab"),), 1.0, 7), Exemplar((), 2.0, 3), Exemplar((), 0.0, 0)]
        batch.metadata = {
            "up": Metadata("gauge", "help", "s"),
            "h": Metadata("gaugehistogram"),
            "ü": Metadata("unknown"),
        }
        assert rw2.Rw2Encoder().serialize(batch) == rw2.build_request(batch).SerializeToString()


def test_a_small_request_is_exactly_the_bytes_the_spec_field_numbers_give() -> None:
    batch = batch_of([(A, 1.0, 1000)], starts=[500])
    expected = (
        b"\x22\x00"  # symbols[0] = ""
        b"\x22\x08__name__"  # symbols[1]
        b"\x22\x02up"  # symbols[2]
        b"\x22\x03job"  # symbols[3]
        b"\x22\x04node"  # symbols[4]
        b"\x2a\x17"  # timeseries (field 5), 23 bytes
        b"\x0a\x04\x01\x02\x03\x04"  # labels_refs (field 1), packed
        b"\x12\x0f"  # samples (field 2), 15 bytes
        b"\x09\x00\x00\x00\x00\x00\x00\xf0\x3f"  # value (field 1, double) 1.0
        b"\x10\xe8\x07"  # timestamp (field 2, varint) 1000
        b"\x18\xf4\x03"  # start_timestamp (field 3, varint) 500
    )
    assert rw2.Rw2Encoder().serialize(batch) == expected
    assert Request.FromString(expected).timeseries[0].samples[0].start_timestamp == 500


def test_metadata_is_written_as_type_help_ref_and_unit_ref() -> None:
    batch = batch_of([(B, 0.0, 1)], metadata={"b": Metadata("counter", "Requests.", "1")})
    expected = (
        b"\x22\x00" b"\x22\x08__name__" b"\x22\x01b"  # symbols "", "__name__", "b"
        b"\x22\x09Requests." b"\x22\x011"  # then help and unit, numbered after the labels
        b"\x2a\x10"  # timeseries, 16 bytes
        b"\x0a\x02\x01\x02"  # labels_refs
        b"\x12\x02\x10\x01"  # one sample: value 0.0 left out, timestamp 1
        b"\x2a\x06\x08\x01\x18\x03\x20\x04"  # metadata (field 5): type COUNTER, help_ref 3, unit_ref 4
    )
    assert rw2.Rw2Encoder().serialize(batch) == expected


def test_the_first_symbol_is_the_empty_string() -> None:
    assert request_of(batch_of([(A, 1.0, 1)])).symbols[0] == ""
    assert list(request_of(SampleBatch()).symbols) == [""]


def test_each_string_is_in_the_symbol_table_once() -> None:
    request = request_of(batch_of([(A, 1.0, 1), ((("__name__", "job"), ("node", "up")), 2.0, 1)]))
    assert sorted(request.symbols) == ["", "__name__", "job", "node", "up"]


def test_the_headers_are_the_ones_the_spec_requires() -> None:
    assert rw2.HEADERS == {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        "X-Prometheus-Remote-Write-Version": "2.0.0",
    }
    assert rw2.Rw2Encoder().encode(batch_of([(A, 1.0, 1)])).headers == rw2.HEADERS


def test_encoded_counts_float_samples_histograms_and_exemplars_separately() -> None:
    batch = batch_of(
        [(A, 1.0, 1), (A, 2.0, 2)],
        histograms=[(H, NATIVE)],
        exemplars=[(A, Exemplar((), 1.0, 1)), (H, Exemplar((), 1.0, 1))],
    )
    encoded = rw2.Rw2Encoder().encode(batch)
    assert (encoded.samples, encoded.histograms, encoded.exemplars) == (2, 1, 2)
    assert rw2.Rw2Encoder.protocol == rw2.Rw2Decoder.protocol == "rw2"


def test_samples_of_one_series_share_a_timeseries_in_timestamp_order_keeping_arrival_order_on_ties() -> None:
    request = request_of(batch_of([(A, 3.0, 300), (B, 9.0, 900), (A, 1.0, 100), (A, 5.0, 100)]))
    first, second = request.timeseries
    assert labels_of(request, first) == list(A) and labels_of(request, second) == list(B)
    assert [(s.timestamp, s.value) for s in first.samples] == [(100, 1.0), (100, 5.0), (300, 3.0)]


def test_start_timestamps_ride_in_each_sample() -> None:
    request = request_of(batch_of([(A, 1.0, 2000), (A, 2.0, 1000)], starts=[50, 40]))
    assert [(s.timestamp, s.start_timestamp) for s in request.timeseries[0].samples] == [(1000, 40), (2000, 50)]


def test_a_series_with_float_samples_and_histograms_is_sent_as_two_timeseries() -> None:
    request = request_of(batch_of([(A, 1.0, 1)], histograms=[(A, NATIVE)]))
    floats, hists = request.timeseries
    assert labels_of(request, floats) == labels_of(request, hists) == list(A)
    assert len(floats.samples) == 1 and not floats.histograms
    assert len(hists.histograms) == 1 and not hists.samples


def test_histograms_carry_integer_counts_spans_and_their_start_timestamp() -> None:
    (ts,) = request_of(batch_of(histograms=[(H, NATIVE)])).timeseries
    (h,) = ts.histograms
    assert h.WhichOneof("count") == "count_int" and h.count_int == 7
    assert h.WhichOneof("zero_count") == "zero_count_int" and h.zero_count_int == 1
    assert (h.sum, h.schema, h.zero_threshold, h.timestamp, h.start_timestamp) == (12.5, 3, 1e-128, 500, 100)
    assert [(s.offset, s.length) for s in h.positive_spans] == [(1, 2), (3, 1)]
    assert list(h.positive_deltas) == [1, 1, 1] and list(h.negative_deltas) == [2]
    assert h.reset_hint == Histogram.RESET_HINT_UNSPECIFIED


def test_a_gauge_histogram_is_marked_with_the_gauge_reset_hint() -> None:
    batch = batch_of(histograms=[(H, NATIVE)], metadata={"h": Metadata("gaugehistogram")})
    assert request_of(batch).timeseries[0].histograms[0].reset_hint == Histogram.RESET_HINT_GAUGE


def test_a_stale_histogram_keeps_its_exact_nan_bits() -> None:
    stale = NativeHistogram(100, STALE_NAN, STALE_NAN, 0, 0.0, 0)
    (h,) = request_of(batch_of(histograms=[(H, stale)])).timeseries[0].histograms
    assert h.WhichOneof("count") == "count_float"
    assert struct.pack("<d", h.count_float) == struct.pack("<d", h.sum) == struct.pack("<Q", 0x7FF0000000000002)


def test_exemplars_ride_on_their_series_first_timeseries_in_timestamp_order() -> None:
    late, early = Exemplar((("trace_id", "ab"),), 2.0, 300), Exemplar((("trace_id", "cd"),), 1.0, 200)
    batch = batch_of([(A, 1.0, 1), (B, 1.0, 1)], histograms=[(A, NATIVE)], exemplars=[(A, late), (A, early)])
    request = request_of(batch)
    floats, other, hists = request.timeseries
    assert [e.timestamp for e in floats.exemplars] == [200, 300]
    trace_ids = [request.symbols[e.labels_refs[1]] for e in floats.exemplars]
    assert trace_ids == ["cd", "ab"]
    assert not other.exemplars and not hists.exemplars


def test_exemplars_of_a_histogram_only_series_ride_on_its_histogram_timeseries() -> None:
    request = request_of(batch_of(histograms=[(H, NATIVE)], exemplars=[(H, Exemplar((), 1.5, 500))]))
    (ts,) = request.timeseries
    assert len(ts.histograms) == 1 and [e.value for e in ts.exemplars] == [1.5]


def test_exemplars_of_a_series_with_nothing_else_in_the_batch_are_left_out_and_not_counted() -> None:
    # rc.4: every TimeSeries carries a sample or a histogram; Prometheus answers 400 to one that does not.
    encoded = rw2.Rw2Encoder().encode(batch_of([(A, 1.0, 1)], exemplars=[(B, Exemplar((), 1.0, 1))]))
    request = Request.FromString(decompress("snappy", encoded.body, 1 << 20))
    assert len(request.timeseries) == 1 and not request.timeseries[0].exemplars
    assert encoded.exemplars == 0


def test_metadata_goes_on_every_timeseries_of_its_family() -> None:
    batch = batch_of([(A, 1.0, 1), ((("__name__", "up"), ("job", "x")), 1.0, 1), (B, 1.0, 1)])
    batch.metadata = {"up": Metadata("gauge", "Is it up.", "")}
    request = request_of(batch)
    up1, up2, b = request.timeseries
    for ts in (up1, up2):
        assert ts.HasField("metadata")
        assert ts.metadata.type == 2  # METRIC_TYPE_GAUGE
        assert request.symbols[ts.metadata.help_ref] == "Is it up." and ts.metadata.unit_ref == 0
    assert not b.HasField("metadata")


def test_metadata_of_unknown_type_with_no_help_or_unit_still_comes_back() -> None:
    batch = batch_of([(A, 1.0, 1)], metadata={"up": Metadata("unknown")})
    assert round_trip(batch).metadata == {"up": Metadata("unknown", "", "")}


def test_the_decoder_leaves_start_timestamps_empty_when_no_sample_has_one() -> None:
    assert round_trip(batch_of([(A, 1.0, 1)], starts=[0])).start_timestamps == []
    assert round_trip(batch_of([(A, 1.0, 1), (B, 1.0, 1)], starts=[0, 9])).start_timestamps == [0, 9]


def test_the_encoder_cache_is_bounded_and_empties_between_requests_when_full() -> None:
    requests = [batch_of([((("__name__", f"m{r}_{i}"),), 1.0, 1) for i in range(50)]) for r in range(4)]
    unbounded = rw2.Rw2Encoder()
    unbounded.serialize(requests[0])
    one_request = unbounded._series_bytes
    encoder = rw2.Rw2Encoder(cache_bytes=2000)
    for batch in requests + requests:
        assert encoder.serialize(batch) == rw2.build_request(batch).SerializeToString()
        assert encoder._series_bytes <= 2000 + one_request  # over by at most one request's own, then emptied


def test_a_request_with_the_same_series_in_another_order_is_numbered_afresh() -> None:
    encoder = rw2.Rw2Encoder()
    forward = batch_of([(A, 1.0, 1), (B, 2.0, 1)])
    backward = batch_of([(B, 2.0, 1), (A, 1.0, 1)], metadata={"b": Metadata("counter", "", "")})
    for batch in (forward, backward, forward, backward):
        assert encoder.serialize(batch) == rw2.build_request(batch).SerializeToString()


# --- the decoder refuses what the spec forbids ---------------------------------------------------------------


def decode(request: Request) -> SampleBatch:
    return rw2.Rw2Decoder().decode(body(request), {})


def series(refs: list[int], **fields: object) -> TimeSeries:
    return TimeSeries(labels_refs=refs, samples=[Sample(value=1.0, timestamp=1)], **fields)  # type: ignore[arg-type]


SYMBOLS = ["", "__name__", "up", "job", "node", "a"]


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        pytest.param(Request(symbols=SYMBOLS, timeseries=[series([1, 2, 3])]), "odd length", id="odd labels_refs"),
        pytest.param(Request(symbols=SYMBOLS, timeseries=[series([1, 2, 3, 9])]), "out of range", id="ref range"),
        pytest.param(Request(symbols=SYMBOLS, timeseries=[series([1, 2, 0, 4])]), "empty label name", id="empty"),
        pytest.param(Request(symbols=SYMBOLS, timeseries=[series([3, 4, 1, 2])]), "not sorted", id="unsorted"),
        pytest.param(Request(symbols=SYMBOLS, timeseries=[series([1, 2, 3, 4, 3, 5])]), "duplicated", id="dup"),
        pytest.param(Request(symbols=SYMBOLS, timeseries=[series([3, 4])]), "no __name__", id="no name"),
        pytest.param(
            Request(symbols=SYMBOLS, timeseries=[series([1, 2], histograms=[Histogram(count_int=1, timestamp=1)])]),
            "both samples and histograms",
            id="samples and histograms",
        ),
        pytest.param(
            Request(symbols=SYMBOLS, timeseries=[series([1, 2], exemplars=[ExemplarMessage(labels_refs=[1])])]),
            "odd length",
            id="exemplar labels odd",
        ),
        pytest.param(
            Request(symbols=SYMBOLS, timeseries=[series([1, 2], exemplars=[ExemplarMessage(labels_refs=[1, 77])])]),
            "out of range",
            id="exemplar ref range",
        ),
        pytest.param(
            Request(symbols=SYMBOLS, timeseries=[series([1, 2], metadata={"type": 1, "help_ref": 40})]),
            "help_ref 40 is out of range",
            id="help ref range",
        ),
    ],
)
def test_the_decoder_refuses_a_malformed_request_naming_the_problem(request_: Request, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        decode(request_)


def test_the_decoder_refuses_bytes_that_are_not_protobuf() -> None:
    with pytest.raises(DecodeError, match="not an io.prometheus.write.v2.Request"):
        rw2.Rw2Decoder().decode(b"\x2a\xff\xff\xff\x0f", {})


def test_the_decoder_counts_float_and_custom_bucket_histograms_as_dropped() -> None:
    request = Request(
        symbols=SYMBOLS,
        timeseries=[
            TimeSeries(
                labels_refs=[1, 2],
                histograms=[
                    Histogram(count_float=2.0, positive_counts=[2.0], timestamp=1),
                    Histogram(count_int=1, schema=-53, custom_values=[1.0], timestamp=2),
                    Histogram(count_int=1, zero_count_int=1, timestamp=3),
                ],
            )
        ],
    )
    batch = decode(request)
    assert [h.timestamp for h in batch.histograms] == [3]
    assert batch.dropped == {"float_histogram": 1, "custom_buckets_histogram": 1}


def test_the_decoder_reads_a_request_from_another_sender() -> None:
    request = Request(
        symbols=["", "job", "node", "__name__", "up", "help"],
        timeseries=[
            TimeSeries(
                labels_refs=[3, 4, 1, 2],
                samples=[Sample(value=2.0, timestamp=10, start_timestamp=5)],
                metadata={"type": 1, "help_ref": 5},
            )
        ],
    )
    batch = decode(request)
    assert batch.labels == [(("__name__", "up"), ("job", "node"))]
    assert (batch.values, batch.timestamps, batch.start_timestamps, batch.sizes) == ([2.0], [10], [5], [0])
    assert batch.metadata == {"up": Metadata("counter", "help", "")}


# --- Written headers ---------------------------------------------------------------------------------------


def test_written_headers_name_the_three_counts() -> None:
    assert rw2.written_headers(3, 2, 1) == {
        "X-Prometheus-Remote-Write-Samples-Written": "3",
        "X-Prometheus-Remote-Write-Histograms-Written": "2",
        "X-Prometheus-Remote-Write-Exemplars-Written": "1",
    }


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(rw2.written_headers(3, 2, 1), (3, 2, 1), id="all three"),
        pytest.param({"x-prometheus-remote-write-samples-written": "7"}, (7, 0, 0), id="lower case, samples only"),
        pytest.param({"X-Prometheus-Remote-Write-Samples-Written": "0"}, (0, 0, 0), id="zero is an answer"),
        pytest.param({}, None, id="a 1.x receiver says nothing"),
        pytest.param({"X-Prometheus-Remote-Write-Histograms-Written": "2"}, None, id="no samples header"),
        pytest.param({"X-Prometheus-Remote-Write-Samples-Written": "many"}, None, id="not a count"),
        pytest.param(
            {"X-Prometheus-Remote-Write-Samples-Written": "1", "X-Prometheus-Remote-Write-Exemplars-Written": "x"},
            (1, 0, 0),
            id="an unreadable exemplars count is 0",
        ),
    ],
)
def test_parse_written_reads_what_the_receiver_says_it_stored(
    headers: dict[str, str], expected: tuple[int, int, int] | None
) -> None:
    assert rw2.parse_written(headers) == expected


def test_the_schema_is_registered_under_a_file_name_of_our_own() -> None:
    from exporters.remote_write.proto import remote_write_v2_pb2

    assert remote_write_v2_pb2.DESCRIPTOR.name == "headwater/remote_write_v2.proto"
    assert remote_write_v2_pb2.Request.DESCRIPTOR.full_name == "io.prometheus.write.v2.Request"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_a_grouped_batch_is_written_as_the_same_batch_not_marked_grouped(batch: SampleBatch) -> None:
    # As the batcher hands it over: each series one run of one tuple object, in time order (ties as they came).
    order = [i for members in group_by_series(batch.labels).values()
             for i in sorted(members, key=batch.timestamps.__getitem__)]
    first = {labels: labels for labels in reversed(batch.labels)}
    grouped = SampleBatch(
        labels=[first[batch.labels[i]] for i in order],
        values=[batch.values[i] for i in order],
        timestamps=[batch.timestamps[i] for i in order],
        sizes=[batch.sizes[i] for i in order],
        start_timestamps=[batch.start_timestamps[i] for i in order] if batch.start_timestamps else [],
        histogram_labels=batch.histogram_labels, histograms=batch.histograms,
        histogram_sizes=batch.histogram_sizes, exemplar_labels=batch.exemplar_labels, exemplars=batch.exemplars,
        exemplar_sizes=batch.exemplar_sizes, metadata=batch.metadata,
    )
    expected = rw2.Rw2Encoder().serialize(grouped)
    grouped.grouped = True
    assert rw2.Rw2Encoder().serialize(grouped) == expected
    encoder = rw2.Rw2Encoder()  # and with its caches warm from the same batch
    encoder.serialize(grouped)
    assert encoder.serialize(grouped) == expected
