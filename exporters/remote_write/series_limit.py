"""`limits.max_series_per_metric` across requests, with an idle expiry.

    limit = SeriesLimit(max_series_per_metric=10_000, max_series=200_000, idle_expiry=600.0)
    batch = limit.apply(batch, now)       # samples of series past a limit are removed, counted as too_many_series

`translate` holds the limit within one request; a client that sends a few new series in every request would
pass it for ever. This keeps, per metric family, the series it admitted and when each was last seen, across
requests, for one exporter. A new series past `max_series_per_metric` in its family, or past `max_series` in
all, is refused: its samples (and exemplars) are taken out of the batch and counted in `dropped` as
`too_many_series`. A series unseen for `idle_expiry` seconds frees its place; without that expiry a metric
whose label values change over time (pods, versions) would be capped for ever by series long gone.

A family is the metric's name without `_bucket`, `_count` or `_sum` (and a series without its `le` or
`quantile` label), so a histogram with ten buckets counts as one series of its family, as in `translate`.
Per sample the cost is one lookup by the label tuple's identity (the series cache interns them, so one series
is one object while it stays cached) and one set insertion; last-seen times are written once per epoch (a
quarter of `idle_expiry`) for the series the epoch saw, not per sample. A batch of a learnt shape
(`SampleBatch.series_key`) costs one lookup once the epoch admitted a batch of that shape whole: a node's SDK
sends the same series every interval, and checking them again (~0.1 us a sample) was ~15 % of a node agent's
CPU in `bench/remote_write.py` (py-spy, compact at a 1 s flush). Samples the gateway forwards
(`consume_series`) are not limited here: the limit was left out when a gateway's label tuples were new objects in
every request (the rw1, vm and rw2 decoders now reuse them, compact sessions always did), so it could now be applied
there at the cost above. Memory: at most `max_series` admitted series, each with the label tuples that named it;
`expire` forgets what is idle and is run at most once per epoch.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import replace

from exporters.remote_write.series import Labels, SampleBatch

MAX_CLEAN_KEYS = 4096
"""Most series keys (learnt shapes) remembered as admitted whole in the current epoch."""
_SUFFIXES = ("_bucket", "_count", "_sum")
_DERIVED = ("le", "quantile")
REASON = "too_many_series"


def _base(labels: Labels) -> tuple[str, tuple]:
    """(family, the series' identity within it) of a label tuple."""
    name = ""
    rest = []
    for pair in labels:
        if pair[0] == "__name__":
            name = pair[1]
        elif pair[0] not in _DERIVED:
            rest.append(pair)
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name, tuple(rest)


class SeriesLimit:
    """See the module docstring. Not thread-safe: one per exporter, used from the event loop."""

    def __init__(self, max_series_per_metric: int, max_series: int, idle_expiry: float) -> None:
        if max_series_per_metric < 1 or max_series < 1:
            raise ValueError("max_series_per_metric and max_series must be at least 1")
        if not idle_expiry > 0:
            raise ValueError(f"idle_expiry: expected more than 0 seconds, found {idle_expiry!r}")
        self.max_series_per_metric = max_series_per_metric
        self.max_series = max_series
        self.idle_expiry = idle_expiry
        self._epoch_length = idle_expiry / 4
        self._epoch = 0
        self._families: dict[str, dict[tuple, int]] = {}  # family -> series identity -> epoch last seen
        self._series = 0
        # id(label tuple) -> [the tuple (kept alive, so the id is not reused), family table, identity, epoch]
        self._known: dict[int, list] = {}
        self._seen: set[int] = set()  # ids of tuples seen in the current epoch
        # id(series_key) -> the key, for batches admitted whole this epoch; weak, so that it costs no memory past
        # the series cache's bound (an entry goes with its key, before the id can be reused)
        self._clean: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
        self.expired = 0
        """Series forgotten after idle_expiry without a sample."""
        self.refused = 0
        """Samples (and histograms) refused because a limit was reached."""

    @property
    def series(self) -> int:
        return self._series

    def apply(self, batch: SampleBatch, now: float) -> SampleBatch:
        """`batch` without the samples of series refused by a limit (the same object when none is)."""
        epoch = int(now / self._epoch_length)
        if epoch != self._epoch:
            self._epoch = epoch
            self._expire(epoch)
            self._clean.clear()
        key = batch.series_key
        if key is not None and id(key) in self._clean:
            return batch  # the same series as a batch this epoch admitted whole, already noted seen
        refused_floats = self._refused(batch.labels, epoch)
        refused_histograms = self._refused(batch.histogram_labels, epoch)
        if not refused_floats and not refused_histograms:
            if key is not None:
                if len(self._clean) >= MAX_CLEAN_KEYS:
                    self._clean.clear()
                with contextlib.suppress(TypeError):  # a key that takes no weak reference is checked every time
                    self._clean[id(key)] = key
            return batch
        gone = refused_floats | refused_histograms
        floats = [i for i, labels in enumerate(batch.labels) if id(labels) not in gone]
        hists = [i for i, labels in enumerate(batch.histogram_labels) if id(labels) not in gone]
        exemplars = [i for i, labels in enumerate(batch.exemplar_labels) if id(labels) not in gone]
        dropped = batch.dropped.copy()
        count = (len(batch.labels) - len(floats)) + (len(batch.histogram_labels) - len(hists))
        dropped[REASON] += count
        self.refused += count

        def pick(column: list, keep: list[int]) -> list:
            return [column[i] for i in keep]

        return replace(
            batch,
            labels=pick(batch.labels, floats), values=pick(batch.values, floats),
            timestamps=pick(batch.timestamps, floats), sizes=pick(batch.sizes, floats),
            start_timestamps=pick(batch.start_timestamps, floats) if batch.start_timestamps else [],
            histogram_labels=pick(batch.histogram_labels, hists), histograms=pick(batch.histograms, hists),
            histogram_sizes=pick(batch.histogram_sizes, hists),
            exemplar_labels=pick(batch.exemplar_labels, exemplars), exemplars=pick(batch.exemplars, exemplars),
            exemplar_sizes=pick(batch.exemplar_sizes, exemplars), dropped=dropped, series_key=None)

    def _refused(self, column: list[Labels], epoch: int) -> set[int]:
        """ids of the label tuples in `column` refused now (admitting the others, and noting them seen).

        The common case, every tuple known, costs three C-level passes (~0.1 µs a sample on a loaded 2-core VM): an id in `_known` is
        always its own tuple's, since the entry keeps that tuple alive. Last-seen epochs are written from
        `_seen` (ids of known tuples only, so it is bounded as `_known` is) once per epoch, not per sample."""
        ids = list(map(id, column))
        known = self._known
        if None not in list(map(known.get, ids)):
            self._seen.update(ids)
            return set()
        refused: set[int] = set()
        seen = self._seen
        previous = None
        for labels in column:
            if labels is previous:
                continue
            previous = labels
            key = id(labels)
            if key in known:
                seen.add(key)
            elif key not in refused and not self._admit(labels, epoch):
                refused.add(key)
        return refused

    def _admit(self, labels: Labels, epoch: int) -> bool:
        family, identity = _base(labels)
        table = self._families.get(family)
        if table is None:
            table = self._families[family] = {}
        if identity not in table:
            if len(table) >= self.max_series_per_metric or self._series >= self.max_series:
                if not table:
                    del self._families[family]
                return False
            self._series += 1
        table[identity] = epoch
        known = self._known
        if len(known) > 2 * self._series + 1024:  # label tuples not reused (a churning series cache): let go
            known.clear()
            self._clean.clear()  # their series are noted seen again through `known`
        known[id(labels)] = [labels, table, identity, epoch]
        return True

    def _expire(self, epoch: int) -> None:
        """Write down what the last epoch saw, then forget series last seen more than four epochs (idle_expiry)
        ago, and label tuples not seen since."""
        known = self._known
        seen_epoch = epoch - 1  # the epoch that just ended (after a pause with no batch, a later one than the
        # truth: a series is then kept a little longer, never forgotten early)
        for key in self._seen:
            found = known.get(key)
            if found is not None and found[3] < seen_epoch:
                found[3] = seen_epoch
                table, identity = found[1], found[2]
                if table.get(identity, seen_epoch) < seen_epoch:
                    table[identity] = seen_epoch
        self._seen = set()
        oldest = epoch - 4
        for family in list(self._families):
            table = self._families[family]
            stale = [identity for identity, seen in table.items() if seen < oldest]
            for identity in stale:
                del table[identity]
            self._series -= len(stale)
            self.expired += len(stale)
            if not table:
                del self._families[family]
        self._known = {key: found for key, found in self._known.items() if found[3] >= oldest}
