"""Translating an OTLP metrics request straight from its wire bytes, when one of the same shape was translated
before.

Why: a node's SDK or collector exports the same metrics with the same attributes every interval; only the
timestamps and values move, and in a `NumberDataPoint` both are fixed-width fields (`time_unix_nano` is a
fixed64, `as_double` a double, `as_int` an sfixed64). So the request's bytes outside those fields, its
*shape*, repeat exactly, and so does everything translation makes of them: the series each point becomes,
which points are dropped and why, the metadata, the `target_info` series. Parsing the request (upb, ~0.35 us
per point) and translating it point by point (~4 us per point, most of it per-metric Python work: requests
of a node carry ~2 points per metric) cost ~15x what reading the moving fields of a known shape costs: one
`struct` unpack of the whole body, one tuple comparison of the bytes between the moving fields (memcmp), and
a few list operations (`bench/translate_bench.py --workload node`).

A `Shape` is learnt from a request the full way translated (`translate(..., wire=...)`): the walk here finds
the moving fields' offsets, and the translation records what each point became. It is kept only when
applying it to the request it was learnt from gives exactly the full translation's result (labels, values
bit for bit, timestamps, sizes, metadata, drops), and it applies only to a request equal to that one outside
the moving fields (same length, same bytes elsewhere). Any other request is translated the full way.

What can be shaped: requests whose metrics are all gauges and sums of number points, each point with one
time and one value and no exemplars (an exemplar's bytes move). Histograms, summaries and exemplars keep a
request on the full path; so does a point whose time is 0 (translation drops it as `missing_timestamp`).

Shapes live in the exporter's `SeriesCache` (bounded in bytes with the series, and holding their label
tuples' identities while kept), one per request length. Learning walks the whole request in Python (~10 us
per point), so a shape that is replaced before it was ever used doubles the number of misses the next
attempt waits for (up to `MAX_BACKOFF`): a sender whose requests never repeat costs a walk now and then, not
on every request.
"""

from __future__ import annotations

import struct
from collections import Counter
from itertools import repeat
from operator import floordiv
from sys import getsizeof

from exporters.remote_write.series import STALE_NAN, Labels, Metadata, SampleBatch
from exporters.remote_write.wire import skip_field, varint_at

MAX_BACKOFF = 64
"""Most misses a shape slot waits for before learning again, after learnt shapes went unused."""

_TIME, _AS_DOUBLE, _AS_INT, _EXEMPLARS = 0x19, 0x21, 0x31, 0x2A
_GAUGE, _SUM = 5, 7
_STRUCT_CODE_BYTES = 40  # what one format code costs a compiled struct (its code array entry and format text)


class Unshapeable(Exception):
    """The request holds something a shape cannot reproduce (see the module docstring)."""


class Learnt:
    """What the full translation of one request recorded for its shape (filled by `translate`).

    `outcomes[i]` is the row of the batch that number point i (in wire order) became, or -1 when it was
    dropped; `stale_rows` the rows written as staleness markers; `resources` per resource (its `target_info`
    labels or None, its first and past-last row). `shapeable` turns False on anything `Shape` cannot replay.
    """

    __slots__ = ("outcomes", "resources", "shapeable", "stale_rows")

    def __init__(self) -> None:
        self.outcomes: list[int] = []
        self.stale_rows: list[int] = []
        self.resources: list[tuple[Labels | None, int, int]] = []
        self.shapeable = True


class Shape:
    """One request length's slot: a learnt shape (or None when the last attempt could not shape the request)
    and the counts that decide when to learn again."""

    __slots__ = (
        "__weakref__",  # the series limit remembers shapes it admitted whole without keeping them alive
        "backoff",
        "dropped",
        "has_ints",
        "hits",
        "keep",
        "labels",
        "literals",
        "metadata",
        "misses",
        "nbytes",
        "points",
        "sizes",
        "stale_rows",
        "targets",
        "unpack",
    )

    def __init__(self, backoff: int = 1) -> None:
        self.unpack: struct.Struct | None = None
        self.literals: tuple[bytes, ...] = ()
        self.has_ints = False
        self.points = 0
        self.keep: list[int] | None = None  # kept points' indexes, None when every point is kept
        # The label and size columns apply hands out (read-only): the kept points' rows, then target_info's
        self.labels: list[Labels] = []
        self.sizes: list[int] = []
        self.stale_rows: list[int] = []
        self.metadata: dict[str, Metadata] = {}
        self.dropped: Counter[str] = Counter()
        # target_info series in emission order: (labels, size, [(first row, past-last row) of its resources])
        self.targets: list[tuple[Labels, int, list[tuple[int, int]]]] = []
        self.hits = 0
        self.misses = 0
        self.backoff = backoff
        self.nbytes = getsizeof(self) + 64

    def due(self) -> bool:
        """Whether a miss on this slot should learn the request that missed."""
        return self.misses >= self.backoff

    def successor_backoff(self) -> int:
        """The backoff of the slot that replaces this one: reset when this shape earned its keep."""
        return 1 if self.hits else min(MAX_BACKOFF, self.backoff * 2)

    def held_labels(self) -> tuple[Labels, ...]:
        """Label tuples this shape hands out: the series cache keeps them interned (stable series ids)."""
        return tuple(self.labels)

    # -- learning ---------------------------------------------------------------------------------------

    def learn(self, wire: bytes, batch: SampleBatch, learnt: Learnt) -> bool:
        """Take the shape of `wire` from its full translation `batch`; False (nothing kept) when it cannot be
        shaped or replaying it would not give `batch` exactly."""
        if not learnt.shapeable or batch.histograms or batch.exemplars or batch.start_timestamps:
            return False
        if "missing_timestamp" in batch.dropped:
            return False
        try:
            offsets, codes = variable_fields(wire)
        except (Unshapeable, IndexError, ValueError):
            return False
        points = len(codes) // 2
        outcomes = learnt.outcomes
        if not points or points != len(outcomes):
            return False
        kept = [i for i, row in enumerate(outcomes) if row >= 0]
        rows = len(kept)
        if [outcomes[i] for i in kept] != list(range(rows)):
            return False
        emitted = batch.labels[rows:]
        targets = self._targets(learnt.resources, emitted, batch.sizes[rows:])
        if targets is None:
            return False
        # Literals between the moving fields; each point contributes (gap, time, tag byte, value).
        fmt = ["<"]
        literals = []
        pos = 0
        for offset, code in zip(offsets, codes):
            fmt.append(f"{offset - pos}s{code}")
            literals.append(wire[pos:offset])
            pos = offset + 8
        fmt.append(f"{len(wire) - pos}s")
        literals.append(wire[pos:])
        self.unpack = struct.Struct("".join(fmt))
        self.literals = tuple(literals)
        self.has_ints = "q" in codes
        self.points = points
        self.keep = None if rows == points else kept
        self.labels = batch.labels[:]  # the rows', then the target_info series' (`emitted`)
        self.sizes = batch.sizes[:]
        self.stale_rows = list(learnt.stale_rows)
        self.metadata = dict(batch.metadata)
        self.dropped = Counter(batch.dropped)
        self.targets = targets
        replayed = self.apply(wire)
        if replayed is None or not _same(replayed, batch):
            self.unpack = None
            return False
        self.nbytes = (
            getsizeof(self)
            + sum(getsizeof(literal) for literal in literals)
            + getsizeof(self.literals)
            + len(codes) * _STRUCT_CODE_BYTES
            + getsizeof(self.labels)
            + getsizeof(self.sizes)
            + (getsizeof(self.keep) if self.keep is not None else 0)
            + getsizeof(self.metadata)
            + 8 * len(self.metadata)
            + 256 * len(targets)
        )
        return True

    @staticmethod
    def _targets(
        resources: list[tuple[Labels | None, int, int]], emitted: list[Labels], sizes: list[int]
    ) -> list[tuple[Labels, int, list[tuple[int, int]]]] | None:
        """Which resources' rows date each emitted target_info series; None when they do not line up."""
        ranges: dict[Labels, list[tuple[int, int]]] = {}
        for target, first, past in resources:
            if target is not None and past > first:
                ranges.setdefault(target, []).append((first, past))
        if len(set(emitted)) != len(emitted) or any(target not in ranges for target in emitted):
            return None
        order = [target for target in ranges if target in set(emitted)]
        if order != emitted:
            return None
        return [(target, size, ranges[target]) for target, size in zip(emitted, sizes)]

    # -- replaying --------------------------------------------------------------------------------------

    def apply(self, wire: bytes) -> SampleBatch | None:
        """The translation of `wire` if it has this shape, else None."""
        unpack = self.unpack
        if unpack is None or len(wire) != unpack.size:
            return None
        fields = unpack.unpack(wire)
        if fields[0::2] != self.literals:
            return None
        # fields: (gap, time, tag byte, value) per point, then the tail
        times = fields[1::4]
        values = list(map(float, fields[3::4])) if self.has_ints else list(fields[3::4])
        first = times[0]
        if times.count(first) == len(times):  # usual: an SDK stamps one collection with one time
            if not first:
                return None
            timestamps = [first // 1_000_000] * len(times)
        elif 0 in times:
            return None
        else:
            timestamps = list(map(floordiv, times, repeat(1_000_000)))
        keep = self.keep
        if keep is not None:
            values = [values[i] for i in keep]
            timestamps = [timestamps[i] for i in keep]
        for row in self.stale_rows:
            values[row] = STALE_NAN
        # The label and size columns are this shape's own, handed out read-only (see SampleBatch).
        labels, sizes = self.labels, self.sizes
        for _, _, ranges in self.targets:
            newest = max(max(timestamps[first:past]) for first, past in ranges)
            if not newest:
                return None  # translation leaves such a target_info out: a case for the full path
            values.append(1.0)
            timestamps.append(newest)
        return SampleBatch(
            labels=labels,
            values=values,
            timestamps=timestamps,
            sizes=sizes,
            metadata=self.metadata.copy(),
            dropped=self.dropped.copy(),
            series_key=self,
        )


def _same(a: SampleBatch, b: SampleBatch) -> bool:
    pack = struct.Struct(f"<{len(a.values)}d").pack if len(a.values) == len(b.values) else None
    return (
        pack is not None
        and a.labels == b.labels
        and pack(*a.values) == pack(*b.values)
        and a.timestamps == b.timestamps
        and a.sizes == b.sizes
        and a.metadata == b.metadata
        and +a.dropped == +b.dropped
        and not b.histograms
        and not b.exemplars
    )


def _fields(data: bytes, start: int, end: int, wanted: int) -> list[tuple[int, int]]:
    """(start, end) of each length-delimited field numbered `wanted` in `data[start:end]`; other fields are
    stepped over (they belong to the shape's literal bytes)."""
    out = []
    pos = start
    while pos < end:
        tag, after_tag = varint_at(data, pos)
        if tag == (wanted << 3) | 2:
            length, payload = varint_at(data, after_tag)
            out.append((payload, payload + length))
        pos = skip_field(data, pos)
    if pos != end:
        raise Unshapeable("a field runs past its message")
    return out


def variable_fields(wire: bytes) -> tuple[list[int], list[str]]:
    """The offsets of every number point's time and value payloads in an ExportMetricsServiceRequest, in
    order (time, value, time, value, ...), with their struct codes ('Q' time, 'd' double, 'q' int).

    Raises `Unshapeable` for anything a shape cannot replay: a histogram, summary or exponential histogram,
    an exemplar, a point without exactly one time followed by one value."""
    offsets: list[int] = []
    codes: list[str] = []
    for resource_start, resource_end in _fields(wire, 0, len(wire), 1):
        for scope_start, scope_end in _fields(wire, resource_start, resource_end, 2):
            for metric_start, metric_end in _fields(wire, scope_start, scope_end, 2):
                _metric(wire, metric_start, metric_end, offsets, codes)
    return offsets, codes


def _metric(wire: bytes, start: int, end: int, offsets: list[int], codes: list[str]) -> None:
    for number in (9, 10, 11):  # histogram, exponential histogram, summary
        if _fields(wire, start, end, number):
            raise Unshapeable("histogram or summary")
    for number in (_GAUGE, _SUM):
        for body_start, body_end in _fields(wire, start, end, number):
            for point_start, point_end in _fields(wire, body_start, body_end, 1):
                _point(wire, point_start, point_end, offsets, codes)


def _point(wire: bytes, start: int, end: int, offsets: list[int], codes: list[str]) -> None:
    time_at = value_at = -1
    code = ""
    pos = start
    while pos < end:
        tag = wire[pos]
        if tag == _TIME:
            if time_at >= 0:
                raise Unshapeable("two times in a point")
            time_at = pos + 1
        elif tag == _AS_DOUBLE or tag == _AS_INT:
            if value_at >= 0:
                raise Unshapeable("two values in a point")
            value_at = pos + 1
            code = "d" if tag == _AS_DOUBLE else "q"
        elif tag == _EXEMPLARS:
            raise Unshapeable("exemplars")
        pos = skip_field(wire, pos)
    if pos != end or time_at < 0 or value_at < 0 or value_at < time_at + 8:
        raise Unshapeable("a point without one time followed by one value")
    offsets.append(time_at)
    offsets.append(value_at)
    codes.append("Q")
    codes.append(code)
