"""The HTTP 5xx forced keep reads the status from the span bytes, whatever way the SDK encoded it."""

from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from samplers.tail import _is_5xx


def server_span(key: str, value: AnyValue) -> bytes:
    return Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="GET", kind=2,
                attributes=[KeyValue(key="http.route", value=AnyValue(string_value="/x")),
                            KeyValue(key=key, value=value)]).SerializeToString()


@pytest.mark.parametrize("key", ["http.response.status_code", "http.status_code"])
@pytest.mark.parametrize(("value", "expected"), [
    (AnyValue(int_value=500), True), (AnyValue(int_value=599), True), (AnyValue(int_value=503), True),
    (AnyValue(int_value=499), False), (AnyValue(int_value=200), False), (AnyValue(int_value=100), False),
    (AnyValue(string_value="503"), True), (AnyValue(string_value="404"), False),
    (AnyValue(double_value=502.0), True), (AnyValue(string_value="oops"), False),
])
def test_a_server_status_of_500_or_more_is_recognised_in_any_encoding(key, value, expected):
    assert _is_5xx(server_span(key, value)) is expected


def test_a_key_named_only_inside_another_value_does_not_count():
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=2, attributes=[
        KeyValue(key="note", value=AnyValue(string_value="http.status_code"))]).SerializeToString()
    assert _is_5xx(span) is False


def test_a_non_numeric_new_name_does_not_hide_the_old_one():
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=2, attributes=[
        KeyValue(key="http.response.status_code", value=AnyValue(string_value="n/a")),
        KeyValue(key="http.status_code", value=AnyValue(int_value=502))]).SerializeToString()
    assert _is_5xx(span) is True
