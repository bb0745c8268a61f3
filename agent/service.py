"""The composition root: builds exporters, pipelines, admission control and receivers from a Config (with
`agent.build`), runs them in order, and applies a new config on SIGHUP.

Start order: exporters, then the trace pipeline, span metrics and the telemetry push, then receivers; the
telemetry server (started first) reports ready at the end and systemd gets READY=1.
Shutdown order: STOPPING=1 and not ready; receivers stop listening and finish in-flight requests; the trace
pipeline decides what it buffers; span metrics and the telemetry push flush; exporters deliver what they hold
within what is left of `shutdown_timeout` (those a reload removed finish their delivery too); the telemetry
server goes last. Under systemd (agent.notify) the watchdog is pinged from the event loop for the whole run,
and a reload is framed by RELOADING=1 and READY=1.
Reload order (`reload`; what applies live is in `agent.reload`): everything new is built first, so a config
that cannot be built changes nothing; then, with the receivers held at the gate (`agent.gate`): the trace
pipeline, if removed, decides what it buffers; remote-write exporters being replaced hand their queue over;
new exporters start; the pipelines are rewired; OTLP exporters being replaced hand over what they queue. The
gate opens; removed exporters deliver what they hold in the background; span metrics follow; listeners whose
endpoint changed are rebound, the new socket bound before the old one closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import SimpleNamespace
from typing import Any

from agent import logs, shutdown_summary
from agent.admission import Admission
from agent.build import build_exporter, build_exporters, build_gateway, build_grpc, build_http
from agent.build import http_connections
from agent.config import Config, ConfigError, check_file
from agent.config.check import describe_tiers, tiers_source, warnings_for
from agent.gate import Gate
from agent.logs import kv
from agent.notify import Notifier, keep_watchdog, report_status
from agent.pipeline import FanOut, MetricsFanOut
from agent.reload import LISTENERS, exporter_changes, exporter_specs, get_at, listens, replace_at
from agent.reload import plan as reload_plan
from agent.sampling import SampledTraces, new_sampler, settings_from_config
from agent.span_metrics import SpanMetrics
from agent.status_line import StatusLine, StatusSources
from agent.telemetry import TelemetryServer, collect_metrics, install_meter_provider
from agent.telemetry_push import TelemetryPush
from exporters.remote_write.exporter import RemoteWriteExporter
from samplers.red import RedAggregator

log = logging.getLogger("headwater.agent")

# How often `systemctl status` gets a new STATUS= line: often enough to read rates, rare enough to cost nothing.
STATUS_EVERY_SECONDS = 5.0


class Agent:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        """`notifier`: where systemd notifications go; default from NOTIFY_SOCKET (a no-op without it)."""
        install_meter_provider()
        self.config = config
        self.notifier = Notifier.from_environment() if notifier is None else notifier
        self._gate = Gate()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()
        self.exporters: dict[str, Any] = build_exporters(config)
        self._specs = exporter_specs(config)  # what each running exporter was built from
        self._retiring: dict[str, asyncio.Task[None]] = {}  # removed by a reload, delivering what they hold
        self.admission = Admission(config.admission.max_inflight, config.admission.retry_after)
        self.traces: SampledTraces | None = None
        self.metrics: MetricsFanOut | None = None
        self.span_metrics: SpanMetrics | None = None
        self._series: FanOut | None = None
        self._traces_on = False
        # What receivers and span metrics call: through the gate, to whatever pipeline is there at the time.
        guard = self._gate.guard
        self._consume_traces = guard(lambda data: self._pipeline("traces").consume(data))
        self._consume_metrics = guard(lambda request: self._pipeline("metrics").consume(request))
        self._metrics_wire = SimpleNamespace(
            consume_wire=guard(lambda wire: self._pipeline("metrics").consume_wire(wire)),
            consume_parsed=guard(lambda request, wire: self._pipeline("metrics").consume_parsed(request, wire)))
        self._consume_series = guard(lambda batch: self._pipeline("series").consume(batch))
        otlp = config.receivers.otlp
        self.http = build_http(config, self.admission) if otlp.http.enabled else None
        self.grpc = build_grpc(config, self.admission) if otlp.grpc.enabled else None
        self.gateway = (build_gateway(config, self.admission, self._consume_series)
                        if listens(config.receivers.remote_write) and config.pipelines.metrics else None)
        self._wire(config)
        if self._wants_span_metrics(config):
            self._new_span_metrics(config)
        self.telemetry_push = self._new_telemetry_push(config)
        self._ready = False
        self.dropped_at_shutdown = False  # set by shutdown (or a removed exporter): `headwater run` exits non-zero
        self.telemetry = (TelemetryServer(config.telemetry.endpoint, lambda: self._ready)
                          if config.telemetry.enabled else None)
        self._started: list[Any] = []
        self.status = self._new_status_line()

    @property
    def receivers(self) -> list[Any]:
        return [r for r in (self.http, self.grpc, self.gateway) if r is not None]

    # -- wiring -----------------------------------------------------------------------------------------

    def _pipeline(self, name: str) -> Any:
        if name == "traces":
            found: Any = self.traces if self._traces_on else None
        else:
            found = self.metrics if name == "metrics" else self._series
        if found is None:  # a call that waited at the gate while a reload removed the pipeline
            raise RuntimeError(f"the {name} pipeline was removed by a config reload")
        return found

    def _wire(self, config: Config) -> None:
        """Point the pipelines, admission control and receivers at `self.exporters` as `config` lists them.
        Synchronous: nothing runs between its steps."""
        p, exporters = config.pipelines, self.exporters
        trace_names = [n for n in (p.traces.exporters if p.traces else ()) if n in exporters]
        metric_names = [n for n in (p.metrics.exporters if p.metrics else ()) if n in exporters]
        self.admission.clear_sources()
        for kind, names in (("traces", trace_names), ("metrics", metric_names)):
            for name in names:
                exporter = exporters[name]
                if hasattr(exporter, "full"):  # a queue that can refuse: pressure, not a share of the budget
                    self.admission.add_pressure(kind, name, lambda e=exporter: e.full)
                else:
                    self.admission.add_queue(lambda e=exporter: e.queued_bytes, kind)
        self._traces_on = bool(trace_names)
        if trace_names:
            trace_exporters = [exporters[n] for n in trace_names]
            consumers = [(n, exporters[n].consume_traces) for n in trace_names]
            backlog = lambda: sum(e.queued_bytes for e in trace_exporters)  # noqa: E731
            limit = config.admission.max_inflight // 2
            if self.traces is None:
                self.traces = SampledTraces(new_sampler(config.sampling), consumers, backlog=backlog,
                                            backlog_limit=limit)
            else:
                self.traces.set_exporters(consumers, backlog, limit)
            # The sampler's buffer is bounded by sampling.max_memory and sheds on its own; only its pending
            # output counts as in flight.
            self.admission.add_queue(lambda: self.traces.sampler.pending_output_bytes, "traces")
        self.metrics = MetricsFanOut([(n, exporters[n]) for n in metric_names]) if metric_names else None
        series = [(n, exporters[n].consume_series) for n in metric_names if hasattr(exporters[n], "consume_series")]
        self._series = FanOut("metrics", series) if series else None
        self._set_receiver_consumers()

    def _set_receiver_consumers(self) -> None:
        traces = self._consume_traces if self._traces_on else None
        metrics, wire = (self._consume_metrics, self._metrics_wire) if self.metrics is not None else (None, None)
        receivers = self.config.receivers
        if self.http is not None:
            self.http.set_consumers(traces, metrics, wire, receivers.otlp.http.max_body_size)
        if self.grpc is not None:
            self.grpc.set_consumers(traces, metrics, wire)
        if self.gateway is not None and receivers.remote_write is not None:
            self.gateway.set_consume(self._consume_series, receivers.remote_write.max_body_size)
        # Connection management (timeouts, max_connections) applies live to the aiohttp receivers; gRPC's needs a
        # restart (agent.reload).
        retry_after = self.config.admission.retry_after
        if self.http is not None:
            self.http.set_connections(http_connections(receivers.otlp.http, retry_after))
        if self.gateway is not None and receivers.remote_write is not None:
            self.gateway.set_connections(http_connections(receivers.remote_write, retry_after))

    def _wants_span_metrics(self, config: Config) -> bool:
        p = config.pipelines
        return bool(p.metrics and p.metrics.span_metrics and self._traces_on and self.metrics is not None)

    def _new_span_metrics(self, config: Config) -> None:
        assert self.traces is not None
        sm = config.span_metrics
        red = RedAggregator(sm.buckets, sm.dimensions, sm.max_series, idle_expiry=sm.idle_expiry)
        self.traces.sampler.span_observer = red  # every span, before any sampling decision
        self.span_metrics = SpanMetrics(red, self._gate.guard(lambda request: self._pipeline("metrics").consume(request)),
                                        sm.flush_interval)

    def _new_telemetry_push(self, config: Config) -> TelemetryPush | None:
        name = config.telemetry.remote_write
        if not name:
            return None
        # Looked up at each push, through the gate: a reload may rebuild the exporter.
        consume = self._gate.guard(lambda request: self.exporters[name].consume_metrics(request))
        return TelemetryPush(collect_metrics, consume, config.telemetry.remote_write_interval)

    def _new_status_line(self) -> StatusLine:
        """The STATUS= line's sources, as the pipelines stand (built again after a reload)."""
        sampler = self.traces.sampler if self.traces is not None and self._traces_on else None
        return StatusLine(StatusSources(
            spans_in=(lambda: sampler.stats.spans_in) if sampler else None,
            spans_kept=(lambda: sum(sampler.stats.kept_spans.values())) if sampler else None,
            buffered_traces=(lambda: sampler.buffered_traces) if sampler else None,
            buffered_bytes=(lambda: sampler.buffered_bytes) if sampler else None,
            queued_bytes={name: (lambda e=e: e.queued_bytes) for name, e in self.exporters.items()}))

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._reload_lock:  # a SIGHUP during start is applied once it is done
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
            for warning in warnings_for(self.config):
                log.warning(warning.message, **kv(key=warning.path))
            self._log_tiers()
            log.info("started", **kv(exporters=",".join(self.exporters) or "none",
                                     traces=",".join(self.traces.exporter_names) if self._traces_on else "off",
                                     metrics=",".join(self.metrics.exporter_names) if self.metrics else "off"))
            # Every receiver listens and every exporter runs: only now may systemd start what is ordered after us.
            if self.notifier.enabled:
                self.notifier.ready(self.status.line(time.monotonic()))

    def _log_tiers(self) -> None:
        """The tiers in effect, said once at start and after a reload that changed them: left out of the file,
        the built-in ones apply, and a person should not have to guess which."""
        if self._traces_on:
            tiers = self.config.sampling.tiers
            log.info("sampling tiers in effect", **kv(tiers=describe_tiers(tiers), source=tiers_source(tiers)))

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
        results = await asyncio.gather(*(e.shutdown(remaining()) for e in exporters), *self._retiring.values(),
                                       return_exceptions=True)
        for exporter, result in zip(exporters, results):
            if isinstance(result, BaseException):
                log.error("exporter shutdown failed", **kv(exporter=type(exporter).__name__, error=repr(result)))
        self.dropped_at_shutdown |= shutdown_summary.report(
            {name: e.leftover() for name, e in self.exporters.items() if e in exporters and hasattr(e, "leftover")})
        if self.telemetry is not None:
            await self.telemetry.shutdown(1.0)
        log.info("stopped")

    async def run_until_signal(self, config_path: str | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reload_in_background(config_path))
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
                loop.remove_signal_handler(signal.SIGHUP)
                async with self._reload_lock:  # a reload under way finishes first
                    await self.shutdown()
        finally:
            for task in (status, watchdog):
                task.cancel()
            await asyncio.gather(status, watchdog, return_exceptions=True)
            self.notifier.close()

    def _reload_in_background(self, path: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_from(path), name="config-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    # -- reload -----------------------------------------------------------------------------------------

    async def _reload_from(self, path: str | None) -> bool:
        """SIGHUP: read `path` again (the shipped default when None) through the check `headwater validate`
        runs (`agent.config.check`), and apply it. A file with problems is refused whole, every problem
        logged, and the running config stays. One reload at a time: a SIGHUP during one waits for it."""
        async with self._reload_lock:
            if not self._ready:
                log.warning("config reload ignored: the agent is not running")
                return False
            # systemd: RELOADING=1 before the file is read, READY=1 once the outcome (applied or refused) is known.
            notify = self.notifier.enabled
            if notify:
                self.notifier.reloading()
            try:
                return await self._reload_file(path)
            finally:
                if notify:
                    self.notifier.ready(self.status.line(time.monotonic()))

    async def _reload_file(self, path: str | None) -> bool:
        source = str(path) if path is not None else "(default config)"
        try:
            checked = check_file(path)
        except ConfigError as exc:
            log.error("config reload refused; keeping the running config", **kv(file=source, problems=len(exc.issues)))
            for issue in exc.issues:
                log.error("config problem", **kv(file=source, key=issue.path or "(top level)", problem=issue.message))
            return False
        for warning in checked.warnings:
            log.warning(warning.message, **kv(key=warning.path))
        try:
            return await self.reload(checked.config)
        except Exception:
            log.exception("config reload failed part way; the agent runs with what was applied")
            return False

    async def reload(self, config: Config) -> bool:
        """Apply `config` (already checked) to the running agent, in the order the module docstring gives.
        False, with nothing changed, when an exporter of it cannot be built."""
        plan = reload_plan(self.config, config)
        for note in plan.needs_restart:
            log.warning("config change needs a restart; the running value stays", **kv(key=note.path, why=note.message))
        old, new = self.config, plan.config
        self._reload_client_tls()
        if new == old:
            log.info("config reloaded: nothing changed")
            return True
        specs = exporter_specs(new)
        changes = exporter_changes(self._specs, specs)
        for name in (*changes.added, *changes.replaced):  # a removed one of that name may still hold its queue
            if name in self._retiring:
                await asyncio.gather(self._retiring[name], return_exceptions=True)
        try:
            built = {name: build_exporter(name, new, self._delta_of(name) if name in changes.replaced else None)
                     for name in (*changes.added, *changes.replaced)}
        except (ValueError, OSError) as exc:
            log.error("config reload refused: an exporter cannot be built; keeping the running config",
                      **kv(error=str(exc)))
            return False

        logs.set_level(new.telemetry.log_level)
        self.admission.limit = new.admission.max_inflight
        self.admission.retry_after = new.admission.retry_after
        timeout = new.shutdown_timeout
        removed = {name: self.exporters[name] for name in changes.removed}
        await self._gate.close(timeout)
        try:
            if self._traces_on and new.pipelines.traces is None and self.traces is not None:
                await self.traces.shutdown(timeout)  # decide what it buffers, out through the exporters it had
                self._forget(self.traces)
            handed: dict[str, Any] = {}
            for name in changes.replaced:
                previous = self.exporters[name]
                if isinstance(previous, RemoteWriteExporter):  # two cannot share the queue: this one goes first
                    replacement = built[name]
                    handed[name] = await previous.hand_over(keep_files=replacement.queue_settings.durable,
                                                            max_bytes=replacement.queue_settings.max_memory)
                    self._forget(previous)
            running, running_specs = dict(self.exporters), dict(self._specs)
            for name, exporter in list(built.items()):
                started = await self._start_exporter(name, exporter, old if name in changes.replaced else None)
                if started is exporter:
                    running[name], running_specs[name] = exporter, specs[name]
                elif started is not None:  # the replaced one, rebuilt as it ran
                    running[name] = started
                elif name in changes.replaced and not isinstance(running[name], RemoteWriteExporter):
                    pass  # the running OTLP or file exporter stays as it is
                else:
                    running.pop(name, None)
                    running_specs.pop(name, None)
            for name in changes.removed:
                running.pop(name)
                running_specs.pop(name)
            previous_exporters = self.exporters
            self.exporters = {name: running[name] for name in dict.fromkeys([*specs, *running]) if name in running}
            self._specs = {name: running_specs[name] for name in self.exporters}
            self.config = new
            self._wire(new)
            for name, requests in handed.items():
                if name in self.exporters:
                    self.exporters[name].take_over(requests)
                elif requests:
                    log.error("requests handed over by a replaced exporter are lost: no exporter of that name "
                              "could start", **kv(exporter=name, requests=len(requests)))
            for name in changes.replaced:
                previous = previous_exporters[name]
                if isinstance(previous, RemoteWriteExporter) or self.exporters.get(name) is previous:
                    continue
                if hasattr(previous, "hand_over"):  # the kept spans it queues go out through the new one
                    self._forget(previous)
                    self.exporters[name].take_over(await previous.hand_over())
                else:
                    removed[name] = previous  # the file exporter writes what it buffers to its old path
            if self._traces_on and self.traces is not None and self.traces not in self._started:
                await self.traces.start()
                self._started.append(self.traces)
            if self.traces is not None and new.sampling != old.sampling:
                self.traces.sampler.reconfigure(settings_from_config(new.sampling))  # buffered traces re-matched
                log.info("sampling config reloaded", **kv(tiers=describe_tiers(new.sampling.tiers),
                                                          source=tiers_source(new.sampling.tiers)))
        finally:
            self._gate.open()
        for name, exporter in removed.items():
            self._retire(name, exporter)
        await self._reload_span_metrics(old, new)
        await self._reload_telemetry_push(old, new)
        rebound = await self._rebind_listeners(old)
        self.status = self._new_status_line()
        if self._traces_on and old.pipelines.traces is None:
            self._log_tiers()
        log.info("config reloaded", **kv(exporters_added=",".join(changes.added) or "none",
                                         exporters_removed=",".join(changes.removed) or "none",
                                         exporters_replaced=",".join(changes.replaced) or "none",
                                         rebound=",".join(rebound) or "none", log_level=new.telemetry.log_level))
        return True

    def _reload_client_tls(self) -> None:
        """Every running exporter makes its TLS context again from its files (certificates renewed at the same
        paths); one that cannot keeps the context it has, logged. Exporters the reload replaces get new ones."""
        for name, exporter in self.exporters.items():
            security = getattr(exporter, "security", None)
            if security is None:
                continue
            try:
                security.reload_tls()
            except ValueError as exc:
                log.error("TLS files cannot be used; the exporter keeps the certificates it had",
                          **kv(exporter=name, error=str(exc)))

    def _delta_of(self, name: str) -> Any:
        exporter = self.exporters.get(name)
        return exporter.delta_to_cumulative if isinstance(exporter, RemoteWriteExporter) else None

    async def _start_exporter(self, name: str, exporter: Any, fallback: Config | None) -> Any:
        """Start `exporter`; when it cannot start (a queue directory it cannot open), log it and, for a
        replaced remote-write exporter (`fallback`: the config it ran with), start one built as before on the
        same queue instead. None when nothing of that name runs now."""
        try:
            await exporter.start()
        except Exception as exc:  # noqa: BLE001 - the rest of the reload still applies
            log.error("exporter cannot start; it is left out until a reload", **kv(exporter=name, error=repr(exc)))
            if fallback is None or not isinstance(exporter, RemoteWriteExporter):
                return None
            exporter = build_exporter(name, fallback, exporter.delta_to_cumulative)
            try:
                await exporter.start()
            except Exception as again:  # noqa: BLE001
                log.error("exporter cannot start as it ran before either", **kv(exporter=name, error=repr(again)))
                return None
            log.warning("exporter runs with its previous settings", **kv(exporter=name))
        self._started.append(exporter)
        return exporter

    def _forget(self, component: Any) -> None:
        """`component` no longer needs a shutdown from `shutdown` (stopped, or handed over)."""
        self._started = [c for c in self._started if c is not component]

    def _retire(self, name: str, exporter: Any) -> None:
        """A removed exporter delivers what it holds within `shutdown_timeout`, in the background (what a disk
        queue still holds then stays in its files, for an exporter of that name later)."""
        self._forget(exporter)

        async def retire() -> None:
            try:
                await exporter.shutdown(self.config.shutdown_timeout)
            except Exception as exc:  # noqa: BLE001
                log.error("removed exporter failed to shut down", **kv(exporter=name, error=repr(exc)))
                return
            if hasattr(exporter, "leftover"):  # what it could not deliver, as at shutdown (and the exit status)
                self.dropped_at_shutdown |= shutdown_summary.report({name: exporter.leftover()})
            log.info("removed exporter stopped", **kv(exporter=name))

        task = asyncio.get_running_loop().create_task(retire(), name=f"retire[{name}]")
        self._retiring[name] = task
        task.add_done_callback(lambda t: self._retiring.pop(name) if self._retiring.get(name) is t else None)

    async def _reload_span_metrics(self, old: Config, new: Config) -> None:
        wanted, current = self._wants_span_metrics(new), self.span_metrics
        if current is not None and not wanted:
            if self.traces is not None:
                self.traces.sampler.span_observer = None
            self.span_metrics = None
            self._forget(current)
            await current.shutdown(new.shutdown_timeout)  # the final totals
        elif current is None and wanted:
            self._new_span_metrics(new)
            assert self.span_metrics is not None
            await self.span_metrics.start()
            self._started.append(self.span_metrics)
        elif current is not None:
            before, after = old.span_metrics, new.span_metrics
            if (before.buckets, before.dimensions, before.max_series) != (after.buckets, after.dimensions,
                                                                          after.max_series):
                red = RedAggregator(after.buckets, after.dimensions, after.max_series, idle_expiry=after.idle_expiry)
                assert self.traces is not None
                self.traces.sampler.span_observer = red  # spans from now on; the old totals go out first
                await current.replace(red, new.shutdown_timeout)
            current.flush_interval = after.flush_interval
            current.aggregator.idle_expiry = after.idle_expiry  # bounded state: applies from the next flush

    async def _reload_telemetry_push(self, old: Config, new: Config) -> None:
        before, after = old.telemetry, new.telemetry
        if (before.remote_write, before.remote_write_interval) == (after.remote_write, after.remote_write_interval):
            return
        current, self.telemetry_push = self.telemetry_push, self._new_telemetry_push(new)
        if current is not None:
            self._forget(current)
            await current.shutdown(new.shutdown_timeout)  # a last push through the exporter it had
        if self.telemetry_push is not None:
            await self.telemetry_push.start()
            self._started.append(self.telemetry_push)

    async def _rebind_listeners(self, old: Config) -> list[str]:
        """Start, stop or move each listener whose section changed; the new socket is bound before the old one
        closes, and when it cannot be bound the old one stays (logged, and kept in `self.config` so the next
        reload tries again). The names of the listeners that changed."""
        changed = []
        for path in LISTENERS:
            before, after = get_at(old, path), get_at(self.config, path)
            was, will = listens(before), listens(after)
            if was == will and (not will or before.endpoint == after.endpoint):
                continue
            current = self._listener(path)
            fresh = self._build_listener(path, current) if will else None
            if fresh is not None:
                try:
                    await fresh.start()
                except (OSError, RuntimeError) as exc:
                    log.error("cannot listen on the new endpoint; keeping the old one",
                              **kv(listener=path, endpoint=after.endpoint,
                                   old_endpoint=before.endpoint if was else "none", error=str(exc)))
                    self.config = replace_at(self.config, path, before)
                    self._set_receiver_consumers()
                    continue
                self._started.append(fresh)
            self._set_listener(path, fresh)
            self._set_receiver_consumers()
            if current is not None:
                self._forget(current)
                await current.shutdown(self.config.shutdown_timeout / 2)
            log.info("listener moved" if fresh is not None and current is not None else
                     "listener started" if fresh is not None else "listener stopped",
                     **kv(listener=path, endpoint=after.endpoint if will else "none"))
            changed.append(path)
        return changed

    def _listener(self, path: str) -> Any:
        return {"receivers.otlp.http": self.http, "receivers.otlp.grpc": self.grpc,
                "receivers.remote_write": self.gateway, "telemetry": self.telemetry}[path]

    def _set_listener(self, path: str, listener: Any) -> None:
        attribute = {"receivers.otlp.http": "http", "receivers.otlp.grpc": "grpc",
                     "receivers.remote_write": "gateway", "telemetry": "telemetry"}[path]
        setattr(self, attribute, listener)

    def _build_listener(self, path: str, current: Any) -> Any:
        config = self.config
        if path == "receivers.otlp.http":
            listener = build_http(config, self.admission)
        elif path == "receivers.otlp.grpc":
            listener = build_grpc(config, self.admission)
        elif path == "receivers.remote_write":
            sessions = None
            gateway = config.receivers.remote_write
            if current is not None and gateway is not None and (
                    current.sessions.max_bytes_per_sender, current.sessions.max_total_bytes) == (
                    gateway.max_dictionary_per_sender, gateway.max_dictionary_total):
                sessions = current.sessions  # senders go on with their dictionaries
            listener = build_gateway(config, self.admission, self._consume_series, sessions)
        else:
            return TelemetryServer(config.telemetry.endpoint, lambda: self._ready)
        if path != "receivers.remote_write":
            traces = self._consume_traces if self._traces_on else None
            metrics, wire = (self._consume_metrics, self._metrics_wire) if self.metrics is not None else (None, None)
            if path == "receivers.otlp.http":
                listener.set_consumers(traces, metrics, wire, config.receivers.otlp.http.max_body_size)
            else:
                listener.set_consumers(traces, metrics, wire)
        return listener
