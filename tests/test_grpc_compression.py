"""Compressed OTLP/gRPC messages: gzip and deflate from real grpc clients are accepted; a message whose
compressed bytes do not inflate is INVALID_ARGUMENT naming the compression (not grpc's INTERNAL); a gzip bomb
is RESOURCE_EXHAUSTED once its output passes max_message_size, never inflated further.

The client is grpc's own (or the OpenTelemetry SDK's exporter); to send compressed bytes that do not inflate,
a proxy rewrites the message on the wire after the client compressed it (tests/grpc_mangling_proxy.py).
"""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib
from collections.abc import Callable

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agent.receivers.grpc_compression import MessageTooLarge, inflate_message
from tests.grpc_mangling_proxy import MangledGrpc, Rewrite
from tests.receiver_harness import grpc_receiver, spans_request

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
REQUEST = spans_request("a", "b").SerializeToString()
LIMIT = 1 << 20


async def call(target: str, body: bytes, compression: grpc.Compression) -> tuple[grpc.StatusCode, str, bytes]:
    """(status, details, response bytes) of one Export call with `body` as the serialized request."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await channel.unary_unary(TRACE_EXPORT)(body, compression=compression, timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or "", b""
    return grpc.StatusCode.OK, "", reply


def through_proxy(rewrite: Rewrite, compression: grpc.Compression, body: bytes = REQUEST,
                  ) -> Callable[[], tuple[grpc.StatusCode, str, list[str]]]:
    """A test body: one call whose message `rewrite` changes on the wire; the status, details and spans kept."""
    def run() -> tuple[grpc.StatusCode, str, list[str]]:
        async def go() -> tuple[grpc.StatusCode, str, list[str]]:
            async with grpc_receiver(max_message_size=LIMIT) as (target, traces, _):
                with MangledGrpc(int(target.rpartition(":")[2]), rewrite) as proxied:
                    code, details, _reply = await call(proxied, body, compression)
                    assert (await call(target, REQUEST, compression))[0] == grpc.StatusCode.OK  # still serving
                return code, details, traces.span_names()
        return asyncio.run(go())
    return run


def flipped(flag: int, message: bytes) -> tuple[int, bytes]:
    """The compressed stream with every byte after its 2-byte header inverted: the header still says gzip/zlib."""
    assert flag == 1, "grpc sent the message uncompressed: nothing to corrupt"
    return flag, message[:2] + bytes(b ^ 0xFF for b in message[2:])


def truncated(flag: int, message: bytes) -> tuple[int, bytes]:
    assert flag == 1
    return flag, message[:len(message) // 2]


def garbage_after_magic(flag: int, message: bytes) -> tuple[int, bytes]:
    assert flag == 1
    return flag, message[:2] + b"not a deflate stream at all"


@pytest.mark.parametrize("rewrite", [flipped, truncated, garbage_after_magic])
def test_a_gzip_message_that_does_not_inflate_is_invalid_argument_naming_gzip(rewrite: Rewrite) -> None:
    code, details, kept = through_proxy(rewrite, grpc.Compression.Gzip)()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("gzip-compressed message is "), details
    assert kept == ["a", "b"]  # only the check call's spans


@pytest.mark.parametrize("rewrite", [flipped, truncated])
def test_a_deflate_message_that_does_not_inflate_is_invalid_argument_naming_deflate(rewrite: Rewrite) -> None:
    code, details, kept = through_proxy(rewrite, grpc.Compression.Deflate)()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("deflate-compressed message is "), details
    assert "read uncompressed instead: invalid OTLP protobuf" in details
    assert kept == ["a", "b"]


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_gzip_and_deflate_messages_from_a_grpc_client_are_accepted(compression: grpc.Compression) -> None:
    async def go() -> None:
        async with grpc_receiver() as (target, traces, _):
            code, details, reply = await call(target, spans_request("x" * 300).SerializeToString(), compression)
            assert (code, details) == (grpc.StatusCode.OK, "")
            assert ExportTraceServiceResponse.FromString(reply) == ExportTraceServiceResponse()
            assert traces.span_names() == ["x" * 300]
    asyncio.run(go())


def test_a_message_left_uncompressed_on_a_gzip_call_is_accepted() -> None:
    """grpc sends a message uncompressed (flag 0) on a gzip call when compressing would not make it smaller."""
    code, details, kept = through_proxy(lambda _flag, _message: (0, REQUEST), grpc.Compression.Gzip)()
    assert (code, details) == (grpc.StatusCode.OK, "")
    assert kept == ["a", "b", "a", "b"]


def test_an_uncompressed_message_that_starts_like_a_zlib_header_is_decoded_as_it_is() -> None:
    """0x78 0x9c is how a zlib stream starts, and also a valid unknown field 15 (a varint) of a request."""
    unusual = b"\x78\x9c\x01" + REQUEST
    code, details, kept = through_proxy(lambda _flag, _message: (0, unusual), grpc.Compression.NoCompression)()
    assert (code, details) == (grpc.StatusCode.OK, "")
    assert kept == ["a", "b", "a", "b"]


def test_a_gzip_bomb_is_resource_exhausted_naming_the_limit_and_delivers_nothing() -> None:
    """32 MiB of zeros, 32 KiB once compressed by the client: small as sent, 32 times the limit inflated."""
    async def go() -> None:
        async with grpc_receiver(max_message_size=LIMIT) as (target, traces, _):
            code, details, _reply = await call(target, bytes(32 << 20), grpc.Compression.Gzip)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert details == f"gzip-compressed message inflates past the limit of {LIMIT} bytes (max_message_size)"
            assert traces.span_names() == []
            assert (await call(target, REQUEST, grpc.Compression.Gzip))[0] == grpc.StatusCode.OK
    asyncio.run(go())


def test_inflating_a_gzip_bomb_holds_memory_of_a_few_times_the_limit_not_of_its_inflated_size() -> None:
    """256 MiB of zeros in 256 KiB of gzip, against a 1 MiB limit."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge):
            asyncio.run(inflate_message(bomb, LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, f"peak {peak} bytes"


def test_a_message_flagged_compressed_on_a_call_without_grpc_encoding_is_internal_as_grpc_requires() -> None:
    """The one compression case grpc answers itself, in its HTTP/2 framing, before any handler: the gRPC
    compression spec (doc/compression.md, test case 6) requires INTERNAL for it."""
    code, details, kept = through_proxy(lambda _flag, message: (1, message), grpc.Compression.NoCompression)()
    assert code == grpc.StatusCode.INTERNAL
    assert "Compression bit set but no encoding configured" in details
    assert kept == ["a", "b"]


def test_the_opentelemetry_sdk_exporter_with_gzip_is_accepted() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(50):
        provider.get_tracer("t").start_span(f"gzipped-{i}").end()

    async def go() -> None:
        async with grpc_receiver() as (target, traces, _):
            exporter = OTLPSpanExporter(endpoint=target, insecure=True, timeout=5,
                                        compression=grpc.Compression.Gzip)
            try:
                result = await asyncio.to_thread(exporter.export, memory.get_finished_spans())
            finally:
                exporter.shutdown()
            assert result == SpanExportResult.SUCCESS
            assert sorted(traces.span_names()) == sorted(f"gzipped-{i}" for i in range(50))
    asyncio.run(go())
