"""Remembered decisions, so a late span follows its trace: kept if the trace was kept, dropped if not.

Bounded in bytes: each entry is charged its live cost, and the oldest decisions go first (FIFO through a
deque, since popping the front of a dict repeatedly degrades to O(n) scans in CPython).
"""

from __future__ import annotations

from collections import deque

# bytes key (16 B payload: 49), dict slot with hash (~40), deque slot (8), the value tuple (shared per
# decision kind, so ~0 per entry); rounded up.
ENTRY_BYTES = 112

DROPPED: tuple = ()


class DecisionCache:
    def __init__(self, max_bytes: int) -> None:
        self.capacity = max(1, max_bytes // ENTRY_BYTES)
        self._decisions: dict[bytes, tuple] = {}
        self._order: deque[bytes] = deque()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._decisions)

    @property
    def live_bytes(self) -> int:
        return len(self._decisions) * ENTRY_BYTES

    def get(self, trace_id: bytes) -> tuple | None:
        """None: undecided. DROPPED (empty, falsy): dropped. Otherwise the kept decision's tuple."""
        return self._decisions.get(trace_id)

    def put(self, trace_id: bytes, decision: tuple) -> None:
        if trace_id not in self._decisions:
            self._order.append(trace_id)
        self._decisions[trace_id] = decision
        while len(self._decisions) > self.capacity:
            oldest = self._order.popleft()
            if self._decisions.pop(oldest, None) is not None:
                self.evicted += 1

    def resize(self, max_bytes: int) -> None:
        self.capacity = max(1, max_bytes // ENTRY_BYTES)
