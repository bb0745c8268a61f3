"""Remote write 2.0 bodies (`io.prometheus.write.v2.Request`, spec 2.0-rc.4), snappy-compressed: encoder and
decoder.

Which rc: we send 2.0-rc.4, the latest, where the start timestamp of a cumulative series rides in each
`Sample` (field 3) and `Histogram` (field 17). rc.3 had it once per series (`TimeSeries.created_timestamp`,
field 6, now reserved). Prometheus 2.54 to 3.7 speak rc.3 and 3.8 onwards rc.4; both read the same symbols,
labels, samples, histograms, exemplars and metadata, so an rc.3 receiver stores everything we send except
the start timestamps, which it skips as unknown fields. That is a loss of precision for `rate()` around
resets, not of data, so there is one rw2 encoder, not one per rc (and the decoder, for the same reason,
does not read rc.3's field 6).

Why snappy only: the spec allows no other `Content-Encoding` for 2.0, and a receiver that is handed
anything else answers 415, which would send the negotiation down to remote write 1.0 for no gain.

How a request is laid out: a symbol table built afresh for each request (refs cannot outlive it: the spec
has no state across requests), `""` first so that a ref of 0 means "not set"; one TimeSeries per distinct
label set, samples in timestamp order, series in the order their first sample arrived. rw2 forbids float
samples and histograms in one TimeSeries, so a series with both is sent as two. Exemplars ride on their
series' first TimeSeries. Exemplars of a series with neither samples nor histograms in the batch are left
out (and not counted in `Encoded.exemplars`): rc.4 requires every TimeSeries to carry at least one sample
or histogram, and Prometheus answers 400 to the whole request otherwise. Metadata (`SampleBatch.metadata`,
by `__name__`) goes on every TimeSeries of its family; it is written even when all its fields are zero, so
that "known to be of unknown type" survives a round trip through our own decoder.

Why the float path is written by hand: building one generated message per sample costs several
microseconds in Python, and a request is almost all float samples. `Rw2Encoder.serialize` writes the
protobuf bytes directly, byte for byte what `build_request(batch).SerializeToString()` gives (the tests
hold it to that). A series' refs are not the same from one request to the next (each numbers its symbols
anew), but the whole label side of a request is, when it has the same series in the same order as an
earlier one, as a node's requests do interval after interval: the encoder keeps, per instance and bounded
in bytes, each series' flattened label strings and, per request layout, the symbol table and every
TimeSeries' labels_refs field, so that such a request costs a few bytes per sample. Nothing of it is
per-connection state in the protocol's sense (`reset` has nothing to do): every request is self-contained.
Histograms go through the generated messages; they are few.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, count, islice, pairwise, repeat
from itertools import compress as selected
from operator import is_not, itemgetter
from typing import NamedTuple

from google.protobuf.message import DecodeError as ProtobufDecodeError

from exporters.remote_write.encoding import DecodeError, Encoded, compress
from exporters.remote_write.proto.remote_write_v2_pb2 import (
    BucketSpan,
    Histogram,
    Request,
    Sample,
    TimeSeries,
)
from exporters.remote_write.proto.remote_write_v2_pb2 import Exemplar as ExemplarMessage
from exporters.remote_write.series import (
    METRIC_TYPES,
    NAME_LABEL,
    Exemplar,
    Labels,
    NativeHistogram,
    SampleBatch,
    group_by_series,
)
from exporters.remote_write.series import Metadata as SeriesMetadata
from exporters.remote_write.series_cache import INTERNED_BYTES, SeriesCache, labels_bytes

HEADERS: dict[str, str] = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    "X-Prometheus-Remote-Write-Version": "2.0.0",
}
"""What the spec requires on every 2.0 request; reserved, like rw1's (configured headers may not replace them)."""

SAMPLES_WRITTEN = "X-Prometheus-Remote-Write-Samples-Written"
HISTOGRAMS_WRITTEN = "X-Prometheus-Remote-Write-Histograms-Written"
EXEMPLARS_WRITTEN = "X-Prometheus-Remote-Write-Exemplars-Written"

SERIES_CACHE_BYTES = 16 << 20
"""Default bound on each encoder's caches: flattened label sets (string bytes plus ~`_ENTRY_OVERHEAD` each)
and request layouts (see `_layout_size`)."""
_ENTRY_OVERHEAD = 200

_getsizeof = sys.getsizeof
_TYPE_ENUM = {name: index for index, name in enumerate(METRIC_TYPES)}
_pack_double = struct.Struct("<d").pack
_POSITIVE_ZERO = bytes(8)


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return bytes((n,))
    n &= 0xFFFFFFFFFFFFFFFF  # int64: a negative number is its two's complement, ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _heads(tag: int, count: int) -> tuple[bytes, ...]:
    return tuple(bytes((tag,)) + _varint(n) for n in range(count))


_HEAD_COUNT = 4096
_TIMESERIES_HEADS = _heads(0x2A, _HEAD_COUNT)  # Request.timeseries (5): tag and length
_LABELS_HEADS = _heads(0x0A, _HEAD_COUNT)  # TimeSeries.labels_refs (1), packed: tag and length
_SYMBOL_HEADS = _heads(0x22, 128)  # Request.symbols (4): tag and length
_REFS = tuple(_varint(n) for n in range(1 << 14))  # every ref that fits in one or two bytes, encoded


def _head(table: tuple[bytes, ...], tag: bytes, size: int) -> bytes:
    return table[size] if size < len(table) else tag + _varint(size)


def _flat(series: Labels) -> tuple[str, ...]:
    return tuple(s for pair in series for s in pair)


def _empty_refs(refs: Mapping[str, bytes]) -> tuple[bytes, ...]:
    return ()


_Entry = tuple[tuple[str, ...], Callable[[Mapping[str, bytes]], tuple[bytes, ...]], str]
"""What the encoder keeps per series: its label strings flattened, a getter of their refs from a request's
table (an `itemgetter`: one C call per series), and its `__name__`."""


class _Layout(NamedTuple):
    """The label side of a request, which depends only on which series it has and in what order: the symbol
    table of their label strings and each TimeSeries' labels_refs field, ready to write. Requests with the
    same series in the same order (a node sending the same series every interval) reuse it whole."""

    entries: list[_Entry]  # held so that the `id`s in the key stay theirs while the layout is cached
    refs: dict[str, bytes]
    symbols: bytes
    float_labels: list[bytes]
    histogram_labels: list[bytes]


def _layout(float_entries: list[_Entry], histogram_entries: list[_Entry]) -> _Layout:
    """Symbols numbered "" first, then every label string in the order the TimeSeries are written (the spec
    leaves the order to the sender; this one numbers the many label strings in a few C-level passes, and
    `build_request` follows it too), refs kept varint-encoded, ready to be joined."""
    entries = float_entries + histogram_entries
    ordered = dict.fromkeys(chain(("",), chain.from_iterable([entry[0] for entry in entries])))
    encoded = chain(_REFS, map(_varint, count(len(_REFS)))) if len(ordered) > len(_REFS) else _REFS
    refs = dict(zip(ordered, encoded, strict=False))
    fields = []
    for entry in entries:
        label_refs = b"".join(entry[1](refs))
        fields.append(_head(_LABELS_HEADS, b"\x0a", len(label_refs)) + label_refs)
    split = len(float_entries)
    return _Layout(entries, refs, _serialized_symbols(ordered), fields[:split], fields[split:])


def _layout_size(layout: _Layout) -> int:
    """Roughly what a layout holds in memory: its bytes, plus dict and list slots and object headers."""
    fields = sum(map(len, layout.float_labels)) + sum(map(len, layout.histogram_labels))
    return len(layout.symbols) + 120 * len(layout.refs) + fields + 60 * len(layout.entries)


def _serialized_symbols(strings: Iterable[str]) -> bytes:
    parts = []
    for string in strings:
        data = string.encode()
        parts.append(_head(_SYMBOL_HEADS, b"\x22", len(data)))
        parts.append(data)
    return b"".join(parts)


class _Symbols:
    """One request's symbol table: its layout's label strings, then exemplar labels, help texts and units as
    they come (numbered on from there)."""

    __slots__ = ("extra", "layout")

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.extra: dict[str, bytes] = {}

    def ref(self, string: str) -> bytes:
        ref = self.layout.refs.get(string) or self.extra.get(string)
        if ref is None:
            ref = self.extra[string] = _varint(len(self.layout.refs) + len(self.extra))
        return ref

    def serialized(self) -> bytes:
        return self.layout.symbols + _serialized_symbols(self.extra) if self.extra else self.layout.symbols


class _SymbolRefs(dict[str, int]):
    """The same table as `_Symbols`, with plain int refs, for the generated messages."""

    def __init__(self, label_strings: Iterable[str]) -> None:
        super().__init__((s, ref) for ref, s in enumerate(dict.fromkeys(chain(("",), label_strings))))

    def __missing__(self, key: str) -> int:
        ref = self[key] = len(self)
        return ref

    def labels(self, labels: Labels) -> list[int]:
        return [self[s] for s in _flat(labels)]


def _metric_name(series: Labels) -> str:
    for name, value in series:
        if name == NAME_LABEL:
            return value
    return ""


def _histogram_message(h: NativeHistogram, gauge: bool) -> Histogram:
    message = Histogram(
        sum=h.sum,
        schema=h.schema,
        zero_threshold=h.zero_threshold,
        zero_count_int=h.zero_count,
        negative_spans=[BucketSpan(offset=offset, length=length) for offset, length in h.negative_spans],
        negative_deltas=h.negative_deltas,
        positive_spans=[BucketSpan(offset=offset, length=length) for offset, length in h.positive_spans],
        positive_deltas=h.positive_deltas,
        # Prometheus marks gauge histograms this way; otherwise the receiver detects resets from the counts.
        reset_hint=Histogram.RESET_HINT_GAUGE if gauge else Histogram.RESET_HINT_UNSPECIFIED,
        timestamp=h.timestamp,
        start_timestamp=h.start_timestamp,
    )
    if isinstance(h.count, float):
        message.count_float = h.count  # a staleness marker
    else:
        message.count_int = h.count
    return message


def _is_gauge_histogram(metadata: Mapping[str, SeriesMetadata], name: str) -> bool:
    known = metadata.get(name)
    return known is not None and known.type == "gaugehistogram"


def _by_time(members: list[int], stamp_of: Sequence[int]) -> list[int]:
    if len(members) < 2:
        return members
    return sorted(members, key=stamp_of.__getitem__)  # stable: equal timestamps keep arrival order


def _exemplar_order(exemplars: Sequence[Exemplar], members: list[int]) -> list[Exemplar]:
    return sorted((exemplars[i] for i in members), key=lambda e: e.timestamp)


def build_request(batch: SampleBatch) -> Request:
    """The generated-message form of what `Rw2Encoder.serialize` writes by hand: the reference the tests hold
    the fast path to, with the layout the module docstring describes."""
    float_series = group_by_series(batch.labels)
    histogram_series = group_by_series(batch.histogram_labels)
    symbols = _SymbolRefs(s for series in chain(float_series, histogram_series) for s in _flat(series))
    exemplars_by_series = group_by_series(batch.exemplar_labels) if batch.exemplars else {}
    starts = batch.start_timestamps
    timeseries: list[TimeSeries] = []

    def finish(message: TimeSeries, series: Labels) -> None:
        attached = exemplars_by_series.pop(series, None)
        if attached:
            message.exemplars.extend(
                ExemplarMessage(labels_refs=symbols.labels(e.labels), value=e.value, timestamp=e.timestamp)
                for e in _exemplar_order(batch.exemplars, attached)
            )
        known = batch.metadata.get(_metric_name(series))
        if known is not None:
            message.metadata.SetInParent()  # present even when every field is zero: "known, of unknown type"
            message.metadata.type = _TYPE_ENUM.get(known.type, 0)  # type: ignore[assignment]
            message.metadata.help_ref = symbols[known.help]
            message.metadata.unit_ref = symbols[known.unit]
        timeseries.append(message)

    for series, members in float_series.items():
        message = TimeSeries(labels_refs=symbols.labels(series))
        message.samples.extend(
            Sample(value=batch.values[i], timestamp=batch.timestamps[i], start_timestamp=starts[i] if starts else 0)
            for i in _by_time(members, batch.timestamps)
        )
        finish(message, series)
    for series, members in histogram_series.items():
        gauge = _is_gauge_histogram(batch.metadata, _metric_name(series))
        message = TimeSeries(labels_refs=symbols.labels(series))
        message.histograms.extend(
            _histogram_message(h, gauge) for h in sorted((batch.histograms[i] for i in members), key=_timestamp)
        )
        finish(message, series)
    return Request(symbols=list(symbols), timeseries=timeseries)


def _timestamp(h: NativeHistogram) -> int:
    return h.timestamp


def _sample_entries(stamp: int, start: int) -> tuple[bytes, bytes, bytes]:
    """For a (timestamp, start timestamp): what precedes a sample's 8 value bytes, what follows them, and the
    whole entry for a +0.0 value (which protobuf leaves out), TimeSeries.samples (2) tag and length included."""
    after = (b"\x10" + _varint(stamp) if stamp else b"") + (b"\x18" + _varint(start) if start else b"")
    return b"\x12" + bytes((9 + len(after),)) + b"\x09", after, b"\x12" + bytes((len(after),)) + after


class Rw2Encoder:
    """Remote write 2.0 for one connection. It keeps nothing the receiver must share (rw2 is stateless), only
    caches of what each series' labels flatten to and of request layouts, together bounded by `cache_bytes`
    (checked before each request, so one request may take them past the bound until the next) and emptied
    whole when full."""

    protocol = "rw2"

    def __init__(self, cache_bytes: int = SERIES_CACHE_BYTES) -> None:
        self.cache_bytes = cache_bytes
        self._series: dict[Labels, _Entry] = {}
        self._layouts: dict[tuple[tuple[int, ...], tuple[int, ...]], _Layout] = {}
        self._series_bytes = 0  # what both hold, roughly

    def reset(self) -> None:
        """Nothing to forget: every request carries its own symbol table."""

    def encode(self, batch: SampleBatch) -> Encoded:
        body, exemplars = self._serialize(batch)
        return Encoded(
            body=compress("snappy", body),
            headers=HEADERS,
            samples=len(batch.values),
            histograms=len(batch.histograms),
            exemplars=exemplars,
        )

    def serialize(self, batch: SampleBatch) -> bytes:
        """The uncompressed body: `build_request(batch).SerializeToString()`, without building the messages."""
        return self._serialize(batch)[0]

    def _remember(self, series: Labels) -> _Entry:
        strings = _flat(series)
        getter: Callable[[Mapping[str, bytes]], tuple[bytes, ...]]
        if len(strings) > 1:
            getter = itemgetter(*strings)
        else:  # no labels at all (not a valid series, but still encodable): itemgetter needs two for a tuple
            getter = _empty_refs
        entry = (strings, getter, _metric_name(series))
        self._series[series] = entry
        self._series_bytes += sum(map(len, strings)) + _ENTRY_OVERHEAD
        return entry

    def _entries(self, labels: Sequence[Labels]) -> list[_Entry]:
        """Each series' entry, the same object for equal label sets."""
        cached = self._series.get
        entries = list(map(cached, labels))
        if None in entries:
            remember = self._remember
            entries = [
                entry if entry is not None else cached(series) or remember(series)
                for series, entry in zip(labels, entries, strict=True)
            ]
        return entries  # type: ignore[return-value]

    def _serialize(self, batch: SampleBatch) -> tuple[bytes, int]:
        if self._series_bytes > self.cache_bytes:
            self._series.clear()  # cheaper than LRU bookkeeping per hit; the next requests refill it
            self._layouts.clear()
            self._series_bytes = 0
        labels, values, timestamps, starts = batch.labels, batch.values, batch.timestamps, batch.start_timestamps
        groups: dict[int, tuple[Labels, _Entry, Sequence[int]]] = {}
        runs = None
        if batch.grouped and labels:
            # Where a series' run begins: where the label tuple object changes (`SampleBatch.grouped`). Only
            # each run's label set is looked up (hashed), not each sample's, and runs need no sorting by time.
            runs = [0, *selected(range(1, len(labels)), map(is_not, islice(labels, 1, None), labels))]
            if len(runs) == len(labels):
                runs = None  # one sample per series: the distinct case below
        if runs is not None:
            heads = list(map(labels.__getitem__, runs))
            head_entries = self._entries(heads)
            ids = tuple(map(id, head_entries))
            distinct = False
            groups = {
                id(entry): (series, entry, range(start, end))
                for series, entry, start, end in zip(heads, head_entries, runs, [*runs[1:], len(labels)], strict=True)
            }
        else:
            entries = self._entries(labels)
            ids = tuple(map(id, entries))
            distinct = len(set(ids)) == len(ids)  # the usual case: one sample per series
        if not distinct and runs is None:
            for index, (series, entry) in enumerate(zip(labels, entries, strict=True)):
                group = groups.get(id(entry))
                if group is None:
                    groups[id(entry)] = (series, entry, [index])
                else:
                    group[2].append(index)  # type: ignore[attr-defined]
            ids = tuple(groups)
        histogram_series = group_by_series(batch.histogram_labels)
        histogram_entries = self._entries(list(histogram_series))
        key = (ids, tuple(map(id, histogram_entries)))
        layout = self._layouts.get(key)
        if layout is None:
            layout = _layout(entries if distinct else [group[1] for group in groups.values()], histogram_entries)
            self._layouts[key] = layout
            self._series_bytes += _layout_size(layout)
        symbols = _Symbols(layout)
        sym = symbols.ref
        exemplars_by_series = group_by_series(batch.exemplar_labels) if batch.exemplars else {}
        metadata = batch.metadata
        meta_bytes: dict[str, bytes] = {}
        written = 0

        def extras(series: Labels, name: str) -> bytes:
            """Exemplars (TimeSeries field 4) and metadata (field 5), their strings numbered in that order."""
            nonlocal written
            parts = []
            attached = exemplars_by_series.pop(series, None)
            if attached:
                for e in _exemplar_order(batch.exemplars, attached):
                    label_refs = b"".join([sym(s) for s in _flat(e.labels)])
                    value = _pack_double(e.value)
                    body = (
                        (_head(_LABELS_HEADS, b"\x0a", len(label_refs)) + label_refs if label_refs else b"")
                        + (b"\x11" + value if value != _POSITIVE_ZERO else b"")
                        + (b"\x18" + _varint(e.timestamp) if e.timestamp else b"")
                    )
                    parts.append(b"\x22" + _varint(len(body)) + body)
                written += len(attached)
            if name in metadata:
                encoded = meta_bytes.get(name)
                if encoded is None:
                    known = metadata[name]
                    kind, help_ref, unit_ref = _TYPE_ENUM.get(known.type, 0), sym(known.help), sym(known.unit)
                    body = (
                        (b"\x08" + _varint(kind) if kind else b"")
                        + (b"\x18" + help_ref if help_ref != b"\x00" else b"")
                        + (b"\x20" + unit_ref if unit_ref != b"\x00" else b"")
                    )
                    encoded = meta_bytes[name] = b"\x2a" + _varint(len(body)) + body
                parts.append(encoded)
            return b"".join(parts)

        out: list[bytes] = []
        append = out.append
        stamps: dict[object, tuple[bytes, bytes, bytes]] = {}  # a request's samples share few timestamps
        with_extras = bool(exemplars_by_series or metadata)
        if distinct:
            for series, entry, labels_field, number, stamp, start in zip(
                labels, entries, layout.float_labels, values, timestamps, starts or repeat(0, len(values)), strict=True
            ):
                key = (stamp, start) if start else stamp
                pieces = stamps.get(key)
                if pieces is None:
                    pieces = stamps[key] = _sample_entries(stamp, start)
                value = _pack_double(number)
                sample = pieces[0] + value + pieces[1] if value != _POSITIVE_ZERO else pieces[2]
                if with_extras:
                    sample += extras(series, entry[2])
                size = len(labels_field) + len(sample)
                append(_TIMESERIES_HEADS[size] if size < _HEAD_COUNT else b"\x2a" + _varint(size))
                append(labels_field)
                append(sample)
        else:
            for (series, entry, members), labels_field in zip(groups.values(), layout.float_labels, strict=True):
                parts = [labels_field]
                for i in members if runs is not None else _by_time(members, timestamps):  # type: ignore[arg-type]
                    stamp, start = timestamps[i], starts[i] if starts else 0
                    key = (stamp, start) if start else stamp
                    pieces = stamps.get(key)
                    if pieces is None:
                        pieces = stamps[key] = _sample_entries(stamp, start)
                    value = _pack_double(values[i])
                    parts.append(pieces[0] + value + pieces[1] if value != _POSITIVE_ZERO else pieces[2])
                parts.append(extras(series, entry[2]))
                body = b"".join(parts)
                append(_head(_TIMESERIES_HEADS, b"\x2a", len(body)))
                append(body)
        for (series, members), entry, labels_field in zip(
            histogram_series.items(), histogram_entries, layout.histogram_labels, strict=True
        ):
            gauge = _is_gauge_histogram(metadata, entry[2])
            parts = [labels_field]
            for h in sorted((batch.histograms[i] for i in members), key=_timestamp):
                data = _histogram_message(h, gauge).SerializeToString()
                parts.append(b"\x1a" + _varint(len(data)) + data)
            parts.append(extras(series, entry[2]))
            body = b"".join(parts)
            append(_head(_TIMESERIES_HEADS, b"\x2a", len(body)))
            append(body)
        out.insert(0, symbols.serialized())  # field 4 precedes field 5, but is complete only now
        return b"".join(out), written



class Rw2Decoder:
    """Remote write 2.0 on the receiving side (the gateway): the batch a body carries, or `DecodeError` saying
    what is wrong with it. The whole body is refused for any malformed series, so that a sender learns of the
    problem (400) instead of losing part of a request silently.

    Float histograms and custom-bucket histograms (schema -53) have no place in the series model; they are
    counted in `SampleBatch.dropped` (`float_histogram`, `custom_buckets_histogram`), not refused.
    """

    protocol = "rw2"

    def __init__(self, cache_bytes: int = SERIES_CACHE_BYTES << 1) -> None:
        self._cache = SeriesCache(cache_bytes)

    @property
    def evicted(self) -> int:
        """Label sets dropped from the cache to stay within its bound (self-telemetry)."""
        return self._cache.evicted

    def _labels(self, refs: tuple[int, ...], symbols: list[str], index: int) -> Labels:
        """A TimeSeries' labels, from the cache when the same strings made a series before (a sender's refs
        change from request to request, its strings do not), else built and checked by `_series_labels`.

        The key is the label strings in wire order, so a hit is exactly the set that passed the checks; only
        checked sets are kept, so every error is raised as without the cache. Bounded in bytes by a
        `SeriesCache`, whose tuples are also interned: the same series is the same object in every batch."""
        try:
            key = tuple(map(symbols.__getitem__, refs))
        except IndexError:
            key = None
        cache = self._cache
        found = cache.young.get(key) or cache.get(key) if key is not None else None
        if found is not None:
            return found[0]
        labels = cache.intern(_series_labels(refs, symbols, index))  # raises for any malformed set
        assert key is not None  # _series_labels refused an out-of-range ref
        nbytes = labels_bytes(labels) + INTERNED_BYTES + _getsizeof(key) + 64
        cache.put(key, (labels, nbytes), nbytes)
        return labels

    def decode(self, body: bytes, headers: Mapping[str, str]) -> SampleBatch:
        try:
            request = Request.FromString(body)
        except ProtobufDecodeError as exc:
            raise DecodeError(f"rw2: not an io.prometheus.write.v2.Request ({exc})") from exc
        symbols = list(request.symbols)
        batch = SampleBatch()
        add_labels, add_value, add_stamp = batch.labels.append, batch.values.append, batch.timestamps.append
        starts: list[int] = []
        add_start = starts.append
        seen: dict[tuple[int, ...], Labels] = {}  # label refs already checked, and what they mean
        metadata: dict[tuple[int, int, int], SeriesMetadata] = {}
        for index, ts in enumerate(request.timeseries):
            refs = tuple(ts.labels_refs)
            series = seen.get(refs)
            if series is None:
                series = seen[refs] = self._labels(refs, symbols, index)
            samples, histograms = ts.samples, ts.histograms
            if samples:
                if histograms:
                    raise DecodeError(
                        f"rw2: timeseries[{index}] ({_describe(series)}) has both samples and histograms;"
                        " the spec requires a separate TimeSeries for each"
                    )
                for s in samples:
                    add_labels(series)
                    add_value(s.value)
                    add_stamp(s.timestamp)
                    add_start(s.start_timestamp)
            for h in histograms:
                converted = _native_histogram(h)
                if isinstance(converted, str):
                    batch.dropped[converted] += 1
                    continue
                batch.histogram_labels.append(series)
                batch.histograms.append(converted)
                batch.histogram_sizes.append(0)
            for number, e in enumerate(ts.exemplars):
                where = f"timeseries[{index}].exemplars[{number}]"
                batch.exemplar_labels.append(series)
                batch.exemplars.append(Exemplar(_pairs(tuple(e.labels_refs), symbols, where), e.value, e.timestamp))
                batch.exemplar_sizes.append(0)
            if ts.HasField("metadata"):
                m = ts.metadata
                meta_refs = (m.type, m.help_ref, m.unit_ref)
                known = metadata.get(meta_refs)
                if known is None:  # a family's series share one metadata: build and check it once per request
                    kind = METRIC_TYPES[m.type] if 0 <= m.type < len(METRIC_TYPES) else METRIC_TYPES[0]
                    where = f"timeseries[{index}].metadata"
                    help_text = _symbol(symbols, m.help_ref, where, "help_ref")
                    unit = _symbol(symbols, m.unit_ref, where, "unit_ref")
                    known = metadata[meta_refs] = SeriesMetadata(kind, help_text, unit)
                batch.metadata[_metric_name(series)] = known  # checked labels: exactly one __name__
        batch.sizes = [0] * len(batch.values)
        if any(starts):
            batch.start_timestamps = starts
        return batch


def _symbol(symbols: list[str], ref: int, where: str, what: str) -> str:
    if ref >= len(symbols):
        raise DecodeError(f"rw2: {where}: {what} {ref} is out of range ({len(symbols)} symbols)")
    return symbols[ref]


def _strings(refs: tuple[int, ...], symbols: list[str], where: str) -> list[str]:
    if len(refs) % 2:
        raise DecodeError(f"rw2: {where}: labels_refs has odd length {len(refs)}; it holds (name, value) pairs")
    try:
        return [symbols[ref] for ref in refs]
    except IndexError:
        raise DecodeError(
            f"rw2: {where}: symbol ref {max(refs)} is out of range ({len(symbols)} symbols)"
        ) from None


def _pairs(refs: tuple[int, ...], symbols: list[str], where: str) -> Labels:
    strings = _strings(refs, symbols, where)
    return tuple(zip(strings[0::2], strings[1::2], strict=True))


def _series_labels(refs: tuple[int, ...], symbols: list[str], index: int) -> Labels:
    """A TimeSeries' labels, checked as the spec requires of a series: names non-empty, sorted, distinct,
    `__name__` among them. The checks are whole-list operations; the loop that names the problem runs only
    once there is one."""
    where = f"timeseries[{index}]"
    strings = _strings(refs, symbols, where)
    names = strings[0::2]
    series = tuple(zip(names, strings[1::2], strict=True))
    if "" in names:
        raise DecodeError(f"rw2: {where}: empty label name in {_describe(series)}")
    if names != sorted(set(names)):
        for previous, name in pairwise(names):
            if name <= previous:
                problem = "duplicated" if name == previous else "not sorted by name"
                raise DecodeError(
                    f"rw2: {where}: labels {problem} ({previous!r} then {name!r}) in {_describe(series)}"
                )
    if NAME_LABEL not in names:
        raise DecodeError(f"rw2: {where}: no {NAME_LABEL} label in {_describe(series)}")
    return series


def _describe(series: Labels) -> str:
    text = "{" + ", ".join(f"{name}={value!r}" for name, value in series) + "}"
    return text if len(text) <= 200 else text[:197] + "...}"


def _native_histogram(h: Histogram) -> NativeHistogram | str:
    """The series model's histogram, or the `dropped` reason it cannot be one."""
    if h.custom_values or h.schema == -53:
        return "custom_buckets_histogram"
    if h.negative_counts or h.positive_counts or h.WhichOneof("zero_count") == "zero_count_float":
        return "float_histogram"
    count: int | float = h.count_float if h.WhichOneof("count") == "count_float" else h.count_int
    return NativeHistogram(
        timestamp=h.timestamp,
        count=count,
        sum=h.sum,
        schema=h.schema,
        zero_threshold=h.zero_threshold,
        zero_count=h.zero_count_int,
        negative_spans=tuple((s.offset, s.length) for s in h.negative_spans),
        negative_deltas=tuple(h.negative_deltas),
        positive_spans=tuple((s.offset, s.length) for s in h.positive_spans),
        positive_deltas=tuple(h.positive_deltas),
        start_timestamp=h.start_timestamp,
    )


def written_headers(samples: int, histograms: int, exemplars: int) -> dict[str, str]:
    """The response headers by which a 2.0 receiver says what it stored (a sender treats a 2xx without them as
    a 1.x receiver that stored nothing)."""
    return {SAMPLES_WRITTEN: str(samples), HISTOGRAMS_WRITTEN: str(histograms), EXEMPLARS_WRITTEN: str(exemplars)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()  # HTTP header names are case-insensitive; a plain dict is not
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _count(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


def parse_written(headers: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(samples, histograms, exemplars) a receiver says it wrote; None when it does not say (no samples
    header, or one that is not a count), which means a receiver that did not understand 2.0.

    A missing or unreadable histograms or exemplars header counts as 0, as the spec says and Prometheus does.
    """
    samples = _count(_header(headers, SAMPLES_WRITTEN))
    if samples is None:
        return None
    histograms = _count(_header(headers, HISTOGRAMS_WRITTEN)) or 0
    exemplars = _count(_header(headers, EXEMPLARS_WRITTEN)) or 0
    return samples, histograms, exemplars
