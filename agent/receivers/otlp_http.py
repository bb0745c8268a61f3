"""OTLP/HTTP receiver (aiohttp): POST /v1/traces and /v1/metrics in protobuf or JSON, any supported encoding.

Statuses follow the OTLP/HTTP spec: 200 (with partial_success when items were refused), 400 with a
google.rpc.Status for a payload that cannot be read, 413 past the size limit, 415 for a content type or
encoding we do not speak, 429 with Retry-After when admission control refuses. The body of a refused request
is drained for a bounded time (aiohttp's lingering close), so the client reads the status instead of a reset.
aiohttp's own request decompression is off: it inflates without a bound, and ours stops at `max_body_size`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import metrics

from agent.admission import Admission, Refused
from agent.config.schema import ReceiverAuthConfig, ReceiverTlsConfig
from agent.logs import kv
from agent.receivers import rpc_status
from agent.receivers import broken_framing
from agent.receivers.auth import BearerToken, aiohttp_middleware
from agent.receivers.internal_errors import InternalErrors, quiet_malformed_http
from agent.receivers.body import (
    BadEncoding,
    BodyTimeout,
    BodyTooLarge,
    decompress,
    expect_within,
    normalize_encoding,
    read_body,
    refuse_unsent_body,
)
from agent.receivers.http_connections import ConnectionGuard, GuardedSite, HttpConnectionSettings
from agent.pipeline import WireMetrics
from agent.receivers.otlp import METRICS, TRACES, Malformed, Signal, receiver_counters
from agent.receivers.tls import server_ssl_context, tls_mode
from exporters.otlp_json import encode_json

log = logging.getLogger("headwater.receivers.otlp_http")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_THREAD_THRESHOLD = 256 * 1024  # inflate bodies larger than this off the event loop
_LINGER_SECONDS = 2.0

Consume = Callable[[Any], Awaitable[None]]


class _Refusal(Exception):
    def __init__(self, http_status: int, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.http_status, self.code, self.message, self.retry_after = http_status, code, message, retry_after


class OtlpHttpReceiver:
    def __init__(
        self,
        endpoint: str,
        max_body_size: int,
        admission: Admission,
        consume_traces: Consume | None,
        consume_metrics: Consume | None,
        drain_timeout: float = 5.0,
        metrics_wire: WireMetrics | None = None,
        tls: ReceiverTlsConfig | None = None,
        auth: ReceiverAuthConfig | None = None,
        connections: HttpConnectionSettings | None = None,
    ) -> None:
        """`metrics_wire`: the metrics pipeline, to offer protobuf metrics requests as bytes first (see
        `Signal.deliver`); `consume_metrics` is then unused. `tls`, `auth`: their files are read by `start`.
        `connections`: timeouts and the connection bound."""
        self._connections = connections or HttpConnectionSettings()
        self._guard: ConnectionGuard | None = None
        self._metrics_wire = metrics_wire
        self._tls, self._auth = tls, auth
        host, _, port = endpoint.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._max_body = max_body_size
        self._admission = admission
        self._consumers: dict[str, Consume | None] = {"traces": consume_traces, "metrics": consume_metrics}
        self._drain_timeout = drain_timeout
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        meter = metrics.get_meter("headwater.receivers.otlp_http")
        self._accepted, self._refused_items, self._refused = receiver_counters(meter)
        self._internal_errors = InternalErrors("headwater.receivers.otlp_http", "http", ("traces", "metrics"))
        quiet_malformed_http()
        broken_framing.install()
        self.set_consumers(consume_traces, consume_metrics, metrics_wire)

    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self._port}"

    def set_consumers(self, consume_traces: Consume | None, consume_metrics: Consume | None,
                      metrics_wire: WireMetrics | None = None, max_body_size: int | None = None) -> None:
        """What later requests are handed to (a reload changed the pipelines), and their size limit."""
        self._consumers = {"traces": consume_traces, "metrics": consume_metrics}
        self._metrics_wire = metrics_wire
        if max_body_size is not None:
            self._max_body = max_body_size
        for name in (n for n, consume in self._consumers.items() if consume is not None):  # 0 from the start
            attrs = {"signal": name, "transport": "http"}
            self._accepted.add(0, attrs)
            self._refused_items.add(0, attrs)
            for status in ("400", "408", "413", "415", "429") + (("401",) if self._auth is not None else ()):
                self._refused.add(0, {**attrs, "status": status})

    def set_connections(self, connections: HttpConnectionSettings) -> None:
        """Timeouts and the connection bound from now on (a reload changed them); open connections keep the timer
        they run under until it next starts."""
        self._connections = connections
        if self._guard is not None:
            self._guard.settings = connections

    async def start(self) -> None:
        if self._runner is not None:
            return
        ssl_context = server_ssl_context(self._tls) if self._tls is not None else None
        self._guard = guard = ConnectionGuard(self._connections, "http")
        middlewares = [guard.middleware]
        if self._auth is not None:
            middlewares.append(aiohttp_middleware(BearerToken(self._auth.bearer_token_file), self._unauthenticated))
        app = web.Application(client_max_size=self._max_body, middlewares=middlewares)
        expect = expect_within(lambda: self._max_body)
        app.router.add_post("/v1/traces", lambda r: self._handle(r, TRACES), expect_handler=expect)
        app.router.add_post("/v1/metrics", lambda r: self._handle(r, METRICS), expect_handler=expect)
        app.router.add_route("*", "/v1/logs", self._logs)
        self._runner = web.AppRunner(app, access_log=None, lingering_time=_LINGER_SECONDS, auto_decompress=False,
                                    shutdown_timeout=self._drain_timeout)
        await self._runner.setup()
        site = GuardedSite(guard, self._runner, self._host, self._port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self.bound_port = site.port
        log.info("listening", **kv(receiver="otlp_http", endpoint=f"{self._host}:{self.bound_port}",
                                   tls=tls_mode(self._tls), auth="bearer" if self._auth is not None else "none"))

    async def shutdown(self, timeout: float) -> None:
        """Stop listening and let in-flight requests finish (within the drain timeout given at construction)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await asyncio.wait_for(runner.cleanup(), timeout=max(timeout, 0.1))

    def _unauthenticated(self, request: web.Request, reason: str) -> web.Response:
        signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(request.path)
        if signal is not None:
            self._refused.add(1, {"signal": signal, "transport": "http", "status": "401"})
        return _error_response(request, 401, rpc_status.UNAUTHENTICATED, reason)

    async def _logs(self, request: web.Request) -> web.Response:
        return _error_response(request, 404, rpc_status.UNIMPLEMENTED,
                               "logs are not handled by this agent yet: only /v1/traces and /v1/metrics are")

    async def _handle(self, request: web.Request, signal: Signal) -> web.StreamResponse:
        try:
            return await self._export(request, signal)
        except _Refusal as refusal:
            self._refused.add(1, {"signal": signal.name, "transport": "http", "status": str(refusal.http_status)})
            log.debug("refused", **kv(signal=signal.name, status=refusal.http_status, reason=refusal.message))
            response = _error_response(request, refusal.http_status, refusal.code, refusal.message, refusal.retry_after)
            if refusal.http_status == 408:
                response.force_close()  # what is left of a body that came too slowly is not read
            refuse_unsent_body(request, response)
            return response
        except web.HTTPException:  # aiohttp's own answers
            raise
        except ConnectionError:  # the client went away mid-request: nobody to answer, nothing to log as an error
            log.debug("client went away", **kv(signal=signal.name))
            return web.Response(status=400)
        except Exception as exc:  # a bug: logged once per kind and counted (agent.receivers.internal_errors)
            message = self._internal_errors.report(exc, signal.name)
            return _error_response(request, 500, rpc_status.INTERNAL, message)

    async def _export(self, request: web.Request, signal: Signal) -> web.Response:
        consume = self._consumers[signal.name]
        if consume is None:
            raise _Refusal(404, rpc_status.UNIMPLEMENTED,
                           f"no {signal.name} pipeline is configured in this agent (see pipelines.{signal.name})")
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            raise _Refusal(415, rpc_status.INVALID_ARGUMENT,
                           f"unsupported Content-Type {content_type!r}: expected {PROTOBUF} or {JSON}")
        encoding = normalize_encoding(request.headers.get("Content-Encoding"))
        if encoding is None:
            raise _Refusal(415, rpc_status.INVALID_ARGUMENT,
                           f"unsupported Content-Encoding {request.headers.get('Content-Encoding')!r}: "
                           "expected gzip, deflate, zstd or none")
        length = request.content_length
        if length is not None and length > self._max_body:
            raise _Refusal(413, rpc_status.INVALID_ARGUMENT,
                           f"body of {length} bytes exceeds the limit of {self._max_body} bytes (max_body_size)")
        try:
            lease = self._admission.acquire(length or 0, signal.name)
        except Refused as exc:
            raise _Refusal(429, rpc_status.UNAVAILABLE, str(exc), exc.retry_after) from None
        with lease:
            body = await self._read_body(request)
            lease.resize(len(body))
            try:
                if encoding != "identity" and len(body) > _THREAD_THRESHOLD:
                    data = await asyncio.to_thread(decompress, body, encoding, self._max_body)
                else:
                    data = decompress(body, encoding, self._max_body)
            except BodyTooLarge as exc:
                raise _Refusal(413, rpc_status.INVALID_ARGUMENT, f"{exc} (max_body_size)") from None
            except BadEncoding as exc:
                raise _Refusal(400, rpc_status.INVALID_ARGUMENT, str(exc)) from None
            lease.resize(len(body) + len(data))
            attrs = {"signal": signal.name, "transport": "http"}
            try:
                accepted, rejected = await signal.deliver(data, content_type == JSON, consume,
                                                          self._metrics_wire if signal is METRICS else None)
            except Malformed as exc:
                raise _Refusal(400, rpc_status.INVALID_ARGUMENT, str(exc)) from None
            if rejected.count:
                self._refused_items.add(rejected.count, attrs)
            if accepted:
                self._accepted.add(accepted, attrs)
        response = signal.response(rejected)
        if content_type == JSON:
            return web.Response(status=200, body=encode_json(response), content_type=JSON)
        return web.Response(status=200, body=response.SerializeToString(), content_type=PROTOBUF)

    async def _read_body(self, request: web.Request) -> bytes:
        """Read at most `max_body_size` bytes as sent, within `read_timeout`."""
        try:
            return await read_body(request.content, self._max_body, self._connections.read_timeout)
        except BodyTooLarge as exc:
            raise _Refusal(413, rpc_status.INVALID_ARGUMENT, f"{exc} (max_body_size)") from None
        except BodyTimeout as exc:
            raise _Refusal(408, rpc_status.DEADLINE_EXCEEDED, str(exc)) from None
        except HttpProcessingError as exc:  # malformed chunked framing (see agent.receivers.broken_framing)
            raise _Refusal(400, rpc_status.INVALID_ARGUMENT, f"malformed request body: {exc.message}") from None


def _error_response(request: web.Request, http_status: int, code: int, message: str,
                    retry_after: float | None = None) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if request.content_type == PROTOBUF:
        body = rpc_status.status(code, message, retry_after).SerializeToString()
        return web.Response(status=http_status, body=body, content_type=PROTOBUF, headers=headers)
    return web.Response(status=http_status, body=rpc_status.status_json(code, message), content_type=JSON, headers=headers)
