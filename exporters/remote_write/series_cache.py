"""Series identity across `translate` calls: each series' labels built once, found again by what identifies it.

A node sends the same few hundred series every few seconds, each with one new data point. Building a label
set from a data point's attributes (reading each attribute through upb costs ~0.1 us per access, ~5 us for a
point with seven attributes) was ~60 % of the agent's CPU. A `SeriesCache` keeps, per series, its label
tuple and everything else that is a function of its identity (size estimate, limit verdict, staleness of
the key's flags), so that per data point translation is a dictionary lookup and an append.

What identifies a series: the resource (its serialized bytes), the scope (its serialized bytes), the metric
(name, unit, kind), the options of the call (limits, promoted keys), and the data point's attributes as
serialized bytes. Bytes rather than (key, value) strings because one `SerializeToString()` of a whole
metric and a slice per point cost less than reading the attributes one by one; see `translate`.

Bound and eviction: every entry is charged an estimate of its real memory (CPython object sizes of the key,
the entry, the label tuple, its pairs and values, plus the dictionary slots; `tests/test_remote_write_series_
cache.py` holds the estimate to tracemalloc's measure) and the total never exceeds `max_bytes`. Entries live
in two generations: lookups go to the young one, a hit in the old one moves the entry to the young one, and
when the young generation reaches half the bound the old one is dropped whole and the young one becomes old.
That is an approximate LRU whose hit costs one dict lookup (no per-hit bookkeeping); a working set that fits
in half the bound is never evicted.

Identity: while a series stays cached its label tuple is the same object in every batch, and equal label
sets built by different routes (a stale point's flags, reordered attributes, a rebuilt context) are
interned to one object. `series_id(labels)` gives that object a small int, stable while cached and never
reused, so that encoders can key per-series state by it.

Not thread-safe: one cache per exporter (endpoint), used from the event loop.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from typing import Any

from exporters.remote_write.series import Labels

DEFAULT_MAX_BYTES = 32 << 20
"""A node-exporter series with 11 labels is charged ~1.8 KB (`bench/translate_bench.py --workload node`: 11.5 MB
for 5,110 series and their contexts), so this keeps ~9k such series without evicting (half the bound)."""

# A dict slot: one 24-byte entry in the entries array, an index slot, and the 1/3 headroom dicts keep.
_DICT_SLOT = 56
_getsizeof = sys.getsizeof


def labels_bytes(labels: Labels) -> int:
    """Memory a label tuple holds: the tuple, its pairs and their values (names are shared across series)."""
    return _getsizeof(labels) + sum(_getsizeof(pair) + _getsizeof(value) for pair in labels for value in pair[1:])


class SeriesCache:
    """Series built by earlier `translate` calls, bounded in bytes; pass the same one to every call of one
    exporter (`translate(request, cache=cache)`). See the module docstring for what it keeps and evicts."""

    __slots__ = (
        "_canonical",
        "_ids",
        "_next_context",
        "_next_id",
        "_old",
        "_old_bytes",
        "_young_bytes",
        "evicted",
        "max_bytes",
        "rotations",
        "young",
    )

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.young: dict[Hashable, Any] = {}
        """The young generation. `translate` reads it directly on its hot path; anything else uses `get`."""
        self._old: dict[Hashable, Any] = {}
        self._young_bytes = 0
        self._old_bytes = 0
        self._canonical: dict[Labels, tuple[Labels, int]] = {}  # label set -> (the interned tuple, its id)
        self._ids: dict[int, int] = {}  # id() of an interned tuple (kept alive by _canonical) -> series id
        self._next_id = 0
        self._next_context = 0
        self.rotations = 0
        """Generations dropped so far: how often the cache evicted (for tests and diagnostics)."""
        self.evicted = 0
        """Entries dropped with their generation (not found again in the young one): self-telemetry."""

    @property
    def nbytes(self) -> int:
        """Estimated bytes held (never above `max_bytes`)."""
        return self._young_bytes + self._old_bytes

    def __len__(self) -> int:
        """Distinct entries held (series, plus a few per resource, scope and metric)."""
        return len(self.young) + sum(1 for key in self._old if key not in self.young)

    def series_id(self, labels: Labels) -> int | None:
        """A small int for a label tuple this cache returned (by identity), or None for any other tuple.

        Stable while the series stays cached; an evicted series that comes back gets a new id (ids are never
        reused), so state keyed by id can never be confused between two series.
        """
        return self._ids.get(id(labels))

    def get(self, key: Hashable) -> Any:
        """The value cached under `key`, or None; a hit in the old generation moves it to the young one."""
        value = self.young.get(key)
        if value is not None:
            return value
        value = self._old.get(key)
        if value is not None:
            self.put(key, value, value[-1] if type(value) is tuple else value.nbytes)
        return value

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keep `value` (whose own estimate is `nbytes`, dictionary slot and key excluded) under `key`.

        A value larger than half the bound is not kept: it would evict everything else.
        """
        nbytes += _DICT_SLOT + _getsizeof(key)
        half = self.max_bytes >> 1
        if nbytes > half:
            return
        if self._young_bytes + nbytes > half:
            self._rotate()
        self.young[key] = value
        self._young_bytes += nbytes

    def charge(self, nbytes: int) -> bool:
        """Count bytes added to a value already kept (a histogram's derived label sets), rotating first when
        due. False (nothing counted) when they are more than half the bound: the caller must not keep them."""
        half = self.max_bytes >> 1
        if nbytes > half:
            return False
        if self._young_bytes + nbytes > half:
            self._rotate()
        self._young_bytes += nbytes
        return True

    def context_id(self) -> int:
        """A number for a new resource, scope or metric context; never reused, so series keyed under an
        evicted context can never be found under its replacement."""
        self._next_context += 1
        return self._next_context

    def intern(self, labels: Labels) -> Labels:
        """The one tuple this cache uses for `labels` (built now or earlier), and give it a series id."""
        found = self._canonical.get(labels)
        if found is not None:
            return found[0]
        self._next_id += 1
        self._canonical[labels] = (labels, self._next_id)
        self._ids[id(labels)] = self._next_id
        return labels

    def _rotate(self) -> None:
        """Drop the old generation; the young one becomes old. Interned tuples no entry holds any longer go too."""
        self.rotations += 1
        young = self.young
        self.evicted += sum(1 for key in self._old if key not in young)
        self._old, self._old_bytes = self.young, self._young_bytes
        self.young, self._young_bytes = {}, 0
        canonical = self._canonical
        kept: dict[Labels, tuple[Labels, int]] = {}
        for value in self._old.values():
            for labels in _held_labels(value):
                found = canonical.get(labels)
                if found is not None and found[0] is labels:
                    kept[labels] = found
        self._canonical = kept
        self._ids = {id(labels): sid for labels, sid in kept.values()}


INTERNED_BYTES = 2 * _DICT_SLOT + 64
"""What interning one label set costs: a slot in each of two dicts, an (labels, id) tuple and the id."""


def _held_labels(value: Any) -> tuple[Labels, ...]:
    if type(value) is tuple:
        return (value[0],) if value[0] else ()
    held = getattr(value, "held_labels", None)
    return held() if held is not None else ()
