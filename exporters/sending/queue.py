"""The queue link of the sending chain (docs/architecture.md, "the sending chain", link 2): what waits between
the batcher and the sender, in memory or in segment files on disk.

A queue holds *entries*: self-contained items (a remote-write `SampleBatch`, a serialized OTLP request) with a
sequence number, their estimated size and the wall-clock time of their oldest data. It hands entries out in
order, and forgets one only when the sender acknowledges it. It never decides retries: the sender keeps an
entry it is retrying, and gives back (`nack`) what it could not finish at shutdown.

Every entry ends in one outcome the owner counts: acknowledged (delivered, or dropped by the sender for a
reason it counts), dropped by the queue itself under `when_full: drop_oldest` (reported through `on_drop`),
or left in the queue at shutdown (memory: lost and counted by the owner; disk: delivered after restart).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

T = TypeVar("T")

WhenFull = Literal["refuse", "drop_oldest"]


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """One queued item. `seq` grows by one per `put` over the queue's whole life (across restarts for a disk
    queue); `nbytes` is the owner's size estimate, what the memory bound counts; `created` is the wall-clock
    time (seconds since the epoch) of the item's oldest data, for `sample_age_limit` and the oldest-age gauge;
    `count` is how many samples or spans it holds, for counting outcomes."""

    seq: int
    item: T
    nbytes: int
    created: float
    count: int


class QueueFull(Exception):
    """`put` under `when_full: refuse` with no room left: the caller keeps the data (and tells its client to
    retry later). The message says which bound was reached."""


class Queue(Protocol[T]):
    """What the sender and the exporter see of a queue, memory or disk."""

    def put(self, item: T, nbytes: int, created: float, count: int) -> Entry[T]:
        """Append an item. Raises `QueueFull` under `refuse` when it does not fit; under `drop_oldest`, makes
        room by dropping the oldest entries not handed out, each reported to `on_drop`."""
        ...

    async def get(self, max_entries: int, max_bytes: int) -> list[Entry[T]]:
        """The next entries in order, not yet handed out: at least one (waits for it), at most `max_entries`, and
        no more than `max_bytes` of `nbytes` unless the first alone is larger. Returns [] once `close` was called
        and nothing is left to hand out."""
        ...

    def ack(self, entries: Sequence[Entry[T]]) -> None:
        """Done with these (delivered, or dropped and counted by the sender): forget them. Entries may be
        acknowledged out of order; the persisted position only moves past an entry once everything before it is
        acknowledged too."""
        ...

    def nack(self, entries: Sequence[Entry[T]]) -> None:
        """Not done: hand these out again, before anything newer."""
        ...

    def room(self) -> int:
        """Bytes that can still be put before `put` refuses or drops (counting both bounds)."""
        ...

    def reserve(self, nbytes: int) -> None:
        """The owner holds `nbytes` in memory outside the queue (a pending flush, requests waiting for room):
        a queue that can evict keeps what it holds plus these within `max_memory`, so one bound covers the
        endpoint's memory. A memory-only queue cannot evict and ignores it."""
        ...

    @property
    def memory_bytes(self) -> int: ...

    @property
    def disk_bytes(self) -> int: ...

    @property
    def count(self) -> int:
        """Sum of `count` over entries not acknowledged (samples or spans waiting or in flight)."""
        ...

    @property
    def next_seq(self) -> int:
        """The seq the next `put` gets: entries below it that a new queue hands out were put before a restart."""
        ...

    def oldest_created(self) -> float | None:
        """`created` of the oldest entry not acknowledged; None when empty."""
        ...

    def __len__(self) -> int:
        """Entries not acknowledged (handed out or not)."""
        ...

    async def close(self) -> None:
        """Stop: wake waiting `get`s (they return []), write and fsync what is pending, persist the position.
        Entries not acknowledged stay (on disk) for the next start."""
        ...


class SegmentWriter(Protocol[T]):
    def encode(self, item: T) -> bytes:
        """The record for `item`. May refer to what earlier records of the same segment defined (a label
        dictionary), never to another segment."""
        ...


class SegmentReader(Protocol[T]):
    def learn(self, record: bytes) -> None:
        """A record of this segment that is not decoded (before the send position, or served from memory):
        take what it defines, so later records can be decoded."""
        ...

    def decode(self, record: bytes) -> T:
        """The item a record holds; raises ValueError when it cannot be read (then it is counted and skipped)."""
        ...


class SegmentCodec(Protocol[T]):
    """How a disk queue turns items into records and back; a new writer and reader per segment file."""

    def writer(self) -> SegmentWriter[T]: ...

    def reader(self) -> SegmentReader[T]: ...


DropCallback = Callable[[Entry[T], str], None]
"""Told of every entry the queue drops on its own, with the reason (`queue_full`, `corrupt`)."""


@dataclass(frozen=True)
class QueueSettings:
    """Where one endpoint's queue lives and how big it may grow.

        QueueSettings(max_memory=64 << 20, max_disk=1 << 30, when_full="refuse", directory=Path("data/queue/prom"))

    `directory` None, or `max_disk` 0, keeps the queue in memory only (lost at a restart, counted). Under
    `refuse` a full queue makes the agent refuse new data upstream (429 / RESOURCE_EXHAUSTED); under
    `drop_oldest` it drops its oldest entries, counted, to make room.
    """

    max_memory: int = 64 << 20
    max_disk: int = 1 << 30
    when_full: WhenFull = "refuse"
    directory: Path | None = None

    def __post_init__(self) -> None:
        if self.max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {self.max_memory}")
        if self.max_disk < 0:
            raise ValueError(f"max_disk must not be negative, got {self.max_disk}")
        if self.when_full not in ("refuse", "drop_oldest"):
            raise ValueError(f"when_full must be refuse or drop_oldest, got {self.when_full!r}")

    @property
    def durable(self) -> bool:
        return self.directory is not None and self.max_disk > 0
