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


def send_spans(agent, count: int, service: str = "lifecycle") -> list[str]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
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


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def agent_using_every_component(start_agent, otlp_sink, prometheus):
    """An agent with every receiver, both trace exporters, remote write with span metrics, and traffic that
    makes the counters that only appear once used appear: spans, a metric, a request refused whole, a span
    refused inside an accepted request, and a remote-write request through the gateway."""
    import cramjam
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.agent_process import free_ports
    from tests.test_e2e_metrics import record
    from tests.test_e2e_status import wait_for_metrics

    [gateway_port] = free_ports(1)
    agent = start_agent(otlp_exporter_url=otlp_sink.url, extra_config={
        "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{gateway_port}"}},
        "exporters": {"remote_write": [{"name": "prom", "url": prometheus.remote_write_url,
                                        "batch": {"flush_interval": "200ms"}}]},
        "pipelines": {"metrics": {"exporters": ["prom"], "span_metrics": True}},
        "span_metrics": {"flush_interval": "200ms"},
        "sampling": {"tiers": [{"name": "none", "rate": 0.0, "when": {"resource_attributes": {"service.name": "shed"}}},
                               {"name": "all", "rate": 1.0}]}})
    send_spans(agent, 3)
    send_spans(agent, 2, service="shed")  # decided at rate 0: the drop counters appear
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    record(OTLPMetricExporter(endpoint=agent.http_url + "/v1/metrics", timeout=10), "help-text")
    protobuf = {"Content-Type": "application/x-protobuf"}
    assert post(agent.http_url + "/v1/traces", b"\xff\xff\xff", protobuf) == 400
    bad_span = ExportTraceServiceRequest()
    bad_span.resource_spans.add().scope_spans.add().spans.add(trace_id=b"short", span_id=b"12345678", name="bad")
    assert post(agent.http_url + "/v1/traces", bad_span.SerializeToString(), protobuf) == 200
    assert post(f"http://127.0.0.1:{gateway_port}/api/v1/write", bytes(cramjam.snappy.compress_raw(b"")),
                {**protobuf, "Content-Encoding": "snappy"}) == 204
    wait_for_metrics(agent, lambda r: r.total("headwater_exporter_sent_spans_total", exporter="otlp") == 3
                     and r.total("headwater_exporter_sent_spans_total", exporter="file") == 3
                     and r.total("headwater_remote_write_samples_sent_total", exporter="prom") > 0
                     and r.total("headwater_sampling_dropped_spans_total", tier="none") == 2)
    return agent


def families(text: str) -> dict[str, tuple[str, str]]:
    """{name: (type, help)} of every headwater_* family in Prometheus text."""
    types = dict(line.split(" ", 3)[2:4] for line in text.splitlines() if line.startswith("# TYPE headwater_"))
    helps = {}
    for line in text.splitlines():
        if line.startswith("# HELP headwater_"):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            helps[name] = help_text.strip()
    return {name: (kind, helps.get(name, "")) for name, kind in types.items()}


def test_every_headwater_series_on_metrics_has_a_help_text(start_agent, otlp_sink, prometheus):
    agent = agent_using_every_component(start_agent, otlp_sink, prometheus)

    served = families(get(agent.telemetry_url + "/metrics")[1])

    components = ("admission", "build_info", "exporter", "gateway", "queue", "receiver", "remote_write", "sampling",
                  "sender", "span_metrics", "start_time")
    assert [c for c in components if not any(name.startswith(f"headwater_{c}") for name in served)] == []
    assert [name for name, (_kind, help_text) in served.items() if not help_text] == []


def test_every_headwater_series_on_metrics_is_listed_in_the_readme_with_its_type(start_agent, otlp_sink, prometheus):
    import re

    from tests.agent_process import REPO_ROOT

    agent = agent_using_every_component(start_agent, otlp_sink, prometheus)
    served = families(get(agent.telemetry_url + "/metrics")[1])

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Self-telemetry\n", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^\| `(headwater_[a-z_]+)` \| (\w+) \|", section, re.MULTILINE))
    assert {name: kind for name, (kind, _help) in served.items() if listed.get(name) != kind} == {}
