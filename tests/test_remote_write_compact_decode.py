"""The gateway's fast paths for decoding compact requests give what the plain per-series algorithm gives: folds
over series (uniform counts strided, others one fold corrected per series), value words XOR'd as big integers,
per-series items spread over samples, state read and written by slices or by ref, and the values column read
from the body's raw records, packed or not."""

from __future__ import annotations

import operator
from array import array
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.remote_write.compact import last_of_each, running
from exporters.remote_write.compact_columns import (
    gather,
    last_words,
    raw_columns,
    running_xor,
    running_xor_last,
    sample_counts,
    sample_refs,
    sample_timestamps,
    scatter,
    spread,
    value_words,
)
from exporters.remote_write.encoding import DecodeError
from exporters.remote_write.proto.compact_pb2 import Request

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
WORDS = st.integers(0, (1 << 64) - 1)


@st.composite
def series_columns(draw: st.DrawFn, elements: st.SearchStrategy[int]) -> tuple[list[int], list[int], list[int]]:
    """(column, counts, bases): counts uniform half of the time."""
    series = draw(st.integers(1, 8))
    if draw(st.booleans()):
        counts = [draw(st.integers(1, 4))] * series
    else:
        counts = draw(st.lists(st.integers(1, 4), min_size=series, max_size=series))
    column = draw(st.lists(elements, min_size=sum(counts), max_size=sum(counts)))
    bases = draw(st.lists(elements, min_size=series, max_size=series))
    return column, counts, bases


def plain_running(column: list[int], counts: list[int], bases: list[int], op) -> list[int]:  # type: ignore[no-untyped-def]
    out: list[int] = []
    start = 0
    for count, base in zip(counts, bases):
        out += list(accumulate(column[start : start + count], op, initial=base))[1:]
        start += count
    return out


@settings(max_examples=300)
@given(series_columns(INT64), st.sampled_from([operator.add, operator.xor]))
def test_running_folds_each_series_from_its_base_as_the_plain_loop_does(data, op) -> None:  # type: ignore[no-untyped-def]
    column, counts, bases = data
    assert running(column, counts, bases, op) == plain_running(column, counts, bases, op)


def test_running_with_an_operation_that_has_no_inverse_folds_series_by_series() -> None:
    assert running([3, 1, 2], [1, 2], [5, 0], max) == [5, 1, 2]


@settings(max_examples=300)
@given(series_columns(WORDS))
def test_value_words_xor_within_series_as_the_plain_loop_does(data) -> None:  # type: ignore[no-untyped-def]
    column, counts, bases = data
    uniform = counts.count(counts[0]) == len(counts)
    bits = running_xor(array("Q", column), counts, array("Q", bases), uniform)
    assert bits.tolist() == plain_running(column, counts, bases, operator.xor)
    assert last_words(bits, counts).tolist() == last_of_each(bits.tolist(), counts)


@settings(max_examples=300)
@given(series_columns(WORDS))
def test_value_words_xor_the_same_from_bases_given_as_one_int_and_give_the_last_words_as_one(data) -> None:  # type: ignore[no-untyped-def]
    column, counts, bases = data
    uniform = counts.count(counts[0]) == len(counts)
    as_int = int.from_bytes(array("Q", bases), "little")
    bits, last = running_xor_last(array("Q", column), counts, as_int, uniform)
    assert bits.tolist() == plain_running(column, counts, bases, operator.xor)
    if uniform:
        assert last == int.from_bytes(last_words(bits, counts), "little")


@settings(max_examples=200)
@given(series_columns(INT64))
def test_per_series_items_spread_over_their_samples(data) -> None:  # type: ignore[no-untyped-def]
    _, counts, bases = data
    uniform = counts.count(counts[0]) == len(counts)
    assert spread(list(bases), counts, uniform) == [b for b, c in zip(bases, counts) for _ in range(c)]


@settings(max_examples=200)
@given(st.lists(WORDS, min_size=1, max_size=20), st.data())
def test_state_is_gathered_and_scattered_by_slices_or_by_ref_alike(state: list[int], data: st.DataObject) -> None:
    size = len(state)
    if data.draw(st.booleans()):
        start = data.draw(st.integers(0, size))
        refs: range | list[int] = range(start, data.draw(st.integers(start, size)))
    else:
        refs = sorted(data.draw(st.sets(st.integers(0, size - 1))))
    values = data.draw(st.lists(WORDS, min_size=len(refs), max_size=len(refs)))
    for kind in (list, lambda items: array("Q", items)):
        column = kind(state)
        assert list(gather(column, refs)) == [state[ref] for ref in refs]
        assert type(gather(column, refs)) is type(column)
        scatter(column, refs, kind(values))
        expected = list(state)
        for ref, value in zip(refs, values):
            expected[ref] = value
        assert list(column) == expected


@settings(max_examples=200)
@given(st.lists(WORDS, max_size=12), st.integers(0, 3), st.booleans())
def test_the_values_column_is_read_from_the_body_however_it_was_written(
    words: list[int], split: int, unpacked: bool
) -> None:
    """Packed in one record (as the encoder writes it), split over several, or one record per word, among other
    fields: the words read from the raw body are those protobuf parses."""
    head = Request(symbols=["a", "b"], timestamps=[1, -2], sample_counts=[1]).SerializeToString()
    tail = Request(metadata_unchanged=True, start_timestamps=[7]).SerializeToString()
    if unpacked:
        pieces = [b"\x39" + value.to_bytes(8, "little") for value in words]  # field 7, wire type 1
    else:
        cut = min(split, len(words))
        pieces = [Request(values=part).SerializeToString() for part in (words[:cut], words[cut:])]
    body = head + b"".join(pieces[: len(pieces) // 2]) + tail + b"".join(pieces[len(pieces) // 2 :])
    message = Request.FromString(body)
    columns = raw_columns(body, 100)
    assert columns is not None
    assert value_words(columns[7], message).tolist() == list(message.values) == words


@st.composite
def sample_columns(draw: st.DrawFn) -> tuple[Request, list[int]]:
    """A request's sample columns and the series' last timestamps, often in the steady state's shape (uniform
    counts, consecutive refs, the same delta-of-deltas and last timestamp for every series), often not."""
    series = draw(st.integers(1, 6))
    every = draw(st.sampled_from([1, 2, 5, 127, 128]))
    counts = [every] * series if draw(st.booleans()) else draw(
        st.lists(st.integers(1, 200), min_size=series, max_size=series))
    first = draw(st.sampled_from([0, 1, 200, (1 << 64) - 1]))
    deltas = [first] + ([1] * (series - 1) if draw(st.booleans()) else draw(
        st.lists(st.integers(1, 3), min_size=series - 1, max_size=series - 1)))
    stamp = st.sampled_from([0, 1, -1, 1000, 1003, -(1 << 63), (1 << 63) - 1])
    if draw(st.booleans()) and counts.count(counts[0]) == series:
        pattern = draw(st.lists(stamp, min_size=counts[0], max_size=counts[0]))
        timestamps = pattern * series
        if draw(st.booleans()):
            timestamps[draw(st.integers(0, len(timestamps) - 1))] = draw(stamp)
    else:
        timestamps = draw(st.lists(stamp, min_size=sum(counts), max_size=sum(counts)))
    last = draw(st.sampled_from([0, 1_700_000_000_000, (1 << 63) - 1]))
    bases = [last] * series if draw(st.booleans()) else draw(st.lists(stamp, min_size=series, max_size=series))
    message = Request(sample_series_ref_deltas=deltas, sample_counts=counts, timestamps=timestamps)
    return message, bases


@settings(max_examples=500)
@given(sample_columns())
def test_counts_refs_and_timestamps_read_by_pattern_equal_the_parsed_fields_decoded(data) -> None:  # type: ignore[no-untyped-def]
    message, bases = data
    raw = raw_columns(message.SerializeToString(), 100)
    assert raw is not None
    counts = list(message.sample_counts)
    assert sample_counts(message, raw) == counts
    assert list(sample_refs(message, raw)) == list(sample_refs(message, None)) == list(accumulate(message.sample_series_ref_deltas))
    intervals = plain_running(list(message.timestamps), counts, [0] * len(counts), operator.add)
    stamps = plain_running(intervals, counts, bases, operator.add)
    uniform = counts.count(counts[0]) == len(counts)
    if all(-(1 << 63) <= stamp < (1 << 63) for stamp in stamps):
        assert sample_timestamps(message, raw, counts, uniform, bases) == stamps
    else:
        with pytest.raises(DecodeError, match="beyond int64"):
            sample_timestamps(message, raw, counts, uniform, bases)


def test_a_body_of_more_records_than_its_budget_is_left_to_the_parsed_fields() -> None:
    """Millions of tiny records (unknown fields here) would make the Python walk cost seconds: past its budget
    it gives up and the parsed fields are used."""
    body = Request(values=[1, 2], sample_counts=[2]).SerializeToString() + b"\x78\x00" * 1000  # field 15 varints
    message = Request.FromString(body)
    assert raw_columns(body, 100) is None
    assert raw_columns(body, 2000) is not None
    assert value_words(None, message).tolist() == [1, 2]
