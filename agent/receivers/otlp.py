"""What both OTLP front ends share: parsing a request of each signal and refusing the items OTLP says are
invalid, so the HTTP and gRPC receivers differ only in transport.

Invalid items (a span whose trace ID is not 16 bytes, a metric without a name) are left out and reported back
as a partial success; a payload that does not parse at all is refused whole. Spans are checked by the sampler
as it reads them from the wire bytes; metrics here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError, Message
from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agent.pipeline import WireMetrics
from exporters.otlp_json import OtlpJsonError, decode_json
from samplers.wire import WireError



class ReceiverCounters(NamedTuple):
    accepted: metrics.Counter
    refused_items: metrics.Counter
    refused: metrics.Counter


def receiver_counters(meter: metrics.Meter) -> ReceiverCounters:
    """The counters every receiver keeps, with their one description (the gateway uses two of them)."""
    return ReceiverCounters(
        meter.create_counter(
            "headwater_receiver_accepted_items",
            description="Spans or data points (samples, for the gateway) accepted, by signal and transport"),
        meter.create_counter(
            "headwater_receiver_refused_items",
            description="Spans or data points refused inside requests otherwise accepted (partial success), by "
            "signal and transport"),
        meter.create_counter(
            "headwater_receiver_refused_requests",
            description="Requests refused whole, by signal, transport and the status answered (an HTTP code or a "
            "gRPC status name)"))


class Malformed(Exception):
    """The payload cannot be read at all: 400 Bad Request / INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Rejected:
    count: int
    message: str


@dataclass(frozen=True)
class Signal:
    name: str
    request_type: type[Message]
    response_type: type[Message]
    grpc_service: str
    validate: Callable[[Any], Rejected] | None
    partial_success: Callable[[Rejected], Message]

    def parse(self, data: bytes, json: bool) -> Any:
        if json:
            if not data:
                raise Malformed("empty body: expected a JSON object")
            try:
                return decode_json(data, self.request_type)
            except OtlpJsonError as exc:
                raise Malformed(f"invalid OTLP JSON: {exc}") from None
        try:
            return self.request_type.FromString(data)
        except DecodeError as exc:
            raise Malformed(f"invalid OTLP protobuf {self.request_type.DESCRIPTOR.name}: {exc}") from None

    async def deliver(
        self, data: bytes, json: bool, consume: Callable[[Any], Any], wire: WireMetrics | None = None
    ) -> tuple[int, Rejected]:
        """Parse `data`, hand it to `consume`, and say how many items went in and which were refused.

        Traces go on as wire bytes (the sampler reads them without parsing, and refuses spans with invalid IDs
        itself); metrics go on as a parsed request, validated here. With `wire` (the metrics pipeline, which
        then replaces `consume`), a protobuf metrics request is first offered as its bytes: a request of a
        shape the exporters learnt is taken without parsing (it was validated whole when its shape was learnt,
        and only a request equal to it outside times and values has that shape)."""
        if self is TRACES:
            if json:
                data = self.parse(data, json=True).SerializeToString()
            try:
                result = await consume(data)
            except WireError as exc:
                raise Malformed(f"invalid OTLP protobuf {self.request_type.DESCRIPTOR.name}: {exc}") from None
            return result.spans, Rejected(result.rejected, result.message)
        if wire is not None and not json:
            points = await wire.consume_wire(data)
            if points is not None:
                return points, Rejected(0, "")
        parsed = self.parse(data, json)
        assert self.validate is not None
        rejected = self.validate(parsed)
        accepted = item_count(self, parsed)
        if accepted:
            if wire is None:
                await consume(parsed)
            else:  # the bytes teach the exporters a shape only when they hold exactly what is delivered
                await wire.consume_parsed(parsed, None if json or rejected.count else data)
        return accepted, rejected

    def response(self, rejected: Rejected) -> Message:
        if rejected.count == 0:
            return self.response_type()
        return self.response_type(partial_success=self.partial_success(rejected))


def _data_points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def validate_metrics(request: ExportMetricsServiceRequest) -> Rejected:
    """Drop metrics without a name or without data in place: they cannot become series."""
    count, first = 0, ""
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            items = scope_metrics.metrics
            for i in range(len(items) - 1, -1, -1):
                metric = items[i]
                problem = None
                if not metric.name:
                    problem = "metric without a name"
                elif metric.WhichOneof("data") is None:
                    problem = f"metric {metric.name!r} has no data"
                if problem is not None:
                    count += max(1, _data_points(metric))
                    first = problem
                    del items[i]
    if count == 0:
        return Rejected(0, "")
    return Rejected(count, f"rejected {count} data point(s): {first}")


TRACES = Signal(
    name="traces",
    request_type=ExportTraceServiceRequest,
    response_type=ExportTraceServiceResponse,
    grpc_service="opentelemetry.proto.collector.trace.v1.TraceService",
    validate=None,  # the sampler reads spans from the wire bytes and refuses invalid ones itself
    partial_success=lambda r: ExportTracePartialSuccess(rejected_spans=r.count, error_message=r.message),
)

METRICS = Signal(
    name="metrics",
    request_type=ExportMetricsServiceRequest,
    response_type=ExportMetricsServiceResponse,
    grpc_service="opentelemetry.proto.collector.metrics.v1.MetricsService",
    validate=validate_metrics,
    partial_success=lambda r: ExportMetricsPartialSuccess(rejected_data_points=r.count, error_message=r.message),
)


def item_count(signal: Signal, request: Any) -> int:
    """Data points in a metrics request, for self-telemetry."""
    return sum(_data_points(m) for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
