"""OTLP/HTTP span load generator: realistic protobuf payloads POSTed at full speed.

    python bench/loadgen.py --url http://127.0.0.1:4318 --duration 10 --connections 4

Payloads are built once from a fixed seed: requests of 512 spans (64 traces of 8 spans: a SERVER root, CLIENT
and INTERNAL children, HTTP/DB/RPC attributes), about 350 serialized bytes per span. Of the traces, ~3 % are
errors (root status ERROR, HTTP 500), ~5 % carry `sampling.priority=P0` and ~15 % `sampling.priority=P1` on
one of their spans (any of the 8, the root only sometimes); the rest have no priority (the default tiers
put them in P2). Each send rewrites the first 8 bytes of every trace ID with a per-send counter (a byte
substitution, no re-serialization), so every request carries traces never seen before, as real traffic
does. The other 8 bytes (which hold the randomness consistent sampling reads) repeat with the payloads: the
16 payloads hold 1,024 traces, so the kept fraction of each tier is that of these 1,024 draws, every run.

Workers (one per connection) POST back to back. 2xx counts as accepted; 429/503 are counted as refused and
the worker waits for Retry-After before its next request (the span batch is not re-sent, so the
generator stays at full speed rather than queuing); anything else is counted as an error. Stops after
`--duration` seconds or `--requests` requests. With `--progress`, a JSON line of cumulative counters goes to
stdout every `--interval` seconds (`t` is time.monotonic(), comparable across processes on Linux); the last
line is always the summary: {"summary": true, "spans_per_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 8
DEFAULT_SEED = 20240611
MARKER_LEN = 8
ERROR_FRACTION = 0.03   # traces whose root has status ERROR and HTTP 500 (forced keeps)
P0_FRACTION = 0.05      # traces with sampling.priority=P0 on one of their spans
P1_FRACTION = 0.15      # traces with sampling.priority=P1 on one of their spans; the rest fall to P2
PRIORITY_KEY = "sampling.priority"

_SERVICES = ["checkout", "payments", "cart", "catalog", "shipping", "frontend", "recommendations", "auth"]
_ROUTES = ["/api/v1/orders/{id}", "/api/v1/cart", "/api/v1/products/{sku}", "/api/v1/users/{id}/profile",
           "/api/v2/search", "/healthz", "/api/v1/payments/{id}/capture", "/api/v1/shipments"]
_METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]
_USER_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "okhttp/4.12.0", "python-requests/2.32.3", "Go-http-client/1.1"]
_DB_STATEMENTS = ["SELECT * FROM orders WHERE id = ?", "UPDATE carts SET items = ? WHERE user_id = ?",
                  "SELECT sku, price FROM products WHERE sku IN (?)", "INSERT INTO payments VALUES (?, ?, ?)"]


def _kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


@dataclass(frozen=True)
class Payload:
    body: bytes
    spans: int
    marker: bytes
    """The 8 bytes every trace ID in `body` starts with; replaced per send."""


def _add_trace(rng: random.Random, spans: list[Span], marker: bytes, now_ns: int) -> None:
    trace_id = marker + rng.randbytes(16 - MARKER_LEN)
    root_id = rng.randbytes(8)
    start = now_ns - rng.randrange(1_000_000_000, 5_000_000_000)
    duration = rng.randrange(2_000_000, 400_000_000)
    method, route = rng.choice(_METHODS), rng.choice(_ROUTES)
    request_id = _kv("request.id", rng.randbytes(16).hex())  # on every span of the trace
    error = rng.random() < ERROR_FRACTION
    # The tier attribute sits on one span of the trace, chosen at random (the root in 1 of 8 traces), so the
    # sampler must fold every span's attributes into its trace's tier.
    draw = rng.random()
    priority = "P0" if draw < P0_FRACTION else "P1" if draw < P0_FRACTION + P1_FRACTION else ""
    priority_span = rng.randrange(SPANS_PER_TRACE)
    tier_attribute = [_kv(PRIORITY_KEY, priority)] if priority else []
    status_code = 500 if error else rng.choice([200, 200, 200, 201, 204, 404])
    root = Span(
        trace_id=trace_id, span_id=root_id, name=f"{method} {route}", kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start, end_time_unix_nano=start + duration, flags=0x101,
        attributes=[
            _kv("http.request.method", method), _kv("http.route", route),
            _kv("http.response.status_code", status_code),
            _kv("url.path", route.replace("{id}", str(rng.randrange(10**6))).replace("{sku}", f"SKU-{rng.randrange(10**5)}")),
            _kv("server.address", "api.internal"), _kv("server.port", 8080),
            _kv("client.address", f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"),
            _kv("network.protocol.version", "1.1"), _kv("user_agent.original", rng.choice(_USER_AGENTS)),
            request_id,
        ] + (tier_attribute if priority_span == 0 else []),
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )
    spans.append(root)
    for i in range(1, SPANS_PER_TRACE):
        child_start = start + rng.randrange(duration // 2 + 1)
        child_duration = rng.randrange(100_000, duration // 2 + 200_000)
        if i % 3 == 0:
            name, kind = "SELECT orders", Span.SPAN_KIND_CLIENT
            attributes = [_kv("db.system", "postgresql"), _kv("db.statement", rng.choice(_DB_STATEMENTS)),
                          _kv("server.port", 5432)]
        elif i % 3 == 1:
            service = rng.choice(_SERVICES)
            name, kind = f"{service}.Get", Span.SPAN_KIND_CLIENT
            attributes = [_kv("rpc.system", "grpc"), _kv("rpc.service", f"shop.{service}.v1"),
                          _kv("rpc.grpc.status_code", 0), _kv("server.address", f"{service}.svc")]
        else:
            name, kind = "render", Span.SPAN_KIND_INTERNAL
            attributes = [_kv("cache.hit", rng.random() < 0.7), _kv("items", rng.randrange(1, 50)),
                          _kv("load", round(rng.random(), 3))]
        spans.append(Span(
            trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root_id, name=name, kind=kind,
            start_time_unix_nano=child_start, end_time_unix_nano=child_start + child_duration, flags=0x101,
            attributes=attributes + [
                _kv("code.function", f"handle_{name.split('.')[0].split(' ')[0].lower()}"),
                _kv("code.filepath", f"/srv/app/src/{rng.choice(_SERVICES)}/api/handlers.py"),
                _kv("thread.id", rng.randrange(1, 64)), request_id,
            ] + (tier_attribute if priority_span == i else []),
        ))


def make_payloads(count: int = 16, seed: int = DEFAULT_SEED, spans_per_request: int = SPANS_PER_REQUEST) -> list[Payload]:
    """`count` distinct serialized ExportTraceServiceRequests, the same for the same seed."""
    rng = random.Random(seed)
    now_ns = 1_750_000_000_000_000_000
    payloads = []
    for n in range(count):
        marker = rng.randbytes(MARKER_LEN)
        service = _SERVICES[n % len(_SERVICES)]
        resource_spans = ResourceSpans()
        for key, value in [("service.name", service), ("service.version", "1.14.2"),
                           ("deployment.environment.name", "production"), ("host.name", f"node-{n:03d}"),
                           ("telemetry.sdk.language", "python"), ("telemetry.sdk.name", "opentelemetry")]:
            resource_spans.resource.attributes.append(_kv(key, value))
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = "opentelemetry.instrumentation.aiohttp_server"
        scope_spans.scope.version = "0.52b0"
        spans: list[Span] = []
        while len(spans) < spans_per_request:
            _add_trace(rng, spans, marker, now_ns)
        scope_spans.spans.extend(spans[:spans_per_request])
        body = ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()
        if body.count(marker) != spans_per_request:
            raise RuntimeError("trace-ID marker also occurs outside trace IDs; pick another seed")
        payloads.append(Payload(body, spans_per_request, marker))
    return payloads


@dataclass
class Counters:
    requests: int = 0
    spans_accepted: int = 0
    refused: int = 0
    errors: int = 0
    bytes_sent: int = 0
    last_error: str = ""
    statuses: dict[int, int] = field(default_factory=dict)

    def snapshot(self) -> dict:
        return {"t": time.monotonic(), "requests": self.requests, "spans_accepted": self.spans_accepted,
                "refused": self.refused, "errors": self.errors, "bytes_sent": self.bytes_sent}


async def _worker(session: aiohttp.ClientSession, url: str, payloads: list[Payload], counters: Counters,
                  state: dict, deadline: float, max_requests: int, compress: bool) -> None:
    headers = {"Content-Type": "application/x-protobuf"}
    if compress:
        headers["Content-Encoding"] = "gzip"
    while time.monotonic() < deadline and (max_requests <= 0 or state["next"] < max_requests):
        n = state["next"]
        state["next"] += 1
        payload = payloads[n % len(payloads)]
        body = payload.body.replace(payload.marker, struct.pack(">Q", state["epoch"] + n))
        if compress:
            body = gzip.compress(body, compresslevel=1)
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After", "1")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            counters.errors += 1
            counters.last_error = repr(exc)
            await asyncio.sleep(0.1)
            continue
        counters.requests += 1
        counters.bytes_sent += len(body)
        counters.statuses[status] = counters.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            counters.spans_accepted += payload.spans
        elif status in (429, 503):
            counters.refused += 1
            try:
                await asyncio.sleep(min(float(retry_after), 5.0))
            except ValueError:
                await asyncio.sleep(1.0)
        else:
            counters.errors += 1
            counters.last_error = f"HTTP {status}"


async def run(url: str, duration: float, max_requests: int, connections: int, compress: bool,
              progress: bool, interval: float, seed: int) -> dict:
    traces_url = url if url.rstrip("/").endswith("/v1/traces") else url.rstrip("/") + "/v1/traces"
    payloads = make_payloads(seed=seed)
    counters = Counters()
    state = {"next": 0, "epoch": int.from_bytes(os.urandom(8), "big") >> 8}  # fresh trace IDs every run
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.monotonic()
    deadline = started + duration if duration > 0 else float("inf")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = [asyncio.create_task(_worker(session, traces_url, payloads, counters, state, deadline,
                                               max_requests, compress)) for _ in range(connections)]
        if progress:
            while not all(w.done() for w in workers):
                await asyncio.wait(workers, timeout=interval)
                print(json.dumps(counters.snapshot()), flush=True)
        await asyncio.gather(*workers)
    elapsed = time.monotonic() - started
    summary = counters.snapshot() | {
        "summary": True, "elapsed_s": elapsed, "spans_per_s": counters.spans_accepted / elapsed,
        "bytes_per_span": len(payloads[0].body) / payloads[0].spans, "spans_per_request": payloads[0].spans,
        "connections": connections, "statuses": counters.statuses, "last_error": counters.last_error,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="OTLP/HTTP base URL (or the full /v1/traces URL)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to send for (0: until --requests)")
    parser.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: no limit)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies (level 1)")
    parser.add_argument("--progress", action="store_true", help="print cumulative counters as JSON lines")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    if args.duration <= 0 and args.requests <= 0:
        parser.error("give --duration or --requests")
    summary = asyncio.run(run(args.url, args.duration, args.requests, args.connections, args.gzip,
                              args.progress, args.interval, args.seed))
    print(json.dumps(summary), flush=True)
    if not args.progress:
        print(f"{summary['spans_per_s']:,.0f} spans/s accepted ({summary['requests']} requests, "
              f"{summary['refused']} refused, {summary['errors']} errors)", file=sys.stderr)
    return 0 if summary["spans_accepted"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
