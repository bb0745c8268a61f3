"""OTLP/HTTP receiver: statuses and messages the OTLP/HTTP spec prescribes, and nothing accepted is lost."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import zstandard
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agent.receivers.proto.rpc_status_pb2 import Status
from tests.receiver_harness import http_receiver, spans_request

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


def run(coro):
    return asyncio.run(coro)


async def post(url: str, body: bytes, headers: dict[str, str], path: str = "/v1/traces") -> tuple[int, bytes, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def status_message(body: bytes, json_body: bool) -> str:
    if json_body:
        return json.loads(body)["message"]
    return Status.FromString(body).message


async def still_serving(url: str, recorder) -> None:
    """After a refusal the receiver keeps working: a good request is accepted and recorded."""
    status, _, _ = await post(url, spans_request("after").SerializeToString(), PB)
    assert status == 200
    assert "after" in recorder.span_names()


def test_a_valid_protobuf_request_is_accepted_with_an_empty_response():
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, body, headers = await post(url, spans_request("a", "b").SerializeToString(), PB)
            assert status == 200
            assert headers["Content-Type"].startswith("application/x-protobuf")
            assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
            assert traces.span_names() == ["a", "b"]
    run(go())


def test_a_valid_json_request_with_hex_ids_is_accepted():
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "j", "kind": 2,
         "startTimeUnixNano": "1700000000000000000", "futureField": 1}]}]}]}
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, resp, _ = await post(url, json.dumps(body).encode(), JS)
            assert status == 200, resp
            assert json.loads(resp) == {}
            span = traces.batches[0].resource_spans[0].scope_spans[0].spans[0]
            assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
            assert span.span_id.hex() == "b7ad6b7169203331"
    run(go())


def test_truncated_protobuf_is_refused_with_400_and_a_status_message():
    async def go():
        async with http_receiver() as (url, traces, _, _):
            data = spans_request("a").SerializeToString()
            status, body, _ = await post(url, data[:-5], PB)
            assert status == 400
            assert "invalid OTLP protobuf" in status_message(body, False)
            await still_serving(url, traces)
            assert traces.span_names() == ["after"]
    run(go())


def test_invalid_json_is_refused_with_400_and_a_message():
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, body, _ = await post(url, b'{"resourceSpans": [', JS)
            assert status == 400
            assert "invalid OTLP JSON" in status_message(body, True)
            await still_serving(url, traces)
    run(go())


def test_a_json_trace_id_that_is_not_hex_is_refused_with_400_naming_the_field():
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"b7ad6b7169203331"}]}]}]}'
    async def go():
        async with http_receiver() as (url, _, _, _):
            status, resp, _ = await post(url, body, JS)
            assert status == 400
            assert "traceId" in status_message(resp, True)
    run(go())


def test_a_json_trace_id_of_the_wrong_length_is_a_partial_success():
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0af7651916cd43dd", "spanId": "b7ad6b7169203331", "name": "short"},
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "good"}]}]}]}
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, resp, _ = await post(url, json.dumps(body).encode(), JS)
            assert status == 200
            partial = json.loads(resp)["partialSuccess"]
            assert int(partial["rejectedSpans"]) == 1
            assert "trace ID of 8 bytes" in partial["errorMessage"]
            assert traces.span_names() == ["good"]
    run(go())


def test_a_protobuf_trace_id_of_the_wrong_length_is_a_partial_success():
    request = spans_request("good")
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.trace_id, bad.span_id, bad.name = b"\x02" * 15, b"\x03" * 8, "bad"
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, resp, _ = await post(url, request.SerializeToString(), PB)
            assert status == 200
            partial = ExportTraceServiceResponse.FromString(resp).partial_success
            assert partial.rejected_spans == 1
            assert "trace ID of 15 bytes" in partial.error_message
            assert traces.span_names() == ["good"]
    run(go())


def test_an_unsupported_content_type_is_refused_with_415():
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, body, _ = await post(url, b"hello", {"Content-Type": "text/plain"})
            assert status == 415
            assert "unsupported Content-Type 'text/plain'" in status_message(body, True)
            await still_serving(url, traces)
    run(go())


def test_an_unsupported_content_encoding_is_refused_with_415():
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, body, _ = await post(url, b"xx", {**PB, "Content-Encoding": "br"})
            assert status == 415
            assert "unsupported Content-Encoding 'br'" in status_message(body, False)
            await still_serving(url, traces)
    run(go())


def test_gzip_deflate_and_zstd_bodies_are_accepted():
    data = spans_request("z").SerializeToString()
    bodies = {"gzip": gzip.compress(data), "deflate": zlib.compress(data),
              "zstd": zstandard.ZstdCompressor().compress(data)}
    async def go():
        async with http_receiver() as (url, traces, _, _):
            for encoding, body in bodies.items():
                status, resp, _ = await post(url, body, {**PB, "Content-Encoding": encoding})
                assert status == 200, (encoding, resp)
            assert traces.span_names() == ["z", "z", "z"]
    run(go())


def test_a_body_over_the_limit_is_refused_with_413_and_the_client_reads_it():
    async def go():
        async with http_receiver(max_body_size=10_000) as (url, traces, _, _):
            status, body, _ = await post(url, b"\x00" * 2_000_000, PB)
            assert status == 413
            assert "exceeds the limit of 10000 bytes" in status_message(body, False)
            await still_serving(url, traces)
    run(go())


def test_a_chunked_body_over_the_limit_is_refused_with_413():
    async def chunks():
        for _ in range(100):
            yield b"\x00" * 1000

    async def go():
        async with http_receiver(max_body_size=10_000) as (url, traces, _, _):
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/v1/traces", data=chunks(), headers=PB) as resp:
                    assert resp.status == 413
                    assert "exceeds the limit" in status_message(await resp.read(), False)
            await still_serving(url, traces)
    run(go())


def test_a_small_gzip_body_that_inflates_past_the_limit_is_refused_with_413():
    bomb = gzip.compress(b"\x00" * 50_000_000)
    assert len(bomb) < 100_000
    async def go():
        async with http_receiver(max_body_size=1_000_000) as (url, traces, _, _):
            status, body, _ = await post(url, bomb, {**PB, "Content-Encoding": "gzip"})
            assert status == 413
            assert "inflates past the limit of 1000000 bytes" in status_message(body, False)
            await still_serving(url, traces)
    run(go())


def test_a_corrupt_gzip_body_is_refused_with_400():
    async def go():
        async with http_receiver() as (url, _, _, _):
            status, body, _ = await post(url, b"not gzip at all", {**PB, "Content-Encoding": "gzip"})
            assert status == 400
            assert "gzip body is corrupt" in status_message(body, False)
    run(go())


def test_a_zero_byte_protobuf_body_is_an_empty_request_and_accepted():
    async def go():
        async with http_receiver() as (url, traces, _, _):
            status, body, _ = await post(url, b"", PB)
            assert status == 200
            assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
            assert traces.span_names() == []
    run(go())


def test_a_zero_byte_json_body_is_refused_with_400():
    async def go():
        async with http_receiver() as (url, _, _, _):
            status, body, _ = await post(url, b"", JS)
            assert status == 400
            assert "empty body" in status_message(body, True)
    run(go())


def test_logs_answer_404_saying_they_are_not_handled_yet():
    async def go():
        async with http_receiver() as (url, _, _, _):
            status, body, _ = await post(url, b"", PB, path="/v1/logs")
            assert status == 404
            assert "logs are not handled" in status_message(body, False)
    run(go())


def test_a_signal_without_a_pipeline_answers_404():
    async def go():
        async with http_receiver(metrics=False) as (url, _, _, _):
            status, body, _ = await post(url, b"", PB, path="/v1/metrics")
            assert status == 404
            assert "no metrics pipeline" in status_message(body, False)
    run(go())


def test_admission_refuses_with_429_and_retry_after_when_the_budget_is_spent():
    async def go():
        async with http_receiver(max_inflight=1000) as (url, traces, _, admission):
            held = admission.acquire(1000, "traces")  # as if another request were being decoded
            status, body, headers = await post(url, spans_request("x").SerializeToString(), PB)
            assert status == 429
            assert headers["Retry-After"] == "2"
            assert "admission.max_inflight" in status_message(body, False)
            held.release()
            await still_serving(url, traces)
            assert traces.span_names() == ["after"]
    run(go())
