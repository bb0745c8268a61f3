"""The tail sampler (samplers/tail.py): tier rates, forced keeps, whole traces, consistency, deadlines, rules.

The statistical tests run seeded workloads of 100,000 traces (tests/sampler_workload.py) through a sampler with
a fake clock; a seed is fixed, so a failure reproduces exactly.
"""

from __future__ import annotations

import math

import pytest

from samplers import consistent
from samplers.decisions import DROPPED
from samplers.settings import DEFAULT_TIERS, Match, SamplingSettings, Tier
from samplers.tail import TailSampler
from tests.sampler_workload import (
    ALL,
    PRIORITY,
    FakeClock,
    Trace,
    TraceGenerator,
    attributes,
    by_tier,
    collect,
    encode,
    feed,
    kv,
    requests,
    settle,
    spans_request,
    th_of,
)

TRACES = 100_000
RATES = {t.name: t.rate for t in DEFAULT_TIERS}
NO_FORCED = {"keep_errors": False, "keep_http_5xx": False, "latency": 0.0}


def rates_of(tiers: tuple[Tier, ...], rate: float) -> tuple[Tier, ...]:
    """The same tier rules, every one at `rate`."""
    return tuple(Tier(t.name, rate, t.match) for t in tiers)


def trace_id_with_randomness(r: int) -> bytes:
    """A trace ID whose low 56 bits (the sampler's randomness) are `r`."""
    return bytes.fromhex("4bf92f3577b34da6a3") + r.to_bytes(7, "big")


def run(settings: SamplingSettings, traces: list[Trace], **request_args) -> tuple[TailSampler, dict[bytes, list]]:
    clock = FakeClock()
    sampler = TailSampler(settings, clock)
    feed(sampler, clock, requests(traces, **request_args), step=0.05)
    settle(sampler, clock)
    return sampler, collect(sampler)


# -- statistics at the default tiers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_tiers_run() -> tuple[list[Trace], TailSampler, dict[bytes, list]]:
    """100,000 traces at the default tiers, forced keeps off, each trace's spans over two requests, roots last."""
    traces = TraceGenerator(seed="default-tiers", spans=(1, 3), priority_on="any").traces(TRACES)
    sampler, kept = run(SamplingSettings(**NO_FORCED), traces, parts=2, root="last")
    return traces, sampler, kept


def test_each_tiers_kept_fraction_is_within_three_standard_deviations_of_its_rate(default_tiers_run) -> None:
    traces, sampler, kept = default_tiers_run
    for tier, members in sorted(by_tier(traces).items()):
        n = len(members)
        rate = consistent.rate_of(consistent.threshold_for(RATES[tier]))
        k = sum(1 for t in members if t.trace_id in kept)
        sd = math.sqrt(n * rate * (1 - rate))
        assert abs(k - n * rate) <= 3 * sd, f"{tier}: kept {k} of {n}, expected {n * rate:.0f} +- {3 * sd:.0f}"
        assert sampler.stats.kept_traces[tier] == k
        assert sampler.stats.kept_traces[tier] + sampler.stats.dropped_traces[tier] == n


def test_each_kept_span_carries_its_tiers_threshold_and_names_its_tier_and_reason(default_tiers_run) -> None:
    traces, _sampler, kept = default_tiers_run
    tier_of = {t.trace_id: t.tier for t in traces}
    for trace_id, spans in kept.items():
        tier = tier_of[trace_id]
        for span in spans:
            assert th_of(span) == consistent.threshold_for(RATES[tier])
            assert span.trace_state == "ot=th:" + consistent.encode_th(consistent.threshold_for(RATES[tier]))
            assert attributes(span)["sampling.tier"] == tier
            assert attributes(span)["sampling.reason"] == "tier"


def test_without_a_budget_the_effective_rates_are_the_configured_ones(default_tiers_run) -> None:
    _traces, sampler, _kept = default_tiers_run
    assert sampler.effective_rates == [t.rate for t in DEFAULT_TIERS]


# -- forced keeps ------------------------------------------------------------------------------------------------


def test_every_trace_with_an_error_a_5xx_server_span_or_a_long_duration_is_kept_whatever_its_tier() -> None:
    # Every tier at rate 0: whatever is kept was kept by a forced rule, and the decoys (4xx, a 5xx on a client
    # span, 4.9 s, status OK) must not be.
    gen = TraceGenerator(seed="forced", spans=(1, 4), priority_on="any",
                         errors=0.02, http_5xx=0.02, long=0.02, decoys=True)
    traces = gen.traces(TRACES)
    settings = SamplingSettings(tiers=rates_of(DEFAULT_TIERS, 0.0), latency=gen.latency)
    sampler, kept = run(settings, traces, parts=2, root="first")
    forced = [t for t in traces if t.forced]
    assert {t.forced for t in forced} == {"error", "http_5xx", "latency"}
    assert {t.tier for t in forced} == {"P0", "P1", "P2"}
    assert set(kept) == {t.trace_id for t in forced}
    for trace in forced:
        spans = kept[trace.trace_id]
        assert {s.span_id for s in spans} == trace.span_ids
        for span in spans:
            assert span.trace_state == "ot=th:0"
            assert attributes(span)["sampling.reason"] == trace.forced
            assert attributes(span)["sampling.tier"] == trace.tier
    for reason in ("error", "http_5xx", "latency"):
        assert sampler.stats.kept_by_reason[reason] == sum(len(t.spans) for t in forced if t.forced == reason)


def test_each_forced_keep_can_be_switched_off() -> None:
    gen = TraceGenerator(seed="forced-off", spans=(2, 3), errors=0.3, http_5xx=0.3, long=0.3)
    traces = gen.traces(2000)
    settings = SamplingSettings(tiers=rates_of(DEFAULT_TIERS, 0.0), **NO_FORCED)
    _sampler, kept = run(settings, traces)
    assert kept == {}


# -- whole traces and late spans -------------------------------------------------------------------------------


def test_every_kept_trace_is_kept_whole_late_spans_included_and_late_spans_of_dropped_traces_are_dropped() -> None:
    gen = TraceGenerator(seed="whole", spans=(2, 6), priority_on="any", errors=0.01, http_5xx=0.01, long=0.01)
    traces = gen.traces(TRACES)
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(latency=gen.latency), clock)
    feed(sampler, clock, requests(traces, parts=3, root="last"), step=0.05)
    settle(sampler, clock)
    decided = sampler.decided(t.trace_id for t in traces)
    kept_ids = {t.trace_id for t, d in zip(traces, decided) if d}
    assert all(d is not None for d in decided)
    # Late spans (every fifth trace), flushed after the decision, within the decision cache.
    late_traces = traces[::5]
    late = [gen.late_span(t) for t in late_traces]
    for at in range(0, len(late_traces), 500):
        sampler.ingest(encode((t.resource, s) for t, s in zip(late_traces[at:at + 500], late[at:at + 500])))
    assert sampler.buffered_traces == 0, "a late span must follow its decision, not start a new trace"
    kept = collect(sampler)
    assert set(kept) == kept_ids
    for trace in traces:
        if trace.trace_id in kept_ids:
            spans = kept[trace.trace_id]
            assert sorted(s.span_id for s in spans) == sorted(trace.span_ids), "kept whole, each span once"
            assert len({s.trace_state for s in spans}) == 1, "every span of a trace carries the same threshold"
    late_kept = sum(1 for t in late_traces if t.trace_id in kept_ids)
    assert sampler.stats.late_kept_spans == late_kept
    assert sampler.stats.drops_by_reason["late_span_of_dropped_trace"] == len(late_traces) - late_kept
    assert 0 < late_kept < len(late_traces)


# -- consistency across samplers -------------------------------------------------------------------------------


def test_two_samplers_given_disjoint_halves_of_the_same_traces_decide_identically() -> None:
    gen = TraceGenerator(seed="halves", spans=(2, 5), priority_on="every")
    traces = gen.traces(TRACES)
    settings = SamplingSettings(**NO_FORCED)
    halves = [
        [Trace(t.trace_id, t.tier, t.spans[0::2], t.resource) for t in traces],  # has the roots
        [Trace(t.trace_id, t.tier, t.spans[1::2], t.resource) for t in traces],  # never sees a root
    ]
    samplers, outputs = [], []
    for half in halves:
        sampler, kept = run(settings, half)
        samplers.append(sampler)
        outputs.append(kept)
    ids = [t.trace_id for t in traces]
    first, second = (s.decided(ids) for s in samplers)
    assert all(d is not None for d in first)
    assert first == second
    assert set(outputs[0]) == set(outputs[1])
    assert 0.2 < len(outputs[0]) / len(traces) < 0.4  # 0.1 * 0.99 + 0.3 * 0.5 + 0.6 * 0.05 = 0.279
    for trace in traces:
        if trace.trace_id in outputs[0]:
            together = outputs[0][trace.trace_id] + outputs[1][trace.trace_id]
            assert sorted(s.span_id for s in together) == sorted(trace.span_ids)


# -- thresholds in tracestate ----------------------------------------------------------------------------------


def test_an_incoming_threshold_is_only_ever_raised_and_other_vendors_entries_survive() -> None:
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(), clock)
    gen = TraceGenerator(seed="tracestate")
    high_randomness = 0xF8 << 48  # kept at every rate used here
    p1 = consistent.threshold_for(0.5)  # "8"
    higher = consistent.parse_th("c")  # an earlier stage kept 1 in 4: more than P1 claims
    lower = consistent.parse_th("4")  # an earlier stage kept 3 in 4: less than P1 claims
    cases = {
        # name: (tier, incoming tracestate, forced, expected th)
        "higher is kept": ("P1", "congo=t61rcWkgMzE,ot=th:c", None, higher),
        "lower is raised": ("P1", "ot=th:4;rv:f8000000000000,rojo=00f067aa0ba902b7", None, p1),
        "forced keeps the incoming": ("P2", "ot=th:c,congo=t61rcWkgMzE", "error", higher),
        "no ot entry": ("P1", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", None, p1),
    }
    traces = {}
    for index, (name, (tier, tracestate, forced, _th)) in enumerate(cases.items()):
        trace = gen.trace(tier=tier, spans=3, forced=forced, trace_id=trace_id_with_randomness(high_randomness + index))
        for span in trace.spans[:2]:  # the third span carries no tracestate
            span.trace_state = tracestate
        traces[name] = trace
        sampler.ingest(spans_request(trace, trace.spans))
    settle(sampler, clock)
    kept = collect(sampler)
    assert lower < p1 < higher
    for name, (_tier, tracestate, _forced, expected) in cases.items():
        trace = traces[name]
        spans = {s.span_id: s for s in kept[trace.trace_id]}
        assert len(spans) == 3, name
        for original in trace.spans:
            out = spans[original.span_id].trace_state
            members = out.split(",")
            assert members[0].startswith("ot="), f"{name}: the modified entry moves first: {out}"
            assert th_of(spans[original.span_id]) == expected, f"{name}: {out}"
            others = [m for m in original.trace_state.split(",") if m and not m.startswith("ot=")]
            assert members[1:] == others, f"{name}: other vendors' entries survive in order: {out}"
            if "rv:" in original.trace_state:
                assert members[0] == "ot=th:8;rv:f8000000000000", f"{name}: rv is preserved: {out}"


def test_a_late_span_keeps_its_own_higher_incoming_threshold() -> None:
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(**NO_FORCED), clock)
    gen = TraceGenerator(seed="late-th")
    trace = gen.trace(tier="P1", spans=2, trace_id=trace_id_with_randomness(0xF8 << 48))
    sampler.ingest(spans_request(trace, trace.spans))
    settle(sampler, clock)
    late_higher, late_lower = gen.late_span(trace), gen.late_span(trace)
    late_higher.trace_state = "ot=th:c,congo=t61rcWkgMzE"
    late_lower.trace_state = "ot=th:4"
    sampler.ingest(spans_request(trace, [late_higher, late_lower]))
    spans = {s.span_id: s for s in collect(sampler)[trace.trace_id]}
    assert spans[late_higher.span_id].trace_state == "ot=th:c,congo=t61rcWkgMzE"
    assert th_of(spans[late_lower.span_id]) == consistent.threshold_for(0.5)
    assert th_of(spans[trace.spans[0].span_id]) == consistent.threshold_for(0.5)


def test_an_explicit_rv_in_tracestate_replaces_the_trace_id_randomness() -> None:
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(**NO_FORCED), clock)
    gen = TraceGenerator(seed="rv")
    kept_by_rv = gen.trace(tier="P2", spans=1, trace_id=trace_id_with_randomness(0))
    kept_by_rv.spans[0].trace_state = "ot=rv:ffffffffffffff"
    dropped_by_rv = gen.trace(tier="P2", spans=1, trace_id=trace_id_with_randomness((1 << 56) - 1))
    dropped_by_rv.spans[0].trace_state = "ot=rv:00000000000000"
    for trace in (kept_by_rv, dropped_by_rv):
        sampler.ingest(spans_request(trace, trace.spans))
    settle(sampler, clock)
    assert sampler.decided([kept_by_rv.trace_id, dropped_by_rv.trace_id])[1] is DROPPED
    assert set(collect(sampler)) == {kept_by_rv.trace_id}


# -- deadlines ---------------------------------------------------------------------------------------------------


def keep_all(**kwargs) -> SamplingSettings:
    return SamplingSettings(tiers=rates_of(DEFAULT_TIERS, 1.0), decision_wait=10.0, root_delay=2.0, **kwargs)


def undecided(sampler: TailSampler, trace: Trace) -> bool:
    return sampler.decided([trace.trace_id])[0] is None


def at(sampler: TailSampler, clock: FakeClock, now: float) -> None:
    clock.now = now
    sampler.tick(ALL)


def test_a_trace_is_decided_root_delay_after_its_root_arrives() -> None:
    clock = FakeClock(1000.0)
    sampler = TailSampler(keep_all(), clock)
    trace = TraceGenerator(seed=1).trace(spans=3)
    sampler.ingest(spans_request(trace, trace.spans))
    at(sampler, clock, 1001.999)
    assert undecided(sampler, trace)
    at(sampler, clock, 1002.0)
    assert not undecided(sampler, trace)
    assert set(collect(sampler)) == {trace.trace_id}


def test_without_a_root_a_trace_is_decided_decision_wait_after_its_first_span() -> None:
    clock = FakeClock(1000.0)
    sampler = TailSampler(keep_all(), clock)
    trace = TraceGenerator(seed=2).trace(spans=4, root=False)
    sampler.ingest(spans_request(trace, trace.spans[:1]))
    at(sampler, clock, 1006.0)
    sampler.ingest(spans_request(trace, trace.spans[1:]))  # later spans do not push the deadline back
    at(sampler, clock, 1009.999)
    assert undecided(sampler, trace)
    at(sampler, clock, 1010.0)
    assert not undecided(sampler, trace)
    assert len(collect(sampler)[trace.trace_id]) == 3


@pytest.mark.parametrize(("root_at", "decided_at"), [(1003.0, 1005.0), (1009.0, 1010.0)])
def test_a_late_root_brings_the_decision_forward_but_never_past_decision_wait(root_at: float,
                                                                              decided_at: float) -> None:
    clock = FakeClock(1000.0)
    sampler = TailSampler(keep_all(), clock)
    trace = TraceGenerator(seed=3).trace(spans=3)
    sampler.ingest(spans_request(trace, trace.spans[1:]))
    at(sampler, clock, root_at)
    sampler.ingest(spans_request(trace, trace.spans[:1]))
    at(sampler, clock, decided_at - 0.001)
    assert undecided(sampler, trace)
    at(sampler, clock, decided_at)
    assert not undecided(sampler, trace)


def test_a_trace_over_max_trace_bytes_is_decided_at_once() -> None:
    clock = FakeClock(1000.0)
    sampler = TailSampler(keep_all(max_trace_bytes=8192), clock)
    gen = TraceGenerator(seed=4)
    big = gen.trace(spans=40, root=False)
    for span in big.spans:
        span.attributes.append(kv("payload", "x" * 300))
    small = gen.trace(spans=2, root=False)
    sampler.ingest(spans_request(small, small.spans))
    sampler.ingest(spans_request(big, big.spans[:10]))  # ~3.5 KB: under the cap
    sampler.tick(ALL)
    assert undecided(sampler, big)
    sampler.ingest(spans_request(big, big.spans[10:]))  # past the cap, same instant
    sampler.tick(ALL)
    assert not undecided(sampler, big)
    assert undecided(sampler, small)
    assert sorted(s.span_id for s in collect(sampler)[big.trace_id]) == sorted(big.span_ids)


def test_no_trace_is_decided_before_or_after_its_deadline() -> None:
    # Batches of traces, each trace's spans over three requests a step apart; some roots first, some last,
    # some never. A trace's deadline: root_delay after its root or decision_wait after its first span.
    step = 0.25
    clock = FakeClock(1000.0)
    sampler = TailSampler(keep_all(), clock)
    gen = TraceGenerator(seed="deadlines", spans=(3, 5))
    deadline: dict[bytes, float] = {}
    bodies = []
    for batch in range(60):
        kind = ("first", "last", "none")[batch % 3]
        traces = gen.traces(50, root=kind != "none")
        first = 1000.0 + len(bodies) * step
        bodies += requests(traces, per_request=50, parts=3, root="first" if kind == "none" else kind)
        for t in traces:
            root = {"first": first, "last": first + 2 * step, "none": math.inf}[kind]
            deadline[t.trace_id] = min(first + 10.0, root + 2.0)
    decided_at: dict[bytes, float] = {}
    for body in bodies + [b""] * round(12.0 / step):
        sampler.ingest(body)
        clock.advance(step)
        sampler.tick(ALL)
        for trace_id in collect(sampler):
            decided_at.setdefault(trace_id, clock.now)
    assert decided_at == deadline


# -- tier rules --------------------------------------------------------------------------------------------------


def tiers_decided(tiers: tuple[Tier, ...], traces: list[Trace]) -> dict[bytes, str]:
    """The tier each trace was decided in (every tier at rate 1), read from the sampling.tier attribute."""
    _sampler, kept = run(SamplingSettings(tiers=rates_of(tiers, 1.0), **NO_FORCED), traces, parts=2)
    out = {}
    for trace in traces:
        names = {attributes(s)["sampling.tier"] for s in kept[trace.trace_id]}
        assert len(names) == 1
        out[trace.trace_id] = names.pop()
    return out


def test_a_resource_attribute_rule_puts_the_traces_of_those_services_in_its_tier() -> None:
    tiers = (Tier("shop", 1.0, Match(resource_attributes=(("service.name", ("checkout", "payments")),))),
             Tier("rest", 1.0))
    traces = TraceGenerator(seed="resource").traces(400)
    decided = tiers_decided(tiers, traces)
    for t in traces:
        expected = "shop" if dict(t.resource)["service.name"] in ("checkout", "payments") else "rest"
        assert decided[t.trace_id] == expected
    assert set(decided.values()) == {"shop", "rest"}


def test_span_name_and_span_kind_rules_match_any_span_of_the_trace() -> None:
    tiers = (Tier("named", 1.0, Match(span_names=("charge card",))),
             Tier("consumer", 1.0, Match(span_kinds=(5,))),  # SPAN_KIND_CONSUMER
             Tier("rest", 1.0))
    gen = TraceGenerator(seed="names")
    named, consumer, plain = gen.trace(spans=3), gen.trace(spans=3), gen.trace(spans=3)
    named.spans[2].name = "charge card"
    consumer.spans[1].kind = 5
    decided = tiers_decided(tiers, [named, consumer, plain])
    assert [decided[t.trace_id] for t in (named, consumer, plain)] == ["named", "consumer", "rest"]


def test_a_root_only_rule_ignores_a_matching_child_span() -> None:
    tiers = (Tier("vip", 1.0, Match(span_attributes=((PRIORITY, ("P0",)),), root_only=True)), Tier("rest", 1.0))
    gen = TraceGenerator(seed="root-only", mix={"P2": 1.0})
    on_root, on_child = gen.trace(spans=3), gen.trace(spans=3)
    on_root.spans[0].attributes.append(kv(PRIORITY, "P0"))
    on_child.spans[2].attributes.append(kv(PRIORITY, "P0"))
    decided = tiers_decided(tiers, [on_root, on_child])
    assert (decided[on_root.trace_id], decided[on_child.trace_id]) == ("vip", "rest")


def test_the_first_matching_tier_wins_whatever_order_its_spans_arrive_in() -> None:
    gen = TraceGenerator(seed="first-match", mix={"P2": 1.0}, services=("checkout",))
    tiers = (Tier("P0", 1.0, Match(span_attributes=((PRIORITY, ("P0",)),))),
             Tier("checkout", 1.0, Match(resource_attributes=(("service.name", ("checkout",)),))),
             Tier("P1", 1.0, Match(span_attributes=((PRIORITY, ("P1",)),))),
             Tier("rest", 1.0))
    both = [gen.trace(spans=4) for _ in range(2)]
    for trace, (p0_at, p1_at) in zip(both, [(3, 0), (0, 3)]):
        trace.spans[p0_at].attributes.append(kv(PRIORITY, "P0"))
        trace.spans[p1_at].attributes.append(kv(PRIORITY, "P1"))
    lone_p1 = gen.trace(spans=2, tier="P1")  # a checkout trace: "checkout" comes before "P1"
    other = gen.trace(spans=2, tier="P1", resource=(("service.name", "search"),))
    decided = tiers_decided(tiers, [*both, lone_p1, other])
    assert [decided[t.trace_id] for t in [*both, lone_p1, other]] == ["P0", "P0", "checkout", "P1"]


def test_every_condition_of_a_rule_must_hold_and_attribute_values_compare_as_text() -> None:
    tiers = (Tier("both", 1.0, Match(resource_attributes=(("deployment.environment", ("prod",)),),
                                     span_attributes=(("retry", ("3",)), ("canary", ("true",))))),
             Tier("rest", 1.0))
    gen = TraceGenerator(seed="and")
    prod = (("service.name", "checkout"), ("deployment.environment", "prod"))
    dev = (("service.name", "checkout"), ("deployment.environment", "dev"))
    match, wrong_resource, missing_one = gen.trace(resource=prod), gen.trace(resource=dev), gen.trace(resource=prod)
    for trace in (match, wrong_resource):
        trace.spans[0].attributes.extend([kv("retry", 3), kv("canary", True)])
    missing_one.spans[0].attributes.append(kv("retry", 3))
    decided = tiers_decided(tiers, [match, wrong_resource, missing_one])
    assert [decided[t.trace_id] for t in (match, wrong_resource, missing_one)] == ["both", "rest", "rest"]


# -- reconfiguration and shutdown --------------------------------------------------------------------------------


def test_new_tier_rules_apply_to_buffered_traces_and_nothing_buffered_is_lost() -> None:
    clock = FakeClock()
    old = SamplingSettings(tiers=(DEFAULT_TIERS[0], Tier("P1", 1.0, DEFAULT_TIERS[1].match), Tier("P2", 0.0)),
                           **NO_FORCED)
    sampler = TailSampler(old, clock)
    gen = TraceGenerator(seed="reload", spans=(2, 4), services=("checkout", "frontend"))
    traces = gen.traces(3000)
    for body in requests(traces, parts=2):
        sampler.ingest(body)
    before = (sampler.buffered_traces, sampler.buffered_bytes)
    assert before[0] == len(traces)
    new = SamplingSettings(tiers=(Tier("checkout", 1.0, Match(resource_attributes=(("service.name", ("checkout",)),))),
                                  Tier("rest", 0.0)), **NO_FORCED)
    sampler.reconfigure(new)
    assert (sampler.buffered_traces, sampler.buffered_bytes) == before
    late = [gen.late_span(t) for t in traces[:100]]  # spans arriving after the reload join their traces
    sampler.ingest(encode((t.resource, s) for t, s in zip(traces, late)))
    settle(sampler, clock)
    kept = collect(sampler)
    checkout = {t.trace_id for t in traces if dict(t.resource)["service.name"] == "checkout"}
    assert set(kept) == checkout
    for trace in traces:
        if trace.trace_id in checkout:
            assert sorted(s.span_id for s in kept[trace.trace_id]) == sorted(trace.span_ids)
            assert {attributes(s)["sampling.tier"] for s in kept[trace.trace_id]} == {"checkout"}
    stats = sampler.stats
    assert sum(stats.kept_traces.values()) + sum(stats.dropped_traces.values()) == len(traces)
    assert sum(stats.kept_spans.values()) + sum(stats.dropped_spans.values()) == stats.spans_in
    assert sampler.buffered_bytes == 0


def test_decide_all_at_shutdown_decides_every_buffered_trace() -> None:
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(), clock)
    gen = TraceGenerator(seed="shutdown", spans=(1, 5), errors=0.05)
    traces = gen.traces(2000) + gen.traces(500, root=False, spans=2)
    for body in requests(traces, parts=2):
        sampler.ingest(body)
    assert sampler.tick(ALL) == 0  # nothing is due yet
    assert sampler.decide_all() == len(traces)
    assert (sampler.buffered_traces, sampler.buffered_bytes) == (0, 0)
    assert sampler.next_deadline() is None
    decided = sampler.decided(t.trace_id for t in traces)
    assert all(d is not None for d in decided)
    kept = collect(sampler)
    assert set(kept) == {t.trace_id for t, d in zip(traces, decided) if d}
    for trace in traces:
        if trace.trace_id in kept:
            assert len(kept[trace.trace_id]) == len(trace.spans)
        if trace.forced == "error":
            assert trace.trace_id in kept
    stats = sampler.stats
    assert sum(stats.kept_spans.values()) + sum(stats.dropped_spans.values()) == stats.spans_in



def test_the_threshold_suffix_cache_stays_bounded_under_endless_incoming_thresholds_and_counts_what_it_forgets(
        monkeypatch) -> None:
    # A trace whose root carries a client's `ot=th:...` is kept at that threshold (or higher); its spans without
    # a tracestate get the cached suffix for it. Clients choose the thresholds: endless distinct ones.
    import random

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    import samplers.tail

    monkeypatch.setattr(samplers.tail, "MAX_SUFFIXES", 16)
    clock = FakeClock()
    sampler = TailSampler(SamplingSettings(decision_wait=1.0, root_delay=0.5, annotate=False,
                                           tiers=(Tier("all", 1.0),)), clock)
    rng = random.Random(5)
    spans = []
    for i in range(200):
        trace_id, root = rng.randbytes(16), rng.randbytes(8)
        spans.append(Span(trace_id=trace_id, span_id=root, name="root", trace_state=f"ot=th:{i + 1:04x}",
                          start_time_unix_nano=1, end_time_unix_nano=2))
        spans.append(Span(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root, name="child",
                          start_time_unix_nano=1, end_time_unix_nano=2))
    sampler.ingest(ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
                   .SerializeToString())
    clock.advance(2.0)
    sampler.tick(10_000)
    assert sum(sampler.stats.kept_traces.values()) > 100
    assert len(sampler._suffixes) <= 16
    assert sampler.suffixes_evicted > 0
