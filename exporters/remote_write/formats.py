"""Which encoder and decoder serve each wire format, and how a receiver tells formats apart.

The one place that knows every format module, so the connection, the exporter and the gateway stay
format-agnostic. Imports are inside the functions: each format module pulls its own generated protobuf code,
and an agent that only speaks rw1 needs none of the others loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from exporters.remote_write.encoding import ALLOWED_CODECS, DEFAULT_CODEC, PROTOCOLS, DecodeError, Decoder, Encoder

RW2_CONTENT_TYPE = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
COMPACT_CONTENT_TYPE = "application/x-protobuf;proto=headwater.compact.v1.Request"


def codec_for(protocol: str, compression: str) -> str:
    """The codec a format uses under an endpoint's `compression` setting (`auto` = the format's best)."""
    if compression == "auto":
        return DEFAULT_CODEC[protocol]
    if compression not in ALLOWED_CODECS[protocol]:
        raise ValueError(f"{protocol} cannot be compressed with {compression}: it allows {ALLOWED_CODECS[protocol]}")
    return compression


def protocols_for(protocol: str, compression: str) -> tuple[str, ...]:
    """The preference list for an endpoint's `protocol` setting; `auto` skips formats the codec rules out."""
    if protocol != "auto":
        codec_for(protocol, compression)  # refuses an impossible pair
        return (protocol,)
    return tuple(p for p in PROTOCOLS if compression == "auto" or compression in ALLOWED_CODECS[p])


def new_encoder(protocol: str, compression: str = "auto", level: int = 3) -> Encoder:
    codec = codec_for(protocol, compression)
    if protocol == "rw1":
        from exporters.remote_write.vm import Rw1Encoder

        return Rw1Encoder()
    if protocol == "vm":
        from exporters.remote_write.vm import VmEncoder

        return VmEncoder(level=level)
    if protocol == "rw2":
        from exporters.remote_write.rw2 import Rw2Encoder

        return Rw2Encoder()
    if protocol == "compact":
        from exporters.remote_write.compact import CompactEncoder

        return CompactEncoder(codec=codec, level=level)
    raise ValueError(f"unknown protocol {protocol!r}")


def detect(headers: Mapping[str, str]) -> tuple[str, str]:
    """(format, codec) of a remote-write POST from its headers; DecodeError for what no format here speaks.

    Content-Type names rw2 and compact (`proto=` parameter); anything else that is protobuf is remote write
    1.0, with zstd it is VictoriaMetrics' `vm`. Header names are matched case-insensitively.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "application/x-protobuf").replace(" ", "").lower()
    encoding = lowered.get("content-encoding", "snappy").strip().lower() or "snappy"
    if encoding not in ("snappy", "zstd"):
        raise DecodeError(f"unsupported Content-Encoding {encoding!r}: expected snappy or zstd")
    if content_type == COMPACT_CONTENT_TYPE.lower():
        return "compact", encoding
    if content_type == RW2_CONTENT_TYPE.lower():
        if encoding != "snappy":
            raise DecodeError("remote write 2.0 bodies must be snappy-compressed")
        return "rw2", encoding
    if content_type in ("application/x-protobuf", "application/x-protobuf;proto=prometheus.writerequest"):
        return ("vm" if encoding == "zstd" else "rw1"), encoding
    raise DecodeError(f"unsupported Content-Type {content_type!r}")


def new_decoder(protocol: str) -> Decoder:
    """A decoder for rw1, vm or rw2: no protocol state (every request stands alone), only a cache of label sets
    (bounded in bytes, not thread-safe: one decode at a time); the compact format decodes through the gateway's
    session store."""
    if protocol in ("rw1", "vm"):
        from exporters.remote_write.vm import Rw1Decoder

        return Rw1Decoder()
    if protocol == "rw2":
        from exporters.remote_write.rw2 import Rw2Decoder

        return Rw2Decoder()
    raise ValueError(f"no stateless decoder for {protocol!r}")
