"""The queue contract (exporters/sending/queue.py), one behaviour per test, for every queue.

Each test runs over `MemoryQueue` and `DiskQueue`. The disk queue gets a large `max_disk` and an hour-long
`sync_interval`, and puts follow each other without an await, so nothing is written in between: its
`max_memory` then bounds what was put exactly as the memory queue's does.
Async tests run with `asyncio.run` inside plain test functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from exporters.sending.bytes_codec import BytesCodec
from exporters.sending.disk_queue import DiskQueue
from exporters.sending.memory_queue import MemoryQueue
from exporters.sending.queue import Entry, QueueFull, WhenFull

KINDS = ["memory", "disk"]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


@asynccontextmanager
async def opened(
    kind: str, tmp_path: Path, max_memory: int = 1 << 20, when_full: WhenFull = "refuse",
    on_drop: Callable[[Entry[Any], str], None] | None = None,
) -> AsyncIterator[Any]:
    if kind == "memory":
        queue: Any = MemoryQueue(max_memory, when_full, on_drop)
    else:
        queue = DiskQueue(tmp_path / "queue", BytesCodec(), max_memory=max_memory, max_disk=1 << 30,
                          when_full=when_full, sync_interval=3600, on_drop=on_drop)
        await queue.open()
    try:
        yield queue
    finally:
        await queue.close()


def put(queue: Any, name: str, nbytes: int = 10, created: float = 100.0) -> Entry[bytes]:
    return queue.put(name.encode(), nbytes, created, 1)


def items(entries: list[Entry[bytes]]) -> list[str]:
    return [entry.item.decode() for entry in entries]


@pytest.mark.parametrize("kind", KINDS)
def test_entries_come_out_in_the_order_they_were_put_with_growing_seqs(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            put_entries = [put(queue, name) for name in "abcde"]
            got = await queue.get(10, 1 << 20)
            assert items(got) == list("abcde")
            assert [e.seq for e in got] == [e.seq for e in put_entries] == sorted({e.seq for e in got})

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_get_takes_at_most_max_entries(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            for name in "abcde":
                put(queue, name)
            assert items(await queue.get(2, 1 << 20)) == ["a", "b"]
            assert items(await queue.get(2, 1 << 20)) == ["c", "d"]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_get_takes_at_most_max_bytes_but_always_one_entry(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            put(queue, "big", nbytes=500)
            put(queue, "a", nbytes=10)
            put(queue, "b", nbytes=10)
            put(queue, "c", nbytes=10)
            assert items(await queue.get(10, 100)) == ["big"]
            assert items(await queue.get(10, 25)) == ["a", "b"]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_get_waits_for_a_put(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            getter = asyncio.create_task(queue.get(10, 1 << 20))
            await asyncio.sleep(0)
            assert not getter.done()
            put(queue, "a")
            assert items(await getter) == ["a"]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_acks_out_of_order_forget_exactly_the_entries_acknowledged(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            for index, name in enumerate("abcd"):
                put(queue, name, created=100.0 + index)
            got = await queue.get(10, 1 << 20)
            queue.ack([got[2], got[1]])
            assert len(queue) == 2
            assert queue.oldest_created() == 100.0
            queue.ack([got[0]])
            assert len(queue) == 1
            assert queue.oldest_created() == 103.0
            queue.ack([got[3]])
            assert len(queue) == 0
            assert queue.oldest_created() is None

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_acknowledged_twice_is_forgotten_once(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            put(queue, "a")
            put(queue, "b")
            got = await queue.get(1, 1 << 20)
            queue.ack(got)
            queue.ack(got)
            assert len(queue) == 1
            assert items(await queue.get(10, 1 << 20)) == ["b"]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_nacked_entries_go_out_again_before_newer_ones_in_seq_order(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            for name in "abcdef":
                put(queue, name)
            first = await queue.get(2, 1 << 20)
            second = await queue.get(2, 1 << 20)
            queue.nack(second)
            queue.nack(first)
            assert items(await queue.get(10, 1 << 20)) == list("abcdef")

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_refuse_raises_queue_full_naming_the_bound_and_keeps_the_queue_as_it_was(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path, max_memory=100) as queue:
            put(queue, "a", nbytes=40)
            put(queue, "b", nbytes=40)
            with pytest.raises(QueueFull, match="max_memory"):
                put(queue, "c", nbytes=30)
            assert len(queue) == 2
            assert items(await queue.get(10, 1 << 20)) == ["a", "b"]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_drop_oldest_drops_the_oldest_entries_not_handed_out_and_reports_each(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        dropped: list[tuple[int, str]] = []
        async with opened(kind, tmp_path, max_memory=100, when_full="drop_oldest",
                          on_drop=lambda entry, reason: dropped.append((entry.seq, reason))) as queue:
            a = put(queue, "a", nbytes=30)
            await queue.get(1, 1 << 20)  # "a" is out with the sender: not dropped
            b = put(queue, "b", nbytes=30)
            c = put(queue, "c", nbytes=30)
            put(queue, "d", nbytes=50)
            assert dropped == [(b.seq, "queue_full"), (c.seq, "queue_full")]
            assert len(queue) == 2
            assert items(await queue.get(10, 1 << 20)) == ["d"]
            assert a.seq < b.seq

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_drop_oldest_refuses_when_everything_left_is_out_with_the_sender(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path, max_memory=100, when_full="drop_oldest") as queue:
            put(queue, "a", nbytes=80)
            await queue.get(1, 1 << 20)
            with pytest.raises(QueueFull):
                put(queue, "b", nbytes=30)

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_drop_oldest_drops_nothing_when_dropping_every_waiting_entry_would_not_make_room(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        dropped: list[Entry[Any]] = []
        async with opened(kind, tmp_path, max_memory=100, when_full="drop_oldest",
                          on_drop=lambda entry, reason: dropped.append(entry)) as queue:
            put(queue, "out", nbytes=80)
            await queue.get(1, 1 << 20)
            put(queue, "waiting", nbytes=10)
            with pytest.raises(QueueFull):
                put(queue, "too big", nbytes=30)
            assert dropped == []
            assert len(queue) == 2

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_an_item_larger_than_the_bound_does_not_empty_the_queue_under_drop_oldest(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        dropped: list[Entry[Any]] = []
        async with opened(kind, tmp_path, max_memory=100, when_full="drop_oldest",
                          on_drop=lambda entry, reason: dropped.append(entry)) as queue:
            put(queue, "a", nbytes=10)
            with pytest.raises(QueueFull):
                put(queue, "huge", nbytes=500)
            assert dropped == []
            assert items(await queue.get(10, 1 << 20)) == ["a"]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_close_wakes_waiting_getters_with_nothing(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            getters = [asyncio.create_task(queue.get(10, 1 << 20)) for _ in range(3)]
            await asyncio.sleep(0)
            await queue.close()
            assert await asyncio.gather(*getters) == [[], [], []]

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_get_after_close_hands_out_what_is_left_then_nothing(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            put(queue, "a")
            await queue.close()
            assert items(await queue.get(10, 1 << 20)) == ["a"]
            assert await queue.get(10, 1 << 20) == []

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_put_after_close_raises_queue_full(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            await queue.close()
            with pytest.raises(QueueFull, match="closed"):
                put(queue, "a")

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_an_item_larger_than_the_bound_is_accepted_into_an_empty_queue_only(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path, max_memory=100) as queue:
            put(queue, "huge", nbytes=500)
            assert queue.room() == 0
            with pytest.raises(QueueFull):
                put(queue, "small", nbytes=1)
            got = await queue.get(10, 1 << 20)
            queue.ack(got)
            put(queue, "huge again", nbytes=500)

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_room_is_the_bound_less_what_is_held_until_acknowledged(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path, max_memory=100) as queue:
            assert queue.room() == 100
            put(queue, "a", nbytes=30)
            put(queue, "b", nbytes=20)
            assert queue.room() == 50
            assert queue.memory_bytes == 50
            got = await queue.get(1, 1 << 20)
            queue.ack(got)
            assert queue.room() == 80

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_get_rejects_a_max_entries_below_one(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path) as queue:
            with pytest.raises(ValueError, match="max_entries"):
                await queue.get(0, 100)

    run(scenario)


def test_a_memory_queue_keeps_nothing_of_entries_acknowledged() -> None:
    async def scenario() -> None:
        queue: MemoryQueue[bytes] = MemoryQueue(1 << 20)
        for _ in range(1000):
            put(queue, "a")
            queue.ack(await queue.get(1, 1 << 20))
        assert len(queue._lineup._order) == 0 and len(queue._lineup._live) == 0

    run(scenario)


def test_a_memory_queue_holds_nothing_on_disk() -> None:
    assert MemoryQueue(100).disk_bytes == 0


def test_a_memory_queue_rejects_an_unknown_when_full() -> None:
    with pytest.raises(ValueError, match="when_full"):
        MemoryQueue(100, "block")  # type: ignore[arg-type]
