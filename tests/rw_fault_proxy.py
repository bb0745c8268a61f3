"""A scriptable remote-write receiver for fault tests: a proxy in front of a real store that decodes every
request, records what it saw and what the sender was answered, and can fail on cue.

    with FaultProxy(prometheus.remote_write_url) as proxy:
        ...point the agent at proxy.url...
        proxy.down()                        # connections refused (open ones closed) until up()
        proxy.up()
        proxy.rule = answer_once(429, {"Retry-After": "3"})   # answer the next request itself
        proxy.latency = lambda in_flight: 0.3                 # seconds before forwarding, per request
        proxy.hold()                        # forward, then keep the answer back until release()
        proxy.wait_for(lambda exchanges: ..., timeout=20)
        proxy.accepted_samples()            # (series, timestamp) of every request the store accepted

It serves on 127.0.0.1 from its own thread and event loop, so synchronous tests (and an agent subprocess) can
use it. Bodies must be remote write 1.0 (snappy); the agent under test is configured with `protocol: rw1`.
A body that does not decode is answered 400 and recorded with no samples.

Each request becomes an `Exchange`: when it arrived and was answered (wall clock, `time.time()`), how many
requests were in flight with it, its samples, whether it was forwarded and what the store answered, what the
sender was answered, and the `phase` the test had set (e.g. "before kill"), so duplicates can be judged per
phase.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
import cramjam
from aiohttp import web
from google.protobuf.message import DecodeError

from exporters.remote_write import rw1
from tests.peers.server import free_port

Series = tuple[tuple[str, str], ...]
"""A series' label pairs, sorted by name."""

Sample = tuple[Series, int]
"""A series and a timestamp in milliseconds."""


@dataclass(frozen=True)
class Answer:
    """What a rule answers instead of forwarding."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Exchange:
    """One request the proxy received."""

    index: int
    arrived: float
    in_flight: int
    phase: str
    samples: list[Sample]
    forwarded: bool = False
    upstream_status: int | None = None
    status: int | None = None
    answered: float | None = None

    @property
    def stored(self) -> bool:
        """Whether the store accepted it (whatever the sender was answered)."""
        return self.upstream_status is not None and 200 <= self.upstream_status < 300


Rule = Callable[[Exchange], Answer | None]


def answer_once(status: int, headers: dict[str, str] | Callable[[], dict[str, str]] | None = None,
                body: bytes = b"", *, after: int = 0) -> Rule:
    """A rule answering `status` to one request carrying samples (the first after `after` such requests
    went through), forwarding every other. `headers` may be a callable, evaluated when it answers."""
    seen = 0
    fired = False

    def rule(exchange: Exchange) -> Answer | None:
        nonlocal seen, fired
        if fired or not exchange.samples:
            return None
        if seen < after:
            seen += 1
            return None
        fired = True
        return Answer(status, headers() if callable(headers) else dict(headers or {}), body)

    return rule


def series_key(labels: Iterable) -> Series:
    return tuple(sorted((label.name, label.value) for label in labels))


class FaultProxy:
    """Forwards POSTs to `upstream` (a remote-write URL), records each, and fails as told; a context manager."""

    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.rule: Rule | None = None
        self.latency: Callable[[int], float] | None = None
        self.phase = ""
        self._exchanges: list[Exchange] = []
        self._cond = threading.Condition()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._holding = False
        self._release: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/write"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rw-fault-proxy", daemon=True)
        self._thread.start()
        self._call(self._open_session())
        self.up()
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; safe without start and safe twice."""
        if self._thread is None or self._loop is None:
            return
        try:
            self.down()
            self._call(self._close_session())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._thread = self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults ---------------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop listening: new connections are refused, idle ones closed; requests in progress are answered
        first (held answers are released), so no answer the store gave is lost."""
        self._call(self._down())

    def up(self) -> None:
        """Listen again, on the same port."""
        self._call(self._up())

    def hold(self) -> None:
        """From now on, forward each request but keep its answer back until `release()` (or `down()`)."""
        self._call(self._hold())

    def release(self) -> None:
        self._call(self._release_held())

    # -- what it saw ----------------------------------------------------------------------------------------

    def exchanges(self) -> list[Exchange]:
        with self._cond:
            return list(self._exchanges)

    def wait_for(self, condition: Callable[[list[Exchange]], bool], timeout: float, what: str = "") -> list[Exchange]:
        """Block until `condition(exchanges)` holds; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self._exchanges):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the proxy did not see {what or 'what was expected'} within {timeout}s; "
                                         f"{len(self._exchanges)} requests: {self.summary()}")
                self._cond.wait(min(remaining, 0.1))
            return list(self._exchanges)

    def summary(self, last: int = 12) -> str:
        rows = [f"#{e.index} {e.phase or '-'} n={len(e.samples)} fwd={e.forwarded} up={e.upstream_status} "
                f"answer={e.status}" for e in self._exchanges[-last:]]
        return "; ".join(rows)

    # -- internals ------------------------------------------------------------------------------------------

    def _call(self, coroutine) -> object:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _open_session(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                              connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _up(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=256 << 20)
        app.router.add_post("/api/v1/write", self._handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=10.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _down(self) -> None:
        await self._release_held()
        self._holding = False
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _hold(self) -> None:
        self._holding = True
        self._release = asyncio.Event()

    async def _release_held(self) -> None:
        self._holding = False
        if self._release is not None:
            self._release.set()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            decoded = rw1.decode(body)
            samples = [(series_key(ts.labels), s.timestamp) for ts in decoded.timeseries for s in ts.samples]
            undecodable = None
        except (cramjam.DecompressionError, DecodeError, ValueError) as exc:
            samples, undecodable = [], f"rw_fault_proxy: not a remote write 1.0 body: {exc!r}"
        with self._cond:
            self._in_flight += 1
            exchange = Exchange(len(self._exchanges), time.time(), self._in_flight, self.phase, samples)
            self._exchanges.append(exchange)
            self._cond.notify_all()
        try:
            answer = await self._answer(request, body, exchange, undecodable)
        finally:
            with self._cond:
                self._in_flight -= 1
        with self._cond:
            exchange.status = answer.status
            exchange.answered = time.time()
            self._cond.notify_all()
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    async def _answer(self, request: web.Request, body: bytes, exchange: Exchange, undecodable: str | None) -> Answer:
        if undecodable is not None:
            return Answer(400, {}, undecodable.encode())
        rule = self.rule
        scripted = rule(exchange) if rule is not None else None
        if scripted is not None:
            return scripted
        if self.latency is not None:
            await asyncio.sleep(self.latency(exchange.in_flight))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "content-encoding", "x-prometheus-remote-write-version")}
        try:
            async with self._session.post(self.upstream, data=body, headers=headers) as upstream:
                answer = Answer(upstream.status, {}, await upstream.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Answer(502, {}, f"rw_fault_proxy: upstream unreachable: {exc!r}".encode())
        with self._cond:
            exchange.forwarded = True
            exchange.upstream_status = answer.status
            self._cond.notify_all()
        if self._holding and self._release is not None:
            await self._release.wait()
        return answer
