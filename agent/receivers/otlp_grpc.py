"""OTLP/gRPC receiver (grpc.aio): TraceService/Export and MetricsService/Export.

Requests arrive as raw bytes (no generated deserializer), so a malformed message gets INVALID_ARGUMENT with
a message instead of grpc's generic INTERNAL. Admission refusals are RESOURCE_EXHAUSTED with a RetryInfo in
`grpc-status-details-bin`, which OTLP clients honour. A signal without a pipeline is answered UNIMPLEMENTED
with a message naming the missing `pipelines` key (both services are always registered, so a reload can
give a signal its pipeline without a rebind). With `tls` the port is a TLS one (mutual TLS with a client CA);
with `auth` a call without the bearer token is UNAUTHENTICATED before its message is read (`agent.receivers.auth`).
Compressed messages are inflated here, not by grpc's core (`agent.receivers.grpc_compression`), so one that does
not inflate gets INVALID_ARGUMENT naming its compression instead of the core's INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import metrics

from agent.admission import Admission, Refused
from agent.config.schema import ReceiverAuthConfig, ReceiverTlsConfig
from agent.logs import kv
from agent.receivers import rpc_status
from agent.receivers.auth import BearerToken, GrpcBearerInterceptor
from agent.receivers.grpc_compression import SERVER_OPTIONS, CorruptCompression, MessageTooLarge, inflate_message
from agent.receivers.grpc_connections import GrpcConnectionSettings
from agent.receivers.internal_errors import InternalErrors
from agent.pipeline import WireMetrics
from agent.receivers.otlp import METRICS, TRACES, Malformed, Signal, receiver_counters
from agent.receivers.tls import grpc_server_credentials, tls_mode

log = logging.getLogger("headwater.receivers.otlp_grpc")

Consume = Callable[[Any], Awaitable[None]]


class OtlpGrpcReceiver:
    def __init__(
        self,
        endpoint: str,
        max_message_size: int,
        admission: Admission,
        consume_traces: Consume | None,
        consume_metrics: Consume | None,
        metrics_wire: WireMetrics | None = None,
        tls: ReceiverTlsConfig | None = None,
        auth: ReceiverAuthConfig | None = None,
        connections: GrpcConnectionSettings | None = None,
    ) -> None:
        """`metrics_wire`: the metrics pipeline, to offer metrics requests as bytes first (see
        `Signal.deliver`); `consume_metrics` is then unused. `tls`, `auth`: their files are read by `start`.
        `connections`: keepalive and connection ages."""
        self._connections = connections or GrpcConnectionSettings()
        self._metrics_wire = metrics_wire
        self._tls, self._auth = tls, auth
        self._endpoint = endpoint
        self._max_message = max_message_size
        self._admission = admission
        self._consumers: dict[str, Consume | None] = {}
        self._server: grpc.aio.Server | None = None
        self.bound_port: int | None = None
        meter = metrics.get_meter("headwater.receivers.otlp_grpc")
        self._accepted, self._refused_items, self._refused = receiver_counters(meter)
        self._internal_errors = InternalErrors("headwater.receivers.otlp_grpc", "grpc", ("traces", "metrics"))
        self.set_consumers(consume_traces, consume_metrics, metrics_wire)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def set_consumers(self, consume_traces: Consume | None, consume_metrics: Consume | None,
                      metrics_wire: WireMetrics | None = None) -> None:
        """What later RPCs are handed to (a reload changed the pipelines); a signal without one is answered
        UNIMPLEMENTED."""
        self._consumers = {TRACES.name: consume_traces, METRICS.name: consume_metrics}
        self._metrics_wire = metrics_wire
        for name in (n for n, consume in self._consumers.items() if consume is not None):  # 0 from the start
            attrs = {"signal": name, "transport": "grpc"}
            self._accepted.add(0, attrs)
            self._refused_items.add(0, attrs)
            statuses = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED") + (("UNAUTHENTICATED",) if self._auth else ())
            for status in statuses:
                self._refused.add(0, {**attrs, "status": status})

    async def start(self) -> None:
        if self._server is not None:
            return
        credentials = grpc_server_credentials(self._tls) if self._tls is not None else None
        interceptors = []
        if self._auth is not None:
            interceptors.append(GrpcBearerInterceptor(BearerToken(self._auth.bearer_token_file), self._unauthenticated))
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", self._max_message),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            *SERVER_OPTIONS,
            *self._connections.server_options(),
        ])
        handlers = []
        for signal in (TRACES, METRICS):  # both, always: a reload may give a signal its pipeline later
            handler = grpc.unary_unary_rpc_method_handler(self._method(signal))
            handlers.append(grpc.method_handlers_generic_handler(signal.grpc_service, {"Export": handler}))
        server.add_generic_rpc_handlers(tuple(handlers))
        if credentials is not None:
            port = server.add_secure_port(self._endpoint, credentials)
        else:
            port = server.add_insecure_port(self._endpoint)
        if port == 0:
            raise OSError(f"cannot listen on {self._endpoint} for OTLP/gRPC")
        self.bound_port = port
        await server.start()
        self._server = server
        host = self._endpoint.rpartition(":")[0]
        log.info("listening", **kv(receiver="otlp_grpc", endpoint=f"{host}:{port}", tls=tls_mode(self._tls),
                                   auth="bearer" if self._auth is not None else "none"))

    async def shutdown(self, timeout: float) -> None:
        """Stop taking new RPCs; let those in flight finish within `timeout`."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=timeout)

    def _unauthenticated(self, method: str, _reason: str) -> None:
        for signal in (TRACES, METRICS):
            if method == f"/{signal.grpc_service}/Export":
                self._refused.add(1, {"signal": signal.name, "transport": "grpc", "status": "UNAUTHENTICATED"})

    def _method(self, signal: Signal) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        attrs = {"signal": signal.name, "transport": "grpc"}

        async def export(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await handle(data, context)
            except grpc.aio.AbortError:  # a status set with context.abort
                raise
            except Exception as exc:  # a bug: logged once per kind and counted (agent.receivers.internal_errors)
                await context.abort(grpc.StatusCode.INTERNAL, self._internal_errors.report(exc, signal.name))
                raise AssertionError("unreachable: abort raises") from None

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            consume = self._consumers.get(signal.name)
            wire = self._metrics_wire if signal is METRICS else None
            if consume is None:
                self._refused.add(1, {**attrs, "status": "UNIMPLEMENTED"})
                await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                    f"no {signal.name} pipeline is configured in this agent (see pipelines.{signal.name})")
                raise AssertionError("unreachable: abort raises")
            try:
                lease = self._admission.acquire(len(data), signal.name)
            except Refused as exc:
                self._refused.add(1, {**attrs, "status": "RESOURCE_EXHAUSTED"})
                details = rpc_status.status(rpc_status.RESOURCE_EXHAUSTED, str(exc), exc.retry_after)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                    trailing_metadata=(("grpc-status-details-bin", details.SerializeToString()),))
                raise AssertionError("unreachable: abort raises")
            with lease:
                try:
                    message = await inflate_message(data, self._max_message)
                except MessageTooLarge as exc:
                    self._refused.add(1, {**attrs, "status": "RESOURCE_EXHAUSTED"})
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                    raise AssertionError("unreachable: abort raises")
                except CorruptCompression as exc:
                    self._refused.add(1, {**attrs, "status": "INVALID_ARGUMENT"})
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    raise AssertionError("unreachable: abort raises")
                if message.data is not data:
                    lease.resize(len(data) + len(message.data))
                try:
                    accepted, rejected = await signal.deliver(message.data, False, consume, wire)
                except Malformed as exc:
                    self._refused.add(1, {**attrs, "status": "INVALID_ARGUMENT"})
                    why = str(exc) if message.doubt is None else f"{message.doubt}; read uncompressed instead: {exc}"
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
                    raise AssertionError("unreachable: abort raises")
                if rejected.count:
                    self._refused_items.add(rejected.count, attrs)
                if accepted:
                    self._accepted.add(accepted, attrs)
            return signal.response(rejected).SerializeToString()

        return export
