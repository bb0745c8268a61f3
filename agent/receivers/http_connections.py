"""Connection management for the aiohttp receivers (OTLP/HTTP, the gateway's remote write): a slow or idle
client cannot hold a connection, and past `max_connections` a new client is told to come back later.

aiohttp bounds header sizes and closes keep-alive connections, but nothing stops a client that sends its
request head one byte a minute (a slowloris), and it accepts connections until the process runs out of
descriptors. So each accepted connection is wrapped in a small protocol that sits between the transport and
aiohttp's handler and follows the connection through three phases:

- idle (just accepted, or answered and kept alive): closed after `idle_timeout` without a byte;
- head (the first byte of a request arrived): the whole head must arrive within `read_header_timeout`, or the
  connection is closed (as Go's http.Server does, without an answer: nothing was parsed to answer);
- request (aiohttp handed the request to a handler): no timer here; the handler reads the body under
  `read_timeout` (`agent.receivers.body.read_body`) and answers 408 when it runs out.

Past `max_connections` open connections a new one is not handed to aiohttp: it is answered
`503 Service Unavailable` with `Retry-After` once its request head arrived (a client that is still writing
when the answer comes back would otherwise see a reset), its input is read and dropped for a short while after
the answer, and it is closed. Those connections are counted apart and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry import metrics

_HEAD_END = b"\r\n\r\n"
_MAX_REFUSED_HEAD = 64 * 1024  # bytes of a refused client's head looked through for its end; then answered anyway
_REFUSED_LINGER_SECONDS = 2.0  # reading a refused client's leftovers after the 503, so its close is not a reset


@dataclass(frozen=True)
class HttpConnectionSettings:
    """How long a client may take and how many may be connected, for one aiohttp listener.

        HttpConnectionSettings(read_header_timeout=10.0, read_timeout=60.0, idle_timeout=60.0,
                               max_connections=4096, retry_after=1.0)

    Durations in seconds; `retry_after` is what a 503 past `max_connections` asks the client to wait.
    """

    read_header_timeout: float = 10.0
    read_timeout: float = 60.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("read_header_timeout", "read_timeout", "idle_timeout", "retry_after"):
            value = getattr(self, name)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name}: expected a duration above 0 seconds, found {value!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections: expected at least 1, found {self.max_connections!r}")


class ConnectionGuard:
    """One per listener: wraps aiohttp's protocol factory and counts the connections it serves.

        guard = ConnectionGuard(settings, "http")
        app = web.Application(middlewares=[guard.middleware])
        site = GuardedSite(guard, runner, host, port)
    """

    def __init__(self, settings: HttpConnectionSettings, transport: str) -> None:
        self.settings = settings
        self._served: set[_GuardedConnection] = set()
        self._refused: set[_GuardedConnection] = set()
        self._by_handler: dict[Any, _GuardedConnection] = {}
        attrs = {"transport": transport}
        self._attrs = attrs
        meter = metrics.get_meter("headwater.receivers.connections")
        self._open = meter.create_up_down_counter(
            "headwater_receiver_open_connections",
            description="Connections a receiver serves now (refused ones past max_connections excluded), by transport")
        self._closed = meter.create_counter(
            "headwater_receiver_closed_connections",
            description="Connections a receiver closed or refused itself, by transport and reason (idle_timeout, "
            "read_header_timeout, max_connections)")
        for reason in ("idle_timeout", "read_header_timeout", "max_connections"):
            self._closed.add(0, {**attrs, "reason": reason})
        self._open.add(0, attrs)

    @property
    def open_connections(self) -> int:
        """Connections handed to aiohttp and not yet closed."""
        return len(self._served)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedConnection(self, inner)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Marks the connection busy while a handler runs (no timer: the body's is the handler's), idle after."""
        connection = self._by_handler.get(request.protocol)
        if connection is not None:
            connection.request_started()
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.request_finished()

    def close_refused(self) -> None:
        """Close the connections answered 503 (aiohttp closes its own on shutdown)."""
        for connection in list(self._refused):
            connection.close()

    # Called by the connections.
    def _admit(self, connection: _GuardedConnection, handler: Any) -> bool:
        if len(self._served) >= self.settings.max_connections:
            self._refused.add(connection)
            self._closed.add(1, {**self._attrs, "reason": "max_connections"})
            return False
        self._served.add(connection)
        self._by_handler[handler] = connection
        self._open.add(1, self._attrs)
        return True

    def _gone(self, connection: _GuardedConnection, handler: Any) -> None:
        if connection in self._served:
            self._served.discard(connection)
            self._by_handler.pop(handler, None)
            self._open.add(-1, self._attrs)
        self._refused.discard(connection)

    def _timed_out(self, reason: str) -> None:
        self._closed.add(1, {**self._attrs, "reason": reason})


_IDLE, _HEAD, _REQUEST, _REFUSING = "idle", "head", "request", "refusing"


class _GuardedConnection(asyncio.Protocol):
    """Sits between the transport and aiohttp's handler: passes everything through and keeps the phase timer."""

    def __init__(self, guard: ConnectionGuard, inner_factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._inner_factory = inner_factory
        self._inner: Any = None
        self._transport: asyncio.Transport | None = None
        self._phase = _IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._head = bytearray()  # a refused client's head, until its end is seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        inner = self._inner_factory()
        if not self._guard._admit(self, inner):
            self._phase = _REFUSING
            self._arm(self._guard.settings.read_header_timeout, None)
            return
        self._inner = inner
        inner.connection_made(transport)
        self._arm(self._guard.settings.idle_timeout, "idle_timeout")

    def data_received(self, data: bytes) -> None:
        if self._phase == _REFUSING:
            self._refusing_data(data)
            return
        if self._phase == _IDLE and data:
            self._phase = _HEAD
            self._arm(self._guard.settings.read_header_timeout, "read_header_timeout")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None  # a refused client finished writing: close
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard._gone(self, self._inner)
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._transport = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._phase = _REQUEST
        self._disarm()

    def request_finished(self) -> None:
        if self._transport is None:
            return
        self._phase = _IDLE
        self._arm(self._guard.settings.idle_timeout, "idle_timeout")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _arm(self, seconds: float, reason: str | None) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str | None) -> None:
        self._timer = None
        if self._transport is None:
            return
        if reason is not None:
            self._guard._timed_out(reason)
        self._transport.close()

    def _refusing_data(self, data: bytes) -> None:
        """Past max_connections: look for the end of the head, answer 503 once, then drop what follows."""
        if self._head is None or self._transport is None:
            return  # answered: dropping leftovers until the client closes or the linger runs out
        self._head += data
        if _HEAD_END not in self._head and len(self._head) < _MAX_REFUSED_HEAD:
            return
        self._head = None  # type: ignore[assignment]
        retry_after = max(1, math.ceil(self._guard.settings.retry_after))
        message = b"too many connections to this receiver (max_connections); retry later\n"
        self._transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (retry_after, len(message), message))
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._arm(_REFUSED_LINGER_SECONDS, None)


class GuardedSite(web.TCPSite):
    """`web.TCPSite` whose connections go through a `ConnectionGuard` (TLS, if given, sits under the guard)."""

    def __init__(self, guard: ConnectionGuard, runner: web.BaseRunner, host: str, port: int, **kwargs: Any) -> None:
        kwargs.setdefault("backlog", 1024)  # a burst of clients waits in the queue instead of retrying SYNs
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        self._guard.close_refused()

    @property
    def bound_port(self) -> int:
        return self.port

