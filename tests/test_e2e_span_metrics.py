"""End to end: span metrics stay exact while traces are sampled at 5%.

A seeded generator sends a few thousand spans (several services, one of them on two instances, every span
kind, some errors, durations on and around the bucket bounds) through the agent over OTLP/HTTP. The agent
keeps about 5% of the traces, yet the span metrics it writes to a real Prometheus over remote write count
every span: PromQL sums of `traces_span_metrics_calls_total` and of the duration histogram's `_count` by
service, span name, kind and status equal the generator's own counts exactly, as do the buckets and sums.
"""

from __future__ import annotations

import json
import random
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

SEED = 20240611
TRACES = 700
TRACES_PER_REQUEST = 50
BUCKETS_MS = (5, 10, 50, 100, 500, 1000, 2500)
RATE = 0.05
T0 = 1_750_000_000_000_000_000

RESOURCES = [
    {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "node-1"},
    {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "node-2"},
    {"service.name": "payments", "service.instance.id": "node-1", "host.name": "a"},
    {"service.name": "catalog", "service.instance.id": "node-3"},
]
ROUTES = ["/api/orders/{id}", "/api/cart", "/api/products/{sku}", "/healthz"]
CHILDREN = [("SELECT orders", Span.SPAN_KIND_CLIENT), ("render", Span.SPAN_KIND_INTERNAL),
            ("publish order", Span.SPAN_KIND_PRODUCER), ("consume order", Span.SPAN_KIND_CONSUMER),
            ("payments.Charge", Span.SPAN_KIND_CLIENT)]
KIND_NAMES = {Span.SPAN_KIND_SERVER: "SPAN_KIND_SERVER", Span.SPAN_KIND_CLIENT: "SPAN_KIND_CLIENT",
              Span.SPAN_KIND_INTERNAL: "SPAN_KIND_INTERNAL", Span.SPAN_KIND_PRODUCER: "SPAN_KIND_PRODUCER",
              Span.SPAN_KIND_CONSUMER: "SPAN_KIND_CONSUMER"}
STATUS_NAMES = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


@dataclass
class Sent:
    """What the generator sent, counted its own way."""

    spans: int = 0
    calls: Counter = field(default_factory=Counter)        # (service, span name, kind, status) -> spans
    by_instance: Counter = field(default_factory=Counter)  # (job, instance) -> spans
    by_route: Counter = field(default_factory=Counter)     # http.route of SERVER spans -> spans
    at_most: Counter = field(default_factory=Counter)      # bucket bound (ms) -> spans no longer than it
    duration_ms: float = 0.0


def _duration(rng: random.Random) -> int:
    if rng.random() < 0.1:  # exactly on a bound: counts in that bucket (le is inclusive)
        return rng.choice(BUCKETS_MS) * 1_000_000
    return rng.choice([rng.randrange(100_000, 20_000_000), rng.randrange(20_000_000, 3_000_000_000)])


def generate() -> tuple[list[bytes], Sent]:
    rng = random.Random(SEED)
    sent = Sent()
    bodies = []
    for first in range(0, TRACES, TRACES_PER_REQUEST):
        per_resource: dict[int, list[Span]] = {}
        for _ in range(first, min(first + TRACES_PER_REQUEST, TRACES)):
            r = rng.randrange(len(RESOURCES))
            trace_id, root_id = rng.randbytes(16), rng.randbytes(8)
            route = rng.choice(ROUTES)
            spans = [(f"GET {route}", Span.SPAN_KIND_SERVER, {"http.route": route}, root_id, b"")]
            for _ in range(rng.randrange(1, 8)):
                name, kind = rng.choice(CHILDREN)
                spans.append((name, kind, {}, rng.randbytes(8), root_id))
            for name, kind, attributes, span_id, parent in spans:
                status = rng.choices([0, 1, 2], weights=[80, 10, 10])[0]
                duration = _duration(rng)
                per_resource.setdefault(r, []).append(Span(
                    trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name, kind=kind,
                    start_time_unix_nano=T0, end_time_unix_nano=T0 + duration,
                    attributes=[_kv(k, v) for k, v in attributes.items()], status=Status(code=status)))
                resource = RESOURCES[r]
                sent.spans += 1
                sent.calls[(resource["service.name"], name, KIND_NAMES[kind], STATUS_NAMES[status])] += 1
                job = "/".join(p for p in (resource.get("service.namespace"), resource["service.name"]) if p)
                sent.by_instance[(job, resource["service.instance.id"])] += 1
                if kind == Span.SPAN_KIND_SERVER:
                    sent.by_route[attributes["http.route"]] += 1
                for bound in BUCKETS_MS:
                    sent.at_most[bound] += duration <= bound * 1_000_000
                sent.duration_ms += duration / 1e6
        request = ExportTraceServiceRequest()
        for r, spans in per_resource.items():
            rs = ResourceSpans()
            rs.resource.attributes.extend(_kv(k, v) for k, v in RESOURCES[r].items())
            rs.scope_spans.add().spans.extend(spans)
            request.resource_spans.append(rs)
        bodies.append(request.SerializeToString())
    return bodies, sent


def post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.status == 200


def config(prometheus) -> dict:
    return {
        "sampling": {"decision_wait": "1s", "root_delay": "200ms",
                     "always_keep": {"errors": False, "http_5xx": False, "latency": "0s"},
                     "tiers": [{"name": "all", "rate": RATE}]},
        "exporters": {"remote_write": [{
            "name": "prom", "url": prometheus.remote_write_url,
            "batch": {"flush_interval": "200ms"},
            "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "1s"}},
        }]},
        "span_metrics": {"flush_interval": "1s", "dimensions": ["http.route"],
                         "buckets": [f"{b}ms" for b in BUCKETS_MS], "max_series": 10000},
        "pipelines": {"metrics": {"exporters": ["prom"], "span_metrics": True}},
    }


def by_labels(result: list[dict], *names: str) -> dict[tuple, float]:
    return {tuple(r["metric"].get(n, "") for n in names): float(r["value"][1]) for r in result}


def kept_spans(path) -> int:
    count = 0
    for line in path.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                count += len(ss.get("spans", []))
    return count


GROUP = ("service_name", "span_name", "span_kind", "status_code")


def test_span_metrics_count_every_span_exactly_while_traces_are_sampled_at_5_percent(prometheus, start_agent):
    bodies, sent = generate()
    assert sent.spans > 2000 and len(sent.calls) > 40
    agent = start_agent(extra_config=config(prometheus))
    for body in bodies:
        post(agent.http_url + "/v1/traces", body)

    # Written by the running agent's periodic flush (1 s), not only by the one at shutdown.
    expected = {key: float(n) for key, n in sent.calls.items()}
    calls = f"sum by ({', '.join(GROUP)}) (traces_span_metrics_calls_total)"
    prometheus.wait_for_query(calls, lambda r: by_labels(r, *GROUP) == expected, timeout=30)
    agent.stop_cleanly()  # the final flush repeats the same totals

    assert by_labels(prometheus.query(calls), *GROUP) == expected
    instances = by_labels(prometheus.query("sum by (job, instance) (traces_span_metrics_calls_total)"),
                          "job", "instance")
    assert instances == {key: float(n) for key, n in sent.by_instance.items()}
    routes = by_labels(prometheus.query(
        'sum by (http_route) (traces_span_metrics_calls_total{span_kind="SPAN_KIND_SERVER"})'), "http_route")
    assert routes == {(route,): float(n) for route, n in sent.by_route.items()}
    assert prometheus.query('{__name__=~"traces_span_metrics.+", otel_metric_overflow!=""}') == []

    # The traces themselves were sampled: about 5% of them reached the trace exporter.
    kept = kept_spans(agent.file_path)
    assert 0 < kept < 0.2 * sent.spans, f"{kept} of {sent.spans} spans kept"

    # The duration histogram (unit ms, the connector's default) counts the same spans.
    counts = f"sum by ({', '.join(GROUP)}) (traces_span_metrics_duration_milliseconds_count)"
    assert by_labels(prometheus.query(counts), *GROUP) == expected
    for bound in BUCKETS_MS:
        [bucket] = prometheus.query(f'sum(traces_span_metrics_duration_milliseconds_bucket{{le=~"{bound}(\\\\.0)?"}})')
        assert float(bucket["value"][1]) == sent.at_most[bound], f"le={bound}"
    [inf] = prometheus.query('sum(traces_span_metrics_duration_milliseconds_bucket{le="+Inf"})')
    assert float(inf["value"][1]) == sent.spans
    [total] = prometheus.query("sum(traces_span_metrics_duration_milliseconds_sum)")
    assert abs(float(total["value"][1]) - sent.duration_ms) <= 1e-9 * sent.duration_ms
