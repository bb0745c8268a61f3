"""Hypothesis strategies for request bodies a buggy or hostile client can send, for the receivers' fuzz tests.

Seeds are valid requests as real clients build them: OTLP traces and metrics from the OpenTelemetry SDK and
its OTLP encoders (every metric kind the SDK makes, delta and cumulative), a summary and an attribute-rich
span from our proto classes, remote-write bodies from the senders' own encoders (rw1, rw2, vm, compact).
From them:

- `mutated(seed)`: byte flips, insertions, deletions, truncation, a varint replaced by a huge one (lengths
  included), a tag given another wire type (groups and the invalid 6 and 7 too), a string made invalid UTF-8;
- `deep_protobuf`: an attribute value nested thousands of levels deep (arrays or key-value lists), in a span,
  a resource or a data point;
- `odd_json(seed)`: a JSON seed with one value anywhere replaced by any JSON value (wrong types, huge and
  non-finite numbers, nulls, objects where arrays go), or the text itself mutated (invalid UTF-8 included);
- `deep_json`: arrays and objects thousands of levels deep, bare and inside an OTLP attribute value.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Metric,
    ResourceMetrics,
    ScopeMetrics,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from exporters.otlp_json import encode_json
from exporters.remote_write.compact import CompactEncoder
from exporters.remote_write.rw2 import Rw2Encoder
from exporters.remote_write.series import Metadata, NativeHistogram, SampleBatch
from exporters.remote_write.vm import Rw1Encoder, VmEncoder

MARKER = "~~~~"
"""Seeds carry this in strings, so a mutation can make exactly a string invalid UTF-8."""

NOW = time.time_ns() // 10**9 * 10**9
"""Seeds are recent, so what they carry is sent, not dropped as too old."""


# -- seeds ---------------------------------------------------------------------------------------------------


@cache
def sdk_trace_request() -> bytes:
    """Spans made and encoded by the OpenTelemetry SDK: a parent with attributes, events, a link and an error."""
    from opentelemetry.sdk.resources import Resource as SdkResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, StatusCode

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": f"svc{MARKER}", "host.name": "n1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer(f"fuzz{MARKER}", "1.0")
    with tracer.start_as_current_span(f"GET /{MARKER}", attributes={
            "http.route": f"/r/{MARKER}", "sampling.priority": "P1", "n": 3, "f": 0.5, "b": True,
            "list": ["a", MARKER]}) as parent:
        parent.add_event(f"event{MARKER}", {"k": "v"})
        with tracer.start_as_current_span("child", links=[Link(parent.get_span_context(), {"l": 1})]) as child:
            child.set_status(StatusCode.ERROR, f"boom{MARKER}")
    provider.shutdown()
    return encode_spans(memory.get_finished_spans()).SerializeToString()


@cache
def sdk_metrics_request(temporality: str = "cumulative") -> bytes:
    """Every metric kind the SDK makes (counter, up-down counter, gauge, explicit and exponential histograms),
    encoded by its OTLP encoder, with cumulative or delta temporality."""
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        MeterProvider,
        ObservableGauge,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource as SdkResource

    kind = AggregationTemporality.DELTA if temporality == "delta" else AggregationTemporality.CUMULATIVE
    reader = InMemoryMetricReader(preferred_temporality={
        Counter: kind, UpDownCounter: kind, Histogram: kind, ObservableGauge: kind})
    provider = MeterProvider(
        resource=SdkResource.create({"service.name": f"svc{MARKER}"}), metric_readers=[reader],
        views=[View(instrument_name="exp*", aggregation=ExponentialBucketHistogramAggregation())])
    meter = provider.get_meter(f"fuzz{MARKER}")
    meter.create_counter("requests", unit="1", description=f"requests{MARKER}").add(3, {"route": MARKER})
    meter.create_up_down_counter("inflight").add(-2, {"route": MARKER})
    meter.create_histogram("latency", unit="ms").record(12.5, {"route": MARKER})
    exp = meter.create_histogram("exp_latency", unit="s")
    for value in (0.001, 0.5, 3.0, 0.0):
        exp.record(value, {"route": MARKER})
    meter.create_observable_gauge("temperature", callbacks=[lambda _options: [
        __import__("opentelemetry.metrics", fromlist=["Observation"]).Observation(21.5, {"room": MARKER})]])
    data = reader.get_metrics_data()
    provider.shutdown()
    return encode_metrics(data).SerializeToString()


@cache
def summary_request() -> bytes:
    """A summary (the SDK makes none) and a gauge without a name, built from our proto classes."""
    point = SummaryDataPoint(time_unix_nano=NOW, count=4, sum=2.0, attributes=[
        KeyValue(key="q", value=AnyValue(string_value=MARKER))],
        quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=0.4)])
    metric = Metric(name="rpc_seconds", summary=Summary(data_points=[point]))
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
        resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="s"))]),
        scope_metrics=[ScopeMetrics(metrics=[metric])])]).SerializeToString()


@cache
def span_request(name: str = "valid") -> bytes:
    """One minimal, valid span (for the request every fuzz example is followed by)."""
    span = Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name=name,
                start_time_unix_nano=NOW, end_time_unix_nano=NOW + 1000, status=Status(code=Status.STATUS_CODE_OK))
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
                                     ).SerializeToString()


@cache
def number_request() -> bytes:
    """Gauges and sums only: the shape the remote-write exporter learns and then reads straight from the bytes
    (exporters/remote_write/shapes.py), so mutations that keep the length reach that path."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, NumberDataPoint, Sum

    def points(offset: float) -> list[NumberDataPoint]:
        return [NumberDataPoint(time_unix_nano=NOW, start_time_unix_nano=NOW - 10, as_double=offset + i,
                                attributes=[KeyValue(key="cpu", value=AnyValue(string_value=f"{MARKER}{i}"))])
                for i in range(2)]

    metrics = [Metric(name="temp", unit="Cel", gauge=Gauge(data_points=points(0.5))),
               Metric(name="ops", sum=Sum(data_points=points(7), is_monotonic=True, aggregation_temporality=2))]
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
        resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=MARKER))]),
        scope_metrics=[ScopeMetrics(metrics=metrics)])]).SerializeToString()


_SPECIAL_8 = [bytes(8), b"\xff" * 8, struct.pack("<d", float("nan")), struct.pack("<Q", 0x7FF0000000000002),
              struct.pack("<d", float("inf")), struct.pack("<d", -0.0), struct.pack("<d", 5e-324),
              struct.pack("<q", -1), struct.pack("<Q", 1 << 63), struct.pack("<Q", NOW * 10), struct.pack("<Q", NOW // 2)]


def _moving_fields(data: bytes, seed: int) -> bytes:
    """`number_request()` with its times and values (what a learnt shape reads from the bytes) replaced by
    other 8-byte values: zero, all ones, NaNs (the staleness marker's too), infinities, times far off."""
    rng = random.Random(seed)
    out = bytearray(data)
    fields = [i for i in range(len(data) - 8) if data[i] in (0x19, 0x21, 0x31, 0x11)]
    for pos in rng.sample(fields, min(len(fields), rng.randrange(1, 4))):
        out[pos + 1:pos + 9] = rng.choice(_SPECIAL_8) if rng.random() < 0.7 else rng.randbytes(8)
    return bytes(out)


def shaped() -> st.SearchStrategy[bytes]:
    """Requests of the learnt shape with odd times and values: read from the bytes, never parsed."""
    return st.builds(_moving_fields, st.just(number_request()), st.integers(0, 2**32))


def trace_seeds() -> list[bytes]:
    return [sdk_trace_request(), span_request(MARKER)]


def metrics_seeds() -> list[bytes]:
    return [number_request(), sdk_metrics_request("cumulative"), sdk_metrics_request("delta"), summary_request()]


def json_of(seed: bytes, message_type: type) -> bytes:
    return encode_json(message_type.FromString(seed))


def series_batch(step: int = 0) -> SampleBatch:
    """Float samples, a native histogram, metadata: what a gateway's senders carry (`step` seconds on)."""
    batch = SampleBatch()
    now_ms = NOW // 10**6 + 1000 * step
    for i, labels in enumerate(((("__name__", "up"), ("job", MARKER)), (("__name__", "load"), ("job", "n")))):
        batch.labels.append(labels)
        batch.values.append(float(i))
        batch.timestamps.append(now_ms + i)
        batch.sizes.append(0)
    batch.histogram_labels.append((("__name__", "lat"), ("job", MARKER)))
    batch.histograms.append(NativeHistogram(
        timestamp=now_ms, count=3, sum=1.5, schema=2, zero_threshold=1e-128, zero_count=1,
        negative_spans=(), negative_deltas=(), positive_spans=((0, 2),), positive_deltas=(1, 1)))
    batch.histogram_sizes.append(0)
    batch.metadata["up"] = Metadata("gauge", f"up{MARKER}", "")
    return batch


REMOTE_WRITE_ENCODERS: dict[str, Callable[[], Any]] = {
    "rw1": Rw1Encoder, "vm": VmEncoder, "rw2": Rw2Encoder, "compact": CompactEncoder,
    "compact_snappy": lambda: CompactEncoder(codec="snappy"),
}


# -- mutations -----------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


HUGE_VARINTS = [_varint(v) for v in (2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)] + [
    b"\xff" * 10 + b"\x01",  # 11 bytes: longer than any varint
    b"\xff" * 9 + b"\x7f",   # 10 bytes, past 64 bits
    b"\x80" * 20,            # never ends
]


def _flip(data: bytes, rng: random.Random) -> bytes:
    pos = rng.randrange(len(data))
    return data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1:]


def _insert(data: bytes, rng: random.Random) -> bytes:
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + rng.randbytes(rng.randrange(1, 9)) + data[pos:]


def _delete(data: bytes, rng: random.Random) -> bytes:
    pos = rng.randrange(len(data))
    return data[:pos] + data[pos + rng.randrange(1, 9):]


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def _huge_varint(data: bytes, rng: random.Random) -> bytes:
    """Replace the varint (tag, length or value) starting at a random byte with a huge one."""
    pos = rng.randrange(len(data))
    end = pos
    while end < len(data) and data[end] & 0x80:
        end += 1
    return data[:pos] + rng.choice(HUGE_VARINTS) + data[end + 1:]


def _wire_type(data: bytes, rng: random.Random) -> bytes:
    """Give the byte at a random position (often a tag) another wire type, 0 to 7."""
    pos = rng.randrange(len(data))
    return data[:pos] + bytes([(data[pos] & ~7) | rng.randrange(8)]) + data[pos + 1:]


def _bad_utf8(data: bytes, rng: random.Random) -> bytes:
    marker = MARKER.encode()
    spots = [i for i in range(len(data)) if data.startswith(marker, i)]
    if not spots:
        return _flip(data, rng)
    pos = rng.choice(spots)
    bad = rng.choice([b"\xff\xfe\xfd\xfc", b"\xc3\x28\x41\x41", b"\xed\xa0\x80A", b"\xf4\x90\x80\x80", b"A\x00\x00A"])
    return data[:pos] + bad + data[pos + len(marker):]


MUTATIONS = [_flip, _insert, _delete, _truncate, _huge_varint, _wire_type, _bad_utf8]


def mutate(data: bytes, seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    for _ in range(count):
        if not data:
            return rng.randbytes(rng.randrange(1, 9))
        data = rng.choice(MUTATIONS)(data, rng)
    return data


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with 1 to 4 mutations; hypothesis shrinks towards the first seed and fewer mutations."""
    return st.builds(mutate, st.sampled_from(seeds), st.integers(0, 2**32), st.integers(1, 4))


# -- deep protobuf -------------------------------------------------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_any_value(depth: int, kvlist: bool) -> bytes:
    """An AnyValue nested `depth` levels: arrays of arrays, or key-value lists of key-value lists."""
    value = _field(1, b"leaf")  # string_value
    for _ in range(depth):
        if kvlist:
            value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))  # kvlist_value.values[0]
        else:
            value = _field(5, _field(1, value))  # array_value.values[0]
    return value


def deep_span_request(depth: int, kvlist: bool, in_resource: bool) -> bytes:
    attribute = _field(1, b"http.route") + _field(2, deep_any_value(depth, kvlist))
    span = Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="deep",
                start_time_unix_nano=NOW, end_time_unix_nano=NOW + 1).SerializeToString()
    resource = b""
    if in_resource:
        resource = _field(1, _field(1, attribute))  # ResourceSpans.resource.attributes[0]
    else:
        span += _field(9, attribute)  # Span.attributes
    return _field(1, resource + _field(2, _field(2, span)))


def deep_metrics_request(depth: int, kvlist: bool, in_resource: bool) -> bytes:
    attribute = _field(1, b"route") + _field(2, deep_any_value(depth, kvlist))
    point = bytes([0x19]) + NOW.to_bytes(8, "little") + bytes([0x21]) + struct.pack("<d", 1.0)  # time, as_double
    resource = b""
    if in_resource:
        resource = _field(1, _field(1, attribute))
    else:
        point += _field(7, attribute)  # NumberDataPoint.attributes
    metric = _field(1, b"deep") + _field(5, _field(1, point))  # Metric.name, gauge.data_points[0]
    return _field(1, resource + _field(2, _field(2, metric)))


def deep_protobuf(kind: str) -> st.SearchStrategy[bytes]:
    build = deep_span_request if kind == "traces" else deep_metrics_request
    return st.builds(build, st.sampled_from([50, 101, 1000, 5000]), st.booleans(), st.booleans())


# -- JSON ----------------------------------------------------------------------------------------------------

OTLP_KEYS = ["resourceSpans", "resourceMetrics", "scopeSpans", "scopeMetrics", "spans", "metrics", "resource",
             "attributes", "key", "value", "stringValue", "intValue", "doubleValue", "arrayValue", "kvlistValue",
             "values", "traceId", "spanId", "name", "kind", "startTimeUnixNano", "timeUnixNano", "gauge", "sum",
             "histogram", "dataPoints", "asDouble", "asInt", "bucketCounts", "explicitBounds", "status", "code"]

_ODD_NUMBERS = st.sampled_from([0, -1, 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -0.0, 0.5, 1.5e-320])
_RAW = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" * 400, "9" * 5000, "-0", "1E+2"]
"""Number tokens json.dumps will not write; put in the text as they are."""
_ODD_STRINGS = st.sampled_from([*(f"@@{raw}@@" for raw in _RAW), "", "NaN", "Infinity", "-Infinity", "1e400", "0x10", "zz", "\ud800",
                                "18446744073709551616", "-1", "1.5", "AAAA", "0af7651916cd43dd8448eb211c80319c"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _ODD_NUMBERS | _ODD_STRINGS
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(OTLP_KEYS) | st.text(max_size=4),
                                                                inner, max_size=3),
    max_leaves=12)


def _paths(obj: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, path + (key,))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += _paths(value, path + (index,))
    return found


def _replace(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


def _odd(seed: bytes, pick: int, value: Any) -> bytes:
    obj = json.loads(seed)
    paths = _paths(obj)
    text = json.dumps(_replace(obj, paths[pick % len(paths)], value), allow_nan=False)
    for raw in _RAW:
        text = text.replace(f'"@@{raw}@@"', raw)
    return text.encode("utf-8", "surrogatepass")


def odd_json(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A JSON seed with one value replaced by any JSON value, or its text mutated like protobuf."""
    replaced = st.builds(_odd, st.sampled_from(seeds), st.integers(0, 10_000), json_values)
    odd_number = st.builds(_odd, st.sampled_from(seeds), st.integers(0, 10_000),
                           st.sampled_from([f"@@{raw}@@" for raw in _RAW]) | _ODD_NUMBERS)
    return replaced | odd_number | mutated(seeds)


def _deep_json(depth: int, shape: str) -> bytes:
    if shape == "arrays":
        return b"[" * depth + b"]" * depth
    if shape == "objects":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if shape == "unclosed":
        return b'{"resourceSpans":' + b"[" * depth
    value = '{"stringValue":"leaf"}'
    for _ in range(depth):
        value = ('{"kvlistValue":{"values":[{"key":"k","value":' + value + '}]}}' if shape == "kvlist"
                 else '{"arrayValue":{"values":[' + value + ']}}')
    attribute = '{"key":"http.route","value":' + value + '}'
    return ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",'
            '"spanId":"0102030405060708","name":"deep","attributes":[' + attribute + ']}]}]}],'
            '"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"deep","gauge":{"dataPoints":[{'
            '"timeUnixNano":"1700000000000000000","asDouble":1,"attributes":[' + attribute + ']}]}}]}]}]}').encode()


deep_json = st.builds(_deep_json, st.sampled_from([50, 101, 999, 1000, 5000, 20000]),
                      st.sampled_from(["arrays", "objects", "unclosed", "kvlist", "array_value"]))
