"""The seam between the sending chain and the wire formats: one `Encoder` per format, one `Decoder` per
format on the receiving side (the gateway), and the compression codecs they share.

An encoder instance belongs to one endpoint connection (docs/architecture.md, "the sending chain", link 4)
and may keep state between requests there (the compact format's dictionary); none keeps module-global
state. `encode` is pure CPU work on a batch nobody mutates any more, so the connection runs it in a thread.
What it returns is everything the request needs: body, headers, and what to do once the receiver counted
it (`commit`), so that state moves forward only on a write the receiver acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import cramjam
import zstandard

from exporters.remote_write.series import SampleBatch

PROTOCOLS = ("compact", "rw2", "vm", "rw1")
"""Every wire format, best first: the order `protocol: auto` tries them in."""

CODECS = ("snappy", "zstd")
DEFAULT_CODEC = {"rw1": "snappy", "rw2": "snappy", "vm": "zstd", "compact": "zstd"}
"""What `compression: auto` means for each format."""
ALLOWED_CODECS = {"rw1": ("snappy",), "rw2": ("snappy",), "vm": ("zstd",), "compact": ("snappy", "zstd")}
"""What each format may be compressed with: remote write 1.0 and 2.0 allow snappy only; `vm` is zstd by
definition (VictoriaMetrics' own protocol)."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """One request ready for the transport."""

    body: bytes
    headers: Mapping[str, str]
    samples: int
    histograms: int = 0
    exemplars: int = 0
    commit: Callable[[], None] | None = field(default=None, compare=False)
    """Called once the receiver acknowledged this request (2xx, counted): moves per-connection state on."""


class Encoder(Protocol):
    """One wire format, as one connection speaks it."""

    protocol: str

    def encode(self, batch: SampleBatch) -> Encoded:
        """The compressed request for `batch` (read, never modified)."""
        ...

    def reset(self) -> None:
        """Forget per-connection state: the receiver lost its side, or the format changed."""
        ...


class Decoder(Protocol):
    """One wire format, on the receiving side."""

    protocol: str

    def decode(self, body: bytes, headers: Mapping[str, str]) -> SampleBatch:
        """The batch in an (already decompressed) body; raises `DecodeError` for anything malformed."""
        ...


class DecodeError(ValueError):
    """A body that is not what its headers say: answered 400 with this message."""


class TooLarge(DecodeError):
    """A body that decompresses past the receiver's bound: answered 413."""


def compress(codec: str, data: bytes, level: int = 3) -> bytes:
    """Snappy block format (remote write's; the framed format is refused by receivers) or a zstd frame."""
    if codec == "snappy":
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    raise ValueError(f"unknown codec {codec!r}")


def decompress(codec: str, body: bytes, max_size: int) -> bytes:
    """The body decompressed, refused with `TooLarge` past `max_size` bytes before any of it is produced
    where the format states its size up front (snappy's preamble, a zstd frame header), and as it grows
    otherwise; `DecodeError` when it is not what `codec` says."""
    if codec == "snappy":
        try:
            size = cramjam.snappy.decompress_raw_len(body)
        except Exception as exc:  # cramjam raises its own DecompressionError
            raise DecodeError(f"snappy: corrupt input ({exc})") from exc
        if size > max_size:
            raise TooLarge(f"body decompresses to {size} bytes, more than the {max_size} allowed")
        try:
            return bytes(cramjam.snappy.decompress_raw(body))
        except Exception as exc:
            raise DecodeError(f"snappy: corrupt input ({exc})") from exc
    if codec == "zstd":
        try:
            # The first frame's stated size sizes the first read: reading max_size + 1 at once allocates that
            # much first, which cost more than the decompression of a gateway's typical 10-60 KB bodies.
            stated = _stated_size(body)
            if stated > max_size:
                raise TooLarge(f"body decompresses to {stated} bytes, more than the {max_size} allowed")
            # Every frame: a sender may write several, and stopping after the first would lose the rest silently.
            reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
            first = stated + 1 if stated >= 0 else max_size + 1
            out = reader.read(first)
            if len(out) == first and first <= max_size:  # more than the first frame: the rest, up to the limit
                out += reader.read(max_size + 1 - first)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"zstd: corrupt input ({exc})") from exc
        if len(out) > max_size:
            raise TooLarge(f"body decompresses to more than the {max_size} bytes allowed")
        return out
    raise DecodeError(f"unknown Content-Encoding {codec!r}")


def _stated_size(body: bytes) -> int:
    """The content size the first zstd frame's header states; -1 when it states none or there is no readable
    header (the reader then decides, as without this look-ahead)."""
    try:
        return zstandard.frame_content_size(body)
    except zstandard.ZstdError:
        return -1
