"""What the tail sampler is told: plain frozen values (seconds, bytes, rates), built by the agent from config."""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20


@dataclass(frozen=True)
class Match:
    """A tier's condition: every listed part must hold (AND); a part lists accepted values (OR).

    Attribute values are compared as text (`str(value)`, booleans as `true`/`false`). `root_only` makes the
    span conditions apply to the root span alone; otherwise any span of the trace may match.
    """

    resource_attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    span_attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    span_names: tuple[str, ...] = ()
    span_kinds: tuple[int, ...] = ()
    root_only: bool = False

    @property
    def is_catch_all(self) -> bool:
        return not (self.resource_attributes or self.span_attributes or self.span_names or self.span_kinds)


@dataclass(frozen=True)
class Tier:
    name: str
    rate: float
    match: Match = field(default_factory=Match)
    # Optional: resource/root-span attribute names (and the pseudo-key `root.name`) whose combination gets
    # its own rate, rare combinations higher, while the tier's average rate holds.
    key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"tier {self.name!r}: rate must be within 0..1, got {self.rate}")


DEFAULT_TIERS = (
    Tier("P0", 0.99, Match(span_attributes=(("sampling.priority", ("P0",)),))),
    Tier("P1", 0.50, Match(span_attributes=(("sampling.priority", ("P1",)),))),
    Tier("P2", 0.05),
)


@dataclass(frozen=True)
class SamplingSettings:
    decision_wait: float = 10.0          # longest wait after a trace's first span
    root_delay: float = 2.0              # wait after the root span arrives
    max_memory: int = 256 * MiB          # live bytes of all buffered traces
    max_trace_bytes: int = 8 * MiB       # a trace this large is decided at once
    decision_cache_bytes: int = 32 * MiB  # remembered decisions, so late spans follow them
    max_spans_per_second: float = 0.0    # budget for kept spans; 0 = rates as configured
    keep_errors: bool = True             # a span with status ERROR keeps its trace
    keep_http_5xx: bool = True           # a server span with HTTP status >= 500 keeps its trace
    latency: float = 5.0                 # a trace longer than this is kept; 0 = off
    annotate: bool = True                # kept spans carry sampling.tier / sampling.reason attributes
    tiers: tuple[Tier, ...] = DEFAULT_TIERS

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError("at least one tier is needed; the last catches every trace")
        if not self.tiers[-1].match.is_catch_all:
            raise ValueError(f"the last tier ({self.tiers[-1].name!r}) must have no conditions: it catches the rest")
        if self.root_delay > self.decision_wait:
            raise ValueError("root_delay must not exceed decision_wait")
