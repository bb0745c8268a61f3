"""The rw1 / vm / rw2 decoders' label caches: the steady state returns the same label tuples, decodes exactly
what an uncached decode gives, keeps its byte bound and counts what it evicts."""

from __future__ import annotations

import pytest

from exporters.remote_write.encoding import DecodeError
from exporters.remote_write.proto.remote_write_v1_pb2 import Label, Sample, TimeSeries, WriteRequest
from exporters.remote_write.proto.remote_write_v2_pb2 import Request
from exporters.remote_write.proto.remote_write_v2_pb2 import Sample as Sample2
from exporters.remote_write.proto.remote_write_v2_pb2 import TimeSeries as TimeSeries2
from exporters.remote_write.rw2 import Rw2Decoder
from exporters.remote_write.vm import Rw1Decoder, _decode_uncached


def rw1_body(*label_sets: list[tuple[str, str]], stamp: int = 1000) -> bytes:
    return WriteRequest(timeseries=[
        TimeSeries(labels=[Label(name=n, value=v) for n, v in labels], samples=[Sample(value=1.5, timestamp=stamp)])
        for labels in label_sets
    ]).SerializeToString()


def rw2_body(symbols: list[str], *refs: list[int], stamp: int = 1000) -> bytes:
    return Request(symbols=symbols, timeseries=[
        TimeSeries2(labels_refs=r, samples=[Sample2(value=2.0, timestamp=stamp)]) for r in refs
    ]).SerializeToString()


UP = [("__name__", "up"), ("job", "node")]
LOAD = [("__name__", "load1"), ("instance", "a")]


def test_rw1_the_same_series_in_later_requests_is_the_same_label_tuple():
    decoder = Rw1Decoder()
    first = decoder.decode(rw1_body(UP, LOAD, stamp=1000), {})
    second = decoder.decode(rw1_body(UP, LOAD, stamp=2000), {})
    assert [a is b for a, b in zip(first.labels, second.labels, strict=True)] == [True, True]
    assert second.labels == [tuple(UP), tuple(LOAD)] and second.timestamps == [2000, 2000]


def test_rw1_cached_decode_equals_the_uncached_decode():
    decoder = Rw1Decoder()
    decoder.decode(rw1_body(UP), {})
    body = rw1_body(UP, LOAD, stamp=5)
    assert decoder.decode(body, {}) == _decode_uncached(body)


def test_rw1_a_bad_series_after_cached_ones_gets_the_uncached_error():
    decoder = Rw1Decoder()
    decoder.decode(rw1_body(UP), {})
    with pytest.raises(DecodeError, match="series 1 has an unsorted label name '__name__'"):
        decoder.decode(rw1_body(UP, [("job", "x"), ("__name__", "y")]), {})


def test_rw2_the_same_series_under_other_refs_is_the_same_label_tuple():
    decoder = Rw2Decoder()
    first = decoder.decode(rw2_body(["", "__name__", "up", "job", "node"], [1, 2, 3, 4]), {})
    second = decoder.decode(rw2_body(["", "job", "node", "__name__", "up"], [3, 4, 1, 2]), {})
    assert first.labels[0] is second.labels[0]
    assert second.labels == [tuple(UP)]


def test_rw2_a_bad_series_after_cached_ones_gets_the_same_error():
    decoder = Rw2Decoder()
    decoder.decode(rw2_body(["", "__name__", "up", "job", "node"], [1, 2, 3, 4]), {})
    with pytest.raises(DecodeError, match=r"timeseries\[1\]: symbol ref 9 is out of range"):
        decoder.decode(rw2_body(["", "__name__", "up", "job", "node"], [1, 2, 3, 4], [1, 9]), {})


@pytest.mark.parametrize("decoder_type", [Rw1Decoder, Rw2Decoder])
def test_a_decoder_cache_evicts_within_its_byte_bound_and_counts_it(decoder_type):
    decoder = decoder_type(cache_bytes=64 << 10)
    for n in range(200):
        labels = [("__name__", "m"), ("i", f"{n:060d}")]
        if decoder_type is Rw1Decoder:
            body = rw1_body(labels)
        else:
            body = rw2_body(["", *(s for pair in labels for s in pair)], [1, 2, 3, 4])
        assert decoder.decode(body, {}).labels == [tuple(labels)]
    assert decoder._cache.nbytes <= 64 << 10
    assert decoder.evicted > 0
