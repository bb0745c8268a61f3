"""End to end: real OpenTelemetry SDKs send spans through the agent to a real OTLP sink and to the file exporter.

Each test runs one client path; the spans must arrive at both outputs exactly as sent: the same trace and span
IDs, parent IDs, names, service name, and attributes with the same values and the same OTLP types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import set_span_in_context

from tests.agent_process import AgentProcess
from tests.otlp_sink import OtlpSink, SpanRecord, typed_attributes, wait_for_file_spans

SPAN_COUNT = 6
SPANS_PER_TRACE = 2
ARRIVAL_TIMEOUT = 30.0


class RecordingExporter(SpanExporter):
    """Delegates to a real exporter and keeps every result, so a test knows the client's export succeeded."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def attributes_for(i: int) -> dict[str, Any]:
    """One attribute of each OTLP type; the double is never integral."""
    return {
        "test.string": f"value-{i}",
        "test.int": 1000 + i,
        "test.double": i + 0.25,
        "test.bool": i % 2 == 0,
        "test.array": ("alpha", f"item-{i}"),
    }


def send_with_python_sdk(exporter: SpanExporter, service_name: str) -> list[SpanRecord]:
    """Emit SPAN_COUNT spans (traces of SPANS_PER_TRACE: a root and its children) through a fresh provider;
    return them as the client recorded them."""
    recording = RecordingExporter(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(recording, schedule_delay_millis=100))
    tracer = provider.get_tracer("headwater-e2e", "1.0.0")
    sent = []
    root = None
    try:
        for i in range(SPAN_COUNT):
            context = None if i % SPANS_PER_TRACE == 0 else set_span_in_context(root)
            span = tracer.start_span(f"python-span-{i}", context=context, attributes=attributes_for(i))
            sent.append(
                SpanRecord(
                    trace_id=format(span.get_span_context().trace_id, "032x"),
                    span_id=format(span.get_span_context().span_id, "016x"),
                    parent_span_id="" if context is None else format(root.get_span_context().span_id, "016x"),
                    name=f"python-span-{i}",
                    service_name=service_name,
                    attributes=typed_attributes(attributes_for(i)),
                )
            )
            if context is None:
                if root is not None:
                    root.end()
                root = span
            else:
                span.end()
        root.end()
        assert provider.force_flush(30_000), "the Python SDK did not flush within 30 s"
    finally:
        provider.shutdown()
    assert recording.results and all(r is SpanExportResult.SUCCESS for r in recording.results), (
        f"the Python SDK's export to the agent failed: {recording.results}"
    )
    return sent


def node_spans_as_records(sent: list[dict[str, Any]]) -> list[SpanRecord]:
    return [
        SpanRecord(
            trace_id=s["traceId"],
            span_id=s["spanId"],
            parent_span_id=s["parentSpanId"],
            name=s["name"],
            service_name="node-client",
            attributes=typed_attributes(s["attributes"]),
        )
        for s in sent
    ]


def assert_arrived_unchanged(sent: list[SpanRecord], sink: OtlpSink, agent: AgentProcess) -> None:
    keys = [s.key for s in sent]
    at_sink = sink.wait_for_span_ids(keys, timeout=ARRIVAL_TIMEOUT)
    in_file = wait_for_file_spans(agent.file_path, keys, timeout=ARRIVAL_TIMEOUT)
    assert sorted(at_sink) == sorted(sent), "the spans at the OTLP sink differ from the spans sent"
    assert sorted(in_file) == sorted(sent), "the spans in the file exporter's file differ from the spans sent"


def test_spans_from_the_python_sdk_over_http_protobuf_arrive_unchanged_at_the_sink_and_in_the_file(
    otlp_sink, start_agent
):
    agent = start_agent(otlp_exporter_url=otlp_sink.url)

    sent = send_with_python_sdk(HttpSpanExporter(endpoint=f"{agent.http_url}/v1/traces", timeout=10), "python-http")

    assert_arrived_unchanged(sent, otlp_sink, agent)


def test_spans_from_the_python_sdk_over_grpc_arrive_unchanged_at_the_sink_and_in_the_file(otlp_sink, start_agent):
    agent = start_agent(otlp_exporter_url=otlp_sink.url)

    sent = send_with_python_sdk(GrpcSpanExporter(endpoint=agent.grpc_endpoint, insecure=True, timeout=10), "python-grpc")

    assert_arrived_unchanged(sent, otlp_sink, agent)


def test_spans_from_the_python_sdk_over_grpc_with_gzip_arrive_unchanged_at_the_sink_and_in_the_file(
    otlp_sink, start_agent
):
    agent = start_agent(otlp_exporter_url=otlp_sink.url)

    exporter = GrpcSpanExporter(endpoint=agent.grpc_endpoint, insecure=True, compression=Compression.Gzip, timeout=10)
    sent = send_with_python_sdk(exporter, "python-grpc-gzip")

    assert_arrived_unchanged(sent, otlp_sink, agent)


def test_spans_from_the_node_sdk_over_chunked_http_json_arrive_unchanged_at_the_sink_and_in_the_file(
    otlp_sink, start_agent, node_client
):
    agent = start_agent(otlp_exporter_url=otlp_sink.url)

    sent = node_spans_as_records(node_client.send_spans(agent.http_url, SPAN_COUNT, name_prefix="node-span"))

    assert_arrived_unchanged(sent, otlp_sink, agent)
