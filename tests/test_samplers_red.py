"""samplers/red.py: RED series from span wire bytes, checked against counts computed from the spans themselves."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from samplers.red import RedAggregator, RedSeries, attribute_text
from samplers.settings import SamplingSettings, Tier
from samplers.tail import TailSampler
from samplers.wire import scan_request, span_facts

MS = 1_000_000
BUCKETS = (0.005, 0.010, 0.100)  # seconds
T0 = 1_750_000_000_000_000_000


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(name: str = "GET /a", kind: int = Span.SPAN_KIND_SERVER, error: bool = False, duration_ns: int = MS,
         attributes: dict | None = None, rng: random.Random = random.Random(1)) -> Span:
    return Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name=name, kind=kind,
                start_time_unix_nano=T0, end_time_unix_nano=T0 + duration_ns,
                attributes=[kv(k, v) for k, v in (attributes or {}).items()],
                status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET))


def request(*resources: tuple[dict, list[Span]]) -> bytes:
    out = ExportTraceServiceRequest()
    for attributes, spans in resources:
        rs = ResourceSpans()
        rs.resource.attributes.extend(kv(k, v) for k, v in attributes.items())
        rs.scope_spans.add().spans.extend(spans)
        out.resource_spans.append(rs)
    return out.SerializeToString()


def observe(red: RedAggregator, body: bytes) -> None:
    """What TailSampler.ingest does for every accepted span."""
    for resource_part, scopes in scan_request(body).groups:
        for _scope, spans in scopes:
            for s in spans:
                _t, _s, _p, _ts, name, kind, start, end, code = span_facts(s)
                red.observe(resource_part, s, name, kind, code, start, end)


def by_key(red: RedAggregator) -> dict[tuple, RedSeries]:
    return {(s.service_name, s.service_namespace, s.service_instance_id, s.span_name, s.kind, s.status_code,
             s.dimensions, s.overflow): s for s in red.snapshot()}


SHOP = {"service.name": "shop", "service.namespace": "prod", "service.instance.id": "node-1"}


def test_calls_duration_sum_and_buckets_per_service_name_kind_and_status():
    red = RedAggregator(BUCKETS)
    body = request((SHOP, [span(duration_ns=2 * MS), span(duration_ns=7 * MS), span(duration_ns=300 * MS),
                           span(error=True, duration_ns=50 * MS),
                           span("SELECT", Span.SPAN_KIND_CLIENT, duration_ns=MS)]))
    observe(red, body)
    observe(red, body)
    series = by_key(red)
    assert set(series) == {
        ("shop", "prod", "node-1", "GET /a", 2, 0, (), False),
        ("shop", "prod", "node-1", "GET /a", 2, 2, (), False),
        ("shop", "prod", "node-1", "SELECT", 3, 0, (), False),
    }
    ok = series[("shop", "prod", "node-1", "GET /a", 2, 0, (), False)]
    assert ok.calls == 6
    assert ok.bucket_counts == (2, 2, 0, 2)  # <=5ms, <=10ms, <=100ms, above
    assert ok.duration_sum == pytest.approx(2 * 0.309)
    error = series[("shop", "prod", "node-1", "GET /a", 2, 2, (), False)]
    assert (error.calls, error.bucket_counts, error.duration_sum) == (2, (0, 0, 2, 0), pytest.approx(0.1))


def test_a_duration_on_a_bound_counts_in_that_bucket_and_a_negative_one_as_zero():
    red = RedAggregator(BUCKETS)
    backwards = span(duration_ns=0)
    backwards.end_time_unix_nano = T0 - 5 * MS
    observe(red, request((SHOP, [span(duration_ns=5 * MS), span(duration_ns=5 * MS + 1), span(duration_ns=100 * MS),
                                 backwards])))
    [s] = red.snapshot()
    assert s.bucket_counts == (2, 1, 1, 0)
    assert s.duration_sum == pytest.approx((5 * MS + 5 * MS + 1 + 100 * MS) / 1e9)


def test_counts_match_a_seeded_workload_exactly():
    rng = random.Random(7)
    services = [{"service.name": f"svc-{i}", "service.instance.id": f"i-{i % 2}"} for i in range(4)]
    expected: Counter = Counter()
    red = RedAggregator(BUCKETS)
    for _ in range(40):
        resources = []
        for attributes in rng.sample(services, 2):
            spans = []
            for _ in range(rng.randrange(1, 30)):
                name, kind, error = rng.choice(["a", "b", "c"]), rng.randrange(6), rng.random() < 0.1
                spans.append(span(name, kind, error, rng.randrange(0, 200 * MS), rng=rng))
                service, instance = attributes["service.name"], attributes["service.instance.id"]
                expected[(service, instance, name, kind, 2 if error else 0)] += 1
            resources.append((attributes, spans))
        observe(red, request(*resources))
    got = {(s.service_name, s.service_instance_id, s.span_name, s.kind, s.status_code): s.calls for s in red.snapshot()}
    assert got == dict(expected)
    assert all(sum(s.bucket_counts) == s.calls for s in red.snapshot())


def test_resources_that_differ_only_in_other_attributes_share_their_series():
    red = RedAggregator(BUCKETS)
    observe(red, request(({**SHOP, "host.name": "a"}, [span()]), ({**SHOP, "host.name": "b"}, [span(), span()])))
    observe(red, request(({**SHOP, "process.pid": 7}, [span()])))
    [s] = red.snapshot()
    assert (s.service_name, s.service_namespace, s.service_instance_id, s.calls) == ("shop", "prod", "node-1", 4)
    assert red.cached_resources == 3


def test_two_instances_of_one_service_are_separate_series_whatever_order_they_arrive_in():
    red = RedAggregator(BUCKETS)
    one, two = {**SHOP, "service.instance.id": "node-1"}, {**SHOP, "service.instance.id": "node-2"}
    observe(red, request((one, [span()]), (two, [span(), span()]), (one, [span()])))
    observe(red, request((two, [span()])))
    calls = {s.service_instance_id: s.calls for s in red.snapshot()}
    assert calls == {"node-1": 2, "node-2": 3}


def test_a_resource_seen_again_in_new_bytes_objects_is_read_once():
    red = RedAggregator(BUCKETS)
    body = request((SHOP, [span()]))
    for _ in range(3):
        observe(red, bytes(bytearray(body)))  # equal content, a new object every time
    assert red.cached_resources == 1
    [s] = red.snapshot()
    assert s.calls == 3


def test_a_resource_without_service_attributes_is_counted_with_empty_identity():
    red = RedAggregator(BUCKETS)
    observe(red, request(({}, [span()])))
    [s] = red.snapshot()
    assert (s.service_name, s.service_namespace, s.service_instance_id, s.calls) == ("", "", "", 1)


def test_dimensions_come_from_the_span_then_the_resource_and_are_left_out_when_absent():
    red = RedAggregator(BUCKETS, dimensions=("http.route", "deployment.environment", "retry"))
    resource = {**SHOP, "deployment.environment": "prod-eu"}
    observe(red, request((resource, [
        span(attributes={"http.route": "/a/{id}"}),
        span(attributes={"http.route": "/a/{id}", "deployment.environment": "canary"}),
        span(attributes={"http.route": "/b", "retry": True}),
        span(attributes={"note": "mentions http.route in a value only"}),
    ]), ({"service.name": "other"}, [span(attributes={"http.route": "/a/{id}"}), span()])))
    got = {(s.service_name, s.dimensions): s.calls for s in red.snapshot()}
    assert got == {
        ("shop", (("http.route", "/a/{id}"), ("deployment.environment", "prod-eu"))): 1,
        ("shop", (("http.route", "/a/{id}"), ("deployment.environment", "canary"))): 1,
        ("shop", (("http.route", "/b"), ("deployment.environment", "prod-eu"), ("retry", "true"))): 1,
        ("shop", (("deployment.environment", "prod-eu"),)): 1,
        ("other", (("http.route", "/a/{id}"),)): 1,
        ("other", ()): 1,
    }


def test_one_dimension_reads_non_string_values_as_text():
    red = RedAggregator(BUCKETS, dimensions=("http.response.status_code",))
    observe(red, request((SHOP, [span(attributes={"http.response.status_code": 200}),
                                 span(attributes={"http.response.status_code": 200}),
                                 span(attributes={"http.response.status_code": 503})])))
    got = {s.dimensions: s.calls for s in red.snapshot()}
    assert got == {(("http.response.status_code", "200"),): 2, (("http.response.status_code", "503"),): 1}


def test_past_max_series_new_series_fold_into_their_service_overflow_series_and_totals_stay_exact():
    red = RedAggregator(BUCKETS, max_series=3)
    observe(red, request((SHOP, [span("a"), span("b")]), ({"service.name": "pay"}, [span("a")])))
    observe(red, request((SHOP, [span("c"), span("d"), span("a")]),  # c, d: refused, folded into shop's overflow
                         ({"service.name": "pay"}, [span("z")]),
                         ({"service.name": "late"}, [span("a"), span("b")])))  # first seen past the limit
    series = red.snapshot()
    regular = {(s.service_name, s.span_name): s.calls for s in series if not s.overflow}
    overflow = {s.service_name: s for s in series if s.overflow}
    assert regular == {("shop", "a"): 2, ("shop", "b"): 1, ("pay", "a"): 1}
    assert {name: s.calls for name, s in overflow.items()} == {"shop": 2, "pay": 1, "": 2}
    assert overflow["shop"].service_namespace == "prod" and overflow["shop"].span_name == ""
    assert red.overflow_spans == 5
    assert red.series_count == 6
    assert sum(s.calls for s in series) == 9  # every span counted somewhere


def test_memory_stays_bounded_under_unbounded_span_names_and_resources():
    red = RedAggregator(BUCKETS, max_series=50, max_resource_bytes=20_000)
    for i in range(300):
        observe(red, request(({"service.name": "svc", "service.instance.id": f"pod-{i}"},
                              [span(f"GET /item/{i}-{j}") for j in range(20)])))
    assert red.series_count <= 2 * 50 + 1
    assert red._resource_bytes <= 20_000
    assert red._index_entries <= 4 * 50 + 1024
    assert sum(s.calls for s in red.snapshot()) == 300 * 20


def test_the_index_is_rebuilt_after_it_is_cleared_without_losing_counts():
    red = RedAggregator(BUCKETS, max_series=1)  # index bound: 4 + 1024 entries
    body = request((SHOP, [span(f"n{i}") for i in range(1500)]))
    observe(red, body)
    observe(red, body)
    assert red._index_entries <= 4 + 1024
    assert sum(s.calls for s in red.snapshot()) == 3000


def test_the_sampler_hook_sees_every_span_before_sampling_late_spans_included():
    clock = [100.0]
    sampler = TailSampler(SamplingSettings(decision_wait=1.0, root_delay=0.5, keep_errors=False,
                                           keep_http_5xx=False, latency=0.0, tiers=(Tier("none", 0.0),)),
                          lambda: clock[0])
    red = RedAggregator(BUCKETS)
    sampler.span_observer = red
    rng = random.Random(3)
    root = span("root", rng=rng)
    sampler.ingest(request((SHOP, [root, span("child", rng=rng)])))
    clock[0] += 2
    sampler.tick()
    late = span("child", rng=rng)
    late.trace_id = root.trace_id
    sampler.ingest(request((SHOP, [late])))  # its trace was already dropped
    assert {s.span_name: s.calls for s in red.snapshot()} == {"root": 1, "child": 2}
    assert sampler.stats.kept_spans == {}


def test_snapshot_is_cumulative_and_independent_of_later_spans():
    red = RedAggregator(BUCKETS, clock=lambda: 1234.5)
    observe(red, request((SHOP, [span()])))
    first = red.snapshot()
    observe(red, request((SHOP, [span()])))
    assert first[0].calls == 1 and red.snapshot()[0].calls == 2
    assert red.created == 1234.5


@pytest.mark.parametrize("value, text", [("x", "x"), (True, "true"), (False, "false"), (-3, "-3"), (0.25, "0.25"),
                                         (b"\x00\xff", "AP8=")])
def test_attribute_values_become_text_as_remote_write_labels_do(value, text):
    assert attribute_text(value) == text


@pytest.mark.parametrize("kwargs, message", [
    ({"buckets": (0.1, 0.1)}, "strictly ascending"),
    ({"buckets": (0.0,)}, "positive"),
    ({"buckets": (float("inf"),)}, "positive, finite"),
    ({"buckets": BUCKETS, "dimensions": ("span.name",)}, "always a dimension"),
    ({"buckets": BUCKETS, "dimensions": ("a", "a")}, "unique"),
    ({"buckets": BUCKETS, "dimensions": ("",)}, "attribute names"),
    ({"buckets": BUCKETS, "max_series": 0}, "max_series"),
])
def test_bad_arguments_are_refused_with_a_message_that_names_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RedAggregator(**kwargs)


def test_no_buckets_is_a_single_overflow_bucket():
    red = RedAggregator(())
    observe(red, request((SHOP, [span(), span(duration_ns=10**12)])))
    [s] = red.snapshot()
    assert s.bucket_counts == (2,) and s.calls == 2


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_series_without_spans_for_idle_expiry_is_forgotten_and_frees_its_place():
    clock = Clock()
    red = RedAggregator(BUCKETS, max_series=2, idle_expiry=60.0, clock=clock)
    svc = {"service.name": "shop"}
    observe(red, request((svc, [span("a"), span("b")])))
    red.expire(clock.now)
    clock.now += 30
    observe(red, request((svc, [span("a")])))  # "a" stays busy, "b" goes idle
    assert red.expire(clock.now) == 0
    clock.now += 31
    assert red.expire(clock.now) == 1
    assert [s.span_name for s in red.snapshot()] == ["a"]
    assert red.expired_series == 1
    observe(red, request((svc, [span("c")])))  # the freed place takes a new series, not the overflow
    names = {s.span_name: s for s in red.snapshot()}
    assert set(names) == {"a", "c"} and not any(s.overflow for s in red.snapshot())
    assert names["c"].start_time == clock.now and names["a"].start_time == 0.0


def test_a_series_that_comes_back_after_expiry_starts_from_zero_and_spans_after_expiry_are_counted():
    clock = Clock()
    red = RedAggregator(BUCKETS, idle_expiry=10.0, clock=clock)
    body = request(({"service.name": "shop"}, [span("a")]))
    observe(red, body)
    red.expire(clock.now)
    clock.now += 11
    assert red.expire(clock.now) == 1 and red.snapshot() == []
    observe(red, body)
    observe(red, body)  # the index was cleared with the series: the same bytes find the new cell
    (series,) = red.snapshot()
    assert series.calls == 2 and series.start_time == clock.now


def test_idle_overflow_series_expire_too():
    clock = Clock()
    red = RedAggregator(BUCKETS, max_series=1, idle_expiry=10.0, clock=clock)
    observe(red, request(({"service.name": "shop"}, [span("a"), span("b")])))
    assert red.overflow_spans == 1
    red.expire(clock.now)
    clock.now += 11
    assert red.expire(clock.now) == 2
    assert red.series_count == 0 and red.overflow_spans == 0
