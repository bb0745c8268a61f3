"""VictoriaMetrics' remote-write protocol (`vm`), remote write 1.0 (`rw1`) as an encoder, and the decoder both
share.

`vm` is not a new body: it is the remote write 1.0 `WriteRequest`, compressed with zstd instead of snappy,
which VictoriaMetrics >= 1.88 accepts when `Content-Encoding: zstd` says so (its parser keys on that header
alone; `X-VictoriaMetrics-Remote-Write-Version: 1` is what vmagent sends beside it). A receiver older than
1.88, or any other 1.x store, decodes every body as snappy and answers 400 "snappy: corrupt input", so the
format must be asked for before it is used:

- 1.88 to 1.115 vmagent asks once per URL at start: `<url>?get_vm_proto_version=1` (a GET in 1.88.0, then
  a POST with an empty body and the endpoint's auth); the receiver answers 200 with the body `1`, and any
  other answer (error, non-200, a body Go's `strconv.Atoi` refuses, a version below 1) means Prometheus'
  protocol for the life of the process.
- From 1.116 vmagent skips the question: it sends zstd and, on 400 or 415, repacks that block as snappy,
  resends it, and stays on Prometheus' protocol for good. Receivers still answer the question.

Because the bodies are the same, the rw1 encoder lives here too, and one decoder serves both once the
transport has decompressed the body.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as ProtobufDecodeError

from exporters.remote_write import encoding, rw1
from exporters.remote_write.encoding import DecodeError, Encoded
from exporters.remote_write.proto import remote_write_v1_pb2
from exporters.remote_write.proto.remote_write_v1_pb2 import (
    Histogram,
    Label,
    WriteRequest,
)
from exporters.remote_write.series import (
    METRIC_TYPES,
    NAME_LABEL,
    Exemplar,
    Labels,
    Metadata,
    NativeHistogram,
    SampleBatch,
)
from exporters.remote_write.series_cache import INTERNED_BYTES, SeriesCache, labels_bytes

HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Content-Encoding": "zstd",
        "Content-Type": "application/x-protobuf",
        "X-VictoriaMetrics-Remote-Write-Version": "1",
        # vmagent leaves this out on zstd bodies; it is sent anyway so that a proxy or a 1.x receiver that
        # requires it still sees a remote-write request (and refuses the zstd body, which is the fallback cue).
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
)
"""The request headers of the `vm` format (read-only: one instance shared by every request)."""

HANDSHAKE_QUERY = "get_vm_proto_version=1"
"""Appended to the remote-write URL: VictoriaMetrics answers it on its write paths instead of writing."""

_GO_ATOI = re.compile(rb"[+-]?[0-9]+")
_INT64 = range(-(2**63), 2**63)


def handshake_url(remote_write_url: str) -> str:
    """The URL that asks whether `remote_write_url` speaks `vm`; an existing query string is kept, as vmagent
    keeps it (tenants and auth tokens often live there)."""
    return (
        f"{remote_write_url}{'&' if '?' in remote_write_url else '?'}{HANDSHAKE_QUERY}"
    )


def supports_vm(status: int, body: bytes) -> bool:
    """Whether a handshake answer advertises the `vm` format, read exactly as vmagent reads it.

    Only 200 counts: VictoriaMetrics < 1.88 and Prometheus answer 400 (they try to write the empty body) and
    proxies may answer 404 or 405 with a body of their own. The body must be a bare integer as Go's
    `strconv.Atoi` takes it (optional sign, digits, nothing else, within int64) and at least 1; anything
    looser would read "1\\n" or an HTML page as a yes and lose every request after it.
    """
    if status != 200 or not _GO_ATOI.fullmatch(body):
        return False
    version = int(body)
    return version in _INT64 and version >= 1


def _encode(batch: SampleBatch, cache: rw1.LabelCache) -> bytes:
    return rw1.serialize(
        batch.labels,
        batch.values,
        batch.timestamps,
        histogram_labels=batch.histogram_labels,
        histograms=batch.histograms,
        exemplar_labels=batch.exemplar_labels,
        exemplars=batch.exemplars,
        cache=cache,
        grouped=batch.grouped,
        explicit_zeros=True,
    )


class VmEncoder:
    """The `vm` format for one connection: the body is rw1's, only the codec differs. Its only state is the
    cache of encoded label sets and request layouts (rw1_frames.py), which changes no message on the wire (a
    request written from a layout writes +0.0 values explicitly)."""

    protocol = "vm"

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._labels = rw1.LabelCache()

    def encode(self, batch: SampleBatch) -> Encoded:
        body = encoding.compress("zstd", _encode(batch, self._labels), self.level)
        return Encoded(
            body,
            HEADERS,
            len(batch.values),
            len(batch.histograms),
            len(batch.exemplars),
        )

    def reset(self) -> None:
        """Nothing to forget: no state lasts across requests."""


class Rw1Encoder:
    """Remote write 1.0 for one connection: the format every Prometheus-compatible store takes. Its only
    state is the cache of encoded label sets and request layouts (rw1_frames.py), which changes no message on
    the wire (a request written from a layout writes +0.0 values explicitly)."""

    protocol = "rw1"

    def __init__(self) -> None:
        self._labels = rw1.LabelCache()
        # rw1.HEADERS is a plain dict owned by rw1.py; a read-only view keeps a caller from changing it for all.
        self._headers: Mapping[str, str] = MappingProxyType(rw1.HEADERS)

    def encode(self, batch: SampleBatch) -> Encoded:
        body = encoding.compress("snappy", _encode(batch, self._labels))
        return Encoded(
            body,
            self._headers,
            len(batch.values),
            len(batch.histograms),
            len(batch.exemplars),
        )

    def reset(self) -> None:
        """Nothing to forget: no state lasts across requests."""


_SERIES_OVERHEAD = 3  # TimeSeries tag and length
_SAMPLE_BYTES = 20  # the largest Sample entry: tag, length, double, varint timestamp


LABELS_CACHE_BYTES = 32 << 20
"""Default bound on each decoder's cache of label sets: a node-exporter series (11 labels) is charged ~1.6 KB,
so ~10k series are kept without evicting (half the bound), as many as 20 node agents send."""


def _keyed_write_request() -> type:
    """`prometheus.WriteRequest` read with each TimeSeries' labels left as their serialized `Label` messages
    (`bytes`), everything else as the real messages: the labels' bytes identify a series without building
    a Python object per label, and the real messages' checks still apply to all the rest."""
    v1 = remote_write_v1_pb2.DESCRIPTOR
    file = descriptor_pb2.FileDescriptorProto(
        name="headwater/remote_write_v1_keyed.proto", package="headwater.keyed", syntax="proto3",
        dependency=[v1.name])
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    message, data = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    series = file.message_type.add(name="TimeSeries")
    series.field.add(name="labels", number=1, label=repeated, type=data)
    for name, number, type_name in (("samples", 2, "Sample"), ("exemplars", 3, "Exemplar"),
                                    ("histograms", 4, "Histogram")):
        series.field.add(name=name, number=number, label=repeated, type=message, type_name=f".prometheus.{type_name}")
    request = file.message_type.add(name="WriteRequest")
    request.field.add(name="timeseries", number=1, label=repeated, type=message,
                      type_name=".headwater.keyed.TimeSeries")
    request.field.add(name="metadata", number=3, label=repeated, type=message,
                      type_name=".prometheus.MetricMetadata")
    pool = descriptor_pool.Default()
    try:
        found = pool.FindFileByName(file.name)
    except KeyError:
        found = pool.Add(file) or pool.FindFileByName(file.name)
    return message_factory.GetMessageClass(found.message_types_by_name["WriteRequest"])


_KeyedWriteRequest = _keyed_write_request()


class Rw1Decoder:
    """Remote write 1.0 bodies on the receiving side, already decompressed (snappy for `rw1`, zstd for `vm`).

    Label sets are checked the way Prometheus checks them before it stores anything, because a gateway
    forwards what it decoded: a set it let through unsorted or without a name would be refused downstream
    with the whole batch, far from the sender that caused it.

    Why a cache: a sender sends the same series request after request, and building and checking every
    series' label tuple again cost ~5 us per series per request. Each series is looked up by its labels'
    serialized `Label` messages (exact: the same bytes always decode to the same labels), so the steady state
    costs a lookup per series and returns the same tuple object every time (what the exporters' batcher and
    series limit are fastest with). Only label sets that decoded and passed the checks are kept; a series
    not found is decoded as before, and any problem is reported by decoding the whole body the old way, so
    the errors are exactly those of a decoder without the cache. Bounded by `cache_bytes` (a `SeriesCache`:
    two generations, evicted entries counted in `evicted`).
    """

    protocol = "rw1"

    def __init__(self, cache_bytes: int = LABELS_CACHE_BYTES) -> None:
        self._cache = SeriesCache(cache_bytes)

    @property
    def evicted(self) -> int:
        """Label sets dropped from the cache to stay within its bound (self-telemetry)."""
        return self._cache.evicted

    def decode(self, body: bytes, headers: Mapping[str, str]) -> SampleBatch:
        try:
            request = _KeyedWriteRequest.FromString(body)
        except ProtobufDecodeError:
            return _decode_uncached(body)  # raises the error the real messages give
        cache = self._cache
        young, get = cache.young, cache.get
        batch = SampleBatch()
        add_labels, add_value, add_stamp, add_size = (
            batch.labels.append, batch.values.append, batch.timestamps.append, batch.sizes.append)
        for index, series in enumerate(request.timeseries):
            key = tuple(series.labels)
            found = young.get(key) or get(key)
            if found is None:
                found = self._learn(key, index)
                if found is None:
                    return _decode_uncached(body)  # raises what is wrong, as without the cache
            labels, label_bytes = found[0], found[1]
            sample_size = label_bytes + _SAMPLE_BYTES
            for sample in series.samples:
                add_labels(labels)
                add_value(sample.value)
                add_stamp(sample.timestamp)
                add_size(sample_size)
            if series.histograms or series.exemplars:
                _add_rare(batch, series, labels, label_bytes, index)
        _add_metadata(batch, request)
        return batch

    def _learn(self, key: tuple[bytes, ...], index: int) -> tuple[Labels, int, int] | None:
        """Decode and check one series' labels from their `Label` messages and cache them; None if they are
        malformed in any way (the caller then reports it exactly as the uncached decoder does)."""
        try:
            messages = [Label.FromString(data) for data in key]
            labels = _labels(messages, index)
        except (ProtobufDecodeError, DecodeError):
            return None
        label_bytes = _SERIES_OVERHEAD + sum(message.ByteSize() + 2 for message in messages)
        cache = self._cache
        labels = cache.intern(labels)  # the same tuple for the same series whatever bytes carried it
        nbytes = labels_bytes(labels) + INTERNED_BYTES + sum(map(len, key)) + 64  # + the value tuple
        value = (labels, label_bytes, nbytes)
        cache.put(key, value, nbytes)
        return value


def _add_rare(batch: SampleBatch, series: Any, labels: Labels, label_bytes: int, index: int) -> None:
    for histogram in series.histograms:
        batch.histogram_labels.append(labels)
        batch.histograms.append(_native(histogram, index))
        batch.histogram_sizes.append(label_bytes + histogram.ByteSize() + 3)
    for exemplar in series.exemplars:
        batch.exemplar_labels.append(labels)
        batch.exemplars.append(
            Exemplar(
                tuple((lb.name, lb.value) for lb in exemplar.labels),
                exemplar.value,
                exemplar.timestamp,
            )
        )
        batch.exemplar_sizes.append(exemplar.ByteSize() + 3)


def _add_metadata(batch: SampleBatch, request: Any) -> None:
    for family in request.metadata:
        if family.metric_family_name:
            kind = (
                METRIC_TYPES[family.type]
                if 0 <= family.type < len(METRIC_TYPES)
                else "unknown"
            )
            batch.metadata[family.metric_family_name] = Metadata(
                kind, family.help, family.unit
            )


def _decode_uncached(body: bytes) -> SampleBatch:
    """The decoder without its cache: every label built from the real messages. The reference for what the
    cached path returns, and the source of its errors."""
    try:
        request = WriteRequest.FromString(body)
    except ProtobufDecodeError as exc:
        raise DecodeError(
            f"remote write 1.0: body is not a valid prometheus.WriteRequest ({exc})"
        ) from exc
    batch = SampleBatch()
    for index, series in enumerate(request.timeseries):
        labels = _labels(series.labels, index)
        label_bytes = _SERIES_OVERHEAD + sum(
            label.ByteSize() + 2 for label in series.labels
        )
        for sample in series.samples:
            batch.labels.append(labels)
            batch.values.append(sample.value)
            batch.timestamps.append(sample.timestamp)
            batch.sizes.append(label_bytes + _SAMPLE_BYTES)
        _add_rare(batch, series, labels, label_bytes, index)
    _add_metadata(batch, request)
    return batch


def _labels(messages: Iterable[Label], index: int) -> Labels:
    labels = tuple((label.name, label.value) for label in messages)
    previous = ""
    for position, (name, _) in enumerate(labels):
        if not name:
            raise DecodeError(
                f"remote write 1.0: series {index} has an empty label name: {labels!r:.200}"
            )
        if position and name <= previous:
            problem = "a duplicate" if name == previous else "an unsorted"
            raise DecodeError(
                f"remote write 1.0: series {index} has {problem} label name {name!r}: {labels!r:.200}"
            )
        previous = name
    if not any(name == NAME_LABEL for name, _ in labels):
        raise DecodeError(
            f"remote write 1.0: series {index} has no {NAME_LABEL} label: {labels!r:.200}"
        )
    return labels


def _native(h: Histogram, index: int) -> NativeHistogram:
    """A histogram message in the series model, which holds integer-count histograms only (what translation
    produces); a float histogram is refused rather than rounded."""
    if h.WhichOneof("count") == "count_float":
        count: int | float = h.count_float
        if not math.isnan(count):
            raise DecodeError(
                f"remote write 1.0: series {index} has a float-count native histogram (unsupported)"
            )
    else:
        count = h.count_int
    if (
        (h.WhichOneof("zero_count") == "zero_count_float" and h.zero_count_float)
        or h.negative_counts
        or h.positive_counts
    ):
        raise DecodeError(
            f"remote write 1.0: series {index} has a float-count native histogram (unsupported)"
        )
    return NativeHistogram(
        timestamp=h.timestamp,
        count=count,
        sum=h.sum,
        schema=h.schema,
        zero_threshold=h.zero_threshold,
        zero_count=h.zero_count_int,
        negative_spans=tuple((span.offset, span.length) for span in h.negative_spans),
        negative_deltas=tuple(h.negative_deltas),
        positive_spans=tuple((span.offset, span.length) for span in h.positive_spans),
        positive_deltas=tuple(h.positive_deltas),
    )
