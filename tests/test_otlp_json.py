"""OTLP/JSON: hex IDs, camelCase keys, integer enums, unknown fields ignored, errors that name the field."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from exporters.otlp_json import OtlpJsonError, decode_json, encode_json

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")


def realistic_traces() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "checkout"
    rs.resource.attributes.add(key="host.cpus").value.int_value = 8
    rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    ss = rs.scope_spans.add()
    ss.scope.name = "io.opentelemetry.aiohttp"
    ss.scope.version = "0.50b0"
    span = ss.spans.add(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_span_id=PARENT_ID,
        name="POST /cart",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_250_000_000,
        trace_state="rojo=00f067aa0ba902b7",
        flags=0x301,
    )
    span.attributes.add(key="http.status_code").value.int_value = 500
    span.attributes.add(key="retry").value.bool_value = True
    span.attributes.add(key="ratio").value.double_value = 0.25
    span.attributes.add(key="blob").value.bytes_value = b"\x00\xff"
    span.attributes.add(key="tags").value.array_value.values.add().string_value = "a"
    span.attributes.add(key="kv").value.kvlist_value.values.add(key="x", value=AnyValue(int_value=-1))
    event = span.events.add(time_unix_nano=1_700_000_000_100_000_000, name="exception")
    event.attributes.add(key="exception.type").value.string_value = "ValueError"
    span.links.add(trace_id=bytes(range(16)), span_id=bytes(range(8)), trace_state="x=1")
    span.status.code = Status.STATUS_CODE_ERROR
    span.status.message = "boom"
    return request


def realistic_metrics() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "checkout"
    metric = rm.scope_metrics.add().metrics.add(name="http.server.duration", unit="ms")
    point = metric.histogram.data_points.add(
        start_time_unix_nano=1, time_unix_nano=2, count=3, sum=0.0, bucket_counts=[1, 2], explicit_bounds=[10.0]
    )
    point.attributes.add(key="http.route").value.string_value = "/cart"
    exemplar = point.exemplars.add(time_unix_nano=2, as_double=7.5, trace_id=TRACE_ID, span_id=SPAN_ID)
    exemplar.filtered_attributes.add(key="user").value.string_value = "u1"
    metric.histogram.aggregation_temporality = 2
    gauge = rm.scope_metrics[0].metrics.add(name="queue.size")
    gauge.gauge.data_points.add(time_unix_nano=2, as_int=-(2**63))
    return request


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def one_span(**fields: object) -> bytes:
    return body({"resourceSpans": [{"scopeSpans": [{"spans": [fields]}]}]})


def test_a_realistic_trace_request_survives_encode_then_decode() -> None:
    request = realistic_traces()
    assert decode_json(encode_json(request), ExportTraceServiceRequest) == request


def test_a_realistic_metric_request_with_an_exemplar_survives_encode_then_decode() -> None:
    request = realistic_metrics()
    assert decode_json(encode_json(request), ExportMetricsServiceRequest) == request


def test_ids_are_written_as_lowercase_hex_not_base64() -> None:
    out = json.loads(encode_json(realistic_traces()))
    span = out["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert span["spanId"] == "eee19b7ec3c1b174"
    assert span["parentSpanId"] == "eee19b7ec3c1b173"
    assert span["links"][0]["traceId"] == "000102030405060708090a0b0c0d0e0f"
    exemplar = json.loads(encode_json(realistic_metrics()))["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    assert exemplar["histogram"]["dataPoints"][0]["exemplars"][0]["spanId"] == "eee19b7ec3c1b174"


def test_other_bytes_fields_stay_base64() -> None:
    out = json.loads(encode_json(realistic_traces()))
    attrs = out["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    assert {"key": "blob", "value": {"bytesValue": "AP8="}} in attrs


def test_output_is_one_line_with_camel_case_keys_int_enums_and_64_bit_ints_as_strings() -> None:
    raw = encode_json(realistic_traces())
    assert b"\n" not in raw and b" " not in raw.replace(b"POST /cart", b"")
    span = json.loads(raw)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["kind"] == 2
    assert span["status"] == {"code": 2, "message": "boom"}
    assert span["startTimeUnixNano"] == "1700000000000000000"
    assert "droppedAttributesCount" not in span  # defaults are left out


def test_ids_given_in_hex_are_decoded_with_either_key_spelling() -> None:
    camel = decode_json(one_span(traceId=TRACE_ID.hex(), parentSpanId=PARENT_ID.hex()), ExportTraceServiceRequest)
    snake = decode_json(one_span(trace_id=TRACE_ID.hex().upper(), parent_span_id=PARENT_ID.hex()), ExportTraceServiceRequest)
    for request in (camel, snake):
        span = request.resource_spans[0].scope_spans[0].spans[0]
        assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)


def test_an_empty_id_string_means_empty_bytes() -> None:
    request = decode_json(one_span(traceId="", parentSpanId=""), ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == b"" and span.parent_span_id == b""


def test_a_hex_id_of_the_wrong_length_decodes_to_the_bytes_it_spells() -> None:
    request = decode_json(one_span(traceId="abcd", spanId="00" * 9), ExportTraceServiceRequest)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id) == (b"\xab\xcd", bytes(9))


def test_unknown_fields_are_ignored_at_every_level() -> None:
    raw = body(
        {
            "futureTopLevel": 1,
            "resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x", "newField": {"deep": [1, 2]}}], "extra": None}]}],
        }
    )
    request = decode_json(raw, ExportTraceServiceRequest)
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "x"


def test_64_bit_ints_are_accepted_as_strings_and_as_numbers() -> None:
    as_string = decode_json(one_span(startTimeUnixNano="1700000000000000001"), ExportTraceServiceRequest)
    as_number = decode_json(one_span(startTimeUnixNano=1700000000000000001), ExportTraceServiceRequest)
    for request in (as_string, as_number):
        assert request.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano == 1700000000000000001


def test_enums_are_accepted_as_integers_and_as_names() -> None:
    by_number = decode_json(one_span(kind=3, status={"code": 2}), ExportTraceServiceRequest)
    by_name = decode_json(one_span(kind="SPAN_KIND_CLIENT", status={"code": "STATUS_CODE_ERROR"}), ExportTraceServiceRequest)
    for request in (by_number, by_name):
        span = request.resource_spans[0].scope_spans[0].spans[0]
        assert (span.kind, span.status.code) == (Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_ERROR)


def test_original_field_names_are_accepted_beside_camel_case() -> None:
    request = decode_json(
        body({"resource_spans": [{"scope_spans": [{"spans": [{"start_time_unix_nano": "5"}]}]}]}),
        ExportTraceServiceRequest,
    )
    assert request.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano == 5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty body: expected a JSON object"),
        (b"[1]", "expected a JSON object at the top level, got an array"),
        (b'"x"', "expected a JSON object at the top level, got the string \"x\""),
        (b'{"resourceSpans": [}', "invalid JSON at line 1 column 20: "),
        (b"\xff", "invalid UTF-8 at byte 0"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(OtlpJsonError) as info:
        decode_json(raw, ExportTraceServiceRequest)
    assert str(info.value).startswith(message)


def test_a_non_hex_id_is_refused_naming_its_path() -> None:
    raw = body({"resourceSpans": [{"scopeSpans": [{"spans": [{}, {}, {}, {"traceId": "zz12"}]}]}]})
    with pytest.raises(OtlpJsonError, match=r'^resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[3\]\.traceId: "zz12" is not hex$'):
        decode_json(raw, ExportTraceServiceRequest)


def test_an_odd_length_id_is_refused_naming_its_path() -> None:
    with pytest.raises(OtlpJsonError, match=r"spans\[0\]\.span_id: \"abc\" is not hex: it has an odd number of digits"):
        decode_json(one_span(span_id="abc"), ExportTraceServiceRequest)


def test_a_base64_looking_exemplar_id_is_refused_naming_its_path() -> None:
    raw = body(
        {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": [{"exemplars": [{"spanId": "7uGbfsPBsXQ="}]}]}}]}]}]}
    )
    with pytest.raises(OtlpJsonError, match=r"^resourceMetrics\[0\]\.scopeMetrics\[0\]\.metrics\[0\]\.gauge\.dataPoints\[0\]\.exemplars\[0\]\.spanId: "):
        decode_json(raw, ExportMetricsServiceRequest)


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ({"startTimeUnixNano": "soon"}, r'spans\[0\]\.startTimeUnixNano: "soon" is not an integer'),
        ({"startTimeUnixNano": -1}, r"spans\[0\]\.startTimeUnixNano: -1 is out of range for uint64"),
        ({"name": 5}, r"spans\[0\]\.name: expected a string, got the number 5"),
        ({"attributes": {"a": 1}}, r"spans\[0\]\.attributes: expected an array, got an object"),
        ({"status": "ok"}, r'spans\[0\]\.status: expected an object, got the string "ok"'),
        ({"kind": True}, r"spans\[0\]\.kind: expected an enum number or name, got a boolean"),
        (
            {"attributes": [{"key": "a", "value": {"intValue": "1", "stringValue": "x"}}]},
            r'spans\[0\]\.attributes\[0\]\.value\.stringValue: oneof "value" is already set by "intValue"',
        ),
        ({"traceId": "ab", "trace_id": "cd"}, r'spans\[0\]\.trace_id: field "trace_id" is given twice'),
    ],
)
def test_a_wrongly_typed_field_is_refused_naming_its_path(span: dict[str, object], message: str) -> None:
    with pytest.raises(OtlpJsonError, match=r"^resourceSpans\[0\]\.scopeSpans\[0\]\." + message):
        decode_json(one_span(**span), ExportTraceServiceRequest)


def test_the_error_class_is_a_value_error() -> None:
    assert issubclass(OtlpJsonError, ValueError)


# -------------------------------------------------------------------------------------------- property test

_ids = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8), st.binary(min_size=16, max_size=16), st.binary(max_size=20))
_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_leaf_values = st.one_of(
    st.builds(AnyValue, string_value=st.text(max_size=20)),
    st.builds(AnyValue, bool_value=st.booleans()),
    st.builds(AnyValue, int_value=st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    # JSON can only say "NaN": a NaN's sign and payload bits cannot survive it, so only the canonical NaN is drawn.
    st.builds(AnyValue, double_value=st.one_of(st.floats(allow_nan=False), st.just(math.nan))),
    st.builds(AnyValue, bytes_value=st.binary(max_size=12)),
)
_attributes = st.lists(st.builds(KeyValue, key=st.text(max_size=10), value=_leaf_values), max_size=4)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(_ids),
        span_id=draw(_ids),
        parent_span_id=draw(_ids),
        name=draw(st.text(max_size=30)),
        kind=draw(st.integers(min_value=0, max_value=5)),
        start_time_unix_nano=draw(_u64),
        end_time_unix_nano=draw(_u64),
        flags=draw(st.integers(min_value=0, max_value=2**32 - 1)),
        dropped_attributes_count=draw(st.integers(min_value=0, max_value=2**32 - 1)),
    )
    span.attributes.extend(draw(_attributes))
    for name in draw(st.lists(st.text(max_size=8), max_size=2)):
        span.events.add(name=name, time_unix_nano=draw(_u64)).attributes.extend(draw(_attributes))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        span.links.add(trace_id=draw(_ids), span_id=draw(_ids), flags=draw(st.integers(0, 2**32 - 1)))
    span.status.code = draw(st.integers(min_value=0, max_value=2))
    span.status.message = draw(st.text(max_size=10))
    return span


@settings(max_examples=200, deadline=None)
@given(st.lists(spans(), min_size=1, max_size=4))
def test_encode_then_decode_is_identity_for_generated_spans(generated: list[Span]) -> None:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(generated)
    decoded = decode_json(encode_json(request), ExportTraceServiceRequest)
    # Compared as deterministic bytes: NaN attribute values are equal bytes but never equal floats.
    assert decoded.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)


# Found by tests/test_fuzz_receivers.py: both were a 500 from the receivers (an exception no one expected).


def test_an_integer_past_the_largest_double_in_a_double_field_is_refused_as_out_of_range() -> None:
    body = ('{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","gauge":{"dataPoints":[{"asDouble":'
            + "1" * 400 + '}]}}]}]}]}')
    with pytest.raises(OtlpJsonError, match=r"dataPoints\[0\]\.asDouble: 1+\.\.\. is out of range for double"):
        decode_json(body.encode(), ExportMetricsServiceRequest)


def test_an_integer_with_more_digits_than_python_reads_is_invalid_json() -> None:
    body = '{"resourceMetrics":' + "1" * 5000 + "}"
    with pytest.raises(OtlpJsonError, match="invalid JSON: an integer of more than 4300 digits"):
        decode_json(body.encode(), ExportMetricsServiceRequest)
