"""The `vm` format (remote write 1.0 body, zstd) and rw1 as encoders, the decoder they share, the handshake as
a sender reads it, and a `vm` request arriving at a scripted VictoriaMetrics >= 1.88 (tests/vm_receiver.py).

Remote write 1.0 has no place for metadata per series or start timestamps, so round trips compare without
them. Async tests run with `asyncio.run` inside plain test functions.
"""

from __future__ import annotations

import asyncio

import aiohttp
import cramjam
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings

from exporters.remote_write import rw1, vm
from exporters.remote_write.encoding import DecodeError, decompress
from exporters.remote_write.proto.remote_write_v1_pb2 import (
    Histogram,
    Label,
    MetricMetadata,
    Sample,
    TimeSeries,
    WriteRequest,
)
from exporters.remote_write.series import Metadata, SampleBatch
from tests.series_strategies import batches, canonical
from tests.vm_receiver import VmReceiver

ROUND_TRIP = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
A = (("__name__", "a"), ("job", "j"))


def rw1_canonical(batch: SampleBatch) -> dict:
    return canonical(batch, metadata=False, start_timestamps=False, histogram_start=False)


def one_sample() -> SampleBatch:
    return SampleBatch(labels=[A], values=[1.5], timestamps=[1000], sizes=[0])


# -- encoders -------------------------------------------------------------------------------------------------


@ROUND_TRIP
@given(batches(histograms=True, metadata=False, start_timestamps=False))
def test_an_rw1_body_decodes_to_the_batch_it_was_encoded_from(batch: SampleBatch) -> None:
    encoded = vm.Rw1Encoder().encode(batch)
    raw = bytes(cramjam.snappy.decompress_raw(encoded.body))
    assert rw1_canonical(vm.Rw1Decoder().decode(raw, encoded.headers)) == rw1_canonical(batch)


@ROUND_TRIP
@given(batches(histograms=True, metadata=False, start_timestamps=False))
def test_a_vm_body_decodes_from_zstd_to_the_batch_it_was_encoded_from(batch: SampleBatch) -> None:
    encoded = vm.VmEncoder().encode(batch)
    raw = zstandard.ZstdDecompressor().stream_reader(encoded.body).read()
    assert rw1_canonical(vm.Rw1Decoder().decode(raw, encoded.headers)) == rw1_canonical(batch)


def test_a_vm_body_is_the_rw1_body_byte_for_byte_under_another_codec() -> None:
    batch = one_sample()
    vm_raw = decompress("zstd", vm.VmEncoder(level=9).encode(batch).body, 1 << 20)
    rw1_raw = decompress("snappy", vm.Rw1Encoder().encode(batch).body, 1 << 20)
    assert vm_raw == rw1_raw == rw1.build_write_request([A], [1.5], [1000]).SerializeToString()


def test_vm_requests_carry_exactly_the_vm_headers() -> None:
    assert dict(vm.VmEncoder().encode(one_sample()).headers) == {
        "Content-Encoding": "zstd",
        "Content-Type": "application/x-protobuf",
        "X-VictoriaMetrics-Remote-Write-Version": "1",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }


def test_rw1_requests_carry_exactly_the_remote_write_1_0_headers() -> None:
    assert dict(vm.Rw1Encoder().encode(one_sample()).headers) == {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }


def test_headers_handed_to_a_request_cannot_be_changed_for_the_next_one() -> None:
    headers = vm.VmEncoder().encode(one_sample()).headers
    with pytest.raises(TypeError):
        headers["Content-Encoding"] = "snappy"  # type: ignore[index]


def test_an_encoded_request_counts_float_samples_histograms_and_exemplars_apart() -> None:
    batch = SampleBatch(labels=[A, A], values=[1.0, 2.0], timestamps=[1, 2], sizes=[0, 0])
    encoded = vm.VmEncoder().encode(batch)
    assert (encoded.samples, encoded.histograms, encoded.exemplars) == (2, 0, 0)


def test_the_encoders_and_the_decoder_name_their_protocols() -> None:
    assert (vm.VmEncoder.protocol, vm.Rw1Encoder.protocol, vm.Rw1Decoder.protocol) == ("vm", "rw1", "rw1")


# -- the handshake --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"1", b"2", b"+1"])
def test_a_200_answering_a_version_of_at_least_1_advertises_vm(body: bytes) -> None:
    assert vm.supports_vm(200, body)


@pytest.mark.parametrize(
    "status, body",
    [
        (400, b"cannot decompress request with length 0: snappy: corrupt input\n"),  # VictoriaMetrics 1.79
        (405, b"1"),
        (204, b"1"),
        (404, b"404 page not found\n"),
    ],
)
def test_an_answer_other_than_200_never_advertises_vm(status: int, body: bytes) -> None:
    assert not vm.supports_vm(status, body)


@pytest.mark.parametrize("body", [b"", b"0", b"-1", b"1\n", b" 1", b"1.0", b"1_0", b"<html>1</html>", b"9" * 20])
def test_a_200_whose_body_go_cannot_read_as_a_version_of_at_least_1_does_not_advertise_vm(body: bytes) -> None:
    assert not vm.supports_vm(200, body)


def test_the_handshake_query_is_appended_to_the_url_keeping_its_own_query() -> None:
    assert vm.handshake_url("http://h/api/v1/write") == "http://h/api/v1/write?get_vm_proto_version=1"
    assert vm.handshake_url("http://h/w?tenant=a") == "http://h/w?tenant=a&get_vm_proto_version=1"


# -- the decoder ----------------------------------------------------------------------------------------------


def body(*series: TimeSeries, metadata: tuple[MetricMetadata, ...] = ()) -> bytes:
    return WriteRequest(timeseries=series, metadata=metadata).SerializeToString()


def labelled(*pairs: tuple[str, str]) -> TimeSeries:
    return TimeSeries(labels=[Label(name=n, value=v) for n, v in pairs], samples=[Sample(value=1.0, timestamp=5)])


def test_a_body_that_is_not_a_write_request_is_refused_as_malformed() -> None:
    with pytest.raises(DecodeError, match="not a valid prometheus.WriteRequest"):
        vm.Rw1Decoder().decode(b"\x0a\xff\x01", {})


def test_a_series_with_an_empty_label_name_is_refused() -> None:
    with pytest.raises(DecodeError, match="series 0 has an empty label name"):
        vm.Rw1Decoder().decode(body(labelled(("", "x"), ("__name__", "a"))), {})


def test_a_series_with_unsorted_label_names_is_refused() -> None:
    with pytest.raises(DecodeError, match="series 1 has an unsorted label name '__name__'"):
        vm.Rw1Decoder().decode(body(labelled(*A), labelled(("job", "j"), ("__name__", "a"))), {})


def test_a_series_with_a_duplicate_label_name_is_refused() -> None:
    with pytest.raises(DecodeError, match="series 0 has a duplicate label name 'job'"):
        vm.Rw1Decoder().decode(body(labelled(("__name__", "a"), ("job", "j"), ("job", "k"))), {})


def test_a_series_without_a_metric_name_is_refused() -> None:
    with pytest.raises(DecodeError, match="series 0 has no __name__ label"):
        vm.Rw1Decoder().decode(body(labelled(("job", "j"))), {})


def test_a_native_histogram_with_float_counts_is_refused_rather_than_rounded() -> None:
    series = TimeSeries(labels=[Label(name="__name__", value="h")], histograms=[Histogram(count_float=2.5, timestamp=5)])
    with pytest.raises(DecodeError, match="float-count native histogram"):
        vm.Rw1Decoder().decode(body(series), {})


def test_metric_metadata_sent_the_prometheus_way_is_kept_by_family_name() -> None:
    family = MetricMetadata(type=MetricMetadata.COUNTER, metric_family_name="a", help="As.", unit="seconds")
    batch = vm.Rw1Decoder().decode(body(labelled(*A), metadata=(family,)), {})
    assert batch.metadata == {"a": Metadata("counter", "As.", "seconds")}


# -- a scripted VictoriaMetrics >= 1.88 -----------------------------------------------------------------------


async def post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as response:
        return response.status, await response.text()


def test_the_scripted_receiver_advertises_vm_in_the_handshake() -> None:
    async def scenario() -> tuple[int, bytes, int]:
        async with (
            VmReceiver() as receiver,
            aiohttp.ClientSession() as session,
            session.get(vm.handshake_url(receiver.remote_write_url)) as response,
        ):
            return response.status, await response.read(), len(receiver.received)

    status, answer, written = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert vm.supports_vm(status, answer)
    assert written == 0


def test_a_vm_request_arrives_intact_at_the_scripted_receiver() -> None:
    batch = SampleBatch(
        labels=[A, (("__name__", "b"),), A], values=[1.0, 2.0, 3.0], timestamps=[300, 100, 200], sizes=[0, 0, 0]
    )
    encoded = vm.VmEncoder().encode(batch)

    async def scenario() -> tuple[int, VmReceiver]:
        async with VmReceiver() as receiver:
            status, _ = await post(receiver.remote_write_url, encoded.body, dict(encoded.headers))
            return status, receiver

    status, receiver = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert status == 204
    assert [r.codec for r in receiver.received] == ["zstd"]
    assert receiver.received[0].headers["X-VictoriaMetrics-Remote-Write-Version"] == "1"
    assert rw1_canonical(receiver.received[0].batch) == rw1_canonical(batch)
    assert (receiver.samples, receiver.series) == (3, {A, (("__name__", "b"),)})


def test_the_scripted_receiver_still_takes_snappy_rw1_requests() -> None:
    encoded = vm.Rw1Encoder().encode(one_sample())

    async def scenario() -> tuple[int, VmReceiver]:
        async with VmReceiver() as receiver:
            status, _ = await post(receiver.remote_write_url, encoded.body, dict(encoded.headers))
            return status, receiver

    status, receiver = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert (status, [r.codec for r in receiver.received], receiver.samples) == (204, ["snappy"], 1)


def test_the_scripted_receiver_refuses_a_zstd_body_not_labelled_zstd_as_1_88_does() -> None:
    encoded = vm.VmEncoder().encode(one_sample())
    headers = {**encoded.headers, "Content-Encoding": "snappy"}

    async def scenario() -> tuple[int, str, VmReceiver]:
        async with VmReceiver() as receiver:
            status, text = await post(receiver.remote_write_url, encoded.body, headers)
            return status, text, receiver

    status, text, receiver = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert (status, receiver.received) == (400, [])
    assert "snappy: corrupt input" in text
