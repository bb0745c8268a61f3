"""The composition root: builds exporters, pipelines, admission control and receivers from a Config, and runs
them in order.

Start order: exporters, then receivers, then the telemetry server reports ready and systemd gets READY=1.
Shutdown order: STOPPING=1 and not ready; receivers stop listening and finish in-flight requests; exporters
deliver what they hold within what is left of `shutdown_timeout`; the telemetry server goes last.
Under systemd (agent.notify) the watchdog is pinged from the event loop for the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

from agent import shutdown_summary
from agent.admission import Admission
from agent.config import Config
from agent.logs import kv
from agent.notify import Notifier, keep_watchdog, report_status
from agent.pipeline import FanOut, MetricsFanOut
from agent.sampling import SampledTraces, new_sampler, settings_from_config
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from agent.receivers.otlp_http import OtlpHttpReceiver
from agent.span_metrics import SpanMetrics
from agent.status_line import StatusLine, StatusSources
from agent.telemetry import TelemetryServer, collect_metrics, install_meter_provider
from agent.telemetry_push import TelemetryPush
from exporters.file import FileExporter
from exporters.otlp_http import OtlpHttpTraceExporter
from exporters.remote_write.cumulative import DeltaToCumulative
from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.remote_write.translate import Limits
from exporters.retry import RetryPolicy
from exporters.sending.queue import QueueSettings
from exporters.sending.sender import SenderSettings
from samplers.red import RedAggregator

log = logging.getLogger("headwater.agent")

# How often `systemctl status` gets a new STATUS= line: often enough to read rates, rare enough to cost nothing.
STATUS_EVERY_SECONDS = 5.0


def _policy(retry: Any) -> RetryPolicy:
    return RetryPolicy(initial_backoff=retry.initial_backoff, max_backoff=retry.max_backoff, max_elapsed=retry.max_elapsed)


def build_exporters(config: Config) -> dict[str, Any]:
    """Only exporters that a pipeline lists are built; the rest of the file is validated but idle."""
    wanted = set()
    for pipeline in (config.pipelines.traces, config.pipelines.metrics):
        if pipeline is not None:
            wanted.update(pipeline.exporters)
    if config.telemetry.remote_write:
        wanted.add(config.telemetry.remote_write)  # the agent's own metrics go there, pipeline or not
    built: dict[str, Any] = {}
    ex = config.exporters
    if ex.otlp is not None and "otlp" in wanted:
        built["otlp"] = OtlpHttpTraceExporter(
            endpoint=ex.otlp.endpoint, headers=dict(ex.otlp.headers), compression=ex.otlp.compression,
            timeout=ex.otlp.timeout, retry=_policy(ex.otlp.retry))
    if ex.file is not None and "file" in wanted:
        # Relative paths land under state_dir, with the agent's other files.
        state = Path(config.state_dir)
        built["file"] = FileExporter(state / (ex.file.path or "traces.jsonl"),
                                     state / (ex.file.metrics_path or "metrics.jsonl"))
    for rw in ex.remote_write:
        if rw.name in wanted:
            backoff = RetryPolicy(initial_backoff=rw.sender.retry.initial_backoff,
                                  max_backoff=rw.sender.retry.max_backoff)
            built[rw.name] = RemoteWriteExporter(
                name=rw.name, url=rw.url, headers=dict(rw.headers), timeout=rw.sender.timeout,
                retry=backoff, max_samples=rw.batch.max_samples, max_bytes=rw.batch.max_bytes,
                flush_interval=rw.batch.flush_interval,
                delta_to_cumulative=DeltaToCumulative(
                    Path(config.state_dir) / "delta_to_cumulative" / f"{rw.name}.json"),
                native_histograms=rw.native_histograms,
                limits=Limits(max_label_name_length=rw.limits.max_label_name_length,
                              max_label_value_length=rw.limits.max_label_value_length,
                              max_labels_per_series=rw.limits.max_labels_per_series,
                              max_series_per_metric=rw.limits.max_series_per_metric),
                promote=rw.promote_resource_attributes, protocol=rw.protocol, compression=rw.compression,
                compression_level=rw.compression_level,
                queue=QueueSettings(max_memory=rw.queue.max_memory, max_disk=rw.queue.max_disk,
                                    when_full=rw.queue.when_full,
                                    directory=Path(config.state_dir) / "queue" / rw.name),
                sender=SenderSettings(
                    max_concurrency=rw.sender.max_concurrency, retry=backoff,
                    sample_age_limit=rw.sender.sample_age_limit, max_bytes_per_second=rw.sender.max_bytes_per_second,
                    batch_samples=rw.batch.max_samples, min_batch_samples=min(500, rw.batch.max_samples),
                    batch_bytes=rw.batch.max_bytes))
    configured = [n for n in ("otlp", "file") if getattr(ex, n) is not None] + [rw.name for rw in ex.remote_write]
    for name in configured:
        if name not in built:
            log.warning("exporter configured but not used by any pipeline", **kv(exporter=name))
    return built


class Agent:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        """`notifier`: where systemd notifications go; default from NOTIFY_SOCKET (a no-op without it)."""
        install_meter_provider()
        self.config = config
        self.notifier = Notifier.from_environment() if notifier is None else notifier
        self.exporters = build_exporters(config)
        self.admission = Admission(config.admission.max_inflight, config.admission.retry_after)
        p = config.pipelines
        for pipeline, kind in ((p.traces, "traces"), (p.metrics, "metrics")):
            for name in pipeline.exporters if pipeline else ():
                exporter = self.exporters[name]
                if hasattr(exporter, "full"):  # a queue that can refuse: pressure, not a share of the budget
                    self.admission.add_pressure(kind, name, lambda e=exporter: e.full)
                else:
                    self.admission.add_queue(lambda e=exporter: e.queued_bytes, kind)
        self.traces: SampledTraces | None = None
        if p.traces:
            trace_exporters = [self.exporters[n] for n in p.traces.exporters]
            self.traces = SampledTraces(
                new_sampler(config.sampling),
                [(n, self.exporters[n].consume_traces) for n in p.traces.exporters],
                backlog=lambda: sum(e.queued_bytes for e in trace_exporters),
                backlog_limit=config.admission.max_inflight // 2)
            # The sampler's buffer is bounded by sampling.max_memory and sheds on its own; only its pending
            # output counts as in flight.
            self.admission.add_queue(lambda: self.traces.sampler.pending_output_bytes, "traces")
        self.metrics = (MetricsFanOut([(n, self.exporters[n]) for n in p.metrics.exporters])
                        if p.metrics else None)
        self.span_metrics: SpanMetrics | None = None
        if self.traces is not None and self.metrics is not None and p.metrics.span_metrics:
            sm = config.span_metrics
            red = RedAggregator(sm.buckets, sm.dimensions, sm.max_series)
            self.traces.sampler.span_observer = red  # every span, before any sampling decision
            self.span_metrics = SpanMetrics(red, self.metrics.consume, sm.flush_interval)
        self.telemetry_push: TelemetryPush | None = None
        if config.telemetry.remote_write:
            name = config.telemetry.remote_write  # looked up at each push: the exporter may be rebuilt
            self.telemetry_push = TelemetryPush(collect_metrics, lambda r: self.exporters[name].consume_metrics(r),
                                                config.telemetry.remote_write_interval)
        consume_traces = self.traces.consume if self.traces else None
        consume_metrics = self.metrics.consume if self.metrics else None
        otlp = config.receivers.otlp
        self.receivers: list[Any] = []
        if otlp.http.enabled:
            self.http = OtlpHttpReceiver(otlp.http.endpoint, otlp.http.max_body_size, self.admission,
                                         consume_traces, consume_metrics, drain_timeout=config.shutdown_timeout / 2,
                                         metrics_wire=self.metrics)
            self.receivers.append(self.http)
        if otlp.grpc.enabled:
            self.grpc = OtlpGrpcReceiver(otlp.grpc.endpoint, otlp.grpc.max_message_size, self.admission,
                                         consume_traces, consume_metrics, metrics_wire=self.metrics)
            self.receivers.append(self.grpc)
        gateway = config.receivers.remote_write
        if gateway is not None and gateway.enabled and p.metrics:
            series = FanOut("metrics", [(n, self.exporters[n].consume_series) for n in p.metrics.exporters])
            from agent.receivers.remote_write import RemoteWriteReceiver  # only gateways load every decoder
            from exporters.remote_write.compact_session import CompactSessions

            self.gateway = RemoteWriteReceiver(
                gateway.endpoint, gateway.max_body_size, self.admission, series.consume,
                sessions=CompactSessions(max_bytes_per_sender=gateway.max_dictionary_per_sender,
                                         max_total_bytes=gateway.max_dictionary_total),
                drain_timeout=config.shutdown_timeout / 2)
            self.receivers.append(self.gateway)
        self._ready = False
        self.dropped_at_shutdown = False  # set by shutdown: `headwater run` then exits non-zero
        self.telemetry = (TelemetryServer(config.telemetry.endpoint, lambda: self._ready)
                          if config.telemetry.enabled else None)
        self._started: list[Any] = []
        sampler = self.traces.sampler if self.traces is not None else None
        self.status = StatusLine(StatusSources(
            spans_in=(lambda: sampler.stats.spans_in) if sampler else None,
            spans_kept=(lambda: sum(sampler.stats.kept_spans.values())) if sampler else None,
            buffered_traces=(lambda: sampler.buffered_traces) if sampler else None,
            buffered_bytes=(lambda: sampler.buffered_bytes) if sampler else None,
            queued_bytes={name: (lambda e=e: e.queued_bytes) for name, e in self.exporters.items()}))

    def _reload_from(self, path: str | None) -> None:
        from agent.config import ConfigError, load_file

        # systemd: RELOADING=1 before the file is read, READY=1 once the outcome (applied or refused) is known;
        # neither while still starting, where READY=1 would come before the receivers listen.
        notify = self._ready and self.notifier.enabled
        if notify:
            self.notifier.reloading()
        try:
            self.reload(load_file(path))
        except ConfigError as exc:
            log.error("config reload refused; keeping the running config",
                      **kv(problems=len(exc.issues), first=str(exc.issues[0]) if exc.issues else ""))
        finally:
            if notify:
                self.notifier.ready(self.status.line(time.monotonic()))

    async def start(self) -> None:
        if self.telemetry is not None:
            await self.telemetry.start()
        try:
            # After the exporters they write to, before the receivers that feed them.
            pipelines = [c for c in (self.traces, self.span_metrics, self.telemetry_push) if c is not None]
            for component in [*self.exporters.values(), *pipelines, *self.receivers]:
                await component.start()
                self._started.append(component)
        except BaseException:
            await self.shutdown()
            raise
        self._ready = True
        log.info("started", **kv(exporters=",".join(self.exporters) or "none",
                                 traces=",".join(self.traces.exporter_names) if self.traces else "off",
                                 metrics=",".join(self.metrics.exporter_names) if self.metrics else "off"))
        # Every receiver listens and every exporter runs: only now may systemd start what is ordered after us.
        if self.notifier.enabled:
            self.notifier.ready(self.status.line(time.monotonic()))

    async def shutdown(self) -> None:
        """Safe without start and safe twice."""
        if self._started:
            self.notifier.stopping()
        self._ready = False
        deadline = time.monotonic() + self.config.shutdown_timeout
        started, self._started = self._started, []
        receivers = [c for c in started if c in self.receivers]
        exporters = [c for c in started if c in self.exporters.values()]
        remaining = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        await asyncio.gather(*(r.shutdown(remaining() / 2) for r in receivers), return_exceptions=True)
        if self.traces is not None and self.traces in started:
            await self.traces.shutdown(remaining())
        if self.span_metrics is not None and self.span_metrics in started:
            await self.span_metrics.shutdown(remaining())  # a final snapshot, before the exporters drain
        if self.telemetry_push is not None and self.telemetry_push in started:
            await self.telemetry_push.shutdown(remaining())  # the same for the agent's own metrics
        results = await asyncio.gather(*(e.shutdown(remaining()) for e in exporters), return_exceptions=True)
        for exporter, result in zip(exporters, results):
            if isinstance(result, BaseException):
                log.error("exporter shutdown failed", **kv(exporter=type(exporter).__name__, error=repr(result)))
        self.dropped_at_shutdown |= shutdown_summary.report(
            {name: e.leftover() for name, e in self.exporters.items() if e in exporters and hasattr(e, "leftover")})
        if self.telemetry is not None:
            await self.telemetry.shutdown(1.0)
        log.info("stopped")

    def reload(self, config: Config) -> None:
        """Apply a changed config without a restart: sampling tiers and limits take effect at once and buffered
        traces are kept; other sections need a restart, which is logged."""
        if self.traces is not None and config.sampling != self.config.sampling:
            self.traces.sampler.reconfigure(settings_from_config(config.sampling))
            log.info("sampling config reloaded", **kv(tiers=",".join(t.name for t in config.sampling.tiers)))
        changed = [f for f in ("receivers", "admission", "exporters", "pipelines", "telemetry", "state_dir",
                               "span_metrics")
                   if getattr(config, f) != getattr(self.config, f)]
        if changed:
            log.warning("config sections changed that apply only after a restart", **kv(sections=",".join(changed)))
        self.config = config

    async def run_until_signal(self, config_path: str | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reload_from(config_path))
        # The watchdog pings from this loop for the whole run, start and shutdown included: a slow drain is not
        # a stuck loop (TimeoutStopSec bounds it), while a blocked loop stops the pings and gets us restarted.
        watchdog = asyncio.create_task(keep_watchdog(self.notifier), name="systemd-watchdog")
        status = asyncio.create_task(
            report_status(self.notifier, lambda: self.status.line(time.monotonic()), STATUS_EVERY_SECONDS),
            name="systemd-status")
        try:
            await self.start()
            try:
                await stop.wait()
                log.info("stopping on signal")
            finally:
                status.cancel()  # "stopping: ..." stays the status until exit
                await self.shutdown()
        finally:
            for task in (status, watchdog):
                task.cancel()
            await asyncio.gather(status, watchdog, return_exceptions=True)
            self.notifier.close()
