"""Headwater's own remote-write format, `compact`: the sending side and what both sides share.

Why it exists: between a node agent and a Headwater gateway nothing obliges us to repeat labels. A session
(named in headers, not tied to a TCP connection: `X-Headwater-Session`, `X-Headwater-Epoch`,
`X-Headwater-Sequence`) keeps a symbol table and a series table on both sides, so after the first request a
series costs nothing but its samples, and a sample costs a delta-of-delta timestamp and its value XOR'd with
the series' previous one (proto/compact.proto states the exact rules). That is what takes a body from
~14 B/sample (remote write 2.0 style) to ~1.5 (README.md, "Remote write on the wire": 1.46 B/sample measured).

State moves only on acknowledgement. `CompactEncoder.encode` builds a request against the *acknowledged*
state and returns a `commit` that applies the request's definitions and last values; until it is called,
every encode (a resend of the same batch or another batch) reuses the same sequence number and the same
base, so whatever the receiver did with a lost request, the next one decodes (the receiver keeps one step of
undo for the resend of its last committed request: compact_session.py). A receiver that lost its side
answers 409 `compact session lost...`; the connection calls `reset()` and resends: a new epoch, empty state.
A session also starts over by itself when older than `max_session_age` or when its dictionary estimate
passes `max_dictionary_bytes`, so neither side's state grows without bound.

Speed: a node sends ~5,000 series a second and the goal is >= 1M samples/s encoded and compressed on one
core, so nothing here touches a sample in a Python-level loop. Series refs come from the previous request
(an identity comparison of the label lists) or a lookup by the label tuple's id; columns are regrouped with
a cached permutation, turned into bits with `array`, XOR'd as two big integers, shifted within series with
slice assignments, and written by protobuf's C extension (`extend` of packed repeated fields); the value
column's fixed64 words and the metadata entries are appended to the body as raw bytes. Only new series and
the rare histograms and exemplars take per-item paths.
"""

from __future__ import annotations

import operator
import secrets
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate, chain, compress, repeat
from typing import Any

import zstandard

from exporters.remote_write import encoding
from exporters.remote_write.encoding import DecodeError, Encoded
from exporters.remote_write.proto.compact_pb2 import (
    ExemplarSample,
    HistogramSample,
    MetricMetadata,
    Request,
)
from exporters.remote_write.series import (
    METRIC_TYPES,
    Exemplar,
    Labels,
    Metadata,
    NativeHistogram,
    SampleBatch,
)

PROTOCOL = "compact"
VERSION = "1"
CONTENT_TYPE = "application/x-protobuf;proto=headwater.compact.v1.Request"
SESSION_HEADER = "X-Headwater-Session"
EPOCH_HEADER = "X-Headwater-Epoch"
SEQUENCE_HEADER = "X-Headwater-Sequence"
VERSION_HEADER = "X-Headwater-Compact-Version"

SESSION_LOST_STATUS = 409
"""What a gateway answers when it does not have the session a request names (restart, eviction, expiry)."""
SESSION_LOST_PREFIX = "compact session lost"
"""How the body of such an answer starts, so a sender tells it from any other 409 a proxy might send."""

SYMBOL_OVERHEAD = 64
"""Bytes a symbol costs beyond its UTF-8 length: the str object's header and its table and dict slots."""
SERIES_OVERHEAD = 192
"""Bytes a series costs beyond its labels: the dict entry, the kept label tuple, three state slots whose
ints are objects of their own."""
PAIR_OVERHEAD = 24
"""Bytes each label pair of a series costs: two symbol refs and a slot of the label tuple."""

MAX_TIMESTAMP = 1 << 60
"""Timestamps (and start timestamps) must lie within +/- this so deltas of deltas fit a sint64."""

TYPE_INDEX = {name: index for index, name in enumerate(METRIC_TYPES)}
_VALUES_TAG = b"\x3a"  # Request.values: field 7, wire type 2 (packed)
_TIMESTAMPS_TAG = b"\x32"  # Request.timestamps: field 6, wire type 2 (packed)


class SessionLost(DecodeError):
    """The receiver has no usable state for this session: answered 409 so the sender starts a new epoch."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{SESSION_LOST_PREFIX}: {message}")


def is_session_lost(status: int, body: bytes) -> bool:
    """Whether an answer means "start a new epoch and resend" rather than a failure to retry or drop."""
    return status == SESSION_LOST_STATUS and body.lstrip().startswith(SESSION_LOST_PREFIX.encode())


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def float_bits(values: Sequence[float]) -> list[int]:
    """IEEE-754 bits of each value, NaN payloads included (array copies bits, it does not convert)."""
    return array("Q", array("d", values).tobytes()).tolist()


def bits_float(bits: int) -> float:
    return array("d", array("Q", (bits,)).tobytes())[0]


def is_uniform(counts: Sequence[int]) -> bool:
    """Every series has the same number of samples: then per-series work is done with strided slices."""
    return bool(counts) and counts.count(counts[0]) == len(counts)


def starts_of(counts: Sequence[int]) -> list[int]:
    return list(accumulate(counts[:-1], initial=0))


def shifted(column: list[int], counts: Sequence[int], bases: Sequence[int]) -> list[int]:
    """For each element, the previous element of the same series; for a series' first, that series' base."""
    if not column:
        return []
    previous = [0]
    previous += column[:-1]
    if is_uniform(counts):
        previous[:: counts[0]] = bases
    else:
        for start, base in zip(starts_of(counts), bases):
            previous[start] = base
    return previous


_INVERSE: dict[Callable[[Any, Any], Any], Callable[[Any, Any], Any]] = {
    operator.add: operator.sub,
    operator.xor: operator.xor,
}


def running(column: Sequence[int], counts: Sequence[int], bases: Sequence[int], op: Callable[[Any, Any], Any]) -> list:
    """The inverse of `shifted` + `op`: within each series, fold `op` over the column starting from its base.

    Every path runs in C (a gateway decodes every sample through here): uniform counts fold strided columns
    position by position; otherwise, for `op` add or xor, one fold over the whole column is corrected per
    series by what the fold had reached before the series started (the series' base `op`-less that), spread
    to the series' samples with `repeat`. Any other `op` folds series by series."""
    if not column:
        return []
    if is_uniform(counts):
        every = counts[0]
        if every == 1:
            return list(map(op, bases, column))
        out: list[int] = [0] * len(column)
        out[::every] = map(op, bases, column[::every])
        for k in range(1, every):
            out[k::every] = map(op, out[k - 1 :: every], column[k::every])
        return out
    inverse = _INVERSE.get(op)
    if inverse is None:
        out = []
        start = 0
        for count, base in zip(counts, bases):
            end = start + count
            folded = list(accumulate(column[start:end], op, initial=base))
            out += folded[1:]
            start = end
        return out
    folded = list(accumulate(column, op, initial=0))  # folded[i]: the fold of everything before element i
    offsets = list(map(inverse, bases, map(folded.__getitem__, starts_of(counts))))
    del folded[0]
    return list(map(op, folded, chain.from_iterable(map(repeat, offsets, counts))))


def _deltas_of_deltas(stamps: list[int], counts: Sequence[int], bases: Sequence[int]) -> list[int]:
    """Each timestamp's delta of delta within its series (the first one's delta from the series' base, the
    second one's delta from the first): what Request.timestamps holds.

    When every series has the same number of samples (a node's ticks: one, or a flush's few), the k-th samples
    of all series are strided slices, so both differences are one map per position rather than two shifted
    copies of the whole column and two maps over it: ~70 -> ~30 ns a sample at two samples per series."""
    if is_uniform(counts):
        every = counts[0]
        if every == 1:
            return list(map(operator.sub, stamps, bases))
        deltas: list[int] = [0] * len(stamps)
        deltas[::every] = map(operator.sub, stamps[::every], bases)
        for k in range(1, every):
            deltas[k::every] = map(operator.sub, stamps[k::every], stamps[k - 1 :: every])
        out = deltas[:]
        for k in range(1, every):
            out[k::every] = map(operator.sub, deltas[k::every], deltas[k - 1 :: every])
        return out
    deltas = list(map(operator.sub, stamps, shifted(stamps, counts, bases)))
    return list(map(operator.sub, deltas, shifted(deltas, counts, [0] * len(counts))))


def _period(stamps: Sequence[int]) -> int:
    """p > 1 when the column is p times repeating in time order, t0 <= t1 <= ... t(p-1) (the k-th sample of
    every series at one time, as a batcher interleaves a flush's ticks); 0 otherwise."""
    n = len(stamps)
    try:
        every = stamps.index(stamps[0], 1)
    except ValueError:
        return 0
    if every < 2 or n % every:
        return 0
    head = stamps[:every]
    runs = n // every
    if any(map(operator.gt, head, head[1:])) or not all(
            stamps[k::every].count(head[k]) == runs for k in range(every)):
        return 0
    return every


def last_of_each(column: Sequence[int], counts: Sequence[int]) -> list[int]:
    """Each series' last element: what becomes its acknowledged state."""
    if is_uniform(counts):
        return list(column[counts[0] - 1 :: counts[0]])
    return list(map(column.__getitem__, map(operator.sub, accumulate(counts), repeat(1))))


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equal-length strings, as one big-integer operation rather than per word."""
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


class _Session:
    """One epoch's acknowledged state on the sending side."""

    __slots__ = ("by_id", "bytes", "held", "last_bits", "last_start", "last_ts", "metadata", "recent", "sequence",
                 "series", "started", "symbols")

    def __init__(self, started: float) -> None:
        self.symbols: dict[str, int] = {"": 0}
        self.series: dict[Labels, int] = {}
        self.last_ts: list[int] = []
        # Bits stay 64-bit words: a request's values are XOR'd with them as bytes, and a commit copies a
        # request's words in without making an int object per series.
        self.last_bits = array("Q")
        self.last_start: list[int] = []
        self.bytes = 0
        self.started = started
        self.sequence = 1  # of the next request
        # A cache of `series` by the label tuple's identity: hashing a ten-pair tuple costs ~0.8 us, a lookup
        # by id ~0.05. Translation hands the same tuple object for a series every time (series_cache.py), and
        # `held` keeps each keyed object alive so that its id cannot be reused by another while cached.
        self.by_id: dict[int, int] = {}
        self.held: dict[int, Labels] = {}
        # The last few committed requests' label columns, with their refs and grouping, newest first: a flush
        # cut into several requests repeats the same few columns every flush.
        self.recent: list[tuple[list[Labels], list[int], _Grouping | None]] = []
        self.metadata: dict[str, Metadata] = {}  # of the last committed request that had any

    def refs_of(self, labels: Sequence[Labels]) -> list[int | None]:
        """Each label set's acknowledged series ref, None for a series this session does not have yet."""
        refs: list[int | None] = list(map(self.by_id.get, map(id, labels)))
        if None not in refs:
            return refs
        if len(self.by_id) > 2 * len(self.series) + 1024:  # label tuples that are not reused: stop holding them
            self.by_id.clear()
            self.held.clear()
        for position in compress(range(len(refs)), map(operator.is_, refs, repeat(None))):
            series = labels[position]
            ref = refs[position] = self.series.get(series)
            if ref is not None:
                self.by_id[id(series)] = ref
                self.held[id(series)] = series
        return refs


class _Request:
    """What one encode adds, kept apart from the acknowledged state until commit."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.symbols: dict[str, int] = {}
        self.series: dict[Labels, int] = {}
        self.label_counts: list[int] = []
        self.label_refs: list[int] = []
        self.bytes = 0

    def symbol(self, text: str) -> int:
        ref = self.session.symbols.get(text)
        if ref is None:
            ref = self.symbols.get(text)
            if ref is None:
                ref = self.symbols[text] = len(self.session.symbols) + len(self.symbols)
                self.bytes += len(text.encode()) + SYMBOL_OVERHEAD
        return ref

    def series_ref(self, labels: Labels) -> int:
        ref = self.session.series.get(labels)
        if ref is None:
            ref = self.series.get(labels)
            if ref is None:
                ref = self.define(labels)
        return ref

    def define(self, labels: Labels) -> int:
        previous = ""
        for position, (name, value) in enumerate(labels):
            if not name or (position and name <= previous):
                raise ValueError(f"label set {labels!r} is not sorted by distinct, non-empty names")
            previous = name
            self.label_refs.append(self.symbol(name))
            self.label_refs.append(self.symbol(value))
        self.label_counts.append(len(labels))
        ref = self.series[labels] = len(self.session.series) + len(self.series)
        self.bytes += SERIES_OVERHEAD + PAIR_OVERHEAD * len(labels)
        return ref


class CompactEncoder:
    """The sending side of one compact session (one per endpoint connection; one request in flight)."""

    protocol = PROTOCOL

    def __init__(
        self,
        *,
        codec: str = "zstd",
        level: int = 3,
        sender_id: str | None = None,
        max_dictionary_bytes: int = 32 << 20,
        max_session_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if codec not in encoding.ALLOWED_CODECS[PROTOCOL]:
            raise ValueError(f"compact bodies are compressed with {encoding.ALLOWED_CODECS[PROTOCOL]}, not {codec!r}")
        self.codec = codec
        self.level = level
        self.sender_id = sender_id or secrets.token_hex(8)
        self.max_dictionary_bytes = max_dictionary_bytes
        self.max_session_age = max_session_age
        self._clock = clock
        self._compressor = zstandard.ZstdCompressor(level=level) if codec == "zstd" else None
        self.epoch = 0
        self.rotations = 0
        """Epochs started because the session grew too old or its dictionary too large."""
        self._session = _Session(clock())
        self.reset()

    @property
    def dictionary_bytes(self) -> int:
        """Estimated bytes of the acknowledged dictionary (symbols and series with their state)."""
        return self._session.bytes

    @property
    def sequence(self) -> int:
        """The sequence number the next request carries."""
        return self._session.sequence

    def reset(self) -> None:
        """A new epoch with empty state: the receiver lost its side (409), or the session is due a fresh start."""
        self.epoch += 1
        self._session = _Session(self._clock())

    def headers(self) -> dict[str, str]:
        """The headers of the next request (encode returns them too)."""
        return {
            "Content-Type": CONTENT_TYPE,
            "Content-Encoding": self.codec,
            VERSION_HEADER: VERSION,
            SESSION_HEADER: self.sender_id,
            EPOCH_HEADER: str(self.epoch),
            SEQUENCE_HEADER: str(self._session.sequence),
        }

    def _rotate_if_due(self) -> None:
        session = self._session
        too_old = self._clock() - session.started > self.max_session_age
        if too_old or session.bytes > self.max_dictionary_bytes:
            self.rotations += 1
            self.reset()

    def encode(self, batch: SampleBatch) -> Encoded:
        """The compressed request for `batch` against the acknowledged state; `commit` once it is acknowledged."""
        self._rotate_if_due()
        session = self._session
        request = _Request(session)
        message = Request()
        samples = _Samples(batch, request)
        histograms = [_histogram_message(request, labels, h) for labels, h in _in_time_order(batch)]
        exemplars = [
            _exemplar_message(request.series_ref(labels), e)
            for labels, e in zip(batch.exemplar_labels, batch.exemplars)
        ]
        unchanged = bool(batch.metadata) and batch.metadata == session.metadata
        metadata = b"" if unchanged else _metadata(request, batch.metadata)
        if unchanged:
            message.metadata_unchanged = True
        if request.symbols:
            message.symbols.extend(request.symbols)
        if request.label_counts:
            message.series_label_counts.extend(request.label_counts)
            message.series_label_refs.extend(request.label_refs)
        columns = samples.write(message)
        if histograms:
            message.histograms.extend(histograms)
        if exemplars:
            message.exemplars.extend(exemplars)
        body = message.SerializeToString()
        if columns or metadata:
            body = b"".join((body, *columns, metadata))
        if self._compressor is not None:
            compressed = self._compressor.compress(body)
        else:
            compressed = encoding.compress(self.codec, body)
        headers = self.headers()
        epoch = self.epoch
        sequence = session.sequence

        def commit() -> None:
            # A commit for a request of an earlier epoch, or one already superseded, must not touch the state.
            if self._session is not session or session.sequence != sequence or self.epoch != epoch:
                return
            session.symbols.update(request.symbols)
            session.series.update(request.series)
            added = len(request.series)
            session.last_ts += [0] * added
            session.last_bits += array("Q", bytes(8 * added))
            session.last_start += [0] * added
            samples.commit(session)
            if samples.sample_refs:
                session.recent.insert(0, (batch.labels, samples.sample_refs, samples.grouping))  # read-only
                del session.recent[RECENT_REQUESTS:]
            if metadata:
                session.metadata = dict(batch.metadata)
            session.bytes += request.bytes
            session.sequence += 1

        return Encoded(
            body=compressed,
            headers=headers,
            samples=len(batch.values),
            histograms=len(batch.histograms),
            exemplars=len(batch.exemplars),
            commit=commit,
        )


RECENT_REQUESTS = 4
"""Committed requests whose label columns, refs and grouping a session keeps for reuse (a few flushes' cuts)."""


class _Samples:
    """A batch's float samples as the request's columns, and what they leave as each series' last state.

    Series are defined in sorted label order, so a request's columns run metric by metric (same metric of
    every host side by side, which zstd compresses ~10 % better than host by host), while batches arrive
    host by host: grouping needs a permutation. Batches repeat an earlier one's series in the same order (the
    previous request's, or with a flush cut into several requests, the same cut of the previous flush), so
    the grouping of one of the last `RECENT_REQUESTS` acknowledged requests with the same label column is
    reused after a check that it still puts each series' samples in time order; otherwise one sort of small
    ints (series ref, arrival) finds it again.
    """

    def __init__(self, batch: SampleBatch, request: _Request) -> None:
        labels, values, stamps = batch.labels, batch.values, batch.timestamps
        n = len(values)
        if not (len(labels) == len(stamps) == n) or (batch.start_timestamps and len(batch.start_timestamps) != n):
            raise ValueError("a batch's sample columns have different lengths")
        session = request.session
        self.session = session
        self.refs: list[int] = []
        self.counts: list[int] = []
        self.stamps: list[int] = []
        self.bits = array("Q")
        self.starts: list[int] | None = None
        self.sample_refs: list[int] = []
        self.grouping: _Grouping | None = None
        self.one_time = False
        self.period = 0
        if not n:
            return
        # A node's tick: every sample stamped with its scrape's time. Then no column of timestamps needs
        # regrouping, checking for order or differencing sample by sample (one count instead of ~6 passes).
        first = stamps[0]
        self.one_time = stamps.count(first) == n
        # A flush of several ticks, interleaved by the batcher: each series' run holds the same few times.
        self.period = 0 if self.one_time or not batch.grouped else _period(stamps)
        times = (first,) if self.one_time else stamps[:self.period] if self.period else stamps
        if min(times) < -MAX_TIMESTAMP or max(times) > MAX_TIMESTAMP:
            raise ValueError(f"a timestamp is beyond +/- {MAX_TIMESTAMP} ms")
        starts = batch.start_timestamps if batch.start_timestamps and any(batch.start_timestamps) else None
        if starts is not None and (min(starts) < -MAX_TIMESTAMP or max(starts) > MAX_TIMESTAMP):
            raise ValueError(f"a start timestamp is beyond +/- {MAX_TIMESTAMP} ms")
        grouping = None
        # A list compares its items by identity first: ~10 ns each, against ~0.3 us to hash a label set.
        seen = next((entry for entry in session.recent if len(entry[0]) == n and entry[0] == labels), None)
        if seen is not None:
            refs = list(seen[1])
            grouping = seen[2]
        else:
            found = session.refs_of(labels)
            if None in found:
                for series in sorted(dict.fromkeys(compress(labels, map(operator.is_, found, repeat(None))))):
                    request.series_ref(series)
                found = [ref if ref is not None else request.series[series] for ref, series in zip(found, labels)]
            refs = found  # type: ignore[assignment]  # every None replaced
        self.sample_refs = refs
        if grouping is not None and self.one_time:
            grouped_stamps = [first] * n  # in any order, and in time order within every series
        elif grouping is not None and self._periodic(grouping):
            grouped_stamps = list(stamps)  # whole runs move: the column stays as it is
        elif grouping is not None:
            grouped_stamps = grouping.apply(stamps)
            # A grouped batch's series are each in time order already (`SampleBatch.grouped`), and a grouping
            # that keeps arrival order keeps it: only other batches are checked (~40 ns a sample).
            if grouping.same is not None and not (batch.grouped and grouping.arrival) and any(
                map(operator.and_, grouping.same, map(operator.lt, grouped_stamps[1:], grouped_stamps))
            ):
                grouping = None
        if grouping is None:
            grouping = _Grouping.of(refs, stamps)
            grouped_stamps = [first] * n if self.one_time else list(stamps) if self._periodic(grouping) else \
                grouping.apply(stamps)
        self.grouping = grouping
        self.refs, self.counts, self.stamps = grouping.refs, grouping.counts, grouped_stamps
        self.bits.frombytes(array("d", values if grouping.order is None else grouping.apply(values)).tobytes())
        self.starts = grouping.apply(starts) if starts is not None else None

    def _periodic(self, grouping: _Grouping) -> bool:
        """Whether the batch's runs are whole series of `period` samples each (so regrouping moves whole runs
        and leaves the timestamps column as it is); when not, `period` is dropped."""
        if self.period and not (is_uniform(grouping.counts) and grouping.counts[0] == self.period):
            self.period = 0
        return bool(self.period)

    def _bases(self, state: list[int]) -> Sequence[int]:
        known = len(state)
        if self.grouping is not None and self.grouping.dense and len(self.refs) == known:
            return state  # every series of the session, in ref order
        if self.refs[-1] >= known:  # new series start from 0
            return [state[ref] if ref < known else 0 for ref in self.refs]
        return list(map(state.__getitem__, self.refs))

    def write(self, message: Request) -> list[bytes]:
        """Fill the message's sample columns, or return them encoded (tag, length, packed items), to be
        appended to the serialized message: protobuf reads fields in any order.

        Why raw: through upb's `extend`, the series refs, counts and timestamps columns cost ~20 ns an item,
        ~10 % of a node agent's CPU at one sample per series (`bench/remote_write.py`, compact at a 1 s flush,
        py-spy). The refs and counts are the grouping's, which the next requests reuse (`RECENT_REQUESTS`), so
        they are encoded once per grouping; a tick's timestamps usually have one delta of delta for all."""
        if not self.refs:
            return []
        counts, session = self.counts, self.session
        assert self.grouping is not None
        columns = [self.grouping.encoded_columns()]
        bases = self._bases(session.last_ts)
        if self.one_time and len(bases) == len(self.stamps) and bases.count(bases[0]) == len(bases):
            deltas = [self.stamps[0] - bases[0]]  # a tick after a tick: one delta from every series' last
            deltas *= len(bases)
        elif self.period:  # every run at the same times: past its second sample, one delta of delta a position
            every, stamps, runs = self.period, self.stamps, len(bases)
            deltas = [0] * len(stamps)
            deltas[::every] = map(operator.sub, repeat(stamps[0], runs), bases)
            deltas[1::every] = map(operator.add, repeat(stamps[1] - 2 * stamps[0], runs), bases)  # less t0 - base
            for k in range(2, every):
                deltas[k::every] = [stamps[k] - 2 * stamps[k - 1] + stamps[k - 2]] * runs
        else:
            deltas = _deltas_of_deltas(self.stamps, counts, bases)
        first = deltas[0]
        if deltas.count(first) == len(deltas):
            one = varint((first << 1) ^ (first >> 63))  # sint64: zigzag
            columns += (_TIMESTAMPS_TAG, varint(len(one) * len(deltas)), one * len(deltas))
        else:
            message.timestamps.extend(deltas)
        if self.starts is not None:
            starts = self.starts
            message.start_timestamps.extend(
                map(operator.sub, starts, shifted(starts, counts, self._bases(session.last_start)))
            )
        bits = self.bits
        bases = self._bases(session.last_bits)
        if type(bases) is not array:
            bases = array("Q", bases)
        if len(bases) == len(bits):  # one sample per series: each is XOR'd with its series' last value
            values = xor_bytes(bits.tobytes(), bases.tobytes())
        else:
            previous = array("Q", (0,))
            previous += bits[:-1]
            if is_uniform(counts):
                previous[:: counts[0]] = bases
            else:
                for start, base in zip(starts_of(counts), bases):
                    previous[start] = base
            values = xor_bytes(bits.tobytes(), previous.tobytes())
        columns += (_VALUES_TAG, varint(len(values)), values)
        return columns

    def commit(self, session: _Session) -> None:
        if not self.refs:
            return
        refs = self.refs
        first, past = refs[0], refs[-1] + 1
        contiguous = past - first == len(refs)  # refs increase: a run of consecutive series, or all of them
        for state, column in (
            (session.last_ts, self.stamps),
            (session.last_bits, self.bits),
            (session.last_start, self.starts),
        ):
            if column is None:
                continue
            if column is self.stamps and self.one_time:
                lasts = [column[0]] * len(refs)
            elif type(state) is array:
                every = self.counts[0]
                lasts = column[every - 1 :: every] if is_uniform(self.counts) else array(
                    "Q", last_of_each(column, self.counts))
            else:
                lasts = last_of_each(column, self.counts)
            if contiguous:
                state[first:past] = lasts
            else:
                deque(map(state.__setitem__, refs, lasts), maxlen=0)  # the loop, run in C


class _Grouping:
    """How a batch's samples become columns grouped per series: the permutation (None: as they are), each
    group's series ref and sample count, and for each adjacent pair whether it is in the same series.
    `arrival`: a series' samples keep the order they came in (the permutation was not sorted by time)."""

    __slots__ = ("arrival", "counts", "dense", "encoded", "order", "ref_deltas", "refs", "same")

    def __init__(self, order: list[int] | None, refs: list[int], counts: list[int], same: list[bool] | None,
                 arrival: bool = True):
        self.order, self.refs, self.counts = order, refs, counts
        self.same = same if same is not None and any(same) else None  # None: one sample per series
        self.ref_deltas = [refs[0], *map(operator.sub, refs[1:], refs)]
        self.dense = refs[-1] == len(refs) - 1  # refs increase, so they are 0, 1, 2 ...
        self.arrival = arrival
        self.encoded: bytes | None = None

    def encoded_columns(self) -> bytes:
        """Request.sample_series_ref_deltas and sample_counts as serialized, made once: a grouping is reused
        by the requests that repeat its label column."""
        if self.encoded is None:
            scratch = Request()
            scratch.sample_series_ref_deltas.extend(self.ref_deltas)
            scratch.sample_counts.extend(self.counts)
            self.encoded = scratch.SerializeToString()
        return self.encoded

    def apply(self, column: Sequence[Any]) -> list[Any]:
        return list(column) if self.order is None else list(map(column.__getitem__, self.order))

    @classmethod
    def of(cls, refs: list[int], stamps: Sequence[int]) -> _Grouping:
        """Group by series keeping arrival order (one sort of small ints); if arrival order is not time order
        within a series, sort by (series, time) instead, stably."""
        n = len(refs)
        if all(map(operator.lt, refs, refs[1:])):
            return cls(None, refs, [1] * n, None)
        keys = list(map(operator.add, map(operator.mul, refs, repeat(n)), range(n)))
        keys.sort()
        order = list(map(operator.mod, keys, repeat(n)))
        grouped = list(map(operator.floordiv, keys, repeat(n)))
        grouped_stamps = list(map(stamps.__getitem__, order))
        same = list(map(operator.eq, grouped[1:], grouped))
        arrival = True
        if any(map(operator.and_, same, map(operator.lt, grouped_stamps[1:], grouped_stamps))):
            ordered = sorted(zip(refs, stamps, range(n)))
            grouped, _, order = map(list, zip(*ordered))
            same = list(map(operator.eq, grouped[1:], grouped))
            arrival = False
        firsts = [0, *compress(range(1, n), map(operator.not_, same))]
        counts = list(map(operator.sub, firsts[1:] + [n], firsts))
        return cls(order, list(map(grouped.__getitem__, firsts)), counts, same, arrival)


def _metadata(request: _Request, metadata: dict[str, Metadata]) -> bytes:
    """The request's metadata entries, encoded (appended to the body like the values column)."""
    if not metadata:
        return b""
    entries = [
        MetricMetadata(
            name_ref=request.symbol(name),
            type=TYPE_INDEX.get(md.type, 0),  # translation only makes known types; a stray one is "unknown"
            help_ref=request.symbol(md.help),
            unit_ref=request.symbol(md.unit),
        )
        for name, md in metadata.items()
    ]
    return Request(metadata=entries).SerializeToString()


def _in_time_order(batch: SampleBatch) -> list[tuple[Labels, NativeHistogram]]:
    pairs = list(zip(batch.histogram_labels, batch.histograms))
    if len(pairs) > 1:
        first_seen = {labels: i for i, labels in reversed(list(enumerate(batch.histogram_labels)))}
        pairs.sort(key=lambda pair: (first_seen[pair[0]], pair[1].timestamp))
    return pairs


def _histogram_message(request: _Request, labels: Labels, h: NativeHistogram) -> HistogramSample:
    message = HistogramSample(
        series_ref=request.series_ref(labels),
        timestamp=h.timestamp,
        sum_bits=float_bits((h.sum,))[0],
        schema=h.schema,
        zero_threshold_bits=float_bits((h.zero_threshold,))[0],
        zero_count=h.zero_count,
        negative_span_offsets=[offset for offset, _ in h.negative_spans],
        negative_span_lengths=[length for _, length in h.negative_spans],
        negative_deltas=h.negative_deltas,
        positive_span_offsets=[offset for offset, _ in h.positive_spans],
        positive_span_lengths=[length for _, length in h.positive_spans],
        positive_deltas=h.positive_deltas,
        start_timestamp=h.start_timestamp,
    )
    if isinstance(h.count, float):
        message.count_float_bits = float_bits((h.count,))[0]
    else:
        message.count_int = h.count
    return message


def _exemplar_message(series_ref: int, e: Exemplar) -> ExemplarSample:
    return ExemplarSample(
        series_ref=series_ref,
        labels=[text for pair in e.labels for text in pair],
        value_bits=float_bits((e.value,))[0],
        timestamp=e.timestamp,
    )


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, whatever mapping the HTTP server hands over."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value
