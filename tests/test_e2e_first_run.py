"""What a new user meets first, end to end: the shipped default config running with nothing else installed, the
exit summary when shutdown drops data, and the example that claims to forward every span doing so."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.agent_process import REPO_ROOT, AgentProcess
from tests.otlp_sink import read_jsonl_spans
from tests.peers.server import free_port

EXIT_DROPPED = 3


def shipped(path: str) -> dict:
    return yaml.safe_load((REPO_ROOT / path).read_text(encoding="utf-8"))


def record_metrics(agent: AgentProcess, service: str) -> None:
    """A counter (3 series) and a gauge through the OpenTelemetry SDK over OTLP/HTTP; returns once answered."""
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=agent.http_url + "/v1/metrics", timeout=10),
                                           export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    meter = provider.get_meter("first-run")
    orders = meter.create_counter("orders", unit="{order}")
    for region, n in (("eu", 3), ("us", 4), ("ap", 5)):
        orders.add(n, {"region": region})
    meter.create_gauge("temperature", unit="Cel").set(21.5)
    assert provider.force_flush(10_000)
    provider.shutdown()


def send_traces(agent: AgentProcess, service: str, traces: int, children: int) -> set[tuple[str, str]]:
    """`traces` ordinary traces (no error, fast, no priority) of 1 + `children` spans; returns their
    (trace ID, span ID) keys in hex."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=agent.http_url + "/v1/traces")))
    tracer = provider.get_tracer("first-run")
    keys = set()

    def key(span) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        context = span.get_span_context()
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    for i in range(traces):
        with tracer.start_as_current_span(f"GET /item/{i % 7}") as root:
            keys.add(key(root))
            for j in range(children):
                with tracer.start_as_current_span(f"step-{j}") as child:
                    keys.add(key(child))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return keys


def metric_points(path: Path) -> dict[str, list[dict]]:
    """The data points of each metric's last line in the metrics file (OTLP/JSON, as written), by name: span
    metrics are written whole every flush, so that is their final snapshot."""
    points: dict[str, list[dict]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for name in {m["name"] for rm in json.loads(line)["resourceMetrics"]
                     for sm in rm["scopeMetrics"] for m in sm["metrics"]}:
            points.pop(name, None)
        for rm in json.loads(line)["resourceMetrics"]:
            for sm in rm["scopeMetrics"]:
                for metric in sm["metrics"]:
                    data = next(metric[k] for k in ("sum", "gauge", "histogram") if k in metric)
                    points.setdefault(metric["name"], []).extend(data["dataPoints"])
    return points


def test_the_default_config_runs_alone_and_writes_sdk_metrics_and_span_metrics_to_the_metrics_file(start_agent):
    agent = start_agent(base_config=shipped("agent/default.yaml"))
    record_metrics(agent, "shop")
    send_traces(agent, "shop", traces=3, children=1)
    agent.stop_cleanly()  # exit 0: nothing was left undelivered

    points = metric_points(agent.state_dir / "metrics.jsonl")
    orders = {p["attributes"][0]["value"]["stringValue"]: int(p["asInt"]) for p in points["orders"]}
    assert orders == {"eu": 3, "us": 4, "ap": 5}
    assert [p["asDouble"] for p in points["temperature"]] == [21.5]
    assert sum(int(p["asInt"]) for p in points["traces.span.metrics.calls"]) == 6
    quiet = [line for line in agent.log_text().splitlines() if "level=warning" in line or "level=error" in line]
    assert quiet == []


def dead_end_metrics(**queue) -> dict:
    """A metrics pipeline into a remote-write URL nobody listens on, and a shutdown too short to wait for it."""
    return {
        "exporters": {"remote_write": [{"name": "nowhere", "url": f"http://127.0.0.1:{free_port()}/api/v1/write",
                                        "protocol": "rw1", "queue": queue,
                                        "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "200ms"}}}]},
        "pipelines": {"metrics": {"exporters": ["nowhere"]}},
        "shutdown_timeout": "1s",
    }


def run_and_stop(tmp_path: Path, extra_config: dict) -> tuple[int | None, str]:
    agent = AgentProcess(tmp_path / "agent", extra_config=extra_config)
    try:
        agent.start()
        record_metrics(agent, "shop")
        return agent.stop(), agent.log_text()
    finally:
        agent.kill()


def test_shutdown_that_drops_a_memory_queue_exits_non_zero_saying_what_each_exporter_dropped(tmp_path):
    code, log = run_and_stop(tmp_path, dead_end_metrics(max_disk=0))
    assert code == EXIT_DROPPED
    [line] = [line for line in log.splitlines() if 'msg="shutdown dropped data"' in line]
    assert "exporter=nowhere" in line
    dropped = re.search(r'dropped="(\d+) samples"', line)
    assert dropped and int(dropped.group(1)) >= 4  # three counter series and a gauge, at least


def test_data_left_in_the_disk_queue_is_reported_as_kept_for_the_next_start_and_exits_0(tmp_path):
    code, log = run_and_stop(tmp_path, dead_end_metrics())
    assert code == 0
    assert "shutdown dropped data" not in log
    [line] = [line for line in log.splitlines() if "left data in the disk queue" in line]
    assert "exporter=nowhere" in line and re.search(r'kept="\d+ samples"', line)
    assert str(tmp_path / "agent" / "state" / "queue" / "nowhere") in line


def test_gateway_otlp_example_forwards_every_span_and_keeps_its_copy_under_state_dir(otlp_sink, start_agent):
    agent = start_agent(base_config=shipped("configs/gateway-otlp.yaml"),
                        env={**os.environ, "UPSTREAM_OTLP": otlp_sink.url})
    sent = send_traces(agent, "gateway", traces=100, children=2)  # at the default tiers' 5 %: about 15 spans
    forwarded = otlp_sink.wait_for_span_ids(sent, timeout=30)
    assert sorted(s.key for s in forwarded) == sorted(sent)  # each once
    agent.stop_cleanly()
    assert sorted(s.key for s in read_jsonl_spans(agent.state_dir / "traces.jsonl")) == sorted(sent)
