"""A malformed HTTP message (broken chunked framing, a chunk size past any bound, garbage after a chunk) on the
aiohttp receivers: answered 400 on that connection, never logged as an error with a traceback (a client could
fill the journal that way), and the receiver keeps serving. Raw sockets, since no HTTP client sends these."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from agent.admission import Admission
from agent.receivers.remote_write import RemoteWriteReceiver
from tests.receiver_harness import http_receiver, spans_request

HEAD = "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n"
BROKEN = {
    "chunk size not hex": [b"zz\r\nabc\r\n0\r\n\r\n"],
    "no CRLF after chunk data": [b"3\r\nabcXX"],
    "chunk size overflow": [b"ffffffffffffffffffffff\r\nab\r\n0\r\n\r\n"],
    "broken after a good chunk": [b"5\r\nabcde\r\n", b"zz\r\n"],
}


@contextlib.asynccontextmanager
async def receiver(kind: str) -> AsyncIterator[tuple[int, str]]:
    if kind == "otlp_http":
        async with http_receiver() as (url, _traces, _metrics, _admission):
            yield int(url.rsplit(":", 1)[1]), "/v1/traces"
        return

    async def consume(_batch: object) -> None:
        return None

    gateway = RemoteWriteReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consume)
    await gateway.start()
    try:
        assert gateway.bound_port is not None
        yield gateway.bound_port, "/api/v1/write"
    finally:
        await gateway.shutdown(1.0)


async def exchange(port: int, parts: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)  # separate TCP segments, so a body can break after the handler started
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["otlp_http", "gateway"])
@pytest.mark.parametrize("case", BROKEN)
def test_a_malformed_chunked_body_is_answered_400_and_not_logged_as_an_error(
        kind: str, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def go() -> None:
        async with receiver(kind) as (port, path):
            answer = await exchange(port, [HEAD.format(path=path).encode(), *BROKEN[case]])
            assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", answer[:200]
            if kind == "otlp_http":
                body = spans_request("after").SerializeToString()
                ok = await exchange(port, [f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                                           f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                                           + body])
                assert ok.startswith(b"HTTP/1.1 200"), ok[:200]

    asyncio.run(go())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("kind", ["otlp_http", "gateway"])
def test_a_client_that_hangs_up_mid_body_is_not_logged_as_an_error(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp logs the ConnectionResetError a handler raises with a traceback at ERROR: a client opening and
    dropping connections could fill the journal."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="headwater.receivers")

    async def go() -> None:
        async with receiver(kind) as (port, path):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                         "Content-Length: 1000\r\n\r\nabc".encode())
            await writer.drain()
            await asyncio.sleep(0.1)  # the handler is reading the body
            writer.close()
            for _ in range(100):  # until the receiver saw the hang-up
                if any(r.getMessage() == "client went away" for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the receiver never noticed the client hung up")

    asyncio.run(go())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def expect_head(path: str, length: int) -> bytes:
    encoding = "Content-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n" if path == "/api/v1/write" else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n{encoding}"
            f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n").encode()


@pytest.mark.parametrize("kind", ["otlp_http", "gateway"])
def test_a_body_announced_past_the_limit_is_refused_before_the_client_is_told_to_send_it(kind: str) -> None:
    async def go() -> None:
        async with receiver(kind) as (port, path):
            answer = await exchange(port, [expect_head(path, 1 << 30)])
            assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 Request Entity Too Large", answer[:200]
            assert b"max_body_size" in answer

    asyncio.run(go())


def test_a_body_within_the_limit_is_asked_for_with_100_continue() -> None:
    async def go() -> None:
        async with receiver("otlp_http") as (port, path):
            body = spans_request("expect").SerializeToString()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(expect_head(path, len(body)))
                await writer.drain()
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(body)
                await writer.drain()
                final = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
                assert final.startswith(b"HTTP/1.1 200"), final
            finally:
                writer.close()

    asyncio.run(go())
