"""The identity segment codec: an item that is already bytes (a serialized OTLP request) is its own record."""

from __future__ import annotations


class _BytesWriter:
    def encode(self, item: bytes) -> bytes:
        return bytes(item)


class _BytesReader:
    def learn(self, record: bytes) -> None:
        """Nothing to learn: a record refers to no other."""

    def decode(self, record: bytes) -> bytes:
        return bytes(record)


class BytesCodec:
    """`SegmentCodec[bytes]` without state: records stand alone, so a reader never needs earlier records."""

    def writer(self) -> _BytesWriter:
        return _BytesWriter()

    def reader(self) -> _BytesReader:
        return _BytesReader()
