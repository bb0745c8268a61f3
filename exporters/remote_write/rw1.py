"""Remote write 1.0 bodies: samples to a `prometheus.WriteRequest`, compressed with snappy (block format).

Samples of the same series in one request share a single TimeSeries (labels written once), with samples
in timestamp order as the spec requires; series appear in the order their first sample arrived.
"""

from __future__ import annotations

from collections.abc import Sequence

import cramjam

from exporters.remote_write.proto.remote_write_v1_pb2 import Label, Sample, TimeSeries, WriteRequest
from exporters.remote_write.translate import Labels

# The headers the spec requires on every request. They are reserved: configured headers may not replace
# them (the exporter refuses such a configuration).
HEADERS: dict[str, str] = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def build_write_request(labels: Sequence[Labels], values: Sequence[float], timestamps: Sequence[int]) -> WriteRequest:
    """A WriteRequest with one TimeSeries per distinct label set; `labels[i]` must already be sorted."""
    by_series: dict[Labels, list[int]] = {}
    for index, series in enumerate(labels):
        members = by_series.get(series)
        if members is None:
            by_series[series] = [index]
        else:
            members.append(index)
    timeseries = []
    for series, members in by_series.items():
        if len(members) > 1:
            members.sort(key=timestamps.__getitem__)  # stable: equal timestamps keep arrival order
        timeseries.append(
            TimeSeries(
                labels=[Label(name=name, value=value) for name, value in series],
                samples=[Sample(value=values[i], timestamp=timestamps[i]) for i in members],
            )
        )
    return WriteRequest(timeseries=timeseries)


def compress(data: bytes) -> bytes:
    """Snappy block format, as remote write requires (the framed format is refused by receivers)."""
    return bytes(cramjam.snappy.compress_raw(data))


def decompress(body: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(body))


def encode(labels: Sequence[Labels], values: Sequence[float], timestamps: Sequence[int]) -> bytes:
    """The compressed HTTP body for these samples.

    Pure CPU work on immutable inputs, so callers may run it in a thread; cramjam releases the GIL while it
    compresses.
    """
    return compress(build_write_request(labels, values, timestamps).SerializeToString())


def decode(body: bytes) -> WriteRequest:
    """The WriteRequest in a compressed body (for tests and, later, a receiver)."""
    return WriteRequest.FromString(decompress(body))
