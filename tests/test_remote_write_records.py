"""The disk queue's record format for remote-write batches: exact round trips within a segment, definitions
learnt without decoding, segments that stand alone, and records that cannot be read refused with ValueError."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters.remote_write import records
from exporters.remote_write.records import SampleBatchCodec
from exporters.remote_write.series import STALE_NAN, Labels, Metadata, NativeHistogram, SampleBatch
from tests.series_strategies import NAN_PAYLOAD, batches, bits, copied, floats, label_sets, timestamps

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A: Labels = (("__name__", "up"), ("job", "node"))
B: Labels = (("__name__", "load"), ("cpu", "0"), ("job", "node"))


def exact(batch: SampleBatch) -> dict[str, Any]:
    """Everything a record carries, in order, floats as their bits (so NaN payloads and -0.0 compare)."""

    def histogram(h: NativeHistogram) -> tuple[Any, ...]:
        count = ("f", bits(h.count)) if isinstance(h.count, float) else ("i", h.count)
        return h._replace(count=count, sum=bits(h.sum), zero_threshold=bits(h.zero_threshold))

    return {
        "labels": batch.labels,
        "values": [bits(v) for v in batch.values],
        "timestamps": batch.timestamps,
        "sizes": batch.sizes,
        "start_timestamps": batch.start_timestamps,
        "histogram_labels": batch.histogram_labels,
        "histograms": [histogram(h) for h in batch.histograms],
        "histogram_sizes": batch.histogram_sizes,
        "exemplar_labels": batch.exemplar_labels,
        "exemplars": [(e.labels, bits(e.value), e.timestamp) for e in batch.exemplars],
        "exemplar_sizes": batch.exemplar_sizes,
        "metadata": batch.metadata,
        "grouped": batch.grouped,
    }


def batch_of(labels: list[Labels], **extra: Any) -> SampleBatch:
    n = len(labels)
    return SampleBatch(labels=labels, values=[float(i) for i in range(n)], timestamps=[1000 + i for i in range(n)],
                       sizes=[40] * n, **extra)


def written(batches: list[SampleBatch], codec: SampleBatchCodec | None = None) -> list[bytes]:
    """The records of one segment."""
    writer = (codec or SampleBatchCodec()).writer()
    return [writer.encode(batch) for batch in batches]


@st.composite
def segments(draw: Any) -> list[SampleBatch]:
    """What one segment holds: batches over a shared pool of label sets (one tuple object per series, as the
    series cache hands them out, now and then an equal copy), interleaved or grouped, some repeating an
    earlier batch's label column, with sizes past 32 bits and start timestamps now and then, and batches
    with histograms, exemplars and metadata among them."""
    pool = draw(st.lists(label_sets(), min_size=1, max_size=6, unique=True))
    out: list[SampleBatch] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(("interleaved", "grouped", "repeat", "extras")))
        if kind == "extras":
            out.append(draw(batches(max_series=4, max_samples_per_series=3)))
            continue
        if kind == "repeat" and out:
            labels = list(draw(st.sampled_from(out)).labels)
            grouped = False
        else:
            series = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=6, unique=True))
            counts = [draw(st.integers(1, 4)) for _ in series]
            grouped = kind == "grouped"
            if grouped:
                labels = [s for s, k in zip(series, counts) for _ in range(k)]
            else:
                labels = [s if draw(st.integers(0, 4)) else copied(s) for s, k in zip(series, counts) for _ in range(k)]
                labels = draw(st.permutations(labels)) if labels else []
        n = len(labels)
        sizes = st.one_of(st.integers(0, 300), st.integers(-(2**40), 2**40))
        batch = SampleBatch(
            labels=labels,
            values=draw(st.lists(floats, min_size=n, max_size=n)),
            timestamps=draw(st.one_of(st.lists(timestamps, min_size=n, max_size=n), timestamps.map(lambda t: [t] * n))),
            sizes=draw(st.lists(sizes, min_size=n, max_size=n)),
            grouped=grouped,
        )
        if n and draw(st.booleans()):
            batch.start_timestamps = draw(st.one_of(
                st.lists(timestamps, min_size=n, max_size=n), timestamps.map(lambda t: [t] * n)))
        out.append(batch)
    return out


@PROPERTY
@given(segments())
def test_a_segment_of_batches_round_trips_exactly_in_order(batches: list[SampleBatch]) -> None:
    reader = SampleBatchCodec().reader()
    decoded = [reader.decode(record) for record in written(batches)]
    assert [exact(batch) for batch in decoded] == [exact(batch) for batch in batches]


@PROPERTY
@given(segments())
def test_a_record_refers_to_label_sets_an_earlier_record_of_the_segment_defined(batches: list[SampleBatch]) -> None:
    batches = [b for b in batches if b.labels]
    if not batches:
        return
    first, again = written([batches[0], batches[0]])
    assert len(again) < len(first)
    with pytest.raises(ValueError, match="label set"):
        SampleBatchCodec().reader().decode(again)
    reader = SampleBatchCodec().reader()
    reader.learn(first)
    assert exact(reader.decode(again)) == exact(batches[0])


@PROPERTY
@given(st.lists(floats, max_size=50))
def test_values_come_back_bit_for_bit(values: list[float]) -> None:
    values += [STALE_NAN, NAN_PAYLOAD, -0.0, 0.0, float("inf"), float("-inf"), struct.unpack("<d", b"\x01" * 8)[0]]
    batch = batch_of([A] * len(values))
    batch.values = values
    (record,) = written([batch])
    assert [bits(v) for v in SampleBatchCodec().reader().decode(record).values] == [bits(v) for v in values]


@PROPERTY
@given(batches(max_series=5, max_samples_per_series=3))
def test_histograms_exemplars_metadata_and_start_timestamps_come_back(batch: SampleBatch) -> None:
    batch.histogram_sizes = list(range(len(batch.histograms)))
    batch.exemplar_sizes = [2**40 + i for i in range(len(batch.exemplars))]
    (record,) = written([batch])
    decoded = SampleBatchCodec().reader().decode(record)
    assert exact(decoded) == exact(batch)
    assert all(type(h) is NativeHistogram for h in decoded.histograms)
    assert all(type(m) is Metadata for m in decoded.metadata.values())


@pytest.mark.parametrize("grouped", [True, False])
def test_the_grouped_flag_comes_back_as_written(grouped: bool) -> None:
    batch = batch_of([A, A, A, B, B], grouped=grouped)
    (record,) = written([batch])
    decoded = SampleBatchCodec().reader().decode(record)
    assert decoded.grouped is grouped
    assert decoded.labels == [A, A, A, B, B]


def test_dropped_counts_do_not_travel() -> None:
    batch = batch_of([A])
    batch.dropped["too_old"] = 3
    (record,) = written([batch])
    assert not SampleBatchCodec().reader().decode(record).dropped


@PROPERTY
@given(segments())
def test_every_entry_of_a_series_decodes_to_one_tuple_object_across_the_segment(batches: list[SampleBatch]) -> None:
    reader = SampleBatchCodec().reader()
    seen: dict[Labels, Labels] = {}
    for record in written(batches):
        decoded = reader.decode(record)
        for labels in decoded.labels + decoded.histogram_labels + decoded.exemplar_labels:
            assert seen.setdefault(labels, labels) is labels


@PROPERTY
@given(segments(), st.integers(0, 5))
def test_learning_the_first_records_then_decoding_the_rest_equals_decoding_all(
    batches: list[SampleBatch], k: int
) -> None:
    segment = written(batches)
    everything = SampleBatchCodec().reader()
    all_decoded = [exact(everything.decode(record)) for record in segment]
    reader = SampleBatchCodec().reader()
    for record in segment[:k]:
        reader.learn(record)
    assert [exact(reader.decode(record)) for record in segment[k:]] == all_decoded[k:]


@PROPERTY
@given(segments(), segments())
def test_a_new_segment_stands_alone_without_the_old_dictionary(old: list[SampleBatch], new: list[SampleBatch]) -> None:
    codec = SampleBatchCodec()
    written(old + new, codec)  # the old segment defined every label set the new one uses
    reader = codec.reader()
    assert [exact(reader.decode(record)) for record in written(new, codec)] == [exact(b) for b in new]


def test_decoding_a_record_again_gives_the_same_batch_with_the_same_tuples() -> None:
    first, second = written([batch_of([A, B]), batch_of([B, A])])
    reader = SampleBatchCodec().reader()
    once = reader.decode(first)
    reader.decode(second)
    twice = reader.decode(first)
    assert exact(twice) == exact(once)
    assert twice.labels[0] is once.labels[0] and twice.labels[1] is once.labels[1]


def test_a_record_the_reader_never_saw_breaks_only_records_that_use_its_definitions() -> None:
    c: Labels = (("__name__", "c"), ("pod", "p-1"))
    d: Labels = (("__name__", "d"),)
    e: Labels = (("__name__", "e"), ("pod", "p-1"))  # built on a string the lost record defined
    segment = written([batch_of([A]), batch_of([c]), batch_of([A, d]), batch_of([c, A]), batch_of([e])])
    first, lost, own, uses_lost, shares_a_string = segment
    reader = SampleBatchCodec().reader()
    reader.learn(first)
    assert reader.decode(own).labels == [A, d]
    for record in (uses_lost, shares_a_string):
        with pytest.raises(ValueError, match="not read"):
            reader.decode(record)
    reader.learn(lost)  # shown late (a record read again): its definitions fill the hole
    assert reader.decode(uses_lost).labels == [c, A]


def test_a_batch_that_cannot_be_encoded_raises_value_error_and_changes_nothing() -> None:
    c: Labels = (("__name__", "c"),)
    writer = SampleBatchCodec().writer()
    segment = [writer.encode(batch_of([A]))]
    with pytest.raises(ValueError, match="labels"):
        writer.encode(batch_of([c, (("job", 3),)]))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timestamps"):
        writer.encode(SampleBatch(labels=[c], values=[1.0], timestamps=[], sizes=[1]))
    segment += [writer.encode(batch_of([c, A])), writer.encode(batch_of([c]))]
    reader = SampleBatchCodec().reader()
    assert [reader.decode(record).labels for record in segment] == [[A], [c, A], [c]]


def test_a_label_column_changed_in_place_after_encoding_is_encoded_afresh() -> None:
    writer = SampleBatchCodec().writer()
    batch = batch_of([A, B, A])
    segment = [writer.encode(batch)]
    batch.labels[1] = A  # the same list object and length, the same first and last entries
    segment.append(writer.encode(batch))
    reader = SampleBatchCodec().reader()
    assert [reader.decode(record).labels for record in segment] == [[A, B, A], [A, A, A]]


def test_an_equal_copy_of_a_label_set_refers_to_the_same_definition() -> None:
    first, second = written([batch_of([A]), batch_of([copied(A)])])
    reader = SampleBatchCodec().reader()
    reader.learn(first)
    assert reader.decode(second).labels[0] == A


def test_a_codec_refuses_settings_out_of_range_naming_them() -> None:
    with pytest.raises(ValueError, match="level"):
        SampleBatchCodec(level=99)
    with pytest.raises(ValueError, match="memo"):
        SampleBatchCodec(memo=-1)


# Records that cannot be read: only ValueError, whatever the damage.

def parts(record: bytes) -> tuple[int, bytes, bytes]:
    """(flags, definitions, data) of a record, uncompressed."""
    _, flags, defs_length, defs_raw, _ = records._HEAD.unpack_from(record)
    start = records._HEAD.size
    inflate = zstandard.ZstdDecompressor().decompress
    defs = inflate(record[start:start + defs_length]) if defs_length else b""
    return flags, defs, inflate(record[start + defs_length:])


def record_of(flags: int, defs: bytes, data: bytes) -> bytes:
    deflate = zstandard.ZstdCompressor().compress
    packed = deflate(defs) if defs else b""
    head = records._HEAD.pack(records.VERSION, flags, len(packed), len(defs), len(data))
    return head + packed + deflate(data)


def only_value_error(reader: Any, record: bytes) -> None:
    """Learn and decode `record`; anything but success or ValueError fails the test."""
    for call in (reader.learn, reader.decode):
        try:
            call(record)
        except ValueError as error:
            assert type(error) is ValueError and str(error)


@st.composite
def damaged(draw: Any, record: bytes) -> bytes:
    data = bytearray(record)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(("flip", "set", "cut", "insert")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and data:
            data[at] = draw(st.sampled_from((0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255)))))
        elif how == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@PROPERTY
@given(segments(), st.data())
def test_a_truncated_record_raises_value_error(batches: list[SampleBatch], data: st.DataObject) -> None:
    segment = written(batches)
    index = data.draw(st.integers(0, len(segment) - 1))
    record = segment[index]
    cut = data.draw(st.integers(0, len(record) - 1))
    reader = SampleBatchCodec().reader()
    for earlier in segment[:index]:
        reader.learn(earlier)
    with pytest.raises(ValueError):
        reader.decode(record[:cut])


@PROPERTY
@given(segments(), st.data())
def test_a_damaged_record_decodes_or_raises_value_error(batches: list[SampleBatch], data: st.DataObject) -> None:
    segment = written(batches)
    index = data.draw(st.integers(0, len(segment) - 1))
    reader = SampleBatchCodec().reader()
    for earlier in segment[:index]:
        reader.learn(earlier)
    only_value_error(reader, data.draw(damaged(segment[index])))


@PROPERTY
@given(segments(), st.data())
def test_damaged_contents_that_still_decompress_decode_or_raise_value_error(
    batches: list[SampleBatch], data: st.DataObject
) -> None:
    segment = written(batches)
    index = data.draw(st.integers(0, len(segment) - 1))
    flags, defs, body = parts(segment[index])
    if defs and data.draw(st.booleans()):
        defs = data.draw(damaged(defs))
    else:
        body = data.draw(damaged(body))
    reader = SampleBatchCodec().reader()
    for earlier in segment[:index]:
        reader.learn(earlier)
    only_value_error(reader, record_of(flags, defs, body))


@pytest.mark.parametrize("record", [
    b"",
    b"\x02" + bytes(records._HEAD.size - 1),
    records._HEAD.pack(records.VERSION, 0, 0, 0, 1 << 30) + b"\x28\xb5\x2f\xfd",
    records._HEAD.pack(records.VERSION, 0, 0, 0, 100) + zstandard.ZstdCompressor().compress(b"x" * 100),
    record_of(0, b"", records._DATA.pack(2**32 - 1, 2**32 - 1, 0, 0, 0, 0)),
    record_of(0, b"", records._DATA.pack(1, 1, 0, 9, 0, 0) + bytes(32)),
    record_of(0, records._DEFS.pack(0, 2**32 - 1, 0, 0, 0, 0, 0, 0), b""),
    record_of(0, records._DEFS.pack(2**31, 0, 0, 0, 0, 0, 0, 0) + bytes(4), records._DATA.pack(0, 0, 0, 0, 0, 2)),
])
def test_records_with_impossible_lengths_are_refused_quickly(record: bytes) -> None:
    with pytest.raises(ValueError):
        SampleBatchCodec().reader().decode(record)


def test_a_reference_to_an_undefined_label_set_says_so() -> None:
    body = records._DATA.pack(1, 1, 0, 1, 0, 2) + struct.pack("<IdqI", 7, 1.0, 5, 40)
    with pytest.raises(ValueError, match="label set index past the 0"):
        SampleBatchCodec().reader().decode(record_of(0, b"", body))


def test_a_writer_remembers_one_object_per_label_set_however_many_equal_copies_it_is_given() -> None:
    """Memory within a segment is bounded by its distinct series, not by how many equal tuples arrive."""
    from exporters.remote_write.records import SampleBatchCodec
    from exporters.remote_write.series import SampleBatch

    writer = SampleBatchCodec().writer()
    for flush in range(50):
        copies = [tuple((("__name__", "m"), ("i", str(i)))) for i in range(20)]  # new objects every flush
        copies = [tuple(list(c)) for c in copies]
        writer.encode(SampleBatch(labels=copies, values=[float(flush)] * 20, timestamps=[flush] * 20,
                                  sizes=[10] * 20))
    assert len(writer._held) == 20
