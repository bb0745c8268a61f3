"""The disk queue: entries kept in segment files so that what was not acknowledged is delivered after a restart
or a crash. Modelled on VictoriaMetrics' lib/persistentqueue (a file layer, `segments.py`, under a front that
serves from memory), except that it degrades and counts where VictoriaMetrics panics: a full disk, a missing
position file, a torn or corrupt record are reported through `on_error` / `on_drop` and the queue goes on.

    queue = DiskQueue(directory, BytesCodec(), max_memory=64 << 20, max_disk=1 << 30)
    await queue.open()          # scans the directory in a thread; restores what was not acknowledged
    queue.put(item, nbytes, created, count)
    entries = await queue.get(max_entries, max_bytes) ... queue.ack(entries)
    await queue.flush()         # everything put before is on disk (the exporter at shutdown; tests)
    await queue.close()

How it stays off the event loop: `put` only appends to memory and to a pending list. A writer task wakes every
`sync_interval` seconds (sooner when pending bytes pass a threshold or `flush` asks), and in one thread call
persists the position (batched, never per ack), deletes segments whose entries are all done, then encodes,
appends and fsyncs the pending entries. A cycle with nothing to do for the files makes no thread call.
Reading back evicted items is another thread call.

Durability: an entry is on disk after the cycle that follows its put (at most `sync_interval` later, or when
`flush` returns); a crash before that loses it, and an entry acknowledged before its cycle is never written at
all (a sender that keeps up costs no disk writes). What a crash keeps: the entries written, less those done
by the last persisted state, which is the position (first seq not done) and the ranges of seqs done above it
(acknowledged out of order, dropped, found corrupt), so an entry acknowledged before the last cycle is not sent
again. Persisting the ranges walks the entries not done when acks came out of order: O(entries queued) once
per cycle. The position is persisted only when a restart would read it differently: when an entry whose
record is on disk was done since the last write (or a segment is to go, or nothing was persisted yet). An entry
done before it was written has no record a restart could hand out again, so with a sender that keeps up
nothing is written at all, the position file included (its write, two fsyncs and a rename cost ~0.6 ms of
CPU a cycle, each second, in bench/remote_write.py). Seqs still grow across restarts: the scan at open takes
`next_seq` past every record on disk, and a segment is deleted only after `next_seq` was persisted.

Memory: an entry keeps its item in memory until written; once written, items of entries waiting to be handed
out are evicted newest first (the head is sent soon) whenever the items held pass `max_memory`, and read back
from disk when `get` reaches them. Entries not yet written cannot be evicted: when they alone fill
`max_memory`, `room()` is 0. Items handed out are the sender's; `memory_bytes` counts only what the queue holds.

Bounds: `max_memory` (bytes of items not yet written) and `max_disk` (bytes of segment files holding an entry
not done, plus an estimate `nbytes + header` for entries not yet written). A segment is deleted, at the next
cycle, once every entry in it is acknowledged or dropped; `drop_oldest` therefore frees disk a segment at a
time, which is why `segment_bytes` is capped at a quarter of `max_disk`.

Write errors (ENOSPC, EIO, anything): reported once per kind through `on_error` until a cycle succeeds again;
the entries stay in memory and are retried at the next cycle; meanwhile `room()` is 0, so under `refuse` every
put raises `QueueFull`, and under `drop_oldest` the queue keeps to `max_memory` by dropping the oldest.

Broken files, found at `open` (torn tails, unreadable headers: the scan reads headers only) or when a record is
read back (crc mismatch, a record the codec refuses): each is reported to `on_drop(entry, "corrupt")` and
skipped. The entry carries the header's seq, sizes and count when the header is sane (magic byte, growing seq,
sizes not negative), else seq -1 and count 0 (a header that cannot be read says nothing of what was lost; a
wrong magic byte or length also hides the rest of its segment, reported as one such entry). A record whose crc
fails is reported once it is read; should the process die before the next cycle persists that it is done, it
is reported again after the restart.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from exporters.sending.memory_queue import Lineup, check_get_bounds, check_when_full
from exporters.sending.queue import (
    DropCallback,
    Entry,
    QueueFull,
    SegmentCodec,
    WhenFull,
)
from exporters.sending.segments import (
    HEADER,
    MAX_DONE_RANGES,
    AppendOutcome,
    Pending,
    Progress,
    RecordHeader,
    RecordUnreadable,
    Segment,
    SegmentAppender,
    SegmentReaders,
    Write,
    scan_directory,
    write_position,
)

T = TypeVar("T")

SEQ_BLOCK = 1 << 16
"""Seqs are reserved this many at a time: the persisted `next_seq` is a block ahead of the last seq handed out, so
seqs keep growing across a crash even when the entries since the last persist were acknowledged before being
written (and so never caused one), at the cost of one position write per block of puts."""

MIN_SEGMENT_CAP = 4096
"""`segment_bytes` is capped at `max_disk // 4` but not below this (an explicit smaller value is kept)."""

_ABSENT: Any = object()


@dataclass(eq=False, slots=True)
class _Slot:
    """The queue's record of one entry. `item` is `_ABSENT` when only the disk has it; `segment`/`index` say
    where once written; `done` once acknowledged or dropped (the writer skips it, its segment may go)."""

    seq: int
    nbytes: int
    created: float
    count: int
    item: Any = _ABSENT
    segment: Segment | None = None
    index: int = -1
    done: bool = False
    unwritable: bool = False

    def entry(self, item: Any) -> Entry[Any]:
        return Entry(self.seq, item, self.nbytes, self.created, self.count)


@dataclass
class _CycleOutcome:
    persisted: Progress | None
    deleted: list[Segment]
    appended: AppendOutcome
    problems: list[tuple[str, str]]


def _placeholder(header: RecordHeader | None) -> Entry[Any]:
    """What `on_drop(..., "corrupt")` gets for a broken record: the header's fields when the header is sane
    (its count is then what was lost), else seq -1 and count 0 (the loss cannot be told)."""
    if header is None:
        return Entry(-1, None, 0, 0.0, 0)
    return Entry(header.seq, None, header.nbytes, header.created, header.count)


class QueueLocked(OSError):
    """Another process holds the queue directory: two writers would corrupt it."""


def _lock_directory(directory: Path) -> int:
    """Create the directory and hold an exclusive flock on its `lock` file for as long as the queue is open; the
    kernel releases it when the process dies, so a crash leaves nothing to clean up (VictoriaMetrics does
    the same; without it a second agent with the same state_dir would interleave records)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QueueLocked(f"the queue in {directory} is in use by another process (another agent with the same "
                          f"state_dir?)") from None
    return fd


class DiskQueue(Generic[T]):
    """A `Queue[T]` in segment files under `directory`; see the module docstring. Build it, then
    `await open()`; `close()` is safe without `open` and twice. Entries not acknowledged at close (or at a
    crash, from the last persisted position on) are handed out again after the next `open`, in seq order."""

    def __init__(
        self,
        directory: Path,
        codec: SegmentCodec[T],
        *,
        max_memory: int,
        max_disk: int,
        when_full: WhenFull = "refuse",
        segment_bytes: int = 32 << 20,
        sync_interval: float = 1.0,
        on_drop: DropCallback[T] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {max_memory}")
        if max_disk <= 0:
            raise ValueError(f"max_disk must be positive, got {max_disk}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        if sync_interval <= 0:
            raise ValueError(f"sync_interval must be positive, got {sync_interval}")
        check_when_full(when_full)
        self.directory = Path(directory)
        self.max_memory = max_memory
        self.max_disk = max_disk
        self.when_full: WhenFull = when_full
        self.segment_bytes = min(segment_bytes, max(max_disk // 4, MIN_SEGMENT_CAP))
        self.sync_interval = sync_interval
        self._codec = codec
        self._on_drop = on_drop
        self._on_error = on_error
        # Test seam: the os.write of segment appends and position writes. Replace it to simulate a full disk.
        self._write: Write = os.write
        self._appender = SegmentAppender(self.directory, codec, self.segment_bytes, lambda fd, b: self._write(fd, b))
        self._readers = SegmentReaders(codec)
        self._read_lock = asyncio.Lock()
        self._write_threshold = max(1, min(max_memory // 4, self.segment_bytes))

        self._lineup: Lineup[_Slot] = Lineup()
        self._segments: dict[int, Segment] = {}
        self._pending: list[_Slot] = []
        self._unwritten_bytes = 0  # entries not done whose record is not on disk (pending or being written)
        self._unwritten_count = 0
        self._held_bytes = 0  # items the queue holds in memory
        self._reserved = 0  # bytes the owner holds in memory outside the queue (see `reserve`)
        self._evictable: dict[int, _Slot] = {}  # written, held, waiting; in seq order, evicted from the end
        self._live_disk = 0  # sizes of segments with an entry not done
        self._next_seq = 0
        self._seq_reserved = 0  # the next_seq last persisted: seqs below it cannot come again after a crash
        self._count = 0  # sum of `count` over entries not done
        self._persisted: Progress | None = None
        self._finished = 0  # entries done so far whose record is on disk: a restart reads the position for these
        self._finished_persisted = 0  # what the position file says at open (else `_persisted` is None)
        self._failing = False
        self._reported: set[str] = set()

        self._task: asyncio.Task[None] | None = None
        self._lock: int | None = None  # the directory's lock file, held from open to close
        self._work = asyncio.Event()  # something may need writing, persisting or deleting
        self._now = asyncio.Event()  # ... and it should not wait for sync_interval
        self._stopping = False
        self._closed = False
        self._cycles_started = 0
        self._in_cycle = False  # a cycle is between its start and its end (its thread call in flight)
        self._batching = False  # the writer waits out sync_interval before its next cycle
        self._flush_waiters: list[tuple[int, asyncio.Future[bool]]] = []

    # ----------------------------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Scan the directory (in a thread; created if missing), restore every entry not done by the persisted
        state (items stay on disk until `get` reaches them), report broken records to `on_drop(..., "corrupt")`,
        start the writer. Raises OSError only when the directory cannot be created or listed."""
        if self._task is not None or self._closed:
            raise RuntimeError(f"DiskQueue({self.directory}): open() once, before close()")
        self._lock = await asyncio.to_thread(_lock_directory, self.directory)
        scan = await asyncio.to_thread(scan_directory, self.directory, lambda fd, b: self._write(fd, b), SEQ_BLOCK)
        for kind, message in scan.problems:
            self._report(kind, message)
        for segment in scan.segments:
            self._segments[segment.first_seq] = segment
        for segment, index, header in scan.restored:
            slot = _Slot(header.seq, header.nbytes, header.created, header.count, segment=segment, index=index)
            self._lineup.add(slot)
            self._count += slot.count
            self._set_live(segment, segment.live + 1)
        for header in scan.corrupt:
            self._tell_drop(_placeholder(header), "corrupt")
        self._next_seq = scan.progress.next_seq
        self._persisted = scan.progress if scan.persisted else None
        self._seq_reserved = scan.reserved if scan.persisted else 0
        self._task = asyncio.create_task(self._run_writer(), name=f"DiskQueue writer {self.directory}")

    async def flush(self) -> bool:
        """Wait until everything put before the call is written and fsynced, and the position persisted as far
        as a restart needs it (see the module docstring: entries done before they were written need nothing).
        False when that cycle failed to write (reported through `on_error`; the entries stay in memory and are
        retried). Returns at once after close."""
        if self._task is None or self._stopping:
            return not self._failing
        if self._settled():
            if self._batching:  # nothing left to batch: the next put starts a new interval, so the one running
                self._now.set()  # now cannot end just after that put and write it before the owner's grace
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((self._cycles_started + 1, waiter))
        self._work.set()
        self._now.set()
        return await waiter

    async def close(self) -> None:
        """Wake waiting gets (they return []), stop the writer, write and fsync what is pending, persist the
        position. What is not acknowledged stays on disk for the next `open`."""
        if self._closed:
            return
        self._closed = True
        self._lineup.close()
        if self._task is None:
            return
        try:
            await self._close_files()
        finally:
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None

    async def _close_files(self) -> None:
        self._stopping = True
        self._work.set()
        self._now.set()
        try:
            await self._task
        except Exception as error:  # the writer died of a bug; still try to write what is pending
            self._report("writer", f"disk queue {self.directory}: writer failed: {error!r}")
        await self._cycle(final=True)
        if self._unwritten_count:
            self._report("close", f"{self._unwritten_count} entries could not be written before close and are lost")
        for _, waiter in self._flush_waiters:
            if not waiter.done():
                waiter.set_result(not self._failing)
        self._flush_waiters.clear()

    # ----------------------------------------------------------------------------------------------------------
    # The queue
    # ----------------------------------------------------------------------------------------------------------

    def put(self, item: T, nbytes: int, created: float, count: int) -> Entry[T]:
        """Append an item to memory and to the pending writes; see the module docstring for when it does not fit."""
        if self._task is None or self._closed:
            raise QueueFull(f"disk queue {self.directory} is {'closed' if self._closed else 'not open'}")
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, got {nbytes}")
        self._make_room(nbytes)
        slot = _Slot(self._next_seq, nbytes, created, count, item=item)
        self._next_seq += 1
        self._lineup.add(slot)
        self._count += count
        self._pending.append(slot)
        self._unwritten_bytes += nbytes
        self._unwritten_count += 1
        self._held_bytes += nbytes
        self._work.set()
        if self._unwritten_bytes >= self._write_threshold:
            self._now.set()
        self._evict()
        return slot.entry(item)

    async def get(self, max_entries: int, max_bytes: int) -> list[Entry[T]]:
        """The next entries in order (waits for one), items evicted from memory read back in a thread; a record
        that cannot be read is reported to `on_drop(..., "corrupt")` and skipped. [] once closed and nothing
        waits."""
        check_get_bounds(max_entries, max_bytes)
        while True:
            await self._lineup.wait()
            slots = self._lineup.take(max_entries, max_bytes)
            if not slots:
                return []
            # Out now: the items held are taken before any await, as an eviction or a write finished meanwhile
            # lets go of what the queue holds of entries that are out.
            items = {slot.seq: slot.item for slot in slots if slot.item is not _ABSENT}
            for slot in slots:
                self._evictable.pop(slot.seq, None)
            on_disk = [slot for slot in slots if slot.seq not in items]
            if on_disk:
                try:
                    async with self._read_lock:
                        read = await asyncio.to_thread(self._readers.read, [(s.segment, s.index) for s in on_disk])
                except BaseException:  # cancelled while reading: nobody got these, so they wait again
                    self._wait_again(self._lineup.put_back(slot.seq for slot in slots))
                    raise
                for slot, item in zip(on_disk, read):
                    if isinstance(item, RecordUnreadable):
                        self._unreadable(slot, item)
                    else:
                        items[slot.seq] = item
            entries: list[Entry[T]] = []
            for slot in slots:
                if slot.done:
                    continue
                entries.append(slot.entry(items[slot.seq]))
                if slot.segment is not None:  # written: the sender holds the item now
                    self._release(slot)
            if entries:
                return entries

    def ack(self, entries: Sequence[Entry[T]]) -> None:
        """Done with these; the position moves at the next cycle. Entries not out (or acknowledged already) are
        ignored."""
        finished = self._finished
        for entry in entries:
            slot = self._lineup.finish_out(entry.seq)
            if slot is not None:
                self._finish(slot)
        if self._finished != finished:  # a record on disk is done: the position must say so (entries never
            self._work.set()  # written need nothing: their pending write is skipped when a cycle comes)

    def nack(self, entries: Sequence[Entry[T]]) -> None:
        """Hand these out again before anything newer; their items are held in memory again (or evicted)."""
        items = {entry.seq: entry.item for entry in entries}
        back = self._lineup.put_back(items)
        for slot in back:
            if slot.item is _ABSENT:
                slot.item = items[slot.seq]
                self._held_bytes += slot.nbytes
        self._wait_again(back)

    def _wait_again(self, back: list[_Slot]) -> None:
        """Entries put back to wait: those written and held can be evicted again, in seq order with the rest."""
        evictable = [slot for slot in back if slot.segment is not None and slot.item is not _ABSENT]
        if evictable:
            self._evictable.update((slot.seq, slot) for slot in evictable)
            self._evictable = dict(sorted(self._evictable.items()))
        self._evict()

    def room(self) -> int:
        """Bytes that fit before `put` refuses or drops; 0 while writes fail or after close."""
        if self._failing or self._closed:
            return 0
        memory = self.max_memory - self._unwritten_bytes
        disk = self.max_disk - self._disk_needed(0)
        return max(0, min(memory, disk))

    def reserve(self, nbytes: int) -> None:
        """The owner holds `nbytes` in memory outside the queue (the exporter's pending flush): written items
        are evicted until they and these fit in `max_memory`, so the endpoint's memory, not only the queue's,
        stays within the bound (items not yet written cannot go until their write)."""
        self._reserved = max(0, nbytes)
        if self._held_bytes + self._reserved > self.max_memory:
            self._evict()

    @property
    def memory_bytes(self) -> int:
        """Bytes (`nbytes`) of the items the queue holds in memory, not those handed out."""
        return self._held_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of segment files, including those whose entries are all done and that go at the next cycle."""
        return sum(segment.size for segment in self._segments.values())

    def oldest_created(self) -> float | None:
        """`created` of the first entry not acknowledged (lowest seq); None when empty."""
        first = self._lineup.first()
        return None if first is None else first.created

    def __len__(self) -> int:
        return len(self._lineup)

    @property
    def count(self) -> int:
        """Samples (or spans) in entries not acknowledged."""
        return self._count

    @property
    def next_seq(self) -> int:
        """The seq of the next put: entries below it handed out after `open` were put before the restart."""
        return self._next_seq

    # ----------------------------------------------------------------------------------------------------------
    # Room, drops, memory
    # ----------------------------------------------------------------------------------------------------------

    def _disk_needed(self, nbytes: int) -> int:
        """Disk bytes in use, with the estimate for what is not written yet, once `nbytes` more are put."""
        current = self._appender.current
        kept = current.size if current is not None and current.live == 0 and not current.deleted else 0
        return kept + self._live_disk + self._unwritten_bytes + nbytes + HEADER.size * (self._unwritten_count + 1)

    def _fits(self, nbytes: int) -> bool:
        if self._unwritten_bytes + nbytes > self.max_memory:
            return False
        return self._failing or self._disk_needed(nbytes) <= self.max_disk

    def _full_message(self, nbytes: int) -> str:
        if self._failing:
            return f"disk queue {self.directory}: writing to disk fails, {self._unwritten_bytes} bytes wait in memory"
        if self._unwritten_bytes + nbytes > self.max_memory:
            return (f"disk queue {self.directory}: max_memory {self.max_memory} bytes reached by entries not yet "
                    f"written ({self._unwritten_bytes} bytes), {nbytes} more do not fit")
        return (f"disk queue {self.directory}: max_disk {self.max_disk} bytes reached "
                f"({self._disk_needed(0)} in use or pending), {nbytes} more do not fit")

    def _make_room(self, nbytes: int) -> None:
        """Refuse, or drop the oldest waiting entries until `nbytes` fit. Nothing is dropped when dropping every
        waiting entry would still not make room (entries out with the sender pin memory and segments, or the
        item alone is larger than a bound): a put is refused rather than dropping data and refusing anyway."""
        if self._failing and self.when_full == "refuse":
            raise QueueFull(self._full_message(nbytes))
        lineup = self._lineup
        if not len(lineup) or self._fits(nbytes):
            return
        if self.when_full == "refuse" or not self._fits_without_waiting(nbytes):
            raise QueueFull(self._full_message(nbytes))
        while lineup.waiting and not self._fits(nbytes):
            slot = lineup.drop_oldest_waiting()
            entry = slot.entry(None if slot.item is _ABSENT else slot.item)
            self._finish(slot)
            self._tell_drop(entry, "queue_full")

    def _fits_without_waiting(self, nbytes: int) -> bool:
        """Whether `nbytes` would fit once every waiting entry is dropped: only entries out with the sender
        would be left, with their unwritten bytes and the segments they keep. O(entries out)."""
        out = list(self._lineup.out())
        unwritten = [slot.nbytes for slot in out if slot.segment is None and not slot.unwritable]
        if sum(unwritten) + nbytes > self.max_memory:
            return False
        if self._failing:
            return True
        pinned = {id(slot.segment): slot.segment.size for slot in out if slot.segment is not None}
        disk = sum(pinned.values()) + sum(unwritten) + nbytes + HEADER.size * (len(unwritten) + 1)
        return disk <= self.max_disk

    def _finish(self, slot: _Slot) -> None:
        """An entry is done (acknowledged or dropped): let go of its memory, its pending write, its record."""
        slot.done = True
        self._count -= slot.count
        self._release(slot)
        if slot.segment is not None:
            self._finished += 1
            self._set_live(slot.segment, slot.segment.live - 1)
        elif not slot.unwritable:
            self._unwritten_bytes -= slot.nbytes
            self._unwritten_count -= 1

    def _release(self, slot: _Slot) -> None:
        if slot.item is not _ABSENT:
            slot.item = _ABSENT
            self._held_bytes -= slot.nbytes
            self._evictable.pop(slot.seq, None)

    def _evict(self) -> None:
        """Drop written items of waiting entries from memory, newest first, until they and the owner's reserved
        bytes are under max_memory."""
        evictable = self._evictable
        limit = self.max_memory - self._reserved
        while self._held_bytes > limit and evictable:
            _, slot = evictable.popitem()
            slot.item = _ABSENT
            self._held_bytes -= slot.nbytes

    def _set_live(self, segment: Segment, live: int) -> None:
        if segment.live == 0 and live > 0:
            self._live_disk += segment.size
        elif segment.live > 0 and live == 0:
            self._live_disk -= segment.size
        segment.live = live

    def _set_size(self, segment: Segment, size: int) -> None:
        if segment.live > 0:
            self._live_disk += size - segment.size
        segment.size = size

    def _unreadable(self, slot: _Slot, problem: RecordUnreadable) -> None:
        if problem.io:
            self._report("read", str(problem))
        self._lineup.finish_out(slot.seq)
        self._finish(slot)
        self._tell_drop(slot.entry(None), "corrupt")

    def _tell_drop(self, entry: Entry[Any], reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(entry, reason)

    def _report(self, kind: str, message: str) -> None:
        """Tell `on_error` once per kind of problem until a cycle succeeds again."""
        if kind in self._reported:
            return
        self._reported.add(kind)
        if self._on_error is not None:
            self._on_error(message)

    # ----------------------------------------------------------------------------------------------------------
    # The writer
    # ----------------------------------------------------------------------------------------------------------

    async def _run_writer(self) -> None:
        """Cycles until close: when there is work, batch for sync_interval (or less, when asked), then one cycle.
        A cancelled task (the loop ending without close, as at a kill) writes nothing more."""
        while not self._stopping:
            await self._work.wait()
            self._batching = True
            try:  # not asyncio.wait_for: in 3.11 it swallows a cancel that comes as `_now` is set (a kill hangs)
                async with asyncio.timeout(self.sync_interval):
                    await self._now.wait()
            except TimeoutError:
                pass
            finally:
                self._batching = False
            if self._stopping:
                break
            self._work.clear()
            self._now.clear()
            await self._cycle()

    def _settled(self) -> bool:
        """Whether the files hold what they should: nothing to write, persist or delete, no cycle in flight and
        none failing. A flush then has nothing to wait for (a sender that keeps up: every entry acknowledged
        within the write grace)."""
        if self._in_cycle or self._failing or self._persisted is None or self._unwritten_count:
            return False
        if self._next_seq > self._seq_reserved:
            return False
        if self._finished != self._finished_persisted:
            return False
        current = self._appender.current
        return not any(segment.live == 0 and segment is not current for segment in self._segments.values())

    def _progress(self) -> Progress:
        position, done = self._lineup.done_ranges(self._next_seq, MAX_DONE_RANGES)
        return Progress(position, self._next_seq + SEQ_BLOCK, done)  # see SEQ_BLOCK

    async def _cycle(self, final: bool = False) -> None:
        """Persist the position, delete finished segments, write pending entries, in that order (deleting
        first keeps the files under max_disk; persisting first keeps seqs growing across restarts)."""
        self._cycles_started += 1
        self._in_cycle = True
        number = self._cycles_started
        batch = [slot for slot in self._pending if not slot.done]
        self._pending = []
        # The segment being appended to stays while it has room, even with every entry done: deleting it would
        # start the next write on a new segment whose codec dictionary starts empty (with a sender that keeps
        # up, every write then carried every label set again: ~30% of the agent's CPU at a 1 s flush).
        current = self._appender.current
        doomed = [segment for segment in self._segments.values()
                  if segment.live == 0 and (segment is not current or final)]
        finished = self._finished
        persist = (final or bool(doomed) or self._failing or self._persisted is None
                   or finished != self._finished_persisted or self._next_seq > self._seq_reserved)
        if batch or persist:
            records = [Pending(s.seq, s.item, s.created, s.nbytes, s.count) for s in batch]
            progress = self._progress() if persist else None
            try:
                outcome = await asyncio.to_thread(self._cycle_in_thread, records, progress, doomed, final)
            except Exception as error:  # a bug in here must not stop the writer: count it, retry next cycle
                self._pending = batch + self._pending
                self._report("writer", f"disk queue {self.directory}: writer cycle failed: {error!r}")
                self._failing = True
                self._end_cycle(number, ok=False)
                return
            if outcome.persisted is not None:
                self._finished_persisted = finished
            ok = self._apply(batch, outcome)
        else:
            ok = not self._failing
        self._end_cycle(number, ok)

    def _cycle_in_thread(self, records: list[Pending], progress: Progress | None,
                         doomed: list[Segment], final: bool) -> _CycleOutcome:
        problems: list[tuple[str, str]] = []
        persisted: Progress | None = None
        deleted: list[Segment] = []
        if progress is not None:
            try:
                write_position(self.directory, progress, self._write)
                persisted = progress
            except OSError as error:
                problems.append(("position", f"cannot persist the position in {self.directory}: {error}"))
        if persisted is not None:  # deleting a segment before next_seq is persisted could reuse its seqs
            for segment in doomed:
                try:
                    self._appender.delete(segment)
                    deleted.append(segment)
                except OSError as error:
                    problems.append(("delete", f"cannot delete {segment.path}: {error}"))
        appended = self._appender.append(records)
        if final:
            self._appender.seal()
        return _CycleOutcome(persisted, deleted, appended, problems)

    def _apply(self, batch: list[_Slot], outcome: _CycleOutcome) -> bool:
        """On the loop: take in what a cycle did to the files."""
        if outcome.persisted is not None:
            self._persisted = outcome.persisted
            self._seq_reserved = outcome.persisted.next_seq
        for segment in outcome.deleted:
            segment.deleted = True
            self._segments.pop(segment.first_seq, None)
        appended = outcome.appended
        for segment in appended.opened:
            self._segments[segment.first_seq] = segment
        for segment, size in appended.sizes.items():
            self._set_size(segment, size)
        handled: set[int] = set()
        for index, segment, start, end in appended.placed:
            slot = batch[index]
            handled.add(index)
            slot.segment, slot.index = segment, segment.add(start, end)
            if slot.done:
                self._finished += 1  # acknowledged or dropped while being written: a dead record to persist as done
                self._work.set()
                continue
            self._unwritten_bytes -= slot.nbytes
            self._unwritten_count -= 1
            self._set_live(segment, segment.live + 1)
            if slot.item is not _ABSENT:
                if self._lineup.is_out(slot.seq):
                    self._release(slot)  # the sender has it
                else:
                    self._evictable[slot.seq] = slot
        for index, message in appended.unencodable:
            slot = batch[index]
            handled.add(index)
            self._report("encode", f"disk queue {self.directory}: entry {slot.seq} cannot be encoded, it stays "
                                   f"in memory only: {message}")
            if not slot.done:
                slot.unwritable = True
                self._unwritten_bytes -= slot.nbytes
                self._unwritten_count -= 1
        failed = [slot for index, slot in enumerate(batch) if index not in handled and not slot.done]
        self._pending = failed + self._pending
        problems = list(outcome.problems)
        if appended.error is not None:
            problems.append(("write", appended.error))
        for kind, message in problems:
            self._report(kind, message)
        # A segment that cannot be deleted is reported, not a reason to refuse data: nothing is at risk.
        self._failing = any(kind != "delete" for kind, _ in problems)
        if self._failing:
            self._work.set()  # retry at the next cycle, even with nothing pending: the position write probes
        else:
            self._reported.difference_update({"write", "position", "writer"})
        self._evict()
        return not problems and not appended.unencodable

    def _end_cycle(self, number: int, ok: bool) -> None:
        self._in_cycle = False
        waiting = []
        for want, waiter in self._flush_waiters:
            if want <= number:
                if not waiter.done():
                    waiter.set_result(ok)
            else:
                waiting.append((want, waiter))
        self._flush_waiters = waiting
        if waiting:
            self._work.set()
            self._now.set()
