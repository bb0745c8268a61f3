"""Hypothesis strategies for the series model, and the canonical form round-trip tests compare.

Every encoder groups a batch's samples by series and puts each series' samples in time order, so a decoded
batch equals the one encoded up to that order: `canonical` is that equality. Floats are compared by their
bits, so NaN, the staleness-marker NaN, -0.0 and the infinities must come back exactly.

    @given(batches())
    def test_round_trip(batch):
        assert canonical(decode(encode(batch))) == canonical(batch)

`flushes` draws what a batcher is handed over one flush interval: several such batches (ticks) and limits.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st

from exporters.remote_write.series import (
    METRIC_TYPES,
    NAME_LABEL,
    STALE_NAN,
    Exemplar,
    Labels,
    Metadata,
    NativeHistogram,
    SampleBatch,
)

SPECIAL_FLOATS = (STALE_NAN, float("nan"), 0.0, -0.0, float("inf"), float("-inf"), 1.0, -1.5, 5e-324, 1.7976931348623157e308)
NAN_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000123))[0]

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(lambda n: n != NAME_LABEL)
label_values = st.text(min_size=1, max_size=16)
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
floats = st.one_of(st.sampled_from(SPECIAL_FLOATS + (NAN_PAYLOAD,)), st.floats(allow_nan=True, allow_infinity=True))
timestamps = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100, in ms


@st.composite
def label_sets(draw: Any, name: str | None = None) -> Labels:
    """A valid series label set: `__name__` first among sorted names, no empty or duplicate names or values."""
    extra = draw(st.dictionaries(label_names, label_values, max_size=6))
    labels = {NAME_LABEL: name or draw(metric_names), **extra}
    return tuple(sorted(labels.items()))


@st.composite
def native_histograms(draw: Any, timestamp: int) -> NativeHistogram:
    if draw(st.integers(0, 9)) == 0:  # a staleness marker
        return NativeHistogram(timestamp, STALE_NAN, STALE_NAN, draw(st.integers(-4, 8)), 1e-128, 0)

    def side() -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
        spans = draw(st.lists(st.tuples(st.integers(-5, 5), st.integers(1, 4)), max_size=3))
        if spans:
            spans[1:] = [(abs(offset), length) for offset, length in spans[1:]]
        deltas = tuple(draw(st.integers(-1000, 1000)) for _ in range(sum(length for _, length in spans)))
        return tuple(spans), deltas

    negative_spans, negative_deltas = side()
    positive_spans, positive_deltas = side()
    return NativeHistogram(
        timestamp=timestamp,
        count=draw(st.integers(0, 2**53)),
        sum=draw(floats),
        schema=draw(st.integers(-4, 8)),
        zero_threshold=draw(st.sampled_from((1e-128, 0.0, 0.001))),
        zero_count=draw(st.integers(0, 2**40)),
        negative_spans=negative_spans,
        negative_deltas=negative_deltas,
        positive_spans=positive_spans,
        positive_deltas=positive_deltas,
        start_timestamp=draw(st.sampled_from((0, max(0, timestamp - 60_000)))),
    )


@st.composite
def batches(
    draw: Any,
    *,
    max_series: int = 8,
    max_samples_per_series: int = 5,
    histograms: bool = True,
    exemplars: bool = True,
    metadata: bool = True,
    start_timestamps: bool = True,
) -> SampleBatch:
    """A batch as translation (or a decoder) produces it: float samples interleaved across series, each
    series' timestamps distinct; optionally native histograms, exemplars on series the batch has, metadata
    for some of its names, and start timestamps."""
    batch = SampleBatch()
    series = draw(st.lists(label_sets(), min_size=0, max_size=max_series, unique=True))
    rows = []
    for labels in series:
        stamps = draw(st.lists(timestamps, min_size=1, max_size=max_samples_per_series, unique=True))
        for stamp in stamps:
            rows.append((labels, draw(floats), stamp))
    order = draw(st.permutations(range(len(rows)))) if rows else []
    with_start = start_timestamps and draw(st.booleans())
    for i in order:
        labels, value, stamp = rows[i]
        batch.labels.append(labels)
        batch.values.append(value)
        batch.timestamps.append(stamp)
        batch.sizes.append(0)
        if with_start:
            batch.start_timestamps.append(draw(st.sampled_from((0, max(0, stamp - 1000)))))
    if histograms:
        for labels in draw(st.lists(label_sets(), max_size=3, unique=True)):
            if labels in series:
                continue
            for stamp in draw(st.lists(timestamps, min_size=1, max_size=3, unique=True)):
                batch.histogram_labels.append(labels)
                batch.histograms.append(draw(native_histograms(stamp)))
                batch.histogram_sizes.append(0)
    if exemplars and (series or batch.histogram_labels):
        owners = series + sorted(set(batch.histogram_labels))
        for _ in range(draw(st.integers(0, 4))):
            ids = (("span_id", draw(st.from_regex(r"[0-9a-f]{16}", fullmatch=True))),
                   ("trace_id", draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True))))
            batch.exemplar_labels.append(draw(st.sampled_from(owners)))
            batch.exemplars.append(Exemplar(ids, draw(floats), draw(timestamps)))
            batch.exemplar_sizes.append(0)
    if metadata:
        names = sorted({dict(labels)[NAME_LABEL] for labels in series + batch.histogram_labels})
        for name in draw(st.lists(st.sampled_from(names), unique=True)) if names else []:
            batch.metadata[name] = Metadata(
                draw(st.sampled_from(METRIC_TYPES)), draw(st.text(max_size=20)), draw(st.sampled_from(("", "seconds", "By")))
            )
    return batch


def copied(series: Labels) -> Labels:
    """An equal label set in another tuple object (what a decoder or a rebuilt context produces)."""
    return tuple(iter(series))  # tuple(series) would hand back the same object


@st.composite
def flushes(draw: Any) -> tuple[list[SampleBatch], int, int]:
    """Ticks of one flush and the batcher's limits. Half the flushes repeat one series order tick after tick
    with later timestamps (a node's ticks: the interleaving path); the others break that in one way or
    another (reordered or missing series, duplicates, equal but distinct label tuples, time going back)."""
    series = draw(st.lists(label_sets(), min_size=1, max_size=6, unique=True))
    repeated = draw(st.booleans())
    with_starts = draw(st.booleans())
    stamp = draw(st.integers(0, 10**9))
    ticks = []
    for _ in range(draw(st.integers(1, 5))):
        if repeated:
            order = [copied(s) for s in series] if draw(st.integers(0, 5)) == 0 else list(series)
            stamp += draw(st.sampled_from((1000, 1000, 1000, 0, 7)))
            stamps = [stamp] * len(order)
        else:
            order = draw(st.lists(st.sampled_from(series), min_size=1, max_size=8))
            order = [copied(s) if draw(st.integers(0, 4)) == 0 else s for s in order]
            stamps = [stamp + draw(st.integers(-2000, 3000)) for _ in order]
        batch = SampleBatch(
            labels=order,
            values=[draw(floats) for _ in order],
            timestamps=stamps,
            sizes=[draw(st.integers(0, 60)) for _ in order],
        )
        if with_starts:
            batch.start_timestamps = [draw(st.sampled_from((0, 5, 10**9))) for _ in order]
        cut = draw(st.integers(0, len(order))) if repeated and draw(st.booleans()) else 0
        if 0 < cut < len(order):  # the tick in two batches, as several requests per tick reach a node
            rest = SampleBatch(labels=batch.labels[cut:], values=batch.values[cut:],
                               timestamps=batch.timestamps[cut:], sizes=batch.sizes[cut:],
                               start_timestamps=batch.start_timestamps[cut:])
            del batch.labels[cut:], batch.values[cut:], batch.timestamps[cut:], batch.sizes[cut:]
            del batch.start_timestamps[cut:]
            ticks += (batch, rest)
        else:
            ticks.append(batch)
    if draw(st.integers(0, 3)) == 0:
        last = ticks[-1]
        h = NativeHistogram(timestamp=stamp, count=3, sum=1.5, schema=0, zero_threshold=0.0, zero_count=1)
        last.histogram_labels, last.histograms, last.histogram_sizes = [(("__name__", "h"),)], [h], [50]
        last.exemplar_labels, last.exemplars, last.exemplar_sizes = [series[0]], [Exemplar((), 1.0, stamp)], [30]
    return ticks, draw(st.integers(1, 12)), draw(st.one_of(st.integers(1, 600), st.just(1 << 20)))


def bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def canonical(
    batch: SampleBatch, *, metadata: bool = True, start_timestamps: bool = True, histogram_start: bool = True
) -> dict[str, Any]:
    """What a round trip must preserve, independent of order across series and of arrival order within one.

    Float samples per series as (timestamp, value bits[, start timestamp]) sorted by timestamp; histograms
    per series sorted by timestamp with float fields as bits; exemplars per series sorted; metadata as a
    dict. Switch off what a format cannot carry (remote write 1.0 has no start timestamps, for instance).
    """
    samples: dict[Labels, list[tuple[int, ...]]] = {}
    starts = batch.start_timestamps if start_timestamps and batch.start_timestamps else None
    for i, (labels, value, stamp) in enumerate(zip(batch.labels, batch.values, batch.timestamps)):
        row = (stamp, bits(value), starts[i] if starts is not None else 0)
        samples.setdefault(labels, []).append(row)
    hist: dict[Labels, list[tuple[Any, ...]]] = {}
    for labels, h in zip(batch.histogram_labels, batch.histograms):
        fields = h._replace(sum=bits(h.sum), zero_threshold=bits(h.zero_threshold),
                            count=("f", bits(h.count)) if isinstance(h.count, float) else ("i", h.count))
        if not histogram_start:
            fields = fields._replace(start_timestamp=0)
        hist.setdefault(labels, []).append(tuple(fields))
    ex: dict[Labels, list[tuple[Any, ...]]] = {}
    for labels, e in zip(batch.exemplar_labels, batch.exemplars):
        ex.setdefault(labels, []).append((e.timestamp, bits(e.value), e.labels))
    return {
        "samples": {k: sorted(v) for k, v in samples.items()},
        "histograms": {k: sorted(v) for k, v in hist.items()},
        "exemplars": {k: sorted(v) for k, v in ex.items()},
        "metadata": dict(batch.metadata) if metadata else {},
    }
