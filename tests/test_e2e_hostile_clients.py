"""The agent as a process (not in-process as in tests/test_fuzz_receivers.py), once: hostile bodies on every
receiver (OTLP/HTTP protobuf and JSON, OTLP/gRPC, both signals, and the gateway in each remote-write format)
get no 5xx, the agent stays ready and serving, logs no traceback, and stops cleanly (exit status 0, checked by
the `start_agent` fixture). Metrics go to a real Prometheus 2.42."""

from __future__ import annotations

import random
import urllib.error
import urllib.request

import grpc

from exporters.remote_write.encoding import compress, decompress
from tests.agent_in_thread import GRPC_METHODS
from tests.agent_process import free_ports
from tests.hostile_payloads import (
    REMOTE_WRITE_ENCODERS,
    _deep_json,
    deep_metrics_request,
    deep_span_request,
    json_of,
    metrics_seeds,
    mutate,
    number_request,
    series_batch,
    span_request,
    trace_seeds,
)

PER_TARGET = 60
SIGNALS = {"traces": (trace_seeds, deep_span_request), "metrics": (metrics_seeds, deep_metrics_request)}


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def hostile(seeds: list[bytes], rng: random.Random) -> list[bytes]:
    return [mutate(rng.choice(seeds), rng.randrange(2**32), rng.randrange(1, 4)) for _ in range(PER_TARGET)]


def test_an_agent_process_answers_hostile_bodies_on_every_receiver_without_5xx_and_keeps_serving(
        start_agent, prometheus) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    [gateway_port] = free_ports(1)
    agent = start_agent(extra_config={
        "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{gateway_port}"}},
        "exporters": {"remote_write": [{"name": "prom", "url": prometheus.remote_write_url, "protocol": "rw1",
                                        "batch": {"flush_interval": "200ms"}}]},
        "pipelines": {"metrics": {"exporters": ["prom"], "span_metrics": True}},
        "span_metrics": {"flush_interval": "200ms", "dimensions": ["http.route"]}})
    rng = random.Random(10)
    answers: dict[str, set] = {}
    types = {"traces": ExportTraceServiceRequest, "metrics": ExportMetricsServiceRequest}
    with grpc.insecure_channel(agent.grpc_endpoint) as channel:
        for signal, (seeds, deep) in SIGNALS.items():
            url = f"{agent.http_url}/v1/{signal}"
            bodies = hostile(seeds(), rng) + [deep(d, k, r) for d in (101, 5000) for k in (0, 1) for r in (0, 1)]
            json_bodies = hostile([json_of(s, types[signal]) for s in seeds()], rng) + [
                _deep_json(d, shape) for d in (1000, 5000) for shape in ("arrays", "kvlist", "unclosed")]
            export = channel.unary_unary(GRPC_METHODS[signal])
            for body in bodies:
                answers.setdefault(f"http {signal} protobuf", set()).add(
                    post(url, body, {"Content-Type": "application/x-protobuf"}))
                try:
                    export(body, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                answers.setdefault(f"grpc {signal}", set()).add(code.name)
            for body in json_bodies:
                answers.setdefault(f"http {signal} json", set()).add(
                    post(url, body, {"Content-Type": "application/json"}))
        for protocol, new_encoder in REMOTE_WRITE_ENCODERS.items():
            encoded = new_encoder().encode(series_batch())
            codec = encoded.headers.get("Content-Encoding", "snappy")
            raw = decompress(codec, encoded.body, 1 << 24)
            for body in hostile([raw], rng):
                answers.setdefault(f"gateway {protocol}", set()).add(post(
                    f"http://127.0.0.1:{gateway_port}/api/v1/write", compress(codec, body), dict(encoded.headers)))

        server_errors = {target: sorted(map(str, codes)) for target, codes in answers.items()
                         if any(str(c).startswith("5") or c in ("INTERNAL", "UNKNOWN", "UNAVAILABLE",
                                                                  "DEADLINE_EXCEEDED") for c in codes)}
        assert server_errors == {}
        assert post(f"{agent.http_url}/v1/traces", span_request(), {"Content-Type": "application/x-protobuf"}) == 200
        assert post(f"{agent.http_url}/v1/metrics", number_request(),
                    {"Content-Type": "application/x-protobuf"}) == 200
        channel.unary_unary(GRPC_METHODS["traces"])(span_request(), timeout=10)
    with urllib.request.urlopen(f"{agent.telemetry_url}/readyz", timeout=10) as ready:
        assert ready.status == 200
    assert "Traceback" not in agent.log_text()
