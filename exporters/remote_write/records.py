"""The disk queue's record format for remote-write batches: `SampleBatchCodec`, a `SegmentCodec[SampleBatch]`
(exporters/sending/queue.py), one writer and one reader per segment file.

Every sample the node agent sends passes through `RecordWriter.encode` on its way to disk, so the format is
built for the CPU it costs in Python first and the bytes second (bench/records_bench.py measures both; on the
node workload at 1 and 5 samples per series a batch, encoding costs 0.054 and 0.065 us a sample, 0.13-0.14
when no recent label column repeats, and decoding 0.07-0.09 us, at 5.8 and 2.6 bytes a sample):

- Label sets are written once per segment. The writer keeps the segment's dictionary; the first record that
  uses a label set carries its definition, later records of the segment refer to its index. Definitions are
  three tables that grow together: strings, (name, value) pairs as two string indexes, and label sets as
  pair indexes; metadata entries (`__name__` -> `Metadata`) are a fourth table, four string indexes each.
  The writer looks a label set up by identity first (`id(labels)` -> index): batches share one tuple object
  per series (the series cache, the gateway's session dictionary), so no tuple is hashed on the way. The
  writer holds a reference to every object whose id it keys, and two objects alive at once never share an
  id, so a hit is that very object (no `is` check needed: the id cannot be reused while it is held). An id
  it does not know falls back to lookup by equality (an equal copy becomes one more id for the same index).
- The label column is one index per sample, or for a `grouped` batch one index per run plus the run lengths
  (runs found in C, `map(is_not, ...)`). A writer also remembers the label columns of its last `memo`
  records: a batch whose label column equals one of them (a node's flushes repeat one series order and the
  batcher cuts them at the same places) reuses that record's encoded column after one list comparison,
  which short-circuits on identity. A miss costs a dictionary lookup per sample (or per run), ~0.07 us.
- Columns are packed machine words: values as float64 (every bit kept: NaN payloads, the staleness marker,
  -0.0, the infinities), timestamps as int64, or one value when every sample has the same (the usual case at
  one sample per series), sizes as uint32 (int64 when one does not fit), start timestamps like timestamps.
  Native histograms and exemplars, rare, are JSON with floats as their 64-bit patterns.
- A record is `version, flags, lengths`, then the definitions compressed on their own (so `learn` reads
  nothing else), then the data, each zstd level 2. On the data part at these sizes level 1 saves 0.004 us a
  sample at one sample per series but costs 0.017 more at five (its small-input parameters find fewer
  matches: 4.2 against 2.5 bytes a sample); snappy and lz4 save ~0.01 us and write 2-3 bytes a sample more
  (snappy 8.7 against 5.8 at one sample per series, 4.5 against 2.5 at five).

Nothing is read with `marshal` or `pickle`: `marshal.loads` trusts the lengths it reads (five corrupt bytes
make it allocate 16 GiB), and the queue directory, although the agent's own state with a checksum on every
record, is still a file on disk. Every length read from a record is checked against the bytes that are
there before anything is built from it, and any failure to read a record is a `ValueError` saying why.

A reader takes definitions from every record it is shown (`learn` for those it need not decode, `decode`
learns first). A record states where its definitions start in each table, so a record the reader never saw
(corrupt, skipped) leaves a hole: records that refer to what it defined (label sets, or strings and pairs
that later definitions build on) fail with `ValueError`, the others decode; shown later, it fills the hole.
`SampleBatch.dropped` does not travel (it counts what translation left out, counted when the batch was
cut); a decoded batch's is empty.

A writer's records must reach the segment in the order they were encoded, each one: if a record cannot be
written, the queue starts a new segment (a new writer), because the next record may refer to what the lost
one defined. `encode` itself changes nothing when it raises. A segment's first record carries definitions
for every series it uses (~2.5 us to encode and ~0.65 us to learn per new series), so segments should hold
hundreds of records for that to vanish in the average. Writers and readers are not thread-safe: one thread
at a time per segment. Memory: a writer and a reader hold their segment's label sets until dropped.
"""

from __future__ import annotations

import json
import operator
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain, compress, count, islice, repeat
from typing import Any

import zstandard

from exporters.remote_write.series import (
    Exemplar,
    Labels,
    Metadata,
    NativeHistogram,
    SampleBatch,
)

VERSION = 1
GROUPED = 0x01
"""Record flag: the batch was `grouped`."""

MAX_PART_BYTES = 1 << 28
"""Largest uncompressed definitions or data part a reader accepts (a batch is a few MiB at most)."""
MAX_GAP = 1 << 20
"""Most table entries a reader leaves undefined when a record's definitions start past what it knows."""

_HEAD = struct.Struct("<BBIII")  # version, flags, definitions' compressed length, their raw length, data raw length
_DEFS = struct.Struct("<8I")  # (first index, count) of new strings, pairs, label sets and metadata entries
_DATA = struct.Struct("<IIIBBB")  # samples, label runs, metadata entries; timestamp, size, start modes
_U32 = "I" if array("I").itemsize == 4 else "L"
_SWAP = sys.byteorder != "little"  # records are little-endian
_FLOAT = struct.Struct("<d")
_BITS = struct.Struct("<Q")
_I64 = struct.Struct("<q")

# Column modes in the data header.
PER_SAMPLE, ONE_VALUE, ABSENT = 0, 1, 2
SIZES_U32, SIZES_I64 = 0, 1


class SampleBatchCodec:
    """`SegmentCodec[SampleBatch]` for the disk queue: `codec.writer()` at a new segment, `codec.reader()`
    to read one. `level` is zstd's (2 measured best for CPU per byte saved); `memo` how many recent label
    columns a writer remembers (0: none)."""

    def __init__(self, level: int = 2, memo: int = 8) -> None:
        if not -7 <= level <= 22:
            raise ValueError(f"level must be a zstd level from -7 to 22, not {level}")
        if memo < 0:
            raise ValueError(f"memo must be 0 or more label columns, not {memo}")
        self.level = level
        self.memo = memo

    def writer(self) -> RecordWriter:
        return RecordWriter(self.level, self.memo)

    def reader(self) -> RecordReader:
        return RecordReader()


class RecordWriter:
    """One segment's writer: its dictionary, and the label columns of its last records."""

    def __init__(self, level: int = 2, memo: int = 8) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._memo_size = memo
        self._memo: dict[tuple[int, bool, int, int], tuple[list[Labels], int, bytes]] = {}
        self._strings: dict[str, int] = {}
        self._pairs: dict[tuple[str, str], int] = {}
        self._sets: dict[Labels, int] = {}
        self._metas: dict[tuple[str, Metadata], int] = {}
        self._by_id: dict[int, int] = {}
        self._held: list[Labels] = []  # every object whose id is a key of _by_id, so the id stays its own
        # What the record being encoded defines: strings, then pairs as flat string indexes, label sets as
        # lists of pair indexes, metadata entries as flat string indexes.
        self._new_strings: list[str] = []
        self._new_pairs: list[int] = []
        self._new_sets: list[list[int]] = []
        self._new_metas: list[int] = []

    def encode(self, item: SampleBatch) -> bytes:
        """The record for `item`, defining what this segment has not seen yet. Raises ValueError for a batch
        whose columns disagree in length or whose labels are not (str, str) pairs; nothing changes then."""
        marks = (len(self._strings), len(self._pairs), len(self._sets), len(self._metas), len(self._held))
        self._new_strings, self._new_pairs, self._new_sets, self._new_metas = [], [], [], []
        try:
            return self._encode(item)
        except BaseException as error:
            self._rollback(marks)
            if isinstance(error, (TypeError, OverflowError, AttributeError, struct.error)):
                raise ValueError(f"cannot encode this batch: {type(error).__name__}: {error}") from error
            raise

    def _encode(self, batch: SampleBatch) -> bytes:
        values, stamps, sizes, starts = batch.values, batch.timestamps, batch.sizes, batch.start_timestamps
        n = len(values)
        for name, column in (("labels", batch.labels), ("timestamps", stamps), ("sizes", sizes)):
            if len(column) != n:
                raise ValueError(f"{len(column)} {name} for {n} values")
        if starts and len(starts) != n:
            raise ValueError(f"{len(starts)} start timestamps for {n} values")
        runs, label_bytes = self._label_column(batch.labels, batch.grouped)
        if n and stamps == [stamps[0]] * n:
            stamp_mode, stamp_bytes = ONE_VALUE, _I64.pack(stamps[0])
        else:
            stamp_mode, stamp_bytes = PER_SAMPLE, struct.pack(f"<{n}q", *stamps)
        try:
            size_mode, size_bytes = SIZES_U32, _pack(_U32, sizes)
        except OverflowError:
            size_mode, size_bytes = SIZES_I64, struct.pack(f"<{n}q", *sizes)
        if not starts:
            start_mode, start_bytes = ABSENT, b""
        elif starts == [starts[0]] * n:
            start_mode, start_bytes = ONE_VALUE, _I64.pack(starts[0])
        else:
            start_mode, start_bytes = PER_SAMPLE, struct.pack(f"<{n}q", *starts)
        metas = list(map(self._metas.get, batch.metadata.items()))
        if None in metas:
            metas = [self._meta_index(item) for item in batch.metadata.items()]
        extras = self._extras(batch) if batch.histograms or batch.exemplars else b""
        data = b"".join((
            _DATA.pack(n, runs, len(metas), stamp_mode, size_mode, start_mode),
            label_bytes, struct.pack(f"<{n}d", *values), stamp_bytes, size_bytes, start_bytes, _pack(_U32, metas), extras,
        ))
        defs_raw = self._definitions()
        defs = self._compressor.compress(defs_raw) if defs_raw else b""
        head = _HEAD.pack(VERSION, GROUPED if batch.grouped else 0, len(defs), len(defs_raw), len(data))
        return b"".join((head, defs, self._compressor.compress(data)))

    def _label_column(self, labels: list[Labels], grouped: bool) -> tuple[int, bytes]:
        """(runs, their encoded indexes and lengths): one run per sample unless the batch is grouped."""
        n = len(labels)
        if not n:
            return 0, b""
        key = (n, grouped, id(labels[0]), id(labels[-1]))
        known = self._memo.get(key)
        if known is not None and known[0] == labels:
            return known[1], known[2]
        encoded: tuple[int, bytes] | None = None
        if grouped and any(map(operator.is_, labels[:16], labels[1:17])):  # else likely one sample per series
            starts = list(compress(count(1), map(operator.is_not, labels[1:], labels[:-1])))
            if len(starts) + 1 < n:
                firsts = [labels[0], *map(labels.__getitem__, starts)]
                lengths = map(operator.sub, chain(starts, (n,)), chain((0,), starts))
                encoded = len(firsts), self._indexes(firsts) + _pack(_U32, lengths)
        if encoded is None:
            encoded = n, self._indexes(labels)
        if self._memo_size:
            if len(self._memo) >= self._memo_size:
                del self._memo[next(iter(self._memo))]
            self._memo[key] = (list(labels), *encoded)
        return encoded

    def _indexes(self, labels: Sequence[Labels]) -> bytes:
        """The label set indexes of `labels`, defining the new ones."""
        indexes = list(map(self._by_id.get, map(id, labels)))
        try:
            return _pack(_U32, indexes)
        except TypeError:  # a None: label sets not seen by identity
            slow = self._index_of
            return _pack(_U32, [slow(labels) if index is None else index for index, labels in zip(indexes, labels)])

    def _index_of(self, labels: Labels) -> int:
        index = self._by_id.get(id(labels))
        if index is not None:
            return index
        index = self._sets.get(labels)
        if index is None:
            pairs = list(map(self._pairs.get, labels))
            if None in pairs:
                pairs = [self._pair_index(pair) if known is None else known for known, pair in zip(pairs, labels)]
            self._new_sets.append(pairs)
            index = self._sets[labels] = len(self._sets)
            # Only the first object of a label set is remembered by id: holding every equal copy (a series
            # cache that keeps evicting hands out new tuples each flush) grew memory without bound within a
            # segment (bench/outage.py --nodes 96 --layout per-node: RSS 441 MiB -> 2.7 GiB in a minute).
            self._by_id[id(labels)] = index
            self._held.append(labels)
        return index

    def _pair_index(self, pair: tuple[str, str]) -> int:
        index = self._pairs.get(pair)
        if index is None:
            if type(pair) is not tuple or len(pair) != 2:
                raise ValueError(f"a label is a (name, value) tuple, not {pair!r}")
            self._new_pairs += (self._string_index(pair[0]), self._string_index(pair[1]))
            index = self._pairs[pair] = len(self._pairs)
        return index

    def _string_index(self, string: str) -> int:
        index = self._strings.get(string)
        if index is None:
            if type(string) is not str:
                raise ValueError(f"labels and metadata are strings, not {string!r}")
            self._new_strings.append(string)
            index = self._strings[string] = len(self._strings)
        return index

    def _meta_index(self, item: tuple[str, Metadata]) -> int:
        index = self._metas.get(item)
        if index is None:
            name, meta = item
            self._new_metas += map(self._string_index, (name, meta.type, meta.help, meta.unit))
            index = self._metas[item] = len(self._metas)
        return index

    def _extras(self, batch: SampleBatch) -> bytes:
        """Native histograms and exemplars as JSON, floats as their bits."""
        if not len(batch.histogram_labels) == len(batch.histograms) == len(batch.histogram_sizes):
            raise ValueError("histogram_labels, histograms and histogram_sizes differ in length")
        if not len(batch.exemplar_labels) == len(batch.exemplars) == len(batch.exemplar_sizes):
            raise ValueError("exemplar_labels, exemplars and exemplar_sizes differ in length")
        histograms = []
        for labels, h, size in zip(batch.histogram_labels, batch.histograms, batch.histogram_sizes):
            floating = type(h.count) is float
            histograms.append([
                self._index_of(labels), size, h.timestamp, _bits(h.count) if floating else h.count, int(floating),
                _bits(h.sum), h.schema, _bits(h.zero_threshold), h.zero_count,
                [*chain.from_iterable(h.negative_spans)], [*h.negative_deltas],
                [*chain.from_iterable(h.positive_spans)], [*h.positive_deltas], h.start_timestamp,
            ])
        exemplars = [
            [self._index_of(labels), size, [*chain.from_iterable(e.labels)], _bits(e.value), e.timestamp]
            for labels, e, size in zip(batch.exemplar_labels, batch.exemplars, batch.exemplar_sizes)
        ]
        return json.dumps({"h": histograms, "e": exemplars}, separators=(",", ":"), allow_nan=False).encode()

    def _definitions(self) -> bytes:
        """What this record defines, uncompressed; b"" when nothing."""
        if not (self._new_sets or self._new_metas):
            return b""  # new strings and pairs only come with new label sets or metadata entries
        strings, pairs, sets, metas = self._new_strings, self._new_pairs, self._new_sets, self._new_metas
        text = "".join(strings).encode("utf-8", "surrogatepass")
        return b"".join((
            _DEFS.pack(
                len(self._strings) - len(strings), len(strings), len(self._pairs) - len(pairs) // 2, len(pairs) // 2,
                len(self._sets) - len(sets), len(sets), len(self._metas) - len(metas) // 4, len(metas) // 4,
            ),
            _pack(_U32, map(len, strings)), _pack(_U32, (len(text),)), text, _pack(_U32, pairs),
            _pack(_U32, map(len, sets)), _pack(_U32, chain.from_iterable(sets)), _pack(_U32, metas),
        ))

    def _rollback(self, marks: tuple[int, int, int, int, int]) -> None:
        """Forget what a failed `encode` defined (dicts pop their newest entries first)."""
        for table, mark in zip((self._strings, self._pairs, self._sets, self._metas), marks):
            for _ in range(len(table) - mark):
                table.popitem()
        for labels in self._held[marks[4]:]:
            del self._by_id[id(labels)]
        del self._held[marks[4]:]
        self._memo.clear()


class RecordReader:
    """One segment's reader: the tables its records defined, in the order they defined them."""

    def __init__(self) -> None:
        self._decompressor = zstandard.ZstdDecompressor()
        self._strings: list[str | None] = []
        self._pairs: list[tuple[str, str] | None] = []
        self._sets: list[Labels | None] = []
        self._metas: list[tuple[str, Metadata] | None] = []
        self._holes = False  # some entry is None: defined by a record this reader never saw

    def learn(self, record: bytes) -> None:
        """Take the definitions of a record that is not decoded. Raises ValueError when they cannot be read
        (what they define stays undefined)."""
        try:
            self._learn(_Head(record))
        except Exception as error:
            if type(error) is ValueError:
                raise
            raise ValueError(f"unreadable record definitions: {type(error).__name__}: {error}") from error

    def decode(self, record: bytes) -> SampleBatch:
        """The batch a record holds (its definitions learnt first). Raises ValueError when it cannot be read,
        or when it refers to a definition this reader does not have."""
        try:
            head = _Head(record)
            self._learn(head)
            return self._decode(head)
        except Exception as error:  # ours as they are; zstd's, JSON's, UTF-8's and the like named
            if type(error) is ValueError:
                raise
            raise ValueError(f"unreadable record: {type(error).__name__}: {error}") from error

    def _learn(self, head: _Head) -> None:
        if not head.defs_raw:
            return
        raw = _Cursor(_decompress(self._decompressor, head.record[head.defs_start:head.data_start], head.defs_raw))
        string_base, strings, pair_base, pairs, set_base, sets, meta_base, metas = raw.struct(_DEFS)
        lengths = raw.array(_U32, strings)
        text = str(raw.bytes(raw.array(_U32, 1)[0]), "utf-8", "surrogatepass")
        ends = list(accumulate(lengths))
        if (ends[-1] if ends else 0) != len(text):
            raise ValueError(f"string lengths add up to {ends[-1] if ends else 0}, the text has {len(text)}")
        self._place(self._strings, string_base, list(map(text.__getitem__, map(slice, chain((0,), ends), ends))))

        names = iter(self._lookup(self._strings, raw.array(_U32, 2 * pairs), "string"))
        new_pairs: list[Any] = list(zip(names, names))
        if self._holes:
            new_pairs = [None if None in pair else pair for pair in new_pairs]
        self._place(self._pairs, pair_base, new_pairs)

        set_lengths = raw.array(_U32, sets)
        members = iter(self._lookup(self._pairs, raw.array(_U32, sum(set_lengths)), "label pair"))
        new_sets: list[Any] = [tuple(islice(members, length)) for length in set_lengths]
        if self._holes:
            new_sets = [None if None in labels else labels for labels in new_sets]
        self._place(self._sets, set_base, new_sets)

        fields = iter(self._lookup(self._strings, raw.array(_U32, 4 * metas), "string"))
        new_metas: list[Any] = [
            None if None in (name, *meta) else (name, Metadata(*meta))
            for name, *meta in zip(fields, fields, fields, fields)
        ]
        self._place(self._metas, meta_base, new_metas)
        raw.end()

    def _place(self, table: list[Any], base: int, items: list[Any]) -> None:
        """Put a record's definitions at their indexes: after a gap when a record before it was never seen
        (the gap stays undefined), over what is known when a record is shown again (known entries stay)."""
        known = len(table)
        if base == known:
            table += items
        elif base > known:
            if base - known > MAX_GAP:
                raise ValueError(f"definitions start at {base}, {base - known} past the {known} known")
            table += [None] * (base - known)
            table += items
            self._holes = True
        else:
            for index, item in enumerate(items, base):
                if index == len(table):
                    table.append(item)
                elif table[index] is None:
                    table[index] = item

    def _lookup(self, table: list[Any], indexes: Iterable[int], what: str) -> list[Any]:
        try:
            return list(map(table.__getitem__, indexes))
        except IndexError:
            raise ValueError(
                f"refers to a {what} index past the {len(table)} this segment defined so far"
            ) from None

    def _defined(self, items: list[Any], what: str) -> list[Any]:
        if self._holes and None in items:
            raise ValueError(f"refers to a {what} defined by a record of this segment that was not read")
        return items

    def _decode(self, head: _Head) -> SampleBatch:
        raw = _Cursor(_decompress(self._decompressor, head.record[head.data_start:], head.data_raw))
        n, runs, metas, stamp_mode, size_mode, start_mode = raw.struct(_DATA)
        if stamp_mode not in (PER_SAMPLE, ONE_VALUE) or size_mode not in (SIZES_U32, SIZES_I64):
            raise ValueError(f"unknown column modes: timestamps {stamp_mode}, sizes {size_mode}")
        if start_mode not in (PER_SAMPLE, ONE_VALUE, ABSENT):
            raise ValueError(f"unknown start timestamp mode {start_mode}")
        # Every length checked against the bytes there before a list is built from it.
        need = 4 * runs * (1 if runs == n else 2) + 8 * n + 4 * metas + (4 if size_mode == SIZES_U32 else 8) * n
        need += {PER_SAMPLE: 8 * n, ONE_VALUE: 8}[stamp_mode] + {PER_SAMPLE: 8 * n, ONE_VALUE: 8, ABSENT: 0}[start_mode]
        if need > raw.left():
            raise ValueError(f"{n} samples in {runs} runs need {need} bytes, the record has {raw.left()}")

        sets = self._defined(self._lookup(self._sets, raw.array(_U32, runs), "label set"), "label set")
        if runs == n:
            labels = sets
        else:
            lengths = raw.array(_U32, runs)
            if sum(lengths) != n or (runs and min(lengths) == 0):
                raise ValueError(f"run lengths add up to {sum(lengths)} with {lengths.count(0)} empty, not {n}")
            labels = list(chain.from_iterable(map(repeat, sets, lengths)))
        values = raw.array("d", n).tolist()
        stamps = raw.array("q", n).tolist() if stamp_mode == PER_SAMPLE else [raw.array("q", 1)[0]] * n
        sizes = raw.array(_U32 if size_mode == SIZES_U32 else "q", n).tolist()
        if start_mode == ABSENT:
            starts: list[int] = []
        else:
            starts = raw.array("q", n).tolist() if start_mode == PER_SAMPLE else [raw.array("q", 1)[0]] * n
        metadata = dict(self._defined(self._lookup(self._metas, raw.array(_U32, metas), "metadata entry"), "metadata entry"))
        batch = SampleBatch(
            labels=labels, values=values, timestamps=stamps, sizes=sizes, metadata=metadata,
            start_timestamps=starts, grouped=bool(head.flags & GROUPED),
        )
        extras = raw.rest()
        if extras:
            self._extras(batch, json.loads(extras))
        return batch

    def _extras(self, batch: SampleBatch, extras: Any) -> None:
        if type(extras) is not dict or set(extras) != {"h", "e"}:
            raise ValueError("histograms and exemplars are not a {h, e} object")
        for entry in _list(extras["h"]):
            fields = _list(entry)
            if len(fields) != 14:
                raise ValueError(f"a histogram has {len(fields)} fields, not 14")
            (index, size, stamp, count_, floating, sum_, schema, threshold, zero_count,
             negative_spans, negative_deltas, positive_spans, positive_deltas, start) = fields
            for value in (index, size, stamp, count_, floating, sum_, schema, threshold, zero_count, start):
                _int(value)
            batch.histogram_labels.append(self._label_set(index))
            batch.histogram_sizes.append(size)
            batch.histograms.append(NativeHistogram(
                stamp, _float(count_) if floating else count_, _float(sum_), schema, _float(threshold),
                zero_count, _spans(negative_spans), _ints(negative_deltas), _spans(positive_spans),
                _ints(positive_deltas), start,
            ))
        for entry in _list(extras["e"]):
            fields = _list(entry)
            if len(fields) != 5:
                raise ValueError(f"an exemplar has {len(fields)} fields, not 5")
            index, size, flat, value, stamp = fields
            for number in (index, size, value, stamp):
                _int(number)
            strings = _list(flat)
            if len(strings) % 2 or any(type(s) is not str for s in strings):
                raise ValueError("exemplar labels are not (name, value) strings")
            names = iter(strings)
            batch.exemplar_labels.append(self._label_set(index))
            batch.exemplar_sizes.append(size)
            batch.exemplars.append(Exemplar(tuple(zip(names, names)), _float(value), stamp))

    def _label_set(self, index: int) -> Labels:
        labels = self._sets[index] if 0 <= index < len(self._sets) else None
        if labels is None:
            raise ValueError(f"refers to label set {index}, not defined in this segment")
        return labels


class _Head:
    """A record's fixed header, checked against the record's length."""

    __slots__ = ("data_raw", "data_start", "defs_raw", "defs_start", "flags", "record")

    def __init__(self, record: bytes) -> None:
        if len(record) < _HEAD.size:
            raise ValueError(f"a record of {len(record)} bytes is shorter than its header")
        version, self.flags, defs_length, self.defs_raw, self.data_raw = _HEAD.unpack_from(record)
        if version != VERSION:
            raise ValueError(f"record format version {version}, this reader knows {VERSION}")
        self.record = memoryview(record)
        self.defs_start = _HEAD.size
        self.data_start = _HEAD.size + defs_length
        if self.data_start > len(record) or (defs_length == 0) != (self.defs_raw == 0):
            raise ValueError(f"definitions of {defs_length} bytes ({self.defs_raw} raw) in a {len(record)}-byte record")


class _Cursor:
    """Reads an uncompressed part front to back, every length checked against what is left."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def left(self) -> int:
        return len(self.data) - self.offset

    def bytes(self, length: int) -> memoryview:
        if length > self.left():
            raise ValueError(f"{length} bytes wanted, {self.left()} left")
        start = self.offset
        self.offset += length
        return self.data[start:self.offset]

    def struct(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.bytes(layout.size))

    def array(self, typecode: str, length: int) -> array:
        column = array(typecode)
        column.frombytes(self.bytes(length * column.itemsize))
        if _SWAP:
            column.byteswap()
        return column

    def rest(self) -> bytes:
        return bytes(self.bytes(self.left()))

    def end(self) -> None:
        if self.left():
            raise ValueError(f"{self.left()} bytes left over")


def _decompress(decompressor: zstandard.ZstdDecompressor, part: memoryview, raw: int) -> bytes:
    """A zstd frame that must hold exactly `raw` bytes (checked before anything is allocated for them)."""
    if raw > MAX_PART_BYTES:
        raise ValueError(f"a part of {raw} bytes is past the {MAX_PART_BYTES} a reader accepts")
    try:
        size = zstandard.frame_content_size(part)
    except zstandard.ZstdError as error:
        raise ValueError(f"not a zstd frame: {error}") from error
    if size != raw:
        raise ValueError(f"a zstd frame of {size} bytes where the header says {raw}")
    data = decompressor.decompress(part)
    if len(data) != raw:
        raise ValueError(f"{len(data)} bytes decompressed, the header says {raw}")
    return data


def _pack(typecode: str, values: Iterable[Any]) -> bytes:
    column = array(typecode, values)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _bits(value: float) -> int:
    return _BITS.unpack(_FLOAT.pack(value))[0]


def _float(bits: int) -> float:
    if not 0 <= bits < 1 << 64:
        raise ValueError(f"{bits} is not the bit pattern of a float64")
    return _FLOAT.unpack(_BITS.pack(bits))[0]


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"{value!r} where an integer belongs")
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise ValueError(f"{type(value).__name__} where a list belongs")
    return value


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(map(_int, _list(values)))


def _spans(values: Any) -> tuple[tuple[int, int], ...]:
    flat = iter(_ints(values))
    spans = tuple(zip(flat, flat))
    if 2 * len(spans) != len(values):
        raise ValueError("histogram spans are not (offset, length) pairs")
    return spans
