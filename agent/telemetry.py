"""Self-telemetry: the OpenTelemetry SDK that serves every component's counters as Prometheus text, and the
small HTTP server for /metrics, /healthz, /readyz and /status.

`/status` is JSON for `headwater status`: version, config file, start time and uptime, readiness, and the
last warnings and errors (`logs.RECENT_PROBLEMS`, bounded in bytes). Log lines are text, not numbers, so they
have no place in /metrics; the rest of what `headwater status` shows is read from /metrics.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from agent import __version__
from agent.logs import RECENT_PROBLEMS, kv
from agent.process_metrics import register_process_metrics

log = logging.getLogger("headwater.telemetry")
_installed = False
_on_demand: InMemoryMetricReader | None = None


@dataclass(frozen=True)
class ProcessInfo:
    """What this process says about itself in `/status` and in `headwater_build_info` /
    `headwater_start_time_seconds`."""

    version: str
    config: str | None  # the config file's absolute path, "(default config)", or None when not told
    started_at: float  # seconds since the epoch


_process = ProcessInfo(__version__, None, time.time())
_described = False


def describe_process(config: str, started_at: float | None = None) -> ProcessInfo:
    """Say which config this process runs (the CLI calls it before the agent starts) and serve it as
    `headwater_build_info{version, config} 1` beside `headwater_start_time_seconds`, so a dashboard can show
    uptime and restarts and `headwater status` can name the file."""
    global _process, _described
    _process = replace(_process, config=config, started_at=time.time() if started_at is None else started_at)
    if not _described:
        install_meter_provider()
        meter = metrics.get_meter("headwater.agent")
        meter.create_observable_gauge(
            "headwater_build_info", callbacks=[lambda _o: [metrics.Observation(
                1, {"version": _process.version, "config": _process.config or ""})]],
            description="Always 1; its labels say the version and the config file the agent runs "
            "(\"(default config)\" for the one shipped in the package).")
        meter.create_observable_gauge(
            "headwater_start_time_seconds", unit="s",
            callbacks=[lambda _o: [metrics.Observation(_process.started_at)]],
            description="When the agent started, in seconds since the epoch (uptime = time() - this).")
        _described = True
    return _process


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
        app.router.add_get("/status", self._status)
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

    async def _status(self, _request: web.Request) -> web.Response:
        info, now = _process, time.time()
        return web.json_response({
            "version": info.version, "config": info.config, "started_at": info.started_at,
            "uptime_seconds": max(0.0, now - info.started_at), "ready": bool(self._ready()),
            "recent_problems": RECENT_PROBLEMS.entries(),
        })
