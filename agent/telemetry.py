"""Self-telemetry: the OpenTelemetry SDK that serves every component's counters as Prometheus text, and the
small HTTP server for /metrics, /healthz and /readyz.

Components only use `opentelemetry.metrics.get_meter`; installing the SDK here is the one place that knows
how the numbers leave the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from agent import __version__
from agent.logs import kv

log = logging.getLogger("headwater.telemetry")
_installed = False


def install_meter_provider() -> None:
    """Install the SDK once per process (the API allows one global provider; tests may build many agents)."""
    global _installed
    if _installed:
        return
    reader = PrometheusMetricReader()
    resource = Resource.create({"service.name": "headwater", "service.version": __version__})
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=resource))
    _installed = True


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
