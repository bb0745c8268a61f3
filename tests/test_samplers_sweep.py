"""samplers/sweep.py: stale entries leave a heap a slice at a time; the heap stays a heap and live entries stay."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from samplers import sweep


def is_heap(heap: list) -> bool:
    return all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=300), st.integers(1, 40),
       st.lists(st.integers(0, 50), max_size=30))
def test_sweeps_remove_every_stale_entry_keep_every_live_one_and_leave_a_heap(items, budget, pushed):
    # Entries pushed between slices may move a stale one past the cursor: the next sweep takes it.
    heap = [(key, n) for n, (key, _) in enumerate(items)]
    heapq.heapify(heap)
    stale = {n for n, (_, dead) in enumerate(items) if dead}
    cursor = sweep.start(heap)
    steps = 0
    while cursor >= 0:
        cursor = sweep.sweep(heap, cursor, budget, lambda item: item[1] in stale)
        if steps < len(pushed):  # the owner pushes between slices
            heapq.heappush(heap, (pushed[steps], 1000 + steps))
        steps += 1
        assert is_heap(heap)
    assert {n for _, n in heap} >= {n for n in range(len(items)) if n not in stale}
    cursor = sweep.start(heap)
    while cursor >= 0:
        cursor = sweep.sweep(heap, cursor, budget, lambda item: item[1] in stale)
        assert is_heap(heap)
    live = {n for n in range(len(items)) if n not in stale} | {1000 + i for i in range(min(steps, len(pushed)))}
    assert {n for _, n in heap} == live
