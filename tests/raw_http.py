"""Raw-socket clients for connection-management tests, and the aiohttp receivers run on a loop in a thread, so
blocking clients in the test's thread (slow, idle, or many at once) meet a server that runs as it does in the
agent."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent.admission import Admission
from agent.receivers.http_connections import HttpConnectionSettings
from agent.receivers.otlp_http import OtlpHttpReceiver
from agent.receivers.remote_write import RemoteWriteReceiver
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.vm import Rw1Encoder
from tests.receiver_harness import Recorder, spans_request


def ensure_file_descriptors(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to `needed` (up to the hard limit); fail, saying why, when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"this test needs {needed} file descriptors, and the hard limit (ulimit -Hn) is {hard}: "
                        "raise it to run the test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@dataclass(frozen=True)
class Served:
    """A receiver running in a thread: its port, and what a normal request to it looks like."""

    port: int
    normal_request: bytes
    normal_status: int

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def _otlp_request() -> bytes:
    body = spans_request("normal").SerializeToString()
    return (b"POST /v1/traces HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def _remote_write_request() -> bytes:
    batch = SampleBatch()
    batch.labels.append((("__name__", "up"), ("job", "node")))
    batch.values.append(1.0)
    batch.timestamps.append(1_700_000_000_000)
    batch.sizes.append(0)
    encoded = Rw1Encoder().encode(batch)
    head = b"POST /api/v1/write HTTP/1.1\r\nHost: test\r\n" + b"".join(
        b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in dict(encoded.headers).items())
    return head + b"Content-Length: %d\r\n\r\n" % len(encoded.body) + encoded.body


RECEIVERS = ("otlp_http", "remote_write")


@contextlib.contextmanager
def serving(kind: str, settings: HttpConnectionSettings) -> Iterator[Served]:
    """The receiver `kind` (one of RECEIVERS) on 127.0.0.1, on an event loop of its own in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    admission = Admission(64 << 20, retry_after=2.0)

    async def start() -> Any:
        if kind == "otlp_http":
            receiver: Any = OtlpHttpReceiver("127.0.0.1:0", 1 << 20, admission, Recorder().consume, None,
                                             drain_timeout=1.0, connections=settings)
        else:
            async def consume(batch: SampleBatch) -> None:
                pass
            receiver = RemoteWriteReceiver("127.0.0.1:0", 1 << 20, admission, consume, drain_timeout=1.0,
                                           connections=settings)
        await receiver.start()
        return receiver

    receiver = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        if kind == "otlp_http":
            yield Served(receiver.bound_port, _otlp_request(), 200)
        else:
            yield Served(receiver.bound_port, _remote_write_request(), 204)
    finally:
        asyncio.run_coroutine_threadsafe(receiver.shutdown(2.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(sock: socket.socket) -> Response:
    """One HTTP/1.1 response with a Content-Length, read from a blocking socket (its timeout bounds the wait),
    and not a byte more: a pipelined next response stays in the socket."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"connection closed before a whole response head arrived: {head!r}")
        head += byte
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("connection closed inside a response body")
        body += chunk
    return Response(status, headers, body)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (anything it sends first is read and dropped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


def trickle(sock: socket.socket, data: bytes, interval: float) -> float | None:
    """Send `data` a byte every `interval` seconds until the server closes the connection: the seconds that took,
    or None if all of `data` went out first. Whatever the server answers meanwhile is read and dropped."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
        if closed_by_peer(sock, interval):
            return time.monotonic() - start
    return None
