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

import struct
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from itertools import accumulate
from sys import getsizeof

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, DataPointFlags, Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporters.remote_write.buckets import (
    LE,
    downscale,
    exponential_layout,
    le_table,
    sparse,
    trim,
)
from exporters.remote_write.buckets import MAX_CLASSIC_BUCKETS as MAX_CLASSIC_BUCKETS  # re-exported
from exporters.remote_write.labels import (  # re-exported: their old home
    DEFAULT_LIMITS as DEFAULT_LIMITS,
)
from exporters.remote_write.labels import (
    EXEMPLAR_MAX_CHARS as EXEMPLAR_MAX_CHARS,
)
from exporters.remote_write.labels import (
    LABEL_OVERHEAD,
    Labeler,
    ScopeLabels,
    apply_plan,
    attribute_text,
    exemplar_labels,
    fixed_error,
    labels_error,
    labels_size,
)
from exporters.remote_write.labels import (
    Limits as Limits,
)
from exporters.remote_write.naming import (
    MetricKind,
    float_label,
    job_label,
    label_plan,
    metric_name,
)
from exporters.remote_write.series import (  # re-exported: the series model's old home
    NAME_LABEL as NAME_LABEL,
)
from exporters.remote_write.series import (
    STALE_NAN as STALE_NAN,
)
from exporters.remote_write.series import (
    Exemplar as Exemplar,
)
from exporters.remote_write.series import (
    Labels as Labels,
)
from exporters.remote_write.series import (
    Metadata as Metadata,
)
from exporters.remote_write.series import (
    NativeHistogram as NativeHistogram,
)
from exporters.remote_write.series import (
    SampleBatch as SampleBatch,
)
from exporters.remote_write.series_cache import INTERNED_BYTES, SeriesCache, labels_bytes
from exporters.remote_write.shapes import Learnt, Shape
from exporters.remote_write.wire import attributes_key, number_fields, skip_field, varint_at

MIN_SCHEMA, MAX_SCHEMA = -4, 8
DEFAULT_ZERO_THRESHOLD = 1e-128

_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_QUANTILE = "quantile"
# Bytes a sample costs in a remote-write 1.0 body beyond its label text: tags and lengths per label, the
# TimeSeries and Sample framing, an 8-byte value and a varint timestamp. Estimates, for batch sizing.
_SAMPLE_OVERHEAD = 24
_HISTOGRAM_OVERHEAD = 48
_EXEMPLAR_OVERHEAD = 24


def translate(
    request: ExportMetricsServiceRequest,
    *,
    native_histograms: bool = False,
    limits: Limits | None = None,
    promote: tuple[str, ...] = (),
    cache: SeriesCache | None = None,
    wire: bytes | None = None,
) -> SampleBatch:
    """Translate every data point of `request` (read only, never modified).

    `native_histograms`: exponential histograms as native histograms (only for a receiver that ingests
    them: Prometheus 2.42 refuses the whole request otherwise) instead of classic buckets. `promote`: the
    resource attribute keys (as OTLP spells them, e.g. `k8s.namespace.name`) to copy onto every series.
    `cache`: the series built by earlier calls (one per exporter, kept across calls); without one, a private
    cache lives for this call only. The result is the same either way; with a warm cache it costs a lookup
    per data point and its label tuples are the cache's interned ones (`cache.series_id(labels)`).
    `wire`: the bytes `request` was parsed from, when they hold exactly what `request` holds; the cache then
    learns the request's shape (see `shapes`), so that `translate_wire` can translate the next request of
    that shape without parsing it.
    """
    if cache is None:
        cache = SeriesCache()
    translation = _Translation(native_histograms, limits or DEFAULT_LIMITS, tuple(promote), cache)
    if wire is None:
        return translation.run(request)
    key = translation.shape_key(len(wire))
    slot = cache.get(key)
    if slot is not None and not slot.due():
        return translation.run(request)
    translation.learnt = Learnt()
    batch = translation.run(request)
    shape = Shape(backoff=slot.successor_backoff() if slot is not None else 1)
    shape.learn(wire, batch, translation.learnt)
    cache.put(key, shape, shape.nbytes)
    return batch


def _shape_key(native_histograms: bool, limits: Limits, promote: frozenset[str], length: int) -> tuple:
    """The cache key of the shape slot for requests of `length` bytes translated with these options."""
    return ("shape", native_histograms, limits, promote, length)


def translate_wire(
    wire: bytes,
    *,
    native_histograms: bool = False,
    limits: Limits | None = None,
    promote: tuple[str, ...] = (),
    cache: SeriesCache,
) -> tuple[SampleBatch, int] | None:
    """(what `translate` makes of the ExportMetricsServiceRequest in `wire`, its number of data points) when
    `cache` learnt a request of the same shape with the same options; None otherwise (parse `wire` and call
    `translate(request, wire=wire, ...)`, which learns it). `wire` must be a request the receiver would accept
    whole: a shape is only learnt from such requests, and only a request equal to one outside its times and
    values matches it."""
    slot = cache.get(_shape_key(native_histograms, limits or DEFAULT_LIMITS, frozenset(promote), len(wire)))
    if slot is None:
        return None
    batch = slot.apply(wire)
    if batch is None:
        slot.misses += 1
        return None
    slot.hits += 1
    return batch, slot.points


class _Family:
    """Label sets seen for one metric family in this call: a plain list until the limit could be reached."""

    __slots__ = ("recorded", "seen")

    def __init__(self) -> None:
        self.recorded: list[Labels] = []
        self.seen: set[Labels] | None = None


class _Resource:
    """What one resource gives every series (cached per resource bytes and call options)."""

    __slots__ = ("error", "fixed", "nbytes", "rid", "target", "weak")

    def __init__(
        self,
        rid: int,
        fixed: list[tuple[str, str]],
        weak: list[tuple[str, str]],
        target: Labels | None,
        error: str | None,
    ) -> None:
        self.rid = rid
        self.fixed = fixed
        self.weak = weak
        self.target = target
        self.error = error
        self.nbytes = (
            getsizeof(self) + _pairs_bytes(fixed) + _pairs_bytes(weak) + (labels_bytes(target) if target else 0)
        )

    def held_labels(self) -> tuple[Labels, ...]:
        return (self.target,) if self.target else ()


class _Scope:
    """One scope of one resource: its context number and the labels every point of it carries."""

    __slots__ = ("labels", "nbytes", "sid")

    def __init__(self, sid: int, labels: ScopeLabels) -> None:
        self.sid = sid
        self.labels = labels
        self.nbytes = getsizeof(self) + getsizeof(labels) + sum(getsizeof(part) for part in labels)


class _Context:
    """One metric of one scope, translated one way: the `Labeler` its series are built with, and the number
    its series are keyed under."""

    __slots__ = ("cid", "labeler", "name", "nbytes")

    def __init__(self, cid: int, name: str, labeler: Labeler | None) -> None:
        self.cid = cid
        self.name = name  # "" when the metric's name is invalid (then there is no labeler)
        self.labeler: Labeler = labeler  # type: ignore[assignment]
        self.nbytes = getsizeof(self) + getsizeof(name)
        if labeler is not None:
            self.nbytes += (
                getsizeof(labeler)
                + getsizeof(labeler.values)
                + sum(getsizeof(value) for value in labeler.values)
                + labels_bytes(labeler.bare)
            )


class _Series:
    """A cached series of a histogram or summary metric: its base labels (or the reason it is dropped) and
    the label sets derived from them for the newest bucket layout or quantiles seen."""

    __slots__ = ("derived", "labels", "nbytes", "reason", "size")

    def __init__(self, labels: Labels, size: int, reason: str | None) -> None:
        self.labels = labels
        self.size = size
        self.reason = reason
        # (the le pairs or quantile pairs they are for, one label set per pair, `_count`, `_sum`)
        self.derived: tuple[object, list[Labels], Labels, Labels] | None = None
        self.nbytes = getsizeof(self) + labels_bytes(labels) + INTERNED_BYTES

    def held_labels(self) -> tuple[Labels, ...]:
        if self.derived is None:
            return (self.labels,) if self.labels else ()
        return (self.labels, *self.derived[1], self.derived[2], self.derived[3])


# One cached series of a gauge or sum: (labels, sample size estimate, stale flag, drop reason, bytes held).
_NumberSeries = tuple[Labels, int, int, "str | None", int]
_WITH_START = struct.Struct("<BQBQBd").unpack_from  # start time, time, as_double: the usual layout
_WITHOUT_START = struct.Struct("<BQBd").unpack_from  # time, as_double
_HISTOGRAM_ATTRIBUTES = 9
_EXPONENTIAL_ATTRIBUTES = 1
_SUMMARY_ATTRIBUTES = 7


class _Translation:
    """The state of one `translate` call."""

    def __init__(self, native_histograms: bool, limits: Limits, promote: tuple[str, ...], cache: SeriesCache) -> None:
        self.native = native_histograms
        self.limits = limits
        self.promote = frozenset(promote)
        self.cache = cache
        self.options = (limits, self.promote)
        self.batch = SampleBatch()
        self.families: dict[str, _Family] = {}
        self.targets: dict[Labels, int] = {}  # target_info label set -> newest timestamp
        self.learnt: Learnt | None = None  # what the request's shape needs recorded, when it is being learnt

    def shape_key(self, length: int) -> tuple:
        return _shape_key(self.native, self.limits, self.promote, length)

    def run(self, request: ExportMetricsServiceRequest) -> SampleBatch:
        batch = self.batch
        for resource_metrics in request.resource_metrics:
            samples_before, histograms_before = len(batch.timestamps), len(batch.histograms)
            resource = self.resource_entry(resource_metrics.resource)
            for scope_metrics in resource_metrics.scope_metrics:
                scope = self.scope_entry(resource, scope_metrics.scope)
                for metric in scope_metrics.metrics:
                    self.metric(metric, scope)
            target = resource.target
            if self.learnt is not None:
                self.learnt.resources.append((target, samples_before, len(batch.timestamps)))
            if target is not None:
                newest = max(batch.timestamps[samples_before:], default=0)
                newest = max(newest, max((h.timestamp for h in batch.histograms[histograms_before:]), default=0))
                if newest:
                    self.targets[target] = max(newest, self.targets.get(target, 0))
        self.emit_targets()
        return batch

    # -- resource and scope -----------------------------------------------------------------------------

    def resource_entry(self, resource: Resource) -> _Resource:
        key = ("resource", self.options, resource.SerializeToString())
        cache = self.cache
        entry = cache.get(key)
        if entry is None:
            fixed, weak, target, error = self.resource(resource.attributes)
            if target is not None:
                target = cache.intern(target)
            entry = _Resource(cache.context_id(), fixed, weak, target, error)
            cache.put(key, entry, entry.nbytes + INTERNED_BYTES)
        return entry

    def scope_entry(self, resource: _Resource, scope: object) -> _Scope:
        key = ("scope", resource.rid, scope.SerializeToString())  # type: ignore[attr-defined]
        cache = self.cache
        entry = cache.get(key)
        if entry is None:
            fixed, weak = resource.fixed, resource.weak
            names, values = [name for name, _ in fixed], [value for _, value in fixed]
            if scope.name:  # type: ignore[attr-defined]
                names.append("otel_scope_name")
                values.append(scope.name)  # type: ignore[attr-defined]
            if scope.version:  # type: ignore[attr-defined]
                names.append("otel_scope_version")
                values.append(scope.version)  # type: ignore[attr-defined]
            scope_error = resource.error or fixed_error(names, values, self.limits)
            weak_names = tuple(name for name, _ in weak)
            weak_values = tuple(value for _, value in weak)
            labels = ScopeLabels(tuple(names), tuple(values), weak_names, weak_values, scope_error)
            entry = _Scope(cache.context_id(), labels)
            cache.put(key, entry, entry.nbytes)
        return entry

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
            text = attribute_text(kv.value)
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
        weak = list(apply_plan(label_plan(tuple(promoted_keys), ()), (), promoted_texts)) if promoted_keys else []
        error = fixed_error([n for n, _ in fixed + weak], [v for _, v in fixed + weak], self.limits)
        target = None
        if other_keys:
            plan = label_plan(tuple(other_keys), (NAME_LABEL, "instance", "job"))
            target = tuple(apply_plan(plan, ("target_info", instance, job), other_texts))
        return fixed, weak, target, error

    def emit_targets(self) -> None:
        batch = self.batch
        limits = self.limits
        for labels, timestamp in self.targets.items():
            reason = labels_error(labels, limits)
            if reason is not None:
                batch.dropped[reason] += 1
                continue
            batch.labels.append(labels)
            batch.values.append(1.0)
            batch.timestamps.append(timestamp)
            batch.sizes.append(labels_size(labels) + _SAMPLE_OVERHEAD)

    # -- metrics ----------------------------------------------------------------------------------------

    def metric(self, metric: Metric, scope: _Scope) -> None:
        data = metric.WhichOneof("data")
        if data is None:
            return  # a metric without data carries no points to lose
        body = getattr(metric, data)
        points = body.data_points
        count = len(points)
        if not count:
            return
        learnt = self.learnt
        if learnt is not None and data != "gauge" and data != "sum":
            learnt.shapeable = False
        monotonic = False
        if data == "sum":
            if not self.cumulative(body, count):
                if learnt is not None:
                    learnt.outcomes += [-1] * count
                return
            monotonic = body.is_monotonic
        elif data == "histogram" or data == "exponential_histogram":
            if not self.cumulative(body, count):
                return
        native = data == "exponential_histogram" and self.native
        # A metric's key starts with its scope's number (resources' and scopes' with a word; series' keys are
        # pairs), so the kinds of keys in the cache never meet.
        key = (scope.sid, metric.name, metric.unit, data, monotonic, native)
        context = self.cache.young.get(key)
        if context is None:
            context = self.metric_context(key, scope)
        name = context.name
        if not name:
            self.batch.dropped["invalid_metric_name"] += count
            if learnt is not None:
                learnt.outcomes += [-1] * count
            return
        self.describe(name, data, monotonic, native, metric)
        if data == "gauge" or data == "sum":
            self.numbers(body, points, name, context, exemplars=monotonic)
        elif data == "histogram":
            self.histograms(points, name, context)
        elif native:
            self.native_histograms(points, name, context)
        elif data == "exponential_histogram":
            self.exponential_as_classic(points, name, context)
        else:
            self.summaries(points, name, context)

    def describe(self, name: str, data: str, monotonic: bool, native: bool, metric: Metric) -> None:
        """Metadata for every series name the metric produces (formats that carry it send it per series)."""
        if data == "sum":
            kind = "counter" if monotonic else "gauge"
        elif data == "gauge":
            kind = "gauge"
        elif data == "summary":
            kind = "summary"
        else:
            kind = "histogram"
        entry = Metadata(kind, metric.description, metric.unit)
        metadata = self.batch.metadata
        metadata[name] = entry
        if data == "summary" or (data != "gauge" and data != "sum" and not native):
            metadata[name + "_sum"] = entry
            metadata[name + "_count"] = entry
            if data != "summary":
                metadata[name + "_bucket"] = entry

    def metric_context(self, key: tuple[int, str, str, str, bool, bool], scope: _Scope) -> _Context:
        """The cached context of a metric (`key` from `metric`): its Prometheus name and `Labeler`."""
        context = self.cache.get(key)
        if context is not None:
            return context
        _, raw_name, unit, data, monotonic, native = key
        if data == "gauge":
            kind = MetricKind.GAUGE
        elif data == "sum":
            kind = MetricKind.MONOTONIC_SUM if monotonic else MetricKind.NON_MONOTONIC_SUM
        elif data == "summary":
            kind = MetricKind.SUMMARY
        else:
            kind = MetricKind.HISTOGRAM
        name = metric_name(raw_name, unit, kind)
        labeler = None  # an invalid name: the metric's points are dropped, no labels are ever built
        if name:
            if data in ("histogram", "exponential_histogram") and not native:
                labeler = Labeler(name + "_bucket", scope.labels, (LE,), self.limits)
            elif data == "summary":
                labeler = Labeler(name, scope.labels, (_QUANTILE,), self.limits)
            else:
                labeler = Labeler(name, scope.labels, (), self.limits)
        context = _Context(self.cache.context_id(), name, labeler)
        self.cache.put(key, context, context.nbytes)
        return context

    def cumulative(self, body: object, count: int) -> bool:
        temporality = body.aggregation_temporality  # type: ignore[attr-defined]
        if temporality == _CUMULATIVE:
            return True
        reason = "unsupported_delta_temporality" if temporality == _DELTA else "unsupported_unspecified_temporality"
        self.batch.dropped[reason] += count
        return False

    def family(self, name: str) -> _Family:
        tracked = self.families.get(name)
        if tracked is None:
            tracked = self.families[name] = _Family()
        return tracked

    def admission(self, family: str, points: int) -> Callable[[Labels], bool]:
        """A check for each point's labels: False when the family already has `max_series_per_metric`."""
        tracked = self.family(family)
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

    def numbers(self, body: object, points: Sequence, name: str, context: _Context, exemplars: bool) -> None:
        """Gauge and sum points, read from the metric's serialized bytes (see `wire`): per point a slice, a
        struct read, a lookup of its series and appends; upb objects only for a new series or exemplars."""
        batch = self.batch
        cache = self.cache
        dropped = batch.dropped
        data = body.SerializeToString()  # type: ignore[attr-defined]
        tracked = self.families.get(name)
        if tracked is None:
            tracked = self.families[name] = _Family()
        below = tracked.seen is None and len(tracked.recorded) + len(points) <= self.limits.max_series_per_metric
        admit = None if below else self.admission(name, len(points))
        labels_out, values_out, times_out, sizes_out = batch.labels, batch.values, batch.timestamps, batch.sizes
        before = len(labels_out)
        young_get = cache.young.get
        cid = context.cid
        learnt = self.learnt
        index = -1
        pos, end_of_data = 0, len(data)
        while pos < end_of_data:
            if data[pos] != 0x0A:  # not a data point (Sum's temporality and monotonicity, unknown fields)
                pos = skip_field(data, pos)
                continue
            length = data[pos + 1]
            if length < 0x80:
                start = pos + 2
            elif data[pos + 2] < 0x80:  # points of 128 bytes to 16 KB
                length = (length & 0x7F) | (data[pos + 2] << 7)
                start = pos + 3
            else:
                length, start = varint_at(data, pos + 1)
            end = pos = start + length
            index += 1
            first = data[start] if length else 0
            fast = False
            if first == 0x11 and length >= 27:
                _, _, time_tag, time, value_tag, value = _WITH_START(data, start)
                at = start + 27
                fast = time_tag == 0x19 and value_tag == 0x21 and (at == end or data[at] != 0x2A)
            elif first == 0x19 and length >= 18:
                _, time, value_tag, value = _WITHOUT_START(data, start)
                at = start + 18
                fast = value_tag == 0x21 and (at == end or data[at] != 0x2A)
            with_exemplars = False
            if not fast:
                time, value, at, with_exemplars = number_fields(data, start, end)
                if not time:
                    dropped["missing_timestamp"] += 1
                    if learnt is not None:
                        learnt.outcomes.append(-1)
                    continue
            key = (cid, data[at:end])
            series = young_get(key)
            if series is None:
                series = self.number_series(context, key, points[index])
                young_get = cache.young.get  # a new series may have started a new generation
            labels, size, stale, reason, _ = series
            if reason is not None or (admit is not None and not admit(labels)):
                dropped[reason or "too_many_series"] += 1
                if learnt is not None:
                    learnt.outcomes.append(-1)
                continue
            if learnt is not None:
                learnt.outcomes.append(len(labels_out))
                if stale:
                    learnt.stale_rows.append(len(labels_out))
            labels_out.append(labels)
            times_out.append(time // 1_000_000)
            sizes_out.append(size)
            if stale:
                values_out.append(STALE_NAN)
                continue
            values_out.append(value)
            if with_exemplars and exemplars:
                self.exemplars(points[index].exemplars, lambda value, labels=labels: labels)
        if below:
            tracked.recorded += labels_out[before:]

    def number_series(self, context: _Context, key: tuple[int, bytes], point: object) -> _NumberSeries:
        """The cached series for a gauge or sum point's key, built from the point when it is new."""
        cache = self.cache
        series = cache.get(key)
        if series is None:
            labels, size, reason = context.labeler(point.attributes)  # type: ignore[attr-defined]
            nbytes = getsizeof(key[1])
            if reason is None:
                labels = cache.intern(labels)
                nbytes += labels_bytes(labels) + INTERNED_BYTES
            stale = point.flags & _NO_RECORDED_VALUE  # type: ignore[attr-defined]
            nbytes += getsizeof((labels, size, stale, reason, nbytes))
            series = (labels, size + _SAMPLE_OVERHEAD, stale, reason, nbytes)
            cache.put(key, series, nbytes)
        return series

    def point_series(self, context: _Context, point: object, attributes_field: int) -> _Series:
        """The cached series for a histogram or summary point, keyed by its attributes' bytes."""
        cache = self.cache
        key = (context.cid, attributes_key(point.SerializeToString(), attributes_field))  # type: ignore[attr-defined]
        series = cache.get(key)
        if series is None:
            labels, size, reason = context.labeler(point.attributes)  # type: ignore[attr-defined]
            if reason is None:
                labels = cache.intern(labels)
            series = _Series(labels, size, reason)
            cache.put(key, series, series.nbytes + getsizeof(key[1]))
        return series

    def derive(self, series: _Series, pairs: tuple[tuple[str, str], ...], name: str, reserved: str) -> tuple:
        """The label sets of a histogram's buckets (or a summary's quantiles), `_count` and `_sum` for a
        series, kept on it for as long as its layout (`pairs`, from an lru-cached table) stays the same."""
        derived = series.derived
        if derived is not None and derived[0] is pairs:
            return derived
        labels = series.labels
        at = bisect_left(labels, (reserved,))
        head, tail = labels[:at], labels[at:]
        at_name = bisect_left(labels, (NAME_LABEL,))
        name_head, name_tail = labels[:at_name], labels[at_name + 1 :]
        intern = self.cache.intern
        derived = (
            pairs,
            [intern((*head, pair, *tail)) for pair in pairs],
            intern((*name_head, (NAME_LABEL, name + "_count"), *name_tail)),
            intern((*name_head, (NAME_LABEL, name + "_sum"), *name_tail)),
        )
        # Derived tuples share their pairs with the base labels and the lru-cached tables: each holds only
        # its own tuple (the `_count` and `_sum` ones also a new name pair and string).
        added = sum(getsizeof(labels) for labels in derived[1]) + (len(derived[1]) + 2) * INTERNED_BYTES
        added += 2 * (getsizeof(derived[2]) + getsizeof(derived[2][at_name]) + getsizeof(name) + 8)
        if self.cache.charge(added):
            series.derived = derived
            series.nbytes += added
        return derived

    def admitted(
        self,
        points: Sequence,
        family: str,
        context: _Context,
        attributes_field: int,
        reject: Callable[[object], str | None] | None = None,
    ) -> Iterator[tuple[object, _Series, int, int]]:
        """(point, its series, timestamp in ms, stale flag) for each histogram or summary point that may be
        translated.

        The rest are counted in `dropped`: no timestamp, then `reject(point)` (a reason, checked before the
        labels so that a rejected point never takes a place under the series limit), then the labeler's
        reason, then the family's series limit. One loop for every kind of point, so that they drop alike
        (gauges and sums, in `numbers`, check in the same order).
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
            series = self.point_series(context, point, attributes_field)
            reason = series.reason
            if reason is not None or not admit(series.labels):
                dropped[reason or "too_many_series"] += 1
                continue
            yield point, series, time_unix_nano // 1_000_000, point.flags & _NO_RECORDED_VALUE

    def histograms(self, points: Sequence, name: str, context: _Context) -> None:
        dropped = self.batch.dropped
        for point, series, timestamp, stale in self.admitted(points, name, context, _HISTOGRAM_ATTRIBUTES):
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
            buckets = self.classic(series, timestamp, name, le_pairs, le_lengths, cumulative, total, total_sum, stale)
            if not stale and point.exemplars:
                self.exemplars(
                    point.exemplars, lambda value, buckets=buckets, bounds=bounds: buckets[bisect_left(bounds, value)]
                )

    def exponential_as_classic(self, points: Sequence, name: str, context: _Context) -> None:
        for point, series, timestamp, stale in self.admitted(points, name, context, _EXPONENTIAL_ATTRIBUTES):
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
            buckets = self.classic(
                series,
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
                    point.exemplars, lambda value, buckets=buckets, bounds=bounds: buckets[bisect_left(bounds, value)]
                )

    def classic(
        self,
        series: _Series,
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
        _, buckets, count_labels, sum_labels = self.derive(series, le_pairs, name, LE)
        base = series.size + _SAMPLE_OVERHEAD
        batch.labels += buckets
        batch.labels.append(count_labels)
        batch.values += cumulative
        batch.values.append(total)
        bucket_base = base + LABEL_OVERHEAD  # a bucket series also carries `le`
        batch.sizes += [bucket_base + length for length in le_lengths]
        batch.sizes.append(base - 1)
        n = len(buckets) + 1
        if total_sum is not None or stale:
            batch.labels.append(sum_labels)
            batch.values.append(STALE_NAN if stale else total_sum)  # type: ignore[arg-type]
            batch.sizes.append(base - 3)
            n += 1
        batch.timestamps += [timestamp] * n
        return buckets

    def native_histograms(self, points: Sequence, name: str, context: _Context) -> None:
        batch = self.batch
        for point, series, timestamp, stale in self.admitted(
            points, name, context, _EXPONENTIAL_ATTRIBUTES, _unsupported_scale
        ):
            labels = series.labels
            histogram = _native(point, point.scale, timestamp)
            batch.histogram_labels.append(labels)
            batch.histograms.append(histogram)
            batch.histogram_sizes.append(
                series.size
                + _HISTOGRAM_OVERHEAD
                + 2 * (len(histogram.positive_deltas) + len(histogram.negative_deltas))
            )
            if not stale and point.exemplars:
                self.exemplars(point.exemplars, lambda value, labels=labels: labels)

    def summaries(self, points: Sequence, name: str, context: _Context) -> None:
        batch = self.batch
        for point, series, timestamp, stale in self.admitted(points, name, context, _SUMMARY_ATTRIBUTES):
            quantiles = point.quantile_values
            pairs, pair_sizes = _quantile_table(tuple(q.quantile for q in quantiles))
            _, quantile_labels, count_labels, sum_labels = self.derive(series, pairs, name, _QUANTILE)
            base = series.size + _SAMPLE_OVERHEAD
            batch.labels += quantile_labels
            batch.labels.append(sum_labels)
            batch.labels.append(count_labels)
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
            labels = exemplar_labels(exemplar)
            series = series_for(value)
            batch.exemplar_labels.append(series)
            batch.exemplars.append(Exemplar(labels, value, exemplar.time_unix_nano // 1_000_000))
            batch.exemplar_sizes.append(labels_size(labels) + _EXEMPLAR_OVERHEAD)


def _pairs_bytes(pairs: list[tuple[str, str]]) -> int:
    return getsizeof(pairs) + sum(getsizeof(pair) + getsizeof(value) for pair in pairs for value in pair[1:])


# -- tables and native histograms ----------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _quantile_table(quantiles: tuple[float, ...]) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
    pairs = tuple((_QUANTILE, float_label(q)) for q in quantiles)
    return pairs, tuple(len(value) + len(_QUANTILE) + LABEL_OVERHEAD for _, value in pairs)


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
