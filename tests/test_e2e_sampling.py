"""End to end: an application using the OpenTelemetry Python SDK sends traces through the agent, and upstream
receives only the kept traces, whole, each span carrying the tracestate threshold of its tier's rate."""

from __future__ import annotations

from collections import defaultdict

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from samplers import consistent

TRACES = 400
P0_EVERY = 10
REST_RATE = 0.25

SAMPLING = {
    "decision_wait": "2s", "root_delay": "300ms", "annotate": True,
    "always_keep": {"errors": False, "http_5xx": False, "latency": "0s"},
    "tiers": [
        {"name": "P0", "rate": 1.0, "when": {"span_attributes": {"sampling.priority": "P0"}}},
        {"name": "rest", "rate": REST_RATE},
    ],
}


def send_traces(agent) -> dict[str, str]:
    """TRACES traces of a root and two children; every P0_EVERY-th marked P0 on its root. Returns tier by trace ID."""
    provider = TracerProvider(resource=Resource.create({"service.name": "sampling-e2e"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=agent.http_url + "/v1/traces"),
                                                   max_export_batch_size=256))
    tracer = provider.get_tracer("sampling-e2e")
    tiers = {}
    for i in range(TRACES):
        p0 = i % P0_EVERY == 0
        with tracer.start_as_current_span("root", attributes={"sampling.priority": "P0"} if p0 else {}) as root:
            for child in ("db", "cache"):
                with tracer.start_as_current_span(child):
                    pass
        tiers[format(root.get_span_context().trace_id, "032x")] = "P0" if p0 else "rest"
    assert provider.force_flush(30_000)
    provider.shutdown()
    return tiers


def test_upstream_receives_exactly_the_kept_traces_whole_with_matching_thresholds(start_agent, otlp_sink):
    agent = start_agent(otlp_exporter_url=otlp_sink.url, file_exporter=False, extra_config={"sampling": SAMPLING})
    tiers = send_traces(agent)
    # Decided by the running loop (root_delay after each root), not only by the shutdown drain.
    otlp_sink.wait_for_span_count(3 * TRACES // P0_EVERY, timeout=20)
    agent.stop_cleanly()  # shutdown decides whatever is still buffered and delivers it

    threshold = consistent.threshold_for(REST_RATE)
    expected_kept = {t for t, tier in tiers.items()
                     if tier == "P0" or consistent.keep(bytes.fromhex(t), threshold)}
    spans_by_trace: dict[str, list] = defaultdict(list)
    for received in otlp_sink.requests():
        for rs in received.request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans_by_trace[span.trace_id.hex()].append(span)

    assert set(spans_by_trace) == expected_kept  # the same decision any other agent would make
    rest_kept = sum(1 for t in expected_kept if tiers[t] == "rest")
    rest_total = sum(1 for tier in tiers.values() if tier == "rest")
    assert 0.15 < rest_kept / rest_total < 0.35
    for trace_id, spans in spans_by_trace.items():
        assert len(spans) == 3, f"trace {trace_id} arrived incomplete"
        tier = tiers[trace_id]
        want_th = "0" if tier == "P0" else consistent.encode_th(threshold)
        for span in spans:
            assert span.trace_state == f"ot=th:{want_th}"
            attributes = {kv.key: kv.value.string_value for kv in span.attributes}
            assert attributes["sampling.tier"] == tier
            assert attributes["sampling.reason"] == "tier"


def test_sighup_applies_new_tiers_to_traces_already_buffered(start_agent, otlp_sink):
    import signal

    import yaml

    keep_none = {**SAMPLING, "decision_wait": "8s", "root_delay": "6s",
                 "tiers": [{"name": "none", "rate": 0.0}]}
    agent = start_agent(otlp_exporter_url=otlp_sink.url, file_exporter=False, extra_config={"sampling": keep_none})
    tiers = send_traces(agent)
    config = yaml.safe_load(agent.config_path.read_text())
    config["sampling"]["tiers"] = [{"name": "all", "rate": 1.0}]
    agent.config_path.write_text(yaml.safe_dump(config))
    agent.process.send_signal(signal.SIGHUP)
    spans = otlp_sink.wait_for_span_count(3 * TRACES, timeout=30)  # decided by the loop after the reload
    assert {s.trace_id for s in spans} == set(tiers)
    assert "sampling config reloaded" in agent.log_text()
