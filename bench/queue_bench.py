"""DiskQueue throughput with records the size of serialized OTLP requests, through BytesCodec.

    python bench/queue_bench.py [--items 300] [--size 61440] [--repeats 3] [--dir /tmp]

Three phases per repeat, each on a fresh queue directory under `--dir` (the disk under test):

- put+flush: `put` every item (awaiting `flush` whenever `QueueFull` says memory is full of unwritten
  entries, as an owner that waits would), then one `flush`: everything appended and fsynced.
- restart+read: a new queue on that directory: `open` (the header scan) then `get`/`ack` of every entry, each
  read back from disk with its crc checked; `close`.
- live: a producer puts while a consumer gets and acknowledges (the sender keeps up); ends when everything is
  acknowledged and flushed. Entries acknowledged before the writer's next cycle are never written, so with the
  default 1 s `sync_interval` this measures the queue's bookkeeping on the loop, not the disk.

Reported: medians over `--repeats` of MB/s (item bytes / wall time) and CPU seconds per GB of the process
(the loop and the writer/reader threads together), plus the open scan's time, and zlib.crc32's own speed on
one record, to judge checking crcs at the scan instead of at read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exporters.sending.bytes_codec import BytesCodec
from exporters.sending.disk_queue import DiskQueue
from exporters.sending.queue import QueueFull

MAX_MEMORY = 64 << 20
MAX_DISK = 8 << 30


def new_queue(directory: Path) -> DiskQueue[bytes]:
    return DiskQueue(directory, BytesCodec(), max_memory=MAX_MEMORY, max_disk=MAX_DISK)


async def put_flush(directory: Path, items: list[bytes]) -> None:
    queue = new_queue(directory)
    await queue.open()
    for item in items:
        while True:
            try:
                queue.put(item, len(item), time.time(), 1)
                break
            except QueueFull:
                await queue.flush()
    await queue.flush()
    await queue.close()


async def restart_read(directory: Path, count: int) -> float:
    queue = new_queue(directory)
    start = time.perf_counter()
    await queue.open()
    scan = time.perf_counter() - start
    seen = 0
    while seen < count:
        entries = await queue.get(10, 8 << 20)
        queue.ack(entries)
        seen += len(entries)
    await queue.close()
    return scan


async def live(directory: Path, items: list[bytes]) -> None:
    queue = new_queue(directory)
    await queue.open()

    async def consume() -> None:
        seen = 0
        while seen < len(items):
            entries = await queue.get(10, 8 << 20)
            queue.ack(entries)
            seen += len(entries)

    consumer = asyncio.create_task(consume())
    for index, item in enumerate(items):
        while True:
            try:
                queue.put(item, len(item), time.time(), 1)
                break
            except QueueFull:
                await queue.flush()
        if index % 10 == 9:
            await asyncio.sleep(0)  # a producer yields (a receiver awaits its next request)
    await consumer
    await queue.flush()
    await queue.close()


def timed(run: object) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = asyncio.run(run)  # type: ignore[arg-type]
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--size", type=int, default=60 << 10, help="bytes per item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()

    items = [os.urandom(args.size) for _ in range(args.items)]
    total_mb = args.items * args.size / 1e6
    results: dict[str, list[tuple[float, float]]] = {"put+flush": [], "restart+read": [], "live": []}
    scans: list[float] = []
    for _ in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="queue_bench-", dir=args.dir))
        try:
            wall, cpu, _ = timed(put_flush(root / "a", items))
            results["put+flush"].append((wall, cpu))
            wall, cpu, scan = timed(restart_read(root / "a", len(items)))
            results["restart+read"].append((wall, cpu))
            scans.append(scan)  # type: ignore[arg-type]
            wall, cpu, _ = timed(live(root / "b", items))
            results["live"].append((wall, cpu))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    print(f"{args.items} items of {args.size} bytes ({total_mb:.1f} MB), medians of {args.repeats}, dir {args.dir}")
    for phase, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {phase:13s} {total_mb / wall:8.1f} MB/s   {cpu / (total_mb / 1000):6.2f} CPU s/GB")
    print(f"  open scan     {statistics.median(scans) * 1000:8.2f} ms for {args.items} records")
    record = items[0]
    start = time.perf_counter()
    for _ in range(200):
        zlib.crc32(record)
    crc_rate = 200 * len(record) / (time.perf_counter() - start) / 1e6
    print(f"  zlib.crc32    {crc_rate:8.0f} MB/s on one record")


if __name__ == "__main__":
    main()
