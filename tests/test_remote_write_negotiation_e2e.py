"""The remote-write exporter negotiating its wire format end to end, against receivers that answer as the
real ones do, over real HTTP on 127.0.0.1:

- a scripted VictoriaMetrics >= 1.88 (tests/vm_receiver.py): it advertises `vm` by its handshake, and
  answers 204 to a remote write 2.0 body without storing anything or sending the Written headers, so
  `auto` must resend that batch and end on `vm`, with every sample stored once;
- the gateway's own receiver in process (RemoteWriteReceiver forwarding to a recording consumer): `auto`
  must end on `compact` and keep its session across flushes; a fixed `rw2` is accepted too, because the
  gateway counts what it wrote.

Batches enter through `consume_series` (what a gateway forwards), so the samples compared are exactly the
ones sent. Delivery is awaited by polling with a deadline and by the exporter's draining shutdown; nothing
here sleeps to show that something did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from agent.admission import Admission
from agent.receivers.remote_write import RemoteWriteReceiver
from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.remote_write.formats import RW2_CONTENT_TYPE
from exporters.remote_write.series import Labels, SampleBatch
from exporters.retry import RetryPolicy
from tests.series_strategies import canonical
from tests.test_remote_write_exporter import Counters
from tests.vm_receiver import VmReceiver

FAST_RETRY = RetryPolicy(initial_backoff=0.02, max_backoff=0.1, max_elapsed=10.0)
T0_MS = 1_700_000_000_000
SERIES: tuple[Labels, ...] = tuple(
    (("__name__", "node_cpu_seconds_total"), ("cpu", str(cpu)), ("instance", "node-1"), ("mode", "idle"))
    for cpu in range(4)
)
FLUSHES = 5
RW1_CARRIES = {"metadata": False, "start_timestamps": False, "histogram_start": False}


def scrape(step: int) -> SampleBatch:
    """One sample per series at T0 + step seconds; values differ per series and step."""
    batch = SampleBatch()
    for index, labels in enumerate(SERIES):
        batch.labels.append(labels)
        batch.values.append(step * 10.0 + index)
        batch.timestamps.append(T0_MS + 1000 * step)
        batch.sizes.append(120)
    return batch


def merged(parts: list[SampleBatch]) -> SampleBatch:
    out = SampleBatch()
    for part in parts:
        out.labels += part.labels
        out.values += part.values
        out.timestamps += part.timestamps
        out.histogram_labels += part.histogram_labels
        out.histograms += part.histograms
        out.exemplar_labels += part.exemplar_labels
        out.exemplars += part.exemplars
    return out


def exporter(url: str, counters: Counters, protocol: str) -> RemoteWriteExporter:
    return RemoteWriteExporter(
        "e2e", url, {}, timeout=5.0, retry=FAST_RETRY, max_samples=10_000, max_bytes=4 << 20,
        flush_interval=0.02, meter=counters.meter, protocol=protocol,
        wall_clock=lambda: T0_MS / 1000 + 600.0)  # the samples are ten minutes old, within sample_age_limit


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for something that must happen (a delivery); fails the test if it has not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a delivery"
        await asyncio.sleep(0.01)


async def send_flushes(rw: RemoteWriteExporter, delivered: Callable[[], int]) -> list[SampleBatch]:
    """FLUSHES scrapes, each in a flush of its own: the next is queued once the previous was delivered."""
    sent = []
    for step in range(FLUSHES):
        batch = scrape(step)
        sent.append(batch)
        await rw.consume_series(batch)
        await eventually(lambda step=step: delivered() >= (step + 1) * len(SERIES))
    return sent


@dataclass
class Gateway:
    receiver: RemoteWriteReceiver
    consumed: list[SampleBatch] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.receiver.bound_port}/api/v1/write"

    def samples(self) -> int:
        return sum(len(b) for b in self.consumed)


@contextlib.asynccontextmanager
async def gateway() -> AsyncIterator[Gateway]:
    consumed: list[SampleBatch] = []

    async def consume(batch: SampleBatch) -> None:
        consumed.append(batch)

    receiver = RemoteWriteReceiver("127.0.0.1:0", 4 << 20, Admission(64 << 20, retry_after=1.0), consume,
                                   drain_timeout=1.0)
    await receiver.start()
    try:
        yield Gateway(receiver, consumed)
    finally:
        await receiver.shutdown(2.0)


# -- against VictoriaMetrics >= 1.88 -----------------------------------------------------------------------


def test_auto_against_victoriametrics_ends_on_vm_and_stores_every_sample_exactly_once() -> None:
    counters = Counters()

    async def go() -> tuple[str | None, list[SampleBatch], VmReceiver]:
        async with VmReceiver() as vm:
            rw = exporter(vm.remote_write_url, counters, "auto")
            await rw.start()
            try:
                sent = await send_flushes(rw, lambda: vm.samples)
            finally:
                await rw.shutdown(timeout=10.0)
            return rw.protocol, sent, vm

    protocol, sent, vm = asyncio.run(go())
    assert protocol == "vm"
    assert canonical(merged([r.batch for r in vm.received]), **RW1_CARRIES) == canonical(merged(sent), **RW1_CARRIES)
    assert counters.value("samples_sent") == FLUSHES * len(SERIES)
    assert counters.value("samples_dropped") == 0 and counters.value("samples_failed") == 0


def test_against_victoriametrics_rw2_draws_a_204_that_stores_nothing_and_the_batch_is_resent_as_vm() -> None:
    counters = Counters()

    async def go() -> VmReceiver:
        async with VmReceiver() as vm:
            rw = exporter(vm.remote_write_url, counters, "auto")
            await rw.start()
            try:
                await rw.consume_series(scrape(0))
                await eventually(lambda: vm.samples >= len(SERIES))
            finally:
                await rw.shutdown(timeout=10.0)
            return vm

    vm = asyncio.run(go())
    rw2_attempts = [r for r in vm.received if r.headers.get("Content-Type") == RW2_CONTENT_TYPE]
    assert len(rw2_attempts) == 1
    assert rw2_attempts[0].batch.samples == 0  # a 1.x body parser finds no timeseries in a 2.0 body
    assert counters.value("requests", protocol="rw2", status="204") == 1
    assert [r.codec for r in vm.received if r.batch.samples] == ["zstd"]
    assert counters.value("requests", protocol="vm", status="204") == 1
    assert vm.handshakes == 1


# -- against a Headwater gateway ---------------------------------------------------------------------------


def test_auto_against_a_gateway_ends_on_compact_and_every_sample_arrives_exactly_once() -> None:
    counters = Counters()

    async def go() -> tuple[str | None, list[SampleBatch], Gateway]:
        async with gateway() as gw:
            rw = exporter(gw.url, counters, "auto")
            await rw.start()
            try:
                sent = await send_flushes(rw, gw.samples)
            finally:
                await rw.shutdown(timeout=10.0)
            return rw.protocol, sent, gw

    protocol, sent, gw = asyncio.run(go())
    assert protocol == "compact"
    assert len(gw.consumed) == FLUSHES  # one request per flush, all in one compact session
    assert len(gw.receiver.sessions) == 1
    assert canonical(merged(gw.consumed)) == canonical(merged(sent))
    assert counters.value("requests", protocol="compact", status="204") == FLUSHES
    assert counters.value("requests", protocol="rw2") == 0  # compact was taken first, nothing fell back
    assert counters.value("samples_sent") == FLUSHES * len(SERIES)
    assert counters.value("samples_dropped") == 0 and counters.value("samples_failed") == 0


def test_rw2_against_a_gateway_is_accepted_because_the_gateway_says_what_it_wrote() -> None:
    counters = Counters()

    async def go() -> tuple[str | None, list[SampleBatch], Gateway]:
        async with gateway() as gw:
            rw = exporter(gw.url, counters, "rw2")
            await rw.start()
            try:
                sent = await send_flushes(rw, gw.samples)
            finally:
                await rw.shutdown(timeout=10.0)
            return rw.protocol, sent, gw

    protocol, sent, gw = asyncio.run(go())
    assert protocol == "rw2"
    assert canonical(merged(gw.consumed)) == canonical(merged(sent))
    assert counters.value("requests", protocol="rw2", status="204") == FLUSHES
    assert counters.value("samples_sent") == FLUSHES * len(SERIES)
    assert counters.value("samples_dropped") == 0 and counters.value("samples_failed") == 0
