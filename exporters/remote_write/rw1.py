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

At several samples per series (a 5 s flush of a 1 s interval) what is left is per sample, so it is moved to
per series: a batch the batcher already grouped (`SampleBatch.grouped`) is not grouped again, labels are
found by the tuple's identity (no hashing of eleven label pairs), and a series' Sample entries are written by
one `struct` call from a layout cached per timestamp sequence (a request's series share a few). Measured
with `bench/encode_bench.py` on the node workload: 1.75 -> ~0.46 us per sample at five samples per series,
1.44 -> ~0.92 at one.

A label list sent before (a sender's series in the same order, flush after flush) skips all of that: its
body's layout is remembered whole (`LabelCache.frames`, rw1_frames.py), and what is left is one `struct`
call per series (or per sample). The paths below serve label lists seen for the first time, and requests with
exemplars.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from itertools import compress as selected
from itertools import islice, pairwise, repeat
from operator import add, eq, is_not, itemgetter

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
from exporters.remote_write.rw1_frames import ONE_BYTE as _ONE_BYTE
from exporters.remote_write.rw1_frames import TIMESERIES_HEADS as _TIMESERIES_HEADS
from exporters.remote_write.rw1_frames import Frames
from exporters.remote_write.rw1_frames import assign as _assign
from exporters.remote_write.rw1_frames import varint as _varint
from exporters.remote_write.series import (
    Exemplar,
    Labels,
    NativeHistogram,
    group_by_series,
)

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
_ID_ENTRY = 160  # a dict slot, the int key and the (labels, bytes) pair


class LabelCache:
    """Encoded label sets kept between requests by one encoder (one endpoint connection), bounded in bytes.

    The key is the series' label tuple; its memory is charged too (the tuple, its pairs and their strings),
    since this cache may be what keeps a series alive after translation forgot it. Cleared whole when full:
    cheaper than LRU bookkeeping per hit, and the next requests refill it. Not shared between threads.

    `by_id` finds the same encodings by the identity of a label tuple seen before, because translation hands
    out one interned tuple per series: hashing an int instead of a tuple's pairs (~0.3 us for eleven labels)
    is most of what a cached series costs. Each entry holds its tuple, so the id cannot be reused while the
    entry lives.

    `frames` remembers whole requests' layouts by label list (rw1_frames.py), so that a label list sent again
    costs no lookup per series at all; bounded on its own, in samples.
    """

    __slots__ = ("by_id", "entries", "frames", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int = LABEL_CACHE_BYTES) -> None:
        self.entries: dict[Labels, bytes] = {}
        self.by_id: dict[int, tuple[Labels, bytes]] = {}
        self.nbytes = 0
        self.max_bytes = max_bytes
        self.frames = Frames()

    def encoded(self, series: Labels) -> bytes:
        """TimeSeries field 1 (labels) for a label set, from the cache when it was sent before."""
        hit = self.by_id.get(id(series))
        if hit is not None:
            return hit[1]
        encoded = self.entries.get(series)
        known = encoded is not None
        if encoded is None:
            encoded = _encode_labels(series)
        key_size = _key_size(series)
        # An equal tuple already known: this one is kept alive beside it, with no new encoding.
        cost = _ID_ENTRY + (key_size if known else len(encoded) + _ENTRY_OVERHEAD + key_size)
        if self.nbytes + cost > self.max_bytes:
            self.entries.clear()
            self.by_id.clear()
            self.nbytes = 0
            cost = _ID_ENTRY + len(encoded) + _ENTRY_OVERHEAD + key_size
        self.entries.setdefault(series, encoded)
        self.by_id[id(series)] = (series, encoded)
        self.nbytes += cost
        return encoded

    def encoded_all(self, label_sets: Sequence[Labels]) -> list[bytes]:
        """`encoded` of each label set, looked up in C when every one was seen before by identity."""
        try:
            return list(map(_second, map(self.by_id.__getitem__, map(id, label_sets))))
        except KeyError:
            return list(map(self.encoded, label_sets))


def _encode_labels(series: Labels) -> bytes:
    parts = []
    for name, value in series:
        name_bytes, value_bytes = name.encode(), value.encode()
        label = (_field(b"\x0a", name_bytes) if name_bytes else b"") + (
            _field(b"\x12", value_bytes) if value_bytes else b""
        )
        parts.append(_field(b"\x0a", label))
    return b"".join(parts)


def _key_size(series: Labels) -> int:
    return sys.getsizeof(series) + sum(
        sys.getsizeof(pair) + sys.getsizeof(name) + sys.getsizeof(value) for pair in series for name, value in (pair,)
    )


_pack_double = struct.Struct("<d").pack
_POSITIVE_ZERO = bytes(8)


def _sample_entries(stamp: int) -> tuple[bytes, bytes, bytes]:
    """For a timestamp: (what precedes a sample's 8 value bytes, what follows them, the whole entry for a
    +0.0 value), TimeSeries field 2 tag and length included. A Sample is at most 20 bytes."""
    stamp_bytes = b"\x10" + _varint(stamp) if stamp else b""
    return (
        b"\x12" + _ONE_BYTE[9 + len(stamp_bytes)] + b"\x09",
        stamp_bytes,
        b"\x12" + _ONE_BYTE[len(stamp_bytes)] + stamp_bytes,
    )


_Template = tuple[Callable[..., bytes], list[object]]


def _samples_template(stamps: tuple[int, ...]) -> _Template:
    """For one series' timestamps: a pack that writes all its Sample entries at once from an argument list,
    and that list with None where the values go (every second item from the second on).

    Between two values lie only constant bytes (one timestamp's varint, then the next entry's tag, length and
    value tag), so one `struct` call per series replaces a pack and two concatenations per sample. Only for
    values that are not +0.0: protobuf leaves a +0.0 value out, which changes the entry's layout."""
    entries = [_sample_entries(stamp) for stamp in stamps]
    gaps = [after + following for (_, after, _), (following, _, _) in pairwise(entries)]
    gaps.append(entries[-1][1])
    layout = struct.Struct("<3s" + "".join(f"d{len(gap)}s" for gap in gaps))
    arguments: list[object] = [entries[0][0]]
    for gap in gaps:
        arguments += (None, gap)
    return layout.pack, arguments


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _exemplar_bytes(exemplars: Sequence[Exemplar], members: list[int]) -> bytes:
    return b"".join(_field(b"\x1a", m.SerializeToString()) for m in _exemplar_messages(exemplars, members))


def _single_in_columns(
    labels: Sequence[Labels], values: Sequence[float], timestamps: Sequence[int], cache: LabelCache
) -> list[bytes] | None:
    """The TimeSeries pieces of a request with one sample per series and every label set already cached, built
    column by column with operations that loop in C (the per-sample loop below costs ~0.6 us a sample, this
    ~0.2; measured with bench/encode_bench.py at one sample per series); None when a label set is not cached
    or a series is too long for the precomputed heads, for the loop to handle."""
    n = len(labels)
    if not n:
        return None
    try:
        encoded = list(map(_second, map(cache.by_id.__getitem__, map(id, labels))))
    except KeyError:
        return None
    value_bytes = list(map(_first, struct.iter_unpack("8s", struct.pack(f"<{n}d", *values))))
    if timestamps.count(timestamps[0]) == n:  # usual: one scrape or collection, one time (no hashing)
        entries = {timestamps[0]: _sample_entries(timestamps[0])}
    else:
        entries = {stamp: _sample_entries(stamp) for stamp in dict.fromkeys(timestamps)}
    if len(entries) == 1:
        ((before, after, _),) = entries.values()
        befores: list[bytes] = [before] * n
        afters: list[bytes] = [after] * n
        sizes = list(map(add, map(len, encoded), repeat(len(before) + 8 + len(after))))
    else:
        per_sample = list(map(entries.__getitem__, timestamps))
        befores = list(map(_first, per_sample))
        afters = list(map(_second, per_sample))
        sizes = list(map(add, map(len, encoded), map(add, map(len, befores), map(len, afters))))
        sizes = list(map(add, sizes, repeat(8)))
    # +0.0 is left out of a Sample, as protobuf does: those samples get the shorter entry (often many: counters
    # of errors that never happened).
    zeros = list(selected(range(n), map(eq, value_bytes, repeat(_POSITIVE_ZERO))))
    if zeros:
        zero_entries = list(map(_third, map(entries.__getitem__, map(timestamps.__getitem__, zeros))))
        _assign(befores, zeros, zero_entries)
        _assign(value_bytes, zeros, repeat(b""))
        _assign(afters, zeros, repeat(b""))
        _assign(sizes, zeros, map(add, map(len, map(encoded.__getitem__, zeros)), map(len, zero_entries)))
    try:
        heads = list(map(_TIMESERIES_HEADS.__getitem__, sizes))
    except IndexError:
        return None
    pieces: list[bytes] = [b""] * (5 * n)
    pieces[0::5] = heads
    pieces[1::5] = encoded
    pieces[2::5] = befores
    pieces[3::5] = value_bytes
    pieces[4::5] = afters
    return pieces


_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)


def _float_series(
    labels: Sequence[Labels],
    values: Sequence[float],
    timestamps: Sequence[int],
    exemplars: Sequence[Exemplar],
    exemplars_by_series: dict[Labels, list[int]],
    cache: LabelCache,
    grouped: bool,
) -> list[bytes]:
    """The pieces of the float samples' TimeSeries (with the exemplars attached to them, taken out of
    `exemplars_by_series`), for a request without a frame (rw1_frames.py)."""
    _encoded_labels = cache.encoded
    out: list[bytes] = []
    stamps: dict[int, tuple[bytes, bytes, bytes]] = {}  # a request's samples share few timestamps
    starts: list[int] | None = None
    if grouped:
        # Where a series' run begins: where the label tuple object changes (the batcher hands each run one).
        starts = [0, *selected(range(1, len(labels)), map(is_not, labels, islice(labels, 1, None)))]
        single = len(starts) == len(labels)
    else:
        single = len(dict.fromkeys(labels)) == len(labels)
    by_id = cache.by_id.get
    append = out.append

    def emit(series: Labels, encoded: bytes, sample: bytes) -> None:
        """One TimeSeries: its head, its labels, its samples (and exemplars attached to it)."""
        if exemplars_by_series and series in exemplars_by_series:
            sample += _exemplar_bytes(exemplars, exemplars_by_series.pop(series))
        size = len(encoded) + len(sample)
        append(_TIMESERIES_HEADS[size] if size < len(_TIMESERIES_HEADS) else b"\x0a" + _varint(size))
        append(encoded)
        append(sample)

    known = _single_in_columns(labels, values, timestamps, cache) if single and not exemplars else None
    if known is not None:
        out = known
    elif single:  # the usual case at one sample per series per request
        # Pieces are appended and joined once: concatenating them would copy each series' labels repeatedly.
        for series, value, stamp in zip(labels, values, timestamps):
            hit = by_id(id(series))
            encoded = hit[1] if hit is not None else _encoded_labels(series)
            entries = stamps.get(stamp)
            if entries is None:
                entries = stamps[stamp] = _sample_entries(stamp)
            value_bytes = _pack_double(value)
            # TimeSeries field 2: one Sample (value, then timestamp); a +0.0 value is left out, as protobuf does.
            emit(series, encoded, entries[0] + value_bytes + entries[1] if value_bytes != _POSITIVE_ZERO else entries[2])
    else:
        if starts is None:
            order: list[int] = []
            starts = []
            for members in group_by_series(labels).values():
                if len(members) > 1:
                    members.sort(key=timestamps.__getitem__)  # stable: equal timestamps keep arrival order
                starts.append(len(order))
                order += members
            labels = list(map(labels.__getitem__, order))
            values = list(map(values.__getitem__, order))
            timestamps = list(map(timestamps.__getitem__, order))
        templates: dict[tuple[int, ...], _Template] = {}  # a request's series share few timestamp sequences
        for start, end in zip(starts, [*starts[1:], len(labels)]):
            series = labels[start]
            hit = by_id(id(series))
            encoded = hit[1] if hit is not None else _encoded_labels(series)
            series_values = values[start:end]
            if 0.0 in series_values:  # +0.0 (or -0.0, equal to it) changes an entry's layout: one at a time
                parts = []
                for value, stamp in zip(series_values, timestamps[start:end]):
                    value_bytes = _pack_double(value)
                    entries = stamps.get(stamp)
                    if entries is None:
                        entries = stamps[stamp] = _sample_entries(stamp)
                    parts.append(entries[0] + value_bytes + entries[1] if value_bytes != _POSITIVE_ZERO else entries[2])
                sample = b"".join(parts)
            else:
                key = tuple(timestamps[start:end])
                template = templates.get(key)
                if template is None:
                    template = templates[key] = _samples_template(key)
                pack, arguments = template
                arguments = arguments[:]
                arguments[1::2] = series_values
                sample = pack(*arguments)
            emit(series, encoded, sample)
    return out


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
    grouped: bool = False,
    explicit_zeros: bool = False,
) -> bytes:
    """`build_write_request(...).SerializeToString()`, without building the float samples' messages.

    `explicit_zeros`: a request written from a remembered layout may write +0.0 values as protobuf would
    any other (rw1_frames.py, `Frame.packed`): the same message to any protobuf parser, not the same bytes.

    `cache`: the caller's encoded label sets, kept across calls (one per connection); without one, a
    private cache lives for this call only. `grouped`: the float samples are already in the order this
    function puts them in, each series a run of one label tuple object (`SampleBatch.grouped`), so the runs
    are found by identity instead of by hashing every sample's label set again."""
    if cache is None:
        cache = LabelCache()
    _encoded_labels = cache.encoded
    exemplars_by_series = group_by_series(exemplar_labels) if exemplars else {}
    # A label list sent before (the usual case): its remembered layout, with no work per series.
    framed = cache.frames.pieces(labels, values, timestamps, grouped, cache.encoded_all,
                                 explicit_zeros) if not exemplars else None
    out: list[bytes] = framed if framed is not None else _float_series(
        labels, values, timestamps, exemplars, exemplars_by_series, cache, grouped
    )
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
