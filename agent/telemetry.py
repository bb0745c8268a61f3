"""Self-telemetry: the OpenTelemetry SDK that serves every component's counters as Prometheus text, and the
small HTTP server for /metrics, /healthz and /readyz.

Components only use `opentelemetry.metrics.get_meter`; installing the SDK here is the one place that knows
how the numbers leave the process: the Prometheus reader serves `/metrics`, and a second reader, collected
only on demand (`collect_metrics`), feeds `telemetry.remote_write` (agent.telemetry_push). A reader nobody
collects costs an extra aggregation per synchronous measurement (a few per request), and observable
instruments are called only for the reader that collects.

The resource's `service.instance.id` is the host name (a node runs one agent), unless
`OTEL_RESOURCE_ATTRIBUTES` sets it: the SDK's default, a random UUID per process, would give remote-written
series a new `instance` label at every restart.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from agent import __version__
from agent.logs import kv
from agent.process_metrics import register_process_metrics

log = logging.getLogger("headwater.telemetry")
_installed = False
_on_demand: InMemoryMetricReader | None = None


def install_meter_provider() -> None:
    """Install the SDK once per process (the API allows one global provider; tests may build many agents)."""
    global _installed, _on_demand
    if _installed:
        return
    _on_demand = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader(), _on_demand],
                                             resource=agent_resource()))
    register_process_metrics(metrics.get_meter("headwater.process"))
    _installed = True


def agent_resource() -> Resource:
    """`service.name=headwater`, its version, and `service.instance.id` = the host name unless the
    environment (`OTEL_RESOURCE_ATTRIBUTES`) names one."""
    attributes = {"service.name": "headwater", "service.version": __version__}
    if "service.instance.id" not in OTELResourceDetector().detect().attributes:
        attributes["service.instance.id"] = socket.gethostname()
    return Resource.create(attributes)


def collect_metrics() -> MetricsData | None:
    """Every instrument's current (cumulative) data, for pushing; None before `install_meter_provider`.
    Runs the observable instruments' callbacks, so call it from the event loop like a /metrics scrape."""
    return _on_demand.get_metrics_data() if _on_demand is not None else None


class TelemetryServer:
    def __init__(self, endpoint: str, ready: Callable[[], bool]) -> None:
        host, _, port = endpoint.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.bound_port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("listening", **kv(server="telemetry", endpoint=f"{self._host}:{self.bound_port}"))

    async def shutdown(self, timeout: float) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: receivers or exporters are not started\n")
