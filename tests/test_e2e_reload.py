"""End to end, a reload (SIGHUP) applies a new config in full while the agent runs, and refuses a bad one
(issue 9, item 2).

Every test runs the agent as a subprocess and changes its config file, then sends SIGHUP and waits for the log
line that ends the reload ("config reloaded" or "config reload refused"). Metrics go to a real Prometheus 2.42
(directly, or through `tests.rw_fault_proxy.FaultProxy` to see which exporter sent what); spans to the file
exporter or a real OTLP/HTTP receiver (`tests.otlp_sink.OtlpSink`). Waits poll for what must happen, with a
deadline; nothing sleeps to prove that something did not.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.agent_process import AgentProcess, free_ports, merge_config
from tests.otlp_sink import read_jsonl_spans
from tests.rw_fault_proxy import FaultProxy
from tests.test_e2e_delivery_faults import EXPORTER, GaugeClient, agent_config, stored, telemetry, wait_until

DEADLINE = 30.0


def reload(agent: AgentProcess, change: Mapping[str, Any]) -> str:
    """Merge `change` into the agent's config file (as `AgentProcess.extra_config` merges), send SIGHUP, and
    wait until the reload is done; the log lines it wrote."""
    agent.extra_config = merge_config(agent.extra_config, change)
    agent.config_path.write_text(yaml.safe_dump(agent.config(), sort_keys=False), encoding="utf-8")
    return signal_reload(agent)


def signal_reload(agent: AgentProcess) -> str:
    assert agent.process is not None
    before = len(agent.log_text())
    agent.process.send_signal(signal.SIGHUP)
    ends = ("msg=\"config reloaded", "msg=\"config reload refused")
    wait_until(lambda: any(end in agent.log_text()[before:] for end in ends), "the reload to end", DEADLINE)
    return agent.log_text()[before:]


def send_spans(url: str, count: int, service: str = "reload", **attributes: str) -> set[str]:
    """`count` spans through the OpenTelemetry SDK to an OTLP/HTTP base URL; their span IDs."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url + "/v1/traces", timeout=10)))
    tracer = provider.get_tracer("reload")
    ids = set()
    for i in range(count):
        with tracer.start_as_current_span(f"span-{i}", attributes=attributes) as span:
            ids.add(format(span.get_span_context().span_id, "016x"))
    provider.shutdown()
    return ids


def file_span_ids(agent: AgentProcess) -> set[str]:
    return {s.span_id for s in read_jsonl_spans(agent.file_path)} if agent.file_path.exists() else set()


def post_status(url: str, body: bytes = b"", content_type: str = "application/x-protobuf") -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def counted(agent: AgentProcess, name: str, **labels: str) -> float:
    """`telemetry`, or 0 while the agent exports no such sample yet."""
    try:
        return telemetry(agent, name, **labels)
    except AssertionError:
        return 0.0


def unreachable_url() -> str:
    [port] = free_ports(1)  # nothing listens there
    return f"http://127.0.0.1:{port}/api/v1/write"


def remote_write(name: str, url: str, **settings: object) -> dict:
    """A remote-write exporter as `agent_config` writes one (rw1, short flushes and backoffs)."""
    return agent_config(url, **settings)["exporters"]["remote_write"][0] | {"name": name}


# ---------------------------------------------------------------------------------------------------------
# Exporters
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("queue", ["disk", "memory"])
def test_a_changed_remote_write_url_delivers_what_was_queued_for_the_old_one(queue, prometheus, start_agent):
    settings = {"queue": {"max_disk": 0}} if queue == "memory" else {}
    agent = start_agent(extra_config=agent_config(unreachable_url(), **settings))
    client = GaugeClient(f"reload_url_{queue}", series=10)
    client.send(agent, range(0, 5))
    wait_until(lambda: counted(agent, "headwater_remote_write_requests_total", exporter=EXPORTER, status="error") > 0,
               "a failed attempt at the unreachable URL")

    log = reload(agent, {"exporters": {"remote_write": [remote_write(EXPORTER, prometheus.remote_write_url, **settings)]}})
    assert "exporters_replaced=prom" in log
    client.send(agent, range(5, 10))

    assert stored(prometheus, client, client.samples(range(10))) == client.expected()  # each sample once
    assert telemetry(agent, "headwater_remote_write_samples_failed_total", exporter=EXPORTER) == 0
    assert telemetry(agent, "headwater_remote_write_samples_dropped_total", exporter=EXPORTER) == 0


def test_changed_batch_settings_apply_and_nothing_queued_is_lost(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        agent = start_agent(extra_config=agent_config(proxy.url))
        client = GaugeClient("reload_batch", series=30)
        proxy.down()
        client.send(agent, range(0, 4))
        wait_until(lambda: counted(agent, "headwater_remote_write_requests_total", exporter=EXPORTER,
                                     status="error") > 0, "a failed attempt while the proxy is down")
        reload(agent, {"exporters": {"remote_write": [remote_write(EXPORTER, proxy.url, batch={"max_samples": 10})]}})
        proxy.up()
        client.send(agent, range(4, 8))
        assert stored(prometheus, client, client.samples(range(8))) == client.expected()
        after = [e for e in proxy.exchanges() if e.stored and e.samples and min(t for _, t in e.samples) >=
                 client.timestamp(4)]
        assert after and all(len(e.samples) <= 10 for e in after)  # what came after the reload: the new batch size


def test_a_reload_adds_a_remote_write_exporter_and_removes_one(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        agent = start_agent(extra_config=agent_config(prometheus.remote_write_url))
        client = GaugeClient("reload_add_remove", series=5)
        client.send(agent, range(0, 5))
        stored(prometheus, client, client.samples(range(5)))

        log = reload(agent, {"exporters": {"remote_write": [remote_write("via-proxy", proxy.url)]},
                             "pipelines": {"metrics": {"exporters": ["via-proxy"]}}})
        assert "exporters_added=via-proxy" in log and "exporters_removed=prom" in log
        client.send(agent, range(5, 10))

        assert stored(prometheus, client, client.samples(range(10))) == client.expected()
        through_proxy = {t for e in proxy.exchanges() if e.stored for _, t in e.samples}
        assert through_proxy == {client.timestamp(step) for step in range(5, 10)}  # the added one, only after
        wait_until(lambda: "msg=\"removed exporter stopped\" exporter=prom" in agent.log_text(), "the removed one to stop")
        assert counted(agent, "headwater_sender_concurrency", exporter="via-proxy") >= 1  # the gauges follow
        assert counted(agent, "headwater_sender_concurrency", exporter=EXPORTER) == 0


def test_a_reload_adds_an_otlp_trace_exporter_and_removes_the_file_exporter(otlp_sink, start_agent):
    agent = start_agent()
    before = send_spans(agent.http_url, 3)
    wait_until(lambda: file_span_ids(agent) == before, "the spans in the file")

    log = reload(agent, {"exporters": {"otlp": {"endpoint": otlp_sink.url, "compression": "none"}, "file": None},
                         "pipelines": {"traces": {"exporters": ["otlp"]}}})
    assert "exporters_added=otlp" in log and "exporters_removed=file" in log
    after = send_spans(agent.http_url, 3)

    assert {s.span_id for s in otlp_sink.wait_for_span_count(3, timeout=DEADLINE)} == after
    assert file_span_ids(agent) == before


def test_a_changed_otlp_endpoint_delivers_the_spans_queued_for_the_old_one(otlp_sink, start_agent):
    # A port bound and never listened on refuses every connection, and no other test can take it meanwhile
    # (a free port picked and released could be listened on by another test's server before the agent tries).
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{held.getsockname()[1]}"
    try:
        _queued_spans_reach_the_new_endpoint(otlp_sink, start_agent, dead)
    finally:
        held.close()


def _queued_spans_reach_the_new_endpoint(otlp_sink, start_agent, dead: str) -> None:
    agent = start_agent(otlp_exporter_url=dead, file_exporter=False)
    before = send_spans(agent.http_url, 4)
    wait_until(lambda: counted(agent, "headwater_sender_retries_total", exporter="otlp", reason="network") > 0,
               "a failed attempt at the unreachable endpoint")

    reload(agent, {"exporters": {"otlp": {"endpoint": otlp_sink.url}}})
    after = send_spans(agent.http_url, 2)

    spans = otlp_sink.wait_for_span_count(6, timeout=DEADLINE)
    assert {s.span_id for s in spans} == before | after
    assert counted(agent, "headwater_exporter_failed_spans_total", exporter="otlp") == 0


# ---------------------------------------------------------------------------------------------------------
# A file with problems
# ---------------------------------------------------------------------------------------------------------


def test_an_invalid_file_is_refused_with_every_problem_logged_and_the_old_config_keeps_running(start_agent):
    agent = start_agent()
    broken = agent.config()
    broken["receivers"]["otlp"]["http"]["endpont"] = "127.0.0.1:1"
    broken["sampling"]["tiers"][0]["rate"] = 2
    broken["exporters"]["otlp"] = {"endpoint": "ftp://upstream"}
    agent.config_path.write_text(yaml.safe_dump(broken), encoding="utf-8")

    log = signal_reload(agent)

    assert "msg=\"config reload refused; keeping the running config\"" in log and "problems=3" in log
    for key in ("receivers.otlp.http.endpont", "sampling.tiers[0].rate", "exporters.otlp.endpoint"):
        assert f"key={key} " in log, f"{key} is not named in:\n{log}"
    sent = send_spans(agent.http_url, 2)
    wait_until(lambda: file_span_ids(agent) == sent, "spans through the running config")


def test_validate_prints_the_problems_a_reload_logs(start_agent, capsys):
    from agent.cli import main

    agent = start_agent()
    broken = agent.config()
    broken["exporters"]["remote_write"] = [{"name": "prom", "url": "http://127.0.0.1:9/api/v1/write",
                                            "headers": {"Content-Type": "text/plain"}}]
    broken["pipelines"]["metrics"] = {"exporters": ["prom"]}
    agent.config_path.write_text(yaml.safe_dump(broken), encoding="utf-8")

    log = signal_reload(agent)
    assert main(["validate", "-c", str(agent.config_path)]) == 1

    printed = capsys.readouterr().err
    assert "exporters.remote_write[0].headers.Content-Type" in printed
    assert "key=exporters.remote_write[0].headers.Content-Type " in log


# ---------------------------------------------------------------------------------------------------------
# Receivers and logs
# ---------------------------------------------------------------------------------------------------------


def test_a_changed_receiver_endpoint_rebinds_and_the_old_port_closes(start_agent):
    agent = start_agent()
    old_http, old_grpc = agent.http_port, agent.grpc_port
    new_http, new_grpc = free_ports(2)

    log = reload(agent, {"receivers": {"otlp": {"http": {"endpoint": f"127.0.0.1:{new_http}"},
                                                "grpc": {"endpoint": f"127.0.0.1:{new_grpc}"}}}})
    assert "rebound=receivers.otlp.http,receivers.otlp.grpc" in log
    agent.http_port, agent.grpc_port = new_http, new_grpc

    sent = send_spans(agent.http_url, 2)
    with grpc.insecure_channel(agent.grpc_endpoint) as channel:
        TraceServiceStub(channel).Export(ExportTraceServiceRequest(), timeout=10)
    wait_until(lambda: file_span_ids(agent) == sent, "spans through the new HTTP port")
    assert refuses_connections(old_http) and refuses_connections(old_grpc)


def test_a_receiver_endpoint_that_cannot_be_bound_leaves_the_old_one_listening(start_agent):
    agent = start_agent()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = reload(agent, {"receivers": {"otlp": {"http": {"endpoint": f"127.0.0.1:{port}"}}}})
    assert "msg=\"cannot listen on the new endpoint; keeping the old one\" listener=receivers.otlp.http" in log

    sent = send_spans(agent.http_url, 2)
    wait_until(lambda: file_span_ids(agent) == sent, "spans through the old HTTP port")


def test_a_changed_log_level_applies(start_agent):
    agent = start_agent()
    traces = f"{agent.http_url}/v1/traces"
    assert post_status(traces, content_type="text/plain") == 415
    assert "msg=refused" not in agent.log_text()  # a debug line: written before the answer, if at all

    reload(agent, {"telemetry": {"log_level": "debug"}})
    assert post_status(traces, content_type="text/plain") == 415
    assert "msg=refused" in agent.log_text()


def test_a_pipeline_added_by_a_reload_takes_the_signal_it_refused(prometheus, start_agent):
    agent = start_agent()
    client = GaugeClient("reload_new_pipeline", series=3)
    assert client.post(agent, 0) == 404

    reload(agent, agent_config(prometheus.remote_write_url))
    client.send(agent, range(1, 3))
    assert stored(prometheus, client, client.samples(range(1, 3))) == client.expected()


def test_changed_span_metrics_dimensions_apply_to_spans_after_the_reload(prometheus, start_agent):
    config = agent_config(prometheus.remote_write_url)
    config["pipelines"]["metrics"]["span_metrics"] = True
    config["span_metrics"] = {"flush_interval": "200ms"}
    agent = start_agent(extra_config=config)
    send_spans(agent.http_url, 3, service="red-before", **{"http.route": "/a"})
    prometheus.wait_for_query('sum(traces_span_metrics_calls_total{service_name="red-before"})',
                              lambda r: bool(r) and float(r[0]["value"][1]) == 3, timeout=DEADLINE)

    reload(agent, {"span_metrics": {"dimensions": ["http.route"]}})
    send_spans(agent.http_url, 2, service="red-after", **{"http.route": "/b"})

    prometheus.wait_for_query('sum by (http_route) (traces_span_metrics_calls_total{service_name="red-after"})',
                              lambda r: [(x["metric"], x["value"][1]) for x in r] == [({"http_route": "/b"}, "2")],
                              timeout=DEADLINE)


# ---------------------------------------------------------------------------------------------------------
# What a config leaves off, said at startup
# ---------------------------------------------------------------------------------------------------------


def test_an_agent_without_pipelines_warns_at_startup_that_every_export_is_refused(start_agent):
    agent = start_agent(extra_config={"pipelines": None})
    log = agent.log_text()
    assert "level=warning" in log and "no pipelines are configured" in log
    assert "exporter 'file' is configured but no pipeline lists it" in log
    assert post_status(f"{agent.http_url}/v1/traces") == 404


def test_an_agent_without_a_metrics_pipeline_warns_that_metrics_are_off(start_agent):
    agent = start_agent()
    assert "metrics are off: there is no pipelines.metrics" in agent.log_text()


def test_the_tiers_in_effect_are_logged_at_startup_when_sampling_is_left_out(start_agent):
    agent = start_agent(extra_config={"sampling": None})
    assert ('msg="sampling tiers in effect" tiers="P0=0.99 (span sampling.priority=P0); '
            'P1=0.5 (span sampling.priority=P1); P2=0.05 (the rest)" source=defaults') in agent.log_text()
