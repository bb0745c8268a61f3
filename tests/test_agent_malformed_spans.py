"""Spans the sampler's wire scanner accepts but protobuf refuses (a name that is not UTF-8), through the whole
agent: answered 200, dropped before export with the rest of their request exported, and the request that
carries a late span of such a trace answered 200 too (found by tests/test_fuzz_receivers.py: it was a 500,
the file exporter's parse failing inside that request)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from agent.telemetry import collect_metrics
from tests.agent_in_thread import AgentInThread

PB = {"Content-Type": "application/x-protobuf"}
TRACE = bytes(range(1, 17))
NOW = time.time_ns()


def request(*names: str, bad: bool = False, first_id: int = 1) -> bytes:
    """Spans of one P0 trace; with `bad`, every "~~~~" in them becomes 4 bytes that are not UTF-8."""
    spans = [Span(trace_id=TRACE, span_id=bytes([first_id + i]) * 8, name=name, start_time_unix_nano=NOW,
                  end_time_unix_nano=NOW + 1000,
                  attributes=[KeyValue(key="sampling.priority", value=AnyValue(string_value="P0"))])
             for i, name in enumerate(names)]
    data = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
                                     ).SerializeToString()
    return data.replace(b"~~~~", b"\xff\xfe\xfd\xfc") if bad else data


def exported_names(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [span["name"] for line in path.read_text().splitlines()
            for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]


def malformed_spans() -> int:
    """headwater_sampling_malformed_spans so far, in this process."""
    data = collect_metrics()
    assert data is not None
    return sum(int(point.value) for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
               if metric.name == "headwater_sampling_malformed_spans" for point in metric.data.data_points)


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_span_named_in_invalid_utf8_is_dropped_before_export_and_its_late_sibling_request_gets_200(
        tmp_path: Path) -> None:
    with AgentInThread(tmp_path) as agent:
        before = agent.call(malformed_spans)
        traces = agent.workdir / "state" / "traces.jsonl"
        status, _ = agent.post_http("/v1/traces", request("good", "~~~~", bad=True), PB)
        assert status == 200
        wait_for(lambda: "good" in exported_names(traces))  # decided (P0 keeps it) and written
        status, body = agent.post_http("/v1/traces", request("late", "~~~~", bad=True, first_id=10), PB)
        assert status == 200, body  # exported inline: the trace was kept
        wait_for(lambda: "late" in exported_names(traces))
        assert agent.errors() == []
        assert agent.call(malformed_spans) - before == 2
    assert sorted(exported_names(traces)) == ["good", "late"]
