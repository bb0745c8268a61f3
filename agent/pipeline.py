"""The metrics pipeline: each batch a receiver accepted goes to every exporter it lists, in order.

The batch is shared, not copied: exporters read it and never mutate it (see agent.component). Traces take
their own pipeline through the sampler (agent.sampling.SampledTraces).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

Consume = Callable[[Any], Awaitable[None]]


class FanOut:
    def __init__(self, signal: str, consumers: Sequence[tuple[str, Consume]]) -> None:
        if not consumers:
            raise ValueError(f"the {signal} pipeline needs at least one exporter")
        self.signal = signal
        self._consumers = list(consumers)

    @property
    def exporter_names(self) -> list[str]:
        return [name for name, _ in self._consumers]

    async def consume(self, batch: Any) -> None:
        for _name, consume in self._consumers:
            await consume(batch)


class WireMetrics(Protocol):
    """What the OTLP receivers hand a protobuf metrics request to: its bytes first, parsed only if needed."""

    async def consume_wire(self, wire: bytes) -> int | None: ...

    async def consume_parsed(self, request: ExportMetricsServiceRequest, wire: bytes | None) -> None: ...


class MetricsFanOut(FanOut):
    """The metrics pipeline, able to take a request as the bytes it arrived in.

    Why: parsing a metrics request and translating it point by point costs ~15x what translating a request
    whose shape an exporter has seen before costs straight from its bytes (exporters/remote_write/shapes.py),
    and a node sends the same shape every interval. `consume_wire` asks every exporter first; only when all of
    them know the shape is the request taken that way (all or none: a request is never half delivered), else
    the receiver parses and validates it and calls `consume_parsed`, which lets the exporters learn it.
    Exporters without a wire path (`match_wire`) always take the parsed request.
    """

    def __init__(self, exporters: Sequence[tuple[str, Any]]) -> None:
        super().__init__("metrics", [(name, exporter.consume_metrics) for name, exporter in exporters])
        self._exporters = list(exporters)
        self._all_wire = all(hasattr(exporter, "match_wire") for _, exporter in exporters)

    async def consume_wire(self, wire: bytes) -> int | None:
        """The request's data points when every exporter took it from `wire`; None (nothing taken) otherwise."""
        if not self._all_wire:
            return None
        matched = []
        for _name, exporter in self._exporters:
            found = exporter.match_wire(wire)
            if found is None:
                return None
            matched.append(found)
        for (_name, exporter), (batch, _points) in zip(self._exporters, matched, strict=True):
            await exporter.consume_translated(batch)
        return matched[0][1]

    async def consume_parsed(self, request: ExportMetricsServiceRequest, wire: bytes | None) -> None:
        """Hand a parsed request to every exporter; `wire` (its bytes, when they hold exactly what it holds)
        lets exporters learn its shape."""
        for _name, exporter in self._exporters:
            if wire is not None and hasattr(exporter, "match_wire"):
                await exporter.consume_metrics(request, wire)
            else:
                await exporter.consume_metrics(request)
