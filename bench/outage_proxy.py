"""A remote-write proxy the outage benchmark switches off and on, and that times every sample it forwards.

    python bench/outage_proxy.py --upstream http://127.0.0.1:9090 [--port 0] [--control-port 0] [--latency 0]

Two listeners: the data port, where the sender writes (`POST /api/v1/write`, anything else too, forwarded as
it came to `--upstream`), and the control port, which stays up whatever the data port does:
- `PUT /mode` with body `forward`, `refuse` or `503`. `refuse` is a receiver that is down: the data port
  stops listening (connection refused) and connections already open are closed once their request in
  flight, if any, is answered; a request that still arrives on one is cut off without an answer. `503`
  keeps listening and answers every request `503 Service Unavailable` (no Retry-After), as a load balancer
  in front of a dead backend does. `forward` listens again on the same port and forwards.
- `GET /stats`: counters, every request's record and the delay histogram as JSON (`?records=N` returns
  the records from index N on, so a poller reads each once).

For every remote write 1.0 request (`X-Prometheus-Remote-Write-Version: 0.1.0`) the receiver answered 2xx, the
body (snappy + protobuf, decoded with `exporters.remote_write.rw1.decode`) is read for the timestamps of its samples, after the answer went back
to the sender so that reading it delays nothing. Each sample's delay is `answer time - sample timestamp`,
where the answer time is when the receiver's answer reached the proxy and the timestamp (ms) is when the
load generator sent the sample (`bench/outage_load.py` stamps samples with the wall time at send). Delays go
to a histogram per second of sample timestamp, in milliseconds: `delays[ts_second][delay_ms] = samples`, so
the bench can take percentiles over any window of sample times. Each request's record says when it was
forwarded and answered, its status, bytes, samples, and its oldest and newest sample timestamp (ms): when
the backlog of an outage was delivered is the last answer to a request holding a sample from before the
receiver came back.

`--latency` (seconds) holds every forwarded request that long before it goes on, each on its own (requests in
parallel wait in parallel): a receiver across a network, slow per request but parallel, such as a remote
Prometheus or a load balancer in front of several; the answer time, and so each sample's delay, includes it.

It prints `{"port": N, "control_port": M}` on stdout once both listen.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import cramjam
from aiohttp import web
from google.protobuf.message import DecodeError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from exporters.remote_write import rw1

MODES = ("forward", "refuse", "503")
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailers", "Transfer-Encoding",
    "Upgrade", "Host", "Content-Length",
))


class OutageProxy:
    """Forwards to one upstream, refuses on demand, and times what it forwards."""

    def __init__(self, upstream: str, port: int, latency: float = 0.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.latency = latency
        self.port = port
        self.mode = "forward"
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.records: list[dict] = []
        self.delays: dict[int, collections.Counter] = {}
        self.counters = {"requests": 0, "answered_2xx": 0, "samples_accepted": 0, "refused_503": 0,
                         "cut_off": 0, "upstream_errors": 0, "errors": 0, "decode_errors": 0, "undecoded_2xx": 0,
                         "other_errors": 0, "last_error": "",
                         "max_in_flight": 0, "mode_changes": []}
        self.in_flight = 0

    # -- the data port --------------------------------------------------------------------------------------

    def data_app(self) -> web.Application:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def listen(self) -> None:
        assert self.runner is not None
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await self.site.start()
        if not self.port:
            self.port = self.runner.addresses[0][1]

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "refuse":  # arrived on a connection opened before the outage: no answer at all
            self.counters["cut_off"] += 1
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()  # never reaches the client: the connection is gone
        body = await request.read()
        self.counters["requests"] += 1
        if self.mode == "503":
            self.counters["refused_503"] += 1
            return web.Response(status=503, text="outage_proxy: receiver down (503 mode)\n")
        url = f"{self.upstream}/{request.match_info['tail']}"
        if request.query_string:
            url += f"?{request.query_string}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        assert self.session is not None
        started = time.time()
        self.in_flight += 1
        concurrent = self.in_flight
        self.counters["max_in_flight"] = max(self.counters["max_in_flight"], self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            async with self.session.request(request.method, url, data=body or None, headers=headers,
                                            allow_redirects=False) as upstream:
                answer = await upstream.read()
                answered = time.time()
                status = upstream.status
                answer_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            answered = time.time()
            status, answer, answer_headers = 502, f"outage_proxy: upstream unreachable: {exc!r}\n".encode(), {}
            self.counters["upstream_errors"] += 1
        finally:
            self.in_flight -= 1
        record = {"start": started, "answered": answered, "status": status, "bytes": len(body),
                  "in_flight": concurrent, "samples": 0}
        if 200 <= status < 300:
            self.counters["answered_2xx"] += 1
        rw1_body = request.headers.get("X-Prometheus-Remote-Write-Version", "").startswith("0.1")
        if 200 <= status < 300 and body and request.method == "POST" and not rw1_body:
            self.counters["undecoded_2xx"] += 1  # another format (negotiation tries rw2 first): not timed
        if 200 <= status < 300 and body and request.method == "POST" and rw1_body:
            # After the answer is on its way: reading the body must not add to the sender's latency. The
            # record is published once read, so a poller never sees it without its samples.
            asyncio.get_running_loop().call_soon(self.account, record, body)
        else:
            self.records.append(record)
        if not 200 <= status < 300:
            # Writes refused are what the bench checks; other requests (negotiation's handshake GETs, which
            # Prometheus answers 405) are counted apart.
            self.counters["errors" if request.method == "POST" and body else "other_errors"] += 1
            self.counters["last_error"] = f"{request.method} {status}: {answer[:300].decode(errors='replace')}"
        return web.Response(status=status, body=answer, headers=answer_headers)

    def account(self, record: dict, body: bytes) -> None:
        """The samples of an accepted request: counted, timed against its answer, per second of timestamp."""
        self.records.append(record)
        try:
            decoded = rw1.decode(body)
        except (cramjam.DecompressionError, DecodeError, ValueError) as exc:
            self.counters["decode_errors"] += 1
            self.counters["last_error"] = f"decode: {exc!r}"
            return
        stamps = collections.Counter(s.timestamp for series in decoded.timeseries for s in series.samples)
        samples = sum(stamps.values())
        record["samples"] = samples
        record["series"] = len(decoded.timeseries)
        self.counters["samples_accepted"] += samples
        if not stamps:
            return
        record["min_ts"] = min(stamps)
        record["max_ts"] = max(stamps)
        answered_ms = record["answered"] * 1000.0
        for stamp, n in stamps.items():
            histogram = self.delays.get(stamp // 1000)
            if histogram is None:
                histogram = self.delays[stamp // 1000] = collections.Counter()
            histogram[round(answered_ms - stamp)] += n

    # -- the control port -----------------------------------------------------------------------------------

    def control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/mode", self.put_mode)
        app.router.add_get("/stats", self.get_stats)
        return app

    async def put_mode(self, request: web.Request) -> web.Response:
        mode = (await request.text()).strip()
        if mode not in MODES:
            return web.Response(status=400, text=f"mode must be one of {', '.join(MODES)}\n")
        previous, self.mode = self.mode, mode
        if previous == "refuse" and mode != "refuse":
            await self.listen()
        elif mode == "refuse" and previous != "refuse":
            assert self.site is not None and self.runner is not None
            await self.site.stop()  # the listening socket: new connections are refused
            self.site = None
            server = self.runner.server
            for handler in list(server.connections if server is not None else ()):
                handler.close()  # idle ones close now, busy ones once their answer is written
        self.counters["mode_changes"].append([time.time(), mode])
        return web.json_response({"mode": mode, "time": time.time()})

    async def get_stats(self, request: web.Request) -> web.Response:
        start = int(request.query.get("records", "0"))
        delays = None
        if request.query.get("delays", "1") != "0":
            delays = {str(second): {str(ms): n for ms, n in histogram.items()}
                      for second, histogram in self.delays.items()}
        return web.json_response({"time": time.time(), "mode": self.mode, "in_flight": self.in_flight,
                                  **self.counters, "records_total": len(self.records),
                                  "records": self.records[start:], "delays": delays})


async def serve(args: argparse.Namespace) -> None:
    proxy = OutageProxy(args.upstream, args.port, args.latency)
    # auto_decompress=False both ways: bodies and answers pass byte for byte.
    proxy.session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120),
                                          connector=aiohttp.TCPConnector(limit=0))
    proxy.runner = web.AppRunner(proxy.data_app(), access_log=None, auto_decompress=False)
    await proxy.runner.setup()
    await proxy.listen()
    control = web.AppRunner(proxy.control_app(), access_log=None)
    await control.setup()
    control_site = web.TCPSite(control, "127.0.0.1", args.control_port)
    await control_site.start()
    print(json.dumps({"port": proxy.port, "control_port": control.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await control.cleanup()
        await proxy.runner.cleanup()
        await proxy.session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the receiver's base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--port", type=int, default=0, help="data port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--control-port", type=int, default=0, help="control port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every forwarded request is held first")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
