"""Kept spans are checked by protobuf before export (agent.wellformed): a span protobuf refuses is dropped and
the rest of its request goes on. Found by tests/test_fuzz_receivers.py: a span whose name was not UTF-8 was
accepted by the sampler's wire scanner, then the file exporter could not parse the request it was handed, and
the request that carried a late span of that trace was answered 500."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.wellformed import wellformed
from samplers.wire import frame_request
from tests.hostile_payloads import deep_any_value, span_request

NAME = b"~~~~"


def span(name: bytes) -> bytes:
    """One span's own bytes, named `name`: any 4 bytes (they take the place of a valid name's)."""
    assert len(name) == len(NAME)
    request = ExportTraceServiceRequest.FromString(span_request("~~~~"))
    return request.resource_spans[0].scope_spans[0].spans[0].SerializeToString().replace(NAME, name)


def with_attribute(value: bytes) -> bytes:
    key_value = b"\x0a\x01k" + b"\x12" + _len(value) + value
    return span(b"deep") + b"\x4a" + _len(key_value) + key_value  # Span.attributes


def _len(payload: bytes) -> bytes:
    out, n = bytearray(), len(payload)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def names(data: bytes) -> list[str]:
    request = ExportTraceServiceRequest.FromString(data)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_a_request_protobuf_reads_is_passed_on_as_it_is() -> None:
    data = frame_request([(b"", [(b"", [span(b"aaaa"), span(b"bbbb")])])])
    assert wellformed(data, 2) == (data, 2, 0, "")


def test_a_span_whose_name_is_not_utf8_is_dropped_and_the_others_of_its_request_go_on() -> None:
    data = frame_request([(b"", [(b"", [span(b"good"), span(b"\xff\xfe\xfd\xfc")])])])
    kept, spans, dropped, problem = wellformed(data, 2)
    assert (names(kept), spans, dropped) == (["good"], 1, 1)
    assert "UTF-8" in problem


def test_a_span_whose_attribute_nests_past_protobufs_limit_is_dropped() -> None:
    data = frame_request([(b"", [(b"", [with_attribute(deep_any_value(150, kvlist=False)), span(b"good")])])])
    kept, spans, dropped, _problem = wellformed(data, 2)
    assert (names(kept), spans, dropped) == (["good"], 1, 1)


def test_a_span_nested_just_within_the_limit_alone_but_not_inside_a_request_is_dropped() -> None:
    """Each span is checked at the depth it has in a request, not alone (where it would have 3 more levels)."""
    depth = next(d for d in range(40, 120) if not _parses_in_request(with_attribute(deep_any_value(d, False))))
    data = frame_request([(b"", [(b"", [with_attribute(deep_any_value(depth, kvlist=False)), span(b"good")])])])
    kept, spans, dropped, _problem = wellformed(data, 2)
    assert (names(kept), spans, dropped) == (["good"], 1, 1)


def _parses_in_request(one_span: bytes) -> bool:
    try:
        ExportTraceServiceRequest.FromString(frame_request([(b"", [(b"", [one_span])])]))
    except Exception:
        return False
    return True


def test_a_resource_protobuf_refuses_takes_only_its_own_spans_with_it() -> None:
    # ResourceSpans.resource = Resource{attributes: [{key: "k", value: {string_value: "\xff"}}]}
    key_value = b"\x0a\x01k\x12\x03\x0a\x01\xff"
    resource = b"\x0a" + _len(key_value) + key_value
    bad_resource = b"\x0a" + _len(resource) + resource
    data = frame_request([(bad_resource, [(b"", [span(b"lost")])]), (b"", [(b"", [span(b"kept")])])])
    kept, spans, dropped, problem = wellformed(data, 2)
    assert (names(kept), spans, dropped) == (["kept"], 1, 1)
    assert problem.startswith("resource:")
