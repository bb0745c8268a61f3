"""Buffered-trace memory (samplers/tail.py): bounded by max_memory in bytes, evicted fairly, and counted honestly.

Nothing is ticked while the buffer fills (the clock barely moves), so only memory pressure can take traces out.
"""

from __future__ import annotations

import gc
import tracemalloc

from samplers.decisions import DROPPED
from samplers.settings import MiB, SamplingSettings
from samplers.tail import TailSampler
from tests.sampler_workload import FakeClock, Trace, TraceGenerator, requests, spans_request

CHECKOUT = (("service.name", "checkout"),)


def test_buffered_bytes_stay_under_max_memory_after_every_ingest_and_evictions_are_counted() -> None:
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(max_memory=2 * MiB), clock)
    gen = TraceGenerator(seed="pressure", mix={"P0": 0.01, "P1": 0.25, "P2": 0.74}, spans=(1, 12),
                         priority_on="every", span_bytes=300)
    arrived = {"P0": 0, "P1": 0, "P2": 0}
    spans_in = 0
    evicted_p1_while_p2_buffered = 0
    for _batch in range(200):
        traces = gen.traces(100)
        bodies = requests(traces, per_request=100, parts=2, root="last")  # every trace starts in the first
        for i, body in enumerate(bodies):
            p1_evicted = sampler.stats.dropped_traces.get("P1", 0)
            if i == 0:
                for trace in traces:
                    arrived[trace.tier] += 1
            spans_in += sampler.ingest(body).spans
            clock.advance(0.0001)
            assert sampler.buffered_bytes <= sampler.settings.max_memory
            dropped = sampler.stats.dropped_traces
            buffered = {tier: arrived[tier] - dropped.get(tier, 0) for tier in arrived}
            if dropped.get("P1", 0) > p1_evicted and buffered["P2"]:
                evicted_p1_while_p2_buffered += 1
    stats = sampler.stats
    evicted_spans = stats.drops_by_reason["memory_pressure"]
    assert evicted_spans > 0
    assert "sampled" not in stats.drops_by_reason, "nothing was decided: every drop is an eviction"
    assert stats.dropped_traces.get("P0", 0) == 0, "P0 traces survive"
    assert stats.dropped_traces["P2"] > stats.dropped_traces.get("P1", 0) > 0
    assert evicted_p1_while_p2_buffered == 0, "no P1 trace is evicted while a P2 one is buffered"
    assert sum(stats.dropped_spans.values()) == evicted_spans
    # Every span that came in is accounted for: evicted, dropped late (its trace was evicted), or buffered.
    late_of_evicted = stats.drops_by_reason.get("late_span_of_dropped_trace", 0)
    assert stats.spans_in == spans_in
    buffered_spans = -sum(stats.kept_spans.values()) - sum(stats.dropped_spans.values())
    sampler.decide_all()
    buffered_spans += sum(stats.kept_spans.values()) + sum(stats.dropped_spans.values())
    assert evicted_spans + late_of_evicted + buffered_spans == spans_in


def test_evictions_take_the_lowest_tier_first_and_within_it_the_largest_then_the_oldest_traces() -> None:
    gen = TraceGenerator(seed="evict", priority_on="every", span_bytes=400)
    p0 = [gen.trace(tier="P0", spans=20, resource=CHECKOUT) for _ in range(5)]
    p1 = [gen.trace(tier="P1", spans=10, resource=CHECKOUT) for _ in range(10)]
    p2_small = [gen.trace(tier="P2", spans=1, resource=CHECKOUT) for _ in range(50)]
    p2_large = [gen.trace(tier="P2", spans=20, resource=CHECKOUT) for _ in range(20)]
    order: list[Trace] = []
    for i in range(50):  # small and large P2 traces interleaved, the higher tiers among them
        order.append(p2_small[i])
        if i < 20:
            order.append(p2_large[i])
        if i < 10:
            order.append(p1[i])
        if i < 5:
            order.append(p0[i])
    push = gen.trace(tier="P0", spans=2, resource=CHECKOUT)
    more = gen.trace(tier="P0", spans=30, resource=CHECKOUT)  # larger than a large P2 trace: two more must go

    def fill(max_memory: int) -> tuple[TailSampler, FakeClock]:
        clock = FakeClock()
        sampler = TailSampler(SamplingSettings(max_memory=max_memory), clock)
        for trace in order:  # one request per trace, so equal traces cost exactly the same
            sampler.ingest(spans_request(trace, trace.spans))
            clock.advance(0.001)
        return sampler, clock

    probe, _ = fill(1 << 30)
    filled = probe.buffered_bytes
    probe.ingest(spans_request(push, push.spans))
    # A bound the buffer is one byte under before the last trace, and over after it.
    sampler, clock = fill(probe.buffered_bytes - 1)
    assert sampler.buffered_bytes == filled and sampler.stats.drops_by_reason == {}
    sampler.ingest(spans_request(push, push.spans))
    assert sampler.buffered_bytes <= sampler.settings.max_memory - sampler.settings.max_memory // 128
    sampler.ingest(spans_request(more, more.spans))
    assert sampler.buffered_bytes <= sampler.settings.max_memory - sampler.settings.max_memory // 128

    def evicted(traces: list[Trace]) -> list[bool]:
        return [d is DROPPED for d in sampler.decided(t.trace_id for t in traces)]

    large = evicted(p2_large)
    k = sum(large)
    assert k >= 2
    assert large == [True] * k + [False] * (20 - k), "the oldest of the equally large go first"
    assert not any(evicted(p2_small + p1 + p0 + [push, more]))
    assert sampler.stats.drops_by_reason == {"memory_pressure": 20 * k}
    assert sampler.stats.dropped_traces == {"P2": k}
    # A span of an evicted trace that arrives later follows the eviction: dropped, and counted.
    sampler.ingest(spans_request(p2_large[0], [gen.late_span(p2_large[0])]))
    assert sampler.stats.drops_by_reason["late_span_of_dropped_trace"] == 1


def test_buffered_bytes_count_the_live_memory_of_buffered_spans_not_only_their_serialized_size() -> None:
    # ~50,000 spans of 350 serialized bytes, 10 to a trace. tracemalloc sees only what is allocated after it
    # starts: the request bytes (built before) are not counted, and are released before measuring anyway.
    gen = TraceGenerator(seed="live", spans=(10, 10), span_bytes=350)
    traces = gen.traces(5000)
    bodies = requests(traces, per_request=500)
    spans = sum(len(t.spans) for t in traces)
    serialized = sum(span.ByteSize() for t in traces for span in t.spans)
    assert 349 <= serialized / spans <= 351
    del traces
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(), clock)
    sampler.ingest(requests(gen.traces(1))[0])  # first-use caches are not buffer memory
    start = sampler.buffered_bytes
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for body in bodies:
            sampler.ingest(body)
        bodies.clear()
        gc.collect()
        live = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = sampler.buffered_bytes - start
    assert sampler.buffered_traces == 5001
    print(f"per buffered span: {live / spans:.0f} B live (tracemalloc), {counted / spans:.0f} B counted, "
          f"{serialized / spans:.0f} B serialized")
    assert counted >= 0.9 * live, f"counted {counted} B, live {live} B"
    assert counted <= 1.5 * serialized, f"counted {counted} B for {serialized} serialized bytes"


class _CountingTraces(dict):
    """The sampler's trace table, counting walks over every buffered trace (what made eviction O(n))."""

    walks = 0

    def items(self):
        type(self).walks += 1
        return super().items()

    def values(self):
        type(self).walks += 1
        return super().values()


def test_under_sustained_overload_eviction_walks_the_buffer_at_most_once_per_as_many_runs_as_it_holds() -> None:
    # Before: every eviction sorted every buffered trace (0.37 s at 140k traces, on the ingest path). Now victims
    # come off a heap in O(log n); the buffer is walked only to build it (crossing half of max_memory) and to
    # compact it, after at least as many runs as there are traces: amortized O(1) a run.
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(max_memory=4 * MiB, decision_wait=60.0, root_delay=60.0), clock)
    sampler._traces = _CountingTraces()  # the one seam: count walks, change nothing
    gen = TraceGenerator(seed="overload", mix={"P0": 0.05, "P1": 0.25, "P2": 0.7}, spans=(1, 3), span_bytes=300)
    bodies = requests(gen.traces(60_000), per_request=200)
    for body in bodies[:40]:  # fill past the bound: evictions have started
        sampler.ingest(body)
    assert sampler.stats.drops_by_reason.get("memory_pressure", 0) > 0
    _CountingTraces.walks = 0
    evicting_requests = 0
    runs = 0
    for body in bodies[40:]:
        before = sampler.stats.drops_by_reason["memory_pressure"]
        runs += 200
        sampler.ingest(body)
        evicting_requests += sampler.stats.drops_by_reason["memory_pressure"] > before
        assert sampler.buffered_bytes <= sampler.settings.max_memory
    buffered = sampler.buffered_traces
    assert evicting_requests > 100, "sustained overload: every other request evicts"
    assert _CountingTraces.walks <= runs // buffered + 1, (
        f"{_CountingTraces.walks} walks of ~{buffered} traces for {evicting_requests} evicting requests")


def test_under_sustained_overload_the_samplers_live_memory_stays_within_its_bounds() -> None:
    # Evicted and decided traces leave schedule and eviction-index entries behind (lazy deletion); they must be
    # swept, or a flood grows the heaps with the ingest rate times decision_wait, outside any bound.
    clock = FakeClock()
    max_memory, decisions = 4 * MiB, 1 * MiB
    sampler = TailSampler(SamplingSettings(max_memory=max_memory, decision_cache_bytes=decisions,
                                           decision_wait=60.0, root_delay=60.0), clock)
    gen = TraceGenerator(seed="flood", mix={"P1": 0.2, "P2": 0.8}, spans=(1, 2), span_bytes=200)
    bodies = requests(gen.traces(20_000), per_request=200)
    sampler.ingest(bodies[0])  # first-use caches are not buffer memory
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for round_ in range(4):  # 80,000 traces through a buffer that holds ~4,000
            for body in bodies:
                sampler.ingest(body if round_ == 0 else _fresh(body, round_))
                clock.advance(0.001)
        gc.collect()
        live = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sampler.stats.drops_by_reason["memory_pressure"] > 0
    print(f"live {live / MiB:.2f} MiB for max_memory {max_memory / MiB:.0f} MiB + decisions {decisions / MiB:.0f} MiB")
    assert live <= max_memory + decisions + 512 * 1024


def _fresh(body: bytes, round_: int) -> bytes:
    """The same request with every trace ID new: its 16-byte IDs' first byte xor'ed with the round."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(body)
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.trace_id = bytes([span.trace_id[0] ^ round_]) + span.trace_id[1:]
    return request.SerializeToString()


def test_buffered_traces_add_no_objects_for_the_cyclic_gc_to_walk_however_many_are_held() -> None:
    # Every collection walks its generation's tracked containers, and a full one walks them all: with a list per
    # buffered trace, pauses grew with the buffer (60-215 ms under overload). Buffered spans are bytes, a trace is
    # a tuple of untracked values, heap entries likewise, so once a collection has seen them nothing is left to walk.
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(max_memory=16 * MiB, decision_wait=60.0, root_delay=60.0), clock)
    gen = TraceGenerator(seed="untracked", spans=(2, 12), span_bytes=300)
    # Each trace in three requests: runs appended to traces already buffered, a new group in each.
    bodies = requests(gen.traces(4000), per_request=400, parts=3)
    sampler.ingest(bodies.pop(0))  # first-use caches are not the buffer
    gc.collect()
    before = len(gc.get_objects())
    for body in bodies:
        sampler.ingest(body)
        clock.advance(0.001)
    bodies.clear()
    # A collection untracks a tuple whose items are all untracked when it reaches it; the groups tuple an entry holds
    # may be reached after the entry, so the entry goes at the next collection.
    gc.collect()
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert sampler.buffered_traces == 4000
    assert sampler.buffered_bytes > sampler.settings.max_memory // 2, "the eviction index is kept too"
    assert sampler.stats.drops_by_reason == {}
    assert grown <= 50, f"{grown} more GC-tracked objects with {sampler.buffered_traces} traces buffered"
