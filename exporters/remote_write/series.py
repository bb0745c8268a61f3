"""The series model every remote-write link shares: what translation produces, what a batch holds, what each
encoder writes and each decoder (the gateway's) gives back.

It lives apart from `translate` so that encoders, decoders and the gateway import the types without the
OTLP translation, and so that a decoded request and a translated one are the same kind of value: a gateway
forwards what it decoded through the same batcher and encoders as a node forwards what it translated.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

Labels = tuple[tuple[str, str], ...]
"""A series' complete label set, sorted by name, `__name__` included."""

NAME_LABEL = "__name__"
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
"""Prometheus's staleness marker: a NaN with this exact bit pattern (compare bits, never values)."""


class NativeHistogram(NamedTuple):
    """One native histogram sample with integer counts, as remote write 1.0's `Histogram` message carries it.

    Spans are (offset, length): the first offset is the index of the first bucket, the next ones the gap
    after the previous span. Deltas are each bucket's count minus the previous bucket's (the first minus 0).
    `count` and `sum` are `STALE_NAN` for a staleness marker (then `count` is a float).
    `start_timestamp` is the cumulative series' start in ms (0 when unknown); only remote write 2.0 and the
    compact format carry it.
    """

    timestamp: int
    count: int | float
    sum: float
    schema: int
    zero_threshold: float
    zero_count: int
    negative_spans: tuple[tuple[int, int], ...] = ()
    negative_deltas: tuple[int, ...] = ()
    positive_spans: tuple[tuple[int, int], ...] = ()
    positive_deltas: tuple[int, ...] = ()
    start_timestamp: int = 0


class Exemplar(NamedTuple):
    """An exemplar: its own labels (`trace_id`, `span_id`, ...), value and timestamp in ms (0 if unknown)."""

    labels: Labels
    value: float
    timestamp: int


class Metadata(NamedTuple):
    """What a metric family is, as remote write 2.0 and the compact format carry it per series.

    `type` is one of `METRIC_TYPES`; `help` the OTLP description; `unit` the OTLP unit as given.
    """

    type: str
    help: str = ""
    unit: str = ""


METRIC_TYPES = ("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset")
"""Metric types in remote write 2.0's `Metadata.MetricType` order (0 = unspecified, written `unknown`)."""


@dataclass(slots=True)
class SampleBatch:
    """Translated series, in columns.

    Float samples: sample i is (labels[i], values[i], timestamps[i] in ms since the epoch); `sizes[i]`
    estimates the bytes it adds to an uncompressed remote-write 1.0 body. `len(batch)` counts these only.
    Native histograms: histogram i is (histogram_labels[i], histograms[i]), its timestamp inside.
    Exemplars: exemplar i belongs to the series exemplar_labels[i]; a receiver attaches it to a series it
    already has, so send it with or after that series' samples. `metadata` maps a series' `__name__` to what
    its family is (filled where known; formats without metadata ignore it). `start_timestamps`, when not
    empty, is parallel to `values`: the start of sample i's cumulative series in ms (0 = unknown), carried by
    formats that have a place for it. `dropped` counts the data points (and `target_info` series) that were
    not translated, by reason.

    `grouped` promises that the float samples are already in the order every encoder would put them in: each
    series' samples contiguous and in time order (equal timestamps in arrival order), series in the order of
    their first sample, and all of one series' entries the same label tuple object (so a run is found by
    identity, without hashing). The batcher sets it when it cuts that way, so that encoders skip grouping
    again (~0.5 us per sample in Python); whoever reorders or appends to a grouped batch's columns must clear
    it.

    `series_key`, when not None, stands for the float label column: every batch with the same key has the same
    label tuples in the same order and no histograms, so a check made over a batch's series (the series limit)
    holds for the next batch of that key. A learnt shape sets it to itself (shapes.py); whoever changes the
    label columns must clear it (`extend` does).

    A built batch's columns are read, never changed: they may be shared (a learnt shape hands out its label and
    size columns, a batcher may pass a batch on as its request, an encoder remembers the label columns of its
    last requests). Why: each copy or release of a column of label tuples touches every tuple's reference
    count, ~70 us for a node's 5,230 series when they are not in the CPU's cache, several times per request
    otherwise. Whoever needs other columns builds new lists (`extend` appends only to a batch of its own).
    """

    labels: list[Labels] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    histogram_labels: list[Labels] = field(default_factory=list)
    histograms: list[NativeHistogram] = field(default_factory=list)
    histogram_sizes: list[int] = field(default_factory=list)
    exemplar_labels: list[Labels] = field(default_factory=list)
    exemplars: list[Exemplar] = field(default_factory=list)
    exemplar_sizes: list[int] = field(default_factory=list)
    metadata: dict[str, Metadata] = field(default_factory=dict)
    start_timestamps: list[int] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    grouped: bool = False
    series_key: object | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __bool__(self) -> bool:
        return bool(self.values or self.histograms or self.exemplars)

    def extend(self, other: SampleBatch) -> None:
        """Append `other`'s entries (copied from, never kept). Start timestamps stay parallel to the values:
        zeros (unknown) for samples that came without one."""
        self.series_key = None
        if other.start_timestamps or self.start_timestamps:
            if not self.start_timestamps:
                self.start_timestamps.extend([0] * len(self.values))
            self.start_timestamps.extend(other.start_timestamps or [0] * len(other.values))
        self.labels += other.labels
        self.values += other.values
        self.timestamps += other.timestamps
        self.sizes += other.sizes
        self.histogram_labels += other.histogram_labels
        self.histograms += other.histograms
        self.histogram_sizes += other.histogram_sizes
        self.exemplar_labels += other.exemplar_labels
        self.exemplars += other.exemplars
        self.exemplar_sizes += other.exemplar_sizes
        self.metadata.update(other.metadata)

    @property
    def nbytes(self) -> int:
        """Estimated bytes of an uncompressed remote-write 1.0 body for everything the batch holds."""
        return sum(self.sizes) + sum(self.histogram_sizes) + sum(self.exemplar_sizes)

    @property
    def samples(self) -> int:
        """Float samples plus native histograms: what a receiver counts as samples written."""
        return len(self.values) + len(self.histograms)


def group_by_series(labels: Sequence[Labels]) -> dict[Labels, list[int]]:
    """Indexes of each series' entries, series in first-appearance order: how every encoder and the batcher
    put one series' samples together."""
    by_series: dict[Labels, list[int]] = {}
    for index, series in enumerate(labels):
        members = by_series.get(series)
        if members is None:
            by_series[series] = [index]
        else:
            members.append(index)
    return by_series
