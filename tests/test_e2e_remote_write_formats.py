"""End to end: every remote-write path into real stores stores exactly the samples sent.

- `rw1` and `auto` from the exporter into Prometheus 2.42 and VictoriaMetrics 1.79 (Debian's packages): both
  speak remote write 1.0 only (they answer 204 to a 2.0 body and store nothing, and refuse zstd), so `auto`
  must end on rw1 with nothing lost on the way.
- A node agent sending the compact format (zstd, dictionary across requests) to a gateway agent that writes
  rw1 to Prometheus, also across a gateway restart (SIGTERM) in the middle: the node's session is lost with
  the gateway, it answers 409, and the node starts a new session and resends.

Samples are counted back with `count_over_time` over distinct timestamps, each sent once.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.retry import RetryPolicy
from tests.agent_process import AgentProcess, free_ports
from tests.peers.prometheus import PrometheusServer
from tests.peers.victoriametrics import VictoriaMetricsServer
from tests.test_remote_write_exporter import Counters

SERIES = 3
START_NS = (int(time.time()) - 600) * 10**9  # ten minutes ago: inside both stores' accepted window


def gauge_request(metric: str, step: int, series: int = SERIES) -> ExportMetricsServiceRequest:
    """One point per series at START + step seconds; value = step, so every sample is distinct."""
    points = [
        NumberDataPoint(time_unix_nano=START_NS + step * 10**9, as_double=float(step),
                        attributes=[KeyValue(key="series", value=AnyValue(string_value=str(i)))])
        for i in range(series)
    ]
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="e2e"))])
    metric_message = Metric(name=metric, gauge=Gauge(data_points=points))
    return ExportMetricsServiceRequest(resource_metrics=[
        ResourceMetrics(resource=resource, scope_metrics=[ScopeMetrics(metrics=[metric_message])])])


@pytest.fixture
def victoriametrics() -> Iterator[VictoriaMetricsServer]:
    with VictoriaMetricsServer() as server:
        yield server


@pytest.fixture(params=["prometheus", "victoriametrics"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrometheusServer | VictoriaMetricsServer]:
    if request.param == "prometheus":
        with PrometheusServer(tmp_path / "prometheus") as server:
            yield server
    else:
        with VictoriaMetricsServer() as server:
            yield server


def counts(store: PrometheusServer | VictoriaMetricsServer, metric: str, expected: int) -> list[int]:
    """Samples stored per series, once every series holds `expected` (or the poll times out)."""
    expr = f'count_over_time({metric}{{job="e2e"}}[1h])'
    result = store.wait_for_query(
        expr, lambda r: len(r) == SERIES and all(int(float(s["value"][1])) >= expected for s in r), timeout=30)
    return sorted(int(float(s["value"][1])) for s in result)


@pytest.mark.parametrize("protocol", ["rw1", "auto"])
def test_the_exporter_stores_exactly_the_samples_sent_and_auto_ends_on_rw1(
    store: PrometheusServer | VictoriaMetricsServer, protocol: str
) -> None:
    counters = Counters()
    steps = 20

    async def send() -> str | None:
        exporter = RemoteWriteExporter(
            "store", store.remote_write_url, {}, timeout=10.0,
            retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.5, max_elapsed=10.0),
            max_samples=1000, max_bytes=4 << 20, flush_interval=0.05, meter=counters.meter, protocol=protocol)
        await exporter.start()
        for step in range(steps):
            await exporter.consume_metrics(gauge_request(f"e2e_{protocol}", step))
            if step % 5 == 4:
                await asyncio.sleep(0.1)  # a few flushes, so the first batch is the one negotiation resends
        await exporter.shutdown(timeout=10)
        return exporter.protocol

    assert asyncio.run(send()) == "rw1"
    assert counts(store, f"e2e_{protocol}", steps) == [steps] * SERIES
    assert counters.value("samples_sent") == steps * SERIES
    assert counters.value("samples_dropped") == 0 and counters.value("samples_failed") == 0


def test_zero_values_written_explicitly_from_a_remembered_layout_are_stored_as_zero(
    store: PrometheusServer | VictoriaMetricsServer,
) -> None:
    """From its second request on, a label list is written from its remembered layout with +0.0 values in
    the body (rw1_frames.py, `Frame.packed`): both stores must read them as the zeros they are."""
    steps = 6
    sent = {0: [0.0] * steps, 1: [0.0 if step % 2 else float(step + 1) for step in range(steps)],
            2: [float(step + 1) for step in range(steps)]}

    async def send() -> None:
        exporter = RemoteWriteExporter(
            "store", store.remote_write_url, {}, timeout=10.0,
            retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.5, max_elapsed=10.0),
            max_samples=1000, max_bytes=4 << 20, flush_interval=0.05, meter=Counters().meter, protocol="rw1")
        await exporter.start()
        for step in range(steps):
            request = gauge_request("e2e_zeros", step)
            for i, point in enumerate(request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points):
                point.as_double = sent[i][step]
            await exporter.consume_metrics(request)
            await asyncio.sleep(0.15)  # one request per step: the same label list again and again
        await exporter.shutdown(timeout=10)

    asyncio.run(send())
    counts(store, "e2e_zeros", steps)
    result = store.wait_for_query('e2e_zeros{job="e2e"}[1h]', lambda r: len(r) == SERIES, timeout=30)
    stored = {int(s["metric"]["series"]): [float(v) for _, v in s["values"]] for s in result}
    assert stored == sent


def post_metrics(agent: AgentProcess, request: ExportMetricsServiceRequest) -> None:
    http_request = urllib.request.Request(
        f"{agent.http_url}/v1/metrics", data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(http_request, timeout=10) as response:
        assert response.status == 200


def gateway_agent(workdir: Path, port: int, prometheus: PrometheusServer) -> AgentProcess:
    return AgentProcess(workdir, file_exporter=True, extra_config={
        "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{port}"}},
        "exporters": {"remote_write": [{
            "name": "store", "url": prometheus.remote_write_url, "protocol": "rw1",
            "batch": {"flush_interval": "100ms"},
            "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "500ms"}}}]},
        "pipelines": {"metrics": {"exporters": ["store"]}},
    })


def node_agent(workdir: Path, gateway_port: int, protocol: str) -> AgentProcess:
    return AgentProcess(workdir, file_exporter=True, extra_config={
        "exporters": {"remote_write": [{
            "name": "gateway", "url": f"http://127.0.0.1:{gateway_port}/api/v1/write", "protocol": protocol,
            "batch": {"flush_interval": "100ms"},
            "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "500ms"}}}]},
        "pipelines": {"metrics": {"exporters": ["gateway"]}},
    })


def metric_value(agent: AgentProcess, name: str) -> str:
    with urllib.request.urlopen(f"{agent.telemetry_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("protocol", ["compact", "auto"])
def test_a_node_sending_compact_to_a_gateway_stores_exactly_the_samples_sent_in_prometheus(
    tmp_path: Path, prometheus: PrometheusServer, protocol: str
) -> None:
    (port,) = free_ports(1)
    steps = 30
    with gateway_agent(tmp_path / "gateway", port, prometheus), node_agent(tmp_path / "node", port, protocol) as node:
        for step in range(steps):
            post_metrics(node, gauge_request(f"e2e_gw_{protocol}", step))
            time.sleep(0.02)
        assert counts(prometheus, f"e2e_gw_{protocol}", steps) == [steps] * SERIES
        assert 'protocol="compact"} 1' in metric_value(node, "headwater_remote_write_protocol")


def test_a_gateway_restart_in_the_middle_loses_nothing_the_node_starts_a_new_session(
    tmp_path: Path, prometheus: PrometheusServer
) -> None:
    (port,) = free_ports(1)
    steps = 40
    with node_agent(tmp_path / "node", port, "compact") as node:
        first = gateway_agent(tmp_path / "gateway-1", port, prometheus).start()
        try:
            for step in range(steps // 2):
                post_metrics(node, gauge_request("e2e_gw_restart", step))
                time.sleep(0.02)
            counts(prometheus, "e2e_gw_restart", steps // 2)  # the first half is through the first gateway
        finally:
            first.stop_cleanly()
        for step in range(steps // 2, steps):  # the node holds these while no gateway listens
            post_metrics(node, gauge_request("e2e_gw_restart", step))
        with gateway_agent(tmp_path / "gateway-2", port, prometheus):
            assert counts(prometheus, "e2e_gw_restart", steps) == [steps] * SERIES
        assert "compact session" in node.log_text()
