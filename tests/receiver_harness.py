"""Runs the OTLP receivers in-process with recording consumers (test doubles of our own consumer interface),
so bad-input tests can check statuses and that accepted data was neither lost nor duplicated."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from agent.admission import Admission
from agent.config.schema import ReceiverAuthConfig, ReceiverTlsConfig
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from agent.receivers.otlp_http import OtlpHttpReceiver
from samplers.tail import Ingested
from samplers.wire import frame_request, scan_request


@dataclass
class Recorder:
    batches: list[Any] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def consume(self, batch: Any) -> Ingested | None:
        """Traces arrive as request bytes and are answered like the sampler does; metrics as messages."""
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(batch, bytes):
            scanned = scan_request(batch)
            self.batches.append(ExportTraceServiceRequest.FromString(frame_request(scanned.groups)))
            return Ingested(scanned.spans, scanned.rejected, scanned.reject_message)
        self.batches.append(batch)
        return None

    def span_names(self) -> list[str]:
        return [s.name for b in self.batches for rs in b.resource_spans for ss in rs.scope_spans for s in ss.spans]


def spans_request(*names: str, trace_id: bytes = b"\x01" * 16) -> ExportTraceServiceRequest:
    spans = [Span(trace_id=trace_id, span_id=bytes([i + 1]) * 8, name=n,
                  attributes=[KeyValue(key="k", value=AnyValue(string_value=n))]) for i, n in enumerate(names)]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])


@contextlib.asynccontextmanager
async def http_receiver(max_body_size: int = 1 << 20, max_inflight: int = 64 << 20, metrics: bool = True,
                        tls: ReceiverTlsConfig | None = None, auth: ReceiverAuthConfig | None = None,
                        admission: Admission | None = None,
                        ) -> AsyncIterator[tuple[str, Recorder, Recorder, Admission]]:
    """Yields the base URL (https:// with `tls`), the recorders of traces and metrics, and the admission."""
    traces, metric_rec = Recorder(), Recorder()
    admission = admission or Admission(max_inflight, retry_after=2.0)
    receiver = OtlpHttpReceiver("127.0.0.1:0", max_body_size, admission, traces.consume,
                                metric_rec.consume if metrics else None, drain_timeout=1.0, tls=tls, auth=auth)
    await receiver.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{receiver.bound_port}", traces, metric_rec, admission
    finally:
        await receiver.shutdown(1.0)


@contextlib.asynccontextmanager
async def grpc_receiver(max_message_size: int = 1 << 20, max_inflight: int = 64 << 20,
                        tls: ReceiverTlsConfig | None = None, auth: ReceiverAuthConfig | None = None,
                        admission: Admission | None = None) -> AsyncIterator[tuple[str, Recorder, Admission]]:
    traces = Recorder()
    admission = admission or Admission(max_inflight, retry_after=2.0)
    receiver = OtlpGrpcReceiver("127.0.0.1:0", max_message_size, admission, traces.consume, None, tls=tls, auth=auth)
    await receiver.start()
    try:
        yield f"127.0.0.1:{receiver.bound_port}", traces, admission
    finally:
        await receiver.shutdown(1.0)
