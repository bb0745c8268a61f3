"""The demo's application: a small shop whose three services send Headwater traces and metrics with the
OpenTelemetry Python SDK, as any instrumented application would (OTLP/HTTP protobuf).

    python demo/app.py --endpoint http://127.0.0.1:4318 --rate 20

Each request is one trace: `frontend` serves it and calls `catalog` or `checkout`. The mix is chosen so every
sampling path of the demo's agent config (demo/agent.yaml) shows up within a minute:

- tiers: 3 % of requests come from VIP users (`sampling.priority=P0` on the root span: tier P0); checkouts
  touch the `checkout` service (tier P1); the rest fall to P2, kept at 5 %;
- errors: 4 % fail in the service called (status ERROR, HTTP 500 at the frontend): always kept;
- slow requests: 2 % take 1.2-2.5 s, past the config's 1 s latency keep.

Span times are set explicitly (a request "happened" over the last few hundred milliseconds), so the app
never sleeps for a slow request and its rate holds. The frontend also records metrics every 2 s:
`demo.requests` (counter), `http.server.request.duration` (histogram, seconds) by route and status, and
`demo.cart.items` (a gauge). SIGTERM or SIGINT flushes what the SDK holds and exits 0.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

SERVICES = ("frontend", "catalog", "checkout")
ROUTES = (("GET", "/products", "catalog", 0.60), ("GET", "/products/{id}", "catalog", 0.25),
          ("POST", "/checkout", "checkout", 0.15))
VIP_SHARE, ERROR_SHARE, SLOW_SHARE = 0.03, 0.04, 0.02
MS = 1_000_000  # nanoseconds
DURATION_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]  # seconds (the SDK's default is for ms)


class Shop:
    """One TracerProvider per service (each its own resource, as three processes would have) and the
    frontend's metrics."""

    def __init__(self, endpoint: str, rng: random.Random) -> None:
        self.rng = rng
        self.providers: dict[str, TracerProvider] = {}
        for service in SERVICES:
            provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                                "service.instance.id": f"{service}-1"}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"),
                                                           schedule_delay_millis=500))
            self.providers[service] = provider
        self.tracers = {s: p.get_tracer("demo.shop") for s, p in self.providers.items()}
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
                                               export_interval_millis=2000)
        self.meters = MeterProvider(resource=self.providers["frontend"].resource, metric_readers=[reader])
        meter = self.meters.get_meter("demo.shop")
        self.requests = meter.create_counter("demo.requests", unit="{request}", description="Requests served.")
        self.duration = meter.create_histogram("http.server.request.duration", unit="s",
                                               description="Time to answer a request.",
                                               explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.cart_items = 5
        meter.create_observable_gauge("demo.cart.items", callbacks=[self._observe_cart], unit="{item}",
                                      description="Items in open carts.")

    def _observe_cart(self, _options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(self.cart_items)

    def request(self) -> None:
        """One request, ending now: a trace across two services and its metrics."""
        rng = self.rng
        method, route, backend, _ = rng.choices(ROUTES, weights=[r[3] for r in ROUTES])[0]
        vip, failed, slow = rng.random() < VIP_SHARE, rng.random() < ERROR_SHARE, rng.random() < SLOW_SHARE
        total = rng.uniform(1.2, 2.5) if slow else rng.uniform(0.02, 0.08 if backend == "catalog" else 0.3)
        end = time.time_ns()
        start = end - int(total * 1e9)
        status = 500 if failed else 200
        root_attributes = {"http.request.method": method, "http.route": route, "http.response.status_code": status}
        if vip:
            root_attributes["sampling.priority"] = "P0"
        with self._span("frontend", f"{method} {route}", None, SpanKind.SERVER, start, end, root_attributes,
                        failed) as root:
            call_start, call_end = start + 2 * MS, end - 2 * MS
            with self._span("frontend", f"{backend} {route}", root, SpanKind.CLIENT, call_start, call_end,
                            {"http.response.status_code": status}, failed) as client:
                with self._span(backend, f"{method} {route}", client, SpanKind.SERVER, call_start + MS,
                                call_end - MS, {"http.route": route, "http.response.status_code": status},
                                failed) as server:
                    work = "SELECT products" if backend == "catalog" else "charge card"
                    self._leaf(backend, work, server, SpanKind.CLIENT, call_start + 2 * MS, call_end - 2 * MS,
                                   failed)
        attributes = {"http.route": route, "http.response.status_code": status}
        self.requests.add(1, attributes)
        self.duration.record(total, attributes)
        if route == "/checkout":
            self.cart_items = max(0, self.cart_items - 1)
        elif rng.random() < 0.2:
            self.cart_items += 1

    @contextmanager
    def _span(self, service: str, name: str, parent: Context | None, kind: SpanKind, start: int, end: int,
              attributes: dict, failed: bool) -> Iterator[Context]:
        span = self.tracers[service].start_span(name, context=parent, kind=kind, start_time=start,
                                                attributes=attributes)
        try:
            yield trace.set_span_in_context(span)
        finally:
            if failed:
                span.set_status(Status(StatusCode.ERROR, "upstream failed"))
            span.end(end_time=end)

    def _leaf(self, service: str, name: str, parent: Context, kind: SpanKind, start: int, end: int,
                  failed: bool) -> None:
        span = self.tracers[service].start_span(name, context=parent, kind=kind, start_time=start)
        if failed:
            span.record_exception(RuntimeError(f"{name} failed"))
            span.set_status(Status(StatusCode.ERROR, f"{name} failed"))
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Flush and stop every provider: what the SDK still holds reaches the agent."""
        for provider in self.providers.values():
            provider.shutdown()
        self.meters.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Headwater demo's application (OpenTelemetry Python SDK).")
    parser.add_argument("--endpoint", default="http://127.0.0.1:4318", help="the agent's OTLP/HTTP base URL")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable mix")
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error(f"--rate must be positive, got {args.rate}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    shop = Shop(args.endpoint.rstrip("/"), random.Random(args.seed))
    interval = 1.0 / args.rate
    due = time.monotonic()
    while not stop.is_set():
        shop.request()
        due += interval
        stop.wait(max(0.0, due - time.monotonic()))
    shop.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
