"""Remote write 1.0 bodies written from a request's remembered layout (`Frames`), and the byte-level pieces
every rw1 writer shares (varints, TimeSeries heads, a timestamp's bytes).

Why: a sender writes the same series in the same order request after request. A gateway's batcher cuts each
flush of a node's decoded requests into the same label lists (the node's session tuples), and a node's cuts
its own ticks the same way. Everything in an rw1 body but the values and the timestamps then repeats: which
series start where, their encoded labels, their TimeSeries heads. A `Frame` keeps those bytes for one label
list, laid out as the body will be (head, labels, entries for each series), so a request costs a `struct`
call per series (all of its Sample entries at once, when its series have the same number of samples at the
same times, as a batcher's interleaved ticks do) or per sample otherwise, a copy of the frame's list and one
join. Measured on a gateway's requests (node workload, 10 x 523 series, decoded from compact and cut by the
gateway's batcher), rw1 `serialize` alone in one process beside the code before frames, one core: 0.39 ->
0.18 us a sample at one sample per series, 0.58 -> 0.18 at two, 0.29 -> 0.15 at five.

A frame is exact for any values and timestamps, with two conditions checked on every request: every
timestamp's varint has the frame's length (true for millisecond times from 1971 to 2109), and the request's
label list is the frame's, tuple for tuple (compared by identity in C: ~1 ns a sample). What changes with the
values is where protobuf leaves a value out (+0.0: the Sample entry is 9 bytes shorter, and so is its
TimeSeries); those positions are found per request and the heads of the runs holding them rewritten, and
the result is kept for the next request, whose +0.0 samples are usually the same ones (counters that never
moved), so it only needs to confirm them.

A label list becomes a frame the first time it comes: making one and writing from it costs about what
writing the request without one did (0.4-0.5 us a sample at one or two samples per series), so a sender whose
requests never repeat (a gateway whose nodes race each other into different cuts) loses nothing by it.
Frames are bounded in bytes (`FRAME_BYTES`), charged by estimate: ~115 bytes a sample for the layout at one
sample per series (~45 at five), and ~42 bytes per `struct` argument once a frame writes whole bodies
(`Frame.packed`: 5 arguments a sample at one sample per series, ~3.4 at five; tracemalloc measured 211 and 142
bytes a sample), the least recently used dropped first.
Their state is replaced whole, never changed in place, so concurrent encodes on one connection stay exact.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from itertools import accumulate, chain, compress, islice, repeat
from operator import add, eq, floordiv, is_not, mod, mul, sub

from exporters.remote_write.series import Labels

ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def varint(n: int) -> bytes:
    """A protobuf varint; a negative int64 as its two's complement (ten bytes), as protobuf writes it."""
    if n < 0x80:
        return ONE_BYTE[n] if n >= 0 else varint(n & 0xFFFFFFFFFFFFFFFF)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


TIMESERIES_HEADS = [b"\x0a" + varint(n) for n in range(4096)]
"""WriteRequest field 1's tag and length, for TimeSeries shorter than 4096 bytes."""


def head(size: int) -> bytes:
    """WriteRequest field 1's tag and length for a TimeSeries of `size` bytes."""
    return TIMESERIES_HEADS[size] if size < len(TIMESERIES_HEADS) else b"\x0a" + varint(size)


def heads(sizes: list[int]) -> list[bytes]:
    """`head` of each size, looked up in C unless a TimeSeries is 4096 bytes or longer."""
    try:
        return list(map(TIMESERIES_HEADS.__getitem__, sizes))
    except IndexError:
        return list(map(head, sizes))


def stamp_bytes(stamp: int) -> bytes:
    """Sample field 2 (timestamp) as protobuf writes it: nothing for 0."""
    return b"\x10" + varint(stamp) if stamp else b""


def assign(target: list, indexes: Iterable[int], values: Iterable) -> None:
    """target[i] = value for each pair, the loop run in C."""
    deque(map(target.__setitem__, indexes, values), maxlen=0)


FRAME_BYTES = 48 << 20
"""Bound on the estimated bytes of one `Frames` (~150k series at one sample per series a request, once packed)."""
_LAYOUT_BYTES = 120  # a frame's layout, per sample
_PACKED_ARGUMENT_BYTES = 42  # a `struct` format code (32) and its slot in the arguments' template (8)

# Sample entry for a value that is not +0.0, by the length of its timestamp's bytes: TimeSeries field 2 tag
# and length, Sample field 1 tag, the value, the timestamp's bytes.
_ENTRY_PACKS = [struct.Struct(f"<3sd{size}s").pack for size in range(12)]
_RUN_PACKS: dict[tuple[int, int], Callable[..., bytes]] = {}


def _run_pack(every: int, stamp_size: int) -> Callable[..., bytes]:
    """The Sample entries of a run of `every` values that are not +0.0, at once: (before, value, timestamp)
    for each."""
    pack = _RUN_PACKS.get((every, stamp_size))
    if pack is None:
        pack = _RUN_PACKS[every, stamp_size] = struct.Struct("<" + f"3sd{stamp_size}s" * every).pack
    return pack


class _Zeros:
    """Where a request's +0.0 values are (protobuf leaves them out) and what follows from it: `positions`;
    `template`, the frame's template with the heads of the runs holding them (each such entry 9 bytes
    shorter); and, for a frame of runs of one length, the runs all +0.0 (`whole`) and those only partly
    (`partly`)."""

    __slots__ = ("partly", "positions", "template", "whole")

    def __init__(self, positions: list[int], template: list[bytes], every: int) -> None:
        self.positions = positions
        self.template = template
        self.whole: list[int] = []
        self.partly: list[int] = []
        if every > 1 and positions:
            per_run = Counter(map(floordiv, positions, repeat(every)))
            for run, count in per_run.items():
                (self.whole if count == every else self.partly).append(run)


class Frame:
    """One label list's body layout: three pieces a run (a series' samples), (TimeSeries head, encoded labels,
    Sample entries). `template` has the heads of a request without +0.0 values and None for the entries;
    `last` is the last request's `_Zeros`.

    A run is a series' samples: `grouped` batches are in runs already (`SampleBatch.grouped`); a list of
    distinct label sets is runs of one in any order. When every run has `every` samples and the k-th sample
    of every run has the same timestamp (a node's ticks, interleaved by the batcher), a run's entries are one
    `struct` call (~40 ns a sample at five a run, against ~50 a sample for an entry at a time and a join)."""

    __slots__ = ("before", "charged", "ends", "every", "labels", "last", "packer", "single", "sizes", "stamp_size",
                 "starts", "template", "uses", "zero_before")

    def __init__(self, labels: Sequence[Labels], starts: Sequence[int], encoded: list[bytes], stamp_size: int):
        n = len(labels)
        self.labels = list(labels)
        self.starts = starts
        self.ends = [*islice(starts, 1, None), n]
        self.single = len(starts) == n
        runs = len(starts)
        every = n // runs
        uniform = n % runs == 0 and (self.single or list(starts) == list(range(0, n, every)))
        self.every = every if uniform else 0  # every run this long
        self.stamp_size = stamp_size
        entry = 11 + stamp_size
        self.sizes = list(map(add, map(len, encoded), map(mul, map(sub, self.ends, starts), repeat(entry))))
        self.before = b"\x12" + ONE_BYTE[9 + stamp_size] + b"\x09"
        self.zero_before = b"\x12" + ONE_BYTE[stamp_size]
        template: list[bytes | None] = [None] * (3 * runs)
        template[0::3] = heads(self.sizes)
        template[1::3] = encoded
        self.template = template
        self.last = _Zeros([], template, self.every)
        self.uses = 0
        self.charged = 0  # the bytes `Frames` counts for it
        self.packer: tuple[Callable[..., bytes], list[bytes | None]] | None = None

    def nbytes(self, packed: bool) -> int:
        """Estimated bytes of this frame, with its `struct` format if `packed` (module docstring)."""
        size = len(self.labels) * _LAYOUT_BYTES
        if packed and self.every:
            size += len(self.starts) * (2 + 3 * self.every) * _PACKED_ARGUMENT_BYTES
        return size

    def packed(self, values: Sequence[float], timestamps: Sequence[int]) -> bytes | None:
        """The whole body in one `struct` call, every value written, +0.0 included; None when the runs are
        not all of one length or a timestamp's varint is not of the frame's length.

        Why +0.0 is written here: where protobuf leaves it out, the body's layout depends on the values, and
        a layout that changes from request to request (a few of a node's counters leave or reach zero every
        tick) is what costs `pieces` its per-request search, copies and join. Written, every value takes the
        same 11 bytes and the frame's layout is fixed: one `struct` format for the whole body, built once
        (~0.3 us and ~170 bytes a series). A receiver reads an explicit 0.0 as the value it is (protobuf
        parsers accept a field at its default; Prometheus and VictoriaMetrics do)."""
        every = self.every
        if not every:
            return None
        stamps = self._stamps(timestamps)
        if stamps is None:
            return None
        packer = self.packer
        if packer is None:
            packer = self.packer = self._packer()
        pack, template = packer
        runs = len(self.starts)
        stride = 2 + 3 * every
        args = template[:]
        if isinstance(stamps, repeat):
            stamps = [next(stamps)] * every
        for k in range(every):
            args[3 + 3 * k::stride] = values[k::every] if every > 1 else values
            # one time for every run's k-th sample, or each sample's own
            args[4 + 3 * k::stride] = [stamps[k]] * runs if len(stamps) == every else stamps[k::every]
        return pack(*args)

    def _packer(self) -> tuple[Callable[..., bytes], list[bytes | None]]:
        """The frame's body as one `struct` format, and its arguments with None for the values and the
        timestamps' bytes: per run its head, its labels, then (Sample entry head, value, timestamp) `every` times."""
        every, stamp_size, runs = self.every, self.stamp_size, len(self.starts)
        heads, encoded = self.template[0::3], self.template[1::3]
        samples = f"3sd{stamp_size}s" * every
        layout = struct.Struct("<" + "".join(f"{len(h)}s{len(e)}s{samples}" for h, e in zip(heads, encoded)))
        stride = 2 + 3 * every
        template: list[bytes | None] = [None] * (stride * runs)
        template[0::stride] = heads
        template[1::stride] = encoded
        for k in range(every):
            template[2 + 3 * k::stride] = [self.before] * runs
        return layout.pack, template

    def pieces(self, values: Sequence[float], timestamps: Sequence[int]) -> list[bytes] | None:
        """The body's pieces for these values and timestamps (of this frame's label list), to be joined; None
        when a timestamp's varint is not of the frame's length."""
        stamps = self._stamps(timestamps)
        if stamps is None:
            return None
        zeros = self._zeros(values)
        every = self.every
        if every > 1 and (isinstance(stamps, repeat) or len(stamps) == every):  # runs alike: one pack a run
            entries = self._runs(values, [next(stamps)] * every if isinstance(stamps, repeat) else stamps, zeros)
        else:
            entries = list(map(_ENTRY_PACKS[self.stamp_size], repeat(self.before), values, stamps))
            if zeros.positions:  # +0.0: the entry without its value (tag, length, timestamp)
                zero_before = self.zero_before
                if isinstance(stamps, list):
                    zero_entries: Iterable[bytes] = map(zero_before.__add__, map(stamps.__getitem__, zeros.positions))
                else:
                    zero_entries = repeat(zero_before + stamp_bytes(timestamps[0]))
                assign(entries, zeros.positions, zero_entries)
            if not self.single:
                entries = list(map(b"".join, map(entries.__getitem__, map(slice, self.starts, self.ends))))
        pieces = zeros.template[:]
        pieces[2::3] = entries
        return pieces

    def _runs(self, values: Sequence[float], stamps: list[bytes], zeros: _Zeros) -> list[bytes]:
        """Each run's entries, runs of `every` samples whose k-th samples have the timestamp bytes stamps[k]."""
        every, before = self.every, self.before
        columns: list[Iterable[Any]] = []
        for k in range(every):
            columns += (repeat(before), values[k::every], repeat(stamps[k]))
        entries = list(map(_run_pack(every, self.stamp_size), *columns))
        if zeros.whole:  # all +0.0: each entry without its value, the same for every such run
            assign(entries, zeros.whole, repeat(b"".join(map(self.zero_before.__add__, stamps))))
        if zeros.partly:  # some +0.0: entry by entry
            positions = list(chain.from_iterable(map(range, map(mul, zeros.partly, repeat(every)),
                                                     map(mul, map(add, zeros.partly, repeat(1)), repeat(every)))))
            column = list(map(stamps.__getitem__, map(mod, positions, repeat(every))))
            one = list(map(_ENTRY_PACKS[self.stamp_size], repeat(before), map(values.__getitem__, positions), column))
            zero = set(zeros.positions)
            flags = list(map(zero.__contains__, positions))
            assign(one, compress(range(len(one)), flags), map(self.zero_before.__add__, compress(column, flags)))
            assign(entries, zeros.partly, map(b"".join, zip(*[iter(one)] * every)))
        return entries

    def _stamps(self, timestamps: Sequence[int]) -> list[bytes] | repeat[bytes] | None:
        """Each sample's timestamp bytes (one repeated when all are equal; for runs of `every` samples, a list
        of `every`, one per position in a run, when the k-th samples of every run have one timestamp), or None
        when one is not of the frame's length. A request has few distinct timestamps (a collection time per
        tick): each is converted once."""
        n = len(timestamps)
        first = timestamps[0]
        if timestamps.count(first) == n:
            one = stamp_bytes(first)
            return repeat(one) if len(one) == self.stamp_size else None
        every = self.every
        runs = n // every if every else 0
        if every > 1 and all(timestamps[j::every].count(timestamps[j]) == runs for j in range(every)):
            # The k-th sample of every series at the same time: the ticks of a flush, interleaved.
            positions = [stamp_bytes(stamp) for stamp in timestamps[:every]]
            return positions if all(len(one) == self.stamp_size for one in positions) else None
        by_stamp = {stamp: stamp_bytes(stamp) for stamp in dict.fromkeys(timestamps)}
        if any(len(one) != self.stamp_size for one in by_stamp.values()):
            return None
        return list(map(by_stamp.__getitem__, timestamps))

    def _zeros(self, values: Sequence[float]) -> _Zeros:
        """The positions of the +0.0 values and what follows from them (`_Zeros`).

        The last request's zeros are mostly this one's (counters that never moved), so they are confirmed
        first: if those still zero are all the zeros there are, nothing is searched. Only zeros that appear
        elsewhere cost a search of every value."""
        last = self.last
        known = last.positions
        count = values.count(0.0)  # +0.0 and -0.0
        if not count:
            return last if not known else _Zeros([], self.template, self.every)
        still = list(map(eq, map(values.__getitem__, known), repeat(0.0)))
        kept = known if still.count(True) == len(known) else list(compress(known, still))
        zeros = kept if len(kept) == count else list(compress(range(len(values)), map(eq, values, repeat(0.0))))
        if struct.pack(f"<{len(zeros)}d", *map(values.__getitem__, zeros)) != bytes(8 * len(zeros)):
            zeros = [i for i in zeros if struct.pack("<d", values[i]) == bytes(8)]  # -0.0 is written
        if zeros is known or zeros == known:
            return last
        self.last = last = _Zeros(zeros, self._changed(known, last.template, zeros), self.every)
        return last

    def _run_of(self, position: int) -> int:
        return position if self.single else position // self.every if self.every else \
            bisect_right(self.starts, position) - 1

    def _changed(self, known: list[int], template: list[bytes | None], zeros: list[int]) -> list[bytes | None]:
        """`template` (for the zeros at `known`) made the template for `zeros`: only the heads of the runs
        where the two differ are rewritten, unless they are many."""
        changed = set(known).symmetric_difference(zeros)
        if len(changed) * 8 > len(self.starts):
            return self._with_zeros(zeros)
        template = template[:]
        starts, ends, sizes = self.starts, self.ends, self.sizes
        for run in set(map(self._run_of, changed)):
            start, end = starts[run], ends[run]
            template[3 * run] = head(sizes[run] - 9 * (bisect_left(zeros, end) - bisect_left(zeros, start)))
        return template

    def _with_zeros(self, zeros: list[int]) -> list[bytes | None]:
        """The template with the heads of the runs holding these +0.0 samples, each 9 bytes shorter."""
        template = self.template[:]
        if not zeros:
            return template
        if self.single:
            runs: Iterable[int] = zeros
            shrink: Iterable[int] = repeat(9)
        else:
            flags = [0] * len(self.labels)
            assign(flags, zeros, repeat(1))
            totals = list(accumulate(flags, initial=0))
            per_run = list(map(sub, map(totals.__getitem__, self.ends), map(totals.__getitem__, self.starts)))
            runs = list(compress(range(len(per_run)), per_run))
            shrink = map(mul, compress(per_run, per_run), repeat(9))
        sizes = list(map(sub, map(self.sizes.__getitem__, runs), shrink))
        assign(template, map(mul, runs, repeat(3)), heads(sizes))
        return template


class Frames:
    """The frames of one connection (one encoder), by label list, least recently used first; see the module
    docstring. The bytes they are charged are approximate when one connection encodes concurrently."""

    __slots__ = ("frames", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int = FRAME_BYTES) -> None:
        self.frames: dict[tuple[int, int, int], Frame] = {}  # by the ids of the first and last tuples, length
        self.nbytes = 0
        self.max_bytes = max_bytes

    def pieces(
        self,
        labels: Sequence[Labels],
        values: Sequence[float],
        timestamps: Sequence[int],
        grouped: bool,
        encoded: Callable[[Sequence[Labels]], list[bytes]],
        explicit: bool = False,
    ) -> list[bytes] | None:
        """The body's pieces from this label list's frame, made if it has none; None when it cannot have one
        (not `grouped` and a series twice: runs to be grouped) or the frame cannot write this request (the
        caller writes the body another way). `encoded`: the encodings of a list of label sets. `explicit`:
        the body may write +0.0 values (`Frame.packed`), from the frame's second use on (a label list seen
        once does not pay for the format)."""
        n = len(labels)
        if not n or n * _LAYOUT_BYTES > self.max_bytes:
            return None
        key = (id(labels[0]), id(labels[-1]), n)
        frame = self.frames.get(key)
        if frame is None or frame.labels != (labels if isinstance(labels, list) else list(labels)):
            frame = _frame(labels, timestamps, grouped, encoded)
            if frame is None:
                return None
        self._put(key, frame)
        if not (grouped or frame.single):
            return None  # an ungrouped batch with runs: its samples may not be in time order
        frame.uses += 1
        if explicit and frame.uses > 1 and (frame.packer is not None or self._room_to_pack(key, frame)):
            body = frame.packed(values, timestamps)
            if body is not None:
                return [body]
        return frame.pieces(values, timestamps)

    def _room_to_pack(self, key: tuple[int, int, int], frame: Frame) -> bool:
        """Whether `frame` may grow its `struct` format (charged now, dropping the least recently used frames
        if need be); not when that alone would pass the bound."""
        if frame.nbytes(packed=True) > self.max_bytes:
            return False
        self._put(key, frame, packed=True)
        return True

    def _put(self, key: tuple[int, int, int], frame: Frame, packed: bool = False) -> None:
        """`frame` under `key`, used last (`packed`: charged for the format it is about to make); the least
        recently used go while the bound is passed."""
        old = self.frames.pop(key, None)
        if old is not None:
            self.nbytes -= old.charged
        frame.charged = frame.nbytes(packed or frame.packer is not None)
        while self.frames and self.nbytes + frame.charged > self.max_bytes:
            self.nbytes -= self.frames.pop(next(iter(self.frames))).charged
        self.frames[key] = frame
        self.nbytes += frame.charged


def _frame(
    labels: Sequence[Labels],
    timestamps: Sequence[int],
    grouped: bool,
    encoded: Callable[[Sequence[Labels]], list[bytes]],
) -> Frame | None:
    """A frame for this label list: its runs are where the tuple object changes when `grouped`, else every
    label set must be distinct (runs of one); None otherwise."""
    n = len(labels)
    if grouped:
        starts: Sequence[int] = [0, *compress(range(1, n), map(is_not, labels, islice(labels, 1, None)))]
        if len(starts) == n:
            starts = range(n)
    elif len(dict.fromkeys(labels)) == n:
        starts = range(n)
    else:
        return None
    heads = labels if len(starts) == n else list(map(labels.__getitem__, starts))
    return Frame(labels, starts, encoded(heads), len(stamp_bytes(timestamps[0])))
