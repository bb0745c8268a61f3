"""The batcher link of the remote-write chain (docs/architecture.md, "the sending chain"): translated samples
gathered over one flush interval and cut into requests.

Why a flush is held whole and then cut, rather than cut whenever a request is full: a series' samples from
one flush belong in one request. Every format writes a series' labels (or its dictionary reference) once
per request and its timestamps and values as differences, so five samples of a series in one request cost
far less than one sample in each of five (measured with remote write 1.0 at 5,100 series: 11.6 bytes per
sample when `max_samples` split a 5 s flush across requests, 5.9 with each series whole). So a cut groups
samples by series, keeps each series whole, and packs whole series into requests of at most `max_samples`
samples and about `max_bytes` estimated bytes; only a series that alone passes a limit is split, in time
order. A flush holds at most `hold_factor` requests' worth: past that it is cut early, so memory stays
bounded however fast samples arrive.

Native histograms and exemplars, far fewer, ride in the last request of a cut, after every float sample (a
receiver drops an exemplar whose series it has not seen yet).

How a cut groups: when the flush is ticks of the same series in the same order with later timestamps (a
node's ticks, the common case, each tick in one batch or several), grouping is interleaving the ticks, done
with list slices, and the requests come out `grouped` (`SampleBatch.grouped`) so encoders need not group
again; on the node workload's 5 s flush that costs ~0.1 us per sample where grouping in a Python loop cost
~1.2. When the flush is batches that are each `grouped` and share no series (a gateway's: a decoded compact
request is grouped, and a node cuts each of its flushes into requests of whole series), the flush is grouped
as it stands, their concatenation, and a cut only slices it at series boundaries found by bisection on where
each run of one tuple object starts: no sample is moved. A node sends the same series in the same tuples
(its session's) flush after flush, so each batch's runs are remembered and proved distinct once, and found
again by comparing its label list with the one remembered (~0.05 us per sample on a gateway's 5 s flush of
10 nodes, where the general path below cost ~0.7). A node's requests come in a few label lists (at a 1 s
flush, one tick per request, or two ticks interleaved and cut in two when its flush caught two), so several
lists of the same series are remembered side by side, and which pairs share no series is proved once per
pair: a gateway whose node alternates so costs ~0.06 us per sample where forgetting one list for the other
and proving it again cost ~0.37 (`bench/encode_bench.py --decoded --per-request 2 --node-ticks 1,1,2`).
Otherwise (ticks that differ; a series in two batches, as
when a gateway's flush spans two of a node's; a series that alone passes a limit) a flush that fits in one
request is sent as it came, and one that does not is grouped with list operations that run in C (~0.5 us
per sample), its requests `grouped` too.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import accumulate, chain, combinations, compress, islice, pairwise, repeat
from operator import add, and_, eq, is_not, le, lt, ne, not_, sub

from exporters.remote_write.series import Labels, SampleBatch


class _Runs:
    """A grouped batch's label list as runs of one tuple each: where each run starts, its tuple (head) and that
    tuple's id; `number` names it for the memo of which remembered lists share no series."""

    __slots__ = ("heads", "ids", "labels", "number", "starts")

    def __init__(self, labels: list[Labels], starts: list[int], ids: list[int], heads: list[Labels], number: int):
        self.labels = labels
        self.starts = starts
        self.ids = ids
        self.heads = heads
        self.number = number


class _Merge:
    """How a flush of these remembered lists' batches is grouped: `order`, the flush's samples in grouped order
    (indexes into the concatenation); `series`, where each series begins in it; `lasts` and `nexts`, the
    samples that end one run and begin the next run of the same series, whose timestamps must not go back."""

    __slots__ = ("lasts", "nexts", "order", "series")

    def __init__(self, runs: list[_Runs]) -> None:
        ids: list[int] = []
        begins: list[int] = []
        ends: list[int] = []
        offset = 0
        for batch in runs:
            ids += batch.ids
            begins += map(add, batch.starts, repeat(offset))
            ends += map(add, islice(batch.starts, 1, None), repeat(offset))
            offset += len(batch.labels)
            ends.append(offset)
        count = len(ids)
        first = dict(zip(reversed(ids), range(count - 1, -1, -1)))  # each series' first run
        keys = list(map(first.__getitem__, ids))
        order = sorted(range(count), key=keys.__getitem__)  # stable: a series' runs in the order batches came
        keys = list(map(keys.__getitem__, order))
        begins = list(map(begins.__getitem__, order))
        ends = list(map(ends.__getitem__, order))
        follows = list(map(eq, keys[1:], keys))  # run i+1 continues the series of run i
        self.lasts = list(compress(map(sub, ends, repeat(1)), follows))
        self.nexts = list(compress(islice(begins, 1, None), follows))
        self.order = list(chain.from_iterable(map(range, begins, ends)))
        at = accumulate(map(sub, ends, begins), initial=0)  # where each run begins in the grouped order
        self.series = list(compress(at, [True, *map(not_, follows)]))


def _adopted(batch: SampleBatch) -> SampleBatch:
    """A batch of the batcher's own with `batch`'s columns (not copied), as `extend` into an empty one would
    make it but for the copies: its flags, metadata and counts can change."""
    return replace(batch, metadata=dict(batch.metadata), dropped=Counter(), grouped=False,
                   series_key=None)


def _key(labels: list[Labels]) -> tuple[int, int, int]:
    """Where the runs of a label list are remembered: the ids of its first and last tuples, and its length."""
    return id(labels[0]), id(labels[-1]), len(labels)


class Batcher:
    """Pending samples of one flush.

        batcher = Batcher(max_samples=10_000, max_bytes=4 << 20, flush_interval=5.0)
        requests = batcher.add(batch)          # usually [], unless the flush got too big to hold
        if batcher.due() == 0: requests += batcher.cut()

    Not thread-safe: the exporter calls it from the event loop only. Batches handed to `add` are copied from,
    never kept or modified.
    """

    def __init__(
        self,
        max_samples: int,
        max_bytes: int,
        flush_interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        hold_factor: int = 4,
    ) -> None:
        if max_samples <= 0:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self._clock = clock
        self._hold_samples = max_samples * hold_factor
        self._hold_bytes = max_bytes * hold_factor
        self._pending = SampleBatch()
        self._borrowed = False  # whether `_pending`'s columns are a batch's own (read-only until copied)
        self._nbytes = 0
        self._since = 0.0
        self._added: list[int] = []  # float samples of each batch added since the last cut, in order
        self._unique: list[Labels] = []  # the last series order whose label sets were found distinct
        self._reused = False  # whether a later flush had that order again
        # The runs of each `grouped` batch added since the last cut; None once one was not grouped.
        self._runs: list[_Runs] | None = []
        # Runs of grouped batches seen before, by `_key`, least recently used first: a gateway gets the same
        # label lists from a node flush after flush (its session's tuples), so their runs are found and proved
        # distinct once. A node sends its series in a few lists (one tick per request; or, when its flush caught
        # two ticks, both interleaved and cut in two), all remembered side by side. Remembered lists agree on
        # one tuple per label set (`_tuples`: each label set's tuple id, which also keeps the tuples and so their
        # ids alive), so two of them share a series exactly when they share a tuple id: `_apart` memoizes that
        # for pairs (by `_Runs.number`) as flushes meet them.
        self._known: dict[tuple[int, int, int], _Runs] = {}
        self._known_samples = 0
        self._tuples: dict[Labels, int] = {}
        self._apart: dict[tuple[int, int], bool] = {}
        self._merges: dict[tuple[int, ...], _Merge] = {}  # by the lists' numbers, least recently used first
        self._numbered = 0

    @property
    def nbytes(self) -> int:
        """Estimated bytes pending (what remote write 1.0 would need for them uncompressed)."""
        return self._nbytes

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return self._pending.samples

    def due(self) -> float | None:
        """Seconds until the pending flush is due (0 when it is), None when nothing is pending."""
        if not self._pending:
            return None
        return max(0.0, self._since + self.flush_interval - self._clock())

    def add(self, batch: SampleBatch) -> list[tuple[SampleBatch, int]]:
        """Take `batch`'s samples; returns requests cut at once when the flush grew past what it may hold."""
        if not batch:
            return []
        pending = self._pending
        if not pending:
            self._since = self._clock()
        self._added.append(len(batch.values))
        if batch.values and self._runs is not None:
            runs = self._runs_of(batch.labels) if batch.grouped else None
            if runs is None:
                self._runs = None
            else:
                self._runs.append(runs)
        if not pending:
            # The first batch of a flush is taken as it is (its columns read-only, see SampleBatch): a flush of
            # one batch, as at a 1 s flush, is cut without copying a column. A second batch copies it first.
            self._pending = pending = _adopted(batch)
            self._borrowed = True
        else:
            if self._borrowed:  # columns of its own before appending
                pending = SampleBatch()
                pending.extend(self._pending)
                self._pending, self._borrowed = pending, False
            pending.extend(batch)
        self._nbytes += batch.nbytes
        if pending.samples >= self._hold_samples or self._nbytes >= self._hold_bytes:
            return self.cut()
        return []

    def cut(self) -> list[tuple[SampleBatch, int]]:
        """Everything pending, as requests (batch, estimated bytes), in the order they should be sent."""
        pending, nbytes, added, runs = self._pending, self._nbytes, self._added, self._runs
        self._pending, self._nbytes, self._added, self._runs = SampleBatch(), 0, [], []
        self._borrowed = False
        if not pending:
            return []
        fits = len(pending.values) <= self.max_samples - len(pending.histograms) and nbytes <= self.max_bytes
        if runs:
            requests = self._cut_runs(pending, nbytes, runs, fits)
            if requests is not None:
                return requests
        per_tick = self._repeated_series(pending, added)
        if per_tick and per_tick == len(pending.values) and fits:
            pending.grouped = True  # one sample per series: grouped as it stands
            return [(pending, nbytes)]
        if per_tick:
            requests = self._cut_repeated(pending, per_tick, len(pending.values) // per_tick)
            if requests is not None:
                return requests
        if runs:
            requests = self._merge_runs(pending, runs)
            if requests is not None:
                return requests
        if fits:
            return [(pending, nbytes)]
        return self._split(pending)

    def _cut_runs(
        self, pending: SampleBatch, nbytes: int, runs: list[_Runs], fits: bool
    ) -> list[tuple[SampleBatch, int]] | None:
        """The requests `_split` would cut from a flush of `grouped` batches (`runs`: theirs, in order) that
        share no series, each request a slice of the flush as it stands and `grouped`; None when that is not
        the flush (a series in two batches) or a series alone passes a limit (`_split` splits it).

        Then the concatenation is grouped already: series in order of first appearance, each one run of one
        tuple object in time order. Batches share no series when their runs are remembered lists that share no
        tuple (proved once per pair of lists, as `_apart` remembers)."""
        known = self._known
        if not runs or len(set(map(id, runs))) != len(runs):
            return None
        if any(known.get(_key(batch.labels)) is not batch for batch in runs):
            return None
        if not all(self._share_nothing(a, b) for a, b in combinations(runs, 2)):
            return None
        if fits:
            pending.grouped = True
            return [(pending, nbytes)]
        starts: list[int] = []
        offset = 0
        for batch in runs:
            starts += map(add, batch.starts, repeat(offset))
            offset += len(batch.labels)
        return self._slices(pending, starts)

    def _merge_runs(self, pending: SampleBatch, runs: list[_Runs]) -> list[tuple[SampleBatch, int]] | None:
        """The requests `_split` would cut from a flush of `grouped` batches (`runs`: theirs, in order, all still
        remembered) whose series may be in several of them, as when a gateway's flush spans two of a node's;
        None when a series' runs are not in time order one after the other, or a series alone passes a limit
        (then `_split` groups sample by sample).

        The runs, not the samples, are put in order (each series' runs side by side in the order the batches
        came, series in order of first appearance; remembered lists agree on one tuple per label set, so a
        series is one tuple id in all of them), and that order is kept for the same lists (`_Merge`): what is
        left is a check of the timestamps where runs meet, one permutation of the columns and slices at series
        boundaries. A 1 s gateway flush of a node's one-tick request and its next two-tick one (15,690 samples)
        ~0.5 us a sample the first time, ~0.15 after, where `_split` takes ~1.0 (`bench/encode_bench.py
        --decoded --per-request 3 --node-ticks 1,2 --formats ''`)."""
        known = self._known
        if any(known.get(_key(batch.labels)) is not batch for batch in runs):
            return None
        numbers = tuple(batch.number for batch in runs)
        merge = self._merges.pop(numbers, None) or _Merge(runs)
        self._merges[numbers] = merge  # used last
        while len(self._merges) > 8:
            del self._merges[next(iter(self._merges))]
        stamps = pending.timestamps
        if not all(map(le, map(stamps.__getitem__, merge.lasts), map(stamps.__getitem__, merge.nexts))):
            return None
        order = merge.order
        grouped = SampleBatch(
            labels=list(map(pending.labels.__getitem__, order)),
            values=list(map(pending.values.__getitem__, order)),
            timestamps=list(map(stamps.__getitem__, order)),
            sizes=list(map(pending.sizes.__getitem__, order)),
            histogram_labels=pending.histogram_labels, histograms=pending.histograms,
            histogram_sizes=pending.histogram_sizes, exemplar_labels=pending.exemplar_labels,
            exemplars=pending.exemplars, exemplar_sizes=pending.exemplar_sizes,
            metadata=pending.metadata, grouped=True,
        )
        if pending.start_timestamps:
            grouped.start_timestamps = list(map(pending.start_timestamps.__getitem__, order))
        return self._slices(grouped, merge.series)

    def _slices(self, pending: SampleBatch, starts: list[int]) -> list[tuple[SampleBatch, int]] | None:
        """Whole runs of grouped `pending` (`starts`: where each begins) packed greedily into requests, each a
        slice of it; None when a run alone passes a limit. Each request ends at the last run start within
        `max_samples` (bisection), or before the run the first byte past `max_bytes` is in."""
        labels, sizes = pending.labels, pending.sizes
        count = len(labels)
        max_samples, max_bytes = self.max_samples, self.max_bytes
        requests: list[tuple[SampleBatch, int]] = []
        begin = first = 0  # `first`: the run that starts at `begin`, an index into `starts`
        while begin < count:
            if begin + max_samples >= count:
                end, last = count, len(starts)
            else:
                last = bisect_right(starts, begin + max_samples, first) - 1
                end = starts[last]
            request_sizes = sizes[begin:end]
            size = sum(request_sizes)
            if size > max_bytes:  # the bytes limit ends this request first: at the run the first byte past it is in
                fit = bisect_right(list(accumulate(request_sizes)), max_bytes)
                last = bisect_right(starts, begin + fit, first) - 1
                end = starts[last]
                request_sizes = sizes[begin:end]
                size = sum(request_sizes)
            if last == first:
                return None  # the run at `begin` alone passes a limit
            batch = SampleBatch(
                labels=labels[begin:end],
                values=pending.values[begin:end],
                timestamps=pending.timestamps[begin:end],
                sizes=request_sizes,
                metadata=pending.metadata,
                grouped=True,
            )
            if pending.start_timestamps:
                batch.start_timestamps = pending.start_timestamps[begin:end]
            requests.append((batch, size))
            begin, first = end, last
        return self._with_the_rest(requests, pending)

    def _runs_of(self, labels: list[Labels]) -> _Runs | None:
        """The runs of a `grouped` batch's `labels`, remembered (and the label sets proved distinct) the first
        time; None when a series has two runs or two tuples (then it was not grouped)."""
        key = _key(labels)
        known = self._known.get(key)
        # Compared in C, by identity where the tuples are the same (as they are, flush after flush), else by
        # value: value is what a series is, and a grouped batch has the runs of its values.
        if known is not None and known.labels == labels:
            self._known[key] = self._known.pop(key)  # used last
            return known
        changes = list(map(is_not, labels[1:], labels))
        heads = [labels[0], *compress(labels[1:], changes)]
        ids = list(map(id, heads))
        if len(set(ids)) != len(ids) or len(set(heads)) != len(ids):
            return None
        if list(map(self._tuples.get, heads, ids)) != ids:
            # An equal label set in another tuple (a sender's new session): what is remembered starts over.
            self._known, self._known_samples, self._tuples, self._apart = {}, 0, {}, {}
        elif known is not None:
            self._known_samples -= len(self._known.pop(key).labels)
        self._numbered += 1
        runs = _Runs(list(labels), [0, *compress(range(1, len(labels)), changes)], ids, heads, self._numbered)
        self._known[key] = runs
        self._known_samples += len(labels)
        self._tuples.update(zip(heads, ids))
        self._bound()
        return runs

    def _bound(self) -> None:
        """At most two flushes' worth of label lists remembered, the least recently used forgotten first; what
        only forgotten lists had is dropped once it is most of what is held."""
        while self._known_samples > 2 * self._hold_samples and len(self._known) > 1:
            self._known_samples -= len(self._known.pop(next(iter(self._known))).labels)
        remembered = self._known.values()
        if len(self._tuples) > 4 * sum(len(runs.heads) for runs in remembered) + 4096:
            self._tuples = {labels: id(labels) for runs in remembered for labels in runs.heads}
        if len(self._apart) > 4 * len(self._known) ** 2 + 64:
            numbers = {runs.number for runs in remembered}
            self._apart = {pair: apart for pair, apart in self._apart.items() if numbers.issuperset(pair)}

    def _share_nothing(self, a: _Runs, b: _Runs) -> bool:
        """Whether two remembered lists have no series in common (no tuple: they agree on one per label set)."""
        pair = (a.number, b.number) if a.number < b.number else (b.number, a.number)
        apart = self._apart.get(pair)
        if apart is None:
            apart = self._apart[pair] = set(a.ids).isdisjoint(b.ids)
        return apart

    def _repeated_series(self, pending: SampleBatch, added: list[int]) -> int:
        """Series per tick when the pending samples are ticks of the same distinct series in the same order,
        each tick later than the one before (a node's ticks, as translation emits them, whether each tick came
        in one batch or several); else 0.

        Then grouping is interleaving, done with slices at C speed, where grouping by hash costs ~0.5 us per
        sample in Python. A tick ends where a batch ends and the first series comes again. The label sets are
        compared with `==`, which is an identity check for the interned tuples translation hands out; they are
        hashed (to prove them distinct) only when there are ticks to interleave and the order differs from the
        last one proved, about once per series set rather than once per flush."""
        labels, stamps = pending.labels, pending.timestamps
        per_tick = len(labels)
        if not per_tick:
            return 0
        end = 0
        for size in added[:-1]:
            end += size
            if end < per_tick and labels[end] is labels[0]:
                per_tick = end
                break
        if len(labels) % per_tick:
            return 0
        first = labels if per_tick == len(labels) else labels[:per_tick]  # no copy of a single tick to compare
        for start in range(per_tick, len(labels), per_tick):
            end = start + per_tick
            if labels[start:end] != first or not all(map(le, stamps[start - per_tick:start], stamps[start:end])):
                return 0
        if first == self._unique:
            self._reused = True
            return per_tick
        # One tick has nothing to interleave: a proof pays only if later flushes reuse it. Where the order
        # changes every flush (a gateway's nodes racing) each would cost what it saves an encoder, so after
        # one proof not reused, single ticks are left ungrouped, as they came.
        if per_tick == len(labels) and self._unique and not self._reused:
            return 0
        if len(set(first)) != per_tick:
            return 0
        self._unique, self._reused = list(first), False  # a copy: `labels` leaves with the request
        return per_tick

    def _cut_repeated(self, pending: SampleBatch, per_tick: int, count: int) -> list[tuple[SampleBatch, int]] | None:
        """The requests `_split` would cut from `count` ticks of the same `per_tick` series, each series' samples
        contiguous and in tick order (`grouped`); None when a series alone passes a limit (`_split` splits it)."""
        sizes = pending.sizes
        series_bytes = sizes[:per_tick]
        for start in range(per_tick, len(sizes), per_tick):
            series_bytes = list(map(add, series_bytes, sizes[start:start + per_tick]))
        if count > self.max_samples or max(series_bytes) > self.max_bytes:
            return None
        bounds = list(accumulate(series_bytes, initial=0))
        series_per_request = self.max_samples // count
        requests: list[tuple[SampleBatch, int]] = []
        first = 0
        while first < per_tick:
            last = min(
                per_tick,
                first + series_per_request,
                bisect_right(bounds, bounds[first] + self.max_bytes, first) - 1,
            )
            requests.append((self._interleave(pending, per_tick, count, first, last), bounds[last] - bounds[first]))
            first = last
        return self._with_the_rest(requests, pending)

    @staticmethod
    def _interleave(pending: SampleBatch, per_tick: int, count: int, first: int, last: int) -> SampleBatch:
        """Series `first` to `last` (exclusive) of every tick, each series' samples side by side in tick order."""
        batch = SampleBatch(metadata=pending.metadata, grouped=True)
        # Every sample of a series gets the first tick's label tuple (equal, as `_repeated_series` checked), so
        # an encoder finds a series' run by identity.
        series = pending.labels[first:last]
        columns = [(pending.values, batch.values), (pending.timestamps, batch.timestamps), (pending.sizes, batch.sizes)]
        if pending.start_timestamps:
            columns.append((pending.start_timestamps, batch.start_timestamps))
        if count == 1:
            batch.labels = series
            for source, target in columns:
                target += source[first:last]
            return batch
        size = (last - first) * count
        placeholders = [0] * size  # every slot is overwritten below
        batch.labels = [()] * size
        for tick in range(count):
            batch.labels[tick::count] = series
        for source, target in columns:
            target += placeholders
            for tick in range(count):
                offset = tick * per_tick
                target[tick::count] = source[offset + first:offset + last]
        return batch

    @staticmethod
    def _with_the_rest(requests: list[tuple[SampleBatch, int]], pending: SampleBatch) -> list[tuple[SampleBatch, int]]:
        """`requests` with the flush's histograms and exemplars (and all its metadata) in the last one."""
        last, last_bytes = requests.pop() if requests else (SampleBatch(), 0)
        last.histogram_labels, last.histograms, last.histogram_sizes = (
            pending.histogram_labels, pending.histograms, pending.histogram_sizes)
        last.exemplar_labels, last.exemplars, last.exemplar_sizes = (
            pending.exemplar_labels, pending.exemplars, pending.exemplar_sizes)
        last.metadata = pending.metadata
        last_bytes += sum(pending.histogram_sizes) + sum(pending.exemplar_sizes)
        if last:
            requests.append((last, last_bytes))
        return requests

    def _split(self, pending: SampleBatch) -> list[tuple[SampleBatch, int]]:
        """Whole series packed greedily into requests, a series that alone passes a limit split in time order.

        Requests are contiguous ranges of the grouped order, so the columns are permuted once (at C speed)
        and sliced."""
        labels, order, firsts = self._grouped(pending)
        bounds = list(accumulate(map(pending.sizes.__getitem__, order), initial=0))
        cuts = self._cuts(firsts, bounds)
        columns = [list(map(column.__getitem__, order)) for column in (pending.values, pending.timestamps, pending.sizes)]
        starts = list(map(pending.start_timestamps.__getitem__, order)) if pending.start_timestamps else None
        requests = []
        for begin, end in pairwise(cuts):
            batch = SampleBatch(
                labels=labels[begin:end],
                values=columns[0][begin:end],
                timestamps=columns[1][begin:end],
                sizes=columns[2][begin:end],
                metadata=pending.metadata,
                grouped=True,
            )
            if starts is not None:
                batch.start_timestamps = starts[begin:end]
            requests.append((batch, bounds[end] - bounds[begin]))
        return self._with_the_rest(requests, pending)

    def _cuts(self, firsts: list[int], bounds: list[int]) -> list[int]:
        """Where each request begins and the last ends, in grouped order, given where each series begins and the
        running total of the samples' sizes: whole series packed greedily, a series that alone passes a limit
        split sample by sample in time order, the request it ends in left open for the series after it.

        When no series alone passes a limit, each request's end is found by bisection on the series'
        running totals, so that nothing walks the series in Python."""
        max_samples, max_bytes = self.max_samples, self.max_bytes
        count = len(bounds) - 1
        edges = [*firsts, count]
        edge_bytes = list(map(bounds.__getitem__, edges))
        if max(map(sub, edges[1:], edges), default=0) <= max_samples and max(
            map(sub, edge_bytes[1:], edge_bytes), default=0
        ) <= max_bytes:
            cuts = [0]
            series = 0
            while series < len(firsts):
                series = min(
                    bisect_right(edges, edges[series] + max_samples, series),
                    bisect_right(edge_bytes, edge_bytes[series] + max_bytes, series),
                ) - 1
                cuts.append(edges[series])
            return cuts
        cuts = [0]
        for first, end in pairwise(edges):
            begin = cuts[-1]
            if first > begin and (end - begin > max_samples or bounds[end] - bounds[begin] > max_bytes):
                cuts.append(begin := first)
            if end - first <= max_samples and bounds[end] - bounds[first] <= max_bytes:
                continue
            # One series alone passes a limit: its samples in time order, as many per request as fit.
            for index in range(first, end):
                if index > begin and (index - begin >= max_samples or bounds[index + 1] - bounds[begin] > max_bytes):
                    cuts.append(begin := index)
        cuts.append(count)
        return cuts

    def _grouped(self, pending: SampleBatch) -> tuple[list[Labels], list[int], list[int]]:
        """(each sample's label set in grouped order, that order as indexes into `pending`, where each series
        begins in it): series in order of first appearance, each one's samples in time order (equal timestamps
        in arrival order), each series one tuple object (the first of its equals).

        Done with list operations that run in C: samples are keyed by their tuple's id (an int hash), and
        only distinct tuples are hashed by value, to find equal ones (not even that when they are the series
        last proved distinct); then one stable sort of small ints."""
        labels, stamps = pending.labels, pending.timestamps
        ids = list(map(id, labels))
        by_id = dict(zip(ids, labels))  # distinct objects, in order of first appearance
        distinct = list(by_id.values())
        if distinct == self._unique:
            positions: Sequence[int] = range(len(distinct))
            self._reused = True
        else:
            first_equal = dict(zip(reversed(distinct), range(len(distinct) - 1, -1, -1)))
            positions = list(map(first_equal.__getitem__, distinct))
            if len(first_equal) == len(distinct):
                self._unique, self._reused = distinct, False
        keys = list(map(dict(zip(by_id, positions)).__getitem__, ids))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        grouped_keys = list(map(keys.__getitem__, order))
        grouped_stamps = list(map(stamps.__getitem__, order))
        if any(map(and_, map(eq, grouped_keys[1:], grouped_keys), map(lt, grouped_stamps[1:], grouped_stamps))):
            order.sort(key=lambda index: (keys[index], stamps[index]))  # stable: arrival order among equals
            grouped_keys = list(map(keys.__getitem__, order))
        firsts = [0, *compress(range(1, len(order)), map(ne, grouped_keys[1:], grouped_keys))] if order else []
        return list(map(distinct.__getitem__, grouped_keys)), order, firsts
