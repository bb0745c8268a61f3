"""Connection management of the OTLP/gRPC receiver, seen from a raw HTTP/2 client: the settings it announces,
keepalive pings that close a silent peer, and GOAWAY after max_connection_idle and max_connection_age."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from agent.admission import Admission
from agent.receivers.grpc_connections import GrpcConnectionSettings
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from tests.receiver_harness import Recorder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
MAX_CONCURRENT_STREAMS = 0x3
BOUND = 5.0  # seconds: generous, for a loaded CI machine
QUIET = dict(keepalive_time=3600.0, keepalive_timeout=20.0, max_connection_idle=0.0, max_connection_age=0.0)


@contextlib.contextmanager
def grpc_serving(settings: GrpcConnectionSettings) -> Iterator[int]:
    """The OTLP/gRPC receiver on an event loop in a thread; its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = OtlpGrpcReceiver("127.0.0.1:0", 1 << 20, Admission(64 << 20, retry_after=1.0), Recorder().consume, None,
                                connections=settings)
    asyncio.run_coroutine_threadsafe(receiver.start(), loop).result(10)
    try:
        assert receiver.bound_port is not None
        yield receiver.bound_port
    finally:
        asyncio.run_coroutine_threadsafe(receiver.shutdown(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Http2Peer:
    """An HTTP/2 client that opens no stream: it sends the preface and acknowledges settings, and pings too
    when `answer_pings`."""

    def __init__(self, port: int, answer_pings: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        self.answer_pings = answer_pings
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, b""))

    def next_frame(self, within: float) -> tuple[int, int, bytes] | None:
        """The next frame from the server (type, flags, payload), acknowledging what needs it; None once the
        server closed the connection."""
        self.sock.settimeout(within)
        head = self._exactly(9)
        if head is None:
            return None
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        payload = self._exactly(length) if length else b""
        if payload is None:
            return None
        if kind == SETTINGS and not flags & ACK:
            self.sock.sendall(frame(SETTINGS, ACK, b""))
        if kind == PING and not flags & ACK and self.answer_pings:
            self.sock.sendall(frame(PING, ACK, payload))
        return kind, flags, payload

    def frames_until_closed(self, within: float) -> list[int]:
        """Frame types the server sends until it closes the connection (which must happen within `within`)."""
        deadline = time.monotonic() + within
        kinds = []
        while (left := deadline - time.monotonic()) > 0:
            got = self.next_frame(left)
            if got is None:
                return kinds
            kinds.append(got[0])
        raise AssertionError(f"the server kept the connection open for {within}s; frames seen: {kinds}")

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def frame(kind: int, flags: int, payload: bytes, stream: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def test_the_server_announces_max_concurrent_streams_in_its_settings() -> None:
    with grpc_serving(GrpcConnectionSettings(**QUIET, max_concurrent_streams=7)) as port:
        peer = Http2Peer(port, answer_pings=True)
        try:
            got = peer.next_frame(BOUND)
            assert got is not None and got[0] == SETTINGS
            values = dict(struct.unpack(">HI", got[2][i:i + 6]) for i in range(0, len(got[2]), 6))
            assert values[MAX_CONCURRENT_STREAMS] == 7
        finally:
            peer.close()


def test_a_peer_that_does_not_answer_keepalive_pings_is_closed_after_the_keepalive_timeout() -> None:
    settings = GrpcConnectionSettings(keepalive_time=0.3, keepalive_timeout=0.3, max_connection_idle=0.0,
                                      max_connection_age=0.0)
    with grpc_serving(settings) as port:
        peer = Http2Peer(port, answer_pings=False)
        try:
            start = time.monotonic()
            kinds = peer.frames_until_closed(within=BOUND)
            assert PING in kinds
            assert time.monotonic() - start >= 0.5
        finally:
            peer.close()


def test_a_connection_without_calls_gets_goaway_after_max_connection_idle() -> None:
    settings = GrpcConnectionSettings(keepalive_time=3600.0, max_connection_idle=0.5, max_connection_age=0.0)
    with grpc_serving(settings) as port:
        peer = Http2Peer(port, answer_pings=True)
        try:
            start = time.monotonic()
            assert GOAWAY in peer.frames_until_closed(within=0.5 + BOUND)
            assert time.monotonic() - start >= 0.4
        finally:
            peer.close()


def test_a_connection_gets_goaway_after_max_connection_age_and_is_closed_after_the_grace() -> None:
    settings = GrpcConnectionSettings(keepalive_time=3600.0, max_connection_idle=0.0, max_connection_age=0.5,
                                      max_connection_age_grace=0.2)
    with grpc_serving(settings) as port:
        peer = Http2Peer(port, answer_pings=True)
        try:
            start = time.monotonic()
            assert GOAWAY in peer.frames_until_closed(within=0.7 + BOUND)
            assert time.monotonic() - start >= 0.4
        finally:
            peer.close()


@pytest.mark.parametrize("field, value", [("keepalive_time", 0.0), ("keepalive_timeout", -1.0),
                                          ("max_connection_age", 30 * 86400.0), ("max_concurrent_streams", 0)])
def test_settings_out_of_range_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        GrpcConnectionSettings(**{field: value})


def test_the_python_sdk_exports_across_connection_ages_without_losing_a_span() -> None:
    """Connections end every 0.3 s (GOAWAY); a client exporting all along reconnects and every export lands."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(20):
        provider.get_tracer("t").start_span(f"aged-{i}").end()
    spans = memory.get_finished_spans()

    settings = GrpcConnectionSettings(keepalive_time=3600.0, max_connection_idle=0.0, max_connection_age=0.3,
                                      max_connection_age_grace=0.2)
    recorder = Recorder()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = OtlpGrpcReceiver("127.0.0.1:0", 1 << 20, Admission(64 << 20, retry_after=1.0), recorder.consume, None,
                                connections=settings)
    asyncio.run_coroutine_threadsafe(receiver.start(), loop).result(10)
    try:
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.bound_port}", insecure=True, timeout=10)
        results = []
        started = time.monotonic()
        for span in spans:  # spread over several connection ages
            results.append(exporter.export([span]))
            time.sleep(0.1)
        exporter.shutdown()
        assert time.monotonic() - started > 1.0  # several ages passed while exporting
        assert results == [SpanExportResult.SUCCESS] * len(spans)
        assert sorted(recorder.span_names()) == sorted(f"aged-{i}" for i in range(20))
    finally:
        asyncio.run_coroutine_threadsafe(receiver.shutdown(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
