"""OTLP metrics (an ExportMetricsServiceRequest) to Prometheus series, one request at a time.

Follows OpenTelemetry's "Prometheus and OpenMetrics Compatibility" spec ("OTLP Metric points to Prometheus").
Names and label names come from `naming`.

What each OTLP point becomes:
- gauge -> one gauge sample; cumulative monotonic sum -> a counter (`_total`); cumulative non-monotonic
  sum -> a gauge. Delta sums and histograms (converted to cumulative before they get here) and metrics
  without a temporality are counted as `unsupported_delta_temporality` / `unsupported_unspecified_temporality`.
- histogram (explicit buckets) -> `{name}_bucket{le=...}` per bucket with cumulative counts, `le` written as
  Prometheus writes it (`0.005`, `1`, `1e+06`) and `+Inf` last (its value is the point's count), then
  `{name}_sum` (when the point has a sum: SDKs leave it out for instruments that take negative values,
  which is what the spec's "only if positive and monotonic" guards) and `{name}_count`. Min, max and the
  start time are not used (nor is `_created`). A point whose bucket counts do not match its bounds, or whose
  bounds do not strictly increase, is `invalid_histogram_buckets`; a last bound of +Inf is the +Inf bucket.
- exponential histogram, `native_histograms=True` -> one native histogram sample on `{name}`: schema = scale,
  scales above 8 downscaled to 8 by merging buckets, scales below -4 dropped (`unsupported_histogram_scale`);
  zero bucket and threshold (1e-128 when unset), sparse spans (gaps of up to two empty buckets are written
  inline, as Prometheus's client does) and delta-encoded integer counts; Prometheus bucket indexes are the
  OTLP ones plus one (upper versus lower boundary).
- exponential histogram, `native_histograms=False` -> classic `_bucket`/`_sum`/`_count` as above, one bucket
  per OTLP bucket from the lowest to the highest populated one, `le` = its upper boundary (base**(index+1);
  for negative buckets -base**index), plus one for the zero bucket (`le` = the zero threshold). Beyond
  `MAX_CLASSIC_BUCKETS` finite buckets, adjacent pairs are merged, scale by scale (a downscale), until they
  fit. 160 is the SDKs' default bucket count per sign: a default SDK histogram of positive values keeps its
  full resolution and a point never exceeds 162 `_bucket` series; boundaries stay powers of the base, so they move
  only when the SDK (or this merge) changes scale, and a cumulative histogram's populated range only grows.
  Each point costs up to that many series: where that is too many, lower the SDK's `max_size`, or enable
  native histograms on the receiver.
- summary -> `{name}{quantile=...}` per quantile, `{name}_sum`, `{name}_count`.
- a point flagged "no recorded value" -> a Prometheus staleness marker (`STALE_NAN`) on every series the
  point produces: each bucket of its bounds (or quantile), `_sum`, `_count`; for a native histogram, a
  histogram whose count and sum are the marker. (A stale exponential point has no buckets, so its classic
  fallback can only mark `+Inf`, `_sum` and `_count`.)
- exemplars of monotonic sums and histograms -> exemplars (`trace_id`, `span_id` in hex, the filtered
  attributes as well when everything fits in 128 characters, OpenMetrics' limit; otherwise the IDs alone)
  on the counter's series, on the one bucket whose `le` range holds the value, or on the native histogram.
  Exemplars of other points are dropped, as the spec requires.

Labels of every series, sorted by name as remote write requires: `__name__`; the data point's attributes;
`job` (`service.namespace/service.name`) and `instance` (`service.instance.id`); `otel_scope_name` and
`otel_scope_version`; the resource attributes named in `promote` (a data point attribute of the same name
wins); `le` or `quantile`. Empty values are left out: remote write forbids them. Each resource with other
attributes also gets one `target_info` series (value 1, its newest point's timestamp) carrying them with
`job` and `instance`, once per distinct label set per call.

Limits (`Limits`): a point whose labels break one is dropped whole and counted by reason, never truncated.
The series limit counts distinct label sets of data points per metric family within one call (a histogram
point's buckets, `_sum` and `_count` count once, so a point is never half sent). Keeping it across calls
would need an expiring, byte-bounded set of every series seen; per call it costs one set per large family
and its memory is bounded by the request.

`SampleBatch.dropped` counts data points (plus dropped `target_info` series), by reason.

The work is done per batch: names and label plans are cached per distinct (name, unit, kind) and per
distinct attribute key tuple, `le` tables per distinct bounds, resource and scope labels once per resource
and scope; the result is columnar (parallel lists) rather than an object per sample. The arithmetic on
buckets (bounds, exponential layouts and downscaling, native spans) is in `buckets`.
"""

from __future__ import annotations

import base64
import json
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import NamedTuple

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, DataPointFlags, Metric

from exporters.remote_write.buckets import MAX_CLASSIC_BUCKETS as MAX_CLASSIC_BUCKETS  # re-exported
from exporters.remote_write.buckets import (
    LE,
    downscale,
    exponential_layout,
    le_table,
    sparse,
    trim,
)
from exporters.remote_write.series import (  # re-exported: the series model's old home
    NAME_LABEL as NAME_LABEL,
    STALE_NAN as STALE_NAN,
    Exemplar as Exemplar,
    Labels as Labels,
    Metadata as Metadata,
    NativeHistogram as NativeHistogram,
    SampleBatch as SampleBatch,
)
from exporters.remote_write.naming import (
    MetricKind,
    PlanEntry,
    float_label,
    job_label,
    label_plan,
    metric_name,
)

MIN_SCHEMA, MAX_SCHEMA = -4, 8
DEFAULT_ZERO_THRESHOLD = 1e-128
EXEMPLAR_MAX_CHARS = 128  # OpenMetrics: names and values of an exemplar's labels together

_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_QUANTILE = "quantile"
# Bytes a sample costs in a remote-write 1.0 body beyond its label text: tags and lengths per label, the
# TimeSeries and Sample framing, an 8-byte value and a varint timestamp. Estimates, for batch sizing.
_SAMPLE_OVERHEAD = 24
_LABEL_OVERHEAD = 6
_HISTOGRAM_OVERHEAD = 48
_EXEMPLAR_OVERHEAD = 24


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one series, and on series per metric within one `translate` call.

        translate(request, limits=Limits(max_labels_per_series=40))

    Past a bound the data point (every series it would produce) is dropped and counted in
    `SampleBatch.dropped` as `label_name_too_long`, `label_value_too_long`, `too_many_labels` or
    `too_many_series`; nothing is truncated. Lengths are UTF-8 bytes, never fewer than characters, so a
    receiver that counts either accepts what passes. The defaults are Grafana Mimir's (and Loki's)
    distributor defaults, the strictest of the common receivers, which refuse a series past them: names
    1024, values 2048, 30 labels (VictoriaMetrics 1.79 also stops at 30 labels, by cutting the rest
    silently). Prometheus itself has no such limits. The series limit (10,000) is ours: a guard against a
    runaway attribute, an order of magnitude above the OpenTelemetry SDKs' default cardinality limit (2000).
    """

    max_label_name_length: int = 1024
    max_label_value_length: int = 2048
    max_labels_per_series: int = 30
    max_series_per_metric: int = 10_000

    def __post_init__(self) -> None:
        for name in (
            "max_label_name_length",
            "max_label_value_length",
            "max_labels_per_series",
            "max_series_per_metric",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_labels_per_series < 2:
            raise ValueError("max_labels_per_series must be at least 2 (__name__ and le/quantile)")


DEFAULT_LIMITS = Limits()


def translate(
    request: ExportMetricsServiceRequest,
    *,
    native_histograms: bool = False,
    limits: Limits | None = None,
    promote: tuple[str, ...] = (),
) -> SampleBatch:
    """Translate every data point of `request` (read only, never modified).

    `native_histograms`: exponential histograms as native histograms (only for a receiver that ingests
    them: Prometheus 2.42 refuses the whole request otherwise) instead of classic buckets. `promote`: the
    resource attribute keys (as OTLP spells them, e.g. `k8s.namespace.name`) to copy onto every series.
    """
    return _Translation(native_histograms, limits or DEFAULT_LIMITS, tuple(promote)).run(request)


class _Family:
    """Label sets seen for one metric family in this call: a plain list until the limit could be reached."""

    __slots__ = ("recorded", "seen")

    def __init__(self) -> None:
        self.recorded: list[Labels] = []
        self.seen: set[Labels] | None = None


class _Labeler:
    """Builds the sorted labels of one metric's data points; built once per metric."""

    __slots__ = ("fixed_names", "weak_names", "values", "reserved", "bare", "bare_size", "bare_error", "limits")

    def __init__(self, name: str, scope: _Scope, reserved: tuple[str, ...], limits: Limits) -> None:
        self.fixed_names = (NAME_LABEL, *scope.fixed_names)
        self.weak_names = scope.weak_names
        self.values = [name, *scope.fixed_values, *scope.weak_values]
        self.reserved = reserved
        self.limits = limits
        self.bare, self.bare_size, self.bare_error = self.build((), ())
        if self.bare_error is None:
            self.bare_error = scope.error or _value_error(name, limits.max_label_value_length)

    def __call__(self, attributes: Sequence[KeyValue]) -> tuple[Labels, int, str | None]:
        """(labels, their size estimate, None), or ((), 0, the reason the point must be dropped)."""
        if not attributes:
            return self.bare, self.bare_size, self.bare_error
        if self.bare_error is not None:
            return (), 0, self.bare_error
        return self.build(tuple(kv.key for kv in attributes), [_attribute_text(kv.value) for kv in attributes])

    def build(self, keys: tuple[str, ...], texts: Sequence[str]) -> tuple[Labels, int, str | None]:
        limits = self.limits
        plan, name_error = _checked_plan(
            keys, self.fixed_names, self.weak_names, self.reserved, limits.max_label_name_length
        )
        if name_error:
            return (), 0, "label_name_too_long"
        max_value = limits.max_label_value_length
        fixed_values = self.values
        labels = []
        size = 0
        for name, fixed_index, sources in plan:
            if fixed_index >= 0:
                value = fixed_values[fixed_index]
            else:
                value = texts[sources[0]] if len(sources) == 1 else ";".join(texts[i] for i in sources)
                if len(value) * 4 > max_value and _value_error(value, max_value):
                    return (), 0, "label_value_too_long"
            if value:
                labels.append((name, value))
                size += len(name) + len(value) + _LABEL_OVERHEAD
        if len(labels) + (1 if self.reserved else 0) > limits.max_labels_per_series:
            return (), 0, "too_many_labels"
        return tuple(labels), size, None


class _Scope(NamedTuple):
    """Labels every point of one scope carries: fixed (job, instance, scope) and weak (promoted)."""

    fixed_names: tuple[str, ...]
    fixed_values: tuple[str, ...]
    weak_names: tuple[str, ...]
    weak_values: tuple[str, ...]
    error: str | None  # why every point of the scope must be dropped, if one of these labels breaks a limit


class _Translation:
    """The state of one `translate` call."""

    def __init__(self, native_histograms: bool, limits: Limits, promote: tuple[str, ...]) -> None:
        self.native = native_histograms
        self.limits = limits
        self.promote = frozenset(promote)
        self.batch = SampleBatch()
        self.families: dict[str, _Family] = {}
        self.targets: dict[Labels, int] = {}  # target_info label set -> newest timestamp

    def run(self, request: ExportMetricsServiceRequest) -> SampleBatch:
        batch = self.batch
        for resource_metrics in request.resource_metrics:
            samples_before, histograms_before = len(batch.timestamps), len(batch.histograms)
            fixed, weak, target, error = self.resource(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope
                names, values = [name for name, _ in fixed], [value for _, value in fixed]
                if scope.name:
                    names.append("otel_scope_name")
                    values.append(scope.name)
                if scope.version:
                    names.append("otel_scope_version")
                    values.append(scope.version)
                scope_error = error or _fixed_error(names, values, self.limits)
                weak_names = tuple(name for name, _ in weak)
                weak_values = tuple(value for _, value in weak)
                context = _Scope(tuple(names), tuple(values), weak_names, weak_values, scope_error)
                for metric in scope_metrics.metrics:
                    self.metric(metric, context)
            if target is not None:
                newest = max(batch.timestamps[samples_before:], default=0)
                newest = max(newest, max((h.timestamp for h in batch.histograms[histograms_before:]), default=0))
                if newest:
                    self.targets[target] = max(newest, self.targets.get(target, 0))
        self.emit_targets()
        return batch

    # -- resource ---------------------------------------------------------------------------------------

    def resource(
        self, attributes: Sequence[KeyValue]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Labels | None, str | None]:
        """(job/instance labels, promoted labels, target_info labels or None, a limit the first two break)."""
        service_name = service_namespace = instance = ""
        other_keys: list[str] = []
        other_texts: list[str] = []
        promoted_keys: list[str] = []
        promoted_texts: list[str] = []
        for kv in attributes:
            key = kv.key
            text = _attribute_text(kv.value)
            if key == "service.name":
                service_name = text
            elif key == "service.namespace":
                service_namespace = text
            elif key == "service.instance.id":
                instance = text
            else:
                other_keys.append(key)
                other_texts.append(text)
            if key in self.promote:
                promoted_keys.append(key)
                promoted_texts.append(text)
        job = job_label(service_name, service_namespace)
        fixed = [(name, value) for name, value in (("job", job), ("instance", instance)) if value]
        weak = list(_apply(label_plan(tuple(promoted_keys), ()), (), promoted_texts)) if promoted_keys else []
        error = _fixed_error([n for n, _ in fixed + weak], [v for _, v in fixed + weak], self.limits)
        target = None
        if other_keys:
            plan = label_plan(tuple(other_keys), (NAME_LABEL, "instance", "job"))
            target = tuple(_apply(plan, ("target_info", instance, job), other_texts))
        return fixed, weak, target, error

    def emit_targets(self) -> None:
        batch = self.batch
        limits = self.limits
        for labels, timestamp in self.targets.items():
            reason = _labels_error(labels, limits)
            if reason is not None:
                batch.dropped[reason] += 1
                continue
            batch.labels.append(labels)
            batch.values.append(1.0)
            batch.timestamps.append(timestamp)
            batch.sizes.append(_labels_size(labels) + _SAMPLE_OVERHEAD)

    # -- metrics ----------------------------------------------------------------------------------------

    def metric(self, metric: Metric, scope: _Scope) -> None:
        data = metric.WhichOneof("data")
        if data is None:
            return  # a metric without data carries no points to lose
        body = getattr(metric, data)
        points = body.data_points
        if not points:
            return
        if data == "gauge":
            kind = MetricKind.GAUGE
        elif data == "sum":
            if not self.cumulative(body, len(points)):
                return
            kind = MetricKind.MONOTONIC_SUM if body.is_monotonic else MetricKind.NON_MONOTONIC_SUM
        elif data in ("histogram", "exponential_histogram"):
            if not self.cumulative(body, len(points)):
                return
            kind = MetricKind.HISTOGRAM
        else:
            kind = MetricKind.SUMMARY
        name = metric_name(metric.name, metric.unit, kind)
        if not name:
            self.batch.dropped["invalid_metric_name"] += len(points)
            return
        if data == "gauge" or data == "sum":
            self.numbers(points, name, scope, exemplars=kind is MetricKind.MONOTONIC_SUM)
        elif data == "histogram":
            self.histograms(points, name, scope)
        elif data == "exponential_histogram":
            if self.native:
                self.native_histograms(points, name, scope)
            else:
                self.exponential_as_classic(points, name, scope)
        else:
            self.summaries(points, name, scope)

    def cumulative(self, body: object, count: int) -> bool:
        temporality = body.aggregation_temporality  # type: ignore[attr-defined]
        if temporality == _CUMULATIVE:
            return True
        reason = "unsupported_delta_temporality" if temporality == _DELTA else "unsupported_unspecified_temporality"
        self.batch.dropped[reason] += count
        return False

    def admission(self, family: str, points: int) -> Callable[[Labels], bool]:
        """A check for each point's labels: False when the family already has `max_series_per_metric`."""
        tracked = self.families.get(family)
        if tracked is None:
            tracked = self.families[family] = _Family()
        limit = self.limits.max_series_per_metric
        if tracked.seen is None and len(tracked.recorded) + points <= limit:
            record = tracked.recorded.append

            def admit_below_limit(labels: Labels) -> bool:
                record(labels)
                return True

            return admit_below_limit
        if tracked.seen is None:
            tracked.seen = set(tracked.recorded)
            tracked.recorded = []
        seen = tracked.seen

        def admit(labels: Labels) -> bool:
            if labels in seen:
                return True
            if len(seen) >= limit:
                return False
            seen.add(labels)
            return True

        return admit

    def admitted(
        self, points: Sequence, family: str, labeler: _Labeler, reject: Callable[[object], str | None] | None = None
    ) -> Iterator[tuple[object, Labels, int, int, int]]:
        """(point, labels, their size, timestamp in ms, stale flag) for each point that may be translated.

        The rest are counted in `dropped`: no timestamp, then `reject(point)` (a reason, checked before the
        labels so that a rejected point never takes a place under the series limit), then the labeler's
        reason, then the family's series limit. One loop for every kind of point, so that they drop alike.
        """
        admit = self.admission(family, len(points))
        dropped = self.batch.dropped
        for point in points:
            time_unix_nano = point.time_unix_nano
            if not time_unix_nano:
                dropped["missing_timestamp"] += 1
                continue
            if reject is not None:
                reason = reject(point)
                if reason is not None:
                    dropped[reason] += 1
                    continue
            labels, size, reason = labeler(point.attributes)
            if reason is not None or not admit(labels):
                dropped[reason or "too_many_series"] += 1
                continue
            yield point, labels, size, time_unix_nano // 1_000_000, point.flags & _NO_RECORDED_VALUE

    def numbers(self, points: Sequence, name: str, scope: _Scope, exemplars: bool) -> None:
        batch = self.batch
        labeler = _Labeler(name, scope, (), self.limits)
        labels_out, values_out, times_out, sizes_out = batch.labels, batch.values, batch.timestamps, batch.sizes
        for point, labels, size, timestamp, stale in self.admitted(points, name, labeler):
            labels_out.append(labels)
            times_out.append(timestamp)
            sizes_out.append(size + _SAMPLE_OVERHEAD)
            if stale:
                values_out.append(STALE_NAN)
                continue
            values_out.append(point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int))
            if exemplars and point.exemplars:
                self.exemplars(point.exemplars, lambda value, labels=labels: labels)

    def histograms(self, points: Sequence, name: str, scope: _Scope) -> None:
        bucket_name = name + "_bucket"
        labeler = _Labeler(bucket_name, scope, (LE,), self.limits)
        dropped = self.batch.dropped
        for point, labels, size, timestamp, stale in self.admitted(points, name, labeler):
            counts = point.bucket_counts
            table = le_table(tuple(point.explicit_bounds) if counts or stale else ())
            if table is None or (counts and len(counts) != table.given + 1):
                dropped["invalid_histogram_buckets"] += 1
                continue
            bounds, le_pairs, le_lengths = table.bounds, table.le_pairs, table.le_lengths
            if stale:
                cumulative = [STALE_NAN] * len(le_pairs)
                total = total_sum = STALE_NAN
            else:
                total = float(point.count)
                cumulative = [*map(float, accumulate(counts[: len(bounds)])), total] if counts else [total]
                total_sum = point.sum if point.HasField("sum") else None
            series = self.classic(
                labels, size, timestamp, name, le_pairs, le_lengths, cumulative, total, total_sum, stale
            )
            if not stale and point.exemplars:
                self.exemplars(
                    point.exemplars, lambda value, series=series, bounds=bounds: series[bisect_left(bounds, value)]
                )

    def exponential_as_classic(self, points: Sequence, name: str, scope: _Scope) -> None:
        bucket_name = name + "_bucket"
        labeler = _Labeler(bucket_name, scope, (LE,), self.limits)
        for point, labels, size, timestamp, stale in self.admitted(points, name, labeler):
            positive, negative = point.positive, point.negative
            if stale:
                layout = exponential_layout(0, 0.0, 0, 0, 0, 0, with_zero=False)
                cumulative = [STALE_NAN] * len(layout.le_pairs)
                total = total_sum = STALE_NAN
            else:
                positive_offset, positive_counts = trim(positive.offset, positive.bucket_counts)
                negative_offset, negative_counts = trim(negative.offset, negative.bucket_counts)
                layout = exponential_layout(
                    point.scale,
                    point.zero_threshold,
                    positive_offset,
                    len(positive_counts),
                    negative_offset,
                    len(negative_counts),
                )
                total = float(point.count)
                raw = downscale(negative_offset, negative_counts, layout.shift)[1][::-1]
                raw.append(point.zero_count)
                raw += downscale(positive_offset, positive_counts, layout.shift)[1]
                running = list(accumulate(raw))
                cumulative = [float(running[i]) for i in layout.keep]
                cumulative.append(total)
                total_sum = point.sum if point.HasField("sum") else None
            series = self.classic(
                labels,
                size,
                timestamp,
                name,
                layout.le_pairs,
                layout.le_lengths,
                cumulative,
                total,
                total_sum,
                stale,
            )
            if not stale and point.exemplars:
                bounds = layout.bounds
                self.exemplars(
                    point.exemplars, lambda value, series=series, bounds=bounds: series[bisect_left(bounds, value)]
                )

    def classic(
        self,
        labels: Labels,
        size: int,
        timestamp: int,
        name: str,
        le_pairs: tuple[tuple[str, str], ...],
        le_lengths: tuple[int, ...],
        cumulative: list[float],
        total: float,
        total_sum: float | None,
        stale: int,
    ) -> list[Labels]:
        """Append a classic histogram's series: buckets (labels carry `__name__` = `{name}_bucket`), `_sum`
        (when there is one, or for a staleness marker), `_count`. Returns the bucket series' labels."""
        batch = self.batch
        at = bisect_left(labels, (LE,))
        head, tail = labels[:at], labels[at:]
        series = [(*head, pair, *tail) for pair in le_pairs]
        at_name = bisect_left(labels, (NAME_LABEL,))
        head, tail = labels[:at_name], labels[at_name + 1 :]
        count_labels = (*head, (NAME_LABEL, name + "_count"), *tail)
        base = size + _SAMPLE_OVERHEAD
        batch.labels += series
        batch.labels.append(count_labels)
        batch.values += cumulative
        batch.values.append(total)
        bucket_base = base + _LABEL_OVERHEAD  # a bucket series also carries `le`
        batch.sizes += [bucket_base + length for length in le_lengths]
        batch.sizes.append(base - 1)
        n = len(series) + 1
        if total_sum is not None or stale:
            batch.labels.append((*head, (NAME_LABEL, name + "_sum"), *tail))
            batch.values.append(STALE_NAN if stale else total_sum)  # type: ignore[arg-type]
            batch.sizes.append(base - 3)
            n += 1
        batch.timestamps += [timestamp] * n
        return series

    def native_histograms(self, points: Sequence, name: str, scope: _Scope) -> None:
        batch = self.batch
        labeler = _Labeler(name, scope, (), self.limits)
        for point, labels, size, timestamp, stale in self.admitted(points, name, labeler, _unsupported_scale):
            histogram = _native(point, point.scale, timestamp)
            batch.histogram_labels.append(labels)
            batch.histograms.append(histogram)
            batch.histogram_sizes.append(
                size + _HISTOGRAM_OVERHEAD + 2 * (len(histogram.positive_deltas) + len(histogram.negative_deltas))
            )
            if not stale and point.exemplars:
                self.exemplars(point.exemplars, lambda value, labels=labels: labels)

    def summaries(self, points: Sequence, name: str, scope: _Scope) -> None:
        batch = self.batch
        labeler = _Labeler(name, scope, (_QUANTILE,), self.limits)
        for point, labels, size, timestamp, stale in self.admitted(points, name, labeler):
            quantiles = point.quantile_values
            pairs, pair_sizes = _quantile_table(tuple(q.quantile for q in quantiles))
            at = bisect_left(labels, (_QUANTILE,))
            head, tail = labels[:at], labels[at:]
            at_name = bisect_left(labels, (NAME_LABEL,))
            name_head, name_tail = labels[:at_name], labels[at_name + 1 :]
            base = size + _SAMPLE_OVERHEAD
            batch.labels += [(*head, pair, *tail) for pair in pairs]
            batch.labels.append((*name_head, (NAME_LABEL, name + "_sum"), *name_tail))
            batch.labels.append((*name_head, (NAME_LABEL, name + "_count"), *name_tail))
            if stale:
                batch.values += [STALE_NAN] * (len(pairs) + 2)
            else:
                batch.values += [q.value for q in quantiles]
                batch.values.append(point.sum)
                batch.values.append(float(point.count))
            batch.sizes += [base + extra for extra in pair_sizes]
            batch.sizes.append(base + 4)
            batch.sizes.append(base + 6)
            batch.timestamps += [timestamp] * (len(pairs) + 2)

    def exemplars(self, exemplars: Sequence, series_for: Callable[[float], Labels]) -> None:
        """Append exemplars, each on the series `series_for(its value)` returns."""
        batch = self.batch
        for exemplar in exemplars:
            value = exemplar.as_double if exemplar.WhichOneof("value") == "as_double" else float(exemplar.as_int)
            labels = _exemplar_labels(exemplar)
            series = series_for(value)
            batch.exemplar_labels.append(series)
            batch.exemplars.append(Exemplar(labels, value, exemplar.time_unix_nano // 1_000_000))
            batch.exemplar_sizes.append(_labels_size(labels) + _EXEMPLAR_OVERHEAD)


# -- labels and limits -----------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _checked_plan(
    keys: tuple[str, ...],
    fixed_names: tuple[str, ...],
    weak_names: tuple[str, ...],
    reserved: tuple[str, ...],
    max_name_length: int,
) -> tuple[tuple[PlanEntry, ...], bool]:
    """The label plan, and whether one of its names is longer than `max_name_length` bytes."""
    plan = label_plan(keys, fixed_names, weak_names, reserved)
    return plan, any(len(name.encode()) > max_name_length for name, _, _ in plan)


def _apply(plan: Iterable[PlanEntry], fixed_values: Sequence[str], texts: Sequence[str]) -> Iterable[tuple[str, str]]:
    for name, fixed_index, sources in plan:
        value = fixed_values[fixed_index] if fixed_index >= 0 else ";".join(texts[i] for i in sources)
        if value:
            yield name, value


def _value_error(value: str, max_length: int) -> str | None:
    if len(value) * 4 > max_length and len(value.encode()) > max_length:
        return "label_value_too_long"
    return None


def _fixed_error(names: Sequence[str], values: Sequence[str], limits: Limits) -> str | None:
    if any(len(name.encode()) > limits.max_label_name_length for name in names):
        return "label_name_too_long"
    for value in values:
        if _value_error(value, limits.max_label_value_length):
            return "label_value_too_long"
    return None


def _labels_error(labels: Labels, limits: Limits) -> str | None:
    """Why a complete label set breaks a limit, or None (for series built outside a `_Labeler`)."""
    reason = _fixed_error([n for n, _ in labels], [v for _, v in labels], limits)
    if reason is None and len(labels) > limits.max_labels_per_series:
        return "too_many_labels"
    return reason


def _labels_size(labels: Labels) -> int:
    return sum(len(name) + len(value) + _LABEL_OVERHEAD for name, value in labels)


def _exemplar_labels(exemplar: object) -> Labels:
    ids = []
    if exemplar.span_id:  # type: ignore[attr-defined]
        ids.append(("span_id", exemplar.span_id.hex()))  # type: ignore[attr-defined]
    if exemplar.trace_id:  # type: ignore[attr-defined]
        ids.append(("trace_id", exemplar.trace_id.hex()))  # type: ignore[attr-defined]
    attributes = exemplar.filtered_attributes  # type: ignore[attr-defined]
    if not attributes:
        return tuple(ids)
    plan = label_plan(tuple(kv.key for kv in attributes), tuple(name for name, _ in ids))
    texts = [_attribute_text(kv.value) for kv in attributes]
    labels = tuple(_apply(plan, [value for _, value in ids], texts))
    if sum(len(name) + len(value) for name, value in labels) > EXEMPLAR_MAX_CHARS:
        return tuple(ids)
    return labels


# -- tables and native histograms ----------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _quantile_table(quantiles: tuple[float, ...]) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
    pairs = tuple((_QUANTILE, float_label(q)) for q in quantiles)
    return pairs, tuple(len(value) + len(_QUANTILE) + _LABEL_OVERHEAD for _, value in pairs)


def _unsupported_scale(point: object) -> str | None:
    """Why an exponential histogram point cannot be a native histogram: a scale Prometheus has no schema for."""
    return "unsupported_histogram_scale" if point.scale < MIN_SCHEMA else None  # type: ignore[attr-defined]


def _native(point: object, scale: int, timestamp: int) -> NativeHistogram:
    """The native histogram for an exponential histogram point whose scale is at least MIN_SCHEMA."""
    shift = scale - MAX_SCHEMA if scale > MAX_SCHEMA else 0
    zero_threshold = point.zero_threshold or DEFAULT_ZERO_THRESHOLD  # type: ignore[attr-defined]
    if point.flags & _NO_RECORDED_VALUE:  # type: ignore[attr-defined]
        return NativeHistogram(timestamp, STALE_NAN, STALE_NAN, scale - shift, zero_threshold, 0)
    positive, negative = point.positive, point.negative  # type: ignore[attr-defined]
    positive_spans, positive_deltas = sparse(positive.offset, positive.bucket_counts, shift)
    negative_spans, negative_deltas = sparse(negative.offset, negative.bucket_counts, shift)
    return NativeHistogram(
        timestamp,
        point.count,  # type: ignore[attr-defined]
        point.sum if point.HasField("sum") else 0.0,  # type: ignore[attr-defined]
        scale - shift,
        zero_threshold,
        point.zero_count,  # type: ignore[attr-defined]
        negative_spans,
        negative_deltas,
        positive_spans,
        positive_deltas,
    )


# -- attribute values ------------------------------------------------------------------------------------


def _attribute_text(value: AnyValue) -> str:
    """An attribute value as label text, per the OpenTelemetry attribute spec for non-OTLP formats:
    strings as they are, booleans `true`/`false`, numbers in decimal, bytes in base64, arrays and maps as
    JSON."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return ""
    return _json_text(_plain(value)) if kind in ("array_value", "kvlist_value") else _scalar_text(value, kind)


def _scalar_text(value: AnyValue, kind: str) -> str:
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    return base64.b64encode(value.bytes_value).decode("ascii")


def _plain(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind is None:
        return None
    return getattr(value, kind)


def _json_text(plain: object) -> str:
    return json.dumps(plain, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
