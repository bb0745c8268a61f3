"""Remote write 1.0 bodies: series to a `prometheus.WriteRequest`, compressed with snappy (block format).

Samples of the same series in one request share a single TimeSeries (labels written once), with samples
in timestamp order as the spec requires; series appear in the order their first sample arrived. Native
histograms go in `TimeSeries.histograms` the same way. Exemplars ride on their series' TimeSeries when it
has float samples; a series with only histograms gets its exemplars in a second TimeSeries right after
(Prometheus appends a TimeSeries' exemplars before its histograms, and drops an exemplar whose series does
not exist yet); exemplars of a series with nothing else in the request get a TimeSeries of their own.

`serialize` writes the protobuf wire format directly, byte for byte what `build_write_request(...)
.SerializeToString()` gives (the tests hold it to that), because building one message object per label
costs ~10 us per series in Python and the body of a series is the same every time it is sent: its encoded
labels are cached per encoder (`LabelCache`, bounded in bytes, cleared whole when full), so a sample costs
a dictionary lookup and a few bytes. Histograms and exemplars, far fewer, go through the generated messages.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

import cramjam

from exporters.remote_write.proto.remote_write_v1_pb2 import (
    BucketSpan,
    Histogram,
    Label,
    Sample,
    TimeSeries,
    WriteRequest,
)
from exporters.remote_write.proto.remote_write_v1_pb2 import Exemplar as ExemplarMessage
from exporters.remote_write.series import Exemplar, Labels, NativeHistogram, group_by_series

# The headers the spec requires on every request. They are reserved: configured headers may not replace
# them (the exporter refuses such a configuration).
HEADERS: dict[str, str] = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def _label_messages(series: Labels) -> list[Label]:
    return [Label(name=name, value=value) for name, value in series]


def _histogram_message(h: NativeHistogram) -> Histogram:
    message = Histogram(
        sum=h.sum,
        schema=h.schema,
        zero_threshold=h.zero_threshold,
        zero_count_int=h.zero_count,
        negative_spans=[BucketSpan(offset=offset, length=length) for offset, length in h.negative_spans],
        negative_deltas=h.negative_deltas,
        positive_spans=[BucketSpan(offset=offset, length=length) for offset, length in h.positive_spans],
        positive_deltas=h.positive_deltas,
        timestamp=h.timestamp,
    )
    if isinstance(h.count, float):
        message.count_float = h.count  # a staleness marker
    else:
        message.count_int = h.count
    return message


def _exemplar_messages(exemplars: Sequence[Exemplar], members: list[int]) -> list[ExemplarMessage]:
    chosen = sorted((exemplars[i] for i in members), key=lambda e: e.timestamp)
    return [ExemplarMessage(labels=_label_messages(e.labels), value=e.value, timestamp=e.timestamp) for e in chosen]


def build_write_request(
    labels: Sequence[Labels],
    values: Sequence[float],
    timestamps: Sequence[int],
    *,
    histogram_labels: Sequence[Labels] = (),
    histograms: Sequence[NativeHistogram] = (),
    exemplar_labels: Sequence[Labels] = (),
    exemplars: Sequence[Exemplar] = (),
) -> WriteRequest:
    """A WriteRequest with one TimeSeries per distinct label set; every label set must already be sorted."""
    timeseries = []
    exemplars_by_series = group_by_series(exemplar_labels) if exemplars else {}
    for series, members in group_by_series(labels).items():
        if len(members) > 1:
            members.sort(key=timestamps.__getitem__)  # stable: equal timestamps keep arrival order
        message = TimeSeries(
            labels=_label_messages(series),
            samples=[Sample(value=values[i], timestamp=timestamps[i]) for i in members],
        )
        attached = exemplars_by_series.pop(series, None)
        if attached:
            message.exemplars.extend(_exemplar_messages(exemplars, attached))
        timeseries.append(message)
    for series, members in group_by_series(histogram_labels).items():
        ordered = sorted((histograms[i] for i in members), key=lambda h: h.timestamp)
        timeseries.append(
            TimeSeries(labels=_label_messages(series), histograms=[_histogram_message(h) for h in ordered])
        )
        attached = exemplars_by_series.pop(series, None)
        if attached:
            timeseries.append(
                TimeSeries(labels=_label_messages(series), exemplars=_exemplar_messages(exemplars, attached))
            )
    for series, members in exemplars_by_series.items():
        timeseries.append(TimeSeries(labels=_label_messages(series), exemplars=_exemplar_messages(exemplars, members)))
    return WriteRequest(timeseries=timeseries)


LABEL_CACHE_BYTES = 16 << 20
"""Default bound on one `LabelCache`: bytes of encodings plus what their keys and the dict hold."""
_ENTRY_OVERHEAD = 104  # a dict slot and the bytes object's header


class LabelCache:
    """Encoded label sets kept between requests by one encoder (one endpoint connection), bounded in bytes.

    The key is the series' label tuple; its memory is charged too (the tuple, its pairs and their strings),
    since this cache may be what keeps a series alive after translation forgot it. Cleared whole when full:
    cheaper than LRU bookkeeping per hit, and the next requests refill it. Not shared between threads.
    """

    __slots__ = ("entries", "nbytes", "max_bytes")

    def __init__(self, max_bytes: int = LABEL_CACHE_BYTES) -> None:
        self.entries: dict[Labels, bytes] = {}
        self.nbytes = 0
        self.max_bytes = max_bytes

    def encoded(self, series: Labels) -> bytes:
        """TimeSeries field 1 (labels) for a label set, from the cache when it was sent before."""
        encoded = self.entries.get(series)
        if encoded is not None:
            return encoded
        parts = []
        for name, value in series:
            name_bytes, value_bytes = name.encode(), value.encode()
            label = (_field(b"\x0a", name_bytes) if name_bytes else b"") + (
                _field(b"\x12", value_bytes) if value_bytes else b""
            )
            parts.append(_field(b"\x0a", label))
        encoded = b"".join(parts)
        cost = len(encoded) + _ENTRY_OVERHEAD + _key_size(series)
        if self.nbytes + cost > self.max_bytes:
            self.entries.clear()
            self.nbytes = 0
        self.entries[series] = encoded
        self.nbytes += cost
        return encoded


def _key_size(series: Labels) -> int:
    return sys.getsizeof(series) + sum(
        sys.getsizeof(pair) + sys.getsizeof(name) + sys.getsizeof(value) for pair in series for name, value in (pair,)
    )


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_pack_double = struct.Struct("<d").pack
_POSITIVE_ZERO = bytes(8)


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n] if n >= 0 else _varint(n & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TIMESERIES_HEADS = [b"\x0a" + _varint(n) for n in range(4096)]  # WriteRequest field 1 tag and length


def _sample_entries(stamp: int) -> tuple[bytes, bytes, bytes]:
    """For a timestamp: (what precedes a sample's 8 value bytes, what follows them, the whole entry for a
    +0.0 value), TimeSeries field 2 tag and length included. A Sample is at most 20 bytes."""
    stamp_bytes = b"\x10" + _varint(stamp) if stamp else b""
    return (
        b"\x12" + _ONE_BYTE[9 + len(stamp_bytes)] + b"\x09",
        stamp_bytes,
        b"\x12" + _ONE_BYTE[len(stamp_bytes)] + stamp_bytes,
    )


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _exemplar_bytes(exemplars: Sequence[Exemplar], members: list[int]) -> bytes:
    return b"".join(_field(b"\x1a", m.SerializeToString()) for m in _exemplar_messages(exemplars, members))


def serialize(
    labels: Sequence[Labels],
    values: Sequence[float],
    timestamps: Sequence[int],
    *,
    histogram_labels: Sequence[Labels] = (),
    histograms: Sequence[NativeHistogram] = (),
    exemplar_labels: Sequence[Labels] = (),
    exemplars: Sequence[Exemplar] = (),
    cache: LabelCache | None = None,
) -> bytes:
    """`build_write_request(...).SerializeToString()`, without building the float samples' messages.

    `cache`: the caller's encoded label sets, kept across calls (one per connection); without one, a
    private cache lives for this call only."""
    if cache is None:
        cache = LabelCache()
    _encoded_labels = cache.encoded
    out: list[bytes] = []
    exemplars_by_series = group_by_series(exemplar_labels) if exemplars else {}
    stamps: dict[int, tuple[bytes, bytes, bytes]] = {}  # a request's samples share few timestamps
    if len(dict.fromkeys(labels)) == len(labels):  # the usual case: one sample per series
        # Pieces are appended and joined once: concatenating them would copy each series' labels repeatedly.
        cached = cache.entries.get
        append = out.append
        for series, value, stamp in zip(labels, values, timestamps):
            encoded = cached(series)
            if encoded is None:
                encoded = _encoded_labels(series)
            entries = stamps.get(stamp)
            if entries is None:
                entries = stamps[stamp] = _sample_entries(stamp)
            value_bytes = _pack_double(value)
            # TimeSeries field 2: one Sample (value, then timestamp); a +0.0 value is left out, as protobuf does.
            sample = entries[0] + value_bytes + entries[1] if value_bytes != _POSITIVE_ZERO else entries[2]
            size = len(encoded) + len(sample)
            if exemplars_by_series and series in exemplars_by_series:
                sample += _exemplar_bytes(exemplars, exemplars_by_series.pop(series))
                size = len(encoded) + len(sample)
            append(_TIMESERIES_HEADS[size] if size < len(_TIMESERIES_HEADS) else b"\x0a" + _varint(size))
            append(encoded)
            append(sample)
    else:
        for series, members in group_by_series(labels).items():
            if len(members) > 1:
                members.sort(key=timestamps.__getitem__)
            parts = [_encoded_labels(series)]
            for i in members:
                value_bytes = _pack_double(values[i])
                stamp = timestamps[i]
                entries = stamps.get(stamp)
                if entries is None:
                    entries = stamps[stamp] = _sample_entries(stamp)
                parts.append(entries[0] + value_bytes + entries[1] if value_bytes != _POSITIVE_ZERO else entries[2])
            attached = exemplars_by_series.pop(series, None)
            if attached:
                parts.append(_exemplar_bytes(exemplars, attached))
            out.append(_field(b"\x0a", b"".join(parts)))
    for series, members in group_by_series(histogram_labels).items():
        ordered = sorted((histograms[i] for i in members), key=lambda h: h.timestamp)
        encoded = _encoded_labels(series)
        out.append(
            _field(
                b"\x0a", encoded + b"".join(_field(b"\x22", _histogram_message(h).SerializeToString()) for h in ordered)
            )
        )
        attached = exemplars_by_series.pop(series, None)
        if attached:
            out.append(_field(b"\x0a", encoded + _exemplar_bytes(exemplars, attached)))
    for series, members in exemplars_by_series.items():
        out.append(_field(b"\x0a", _encoded_labels(series) + _exemplar_bytes(exemplars, members)))
    return b"".join(out)


def compress(data: bytes) -> bytes:
    """Snappy block format, as remote write requires (the framed format is refused by receivers)."""
    return bytes(cramjam.snappy.compress_raw(data))


def decompress(body: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(body))


def encode(
    labels: Sequence[Labels],
    values: Sequence[float],
    timestamps: Sequence[int],
    *,
    histogram_labels: Sequence[Labels] = (),
    histograms: Sequence[NativeHistogram] = (),
    exemplar_labels: Sequence[Labels] = (),
    exemplars: Sequence[Exemplar] = (),
) -> bytes:
    """The compressed HTTP body for these series (arguments as `build_write_request`).

    Pure CPU work on immutable inputs, so callers may run it in a thread; cramjam releases the GIL while it
    compresses.
    """
    body = serialize(
        labels,
        values,
        timestamps,
        histogram_labels=histogram_labels,
        histograms=histograms,
        exemplar_labels=exemplar_labels,
        exemplars=exemplars,
    )
    return compress(body)


def decode(body: bytes) -> WriteRequest:
    """The WriteRequest in a compressed body (for tests and, later, a receiver)."""
    return WriteRequest.FromString(decompress(body))
