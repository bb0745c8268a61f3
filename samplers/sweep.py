"""Taking stale entries out of a heap a slice at a time, so that no call walks the whole heap.

    cursor = start(heap)                                   # when the heap holds too many stale entries
    while cursor >= 0:                                     # ...one slice per call of the caller, e.g. per request
        cursor = sweep(heap, cursor, budget=4096, stale=lambda item: item[1] not in live)

The tail sampler keeps heaps with lazy deletion (an entry whose trace was decided, evicted or rescheduled stays
until it is popped). Where entries are not popped soon (the schedule of evicted traces: up to decision_wait;
the eviction index of decided traces) they must be taken out, and rebuilding a heap of 100k entries at once
blocks the event loop for tens of milliseconds. Here the heap is walked from its end towards its root, `budget`
positions per call; a stale entry is replaced by the last one and both sifts restore the heap (O(log n)).
Entries the caller pushes or pops between calls may move past the cursor: a stale one missed so is taken by
the next sweep, and a live one is never taken (staleness is checked when an entry is removed).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

# CPython's heapq helpers (pure Python fallbacks exist, same signatures): restore the heap below, then above, `i`.
_siftup = heapq._siftup  # type: ignore[attr-defined]
_siftdown = heapq._siftdown  # type: ignore[attr-defined]


def start(heap: list) -> int:
    """The cursor of a sweep over `heap`: its last position."""
    return len(heap) - 1


def sweep(heap: list, cursor: int, budget: int, stale: Callable[[Any], bool]) -> int:
    """Look at up to `budget` positions from `cursor` down, removing the stale entries; the next cursor, or -1
    when the sweep reached the root."""
    i = min(cursor, len(heap) - 1)
    stop = max(-1, i - budget)
    while i > stop:
        if stale(heap[i]):
            last = heap.pop()
            if i < len(heap):
                heap[i] = last
                _siftup(heap, i)
                _siftdown(heap, 0, i)
        i -= 1
    return i
