"""Bounded request bodies: every limit is on bytes, both as sent and after decompression.

A small gzip body that inflates past `max_body_size` is refused as soon as the output passes the limit; the
rest is never inflated.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import zstandard
from aiohttp import HttpVersion11, web

ENCODINGS = ("identity", "gzip", "deflate", "zstd")
_ZSTD_SLICE = 512


class BodyTooLarge(Exception):
    pass


class BadEncoding(Exception):
    """The body is not valid data in its declared Content-Encoding."""


NO_CONTINUE = web.RequestKey("headwater.no_continue", bool)
"""Set on a request whose client was not told to send its body: a refusal closes the connection, as the
body will never come (aiohttp would wait for it before the next request, and a shutdown would wait too)."""


def refuse_unsent_body(request: Any, response: Any) -> None:
    """When `request`'s client was not told to send its body (`expect_within`), make `response` the last on
    its connection and let aiohttp stop there: it would otherwise wait up to its lingering time for a body
    that never comes, and a shutdown would wait with it."""
    if request.get(NO_CONTINUE):
        response.force_close()
        request.content.feed_eof()


def expect_within(limit: Callable[[], int]) -> Callable[[Any], Awaitable[None]]:
    """An aiohttp `expect_handler`: `100 Continue` only for a body the receiver may accept.

    Why: aiohttp's default answers every `Expect: 100-continue` with 100 before the handler runs, so a client
    announcing a body past `max_body_size` was told to send it and then refused with 413. Without the 100, the
    handler's 413 is the first answer and the client never sends the body (RFC 9110, 10.1.1)."""

    async def handle(request: Any) -> None:
        length = request.content_length
        if length is not None and length > limit():
            request[NO_CONTINUE] = True  # the client waits: the handler's answer must close the connection
            return None  # no 100: the handler refuses at once, with the receiver's own 413 body
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11:
            return None
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response that follows (as aiohttp's own)
        return None

    return handle


def normalize_encoding(header: str | None) -> str | None:
    """The one supported encoding named by a Content-Encoding header, or None if unsupported."""
    value = (header or "identity").strip().lower()
    if value in ("", "none"):
        value = "identity"
    return value if value in ENCODINGS else None


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Decode `body`; raise BodyTooLarge once the output passes `limit` bytes, BadEncoding if it is corrupt."""
    if encoding == "identity":
        if len(body) > limit:
            raise BodyTooLarge(f"body of {len(body)} bytes exceeds the limit of {limit} bytes")
        return body
    if encoding == "zstd":
        return _zstd(body, limit)
    if encoding == "gzip":
        return _inflate(body, zlib.MAX_WBITS | 16, limit, "gzip")
    try:
        return _inflate(body, zlib.MAX_WBITS, limit, "deflate")
    except BadEncoding as wrapped_error:
        # Some clients send raw deflate without the zlib wrapper that RFC 9110 asks for; accept both.
        try:
            return _inflate(body, -zlib.MAX_WBITS, limit, "deflate")
        except BadEncoding:
            raise wrapped_error from None


def _inflate(body: bytes, wbits: int, limit: int, name: str) -> bytes:
    d = zlib.decompressobj(wbits)
    out = bytearray()
    data = body
    try:
        while data:
            out += d.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise BodyTooLarge(f"{name} body inflates past the limit of {limit} bytes")
            data = d.unconsumed_tail
            if d.eof:
                break
        if not d.eof:
            out += d.flush()
            if not d.eof:
                raise BadEncoding(f"{name} body is truncated")
    except zlib.error as exc:
        raise BadEncoding(f"{name} body is corrupt: {exc}") from None
    if len(out) > limit:
        raise BodyTooLarge(f"{name} body inflates past the limit of {limit} bytes")
    return bytes(out)


def _zstd(body: bytes, limit: int) -> bytes:
    """zstd offers no output bound per call, so input goes in small slices: one 512-byte slice can expand to at
    most ~22 MiB, which caps the overshoot past `limit` before the check refuses the body."""
    d = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    view = memoryview(body)
    try:
        for start in range(0, len(body), _ZSTD_SLICE):
            out += d.decompress(view[start:start + _ZSTD_SLICE])
            if len(out) > limit:
                raise BodyTooLarge(f"zstd body inflates past the limit of {limit} bytes")
            if d.eof:
                break
    except zstandard.ZstdError as exc:
        raise BadEncoding(f"zstd body is corrupt: {exc}") from None
    if not d.eof:
        raise BadEncoding("zstd body is truncated")
    return bytes(out)


class BodyTimeout(Exception):
    """The body did not arrive within the read timeout."""


async def read_body(content: Any, limit: int, timeout: float) -> bytes:
    """At most `limit` bytes of a request body as sent, all of it within `timeout` seconds: a client trickling its
    body cannot hold a connection and its buffers (BodyTimeout; the caller answers 408). Chunked bodies are
    counted as they arrive (BodyTooLarge past `limit`)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout:g}s (read_timeout)") from None
    # One copy at the end (none for a body that came in one chunk), not one per chunk and another for bytes().
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
