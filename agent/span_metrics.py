"""Span metrics: the RED aggregator's series, written through the metrics pipeline every `flush_interval`.

    aggregator = RedAggregator(buckets, dimensions, max_series)
    sampler.span_observer = aggregator                      # counts every span, before sampling
    span_metrics = SpanMetrics(aggregator, metrics_pipeline.consume, flush_interval=5.0)
    await span_metrics.start()
    ...
    await span_metrics.shutdown(timeout)                    # a final flush, after receivers have stopped

Each flush hands the metrics pipeline the aggregator's whole state as OTLP metrics, cumulative since the
aggregator was created (start time = `aggregator.created`, time = now), named as the OpenTelemetry
Collector's spanmetrics connector names them with its default namespace, so dashboards built for it work:

- `traces.span.metrics.calls`: monotonic cumulative Sum, one point per series
  (Prometheus: `traces_span_metrics_calls_total`);
- `traces.span.metrics.duration`: explicit-bucket Histogram in `ms`, the connector's default unit
  (Prometheus: `traces_span_metrics_duration_milliseconds_{bucket,sum,count}`).

Point attributes, as the connector's: `service.name`, `span.name`, `span.kind` (`SPAN_KIND_SERVER`, ...),
`status.code` (`STATUS_CODE_ERROR`, ...) and the configured dimensions a series has. An overflow series
(past `max_series`, see samplers.red) carries `service.name` and `otel.metric.overflow=true` only.
One ResourceMetrics per resource identity, with `service.name`, `service.namespace` and
`service.instance.id` (those that are set), so remote write derives `job` and `instance` from them.

Because every flush carries the totals, a flush the pipeline refuses loses nothing: the next one repeats it.
Large states go out as several requests of at most `max_points` series each, with a yield to the event loop
between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import groupby

from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from agent.logs import kv
from samplers.red import SPAN_KIND_NAMES, STATUS_CODE_NAMES, RedAggregator, RedSeries

log = logging.getLogger("headwater.span_metrics")

CALLS = "traces.span.metrics.calls"
DURATION = "traces.span.metrics.duration"
DURATION_UNIT = "ms"
SCOPE_NAME = "headwater.span_metrics"
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
MAX_POINTS = 1000
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_RESOURCE_KEYS = ("service.name", "service.namespace", "service.instance.id")

ConsumeMetrics = Callable[[ExportMetricsServiceRequest], Awaitable[None]]


def _kind_name(kind: int) -> str:
    return SPAN_KIND_NAMES[kind] if 0 <= kind < len(SPAN_KIND_NAMES) else f"SPAN_KIND_{kind}"


def _status_name(code: int) -> str:
    return STATUS_CODE_NAMES[code] if 0 <= code < len(STATUS_CODE_NAMES) else f"STATUS_CODE_{code}"


def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _point_attributes(series: RedSeries) -> list[KeyValue]:
    if series.overflow:
        return [_string("service.name", series.service_name),
                KeyValue(key=OVERFLOW_ATTRIBUTE, value=AnyValue(bool_value=True))]
    return [_string("service.name", series.service_name), _string("span.name", series.span_name),
            _string("span.kind", _kind_name(series.kind)), _string("status.code", _status_name(series.status_code)),
            *(_string(name, value) for name, value in series.dimensions)]


def build_requests(series: Sequence[RedSeries], bounds_ms: Sequence[float], start_ns: int, now_ns: int,
                   max_points: int = MAX_POINTS) -> list[ExportMetricsServiceRequest]:
    """The OTLP requests for these series (see the module docstring), each holding at most `max_points`
    series (two points each: calls and duration). `bounds_ms`: the histogram's bounds in milliseconds."""
    ordered = sorted(series, key=_identity)  # stable: each resource's series stay in their order
    requests = []
    for at in range(0, len(ordered), max_points):
        request = ExportMetricsServiceRequest()
        for identity, items in groupby(ordered[at:at + max_points], key=_identity):
            _add_resource(request, identity, list(items), bounds_ms, start_ns, now_ns)
        requests.append(request)
    return requests


def _identity(series: RedSeries) -> tuple[str, str, str]:
    return series.service_name, series.service_namespace, series.service_instance_id


def _add_resource(request: ExportMetricsServiceRequest, identity: tuple[str, str, str], items: Sequence[RedSeries],
                  bounds_ms: Sequence[float], start_ns: int, now_ns: int) -> None:
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(_string(k, v) for k, v in zip(_RESOURCE_KEYS, identity) if v)
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = SCOPE_NAME
    calls = scope_metrics.metrics.add()
    calls.name = CALLS
    calls.sum.aggregation_temporality = _CUMULATIVE
    calls.sum.is_monotonic = True
    duration = scope_metrics.metrics.add()
    duration.name = DURATION
    duration.unit = DURATION_UNIT
    duration.histogram.aggregation_temporality = _CUMULATIVE
    call_points = calls.sum.data_points
    histogram_points = duration.histogram.data_points
    for s in items:
        attributes = _point_attributes(s)
        start = min(int(s.start_time * 1e9), now_ns) if s.start_time else start_ns
        point = call_points.add()
        point.attributes.extend(attributes)
        point.start_time_unix_nano = start
        point.time_unix_nano = now_ns
        point.as_int = s.calls
        h = histogram_points.add()
        h.attributes.extend(attributes)
        h.start_time_unix_nano = start
        h.time_unix_nano = now_ns
        h.count = s.calls
        h.sum = s.duration_sum * 1e3
        h.bucket_counts.extend(s.bucket_counts)
        h.explicit_bounds.extend(bounds_ms)


class SpanMetrics:
    """A component (start / shutdown) that flushes `aggregator` into `consume_metrics` every `flush_interval`
    seconds, and once more at shutdown. `clock` (seconds since the epoch) stamps each flush."""

    def __init__(self, aggregator: RedAggregator, consume_metrics: ConsumeMetrics, flush_interval: float,
                 clock: Callable[[], float] = time.time, *, max_points: int = MAX_POINTS) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval: expected more than 0 seconds, found {flush_interval!r}")
        if max_points < 1:
            raise ValueError(f"max_points: expected at least 1, found {max_points}")
        self.aggregator = aggregator
        self._consume = consume_metrics
        self.flush_interval = flush_interval
        self._clock = clock
        self._max_points = max_points
        self._bounds_ms = [b / 1e6 for b in aggregator.bounds_ns]
        self._start_ns = int(aggregator.created * 1e9)
        self._task: asyncio.Task[None] | None = None
        self._shut_down = False
        self.flushes = 0
        self.failed_flushes = 0
        self._expired_before = 0  # series expired by aggregators replaced at a reload
        self._register_metrics()

    async def start(self) -> None:
        if self._task is None and not self._shut_down:
            self._task = asyncio.create_task(self._loop(), name="span-metrics-flush")

    async def shutdown(self, timeout: float) -> None:
        """Stop the timer and flush the final totals within `timeout`. Safe without start and twice; call it
        after the receivers have stopped and before the metrics exporters shut down."""
        if self._shut_down:
            return
        self._shut_down = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # a flush cut short here is repeated in full just below
            await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.flush(), max(0.0, timeout))
        except asyncio.TimeoutError:
            self.failed_flushes += 1
            log.error("final span metrics flush did not finish in time", **kv(timeout_s=timeout))

    async def replace(self, aggregator: RedAggregator, timeout: float) -> None:
        """Flush the totals so far (within `timeout`), then count into `aggregator` from now on: a reload changed
        the dimensions, buckets or `max_series`, so series change identity and start again from zero, with a
        new start time (a counter reset to Prometheus)."""
        try:
            await asyncio.wait_for(self.flush(), max(0.0, timeout))
        except asyncio.TimeoutError:
            self.failed_flushes += 1
            log.error("span metrics flush before a reload did not finish in time", **kv(timeout_s=timeout))
        self._expired_before += self.aggregator.expired_series
        self.aggregator = aggregator
        self._bounds_ms = [b / 1e6 for b in aggregator.bounds_ns]
        self._start_ns = int(aggregator.created * 1e9)

    @property
    def expired_series(self) -> int:
        """Series forgotten when idle since start, across reloads."""
        return self._expired_before + self.aggregator.expired_series

    async def flush(self) -> bool:
        """Hand the current totals to the metrics pipeline now; False (logged, counted) if it refused them.
        Series idle for the aggregator's `idle_expiry` are forgotten first (samplers.red, "Bounds")."""
        self.aggregator.expire(self._clock())
        series = self.aggregator.snapshot()
        if not series:
            return True
        now_ns = max(int(self._clock() * 1e9), self._start_ns)
        requests = build_requests(series, self._bounds_ms, self._start_ns, now_ns, self._max_points)
        try:
            for i, request in enumerate(requests):
                if i:
                    await asyncio.sleep(0)
                await self._consume(request)
        except Exception as exc:  # noqa: BLE001 - the pipeline's failure must not stop the next flush
            self.failed_flushes += 1
            log.warning("span metrics flush failed; the next flush carries the same totals",
                        **kv(series=len(series), error=repr(exc)))
            return False
        self.flushes += 1
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    def _register_metrics(self) -> None:
        meter = metrics.get_meter("headwater.span_metrics")
        meter.create_observable_gauge("headwater_span_metrics_series",
                                      [lambda _o: [metrics.Observation(self.aggregator.series_count)]],
                                      description="Span-metrics series held (bounded by span_metrics.max_series).")
        meter.create_observable_counter("headwater_span_metrics_overflow_spans",
                                        [lambda _o: [metrics.Observation(self.aggregator.overflow_spans)]], unit="{span}",
                                        description="Spans counted into a service's otel_metric_overflow series "
                                        "because span_metrics.max_series was reached.")
        meter.create_observable_counter("headwater_span_metrics_expired_series",
                                        [lambda _o: [metrics.Observation(self.expired_series)]], unit="{series}",
                                        description="Span-metrics series forgotten after span_metrics.idle_expiry "
                                        "without a span (counted from 0).")
        meter.create_observable_counter("headwater_span_metrics_flushes",
                                        [lambda _o: [metrics.Observation(self.flushes, {"outcome": "ok"}),
                                                     metrics.Observation(self.failed_flushes, {"outcome": "failed"})]],
                                        description="Span-metrics snapshots handed to the metrics pipeline, by "
                                        "outcome (ok, failed).")
