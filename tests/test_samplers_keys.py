"""A tier with a `key` gives rare keys a higher rate than frequent ones while the tier's average rate holds."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from samplers.settings import SamplingSettings, Tier
from samplers.tail import TailSampler

TIER_RATE = 0.1


def request(rng: random.Random, service: str, root_name: str, traces: int) -> bytes:
    spans = []
    for _ in range(traces):
        trace_id = rng.randbytes(16)
        root = rng.randbytes(8)
        spans.append(Span(trace_id=trace_id, span_id=root, name=root_name, start_time_unix_nano=1, end_time_unix_nano=2))
        spans.append(Span(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root, name="child",
                          start_time_unix_nano=1, end_time_unix_nano=2))
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    return ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()


def run(key: tuple[str, ...], mix: dict[tuple[str, str], int], seconds: int = 120) -> dict[tuple[str, str], float]:
    """Feed `mix` traces per simulated second for `seconds`; kept fraction per (service, root name) after the
    first 30 s (the key counts need a window to form)."""
    now = [0.0]
    settings = SamplingSettings(decision_wait=1.0, root_delay=0.5, keep_errors=False, keep_http_5xx=False,
                                latency=0.0, annotate=False, tiers=(Tier("all", TIER_RATE, key=key),))
    sampler = TailSampler(settings, lambda: now[0])
    rng = random.Random(7)
    sent = {k: 0 for k in mix}
    kept = {k: 0 for k in mix}
    ids: dict[bytes, tuple[str, str]] = {}
    for second in range(seconds):
        for (service, name), count in mix.items():
            body = request(rng, service, name, count)
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for span in rs.scope_spans[0].spans:
                    ids[span.trace_id] = (service, name)
            sampler.ingest(body)
            if second >= 30:
                sent[(service, name)] += count
        now[0] += 1.0
        while sampler.tick(5000) == 5000:
            pass
        for data, _ in sampler.take_output():
            if second < 31:
                continue
            seen = set()
            for rs in ExportTraceServiceRequest.FromString(data).resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        seen.add(span.trace_id)
            for trace_id in seen:
                kept[ids[trace_id]] += 1
    return {k: kept[k] / sent[k] for k in mix}


MIX = {("busy", "GET /"): 400, ("rare", "GET /admin"): 4}


def test_a_rare_key_is_kept_at_a_higher_rate_than_a_frequent_one():
    fractions = run(("service.name",), MIX)
    assert fractions[("rare", "GET /admin")] > 5 * fractions[("busy", "GET /")]


def test_the_tier_keeps_its_average_rate_across_keys():
    fractions = run(("service.name",), MIX)
    total = sum(MIX.values())
    average = sum(fractions[k] * n for k, n in MIX.items()) / total
    assert abs(average - TIER_RATE) < 0.15 * TIER_RATE


def test_root_name_keys_split_one_service():
    mix = {("shop", "GET /cart"): 300, ("shop", "POST /pay"): 3}
    fractions = run(("service.name", "root.name"), mix)
    assert fractions[("shop", "POST /pay")] > 5 * fractions[("shop", "GET /cart")]


def test_without_a_key_every_trace_of_the_tier_has_the_same_rate():
    fractions = run((), MIX, seconds=60)
    assert abs(fractions[("busy", "GET /")] - TIER_RATE) < 0.03


def test_keys_past_the_per_tier_limit_get_the_tiers_rate_and_are_counted(monkeypatch):
    import samplers.tail

    monkeypatch.setattr(samplers.tail, "MAX_KEYS_PER_TIER", 50)
    now = [0.0]
    settings = SamplingSettings(decision_wait=1.0, root_delay=0.5, keep_errors=False, keep_http_5xx=False,
                                latency=0.0, annotate=False, tiers=(Tier("all", TIER_RATE, key=("root.name",)),))
    sampler = TailSampler(settings, lambda: now[0])
    rng = random.Random(3)
    for second in range(10):  # 40 new root names a second: endless keys
        for i in range(40):
            sampler.ingest(request(rng, "shop", f"endless-{second}-{i}", 1))
        now[0] += 1.0
        sampler.tick(100_000)
    assert max(len(counts) for counts in sampler._key_counts.values()) <= 50
    assert sampler.keys_evicted > 0
