"""samplers/wire.py: OTLP trace requests read from their wire bytes, checked against protobuf's own reading."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from bench.loadgen import make_payloads  # the benchmark's payloads: 512 spans, ~350 B/span
from samplers.wire import (
    Scanned,
    WireError,
    encode_len_field,
    find_attribute,
    frame_request,
    resource_attributes_bytes,
    scan_request,
    scope_name,
    span_facts,
    with_attributes,
    with_trace_state,
)


# Unknown fields of every wire type, as another producer (or a newer OTLP) might send them.
UNKNOWN_VARINT = b"\xa0\x06\x96\x01"  # field 100, varint 150
UNKNOWN_FIXED64 = b"\xa9\x06" + struct.pack("<Q", 7)  # field 101, fixed64
UNKNOWN_LEN = b"\xb2\x06\x03abc"  # field 102, length-delimited
UNKNOWN_FIXED32 = b"\xbd\x06" + struct.pack("<I", 9)  # field 103, fixed32
UNKNOWN_ALL = UNKNOWN_VARINT + UNKNOWN_FIXED64 + UNKNOWN_LEN + UNKNOWN_FIXED32


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, bytes):
        return KeyValue(key=key, value=AnyValue(bytes_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_span(rng: random.Random, name: str, parent: bool = True, error: bool = False) -> Span:
    span = Span(
        trace_id=rng.randbytes(16), span_id=rng.randbytes(8), parent_span_id=rng.randbytes(8) if parent else b"",
        name=name, kind=rng.choice([0, 1, 2, 3, 4, 5]), start_time_unix_nano=rng.getrandbits(63),
        end_time_unix_nano=rng.getrandbits(63), flags=0x301,
        attributes=[kv("http.route", "/api/{id}"), kv("http.response.status_code", 500 if error else 200),
                    kv("retry", True), kv("ratio", 0.25), kv("blob", b"\x00\xff")],
    )
    event = span.events.add(time_unix_nano=17, name="exception")
    event.attributes.append(kv("exception.type", "ValueError"))
    span.links.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), trace_state="x=1")
    if error:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = "boom"
    return span


def realistic_request(seed: int = 7) -> ExportTraceServiceRequest:
    """Two resources (one with two scopes), schema URLs, trace state, spans of every shape."""
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    first = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    first.resource.attributes.extend([kv("service.name", "checkout"), kv("host.cpus", 8)])
    scope = first.scope_spans.add(schema_url="https://opentelemetry.io/schemas/1.25.0")
    scope.scope.name = "io.opentelemetry.aiohttp"
    scope.scope.version = "0.50b0"
    scope.spans.extend([make_span(rng, "GET /cart", parent=False), make_span(rng, "SELECT carts"),
                        make_span(rng, "POST /pay", error=True)])
    scope.spans[1].trace_state = "rojo=00f067aa0ba902b7"
    other = first.scope_spans.add()
    other.scope.name = "db"
    other.spans.extend([make_span(rng, "query"), Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8))])
    second = request.resource_spans.add()
    second.resource.attributes.append(kv("service.name", "payments"))
    second.scope_spans.add().spans.extend([make_span(rng, f"op-{i}") for i in range(5)])
    return request


def with_unknown_fields(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The same request with unknown fields of every wire type in resources, scopes and spans."""
    raw = ExportTraceServiceRequest()
    for resource_spans in request.resource_spans:
        rs = ResourceSpans.FromString(resource_spans.SerializeToString() + UNKNOWN_ALL)
        for scope_spans in rs.scope_spans:
            spans = [Span.FromString(s.SerializeToString() + UNKNOWN_ALL) for s in scope_spans.spans]
            del scope_spans.spans[:]
            scope_spans.MergeFromString(UNKNOWN_ALL)
            scope_spans.spans.extend(spans)
        raw.resource_spans.append(rs)
    return raw


def all_spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def scanned_spans(scanned: Scanned) -> list[bytes]:
    return [span for _resource, scopes in scanned.groups for _scope, spans in scopes for span in spans]


def protobuf_facts(span: Span) -> tuple:
    return (span.trace_id, span.span_id, span.parent_span_id, span.trace_state, span.name.encode(), span.kind,
            span.start_time_unix_nano, span.end_time_unix_nano, span.status.code)


def field_encodings(span: Span) -> list[bytes]:
    """Each field of `span` (each element of a repeated one) as a Span encoding of its own; any concatenation
    of them is a valid span, with the fields in that order."""
    parts = []
    for fd, value in span.ListFields():
        if fd.is_repeated:
            for element in value:
                one = Span()
                getattr(one, fd.name).add().CopyFrom(element)
                parts.append(one.SerializeToString())
        elif fd.message_type is not None:
            one = Span()
            getattr(one, fd.name).CopyFrom(value)
            parts.append(one.SerializeToString())
        else:
            parts.append(Span(**{fd.name: value}).SerializeToString())
    return parts


# -- scan and frame ----------------------------------------------------------------------------------------


def test_a_scanned_request_framed_again_parses_into_the_same_resources_scopes_and_spans():
    request = with_unknown_fields(realistic_request())
    scanned = scan_request(request.SerializeToString())
    assert (scanned.spans, scanned.rejected, scanned.reject_message) == (10, 0, "")
    assert ExportTraceServiceRequest.FromString(frame_request(scanned.groups)) == request


def test_each_span_is_the_span_s_own_encoding_without_tag_or_length():
    request = with_unknown_fields(realistic_request())
    scanned = scan_request(request.SerializeToString())
    assert scanned_spans(scanned) == [span.SerializeToString() for span in all_spans(request)]


def test_resource_and_scope_parts_hold_every_field_but_the_spans_exactly_as_on_the_wire():
    request = with_unknown_fields(realistic_request())
    scanned = scan_request(request.SerializeToString())
    for rs, (resource_part, scopes) in zip(request.resource_spans, scanned.groups, strict=True):
        bare = ResourceSpans()
        bare.CopyFrom(rs)
        del bare.scope_spans[:]
        assert ResourceSpans.FromString(resource_part) == bare
        assert resource_part.endswith(UNKNOWN_ALL)
        for ss, (scope_part, _spans) in zip(rs.scope_spans, scopes, strict=True):
            bare_scope = ScopeSpans()
            bare_scope.CopyFrom(ss)
            del bare_scope.spans[:]
            assert ScopeSpans.FromString(scope_part) == bare_scope
            assert UNKNOWN_ALL in scope_part


def test_the_load_generator_s_payloads_scan_and_frame_back_in_full():
    for payload in make_payloads(2):
        scanned = scan_request(payload.body)
        assert (scanned.spans, scanned.rejected) == (payload.spans, 0)
        parsed = ExportTraceServiceRequest.FromString(payload.body)
        assert ExportTraceServiceRequest.FromString(frame_request(scanned.groups)) == parsed


def test_spans_of_several_kilobytes_with_multi_byte_lengths_scan_and_read_correctly():
    rng = random.Random(3)
    span = make_span(rng, "big" * 100)  # a name longer than 127 bytes
    span.attributes.append(kv("db.statement", "SELECT " + "x, " * 2000))  # a 3-byte attribute length
    span.events.add(name="e" * 20000)
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend([span, make_span(rng, "small")])
    scanned = scan_request(request.SerializeToString())
    assert [span_facts(s) for s in scanned_spans(scanned)] == [protobuf_facts(s) for s in all_spans(request)]
    assert ExportTraceServiceRequest.FromString(frame_request(scanned.groups)) == request
    assert find_attribute(scanned_spans(scanned)[0], b"db.statement").startswith("SELECT x, x")


def test_scan_request_takes_bytearray_and_memoryview_and_returns_bytes():
    body = realistic_request().SerializeToString()
    for data in (bytearray(body), memoryview(body)):
        scanned = scan_request(data)
        assert scanned == scan_request(body)
        assert all(type(span) is bytes for span in scanned_spans(scanned))


def test_an_empty_request_scans_to_nothing_and_frames_to_an_empty_request():
    assert scan_request(b"") == Scanned([], 0, 0, "")
    assert frame_request([]) == b""
    assert ExportTraceServiceRequest.FromString(frame_request([])) == ExportTraceServiceRequest()


def test_unknown_fields_of_the_request_itself_are_skipped():
    request = realistic_request()
    scanned = scan_request(UNKNOWN_ALL + request.SerializeToString() + UNKNOWN_ALL)
    assert ExportTraceServiceRequest.FromString(frame_request(scanned.groups)) == request


def test_frame_request_accepts_groups_built_by_the_caller():
    rng = random.Random(5)
    spans = [make_span(rng, f"s{i}").SerializeToString() for i in range(3)]
    resource = encode_len_field(1, Resource(attributes=[kv("service.name", "cart")]).SerializeToString())
    body = frame_request([(resource, [(b"", spans[:2]), (b"", spans[2:])]), (b"", [(b"", [])])])
    parsed = ExportTraceServiceRequest.FromString(body)
    assert [s.SerializeToString() for s in all_spans(parsed)] == spans
    assert parsed.resource_spans[0].resource.attributes[0].value.string_value == "cart"
    assert len(parsed.resource_spans) == 2 and len(parsed.resource_spans[1].scope_spans) == 1


# -- rejected spans ----------------------------------------------------------------------------------------

GOOD_TRACE, GOOD_SPAN, GOOD_PARENT = bytes(range(1, 17)), bytes(range(1, 9)), bytes(range(9, 17))


@pytest.mark.parametrize(("fields", "problem"), [
    ({"trace_id": GOOD_TRACE[:8]}, "trace ID of 8 bytes (expected 16)"),
    ({"trace_id": b""}, "trace ID of 0 bytes (expected 16)"),
    ({"trace_id": bytes(16)}, "trace ID is all zeros"),
    ({"span_id": GOOD_SPAN[:4]}, "span ID of 4 bytes (expected 8)"),
    ({"span_id": b""}, "span ID of 0 bytes (expected 8)"),
    ({"span_id": bytes(8)}, "span ID is all zeros"),
    ({"parent_span_id": GOOD_PARENT[:3]}, "parent span ID of 3 bytes (expected 8, or none for a root span)"),
])
@pytest.mark.parametrize("trace_state", ["", "ot=th:8"])
def test_a_span_with_a_bad_id_is_left_out_counted_and_explained(fields, problem, trace_state):
    bad = Span(**({"trace_id": GOOD_TRACE, "span_id": GOOD_SPAN, "name": "GET /x", "trace_state": trace_state}
                  | fields))
    good = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, parent_span_id=GOOD_PARENT, name="ok",
                trace_state=trace_state)
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend([good, bad, good, bad])
    scanned = scan_request(request.SerializeToString())
    assert (scanned.spans, scanned.rejected) == (2, 2)
    assert scanned.reject_message == f"span 'GET /x': {problem}"
    assert scanned_spans(scanned) == [good.SerializeToString()] * 2


def test_a_bad_id_is_found_when_fields_come_in_an_unusual_order():
    span = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, parent_span_id=GOOD_PARENT[:5], name="late parent")
    reordered = b"".join(reversed(field_encodings(span)))
    body = encode_len_field(1, encode_len_field(2, encode_len_field(2, reordered)))
    scanned = scan_request(body)
    assert (scanned.spans, scanned.rejected) == (0, 1)
    assert scanned.reject_message == ("span 'late parent': parent span ID of 5 bytes "
                                      "(expected 8, or none for a root span)")


def test_an_empty_parent_span_id_field_is_a_root_span_not_a_bad_id():
    span = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, name="root").SerializeToString()
    explicit_empty = span[:28] + b"\x22\x00" + span[28:]
    scanned = scan_request(encode_len_field(1, encode_len_field(2, encode_len_field(2, explicit_empty))))
    assert (scanned.spans, scanned.rejected) == (1, 0)
    assert span_facts(scanned_spans(scanned)[0])[2] == b""


def test_scopes_and_resources_left_without_spans_by_rejection_are_dropped():
    request = ExportTraceServiceRequest()
    first = request.resource_spans.add()
    first.scope_spans.add().spans.append(Span(trace_id=bytes(16), span_id=GOOD_SPAN, name="zero"))
    first.scope_spans.add().spans.append(Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, name="ok"))
    request.resource_spans.add().scope_spans.add().spans.append(Span(trace_id=GOOD_TRACE, name="no span id"))
    scanned = scan_request(request.SerializeToString())
    assert (scanned.spans, scanned.rejected) == (1, 2)
    assert scanned.reject_message == "span 'zero': trace ID is all zeros"
    assert len(scanned.groups) == 1 and len(scanned.groups[0][1]) == 1


# -- malformed bytes ---------------------------------------------------------------------------------------


def test_a_request_cut_inside_a_span_names_the_span_scope_and_resource():
    request = realistic_request()
    body = request.SerializeToString()
    last = all_spans(request)[-1].SerializeToString()
    cut = body[:body.rindex(last) + 10]
    # The outer lengths still claim the whole request, so the request itself runs past the end first.
    with pytest.raises(WireError, match=r"^request: field 1 at byte \d+: length \d+ runs past the end"):
        scan_request(cut)
    # Framed so that only the span's own length is wrong:
    span_field = b"\x12" + bytes([0x80 | 200 & 0x7F, 200 >> 7]) + last[:20]
    scope = encode_len_field(2, encode_len_field(2, all_spans(request)[0].SerializeToString()) + span_field)
    body = encode_len_field(1, b"") + encode_len_field(1, scope)
    with pytest.raises(WireError, match=r"^span 1 of scope 0 of resource 1: length 200 runs past the end "
                                        r"\(20 bytes left\)$"):
        scan_request(body)


@pytest.mark.parametrize(("body", "message"), [
    (b"\x0a", r"^request: varint at byte 1 runs past the end$"),
    (b"\x0b", r"^request: field 1 at byte 0: group wire type 3 \(not used by OTLP\)$"),
    (b"\x0e\x00", r"^request: field 1 at byte 0: invalid wire type 6$"),
    (b"\x00\x00", r"^request: field number 0 at byte 0$"),
    (b"\x0a\x02\x13\x00", r"^resource 0: field 2 at byte 2: group wire type 3"),
    (b"\x0a\x04\x12\x02\x1c\x00", r"^scope 0 of resource 0: field 3 at byte 4: group wire type 4"),
    (b"\x0a\x03\x12\x01\x12", r"^span 0 of scope 0 of resource 0: length runs past the end$"),
    (b"\x0a\x02\x09\x00", r"^resource 0: field 1 at byte 2: fixed64 value runs past the end"),
    (b"\x08" + b"\xff" * 10 + b"\x01", r"^request: varint at byte 1 is longer than 10 bytes$"),
])
def test_malformed_framing_raises_wire_error_saying_what_and_where(body, message):
    with pytest.raises(WireError, match=message):
        scan_request(body)


@pytest.mark.parametrize(("span", "message"), [
    (b"\x0a\x10" + bytes(15), r"^span: field 1 at byte 0: length 16 runs past the end \(15 bytes left\)$"),
    (b"\x4a\x05\x0a\x01a", r"^span: field 9 at byte 0: length 5 runs past the end"),
    (b"\x7a\x03\x18\x02", r"^span: field 15 at byte 0: length 3 runs past the end"),
    (b"\x7a\x02\x1b\x02", r"^span: field 3 at byte 2: group wire type 3"),
    (b"\x39\x00\x00", r"^span: field 7 at byte 0: fixed64 value runs past the end"),
    (b"\x30", r"^span: varint at byte 1 runs past the end$"),
    (b"\x85\x01\x00", r"^span: field 16 at byte 0: fixed32 value runs past the end"),
    (b"\x5c", r"^span: field 11 at byte 0: group wire type 4"),
])
def test_a_malformed_span_raises_wire_error_from_span_facts(span, message):
    with pytest.raises(WireError, match=message):
        span_facts(span)


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


_BODY = with_unknown_fields(realistic_request()).SerializeToString()


def _read_everything(data: bytes) -> None:
    """scan, then read every part the way the sampler does; only WireError may escape."""
    scanned = scan_request(data)
    for resource_part, scopes in scanned.groups:
        find_attribute(resource_attributes_bytes(resource_part), b"service.name", 1)
        for scope_part, spans in scopes:
            scope_name(scope_part)
            for span in spans:
                span_facts(span)
                for key in (b"http.route", b"retry", b"ratio", b"blob", b"x"):
                    find_attribute(span, key)
        frame_request(scanned.groups)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=0, max_value=len(_BODY)))
def test_any_prefix_of_a_valid_request_either_scans_or_raises_wire_error(cut):
    try:
        _read_everything(_BODY[:cut])
    except WireError:
        pass


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_corrupted_request_either_reads_or_raises_wire_error(data):
    body = bytearray(_BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        _read_everything(bytes(body))
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=80))
def test_any_bytes_as_a_span_either_read_or_raise_wire_error(junk):
    for span in (junk, GOOD_TRACE.join((b"\x0a\x10", b"\x12\x08" + GOOD_SPAN)) + junk):
        try:
            span_facts(span)
        except WireError:
            pass
        try:
            find_attribute(span, junk[:3] or b"k")
        except WireError:
            pass


# -- span_facts --------------------------------------------------------------------------------------------


def test_span_facts_equals_what_protobuf_reads_for_every_span():
    requests = [with_unknown_fields(realistic_request(seed)) for seed in range(5)]
    requests += [ExportTraceServiceRequest.FromString(p.body) for p in make_payloads(1)]
    for request in requests:
        scanned = scan_request(request.SerializeToString())
        for raw, span in zip(scanned_spans(scanned), all_spans(request), strict=True):
            assert span_facts(raw) == protobuf_facts(span)


def test_span_facts_gives_defaults_for_absent_fields():
    assert span_facts(b"") == (b"", b"", b"", "", b"", 0, 0, 0, 0)
    only_ids = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN).SerializeToString()
    assert span_facts(only_ids) == (GOOD_TRACE, GOOD_SPAN, b"", "", b"", 0, 0, 0, 0)


ids = st.binary(min_size=0, max_size=20)
text = st.text(max_size=150)
any_scalar = st.one_of(text, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                       st.binary(max_size=200))


@st.composite
def spans(draw) -> Span:
    span = Span(
        trace_id=draw(st.sampled_from([GOOD_TRACE, bytes(16)]) | ids), span_id=draw(ids),
        parent_span_id=draw(ids), trace_state=draw(text), name=draw(text),
        kind=draw(st.integers(-(2**31), 2**31 - 1)), start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        end_time_unix_nano=draw(st.integers(0, 2**64 - 1)), flags=draw(st.integers(0, 2**32 - 1)),
        dropped_attributes_count=draw(st.integers(0, 2**32 - 1)),
        attributes=[kv(k, v) for k, v in draw(st.lists(st.tuples(text, any_scalar), max_size=6))],
    )
    for name in draw(st.lists(text, max_size=2)):
        span.events.add(name=name, time_unix_nano=3)
    for state in draw(st.lists(text, max_size=2)):
        span.links.add(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, trace_state=state)
    if draw(st.booleans()):
        span.status.code = draw(st.integers(-(2**31), 2**31 - 1))
        span.status.message = draw(text)
    return span


@settings(max_examples=300, deadline=None)
@given(span=spans(), other=spans(), order=st.randoms(use_true_random=False),
       repeat=st.lists(st.integers(0, 30), max_size=6), unknown=st.booleans())
def test_span_facts_equals_protobuf_for_fields_in_any_order_repeated_or_absent(span, other, order, repeat, unknown):
    parts = field_encodings(span)
    again = field_encodings(other)  # some fields a second time, other values: the last one wins, Status merges
    parts += [again[i % len(again)] for i in repeat if again]
    parts += [UNKNOWN_VARINT, UNKNOWN_FIXED64, UNKNOWN_LEN, UNKNOWN_FIXED32] if unknown else []
    order.shuffle(parts)
    raw = b"".join(parts)
    assert span_facts(raw) == protobuf_facts(Span.FromString(raw))


def test_span_facts_reads_the_status_code_past_a_message_and_across_merged_status_fields():
    base = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN).SerializeToString()
    with_message = base + Span(status=Status(message="boom", code=Status.STATUS_CODE_ERROR)).SerializeToString()
    assert span_facts(with_message)[8] == 2
    merged = base + b"\x7a\x02\x18\x02" + b"\x7a\x03\x12\x01x"  # the second Status has no code: ERROR stays
    assert Span.FromString(merged).status.code == 2 and span_facts(merged)[8] == 2
    cleared = base + b"\x7a\x02\x18\x02" + b"\x7a\x02\x18\x01"
    assert span_facts(cleared)[8] == Span.FromString(cleared).status.code == 1


def test_span_facts_treats_a_known_field_number_with_another_wire_type_as_unknown():
    base = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, name="n").SerializeToString()
    odd = base + b"\x08\x05" + b"\x2d\x00\x00\x00\x00"  # field 1 as varint, field 5 as fixed32
    assert span_facts(odd) == protobuf_facts(Span.FromString(odd))


# -- attributes and parts ----------------------------------------------------------------------------------


def attribute_span() -> Span:
    span = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, name="GET /x", kind=2, start_time_unix_nano=1,
                end_time_unix_nano=2)
    span.attributes.extend([
        kv("note", "the key http.route appears inside this value"),
        kv("http.route", "/cart"), kv("ok", True), kv("off", False), kv("code", -500), kv("big", 2**63 - 1),
        kv("ratio", 0.125), kv("blob", b"\x00\x01"), kv("empty", ""),
        KeyValue(key="list", value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)]))),
        KeyValue(key="map", value=AnyValue(kvlist_value=KeyValueList(values=[kv("a", "b")]))),
        KeyValue(key="unset"),
        kv("http.route", "/second"),
    ])
    span.status.code = Status.STATUS_CODE_OK
    return span


@pytest.mark.parametrize(("key", "expected"), [
    (b"http.route", "/cart"), (b"ok", True), (b"off", False), (b"code", -500), (b"big", 2**63 - 1),
    (b"ratio", 0.125), (b"blob", b"\x00\x01"), (b"empty", ""),
    (b"list", ArrayValue(values=[AnyValue(int_value=1)]).SerializeToString()),
    (b"map", KeyValueList(values=[kv("a", "b")]).SerializeToString()),
    (b"unset", None), (b"missing", None), (b"http", None), (b"GET /x", None),
])
def test_find_attribute_returns_each_value_type_and_none_for_missing_keys(key, expected):
    value = find_attribute(attribute_span().SerializeToString(), key)
    assert value == expected and type(value) is type(expected)


def test_find_attribute_is_not_fooled_by_the_key_inside_another_attribute_s_value():
    span = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN, name="service.name",
                attributes=[kv("note", "service.name"), kv("service.name.extra", "x"), kv("zz", "service.name")])
    raw = span.SerializeToString()
    assert b"service.name" in raw
    assert find_attribute(raw, b"service.name") is None
    span.attributes.append(kv("service.name", "cart"))
    assert find_attribute(span.SerializeToString(), "service.name") == "cart"


def test_find_attribute_returns_the_first_of_duplicate_keys():
    assert find_attribute(attribute_span().SerializeToString(), b"http.route") == "/cart"


def test_find_attribute_reads_key_values_in_unusual_layouts():
    value_first = encode_len_field(2, AnyValue(int_value=7).SerializeToString()) + encode_len_field(1, b"k")
    key_twice = encode_len_field(1, b"other") + encode_len_field(2, b"\x18\x01") + encode_len_field(1, b"k")
    merged_value = encode_len_field(1, b"k") + encode_len_field(2, b"\x0a\x01a") + encode_len_field(2, b"\x18\x05")
    base = Span(trace_id=GOOD_TRACE, span_id=GOOD_SPAN).SerializeToString()
    for kv_bytes, expected in [(value_first, 7), (key_twice, 1), (merged_value, 5)]:
        raw = base + encode_len_field(9, kv_bytes)
        parsed = Span.FromString(raw).attributes[0]
        assert parsed.key == "k" and parsed.value.int_value == expected
        assert find_attribute(raw, b"k") == expected


def test_find_attribute_after_unusual_span_fields_and_unknown_fields():
    span = attribute_span()
    raw = b"".join(reversed(field_encodings(span))) + UNKNOWN_ALL
    assert find_attribute(raw, b"ratio") == 0.125
    assert find_attribute(UNKNOWN_ALL + span.SerializeToString(), b"code") == -500


def test_resource_attributes_are_found_in_the_resource_part():
    request = with_unknown_fields(realistic_request())
    scanned = scan_request(request.SerializeToString())
    (first, _), (second, _) = scanned.groups
    resource = resource_attributes_bytes(first)
    assert Resource.FromString(resource) == request.resource_spans[0].resource
    assert find_attribute(resource, b"service.name", 1) == "checkout"
    assert find_attribute(resource, b"host.cpus", 1) == 8
    assert find_attribute(resource_attributes_bytes(second), b"service.name", 1) == "payments"
    assert resource_attributes_bytes(b"") == b""
    big = Resource(attributes=[kv(f"k{i}", "v" * 50) for i in range(10)])
    assert resource_attributes_bytes(encode_len_field(1, big.SerializeToString())) == big.SerializeToString()


def test_scope_name_is_read_from_the_scope_part():
    scanned = scan_request(realistic_request().SerializeToString())
    scopes = [scope_part for _r, scopes in scanned.groups for scope_part, _s in scopes]
    assert [scope_name(part) for part in scopes] == [b"io.opentelemetry.aiohttp", b"db", b""]


# -- writing -----------------------------------------------------------------------------------------------


def test_with_trace_state_sets_the_trace_state_and_leaves_every_other_field_as_it_was():
    for original in all_spans(with_unknown_fields(realistic_request())):
        raw = with_trace_state(original.SerializeToString(), "ot=th:8")
        parsed = Span.FromString(raw)
        expected = Span()
        expected.CopyFrom(original)
        expected.trace_state = "ot=th:8"
        assert parsed == expected
        assert span_facts(raw) == protobuf_facts(expected)
        # protobuf re-canonicalizes: field 3 back in its place, one occurrence
        assert parsed.SerializeToString() == expected.SerializeToString()
        assert parsed.SerializeToString().count(b"ot=th:8") == 1


def test_with_trace_state_on_empty_bytes_is_a_suffix_for_any_span():
    suffix = with_trace_state(b"", "vendor=x,ot=th:c")
    span = make_span(random.Random(1), "s").SerializeToString()
    assert span + suffix == with_trace_state(span, "vendor=x,ot=th:c")
    assert Span.FromString(span + suffix).trace_state == "vendor=x,ot=th:c"


def test_with_attributes_appends_after_the_span_s_own_attributes():
    original = attribute_span()
    added = [("sampling.tier", "P0"), ("sampling.rate", 0.5), ("count", -3), ("big", 2**63 - 1), ("kept", True),
             ("off", False), ("unicode", "żółw")]
    parsed = Span.FromString(with_attributes(original.SerializeToString(), added))
    assert list(parsed.attributes)[:len(original.attributes)] == list(original.attributes)
    assert list(parsed.attributes)[len(original.attributes):] == [kv(k, v) for k, v in added]
    assert parsed.name == original.name and parsed.status == original.status
    raw = with_attributes(b"", added)
    assert find_attribute(raw, b"sampling.tier") == "P0" and find_attribute(raw, b"count") == -3


def test_with_attributes_refuses_values_it_cannot_encode():
    with pytest.raises(TypeError, match="attribute value must be"):
        with_attributes(b"", [("k", None)])
    with pytest.raises(ValueError, match="does not fit in 64 bits"):
        with_attributes(b"", [("k", 2**63)])


def test_encode_len_field_writes_tag_length_and_payload():
    assert encode_len_field(1, b"abc") == b"\x0a\x03abc"
    assert encode_len_field(16, b"x" * 200) == b"\x82\x01\xc8\x01" + b"x" * 200
    assert Span.FromString(encode_len_field(5, "é".encode())).name == "é"
