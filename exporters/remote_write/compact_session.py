"""The receiving side of the compact format: a gateway's store of sender sessions, and decoding against it.

Why decoding and committing are apart: a gateway may refuse a decoded batch (429, a full queue), and then the
sender resends the same sequence number against the same state, so `decode` reads the session and changes
nothing; the gateway calls the returned `commit` once it has accepted the batch.

Why one step of undo: if the answer to request k is lost after the gateway committed it, the sender still
holds the state before k and sends k again (the same batch or another one) built against that state. The
session therefore keeps how to go back from k to k-1 (the symbol and series counts before k and the last
values k overwrote), decodes a resend of k against that earlier state, and on commit first undoes k, then
applies the resend. Returning the stored result of k instead would be wrong when the resend carries a
different batch. Anything else out of order is `SessionLost` (HTTP 409): the sender starts a new epoch.

Memory is bounded in bytes (estimated from strings plus a per-entry overhead): a sender's session past
`max_bytes_per_sender`, or the least recently committed sessions while the total is past `max_total_bytes`,
are evicted whole and counted in `evictions`; their senders get `SessionLost` next time and start again.
Sessions idle past `idle_timeout` are dropped the same way (counted in `expirations`).

Speed: a gateway decodes every sample of every node, and the project's budget leaves it ~0.1-0.15 us a sample
(bench/gateway_bench.py), so the steady state has no per-series Python loop. A sender's requests name every
series it has in ref order, so sample refs are a `range` and per-series state is read, saved for undo and
written by slice assignment; value bits stay machine words (`array`), read from the body's packed field and
XOR'd as one big integer (the last request's result kept as that integer per range of refs, so the state's
words are not converted again); and where the columns repeat one pattern (uniform counts, consecutive refs, the
same delta-of-deltas from the same last timestamp) their raw bytes are compared with it and the lists built
by repetition (compact_columns.py). Anything else takes general paths that still run in C (map,
accumulate, chained repeats).
"""

from __future__ import annotations

import operator
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import accumulate, compress, islice
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from exporters.remote_write.compact import (
    CONTENT_TYPE,
    EPOCH_HEADER,
    SEQUENCE_HEADER,
    SERIES_OVERHEAD,
    SESSION_HEADER,
    SYMBOL_OVERHEAD,
    VERSION,
    VERSION_HEADER,
    SessionLost,
    bits_float,
    header,
    is_uniform,
    last_of_each,
    running,
)
from exporters.remote_write.compact_columns import (
    Refs,
    check_int64,
    gather,
    last_words,
    raw_columns,
    running_xor_last,
    sample_counts,
    sample_refs,
    sample_timestamps_repeated,
    scatter,
    spread,
    value_words,
)
from exporters.remote_write.encoding import DecodeError
from exporters.remote_write.proto.compact_pb2 import Request
from exporters.remote_write.series import (
    METRIC_TYPES,
    Exemplar,
    Labels,
    Metadata,
    NativeHistogram,
    SampleBatch,
)

RECEIVER_PAIR_OVERHEAD = 72
RECEIVER_INDEX_OVERHEAD = 104
"""A series' entry in its session's label-set index (a dict slot, the hash table's share)."""
"""Bytes each label pair of a decoded series costs: its (name, value) tuple and a slot in the label set."""
UNDO_ENTRY_BYTES = 120
"""Bytes each series' saved last values cost in the one step of undo."""
SAMPLE_SIZE = 20
"""What a float sample adds to a remote write 1.0 body beyond its labels: `SampleBatch.sizes` estimates."""
MAX_SENDER_ID = 256
MAX_BITS_INTS = 64
"""Ranges a session keeps value-bit ints for (`_Session.last_bits_ints`): a node's flush is a few requests."""


class _Undo:
    """How to go back from the last committed request to the state before it: the table sizes before it, and
    the last values it overwrote, as columns over the refs it touched (`refs`: a range when they were
    contiguous, so restoring them is three slice assignments)."""

    __slots__ = ("bits", "bytes", "metadata", "refs", "sequence", "series", "stamps", "starts", "symbols")

    def __init__(self, sequence: int, symbols: int, series: int, refs: Refs, stamps: list[int], bits: array,
                 starts: list[int] | None, size: int, metadata: dict[str, Metadata]):
        self.sequence = sequence
        self.symbols = symbols
        self.series = series
        self.refs = refs
        self.stamps = stamps
        self.bits = bits
        self.starts = starts  # None: the request had no start timestamps, so it left them as they were
        self.bytes = size
        self.metadata = metadata

    def old(self, which: int) -> list[int] | array | None:
        return (self.stamps, self.bits, self.starts)[which]


class _Session:
    """One sender's epoch: the state its acknowledged requests built."""

    __slots__ = (
        "bytes",
        "epoch",
        "last_bits",
        "last_bits_ints",
        "last_start",
        "last_ts",
        "metadata",
        "refs_by_labels",
        "sequence",
        "series",
        "sizes",
        "symbols",
        "undo",
        "used",
        "version",
    )

    def __init__(self, epoch: int, now: float) -> None:
        self.epoch = epoch
        self.sequence = 0  # last committed
        self.symbols: list[str] = [""]
        self.series: list[Labels] = []
        # Each label set's ref: a label set defined twice is refused, so a decoded batch has one run per series
        # (what `SampleBatch.grouped` promises the batcher and encoders).
        self.refs_by_labels: dict[Labels, int] = {}
        self.sizes: list[int] = []
        self.last_ts: list[int] = []
        self.last_bits = array("Q")  # bits stay words: a request's values are XOR'd with them as one big int
        # The same words as big ints, per range of refs the last requests covered whole: the next request over a
        # range XORs with its int instead of converting the words again. Ranges are disjoint and their ints
        # equal to the words (any other write to last_bits clears them), at most MAX_BITS_INTS of them: 8 bytes a
        # series, within SERIES_OVERHEAD's int object for the value state (an array keeps it in 8 bytes).
        self.last_bits_ints: dict[tuple[int, int], int] = {}
        self.last_start: list[int] = []
        self.bytes = 0
        self.used = now
        self.undo: _Undo | None = None
        self.metadata: dict[str, Metadata] = {}  # of the last committed request that had any
        self.version = 0  # bumped by every commit, so a stale commit can tell


class _Base:
    """The state a request is decoded against: a session as it is, as it was before its last request, or empty."""

    def __init__(self, session: _Session | None, before_last: bool) -> None:
        self.session = session
        self.undo: _Undo | None = None
        self.before_last = before_last
        self.metadata: dict[str, Metadata] = {}
        if session is None:
            self.symbols, self.series = 1, 0
        elif before_last:
            assert session.undo is not None
            self.symbols, self.series = session.undo.symbols, session.undo.series
            self.undo = session.undo
            self.metadata = session.undo.metadata
        else:
            self.symbols, self.series = len(session.symbols), len(session.series)
            self.metadata = session.metadata

    def last_bits_int(self, refs: Refs) -> int | None:
        """The acknowledged value bits of `refs` as one int, when the session kept them (the refs are a range the
        last request over them covered whole, and this is the session as it is)."""
        if self.session is None or self.before_last or not isinstance(refs, range) or refs.step != 1:
            return None
        return self.session.last_bits_ints.get((refs.start, refs.stop))

    def last(self, refs: Refs, which: int) -> Any:
        """Each series' acknowledged last timestamp (0), value bits (1, an array of words) or start (2); 0 for a
        series new here. Contiguous refs (the steady state: every series of a sender, in ref order) are one
        slice of the state."""
        if self.session is None:
            return array("Q", bytes(8 * len(refs))) if which == 1 else [0] * len(refs)
        state = (self.session.last_ts, self.session.last_bits, self.session.last_start)[which]
        known, undo = self.series, self.undo
        old = undo.old(which) if undo is not None else None
        if old is None:
            inside = bisect_left(refs, known)
            out = gather(state, refs[:inside])
            if inside < len(refs):
                out += array("Q", bytes(8 * (len(refs) - inside))) if which == 1 else [0] * (len(refs) - inside)
            return out
        assert undo is not None
        overrides = dict(zip(undo.refs, old))  # a resend after a lost answer: rare
        values = [(overrides[ref] if ref in overrides else state[ref]) if ref < known else 0 for ref in refs]
        return array("Q", values) if which == 1 else values


class CompactSessions:
    """A gateway's compact sessions, one per sender, bounded in bytes; decodes requests against them."""

    protocol = "compact"

    def __init__(
        self,
        *,
        max_bytes_per_sender: int = 64 << 20,
        max_total_bytes: int = 256 << 20,
        idle_timeout: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes_per_sender = max_bytes_per_sender
        self.max_total_bytes = max_total_bytes
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently committed first
        self.bytes_used = 0
        self.evictions = 0
        """Sessions dropped whole to keep within max_bytes_per_sender or max_total_bytes."""
        self.expirations = 0
        """Sessions dropped after idle_timeout without a commit."""

    def __len__(self) -> int:
        return len(self._sessions)

    def _drop(self, sender: str) -> None:
        session = self._sessions.pop(sender)
        self.bytes_used -= session.bytes

    def _expire_idle(self) -> None:
        deadline = self._clock() - self.idle_timeout
        while self._sessions:
            sender, session = next(iter(self._sessions.items()))
            if session.used >= deadline:
                break
            self._drop(sender)
            self.expirations += 1

    def decode(self, body: bytes, headers: Mapping[str, str]) -> tuple[SampleBatch, Callable[[], None]]:
        """The batch in an (already decompressed) body, and the commit to call once the gateway accepted it.

        Raises `SessionLost` (answer 409 with its message) when the request does not follow the session's
        state, `DecodeError` (answer 400) when body or headers are malformed. Changes no state itself."""
        sender, epoch, sequence = _session_headers(headers)
        self._expire_idle()
        session = self._sessions.get(sender)
        where = f"sender {sender} epoch {epoch} sequence {sequence}"
        if session is None or epoch > session.epoch:
            if sequence != 1:
                raise SessionLost(f"{where}: no such session here; start a new epoch at sequence 1")
            base = _Base(None, False)
        elif epoch < session.epoch:
            raise SessionLost(f"{where}: epoch {session.epoch} has replaced it")
        elif sequence == session.sequence + 1:
            base = _Base(session, False)
        elif sequence == session.sequence and session.undo is not None and session.undo.sequence == sequence:
            base = _Base(session, True)  # a resend of the last committed request: its answer was lost
        else:
            raise SessionLost(f"{where}: expected sequence {session.sequence + 1}")
        try:
            message = Request.FromString(body)
        except ProtobufDecodeError as exc:
            raise DecodeError(f"compact: body is not a headwater.compact.v1.Request ({exc})") from exc
        decoded = _Decoded(message, body, base)
        version = session.version if session is not None else -1

        def commit() -> None:
            current = self._sessions.get(sender)
            if current is not session or (session is not None and session.version != version):
                return  # replaced, evicted or committed meanwhile: nothing consistent to apply to
            if base.session is None:
                if current is not None:
                    self._drop(sender)  # a newer epoch replaces the old one
                target = _Session(epoch, self._clock())
                self._sessions[sender] = target
            else:
                target = current
                if base.before_last:
                    self._undo(target)
            self._apply(target, decoded, sequence)
            self._sessions.move_to_end(sender)
            self._enforce_bounds(sender)

        return decoded.batch, commit

    def _undo(self, session: _Session) -> None:
        undo = session.undo
        assert undo is not None
        del session.symbols[undo.symbols :]
        for labels in session.series[undo.series :]:
            del session.refs_by_labels[labels]
        for column in (session.series, session.sizes, session.last_ts, session.last_bits, session.last_start):
            del column[undo.series :]
        session.last_bits_ints.clear()
        scatter(session.last_ts, undo.refs, undo.stamps)
        scatter(session.last_bits, undo.refs, undo.bits)
        if undo.starts is not None:
            scatter(session.last_start, undo.refs, undo.starts)
        self.bytes_used += undo.bytes - session.bytes
        session.bytes = undo.bytes
        session.metadata = undo.metadata
        session.sequence = undo.sequence - 1
        session.undo = None

    def _apply(self, session: _Session, decoded: _Decoded, sequence: int) -> None:
        known = len(session.series)
        refs = decoded.refs
        touched = refs[: bisect_left(refs, known)]  # the others are new here: undo drops them whole
        starts = decoded.starts
        size_before = session.bytes - (UNDO_ENTRY_BYTES * len(session.undo.refs) if session.undo else 0)
        session.undo = _Undo(
            sequence, len(session.symbols), known, touched, gather(session.last_ts, touched),
            gather(session.last_bits, touched), gather(session.last_start, touched) if starts is not None else None,
            size_before, session.metadata,
        )
        if decoded.carries_metadata:
            session.metadata = dict(decoded.batch.metadata)
        session.symbols += decoded.new_symbols
        session.refs_by_labels.update(zip(decoded.new_series, range(known, known + len(decoded.new_series))))
        session.series += decoded.new_series
        session.sizes += decoded.new_sizes
        added = len(decoded.new_series)
        session.last_ts += [0] * added
        session.last_bits += array("Q", bytes(8 * added))
        session.last_start += [0] * added
        if refs:
            counts, every = decoded.counts, decoded.every
            if every:  # uniform counts: each series' last sample by one strided slice
                last_stamps, last_bits = decoded.stamps[every - 1 :: every], decoded.bits[every - 1 :: every]
            else:
                last_stamps, last_bits = last_of_each(decoded.stamps, counts), last_words(decoded.bits, counts)
            scatter(session.last_ts, refs, last_stamps)
            scatter(session.last_bits, refs, last_bits)
            _keep_bits_int(session.last_bits_ints, refs, decoded.last_int)
            if starts is not None:
                scatter(session.last_start, refs, starts[every - 1 :: every] if every else last_of_each(starts, counts))
        grown = size_before + decoded.bytes + UNDO_ENTRY_BYTES * len(touched)
        self.bytes_used += grown - session.bytes
        session.bytes = grown
        session.sequence = sequence
        session.version += 1
        session.used = self._clock()

    def _enforce_bounds(self, sender: str) -> None:
        session = self._sessions[sender]
        if session.bytes > self.max_bytes_per_sender:
            self._drop(sender)
            self.evictions += 1
        while self.bytes_used > self.max_total_bytes and self._sessions:
            self._drop(next(iter(self._sessions)))
            self.evictions += 1


def _session_headers(headers: Mapping[str, str]) -> tuple[str, int, int]:
    version = header(headers, VERSION_HEADER)
    if version != VERSION:
        raise DecodeError(f"compact: {VERSION_HEADER} must be {VERSION}, not {version!r}")
    content_type = header(headers, "Content-Type")
    if content_type is not None and content_type.replace(" ", "").lower() != CONTENT_TYPE.lower():
        raise DecodeError(f"compact: Content-Type must be {CONTENT_TYPE}, not {content_type!r}")
    sender = header(headers, SESSION_HEADER)
    if not sender or len(sender) > MAX_SENDER_ID or not sender.isprintable():
        raise DecodeError(f"compact: {SESSION_HEADER} must name the sender (1-{MAX_SENDER_ID} printable characters)")
    numbers = []
    for name in (EPOCH_HEADER, SEQUENCE_HEADER):
        text = header(headers, name)
        if text is None or not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < 1:
            raise DecodeError(f"compact: {name} must be a positive decimal integer, not {text!r}")
        numbers.append(int(text))
    return sender, numbers[0], numbers[1]


class _Decoded:
    """One request decoded against a base state: the batch, and what committing it adds to the session."""

    def __init__(self, message: Request, body: bytes, base: _Base) -> None:
        session = base.session
        self.new_symbols = list(message.symbols)
        self.bytes = sum(len(text.encode()) + SYMBOL_OVERHEAD for text in self.new_symbols)
        symbols = session.symbols if session is not None else [""]
        if len(symbols) != base.symbols or self.new_symbols:
            symbols = symbols[: base.symbols] + self.new_symbols
        self._define_series(message, symbols, session.refs_by_labels if session is not None else {}, base.series)
        series = session.series if session is not None else []
        sizes = session.sizes if session is not None else []
        if len(series) != base.series or self.new_series:
            series = series[: base.series] + self.new_series
            sizes = sizes[: base.series] + self.new_sizes
        self.series = series
        batch = SampleBatch()
        self._samples(message, body, base, batch, sizes)
        self.carries_metadata = bool(message.metadata)
        if message.metadata_unchanged:
            if message.metadata or not base.metadata:
                raise DecodeError("compact: metadata_unchanged with metadata entries, or in a session without any")
            batch.metadata = dict(base.metadata)
        for item in message.metadata:
            if item.name_ref >= len(symbols) or item.help_ref >= len(symbols) or item.unit_ref >= len(symbols):
                raise DecodeError("compact: metadata refers to a symbol the session does not have")
            if not 0 <= item.type < len(METRIC_TYPES):
                raise DecodeError(f"compact: metadata has unknown metric type {item.type}")
            batch.metadata[symbols[item.name_ref]] = Metadata(
                METRIC_TYPES[item.type], symbols[item.help_ref], symbols[item.unit_ref]
            )
        for h in message.histograms:
            batch.histogram_labels.append(self._series(h.series_ref, "a histogram"))
            batch.histograms.append(_histogram(h))
            batch.histogram_sizes.append(sizes[h.series_ref] + 10 * (len(h.positive_deltas) + len(h.negative_deltas)))
        for e in message.exemplars:
            labels = list(e.labels)
            if len(labels) % 2:
                raise DecodeError("compact: an exemplar's labels are not name/value pairs")
            batch.exemplar_labels.append(self._series(e.series_ref, "an exemplar"))
            pairs = tuple(zip(labels[::2], labels[1::2]))
            batch.exemplars.append(Exemplar(pairs, bits_float(e.value_bits), e.timestamp))
            batch.exemplar_sizes.append(sum(map(len, labels)) + 20)
        self.batch = batch

    def _series(self, ref: int, what: str) -> Labels:
        if ref >= len(self.series):
            raise DecodeError(f"compact: {what} refers to series {ref}, the session has {len(self.series)}")
        return self.series[ref]

    def _define_series(self, message: Request, symbols: list[str], known: dict[Labels, int], base: int) -> None:
        counts, refs = list(message.series_label_counts), list(message.series_label_refs)
        if sum(counts) * 2 != len(refs):
            raise DecodeError(f"compact: {len(refs)} series label refs for {sum(counts)} label pairs")
        if refs and max(refs) >= len(symbols):
            raise DecodeError(f"compact: a series label refers to symbol {max(refs)}, the session has {len(symbols)}")
        self.new_series: list[Labels] = []
        self.new_sizes: list[int] = []
        texts = list(map(symbols.__getitem__, refs))
        start = 0
        for count in counts:
            end = start + 2 * count
            names, values = texts[start:end:2], texts[start + 1 : end : 2]
            if "" in names or any(map(operator.ge, names, names[1:])):
                raise DecodeError(f"compact: series labels {names!r} are not sorted, distinct, non-empty names")
            self.new_series.append(tuple(zip(names, values)))
            self.new_sizes.append(sum(map(len, texts[start:end])) + 4 * count + SAMPLE_SIZE)
            start = end
        if self.new_series:
            defined = known.get
            fresh = dict.fromkeys(self.new_series)
            if len(fresh) != len(self.new_series) or any(
                (ref := defined(labels)) is not None and ref < base for labels in fresh
            ):
                raise DecodeError("compact: a series is defined twice in the session")
        self.bytes += sum(SERIES_OVERHEAD + RECEIVER_PAIR_OVERHEAD * count + RECEIVER_INDEX_OVERHEAD for count in counts)

    def _samples(self, message: Request, body: bytes, base: _Base, batch: SampleBatch, sizes: list[int]) -> None:
        # Records a body of our encoder has: one per symbol, metadata entry, histogram and exemplar, a few more.
        raw = raw_columns(body, 32 + len(message.symbols) + len(message.metadata) + len(message.histograms)
                       + len(message.exemplars))
        counts = sample_counts(message, raw)
        n, series_count = len(message.timestamps), len(message.sample_series_ref_deltas)
        if series_count != len(counts):
            raise DecodeError(f"compact: {series_count} sample series refs but {len(counts)} sample counts")
        uniform = is_uniform(counts)
        if uniform:  # the steady state: checked by the first count, as `0 in` and `sum` walk every series
            well_counted = counts[0] != 0 and counts[0] * series_count == n
        else:
            well_counted = 0 not in counts and sum(counts) == n
        if not well_counted or len(message.values) != n:
            raise DecodeError(
                f"compact: sample counts sum to {sum(counts)}, with {n} timestamps and {len(message.values)} values"
            )
        if message.start_timestamps and len(message.start_timestamps) != n:
            raise DecodeError(f"compact: {len(message.start_timestamps)} start timestamps for {n} samples")
        self.refs: Refs = sample_refs(message, raw)
        refs = self.refs
        self.counts = counts
        self.every = counts[0] if uniform else 0  # samples per series when uniform
        self.stamps: list[int] = []
        self.bits = array("Q")
        self.last_int: int | None = None  # each series' last value bits as one int (uniform counts only)
        self.starts: list[int] | None = None
        if not refs:
            return
        if refs[-1] >= len(self.series):
            raise DecodeError(f"compact: samples refer to series {refs[-1]}, the session has {len(self.series)}")
        stamps, one = sample_timestamps_repeated(message, raw, counts, uniform, base.last(refs, 0))
        words = value_words(raw[7] if raw is not None else None, message)
        bases = base.last_bits_int(refs)
        bits, self.last_int = running_xor_last(words, counts, base.last(refs, 1) if bases is None else bases, uniform)
        self.stamps, self.bits = stamps, bits
        if message.start_timestamps:
            starts = running(list(message.start_timestamps), counts, base.last(refs, 2), operator.add)
            check_int64(starts, "a start timestamp")
            self.starts = batch.start_timestamps = starts
        batch.timestamps = stamps
        batch.values = array("d", bits.tobytes()).tolist()
        batch.labels = spread(gather(self.series, refs), counts, uniform)
        batch.sizes = spread(gather(sizes, refs), counts, uniform)
        # One run per series (refs increase and no label set has two refs), one tuple object per run; grouped
        # when each run is also in time order, as our encoder sends it.
        batch.grouped = _in_time_order(stamps, counts, uniform) if one is None else _rising(one)


def _keep_bits_int(ints: dict[tuple[int, int], int], refs: Refs, value: int | None) -> None:
    """Record that `refs`' acknowledged value bits are now `value` (None: not kept), dropping what overlaps."""
    if not isinstance(refs, range) or refs.step != 1:
        ints.clear()
        return
    start, stop = refs.start, refs.stop
    for key in [key for key in ints if key[0] < stop and start < key[1]]:
        del ints[key]
    if value is not None:
        if len(ints) >= MAX_BITS_INTS:
            del ints[next(iter(ints))]
        ints[(start, stop)] = value


def _rising(stamps: list[int]) -> bool:
    """Whether timestamps never fall (equal ones keep their arrival order)."""
    return all(map(operator.le, stamps, islice(stamps, 1, None)))


def _in_time_order(stamps: list[int], counts: list[int], uniform: bool) -> bool:
    """Whether the samples of each run (`counts` consecutive samples per series) have rising timestamps."""
    if uniform:
        every = counts[0]
        if every == 1:
            return True
        return all(all(map(operator.le, stamps[k - 1 :: every], stamps[k::every])) for k in range(1, every))
    falls = list(compress(range(1, len(stamps)), map(operator.gt, stamps, islice(stamps, 1, None))))
    if not falls:
        return True
    boundaries = set(accumulate(counts))
    return all(fall in boundaries for fall in falls)


def _histogram(h) -> NativeHistogram:  # type: ignore[no-untyped-def]
    for offsets, lengths in ((h.negative_span_offsets, h.negative_span_lengths),
                             (h.positive_span_offsets, h.positive_span_lengths)):
        if len(offsets) != len(lengths):
            raise DecodeError("compact: a histogram's span offsets and lengths differ in number")
    kind = h.WhichOneof("count")
    count: int | float = bits_float(h.count_float_bits) if kind == "count_float_bits" else h.count_int
    return NativeHistogram(
        timestamp=h.timestamp,
        count=count,
        sum=bits_float(h.sum_bits),
        schema=h.schema,
        zero_threshold=bits_float(h.zero_threshold_bits),
        zero_count=h.zero_count,
        negative_spans=tuple(zip(h.negative_span_offsets, h.negative_span_lengths)),
        negative_deltas=tuple(h.negative_deltas),
        positive_spans=tuple(zip(h.positive_span_offsets, h.positive_span_lengths)),
        positive_deltas=tuple(h.positive_deltas),
        start_timestamp=h.start_timestamp,
    )
