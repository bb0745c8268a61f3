"""Compressed OTLP/gRPC messages, inflated by the receiver instead of by grpc's core.

grpc's core answers INTERNAL ("Decompression failed due to zlib error") to a message flagged compressed whose
bytes do not inflate, before any handler runs: `MessageDecompress` (src/core/lib/compression/message_compress.cc)
returns `absl::InternalError`, which the compression filter hands back as the call's status. A client's bytes
must get INVALID_ARGUMENT with a message instead. So the server runs with `grpc.per_message_decompression` off
(`SERVER_OPTIONS`): the core still refuses a message larger than `max_receive_message_length` as sent, then
hands the bytes on as they came, and `inflate_message` inflates them here under the same bound on the inflated
size (`agent.receivers.body`: the output is cut as soon as it passes the bound, so a gzip bomb costs at most
the bound). The auth interceptor refuses a call before its message is read, so nothing is inflated for it.

The core tells the application neither the `grpc-encoding` header (parsed into a metadata trait that
`PublishToAppEncoder` in src/core/lib/surface/call_utils.h does not publish) nor the message's compressed flag,
so the first bytes say which it is. grpc compresses with gzip or deflate only (the core refuses any other
`grpc-encoding` while parsing headers), and may send a message uncompressed on a compressed call (when
compressing did not make it smaller); the flag is per message.
- gzip (RFC 1952) starts 1f 8b. No protobuf message starts with 0x1f (field 3 with wire type 7, which does not
  exist), so an uncompressed message is never taken for gzip.
- grpc's deflate is a zlib stream (RFC 1950): a first byte 0x08, 0x18, ..., 0x78 and a header check (the first
  two bytes as a number divisible by 31). Such bytes can also start a valid protobuf message (an unknown varint
  field first), which no OTLP exporter writes; a message that looks like zlib but does not inflate is therefore
  decoded as it is, and only if that fails too is it refused, naming both readings (`Inflated.doubt`).
An uncompressed message costs one look at its first two bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agent.receivers.body import BadEncoding, BodyTooLarge, decompress

SERVER_OPTIONS = (("grpc.per_message_decompression", 0),)
GZIP_MAGIC = b"\x1f\x8b"
_THREAD_THRESHOLD = 256 * 1024  # inflate messages larger than this (as sent) off the event loop, as HTTP does


class MessageTooLarge(Exception):
    """The message inflates past the bound: RESOURCE_EXHAUSTED, as grpc answers a message too large as sent."""


class CorruptCompression(Exception):
    """The message is compressed but does not inflate: INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Inflated:
    """`data`: the message to decode. `doubt`: set when the message looked like a zlib stream that does not
    inflate and is decoded as it came; why, to add to the refusal if it does not decode either."""

    data: bytes
    doubt: str | None = None


def compression_of(message: bytes) -> str:
    """What the first bytes of a gRPC message say it is: "gzip", "deflate" or "identity"."""
    if message[:2] == GZIP_MAGIC:
        return "gzip"
    if len(message) >= 2 and message[0] & 0x8F == 0x08 and (message[0] << 8 | message[1]) % 31 == 0:
        return "deflate"
    return "identity"


async def inflate_message(message: bytes, limit: int) -> Inflated:
    """The message as its decoder needs it. Raises MessageTooLarge once the output passes `limit` bytes, and
    CorruptCompression for gzip that does not inflate (see the module docstring for deflate)."""
    encoding = compression_of(message)
    if encoding == "identity":
        return Inflated(message)
    try:
        if len(message) > _THREAD_THRESHOLD:
            data = await asyncio.to_thread(decompress, message, encoding, limit)
        else:
            data = decompress(message, encoding, limit)
    except BodyTooLarge:
        raise MessageTooLarge(f"{encoding}-compressed message inflates past the limit of {limit} bytes "
                              "(max_message_size)") from None
    except BadEncoding as exc:
        why = _as_message(exc, encoding)
        if encoding == "gzip":
            raise CorruptCompression(why) from None
        return Inflated(message, doubt=why)
    return Inflated(data)


def _as_message(exc: BadEncoding, encoding: str) -> str:
    """BadEncoding's text ("gzip body is corrupt: ...") in gRPC's words ("gzip-compressed message is corrupt: ...")."""
    text = str(exc)
    prefix = f"{encoding} body "
    return f"{encoding}-compressed message {text.removeprefix(prefix)}" if text.startswith(prefix) else text
