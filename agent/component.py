"""The shapes every pipeline component has, after the Collector's component model.

They are Protocols, so exporters and samplers satisfy them without importing `agent`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@runtime_checkable
class Component(Protocol):
    """Two lifecycle calls. `shutdown` is safe without `start` and safe twice."""

    async def start(self) -> None: ...

    async def shutdown(self, timeout: float) -> None:
        """Stop taking data, deliver what is queued within `timeout` seconds, release resources."""
        ...


class TraceConsumer(Protocol):
    async def consume_traces(self, request: ExportTraceServiceRequest | bytes, spans: int | None = None) -> None:
        """Take a batch of spans: a request message, or its serialized bytes holding `spans` spans (what the
        sampler emits; a consumer counts them itself when `spans` is None).

        The caller keeps ownership and may hand the same request to other consumers: a consumer reads it and
        never mutates it. Returns once the consumer has taken responsibility for the data (queued it); it does
        not wait for delivery.
        """
        ...


class MetricConsumer(Protocol):
    async def consume_metrics(self, request: ExportMetricsServiceRequest) -> None:
        """Take a batch of metrics; same ownership rules as `TraceConsumer.consume_traces`."""
        ...


class Queued(Protocol):
    """An exporter that buffers data reports how many bytes it holds, for admission control."""

    @property
    def queued_bytes(self) -> int: ...
