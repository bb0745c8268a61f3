"""A minimal OTLP/HTTP trace sink that counts what it receives: the far end of the ingest benchmark.

    python bench/sink.py [--port 0]

Prints {"port": N} on stdout once it listens on 127.0.0.1. POST /v1/traces (protobuf, gzip or not) is
parsed, its spans counted, and answered 200 with an empty ExportTraceServiceResponse. GET /stats returns
{"t": time.monotonic(), "spans", "requests", "bytes", "bad_requests"} (cumulative). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import signal
import sys
import time

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


class Counts:
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self.bytes = 0
        self.bad_requests = 0


def make_app(counts: Counts) -> web.Application:
    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        counts.bytes += len(body)
        try:
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            message = ExportTraceServiceRequest.FromString(body)
        except (OSError, EOFError, DecodeError) as exc:
            counts.bad_requests += 1
            return web.Response(status=400, text=f"cannot decode: {exc}")
        counts.requests += 1
        counts.spans += sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        return web.Response(body=_EMPTY_RESPONSE, content_type="application/x-protobuf")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"t": time.monotonic(), "spans": counts.spans, "requests": counts.requests,
                                  "bytes": counts.bytes, "bad_requests": counts.bad_requests})

    app = web.Application(client_max_size=256 << 20)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    return app


async def serve(port: int) -> None:
    # auto_decompress=False: count wire bytes, decompress ourselves
    runner = web.AppRunner(make_app(Counts()), access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: the OS picks)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
