"""The gateway's remote-write receiver in process: every format accepted and counted, handshakes, and each
refusal with the status the remote-write specs prescribe, a message that says what was wrong, and nothing
handed to the pipeline.

The receiver runs on 127.0.0.1 at a port of its choosing, with a real `Admission` and a recording consumer
(an async function appending each `SampleBatch`). Requests are built with the senders' own encoders, as a
node agent, Prometheus (rw1, rw2) or vmagent (vm) would send them. Async tests run with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import cramjam
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings

from agent.admission import Admission
from agent.receivers.remote_write import RemoteWriteReceiver
from exporters.remote_write.compact import SESSION_LOST_PREFIX, CompactEncoder
from exporters.remote_write.compact_session import CompactSessions
from exporters.remote_write.encoding import (
    Encoded,
    Encoder,
    TooLarge,
    compress,
    decompress,
)
from exporters.remote_write.formats import RW2_CONTENT_TYPE
from exporters.remote_write.proto.remote_write_v1_pb2 import WriteRequest
from exporters.remote_write.rw2 import Rw2Encoder
from exporters.remote_write.series import (
    STALE_NAN,
    Exemplar,
    Metadata,
    NativeHistogram,
    SampleBatch,
)
from exporters.remote_write.vm import Rw1Encoder, VmEncoder
from tests.series_strategies import batches, canonical

MAX_BODY = 1 << 20
SAMPLES_WRITTEN = "X-Prometheus-Remote-Write-Samples-Written"
HISTOGRAMS_WRITTEN = "X-Prometheus-Remote-Write-Histograms-Written"
EXEMPLARS_WRITTEN = "X-Prometheus-Remote-Write-Exemplars-Written"
RW1_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
               "X-Prometheus-Remote-Write-Version": "0.1.0"}

UP = (("__name__", "up"), ("instance", "node-1"), ("job", "node"))
LOAD = (("__name__", "node_load1"), ("instance", "node-1"))
LATENCY = (("__name__", "http_latency_seconds"), ("route", "/checkout"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the gateway and a client ------------------------------------------------------------------------------


@dataclass
class Gateway:
    receiver: RemoteWriteReceiver
    admission: Admission
    consumed: list[SampleBatch] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.receiver.bound_port}/api/v1/write"


@contextlib.asynccontextmanager
async def gateway(
    *, max_body: int = MAX_BODY, admission: Admission | None = None, sessions: CompactSessions | None = None,
    port: int = 0,
) -> AsyncIterator[Gateway]:
    consumed: list[SampleBatch] = []

    async def consume(batch: SampleBatch) -> None:
        consumed.append(batch)

    admission = admission or Admission(64 << 20, retry_after=2.0)
    receiver = RemoteWriteReceiver(f"127.0.0.1:{port}", max_body, admission, consume, sessions=sessions,
                                   drain_timeout=1.0)
    await receiver.start()
    try:
        yield Gateway(receiver, admission, consumed)
    finally:
        await receiver.shutdown(2.0)


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    headers: dict[str, str]

    def written(self) -> tuple[int, int, int]:
        return (int(self.headers[SAMPLES_WRITTEN]), int(self.headers[HISTOGRAMS_WRITTEN]),
                int(self.headers[EXEMPLARS_WRITTEN]))


async def post(url: str, body: Any, headers: dict[str, str]) -> Answer:
    async with (aiohttp.ClientSession(auto_decompress=False) as session,
                session.post(url, data=body, headers=headers) as response):
        return Answer(response.status, await response.text(), dict(response.headers))


async def send(url: str, encoded: Encoded) -> Answer:
    """Post one encoded request as a sender would: its headers, its body, and `commit` after a 2xx."""
    answer = await post(url, encoded.body, dict(encoded.headers))
    if 200 <= answer.status < 300 and encoded.commit is not None:
        encoded.commit()
    return answer


async def get(url: str) -> Answer:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return Answer(response.status, await response.text(), dict(response.headers))


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
        out.metadata.update(part.metadata)
    return out


def scrape(step: int, series: tuple[tuple[tuple[str, str], ...], ...] = (UP, LOAD)) -> SampleBatch:
    """One sample per series at 1000 * step ms, value = step."""
    batch = SampleBatch()
    for labels in series:
        batch.labels.append(labels)
        batch.values.append(float(step))
        batch.timestamps.append(1_700_000_000_000 + 1000 * step)
        batch.sizes.append(0)
    return batch


def rich_batch() -> SampleBatch:
    """Float samples (special values included), a native histogram, exemplars, metadata, start timestamps."""
    batch = SampleBatch()
    rows = [(UP, 1.0, 1000, 0), (LOAD, 0.25, 1000, 500), (UP, STALE_NAN, 2000, 0), (LOAD, -0.0, 2000, 500),
            (LOAD, float("inf"), 3000, 500)]
    for labels, value, stamp, start in rows:
        batch.labels.append(labels)
        batch.values.append(value)
        batch.timestamps.append(stamp)
        batch.sizes.append(0)
        batch.start_timestamps.append(start)
    batch.histogram_labels.append(LATENCY)
    batch.histograms.append(NativeHistogram(
        timestamp=1500, count=7, sum=12.5, schema=3, zero_threshold=1e-128, zero_count=1,
        negative_spans=((-1, 1),), negative_deltas=(2,), positive_spans=((1, 2), (3, 1)),
        positive_deltas=(1, 1, 1), start_timestamp=100))
    batch.histogram_sizes.append(0)
    trace = (("span_id", "00f067aa0ba902b7"), ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"))
    batch.exemplar_labels += [LOAD, LATENCY]
    batch.exemplars += [Exemplar(trace, 0.25, 1000), Exemplar(trace, 0.3, 1500)]
    batch.exemplar_sizes += [0, 0]
    batch.metadata["up"] = Metadata("gauge", "whether the target is up", "")
    batch.metadata["http_latency_seconds"] = Metadata("histogram", "request latency", "seconds")
    return batch


RW1_CARRIES = {"metadata": False, "start_timestamps": False, "histogram_start": False}
# What each format carries: remote write 1.0 (and vm, its body under zstd) has no metadata in our encoder
# and no start timestamps; rw2 (rc.4) and compact carry everything in the series model.
FORMATS: dict[str, tuple[Callable[[], Encoder], dict[str, bool]]] = {
    "rw1": (Rw1Encoder, RW1_CARRIES),
    "vm": (VmEncoder, RW1_CARRIES),
    "rw2": (Rw2Encoder, {}),
    "compact": (CompactEncoder, {}),
}


# -- each format is accepted, counted and handed over whole ------------------------------------------------


@pytest.mark.parametrize("protocol", FORMATS)
def test_each_format_is_accepted_with_204_and_written_headers_equal_to_what_was_sent(protocol: str) -> None:
    new_encoder, _ = FORMATS[protocol]
    batch = rich_batch()

    async def go() -> None:
        async with gateway() as gw:
            encoded = new_encoder().encode(batch)
            answer = await send(gw.url, encoded)
            assert answer.status == 204, answer.text
            assert answer.written() == (5, 1, 2) == (encoded.samples, encoded.histograms, encoded.exemplars)
    run(go())


@pytest.mark.parametrize("protocol", FORMATS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_each_format_hands_the_consumer_exactly_the_samples_sent(protocol: str, batch: SampleBatch) -> None:
    new_encoder, carries = FORMATS[protocol]

    async def go() -> None:
        async with gateway() as gw:
            encoded = new_encoder().encode(batch)
            answer = await send(gw.url, encoded)
            assert answer.status == 204, answer.text
            assert answer.written() == (len(batch.values), len(batch.histograms), encoded.exemplars)
            assert len(gw.consumed) == 1
            assert canonical(gw.consumed[0], **carries) == canonical(batch, **carries)
    run(go())


def test_a_compact_sender_s_later_requests_refer_to_its_dictionary_and_still_arrive_whole() -> None:
    async def go() -> None:
        async with gateway() as gw:
            encoder = CompactEncoder()
            sent = [scrape(step) for step in range(4)]
            for batch in sent:
                encoded = encoder.encode(batch)
                answer = await send(gw.url, encoded)
                assert answer.status == 204, answer.text
            assert encoder.sequence == 5
            assert [canonical(b) for b in gw.consumed] == [canonical(b) for b in sent]
    run(go())


def test_a_compact_body_may_be_snappy_compressed() -> None:
    async def go() -> None:
        async with gateway() as gw:
            encoded = CompactEncoder(codec="snappy").encode(scrape(1))
            assert encoded.headers["Content-Encoding"] == "snappy"
            answer = await send(gw.url, encoded)
            assert answer.status == 204, answer.text
            assert canonical(merged(gw.consumed)) == canonical(scrape(1))
    run(go())


def test_a_request_s_bytes_are_released_from_admission_once_it_is_answered() -> None:
    async def go() -> None:
        async with gateway() as gw:
            assert (await send(gw.url, Rw1Encoder().encode(scrape(1)))).status == 204
            assert (await post(gw.url, compress("snappy", b"\xff\xff"), RW1_HEADERS)).status == 400
            assert gw.admission.in_flight() == 0
    run(go())


# -- handshakes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["get_headwater_compact_version=1", "get_vm_proto_version=1"])
def test_a_handshake_get_answers_200_with_the_body_1(query: str) -> None:
    async def go() -> None:
        async with gateway() as gw:
            answer = await get(f"{gw.url}?{query}")
            assert (answer.status, answer.text) == (200, "1")
            assert gw.consumed == []
    run(go())


@pytest.mark.parametrize("query", ["get_headwater_compact_version=1", "get_vm_proto_version=1"])
def test_a_handshake_posted_with_an_empty_body_answers_200_with_the_body_1_and_writes_nothing(query: str) -> None:
    # vmagent 1.89 to 1.115 asks with a POST and no body (VictoriaMetrics answers the query whatever the
    # method); a 400 here would keep such a sender on remote write 1.0 for the life of its process.
    async def go() -> None:
        async with gateway() as gw:
            answer = await post(f"{gw.url}?{query}", b"", {})
            assert (answer.status, answer.text) == (200, "1")
            assert gw.consumed == []
    run(go())


def test_a_plain_get_answers_405_allowing_post() -> None:
    async def go() -> None:
        async with gateway() as gw:
            answer = await get(gw.url)
            assert answer.status == 405
            assert answer.headers["Allow"] == "POST"
    run(go())


# -- refusals -----------------------------------------------------------------------------------------------


def rw1_body(step: int = 1) -> bytes:
    return Rw1Encoder().encode(scrape(step)).body


async def still_serving(gw: Gateway) -> None:
    """After a refusal the gateway keeps working: a good request is accepted and handed over."""
    answer = await send(gw.url, Rw1Encoder().encode(scrape(99)))
    assert answer.status == 204, answer.text
    assert canonical(merged(gw.consumed)) == canonical(scrape(99))


def test_an_unknown_content_type_is_refused_with_415_naming_it() -> None:
    async def go() -> None:
        async with gateway() as gw:
            answer = await post(gw.url, rw1_body(), {**RW1_HEADERS, "Content-Type": "application/json"})
            assert answer.status == 415
            assert "Content-Type" in answer.text and "application/json" in answer.text
            assert gw.consumed == []
            await still_serving(gw)
    run(go())


def test_a_gzip_content_encoding_is_refused_with_415_naming_it() -> None:
    async def go() -> None:
        async with gateway() as gw:
            raw = cramjam.snappy.decompress_raw(rw1_body()).read()
            answer = await post(gw.url, gzip.compress(bytes(raw)), {**RW1_HEADERS, "Content-Encoding": "gzip"})
            assert answer.status == 415
            assert "Content-Encoding" in answer.text and "gzip" in answer.text
            assert gw.consumed == []
    run(go())


def test_an_rw2_body_compressed_with_zstd_is_refused_with_415_saying_rw2_is_snappy_only() -> None:
    # The 2.0 spec: a receiver answers 415 to a Content-Encoding it does not support; 2.0 allows snappy only.
    async def go() -> None:
        async with gateway() as gw:
            raw = Rw2Encoder().serialize(scrape(1))
            answer = await post(gw.url, compress("zstd", raw), {
                "Content-Type": RW2_CONTENT_TYPE, "Content-Encoding": "zstd",
                "X-Prometheus-Remote-Write-Version": "2.0.0"})
            assert answer.status == 415
            assert "snappy" in answer.text
            assert gw.consumed == []
    run(go())


def test_a_body_that_is_not_snappy_is_refused_with_400_saying_so() -> None:
    async def go() -> None:
        async with gateway() as gw:
            answer = await post(gw.url, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", RW1_HEADERS)
            assert answer.status == 400
            assert "snappy" in answer.text and "corrupt" in answer.text
            assert gw.consumed == []
            await still_serving(gw)
    run(go())


def test_a_valid_snappy_body_that_is_not_a_write_request_is_refused_with_400_saying_so() -> None:
    async def go() -> None:
        async with gateway() as gw:
            answer = await post(gw.url, compress("snappy", b"hello, not a protobuf"), RW1_HEADERS)
            assert answer.status == 400
            assert "WriteRequest" in answer.text
            assert gw.consumed == []
    run(go())


def test_a_zstd_body_of_two_frames_is_decoded_whole_or_refused() -> None:
    # RFC 8878 allows a zstd stream of several frames, and a streaming sender writes one; VictoriaMetrics
    # decodes them all. Keeping the first and answering 204 would lose the rest silently.
    raw = cramjam.snappy.decompress_raw(Rw1Encoder().encode(scrape(1, (UP, LOAD, LATENCY))).body).read()
    series = WriteRequest.FromString(raw).timeseries
    # Repeated fields concatenate: the first TimeSeries alone, then the rest, are a valid body each and together.
    head = WriteRequest(timeseries=series[:1]).SerializeToString()
    tail = WriteRequest(timeseries=series[1:]).SerializeToString()
    assert head + tail == raw
    body = compress("zstd", head) + compress("zstd", tail)

    async def go() -> None:
        async with gateway() as gw:
            answer = await post(gw.url, body, {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"})
            if answer.status == 204:
                assert canonical(merged(gw.consumed), metadata=False) == canonical(scrape(1, (UP, LOAD, LATENCY)))
            else:
                assert answer.status == 400 and gw.consumed == []
    run(go())


def test_a_body_larger_than_max_body_size_as_sent_is_refused_with_413() -> None:
    async def go() -> None:
        async with gateway(max_body=64 << 10) as gw:
            answer = await post(gw.url, b"\x00" * (256 << 10), RW1_HEADERS)
            assert answer.status == 413
            assert "max_body_size" in answer.text and str(64 << 10) in answer.text
            assert gw.consumed == []
            await still_serving(gw)
    run(go())


def test_a_chunked_body_that_grows_past_max_body_size_is_refused_with_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(16):
            yield b"\x00" * (16 << 10)

    async def go() -> None:
        async with gateway(max_body=64 << 10) as gw:
            answer = await post(gw.url, chunks(), RW1_HEADERS)
            assert answer.status == 413
            assert "max_body_size" in answer.text
            assert gw.consumed == []
    run(go())


def zstd_bomb(total: int, block: int = 128 << 10) -> bytes:
    """A zstd frame of `total` zero bytes in RLE blocks (4 bytes per 128 KiB) that does not state its size."""
    frame = bytearray(b"\x28\xb5\x2f\xfd")  # magic
    frame += b"\x00"  # no content size, not single-segment: a window descriptor follows
    frame += bytes([(17 - 10) << 3])  # window 2**17 bytes
    count = total // block
    for i in range(count):
        frame += ((block << 3) | (1 << 1) | (i == count - 1)).to_bytes(3, "little") + b"\x00"
    return bytes(frame)


def test_a_small_zstd_body_that_decompresses_past_max_body_size_is_refused_with_413_without_inflating_it() -> None:
    bomb = zstd_bomb(1 << 30)  # 32 KiB that inflate to 1 GiB
    assert len(bomb) < MAX_BODY

    async def go() -> tuple[Answer, int]:
        async with gateway() as gw:
            tracemalloc.start()
            try:
                answer = await post(gw.url, bomb, {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"})
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert gw.consumed == []
            return answer, peak

    answer, peak = run(go())
    assert answer.status == 413
    assert "max_body_size" in answer.text and "decompresses" in answer.text
    assert peak < 16 * MAX_BODY  # the limit's worth was inflated, not the gigabyte


def test_a_small_snappy_body_that_decompresses_past_max_body_size_is_refused_with_413() -> None:
    body = compress("snappy", b"\x00" * (4 * MAX_BODY))  # its preamble states 4 MiB
    assert len(body) < MAX_BODY

    async def go() -> None:
        async with gateway() as gw:
            answer = await post(gw.url, body, RW1_HEADERS)
            assert answer.status == 413
            assert "max_body_size" in answer.text and str(4 * MAX_BODY) in answer.text
            assert gw.consumed == []
    run(go())


def test_a_compact_request_for_a_session_the_gateway_does_not_know_is_refused_with_409_session_lost() -> None:
    async def go() -> None:
        async with gateway() as gw:
            encoder = CompactEncoder()
            encoder.encode(scrape(1)).commit()  # acknowledged somewhere else: this gateway never saw it
            encoded = encoder.encode(scrape(2))
            assert encoded.headers["X-Headwater-Sequence"] == "2"
            answer = await send(gw.url, encoded)
            assert answer.status == 409
            assert answer.text.startswith(SESSION_LOST_PREFIX)
            assert encoder.sender_id in answer.text
            assert gw.consumed == []
    run(go())


def test_a_compact_request_with_a_malformed_session_header_is_refused_with_400_naming_it() -> None:
    async def go() -> None:
        async with gateway() as gw:
            encoded = CompactEncoder().encode(scrape(1))
            answer = await post(gw.url, encoded.body, {**encoded.headers, "X-Headwater-Sequence": "first"})
            assert answer.status == 400
            assert "X-Headwater-Sequence" in answer.text
            assert gw.consumed == []
    run(go())


def test_over_budget_admission_refuses_with_429_and_retry_after_and_the_compact_session_stays_put() -> None:
    queued = [10 << 20]  # what exporters hold: more than the whole budget
    admission = Admission(1 << 20, retry_after=2.0, queued=[lambda: queued[0]])

    async def go() -> None:
        async with gateway(admission=admission) as gw:
            encoder = CompactEncoder()
            first = encoder.encode(scrape(1))
            refused = await send(gw.url, first)
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "2"
            assert "admission.max_inflight" in refused.text
            assert gw.consumed == []
            assert len(gw.receiver.sessions) == 0  # nothing was committed for the refused request

            queued[0] = 0  # the exporters drained
            resent = await send(gw.url, first)  # the very same request, as the sender resends it
            assert resent.status == 204, resent.text
            assert [canonical(b) for b in gw.consumed] == [canonical(scrape(1))]

            queued[0] = 10 << 20
            second = encoder.encode(scrape(2))
            assert (await send(gw.url, second)).status == 429
            queued[0] = 0
            assert (await send(gw.url, second)).status == 204
            third = encoder.encode(scrape(3))  # follows the resent second: the session moved once per accept
            assert (await send(gw.url, third)).status == 204
            assert [canonical(b) for b in gw.consumed] == [canonical(scrape(s)) for s in (1, 2, 3)]
    run(go())


# -- a gateway restart --------------------------------------------------------------------------------------


def test_after_a_gateway_restart_a_compact_sender_gets_409_and_after_reset_its_resend_is_accepted() -> None:
    async def go() -> None:
        encoder = CompactEncoder()
        async with gateway() as before:
            assert (await send(before.url, encoder.encode(scrape(1)))).status == 204
            port = before.receiver.bound_port
        async with gateway(port=port, sessions=CompactSessions()) as after:
            batch = scrape(2)
            lost = await send(after.url, encoder.encode(batch))
            assert lost.status == 409
            assert lost.text.startswith(SESSION_LOST_PREFIX)
            assert after.consumed == []
            encoder.reset()
            resent = await send(after.url, encoder.encode(batch))
            assert resent.status == 204, resent.text
            assert [canonical(b) for b in after.consumed] == [canonical(batch)]
    run(go())


# -- lifecycle ----------------------------------------------------------------------------------------------


def test_shutdown_without_start_is_safe() -> None:
    async def go() -> None:
        receiver = RemoteWriteReceiver("127.0.0.1:0", MAX_BODY, Admission(1 << 20, 1.0), _ignore)
        await receiver.shutdown(1.0)
    run(go())


def test_shutdown_twice_is_safe_and_the_port_is_closed_after_the_first() -> None:
    async def go() -> None:
        receiver = RemoteWriteReceiver("127.0.0.1:0", MAX_BODY, Admission(1 << 20, 1.0), _ignore)
        await receiver.start()
        url = f"http://127.0.0.1:{receiver.bound_port}/api/v1/write?get_vm_proto_version=1"
        assert (await get(url)).status == 200
        await receiver.shutdown(1.0)
        await receiver.shutdown(1.0)
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(url)
    run(go())


async def _ignore(batch: SampleBatch) -> None:
    return None


def _frame(data: bytes, stated: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=stated).compress(data)


@pytest.mark.parametrize(
    ("frames", "limit", "expected"),
    [
        ([b"a" * 100], 100, b"a" * 100),
        ([b"a" * 100], 99, TooLarge),
        ([b"a" * 100, b"b" * 50], 150, b"a" * 100 + b"b" * 50),
        ([b"a" * 100, b"b" * 50], 149, TooLarge),
        ([b"", b"b" * 50], 50, b"b" * 50),
        ([b"", b"b" * 50], 49, TooLarge),
    ],
)
@pytest.mark.parametrize("stated", [True, False])
def test_zstd_decompression_sized_by_the_first_frame_still_reads_every_frame_up_to_the_limit(
    frames: list[bytes], limit: int, expected: bytes | type[Exception], stated: bool
) -> None:
    body = b"".join(_frame(data, stated) for data in frames)
    if isinstance(expected, bytes):
        assert decompress("zstd", body, limit) == expected
    else:
        with pytest.raises(expected):
            decompress("zstd", body, limit)
