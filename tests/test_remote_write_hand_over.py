"""RemoteWriteExporter.hand_over / take_over: an endpoint rebuilt by a reload (another URL, batch size, queue
bound) goes on with everything the old one held, and nothing is counted as failed or sent twice.

Receivers are the scripted ones of tests/test_remote_write_exporter.py: the old endpoint answers 503, the new
one accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.sending.queue import QueueSettings
from tests.test_remote_write_exporter import Counters, Receiver, exporter, gauge_request, run, until

DOWN = [(503, "down", {})] * 10_000


def queue(tmp_path: Path, medium: str) -> QueueSettings:
    return QueueSettings(max_disk=0 if medium == "memory" else 1 << 30, directory=tmp_path / "queue")


@pytest.mark.parametrize("before, after", [("disk", "disk"), ("memory", "memory"), ("memory", "disk"),
                                           ("disk", "memory")])
def test_a_replacement_delivers_what_the_old_exporter_queued_and_nothing_is_counted_as_failed(
        tmp_path: Path, before: str, after: str) -> None:
    old_counters, new_counters = Counters(), Counters()

    async def scenario() -> None:
        async with Receiver(script=list(DOWN)) as down, Receiver() as up:
            old = exporter(down.url, old_counters, max_samples=4, flush_interval=0.05, queue=queue(tmp_path, before))
            await old.start()
            for start in range(0, 12, 4):
                await old.consume_metrics(gauge_request(4, start=start))
            await until(lambda: down.attempts >= 1)

            settings = queue(tmp_path, after)
            handed = await old.hand_over(keep_files=settings.durable, max_bytes=settings.max_memory)
            new = exporter(up.url, new_counters, max_samples=4, flush_interval=0.05, queue=settings,
                           delta_to_cumulative=old.delta_to_cumulative)
            await new.start()
            new.take_over(handed)
            await until(lambda: sum(up.sample_counts()) >= 12)
            await new.shutdown(timeout=5.0)
            delivered = sorted(s.timestamp for r in up.received for ts in r.request.timeseries for s in ts.samples)
            assert delivered == [1_700_000_000_000 + i * 1000 for i in range(12)]  # each once

    run(scenario)
    assert old_counters.value("samples_failed") == 0 and old_counters.value("samples_sent") == 0
    assert new_counters.value("samples_sent") == 12 and new_counters.value("samples_failed") == 0


def test_the_pending_flush_is_handed_over_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Receiver() as up:
            old = exporter("http://127.0.0.1:9/api/v1/write", flush_interval=3600.0, queue=queue(tmp_path, "disk"))
            await old.start()
            await old.consume_metrics(gauge_request(3))  # waits for a flush an hour away
            handed = await old.hand_over()
            new = exporter(up.url, flush_interval=0.05, queue=queue(tmp_path, "disk"))
            await new.start()
            new.take_over(handed)
            await until(lambda: sum(up.sample_counts()) == 3)
            await new.shutdown(timeout=5.0)

    run(scenario)


def test_a_handed_over_exporter_takes_nothing_more() -> None:
    async def scenario() -> None:
        old = exporter("http://127.0.0.1:9/api/v1/write")
        await old.start()
        await old.hand_over()
        with pytest.raises(RuntimeError, match="shut down"):
            await old.consume_metrics(gauge_request(1))
        assert await old.hand_over() == []  # twice is safe
        await old.shutdown(timeout=1.0)  # and so is a shutdown after it

    run(scenario)
