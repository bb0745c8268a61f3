"""A scripted VictoriaMetrics >= 1.88 remote-write receiver, for tests of the `vm` format and its handshake.

Debian packages VictoriaMetrics 1.79 only (tests/peers/victoriametrics.py runs it), which predates the
`vm` protocol, and nothing newer is packaged, so the newer behaviour is scripted here from VictoriaMetrics'
source (app/vminsert/main.go, lib/protoparser/promremotewrite/stream/streamparser.go at v1.88.0):

- on its write paths, a request whose query has a non-empty `get_vm_proto_version` is the handshake,
  whatever the method: answered 200 with the body `1`, nothing written;
- any other request to a write path is a write: `Content-Encoding: zstd` means a zstd body, anything else
  snappy (the `X-VictoriaMetrics-Remote-Write-Version` header is not consulted; it is recorded), then a
  remote write 1.0 `WriteRequest`; answered 204, with no `X-Prometheus-Remote-Write-*-Written` headers;
- a body that does not decompress or decode is answered 400 with the reason, and nothing is kept.

What arrived is kept per request (`received`) for assertions. Later versions try the other codec when the
named one fails (1.95: zstd then snappy; 1.96 on: both ways); 1.88 does not, and neither does this receiver.

    async with VmReceiver() as receiver:
        ...POST to receiver.remote_write_url...
        assert receiver.samples == 3
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web

from exporters.remote_write.encoding import DecodeError, decompress
from exporters.remote_write.series import Labels, SampleBatch
from exporters.remote_write.vm import Rw1Decoder

MAX_INSERT_REQUEST_SIZE = 32 << 20
"""VictoriaMetrics' default `-maxInsertRequestSize`: the bound on a decompressed body."""

WRITE_PATHS = ("/api/v1/write", "/prometheus/api/v1/write")


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted write: the codec it was decoded with, the headers it came with, and what it held."""

    codec: str
    headers: dict[str, str]
    batch: SampleBatch


class VmReceiver:
    """The receiver, on 127.0.0.1 at a free port; an async context manager (the site is stopped on exit)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.handshakes = 0
        self.refused: list[str] = []
        self._decoder = Rw1Decoder()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def series(self) -> set[Labels]:
        """Every series that arrived with float samples or histograms."""
        return {labels for r in self.received for labels in (*r.batch.labels, *r.batch.histogram_labels)}

    @property
    def samples(self) -> int:
        """Float samples and histograms accepted, as VictoriaMetrics would count rows."""
        return sum(r.batch.samples for r in self.received)

    async def _handle(self, request: web.Request) -> web.Response:
        if request.query.get("get_vm_proto_version", ""):
            self.handshakes += 1
            return web.Response(text="1")
        body = await request.read()
        codec = "zstd" if request.headers.get("Content-Encoding") == "zstd" else "snappy"
        try:
            batch = self._decoder.decode(decompress(codec, body, MAX_INSERT_REQUEST_SIZE), request.headers)
        except DecodeError as exc:
            reason = f"cannot decompress or unmarshal {codec}-encoded request with length {len(body)}: {exc}"
            self.refused.append(reason)
            return web.Response(status=400, text=reason)
        self.received.append(Received(codec, dict(request.headers), batch))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_INSERT_REQUEST_SIZE)
        for path in WRITE_PATHS:
            app.router.add_route("*", path, self._handle)
        # aiohttp would otherwise decode `Content-Encoding: zstd` itself (or refuse it without backports.zstd);
        # the body must reach the handler as sent, as it reaches VictoriaMetrics.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
