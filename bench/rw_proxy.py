"""A byte-counting remote-write proxy: what each sender puts on the wire, forwarded unchanged to a receiver.

    python bench/rw_proxy.py [--port 0] [--route prometheus=http://127.0.0.1:9090 ...]

Why a proxy: bytes per sample must be measured the same way for every sender (Headwater, Prometheus agent
mode, vmagent), outside of them, on the HTTP bodies they really send, and without changing what the
receiver sees. Each sender gets its own path prefix: a request to `/<name>/<rest>?<query>` is forwarded, any
method, headers and body as they came (minus hop-by-hop headers), to `<route of name>/<rest>?<query>`, and
the receiver's answer goes back as it came, status, headers and body (not decompressed), so negotiation
(415s, `X-Prometheus-Remote-Write-*-Written`, a VictoriaMetrics version probe) works through it.

Per name it counts requests, answers by status, errors (answers outside 2xx, and 502s for a receiver that
could not be reached), body bytes as sent (`wire_bytes`) and decompressed (`uncompressed_bytes`; snappy's
length comes from its preamble, zstd bodies are decompressed). Remote write 1.0 bodies (snappy, version
0.1.0) are decoded with `exporters.remote_write.rw1.decode`, and VictoriaMetrics' zstd bodies (an rw1 body
inside) the same way after zstd, to count samples, series entries, histograms, exemplars, staleness markers
and the scrapers' own synthetic series (`up`, `scrape_*`), split into those the receiver accepted (2xx) and
not, and decoded samples per second of their timestamps (`samples_by_second`, Unix seconds): a benchmark
window can then count the samples produced in it, whenever the sender's batching happened to ship them.
Other formats (rw2, Headwater's compact) are counted in bytes only: `undecoded_requests` says how many.

Routes come from `--route name=url` or at run time from `PUT /_routes/<name>` (body: the base URL), so one
proxy serves a whole benchmark. `GET /_stats` answers every counter as JSON. It prints `{"port": N}` on
stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import cramjam
import zstandard
from aiohttp import web
from google.protobuf.message import DecodeError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from exporters.remote_write import rw1
from exporters.remote_write.proto.remote_write_v1_pb2 import WriteRequest

DECODE_ERRORS = (cramjam.DecompressionError, zstandard.ZstdError, DecodeError, ValueError)
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailers", "Transfer-Encoding",
    "Upgrade", "Host", "Content-Length",
))
STALE_NAN = struct.pack("<Q", 0x7FF0000000000002)
_pack_double = struct.Struct("<d").pack


def new_counters() -> dict:
    return {
        "requests": 0, "errors": 0, "upstream_errors": 0, "status": {}, "methods": {}, "formats": {},
        "wire_bytes": 0, "uncompressed_bytes": 0, "undecoded_requests": 0, "decode_errors": 0,
        "samples": 0, "samples_accepted": 0, "series_entries": 0, "histograms": 0, "exemplars": 0,
        "stale_samples": 0, "stale_samples_accepted": 0, "synthetic_samples": 0, "synthetic_samples_accepted": 0,
        "max_samples_per_request": 0, "first_request_at": None, "last_request_at": None, "last_error": "",
        "samples_by_second": {},
    }


def body_format(headers: Mapping[str, str]) -> str:
    """Which wire format a request body is in, from the headers each format requires."""
    version = headers.get("X-Prometheus-Remote-Write-Version", "")
    content_type = headers.get("Content-Type", "")
    if any(k.lower().startswith("x-headwater-") for k in headers):
        return "compact"
    if version.startswith("2.") or "io.prometheus.write.v2" in content_type:
        return "rw2"
    if headers.get("X-VictoriaMetrics-Remote-Write-Version"):
        return "vm"
    if version.startswith("0.1") or content_type.startswith("application/x-protobuf"):
        return "rw1"
    return "other"


def count_write_request(request: WriteRequest, by_second: dict[int, int]) -> dict[str, int]:
    """Samples, series entries, histograms, exemplars, staleness markers and synthetic samples in a body;
    adds every sample to `by_second` under the second of its timestamp."""
    samples = histograms = exemplars = stale = synthetic = 0
    for ts in request.timeseries:
        n = len(ts.samples)
        samples += n
        histograms += len(ts.histograms)
        exemplars += len(ts.exemplars)
        for sample in ts.samples:
            value = sample.value
            if math.isnan(value) and _pack_double(value) == STALE_NAN:
                stale += 1
            second = sample.timestamp // 1000
            by_second[second] = by_second.get(second, 0) + 1
        if n:
            for label in ts.labels:
                if label.name == "__name__":
                    if label.value == "up" or label.value.startswith("scrape_"):
                        synthetic += n
                    break
    return {"samples": samples, "series_entries": len(request.timeseries), "histograms": histograms,
            "exemplars": exemplars, "stale_samples": stale, "synthetic_samples": synthetic}


class Proxy:
    """Forwards `/<name>/...` to that name's route and counts what passes, per name."""

    def __init__(self, routes: dict[str, str]) -> None:
        self.routes = {name: url.rstrip("/") for name, url in routes.items()}
        self.counters: dict[str, dict] = {}
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_put("/_routes/{name}", self.put_route)
        app.router.add_route("*", "/{name}/{tail:.*}", self.forward)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        # auto_decompress=False: the receiver's answer goes back byte for byte, Content-Encoding included.
        self.session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120),
                                             connector=aiohttp.TCPConnector(limit=0))

    async def _stop(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"time": time.time(), "routes": self.routes, "senders": self.counters})

    async def put_route(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.routes[name] = (await request.text()).strip().rstrip("/")
        return web.json_response({"name": name, "url": self.routes[name]})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        target = self.routes.get(name)
        if target is None:
            return web.Response(status=404, text=f"rw_proxy: no route {name!r}; PUT /_routes/{name} first\n")
        body = await request.read()
        url = f"{target}/{request.match_info['tail']}"
        if request.query_string:
            url += f"?{request.query_string}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        c = self.counters.setdefault(name, new_counters())
        assert self.session is not None
        try:
            async with self.session.request(request.method, url, data=body if body else None, headers=headers,
                                            allow_redirects=False) as upstream:
                answer = await upstream.read()
                status = upstream.status
                answer_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            status, answer, answer_headers = 502, f"rw_proxy: {target} unreachable: {exc!r}\n".encode(), {}
            c["upstream_errors"] += 1
        # Answer first, count after: decoding a 1 MB rw1 body in Python takes tens of milliseconds, which the
        # sender would otherwise see as the receiver's latency (a Headwater sender writes a request to its disk
        # queue once it waits longer than its write grace, so the proxy's own work would change its CPU).
        response = web.Response(status=status, body=answer, headers=answer_headers)
        await response.prepare(request)
        await response.write_eof()
        self.count(c, request, body, status, answer)
        return response

    def count(self, c: dict, request: web.Request, body: bytes, status: int, answer: bytes) -> None:
        now = time.time()
        c["requests"] += 1
        c["methods"][request.method] = c["methods"].get(request.method, 0) + 1
        c["status"][str(status)] = c["status"].get(str(status), 0) + 1
        accepted = 200 <= status < 300
        if not accepted:
            c["errors"] += 1
            c["last_error"] = f"{request.method} {request.path_qs} -> {status}: {answer[:300].decode(errors='replace')}"
        if c["first_request_at"] is None:
            c["first_request_at"] = now
        c["last_request_at"] = now
        if not body:
            return
        fmt = body_format(request.headers)
        c["formats"][fmt] = c["formats"].get(fmt, 0) + 1
        c["wire_bytes"] += len(body)
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        decoded: WriteRequest | None = None
        try:
            if encoding == "snappy":
                c["uncompressed_bytes"] += cramjam.snappy.decompress_raw_len(body)
                if fmt in ("rw1", "vm"):
                    decoded = rw1.decode(body)
            elif encoding == "zstd":
                raw = zstandard.ZstdDecompressor().stream_reader(body).read()
                c["uncompressed_bytes"] += len(raw)
                if fmt in ("rw1", "vm"):
                    decoded = WriteRequest.FromString(raw)
            else:
                c["uncompressed_bytes"] += len(body)
                if fmt in ("rw1", "vm") and encoding == "identity":
                    decoded = WriteRequest.FromString(body)
        except DECODE_ERRORS as exc:  # a corrupt body is counted, the forwarding never fails for it
            c["decode_errors"] += 1
            c["last_error"] = f"decode: {exc!r}"
            return
        if decoded is None:
            c["undecoded_requests"] += 1
            return
        counts = count_write_request(decoded, c["samples_by_second"])
        for key, value in counts.items():
            c[key] += value
        c["max_samples_per_request"] = max(c["max_samples_per_request"], counts["samples"])
        if accepted:
            c["samples_accepted"] += counts["samples"]
            c["stale_samples_accepted"] += counts["stale_samples"]
            c["synthetic_samples_accepted"] += counts["synthetic_samples"]


async def serve(args: argparse.Namespace) -> None:
    routes = dict(route.split("=", 1) for route in args.route)
    # auto_decompress=False: bodies are forwarded (and counted) as sent, never decompressed by aiohttp.
    runner = web.AppRunner(Proxy(routes).app(), access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="listen port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--route", action="append", default=[], metavar="NAME=URL",
                        help="forward /NAME/... to URL/... (more with PUT /_routes/NAME)")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
