"""The agent as a process: self-telemetry endpoints, logs, and SIGTERM delivering what it holds before exit 0."""

from __future__ import annotations

import json
import urllib.request

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def send_spans(agent, count: int) -> list[str]:
    provider = TracerProvider(resource=Resource.create({"service.name": "lifecycle"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=agent.http_url + "/v1/traces")))
    tracer = provider.get_tracer("lifecycle")
    ids = []
    for i in range(count):
        with tracer.start_as_current_span(f"span-{i}") as span:
            ids.append(format(span.get_span_context().span_id, "016x"))
    provider.shutdown()
    return ids


def test_healthz_and_readyz_answer_200_while_running(start_agent):
    agent = start_agent()
    assert get(agent.telemetry_url + "/healthz")[0] == 200
    assert get(agent.telemetry_url + "/readyz")[0] == 200


def test_metrics_serves_component_counters_as_prometheus_text(start_agent):
    agent = start_agent()
    send_spans(agent, 3)
    status, text = get(agent.telemetry_url + "/metrics")
    assert status == 200
    accepted = [line for line in text.splitlines()
                if line.startswith("headwater_receiver_accepted_items_total") and 'signal="traces"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in accepted) == 3  # http 3, grpc 0 (exported from start)
    assert "headwater_admission_inflight_bytes" in text


def test_sigterm_writes_spans_still_buffered_in_the_file_exporter_and_exits_0(start_agent):
    # SIGTERM right after sending, usually inside the file exporter's 1 s flush interval: the drain writes them.
    agent = start_agent(extra_config={"shutdown_timeout": "5s"})
    sent = send_spans(agent, 5)
    agent.stop_cleanly()
    written = [s["spanId"] for line in agent.file_path.read_text().splitlines()
               for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert sorted(written) == sorted(sent)


def test_logs_are_one_key_value_line_per_event(start_agent):
    agent = start_agent()
    agent.stop_cleanly()
    lines = [l for l in agent.log_text().splitlines() if l.strip()]
    assert any("msg=listening" in l and "receiver=otlp_http" in l for l in lines)
    assert any("msg=stopped" in l for l in lines)
    assert all(l.startswith("ts=") and " level=" in l for l in lines)
