"""The in-memory queue: a byte-bounded FIFO of entries, lost at shutdown (the owner counts what is left).

`Lineup` is the order bookkeeping that the memory and the disk queue share (which entries wait, which are out
with the sender, which is the first not acknowledged); `MemoryQueue` adds the byte bound and `when_full`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from exporters.sending.queue import DropCallback, Entry, QueueFull, WhenFull

T = TypeVar("T")


class _Numbered(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def nbytes(self) -> int: ...


S = TypeVar("S", bound=_Numbered)


class Lineup(Generic[S]):
    """Which entries wait to be handed out, in seq order; which are out with the sender; which is the first not
    acknowledged. Knows nothing of bytes or files, so the memory and the disk queue keep one copy of the rules
    that order depends on (nacked entries go first; acknowledgements may come out of order).

    `ready` is kept sorted by seq: a put appends the largest seq, `put_back` merges, so "nack goes first" and
    "in order" are the same rule. Only entries that are out can be finished by `finish_out` (an ack of anything
    else is ignored, which makes a double ack harmless)."""

    def __init__(self) -> None:
        self._ready: deque[S] = deque()
        self._out: dict[int, S] = {}
        self._live: dict[int, S] = {}
        # Every live seq in seq order, plus seqs finished since: `first` pops those from the left. Amortized O(1)
        # whatever the gaps between seqs (a disk queue restarts with holes where acks came out of order).
        self._order: deque[int] = deque()
        self._readable = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._live)

    @property
    def waiting(self) -> int:
        """Entries not handed out."""
        return len(self._ready)

    def add(self, slot: S) -> None:
        """A new entry, whose seq is larger than any before."""
        self._ready.append(slot)
        self._live[slot.seq] = slot
        self._order.append(slot.seq)
        self._readable.set()

    def take(self, max_entries: int, max_bytes: int) -> list[S]:
        """The next waiting entries (at most `max_entries`, at most `max_bytes` unless the first alone is larger),
        now out with the sender."""
        taken: list[S] = []
        size = 0
        ready = self._ready
        while ready and len(taken) < max_entries:
            slot = ready[0]
            if taken and size + slot.nbytes > max_bytes:
                break
            ready.popleft()
            size += slot.nbytes
            self._out[slot.seq] = slot
            taken.append(slot)
        if not ready:
            self._readable.clear()
        return taken

    def is_out(self, seq: int) -> bool:
        return seq in self._out

    def drop_oldest_waiting(self) -> S:
        """Forget the oldest entry not handed out (the caller checked there is one) and return it."""
        slot = self._ready.popleft()
        del self._live[slot.seq]
        self._trim()
        if not self._ready:
            self._readable.clear()
        return slot

    def finish_out(self, seq: int) -> S | None:
        """Forget an entry that is out (acknowledged, or found unreadable); None if it is not out."""
        slot = self._out.pop(seq, None)
        if slot is not None:
            del self._live[seq]
            self._trim()
        return slot

    def _trim(self) -> None:
        """Forget finished seqs at the front of `_order`, so it holds no more than the span of live seqs."""
        order, live = self._order, self._live
        while order and order[0] not in live:
            order.popleft()

    def put_back(self, seqs: Iterable[int]) -> list[S]:
        """Entries that are out wait again, merged into the front in seq order; returns those that were out."""
        back = [slot for seq in seqs if (slot := self._out.pop(seq, None)) is not None]
        if not back:
            return back
        back.sort(key=lambda slot: slot.seq)
        ready = self._ready
        last = back[-1].seq
        merged = list(back)
        while ready and ready[0].seq < last:  # usually none: what is waiting is newer than what was out
            merged.append(ready.popleft())
        if len(merged) > len(back):
            merged.sort(key=lambda slot: slot.seq)
        ready.extendleft(reversed(merged))
        self._readable.set()
        return back

    def first(self) -> S | None:
        """The entry with the lowest seq not finished, out or waiting."""
        self._trim()
        return self._live[self._order[0]] if self._order else None

    def done_ranges(self, stop: int, limit: int) -> tuple[int, tuple[tuple[int, int], ...]]:
        """The first seq not finished (`stop` when none is), and at most `limit` half-open ranges of finished
        seqs between it and `stop`: what a disk queue persists so that entries acknowledged out of order do not
        come back after a restart. O(1) when nothing above the first was finished (acks in order), else
        O(entries not finished)."""
        seqs = iter(self._live)  # insertion order is seq order: `add` is called with growing seqs
        first = next(seqs, stop)
        if len(self._live) == stop - first:
            return first, ()
        ranges: list[tuple[int, int]] = []
        after = first + 1
        for seq in seqs:
            if seq > after:
                if len(ranges) == limit:
                    return first, tuple(ranges)
                ranges.append((after, seq))
            after = seq + 1
        if after < stop and len(ranges) < limit:
            ranges.append((after, stop))
        return first, tuple(ranges)

    def out(self) -> Iterable[S]:
        """The entries out with the sender (what dropping every waiting entry would leave)."""
        return self._out.values()

    async def wait(self) -> None:
        """Until something waits to be handed out or the lineup is closed."""
        while not self._ready and not self.closed:
            await self._readable.wait()

    def close(self) -> None:
        self.closed = True
        self._readable.set()


def check_get_bounds(max_entries: int, max_bytes: int) -> None:
    if max_entries < 1:
        raise ValueError(f"max_entries must be at least 1, got {max_entries}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must not be negative, got {max_bytes}")


def check_when_full(when_full: str) -> None:
    if when_full not in ("refuse", "drop_oldest"):
        raise ValueError(f"when_full must be 'refuse' or 'drop_oldest', got {when_full!r}")


class MemoryQueue(Generic[T]):
    """A FIFO of entries bounded by `max_memory`: the sum of `nbytes` of entries not acknowledged, those the
    sender holds included (they are alive until acknowledged, and come back on nack).

    When a put does not fit: `refuse` raises `QueueFull`; `drop_oldest` drops the oldest entries not handed out
    until it fits, reporting each to `on_drop(entry, "queue_full")`, and raises `QueueFull` (dropping nothing)
    when even dropping them all would not make room. An item larger than the whole bound is accepted when the
    queue is empty, so one big item never wedges the pipeline (and never empties a queue under drop_oldest).
    What is left at close is lost: the owner counts it (`len`)."""

    def __init__(self, max_memory: int, when_full: WhenFull = "refuse", on_drop: DropCallback[T] | None = None) -> None:
        if max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {max_memory}")
        check_when_full(when_full)
        self.max_memory = max_memory
        self.when_full: WhenFull = when_full
        self._on_drop = on_drop
        self._lineup: Lineup[Entry[T]] = Lineup()
        self._bytes = 0
        self._next_seq = 0
        self._count = 0

    def put(self, item: T, nbytes: int, created: float, count: int) -> Entry[T]:
        """Append an item; see the class docstring for what happens when it does not fit."""
        if self._lineup.closed:
            raise QueueFull("queue is closed")
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, got {nbytes}")
        self._make_room(nbytes)
        entry = Entry(self._next_seq, item, nbytes, created, count)
        self._next_seq += 1
        self._lineup.add(entry)
        self._bytes += nbytes
        self._count += count
        return entry

    def _make_room(self, nbytes: int) -> None:
        """Refuse, or drop the oldest waiting entries until `nbytes` fit. Nothing is dropped when dropping every
        waiting entry would still not make room (what is out with the sender fills the bound, or the item alone
        is larger than it): a put is refused rather than dropping data and refusing anyway."""
        lineup = self._lineup
        if self._bytes + nbytes <= self.max_memory or not len(lineup):
            return
        if self.when_full == "refuse" or sum(e.nbytes for e in lineup.out()) + nbytes > self.max_memory:
            raise QueueFull(
                f"memory queue full: {self._bytes} of max_memory {self.max_memory} bytes in use, "
                f"{nbytes} more do not fit"
            )
        while self._bytes + nbytes > self.max_memory and lineup.waiting:
            dropped = lineup.drop_oldest_waiting()
            self._bytes -= dropped.nbytes
            self._count -= dropped.count
            if self._on_drop is not None:
                self._on_drop(dropped, "queue_full")

    async def get(self, max_entries: int, max_bytes: int) -> list[Entry[T]]:
        """The next entries in order (waits for one); [] once closed and nothing waits."""
        check_get_bounds(max_entries, max_bytes)
        await self._lineup.wait()
        return self._lineup.take(max_entries, max_bytes)

    def ack(self, entries: Sequence[Entry[T]]) -> None:
        """Forget these; entries not out with the sender (or acknowledged already) are ignored."""
        for entry in entries:
            if self._lineup.finish_out(entry.seq) is not None:
                self._bytes -= entry.nbytes
                self._count -= entry.count

    def nack(self, entries: Sequence[Entry[T]]) -> None:
        """Hand these out again before anything newer."""
        self._lineup.put_back(entry.seq for entry in entries)

    def room(self) -> int:
        return max(0, self.max_memory - self._bytes)

    def reserve(self, nbytes: int) -> None:
        """Nothing to evict: what is held here is the only copy."""

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    @property
    def disk_bytes(self) -> int:
        return 0

    def oldest_created(self) -> float | None:
        """`created` of the first entry not acknowledged (lowest seq); None when empty."""
        first = self._lineup.first()
        return None if first is None else first.created

    @property
    def count(self) -> int:
        """Samples (or spans) in entries not acknowledged."""
        return self._count

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def __len__(self) -> int:
        return len(self._lineup)

    async def close(self) -> None:
        """Wake waiting gets; entries left are the owner's to count as lost. Safe twice."""
        self._lineup.close()
