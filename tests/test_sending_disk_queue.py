"""DiskQueue: what survives a restart or a kill, broken records, the disk and memory bounds, a failing disk.

The contract every queue keeps is in test_sending_queue.py. Here a queue writes only when `flush` asks
(`sync_interval` is an hour), so each test says when data reaches the disk. A restart is `close` then a new
queue on the same directory; a kill is a queue abandoned without `close`, in an event loop that then ends.
Async tests run with `asyncio.run` inside plain test functions.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters.sending.bytes_codec import BytesCodec
from exporters.sending import disk_queue
from exporters.sending.disk_queue import DiskQueue, QueueLocked
from exporters.sending.queue import Entry, QueueFull
from exporters.sending.segments import HEADER, POSITION_FILE

# ---------------------------------------------------------------------------------------------------------
# Test doubles: codecs and a recorder of what the queue reports
# ---------------------------------------------------------------------------------------------------------


class SymbolCodec:
    """A codec with a dictionary per segment, as the SampleBatch codec has for labels: items are tuples of
    words; a segment's writer numbers each new word and defines it in the first record that uses it, so a
    record can only be decoded once every earlier record of its segment was learned or decoded."""

    def __init__(self) -> None:
        self.learned = 0

    def writer(self) -> _SymbolWriter:
        return _SymbolWriter()

    def reader(self) -> _SymbolReader:
        return _SymbolReader(self)


class _SymbolWriter:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, item: tuple[str, ...]) -> bytes:
        defs = {}
        for word in item:
            if word not in self.ids:
                number = len(self.ids)
                self.ids[word] = number
                defs[number] = word
        return json.dumps({"defs": defs, "refs": [self.ids[word] for word in item]}).encode()


class _SymbolReader:
    def __init__(self, codec: SymbolCodec) -> None:
        self.codec = codec
        self.words: dict[int, str] = {}

    def _take(self, record: bytes) -> list[int]:
        doc = json.loads(record)
        self.words.update((int(k), v) for k, v in doc["defs"].items())
        return doc["refs"]

    def learn(self, record: bytes) -> None:
        self.codec.learned += 1
        self._take(record)

    def decode(self, record: bytes) -> tuple[str, ...]:
        refs = self._take(record)
        try:
            return tuple(self.words[ref] for ref in refs)
        except KeyError as error:
            raise ValueError(f"word {error} was never defined") from None


class RefusingCodec(BytesCodec):
    """BytesCodec whose reader refuses any record starting with b"bad"."""

    def reader(self) -> Any:
        class Reader:
            def learn(self, record: bytes) -> None:
                pass

            def decode(self, record: bytes) -> bytes:
                if record.startswith(b"bad"):
                    raise ValueError("bad record")
                return record

        return Reader()


class Reports:
    def __init__(self) -> None:
        self.drops: list[tuple[int, str, int]] = []
        self.errors: list[str] = []

    def on_drop(self, entry: Entry[Any], reason: str) -> None:
        self.drops.append((entry.seq, reason, entry.count))

    def on_error(self, message: str) -> None:
        self.errors.append(message)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


async def open_queue(directory: Path, codec: Any = None, reports: Reports | None = None, **options: Any) -> DiskQueue[Any]:
    settings_ = {"max_memory": 1 << 20, "max_disk": 1 << 30, "sync_interval": 3600.0, **options}
    queue: DiskQueue[Any] = DiskQueue(
        directory, codec or BytesCodec(),
        on_drop=reports.on_drop if reports else None, on_error=reports.on_error if reports else None, **settings_,
    )
    await queue.open()
    return queue


def put_all(queue: DiskQueue[Any], items: list[bytes]) -> list[Entry[Any]]:
    return [queue.put(item, len(item), 1000.0 + i, i + 1) for i, item in enumerate(items)]


async def drain(queue: DiskQueue[Any]) -> list[Entry[Any]]:
    """Everything waiting, acknowledged."""
    got: list[Entry[Any]] = []
    while queue._lineup.waiting:
        batch = await queue.get(3, 1 << 30)
        queue.ack(batch)
        got.extend(batch)
    return got


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def names(count: int, size: int = 20) -> list[bytes]:
    return [f"item-{i:04d}-".encode().ljust(size, b".") for i in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Restart and kill
# ---------------------------------------------------------------------------------------------------------


def test_a_restart_hands_out_what_was_not_acknowledged_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(6))
        await queue.flush()
        out = await queue.get(3, 1 << 30)
        queue.ack(out[:2])  # the third stays out with the sender
        await queue.close()
        queue = await open_queue(tmp_path)
        got = await drain(queue)
        assert [e.item for e in got] == names(6)[2:]
        assert [e.seq for e in got] == [2, 3, 4, 5]
        assert [(e.created, e.count, e.nbytes) for e in got] == [(1002.0, 3, 20), (1003.0, 4, 20),
                                                               (1004.0, 5, 20), (1005.0, 6, 20)]
        await queue.close()

    run(scenario)


def test_entries_acknowledged_out_of_order_do_not_come_back_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(5))
        await queue.flush()
        out = await queue.get(5, 1 << 30)
        queue.ack([out[1], out[3]])
        await queue.close()
        queue = await open_queue(tmp_path)
        assert [e.seq for e in await drain(queue)] == [0, 2, 4]
        await queue.close()

    run(scenario)


def test_a_queue_whose_entries_were_all_acknowledged_restarts_empty_without_segments(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(5))
        await queue.flush()
        await drain(queue)
        await queue.close()
        assert segment_files(tmp_path) == []
        queue = await open_queue(tmp_path)
        assert len(queue) == 0
        assert queue.oldest_created() is None
        await queue.close()

    run(scenario)


def test_seqs_keep_growing_across_restarts_after_every_segment_was_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(3))
        await queue.flush()
        await drain(queue)
        await queue.close()
        queue = await open_queue(tmp_path)
        assert queue.put(b"next", 4, 1.0, 1).seq >= 3
        await queue.close()

    run(scenario)


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queues abandoned in this process stand for killed processes, whose locks the kernel releases: each open
    takes its own lock file descriptor without the exclusive flock."""
    monkeypatch.setattr(disk_queue, "_lock_directory",
                        lambda directory: (directory.mkdir(parents=True, exist_ok=True),
                                           os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600))[1])


def test_a_second_queue_on_a_directory_in_use_is_refused_and_may_open_it_once_the_first_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = await open_queue(tmp_path)
        with pytest.raises(QueueLocked, match="in use by another process"):
            await open_queue(tmp_path)
        await first.close()
        second = await open_queue(tmp_path)
        await second.close()

    run(scenario)


@pytest.mark.usefixtures("kills")
def test_a_killed_queue_restarts_from_what_was_persisted_last(tmp_path: Path) -> None:
    async def before_kill() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(10))
        out = await queue.get(5, 1 << 30)
        queue.ack(out[:3])
        assert await queue.flush()  # 0, 1, 2 acknowledged and persisted; everything written
        queue.ack(out[3:])  # acknowledged, never persisted: a kill forgets these acks
        await queue.get(2, 1 << 30)  # 5 and 6 are out with the sender at the kill
        queue.put(b"never flushed", 13, 1.0, 1)  # not on disk at the kill: lost

    async def after_kill() -> None:
        queue = await open_queue(tmp_path)
        got = await drain(queue)
        assert [e.seq for e in got] == [3, 4, 5, 6, 7, 8, 9]
        assert [e.item for e in got] == names(10)[3:]
        await queue.close()

    run(before_kill)  # the loop ends: the writer task is cancelled, nothing more is written
    run(after_kill)


@pytest.mark.usefixtures("kills")
def test_a_writer_cancelled_as_it_is_woken_stops(tmp_path: Path) -> None:
    """What the loop's end does to a queue never closed (a kill, in tests): the writer must not outlive it."""

    async def scenario() -> None:
        for _ in range(20):  # the cancel lands at a different step of the wake-up each time
            queue = await open_queue(tmp_path, max_memory=100)
            writer = queue._task
            assert writer is not None
            for steps in range(_ % 4):
                await asyncio.sleep(0)
            queue.put(b"x" * 50, 50, 1.0, 1)  # past the write threshold: the writer is woken now
            for steps in range(_ // 4):
                await asyncio.sleep(0)
            writer.cancel()
            await asyncio.wait([writer], timeout=5)
            assert writer.done()

    run(scenario)


def test_oldest_created_survives_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(3))
        queue.ack(await queue.get(1, 1 << 30))
        await queue.close()
        queue = await open_queue(tmp_path)
        assert queue.oldest_created() == 1001.0
        await queue.close()

    run(scenario)


def test_close_is_safe_without_open_and_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        never_opened: DiskQueue[bytes] = DiskQueue(tmp_path / "a", BytesCodec(), max_memory=100, max_disk=1000)
        await never_opened.close()
        queue = await open_queue(tmp_path / "b")
        await queue.close()
        await queue.close()

    run(scenario)


# ---------------------------------------------------------------------------------------------------------
# Broken files
# ---------------------------------------------------------------------------------------------------------


def test_a_torn_tail_is_counted_and_skipped_and_new_entries_go_to_a_new_segment_that_survives(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(4))
        await queue.close()
        [segment] = segment_files(tmp_path)
        os.truncate(segment, segment.stat().st_size - 5)  # the last record loses its end

        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        assert reports.drops == [(3, "corrupt", 4)]  # the header was sane: its count is what was lost
        assert len(queue) == 3
        put_all(queue, [b"after the tear"])
        await queue.flush()
        assert len(segment_files(tmp_path)) == 2
        await queue.close()

        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        assert reports.drops == []  # counted once
        assert [e.item for e in await drain(queue)] == names(4)[:3] + [b"after the tear"]
        await queue.close()

    run(scenario)


def test_a_record_torn_inside_its_header_is_counted_without_a_count(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(2))
        await queue.close()
        [segment] = segment_files(tmp_path)
        os.truncate(segment, HEADER.size + 20 + 10)  # the first record whole, 10 bytes of the second header

        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        assert reports.drops == [(-1, "corrupt", 0)]
        assert [e.item for e in await drain(queue)] == names(2)[:1]
        await queue.close()

    run(scenario)


def test_a_flipped_byte_in_a_middle_record_is_counted_and_the_rest_delivered(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(5))
        await queue.close()
        [segment] = segment_files(tmp_path)
        data = bytearray(segment.read_bytes())
        data[2 * (HEADER.size + 20) + HEADER.size + 3] ^= 0x40  # in the payload of record 2
        segment.write_bytes(bytes(data))

        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        got = await drain(queue)
        assert [e.seq for e in got] == [0, 1, 3, 4]
        assert reports.drops == [(2, "corrupt", 3)]
        await queue.close()

    run(scenario)


def test_a_record_the_codec_refuses_is_counted_and_skipped(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, RefusingCodec())
        put_all(queue, [b"first", b"bad one", b"last"])
        await queue.close()

        reports = Reports()
        queue = await open_queue(tmp_path, RefusingCodec(), reports)
        assert [e.item for e in await drain(queue)] == [b"first", b"last"]
        assert reports.drops == [(1, "corrupt", 2)]
        await queue.close()

    run(scenario)


def test_a_missing_position_file_is_reported_and_everything_on_disk_is_sent_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(3))
        await queue.flush()
        queue.ack(await queue.get(1, 1 << 30))
        await queue.close()
        (tmp_path / POSITION_FILE).unlink()

        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        assert len(reports.errors) == 1 and "missing" in reports.errors[0]
        assert [e.seq for e in await drain(queue)] == [0, 1, 2]
        await queue.close()

    run(scenario)


def test_an_unreadable_position_file_is_reported_and_everything_on_disk_is_sent_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(3))
        await queue.flush()
        queue.ack(await queue.get(1, 1 << 30))
        await queue.close()
        (tmp_path / POSITION_FILE).write_bytes(b'{"position": ')

        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        assert len(reports.errors) == 1 and "unreadable" in reports.errors[0]
        assert [e.seq for e in await drain(queue)] == [0, 1, 2]
        await queue.close()

    run(scenario)


# ---------------------------------------------------------------------------------------------------------
# Segments and the disk bound
# ---------------------------------------------------------------------------------------------------------


def test_segment_files_are_named_by_the_first_seq_they_hold(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, segment_bytes=100)
        put_all(queue, names(4, size=60))  # 101 bytes a record: one record per segment
        await queue.flush()
        assert [p.name for p in segment_files(tmp_path)] == [f"{seq:020d}.seg" for seq in range(4)]
        await queue.close()

    run(scenario)


def test_segments_are_deleted_once_every_entry_in_them_is_acknowledged(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, segment_bytes=150)
        put_all(queue, names(9, size=30))  # 71 bytes a record: 3 records per segment
        await queue.flush()
        assert len(segment_files(tmp_path)) == 3
        out = await queue.get(9, 1 << 30)
        queue.ack(out[:7])
        await queue.flush()
        assert [p.name for p in segment_files(tmp_path)] == [f"{6:020d}.seg"]
        assert queue.disk_bytes == 3 * (HEADER.size + 30)
        queue.ack(out[7:])
        await queue.flush()
        assert segment_files(tmp_path) == []
        assert queue.disk_bytes == 0
        await queue.close()

    run(scenario)


def files_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in segment_files(directory))


def test_the_disk_bound_holds_under_refuse(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, max_disk=2000, segment_bytes=500)
        accepted = 0
        with pytest.raises(QueueFull, match="max_disk"):
            for item in names(100, size=100):
                queue.put(item, len(item), 1.0, 1)
                accepted += 1
                await queue.flush()
                assert files_size(tmp_path) <= 2000
        assert accepted == 2000 // (HEADER.size + 100)
        assert queue.room() < HEADER.size + 100
        queue.ack(await queue.get(4, 1 << 30))  # a whole segment: its room comes back
        queue.put(b"x" * 100, 100, 1.0, 1)
        await queue.flush()
        assert files_size(tmp_path) <= 2000
        await queue.close()

    run(scenario)


def test_the_disk_bound_holds_under_drop_oldest_and_drops_are_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports, max_disk=2000, segment_bytes=500,
                                 when_full="drop_oldest")
        items = names(100, size=100)
        for item in items:
            queue.put(item, len(item), 1.0, 1)
            await queue.flush()
            assert files_size(tmp_path) <= 2000
            assert queue.disk_bytes <= 2000
        await queue.close()
        queue = await open_queue(tmp_path)
        got = await drain(queue)
        dropped = [seq for seq, reason, _ in reports.drops if reason == "queue_full"]
        assert sorted(dropped + [e.seq for e in got]) == list(range(100))
        assert [e.item for e in got] == items[100 - len(got):]  # the newest, in order
        await queue.close()

    run(scenario)


# ---------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------


def test_memory_stays_under_max_memory_and_evicted_items_are_read_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, max_memory=1000, segment_bytes=700)
        items = names(50, size=100)
        for start in range(0, 50, 5):
            put_all(queue, items[start : start + 5])
            await queue.flush()
            assert queue.memory_bytes <= 1000
        assert queue.memory_bytes >= 900  # the head is held, the rest evicted
        assert [e.item for e in await drain(queue)] == items
        await queue.close()

    run(scenario)


def test_bytes_the_owner_reserves_evict_written_items_so_both_stay_within_max_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, max_memory=1000, segment_bytes=700)
        items = names(9, size=100)
        put_all(queue, items)
        await queue.flush()
        queue.reserve(400)  # the exporter's pending flush grew
        assert queue.memory_bytes + 400 <= 1000
        queue.reserve(0)
        assert [e.item for e in await drain(queue)] == items  # evicted items are read back
        await queue.close()

    run(scenario)


def test_entries_not_yet_written_cannot_be_evicted_so_room_is_zero_when_they_fill_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, max_memory=300)
        put_all(queue, names(3, size=100))
        assert queue.room() == 0
        await queue.flush()
        assert queue.room() == 300
        await queue.close()

    run(scenario)


def words(i: int) -> tuple[str, ...]:
    return ("cpu", f"host-{i % 3}", f"unique-{i}")


def test_a_stateful_codec_reads_back_evicted_items_by_learning_the_records_before_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        codec = SymbolCodec()
        reports = Reports()
        queue = await open_queue(tmp_path, codec, reports, max_memory=100, segment_bytes=1 << 20)
        for i in range(12):
            queue.put(words(i), 30, 1.0, 1)
            await queue.flush()
        assert queue.memory_bytes <= 100
        assert [e.item for e in await drain(queue)] == [words(i) for i in range(12)]
        assert reports.drops == []
        assert codec.learned > 0  # items served from memory defined words later records use
        await queue.close()

    run(scenario)


def test_a_stateful_codec_reads_a_segment_from_the_middle_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        codec = SymbolCodec()
        queue = await open_queue(tmp_path, codec)
        for i in range(8):
            queue.put(words(i), 30, 1.0, 1)
        await queue.flush()
        queue.ack(await queue.get(4, 1 << 30))
        await queue.close()
        reports = Reports()
        queue = await open_queue(tmp_path, codec, reports)
        assert [e.item for e in await drain(queue)] == [words(i) for i in range(4, 8)]
        assert reports.drops == []
        assert codec.learned == 4
        await queue.close()

    run(scenario)


def test_nacked_entries_are_held_again_and_evicted_if_memory_is_short(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, max_memory=250)
        items = names(6, size=100)
        put_all(queue, items[:2])
        await queue.flush()
        put_all(queue, items[2:4])
        await queue.flush()
        out = await queue.get(4, 1 << 30)
        queue.nack(out)
        assert queue.memory_bytes <= 250
        assert [e.item for e in await drain(queue)] == items[:4]
        await queue.close()

    run(scenario)


def test_a_get_cancelled_while_reading_from_disk_leaves_its_entries_waiting(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(3))
        await queue.close()
        queue = await open_queue(tmp_path)  # every item is on disk only
        getter = asyncio.create_task(queue.get(2, 1 << 30))
        await asyncio.sleep(0)  # the getter took its entries and is reading them
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert [e.seq for e in await drain(queue)] == [0, 1, 2]
        await queue.close()

    run(scenario)


def test_an_entry_taken_by_a_get_is_not_evicted_while_the_get_reads_its_neighbours(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path, max_memory=250)
        items = names(4, size=100)
        put_all(queue, items[:2])
        await queue.flush()
        put_all(queue, items[2:])
        await queue.flush()  # 0 and 1 held, 2 and 3 evicted
        await queue.get(1, 1 << 30)
        getter = asyncio.create_task(queue.get(2, 1 << 30))  # 1 from memory, 2 from disk
        await asyncio.sleep(0)  # the getter took both and is reading 2
        queue.put(b"y" * 200, 200, 1.0, 1)  # memory is short again: something is evicted
        assert [e.item for e in await getter] == items[1:3]
        await queue.close()

    run(scenario)


def test_an_entry_taken_by_a_get_keeps_its_item_when_it_is_written_while_the_get_reads(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        queue.put(b"on disk", 7, 1.0, 1)
        await queue.close()
        queue = await open_queue(tmp_path)
        queue.put(b"in memory", 9, 1.0, 1)
        async with queue._read_lock:  # the getter takes both, then waits to read the first from disk
            getter = asyncio.create_task(queue.get(2, 1 << 30))
            await asyncio.sleep(0)
            assert await queue.flush()  # meanwhile the second is written
        assert [e.item for e in await getter] == [b"on disk", b"in memory"]
        await queue.close()

    run(scenario)


# ---------------------------------------------------------------------------------------------------------
# A failing disk
# ---------------------------------------------------------------------------------------------------------


def disk_full(fd: int, data: bytes | memoryview) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_error_makes_room_zero_is_reported_once_per_kind_and_recovers(tmp_path: Path) -> None:
    async def scenario() -> None:
        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports)
        put_all(queue, [b"before"])
        queue._write = disk_full
        assert await queue.flush() is False
        assert queue.room() == 0
        with pytest.raises(QueueFull, match="fails"):
            queue.put(b"refused", 7, 1.0, 1)
        assert await queue.flush() is False  # the retry fails too, now writing the position as well
        errors = list(reports.errors)
        assert await queue.flush() is False
        assert reports.errors == errors  # not reported again while it lasts
        assert 1 <= len(errors) <= 2 and all("No space left" in message for message in errors)

        queue._write = os.write
        assert await queue.flush() is True
        assert queue.room() > 0
        queue.put(b"after", 5, 1.0, 1)
        await queue.close()
        queue = await open_queue(tmp_path)
        assert [e.item for e in await drain(queue)] == [b"before", b"after"]
        await queue.close()

    run(scenario)


def test_under_drop_oldest_a_failing_disk_keeps_to_max_memory_by_dropping_the_oldest(tmp_path: Path) -> None:
    async def scenario() -> None:
        reports = Reports()
        queue = await open_queue(tmp_path, reports=reports, max_memory=300, when_full="drop_oldest")
        queue._write = disk_full
        queue.put(names(10, size=100)[0], 100, 1.0, 1)
        assert await queue.flush() is False
        for item in names(10, size=100)[1:]:
            queue.put(item, len(item), 1.0, 1)
            assert queue.memory_bytes <= 300
        assert [seq for seq, _, _ in reports.drops] == list(range(7))
        queue._write = os.write
        await queue.close()
        queue = await open_queue(tmp_path)
        assert [e.item for e in await drain(queue)] == names(10, size=100)[7:]
        await queue.close()

    run(scenario)


def test_an_entry_acknowledged_before_it_was_written_is_never_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(2))
        queue.ack(await queue.get(1, 1 << 30))
        await queue.flush()
        assert queue.disk_bytes == HEADER.size + 20
        await queue.close()

    run(scenario)


def test_a_sender_that_keeps_up_costs_no_disk_writes_not_even_the_position(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = await open_queue(tmp_path)
        position = tmp_path / POSITION_FILE
        before = position.stat().st_ino, position.read_bytes()
        for _ in range(3):
            put_all(queue, names(2))
            queue.ack(await queue.get(2, 1 << 30))
            assert await queue.flush()
        assert segment_files(tmp_path) == []
        assert (position.stat().st_ino, position.read_bytes()) == before  # never replaced
        await queue.close()

    run(scenario)


@pytest.mark.usefixtures("kills")
def test_seqs_keep_growing_across_a_kill_when_every_entry_was_acknowledged_before_being_written(tmp_path: Path) -> None:
    async def before_kill() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(2))
        queue.ack(await queue.get(2, 1 << 30))  # never written, so nothing made the queue persist
        assert await queue.flush()

    async def after_kill() -> None:
        queue = await open_queue(tmp_path)
        assert queue.put(b"next", 4, 1.0, 1).seq >= 2  # found by the property test below: it was 0
        await queue.close()

    run(before_kill)
    run(after_kill)


@pytest.mark.usefixtures("kills")
def test_an_entry_written_then_acknowledged_is_not_handed_out_again_after_a_kill(tmp_path: Path) -> None:
    async def before_kill() -> None:
        queue = await open_queue(tmp_path)
        put_all(queue, names(3))
        queue.ack(await queue.get(1, 1 << 30))  # never written
        assert await queue.flush()  # 1 and 2 written
        queue.ack(await queue.get(1, 1 << 30))  # 1: written, then acknowledged
        assert await queue.flush()

    async def after_kill() -> None:
        queue = await open_queue(tmp_path)
        assert [e.seq for e in await drain(queue)] == [2]
        assert queue.put(b"next", 4, 1.0, 1).seq >= 3
        await queue.close()

    run(before_kill)
    run(after_kill)


# ---------------------------------------------------------------------------------------------------------
# Property: every entry ends acknowledged once or dropped once, in order, across restarts and kills
# ---------------------------------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 200)),
        st.tuples(st.just("get"), st.integers(1, 4)),
        st.tuples(st.just("ack"), st.integers(0, 20)),
        st.tuples(st.just("nack"), st.integers(0, 20)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("kill"), st.just(0)),
    ),
    max_size=40,
)


@pytest.mark.usefixtures("kills")
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(OPS, st.sampled_from(["refuse", "drop_oldest"]))
def test_every_entry_ends_acknowledged_once_or_dropped_once_and_comes_out_in_order(
    ops: list[tuple[str, int]], when_full: str
) -> None:
    """The model: `waiting` is what the queue must hand out next, in this order (new puts at the end, nacked
    and restarted entries merged back by seq, dropped ones taken out); acknowledged entries never come back.
    A kill follows a flush, so what it loses is only what a flush would not have saved: nothing. Small memory,
    disk and segments so that items are evicted and read back through the stateful codec, segments rotate and
    go, and drop_oldest drops."""

    async def scenario(directory: Path) -> None:
        reports = Reports()
        options = {"max_memory": 400, "max_disk": 3000, "segment_bytes": 300, "when_full": when_full,
                   "codec": SymbolCodec(), "reports": reports}
        queue = await open_queue(directory, **options)
        put: dict[int, tuple[str, ...]] = {}
        waiting: list[int] = []
        out: list[Entry[Any]] = []
        acked: Counter[int] = Counter()
        abandoned: list[DiskQueue[Any]] = []

        async def take(count: int) -> None:
            got = await asyncio.wait_for(queue.get(count, 1 << 30), 10)
            assert [e.seq for e in got] == waiting[: len(got)]
            assert len(got) == min(count, len(waiting))
            assert all(e.item == put[e.seq] for e in got)
            del waiting[: len(got)]
            out.extend(got)

        for op, arg in ops:
            if op == "put":
                item = words(len(put))
                seen = len(reports.drops)
                try:
                    entry = queue.put(item, arg, 1.0, 1)
                except QueueFull:
                    assert len(reports.drops) == seen  # a refused put drops nothing
                    continue
                for seq, reason, _ in reports.drops[seen:]:
                    assert reason == "queue_full" and when_full == "drop_oldest"
                    waiting.remove(seq)  # only entries not handed out are dropped
                assert entry.seq > max(put, default=-1)
                put[entry.seq] = item
                waiting.append(entry.seq)
            elif op == "get" and waiting:
                await take(arg)
            elif op == "ack" and out:
                entry = out.pop(arg % len(out))
                queue.ack([entry])
                acked[entry.seq] += 1
            elif op == "nack" and out:
                back, out = out[arg % len(out) :], out[: arg % len(out)]
                queue.nack(back)
                waiting = sorted(waiting + [e.seq for e in back])
            elif op == "flush":
                assert await queue.flush()
            elif op in ("restart", "kill"):
                if op == "restart":
                    await queue.close()
                else:
                    assert await queue.flush()  # then abandoned, its writer idle for an hour
                    abandoned.append(queue)  # referenced, so its task ends cancelled with the loop, not collected
                queue = await open_queue(directory, **options)
                waiting = sorted(waiting + [e.seq for e in out])
                out = []
                assert len(queue) == len(waiting)
            assert queue.memory_bytes <= max(400, queue._unwritten_bytes)
        for entry in out:
            queue.ack([entry])
            acked[entry.seq] += 1
        out = []
        while waiting:
            await take(4)
            for entry in out:
                queue.ack([entry])
                acked[entry.seq] += 1
            out = []
        await queue.close()
        dropped = Counter(seq for seq, _, _ in reports.drops)
        assert acked + dropped == Counter(put.keys())
        assert not set(acked) & set(dropped)
        assert reports.errors == []
        queue = await open_queue(directory, **options)
        assert len(queue) == 0
        await queue.close()

    with tempfile.TemporaryDirectory() as directory:
        run(lambda: scenario(Path(directory)))
