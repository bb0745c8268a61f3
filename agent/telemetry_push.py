"""The agent's own metrics written through one of its remote-write exporters (`telemetry.remote_write`), so
the dashboards in configs/grafana work without a scrape job.

    push = TelemetryPush(collect_metrics, consume, interval=15.0)   # consume: an exporter's consume_metrics
    await push.start()              # after the exporter has started
    ...
    await push.shutdown(timeout)    # one last push, before the exporter delivers what it holds

Each push collects the SDK's data (every instrument, cumulative, as `/metrics` shows it: agent.telemetry),
encodes it as an OTLP ExportMetricsServiceRequest with the encoder the SDK's own OTLP exporter uses
(opentelemetry-exporter-otlp-proto-common) and hands it to the exporter like any OTLP metrics request. So it is
translated by the same rules as an application's metrics, and a series has the same name pushed or scraped
(`headwater_sender_retries` with unit `{request}` becomes `headwater_sender_retries_total` both ways). The
resource gives `job="headwater"` and `instance=<host name>` (see agent.telemetry.agent_resource).

Because the data is cumulative, a push the exporter refuses loses nothing: the next one carries the totals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics.export import MetricsData

from agent.logs import kv

log = logging.getLogger("headwater.telemetry")

Collect = Callable[[], MetricsData | None]
ConsumeMetrics = Callable[[ExportMetricsServiceRequest], Awaitable[None]]


class TelemetryPush:
    """A component (start / shutdown) that hands `collect()`'s data to `consume` every `interval` seconds and
    once more at shutdown. `sleep` waits between pushes (tests pass one they control)."""

    def __init__(self, collect: Collect, consume: ConsumeMetrics, interval: float,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not interval > 0:
            raise ValueError(f"interval: expected more than 0 seconds, found {interval!r}")
        self._collect = collect
        self._consume = consume
        self.interval = interval
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._shut_down = False
        self.pushes = 0
        self.failed_pushes = 0
        metrics.get_meter("headwater.telemetry").create_observable_counter(
            "headwater_telemetry_pushes", unit="{push}",
            callbacks=[lambda _o: [metrics.Observation(self.pushes, {"outcome": "ok"}),
                                   metrics.Observation(self.failed_pushes, {"outcome": "failed"})]],
            description="Pushes of the agent's own metrics through telemetry.remote_write, by outcome.")

    async def start(self) -> None:
        if self._task is None and not self._shut_down:
            self._task = asyncio.create_task(self._loop(), name="telemetry-push")

    async def shutdown(self, timeout: float) -> None:
        """Stop the timer and push the final values within `timeout`. Safe without start and twice; call it
        before the exporter it pushes through shuts down."""
        if self._shut_down:
            return
        self._shut_down = True
        task, self._task = self._task, None
        if task is None:
            return  # never started: nothing to report
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.push(), max(0.0, timeout))
        except asyncio.TimeoutError:
            self.failed_pushes += 1
            log.warning("final telemetry push did not finish in time", **kv(timeout_s=timeout))

    async def push(self) -> bool:
        """Hand the current values to the exporter now; False (logged, counted) if that failed."""
        try:
            data = self._collect()
            if data is None or not data.resource_metrics:
                return True
            await self._consume(encode_metrics(data))
        except Exception as exc:  # noqa: BLE001 - a failed push must not stop the next one
            self.failed_pushes += 1
            log.warning("telemetry push failed; the next push carries the same totals", **kv(error=repr(exc)))
            return False
        self.pushes += 1
        return True

    async def _loop(self) -> None:
        while True:
            await self._sleep(self.interval)
            await self.push()
