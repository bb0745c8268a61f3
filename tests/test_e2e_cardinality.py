"""End to end: a client that never repeats itself cannot grow the agent's memory past its bounds.

A real agent process gets raw OTLP/HTTP requests (built with the proto classes) for a minute or so: every span
has a span name and a trace ID never seen before, and every data point a label value never seen before, a few
hundred thousand of each. The bounds are set small: the trace buffer (`sampling.max_memory`), the decision
cache, span-metrics series (`span_metrics.max_series`, `idle_expiry`), remote-write series
(`limits.max_series_per_metric`, `max_series`, `idle_expiry`) and the queue. After a warm-up that fills them,
the agent's resident memory must stay within the sum of those bounds (plus the series cache's fixed 32 MiB)
and a margin of 24 MiB for the allocator and the interpreter, and be flat over the second half of the run
(within 8 MiB); what the bounds refused or forgot is counted on /metrics.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

MiB = 1 << 20
PER_REQUEST = 500
ROUNDS = 500                      # each round: one trace request and one metrics request
WARM_UP = ROUNDS // 5
BOUNDS = {                        # what the config below allows, in bytes
    "sampling.max_memory": 4 * MiB,
    "sampling.decision_cache_size": 1 * MiB,
    "queue.max_memory": 4 * MiB,
    "series cache (fixed)": 32 * MiB,
    "span metrics: 1000 series of 16 buckets": 1000 * 2048,
    "series limit: 1000 series": 1000 * 1024,
}
MARGIN = 24 * MiB
FLAT = 8 * MiB


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def trace_request(round_: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(_kv("service.name", "hostile"))
    spans = resource_spans.scope_spans.add().spans
    now = time.time_ns()
    for i in range(PER_REQUEST):
        n = round_ * PER_REQUEST + i
        span = spans.add()
        span.trace_id = n.to_bytes(16, "big")
        span.span_id = (n + 1).to_bytes(8, "big")
        span.name = f"endless-span-name-{n}"
        span.kind = 2
        span.start_time_unix_nano = now - 1_000_000
        span.end_time_unix_nano = now
        span.attributes.append(_kv("payload", "x" * 200))
    return request.SerializeToString()


def metrics_request(round_: int) -> bytes:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.append(_kv("service.name", "hostile"))
    metrics = resource_metrics.scope_metrics.add().metrics
    now = time.time_ns()
    for family in range(5):
        metric = metrics.add()
        metric.name = f"hostile_gauge_{family}"
        for i in range(PER_REQUEST // 5):
            point = metric.gauge.data_points.add()
            point.attributes.append(_kv("id", f"series-{round_}-{family}-{i}"))
            point.time_unix_nano = now
            point.as_double = float(i)
    return request.SerializeToString()


def post(url: str, body: bytes) -> None:
    """POST, retrying while the agent asks to (429 / 503 with Retry-After): a client that follows the protocol."""
    for _ in range(200):
        request = urllib.request.Request(url, body, {"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
                return
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503):
                raise
            time.sleep(0.05)
    raise AssertionError(f"{url}: still refused after 200 tries")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def config(prometheus) -> dict:
    return {
        "sampling": {"decision_wait": "5s", "root_delay": "5s", "max_memory": "4MiB",
                     "decision_cache_size": "1MiB", "tiers": [{"name": "all", "rate": 0.01}]},
        "exporters": {"remote_write": [{
            "name": "prom", "url": prometheus.remote_write_url,
            "batch": {"flush_interval": "500ms"},
            "queue": {"max_memory": "4MiB", "max_disk": 0, "when_full": "drop_oldest"},
            "limits": {"max_series_per_metric": 200, "max_series": 1000, "idle_expiry": "3s"},
        }]},
        "span_metrics": {"flush_interval": "1s", "max_series": 1000, "idle_expiry": "3s"},
        "pipelines": {"metrics": {"exporters": ["prom"], "span_metrics": True}},
    }


def test_endless_new_series_and_span_names_keep_memory_within_the_bounds_and_flat(prometheus, start_agent):
    agent = start_agent(extra_config=config(prometheus))
    pid = agent.process.pid
    traces_url, metrics_url = agent.http_url + "/v1/traces", agent.http_url + "/v1/metrics"
    samples: list[int] = []
    baseline = 0
    for round_ in range(ROUNDS):
        post(traces_url, trace_request(round_))
        post(metrics_url, metrics_request(round_))
        if round_ == WARM_UP:
            baseline = rss(pid)
        if round_ > WARM_UP and round_ % 10 == 0:
            samples.append(rss(pid))
    samples.append(rss(pid))

    allowance = sum(BOUNDS.values()) + MARGIN
    peak = max(samples)
    second_half = samples[len(samples) // 2:]
    print(f"RSS: baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB (allowed growth "
          f"{allowance / MiB:.1f} MiB), second half {min(second_half) / MiB:.1f}..{max(second_half) / MiB:.1f} MiB")
    assert peak - baseline <= allowance
    assert second_half[-1] - second_half[0] <= FLAT, "memory still grows over the second half"

    with urllib.request.urlopen(agent.telemetry_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert counter(text, "headwater_span_metrics_overflow_spans_total") > 0
    assert counter(text, "headwater_span_metrics_expired_series_total") > 0
    assert counter(text, "headwater_remote_write_samples_dropped_total", reason="too_many_series") > 0
    assert counter(text, "headwater_remote_write_state_evictions_total", state="series_limit") > 0
    assert counter(text, "headwater_sampling_dropped_spans_by_reason_total", reason="memory_pressure") > 0
    assert counter(text, "headwater_sampling_state_evictions_total", state="decision_cache") > 0
    assert agent.stop() in (0, 3)
