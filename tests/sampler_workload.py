"""Seeded traces for the tail-sampler tests, and the plumbing to run a sampler on them with a fake clock.

    gen = TraceGenerator(seed=7, mix={"P0": 0.1, "P1": 0.3, "P2": 0.6}, spans=(2, 4), errors=0.01)
    traces = gen.traces(100_000)
    clock = FakeClock()
    sampler = TailSampler(settings, clock)
    feed(sampler, clock, requests(traces, per_request=500, parts=2, root="last"), step=0.1)
    settle(sampler, clock)
    kept = collect(sampler)                       # trace ID -> the kept spans, parsed with protobuf

A trace's tier is set by the `sampling.priority` span attribute (P0, P1; absent for P2), on the root span, on
every span, or on one span chosen at random. A trace may be forced: an error span, an HTTP 5xx server span, or
a duration past the latency threshold; `decoys` adds near misses (4xx, 5xx on a client span, 4.9 s) to plain
traces. Requests are built with the opentelemetry-proto messages, one ResourceSpans per resource.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from samplers import consistent

PRIORITY = "sampling.priority"
DEFAULT_MIX = {"P0": 0.1, "P1": 0.3, "P2": 0.6}
SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
INTERNAL = Span.SPAN_KIND_INTERNAL
ERROR = Status.STATUS_CODE_ERROR
BASE_NS = 1_700_000_000 * 10**9
MS = 10**6
SECOND = 10**9
FORCED = ("error", "http_5xx", "latency")


def kv(key: str, value: object) -> KeyValue:
    """One attribute, typed as protobuf would carry it."""
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def pad(span: Span, size: int) -> None:
    """Add a `payload` attribute so the span serializes to `size` bytes (or as near as it can)."""
    missing = size - span.ByteSize()
    if missing < 16:
        return
    span.attributes.append(kv("payload", "x" * (missing - 14)))
    span.attributes[-1].value.string_value = "x" * max(0, missing - 14 - (span.ByteSize() - size))


def attributes(message) -> dict[str, object]:
    """A span's (or resource's) attributes as a dict of plain values."""
    out: dict[str, object] = {}
    for a in message.attributes:
        which = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, which) if which else None
    return out


def th_of(span: Span) -> int | None:
    """The `ot=th` threshold in a span's tracestate, or None."""
    return consistent.parse_ot(span.trace_state)[0]


@dataclass
class Trace:
    trace_id: bytes
    tier: str                                   # "P0", "P1" or "P2" (what the generator meant)
    spans: list[Span]                           # the root first, when the trace has one
    resource: tuple[tuple[str, object], ...] = (("service.name", "frontend"),)
    forced: str | None = None                   # "error", "http_5xx", "latency": what must keep it

    @property
    def span_ids(self) -> set[bytes]:
        return {s.span_id for s in self.spans}


@dataclass
class TraceGenerator:
    """Seeded traces; every knob is a probability or a range, all draws from one `random.Random(seed)`."""

    seed: int | str = 0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    spans: tuple[int, int] = (1, 3)             # spans per trace, inclusive range
    priority_on: str = "root"                   # "root", "every" or "any" (one span at random)
    errors: float = 0.0                         # share of traces forced by an ERROR span
    http_5xx: float = 0.0                       # ... by a server span with HTTP status >= 500
    long: float = 0.0                           # ... by a duration over `latency`
    latency: float = 5.0                        # seconds: the threshold the sampler is configured with
    decoys: bool = False                        # plain traces carry near misses of the forced rules
    services: Sequence[str] = ("frontend", "checkout", "payments", "search")
    span_bytes: int = 0                         # pad each span to about this many serialized bytes (0: no padding)
    rng: random.Random = field(init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._tiers = list(self.mix)
        self._weights = [self.mix[t] for t in self._tiers]

    # -- ids -------------------------------------------------------------------------------------------

    def trace_id(self) -> bytes:
        while True:
            value = self.rng.getrandbits(128)
            if value >> 64 and value & ((1 << 64) - 1):
                return value.to_bytes(16, "big")

    def span_id(self) -> bytes:
        return (self.rng.getrandbits(64) | 1).to_bytes(8, "big")

    # -- traces ----------------------------------------------------------------------------------------

    def trace(self, tier: str | None = None, spans: int | None = None, forced: str | None = None,
              resource: tuple[tuple[str, object], ...] | None = None, root: bool = True,
              trace_id: bytes | None = None) -> Trace:
        """One trace. Unset arguments are drawn: tier from `mix`, span count from `spans`, forced cause from
        `errors` / `http_5xx` / `long`. `root=False` leaves the root span out (it never arrives)."""
        rng = self.rng
        if tier is None:
            tier = rng.choices(self._tiers, self._weights)[0]
        if spans is None:
            spans = rng.randint(*self.spans)
        if forced is None:
            draw = rng.random()
            if draw < self.errors:
                forced = "error"
            elif draw < self.errors + self.http_5xx:
                forced = "http_5xx"
            elif draw < self.errors + self.http_5xx + self.long:
                forced = "latency"
        if resource is None:
            resource = (("service.name", rng.choice(self.services)),)
        trace_id = trace_id or self.trace_id()
        start = BASE_NS + self._count * MS
        self._count += 1
        duration = int((self.latency + 1.0) * SECOND) if forced == "latency" else 50 * MS
        root_id = self.span_id()
        out = [Span(trace_id=trace_id, span_id=root_id, name="GET /api", kind=SERVER,
                    start_time_unix_nano=start, end_time_unix_nano=start + (duration if spans == 1 else 50 * MS))]
        for i in range(1, spans):
            child_start = start + i * MS
            # A long trace is long across spans: its last child ends well after the root.
            end = start + duration if (forced == "latency" and i == spans - 1) else child_start + 10 * MS
            out.append(Span(trace_id=trace_id, span_id=self.span_id(), parent_span_id=root_id,
                            name=f"op-{i}", kind=CLIENT if i % 2 else INTERNAL,
                            start_time_unix_nano=child_start, end_time_unix_nano=end))
        if not root:
            out = out[1:]  # the root never arrives: its children are what the sampler sees
        if tier != "P2":
            if self.priority_on == "every":
                targets = out
            elif self.priority_on == "any":
                targets = [rng.choice(out)]
            else:
                targets = out[:1]
            for span in targets:
                span.attributes.append(kv(PRIORITY, tier))
        if forced == "error":
            rng.choice(out).status.code = ERROR
        elif forced == "http_5xx":
            status = rng.choice([500, 502, 503, 504, 599])
            old_key = rng.random() < 0.5
            value = str(status) if rng.random() < 0.25 else status  # some SDKs send it as text
            out[0].kind = SERVER
            out[0].attributes.append(kv("http.status_code" if old_key else "http.response.status_code", value))
        elif self.decoys and not forced:
            self._decorate(out)
        if self.span_bytes:
            for span in out:
                pad(span, self.span_bytes)
        return Trace(trace_id, tier, out, resource, forced)

    def _decorate(self, spans: list[Span]) -> None:
        """Near misses of the forced rules, none of which may keep a trace."""
        rng = self.rng
        draw = rng.random()
        if draw < 0.1:
            spans[0].attributes.append(kv("http.response.status_code", rng.choice([200, 404, 499])))
        elif draw < 0.2 and len(spans) > 1:
            spans[1].kind = CLIENT  # a 5xx the server answered to us is not our failure
            spans[1].attributes.append(kv("http.response.status_code", 503))
        elif draw < 0.3:
            spans[0].end_time_unix_nano = spans[0].start_time_unix_nano + int((self.latency - 0.1) * SECOND)
        elif draw < 0.4:
            rng.choice(spans).status.code = Status.STATUS_CODE_OK

    def traces(self, n: int, **kwargs) -> list[Trace]:
        return [self.trace(**kwargs) for _ in range(n)]

    def late_span(self, trace: Trace, name: str = "late") -> Span:
        """A new child span of `trace` (no tier attribute), as a span flushed after the decision would be."""
        parent = trace.spans[0].span_id
        start = trace.spans[0].start_time_unix_nano + 20 * MS
        span = Span(trace_id=trace.trace_id, span_id=self.span_id(), parent_span_id=parent, name=name,
                    kind=INTERNAL, start_time_unix_nano=start, end_time_unix_nano=start + MS)
        trace.spans.append(span)
        return span


# -- requests ----------------------------------------------------------------------------------------------


def encode(items: Iterable[tuple[tuple[tuple[str, object], ...], Span]], scope: str = "headwater.tests") -> bytes:
    """An ExportTraceServiceRequest holding these (resource, span) pairs, one ResourceSpans per resource."""
    by_resource: dict[tuple, list[Span]] = {}
    for resource, span in items:
        by_resource.setdefault(resource, []).append(span)
    request = ExportTraceServiceRequest()
    for resource, spans in by_resource.items():
        request.resource_spans.append(ResourceSpans(
            resource=Resource(attributes=[kv(k, v) for k, v in resource]),
            scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=spans)],
        ))
    return request.SerializeToString()


def spans_request(trace: Trace, spans: Iterable[Span]) -> bytes:
    return encode((trace.resource, s) for s in spans)


def requests(traces: Sequence[Trace], *, per_request: int = 500, parts: int = 1, root: str = "first") -> list[bytes]:
    """Requests carrying these traces, `per_request` traces at a time. With `parts` > 1 each trace's spans are
    split over that many consecutive requests. `root="first"` sends the root in the first part, `"last"` in
    the last (children first, as when the root span ends last)."""
    out = []
    for at in range(0, len(traces), per_request):
        batch = traces[at:at + per_request]
        chunks: list[list] = [[] for _ in range(parts)]
        for trace in batch:
            spans = trace.spans if root == "first" else trace.spans[::-1]
            n = len(spans)
            for i, span in enumerate(spans):
                chunks[i * parts // n].append((trace.resource, span))
        out.extend(encode(chunk) for chunk in chunks if chunk)
    return out


# -- running a sampler -------------------------------------------------------------------------------------


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


ALL = 1 << 62  # a tick limit that decides everything due


def feed(sampler, clock: FakeClock, bodies: Iterable[bytes], *, step: float = 0.0) -> None:
    """Ingest each request, then move the clock by `step` and decide what is due."""
    for body in bodies:
        sampler.ingest(body)
        clock.advance(step)
        sampler.tick(ALL)


def settle(sampler, clock: FakeClock) -> None:
    """Let every buffered trace reach its deadline and decide it."""
    clock.advance(sampler.settings.decision_wait + 1.0)
    sampler.tick(ALL)
    assert sampler.buffered_traces == 0


def parse_output(outputs: Iterable[tuple[bytes, int]]) -> Iterator[tuple[dict[str, object], Span]]:
    """(resource attributes, span) for every span in take_output()'s requests; checks each request's count."""
    for body, count in outputs:
        request = ExportTraceServiceRequest.FromString(body)
        seen = 0
        for rs in request.resource_spans:
            resource = attributes(rs.resource)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    seen += 1
                    yield resource, span
        assert seen == count, f"a request says it holds {count} spans but holds {seen}"


def collect(sampler, into: dict[bytes, list[Span]] | None = None) -> dict[bytes, list[Span]]:
    """The sampler's output so far, as trace ID -> kept spans (parsed with protobuf)."""
    out = {} if into is None else into
    for _resource, span in parse_output(sampler.take_output()):
        out.setdefault(span.trace_id, []).append(span)
    return out


def by_tier(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    out: dict[str, list[Trace]] = {}
    for trace in traces:
        out.setdefault(trace.tier, []).append(trace)
    return out
