"""OTLP/gRPC receiver: Export with and without gzip, INVALID_ARGUMENT for malformed data, RESOURCE_EXHAUSTED
with RetryInfo when admission control refuses, a bounded message size."""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agent.receivers.proto.rpc_status_pb2 import RetryInfo, Status
from tests.receiver_harness import grpc_receiver, spans_request

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


async def call(target: str, body: bytes, method: str = TRACE_EXPORT,
               compression: grpc.Compression = grpc.Compression.NoCompression):
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(method)  # raw bytes in and out
        return await stub(body, compression=compression, timeout=5)


def test_export_accepts_spans_and_answers_an_empty_response():
    async def go():
        async with grpc_receiver() as (target, traces, _):
            reply = await call(target, spans_request("a", "b").SerializeToString())
            assert ExportTraceServiceResponse.FromString(reply) == ExportTraceServiceResponse()
            assert traces.span_names() == ["a", "b"]
    asyncio.run(go())


def test_export_accepts_gzip_compressed_requests():
    async def go():
        async with grpc_receiver() as (target, traces, _):
            await call(target, spans_request("g").SerializeToString(), compression=grpc.Compression.Gzip)
            assert traces.span_names() == ["g"]
    asyncio.run(go())


def test_a_malformed_message_is_invalid_argument_with_a_message():
    async def go():
        async with grpc_receiver() as (target, traces, _):
            try:
                await call(target, spans_request("a").SerializeToString()[:-4])
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "invalid OTLP protobuf" in err.details()
            else:
                raise AssertionError("expected INVALID_ARGUMENT")
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_span_with_a_short_trace_id_is_a_partial_success():
    async def go():
        async with grpc_receiver() as (target, traces, _):
            reply = await call(target, spans_request("bad", trace_id=b"\x01" * 8).SerializeToString())
            partial = ExportTraceServiceResponse.FromString(reply).partial_success
            assert partial.rejected_spans == 1
            assert "trace ID of 8 bytes" in partial.error_message
            assert traces.span_names() == []
    asyncio.run(go())


def test_admission_refusal_is_resource_exhausted_with_retry_info():
    async def go():
        async with grpc_receiver(max_inflight=100) as (target, traces, admission):
            held = admission.acquire(100, "traces")
            try:
                await call(target, spans_request("x").SerializeToString())
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
                status = Status.FromString(details)
                assert status.details[0].type_url == "type.googleapis.com/google.rpc.RetryInfo"
                assert RetryInfo.FromString(status.details[0].value).retry_delay.seconds == 2
            else:
                raise AssertionError("expected RESOURCE_EXHAUSTED")
            held.release()
            await call(target, spans_request("later").SerializeToString())
            assert traces.span_names() == ["later"]
    asyncio.run(go())


def test_a_message_over_the_size_limit_is_refused():
    async def go():
        async with grpc_receiver(max_message_size=1000) as (target, traces, _):
            try:
                await call(target, spans_request(*["n" * 100] * 20).SerializeToString())
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                raise AssertionError("expected a refusal")
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_signal_without_a_pipeline_is_unimplemented():
    async def go():
        async with grpc_receiver() as (target, _, _):
            try:
                await call(target, b"", method=METRICS_EXPORT)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            else:
                raise AssertionError("expected UNIMPLEMENTED")
    asyncio.run(go())
