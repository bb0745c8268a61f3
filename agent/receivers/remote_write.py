"""The gateway's remote-write receiver (aiohttp): `POST /api/v1/write` in any format Headwater speaks.

A node agent sends the compact format here; other senders (Prometheus, vmagent, another collector) may send
remote write 1.0 or 2.0, or VictoriaMetrics' zstd variant. Whatever arrives is decoded into the series model
and forwarded through the metrics pipeline's remote-write exporters, which write what their store speaks.

Statuses, as the remote-write specs prescribe: 204 with the `X-Prometheus-Remote-Write-*-Written` headers
(a 2.0 sender reads them to know the write was counted), 400 for a body that is not what its headers say,
413 past `max_body_size` (as sent or decompressed), 415 for a Content-Type or Content-Encoding no format here
speaks, 409 when a compact sender refers to a session this gateway no longer holds (restart, eviction,
another gateway behind a load balancer: the sender starts a new one and resends), 429 with Retry-After when
admission control refuses. The compact session state moves on only once the batch is accepted, so a refused
request can be resent as it is.

Handshakes: `GET /api/v1/write?get_headwater_compact_version=1` and `?get_vm_proto_version=1` answer `1`,
which is how a sender on `protocol: auto` learns it may send compact or vm; so does a POST with either query
(vmagent 1.89 to 1.115 asks with a POST and an empty body), which writes nothing.

With `tls` it serves HTTPS (mutual TLS with a client CA); with `auth` every request, handshakes included,
needs the bearer token, and one without is answered 401 before its body is read (`agent.receivers.auth`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import metrics

from agent.admission import Admission, Refused
from agent.config.schema import ReceiverAuthConfig, ReceiverTlsConfig
from agent.logs import kv
from agent.receivers import broken_framing
from agent.receivers.auth import BearerToken, aiohttp_middleware
from agent.receivers.internal_errors import InternalErrors, quiet_malformed_http
from agent.receivers.otlp import receiver_counters
from agent.receivers.tls import server_ssl_context, tls_mode
from agent.receivers.body import BodyTimeout, BodyTooLarge, expect_within, read_body, refuse_unsent_body
from agent.receivers.http_connections import ConnectionGuard, GuardedSite, HttpConnectionSettings
from exporters.remote_write.compact import SessionLost
from exporters.remote_write.compact_session import CompactSessions
from exporters.remote_write.encoding import DecodeError, TooLarge, decompress
from exporters.remote_write.formats import detect, new_decoder
from exporters.remote_write.series import SampleBatch

log = logging.getLogger("headwater.receivers.remote_write")

ConsumeSeries = Callable[[SampleBatch], Awaitable[None]]
_THREAD_THRESHOLD = 256 * 1024  # decode bodies larger than this off the event loop
_LINGER_SECONDS = 2.0


class _Refusal(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class RemoteWriteReceiver:
    """Gateway mode.

        receiver = RemoteWriteReceiver("127.0.0.1:9201", 32 << 20, admission, pipeline.consume_series)
        await receiver.start(); ...; await receiver.shutdown(5.0)
    """

    def __init__(
        self,
        endpoint: str,
        max_body_size: int,
        admission: Admission,
        consume: ConsumeSeries,
        *,
        sessions: CompactSessions | None = None,
        drain_timeout: float = 5.0,
        tls: ReceiverTlsConfig | None = None,
        auth: ReceiverAuthConfig | None = None,
        connections: HttpConnectionSettings | None = None,
    ) -> None:
        """`tls`, `auth`: their files are read by `start`. `connections`: timeouts and the connection bound."""
        self._tls, self._auth = tls, auth
        self._connections = connections or HttpConnectionSettings()
        self._guard: ConnectionGuard | None = None
        host, _, port = endpoint.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._max_body = max_body_size
        self._admission = admission
        self._consume = consume
        self.sessions = sessions or CompactSessions()
        self._decoders = {p: new_decoder(p) for p in ("rw1", "vm", "rw2")}
        # A decoder's label cache is not thread-safe and large bodies decode in a worker thread: one decode per
        # format at a time (CPU-bound under the GIL anyway), waited for without blocking the loop.
        self._decode_locks = {p: asyncio.Lock() for p in self._decoders}
        self._drain_timeout = drain_timeout
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()  # compact sessions advance one request at a time
        self.bound_port: int | None = None
        meter = metrics.get_meter("headwater.receivers.remote_write")
        self._accepted, _, self._refused = receiver_counters(meter)
        self._internal_errors = InternalErrors("headwater.receivers.remote_write", "remote_write", ("metrics",))
        quiet_malformed_http()
        broken_framing.install()
        self._requests = meter.create_counter(
            "headwater_gateway_requests", description="Remote-write requests the gateway accepted, by wire format")
        meter.create_observable_counter(
            "headwater_gateway_decoder_evictions", unit="{entry}", callbacks=[self._observe_decoder_evictions],
            description="Label sets the rw1, vm and rw2 decoders dropped from their caches to stay within their "
            "byte bound, by wire format")
        attrs = {"signal": "metrics", "transport": "remote_write"}
        self._accepted.add(0, attrs)  # 0 from the start
        for status in ("400", "408", "409", "413", "415", "429") + (("401",) if auth is not None else ()):
            self._refused.add(0, {**attrs, "status": status})

    def _observe_decoder_evictions(self, _options: object) -> list[metrics.Observation]:
        return [metrics.Observation(getattr(decoder, "evicted", 0), {"protocol": protocol})
                for protocol, decoder in self._decoders.items()]

    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self._port}"

    def set_consume(self, consume: ConsumeSeries, max_body_size: int | None = None) -> None:
        """Where later requests go (a reload changed the metrics pipeline's exporters), and their size limit."""
        self._consume = consume
        if max_body_size is not None:
            self._max_body = max_body_size

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
        self._guard = guard = ConnectionGuard(self._connections, "remote_write")
        middlewares = [guard.middleware]
        if self._auth is not None:
            middlewares.append(aiohttp_middleware(BearerToken(self._auth.bearer_token_file), self._unauthenticated))
        app = web.Application(client_max_size=self._max_body, middlewares=middlewares)
        app.router.add_post("/api/v1/write", self._handle, expect_handler=expect_within(lambda: self._max_body))
        app.router.add_get("/api/v1/write", self._handshake)
        self._runner = web.AppRunner(app, access_log=None, lingering_time=_LINGER_SECONDS, auto_decompress=False,
                                     shutdown_timeout=self._drain_timeout)
        await self._runner.setup()
        site = GuardedSite(guard, self._runner, self._host, self._port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self.bound_port = site.port
        log.info("listening", **kv(receiver="remote_write", endpoint=f"{self._host}:{self.bound_port}",
                                   tls=tls_mode(self._tls), auth="bearer" if self._auth is not None else "none"))

    async def shutdown(self, timeout: float) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await asyncio.wait_for(runner.cleanup(), timeout=max(timeout, 0.1))

    def _unauthenticated(self, _request: web.Request, reason: str) -> web.Response:
        self._refused.add(1, {"signal": "metrics", "transport": "remote_write", "status": "401"})
        return web.Response(status=401, text=reason + "\n")

    @staticmethod
    def _is_handshake(request: web.Request) -> bool:
        query = request.query
        return query.get("get_headwater_compact_version") == "1" or query.get("get_vm_proto_version") == "1"

    async def _handshake(self, request: web.Request) -> web.Response:
        if self._is_handshake(request):
            return web.Response(status=200, text="1")
        return web.Response(status=405, text="POST remote-write requests here", headers={"Allow": "POST"})

    async def _handle(self, request: web.Request) -> web.Response:
        if self._is_handshake(request):
            # vmagent 1.89-1.115 asks with a POST and an empty body; VictoriaMetrics answers whatever the method.
            return web.Response(status=200, text="1")
        try:
            return await self._write(request)
        except _Refusal as refusal:
            self._refused.add(1, {"signal": "metrics", "transport": "remote_write", "status": str(refusal.status)})
            log.debug("refused", **kv(status=refusal.status, reason=refusal.message))
            headers = {}
            if refusal.retry_after is not None:
                headers["Retry-After"] = str(max(1, math.ceil(refusal.retry_after)))
            response = web.Response(status=refusal.status, text=refusal.message + "\n", headers=headers)
            if refusal.status == 408:
                response.force_close()  # what is left of a body that came too slowly is not read
            refuse_unsent_body(request, response)
            return response
        except web.HTTPException:  # aiohttp's own answers
            raise
        except ConnectionError:  # the client went away mid-request: nobody to answer, nothing to log as an error
            log.debug("client went away")
            return web.Response(status=400)
        except Exception as exc:  # a bug: logged once per kind and counted (agent.receivers.internal_errors)
            return web.Response(status=500, text=self._internal_errors.report(exc, "metrics") + "\n")

    async def _write(self, request: web.Request) -> web.Response:
        try:
            protocol, codec = detect(request.headers)
        except DecodeError as exc:
            raise _Refusal(415, str(exc)) from None
        length = request.content_length
        if length is not None and length > self._max_body:
            raise _Refusal(413, f"body of {length} bytes exceeds the limit of {self._max_body} bytes (max_body_size)")
        try:
            lease = self._admission.acquire(length or 0, "metrics")
        except Refused as exc:
            raise _Refusal(429, str(exc), exc.retry_after) from None
        with lease:
            body = await self._read_body(request)
            lease.resize(len(body))
            try:
                if len(body) > _THREAD_THRESHOLD:
                    data = await asyncio.to_thread(decompress, codec, body, self._max_body)
                else:
                    data = decompress(codec, body, self._max_body)
            except TooLarge as exc:
                raise _Refusal(413, f"{exc} (max_body_size)") from None
            except DecodeError as exc:
                raise _Refusal(400, str(exc)) from None
            lease.resize(len(body) + len(data))
            if protocol == "compact":
                async with self._lock:  # decode, hand over and commit as one step per session order
                    batch, commit = self._decode_compact(data, request)
                    await self._accept(batch)
                    commit()
            else:
                try:
                    decoder = self._decoders[protocol]
                    async with self._decode_locks[protocol]:
                        if len(data) > _THREAD_THRESHOLD:
                            batch = await asyncio.to_thread(decoder.decode, data, request.headers)
                        else:
                            batch = decoder.decode(data, request.headers)
                except DecodeError as exc:
                    raise _Refusal(400, f"{protocol}: {exc}") from None
                await self._accept(batch)
        self._requests.add(1, {"protocol": protocol})
        return web.Response(status=204, headers={
            "X-Prometheus-Remote-Write-Samples-Written": str(len(batch.values)),
            "X-Prometheus-Remote-Write-Histograms-Written": str(len(batch.histograms)),
            "X-Prometheus-Remote-Write-Exemplars-Written": str(len(batch.exemplars)),
        })

    def _decode_compact(self, data: bytes, request: web.Request) -> tuple[SampleBatch, Callable[[], None]]:
        try:
            return self.sessions.decode(data, request.headers)
        except SessionLost as exc:
            raise _Refusal(409, str(exc)) from None
        except DecodeError as exc:
            raise _Refusal(400, str(exc)) from None

    async def _accept(self, batch: SampleBatch) -> None:
        """Hand the batch to the pipeline; admission already holds its bytes."""
        await self._consume(batch)
        if batch.samples:
            self._accepted.add(batch.samples, {"signal": "metrics", "transport": "remote_write"})

    async def _read_body(self, request: web.Request) -> bytes:
        """Read at most `max_body_size` bytes as sent, within `read_timeout`."""
        try:
            return await read_body(request.content, self._max_body, self._connections.read_timeout)
        except BodyTooLarge as exc:
            raise _Refusal(413, f"{exc} (max_body_size)") from None
        except BodyTimeout as exc:
            raise _Refusal(408, str(exc)) from None
        except HttpProcessingError as exc:  # malformed chunked framing (see agent.receivers.broken_framing)
            raise _Refusal(400, f"malformed request body: {exc.message}") from None
