"""A receiver that records who called and how (headers, client certificate), for the outgoing TLS and
credentials tests: Prometheus and an OTLP collector do not show the headers they were sent.

It serves from its own thread and event loop, so synchronous tests (an agent subprocess) and asyncio tests
alike can use it:

    with RecordingReceiver(ssl_context=server_context(server, client_ca=ca), accept=only("Bearer new")) as rx:
        ...point an exporter at rx.url + "/api/v1/write"...
        rx.wait_for(lambda r: r.accepted, timeout=10)

`POST /api/v1/write` (remote write 1.0: answered 204) and `POST /v1/traces` (OTLP/HTTP: answered 200 with an
empty response). `accept(headers)` decides; a refused request is answered 401 with a body that echoes the
`Authorization` header it got, as some real receivers do, so the agent's handling of such an error (logs,
`/status`) is tested against the worst case.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse


@dataclass(frozen=True)
class Arrival:
    path: str
    headers: dict[str, str]
    client_subject: str  # the client certificate's CN, "" without one
    body_bytes: int
    accepted: bool


def only(*authorizations: str) -> Callable[[Mapping[str, str]], bool]:
    """Accept requests whose Authorization header is one of `authorizations`."""
    return lambda headers: headers.get("Authorization") in authorizations


class RecordingReceiver:
    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 accept: Callable[[Mapping[str, str]], bool] = lambda _headers: True) -> None:
        self._ssl = ssl_context
        self._accept = accept
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://127.0.0.1:{self.port}"

    @property
    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def set_accept(self, accept: Callable[[Mapping[str, str]], bool]) -> None:
        self._accept = accept

    def wait_for(self, condition: Callable[[Arrival], bool], timeout: float) -> Arrival:
        """The first arrival for which `condition` holds; AssertionError with what came if none within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for arrival in self.arrivals:
                if condition(arrival):
                    return arrival
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching request within {timeout}s; arrivals: {self.arrivals}")
            time.sleep(0.05)

    def __enter__(self) -> RecordingReceiver:
        self._thread = threading.Thread(target=self._run, name="recording-receiver", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop = self._loop
        if loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test by __enter__
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/write", self._handle)
        app.router.add_post("/v1/traces", self._handle)
        self._runner = web.AppRunner(app, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        subject = ""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_object is not None:
            peer = ssl_object.getpeercert()
            for rdn in (peer or {}).get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        subject = value
        headers = dict(request.headers)
        accepted = self._accept(headers)
        with self._lock:
            self._arrivals.append(Arrival(request.path, headers, subject, len(body), accepted))
        if not accepted:
            return web.Response(status=401, text=f"invalid credentials: {headers.get('Authorization', '(none)')}")
        if request.path == "/v1/traces":
            return web.Response(status=200, body=ExportTraceServiceResponse().SerializeToString(),
                                content_type="application/x-protobuf")
        return web.Response(status=204)
