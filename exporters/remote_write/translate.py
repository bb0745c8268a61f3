"""OTLP metrics (an ExportMetricsServiceRequest) to Prometheus samples, one request at a time.

What is translated today:
- gauges (int and double points) -> Prometheus gauges;
- cumulative monotonic sums -> counters (`_total`); cumulative non-monotonic sums -> gauges.

What is not, yet (a later issue), and is counted instead, in data points, under `SampleBatch.dropped`:
delta sums (`unsupported_delta_temporality`; they need delta-to-cumulative state), sums without a
temporality, histograms, exponential histograms and summaries (`unsupported_type_*`), points flagged
"no recorded value" (`no_recorded_value`; they will become staleness markers), points without a
timestamp (`missing_timestamp`) and metrics without a name (`invalid_metric_name`).

Labels of each sample, sorted by name as remote write requires: `__name__`; the data point's attributes
(names per `naming`); `job` (`service.namespace/service.name`) and `instance` (`service.instance.id`) from
the resource; `otel_scope_name` and `otel_scope_version`. Empty values are left out: remote write forbids
them, and Prometheus treats an empty label as an absent one. Other resource attributes are not sent yet
(the spec puts them on a `target_info` series).

The work is done per batch: names and label plans are cached per distinct (name, unit, kind) and per
distinct attribute key tuple, resource and scope labels once per resource and scope; the result is
columnar (parallel lists) rather than an object per sample.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, DataPointFlags, Metric, NumberDataPoint

from exporters.remote_write.naming import MetricKind, job_label, label_plan, metric_name

Labels = tuple[tuple[str, str], ...]
"""A series' complete label set, sorted by name, `__name__` included."""

NAME_LABEL = "__name__"
_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_UNSUPPORTED_TYPES = {
    "histogram": "unsupported_type_histogram",
    "exponential_histogram": "unsupported_type_exponential_histogram",
    "summary": "unsupported_type_summary",
}
# Bytes a sample costs in a remote-write 1.0 body beyond its label text: tags and lengths per label, the
# TimeSeries and Sample framing, an 8-byte value and a varint timestamp. An estimate, for batch sizing.
_SAMPLE_OVERHEAD = 24
_LABEL_OVERHEAD = 6


@dataclass(slots=True)
class SampleBatch:
    """Samples as parallel columns: sample i is (labels[i], values[i], timestamps[i] in ms since the epoch).

    `sizes[i]` estimates the bytes sample i adds to an uncompressed remote-write 1.0 body. `dropped` counts
    the data points that were not translated, by reason.
    """

    labels: list[Labels] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.values)


def translate(request: ExportMetricsServiceRequest) -> SampleBatch:
    """Translate every supported data point of `request` (read only, never modified)."""
    batch = SampleBatch()
    for resource_metrics in request.resource_metrics:
        resource_labels = _resource_labels(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope
            fixed = list(resource_labels)
            if scope.name:
                fixed.append(("otel_scope_name", scope.name))
            if scope.version:
                fixed.append(("otel_scope_version", scope.version))
            for metric in scope_metrics.metrics:
                _translate_metric(metric, fixed, batch)
    return batch


def _resource_labels(attributes: Iterable[KeyValue]) -> list[tuple[str, str]]:
    service_name = service_namespace = instance = ""
    for kv in attributes:
        key = kv.key
        if key == "service.name":
            service_name = _attribute_text(kv.value)
        elif key == "service.namespace":
            service_namespace = _attribute_text(kv.value)
        elif key == "service.instance.id":
            instance = _attribute_text(kv.value)
    labels = []
    job = job_label(service_name, service_namespace)
    if job:
        labels.append(("job", job))
    if instance:
        labels.append(("instance", instance))
    return labels


def _translate_metric(metric: Metric, fixed: list[tuple[str, str]], batch: SampleBatch) -> None:
    data = metric.WhichOneof("data")
    if data == "gauge":
        points = metric.gauge.data_points
        kind = MetricKind.GAUGE
    elif data == "sum":
        points = metric.sum.data_points
        temporality = metric.sum.aggregation_temporality
        if temporality != _CUMULATIVE:
            reason = "unsupported_delta_temporality" if temporality == _DELTA else "unsupported_unspecified_temporality"
            batch.dropped[reason] += len(points)
            return
        kind = MetricKind.MONOTONIC_SUM if metric.sum.is_monotonic else MetricKind.NON_MONOTONIC_SUM
    elif data in _UNSUPPORTED_TYPES:
        batch.dropped[_UNSUPPORTED_TYPES[data]] += len(getattr(metric, data).data_points)
        return
    else:
        return  # a metric without data carries no points to lose
    if not points:
        return
    name = metric_name(metric.name, metric.unit, kind)
    if not name:
        batch.dropped["invalid_metric_name"] += len(points)
        return
    _append_points(points, [(NAME_LABEL, name), *fixed], batch)


def _append_points(points: Sequence[NumberDataPoint], fixed: list[tuple[str, str]], batch: SampleBatch) -> None:
    fixed_names = tuple(name for name, _ in fixed)
    fixed_values = [value for _, value in fixed]
    fixed_size = sum(len(n) + len(v) + _LABEL_OVERHEAD for n, v in fixed) + _SAMPLE_OVERHEAD
    bare_labels: Labels = tuple(sorted(fixed))
    labels_out, values_out, times_out, sizes_out = batch.labels, batch.values, batch.timestamps, batch.sizes
    dropped = batch.dropped
    for point in points:
        if point.flags & _NO_RECORDED_VALUE:
            dropped["no_recorded_value"] += 1
            continue
        time_unix_nano = point.time_unix_nano
        if not time_unix_nano:
            dropped["missing_timestamp"] += 1
            continue
        attributes = point.attributes
        if attributes:
            labels, size = _labels_with_attributes(attributes, fixed_names, fixed_values)
            size += _SAMPLE_OVERHEAD
        else:
            labels, size = bare_labels, fixed_size
        labels_out.append(labels)
        values_out.append(point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int))
        times_out.append(time_unix_nano // 1_000_000)
        sizes_out.append(size)


def _labels_with_attributes(
    attributes: Sequence[KeyValue], fixed_names: tuple[str, ...], fixed_values: list[str]
) -> tuple[Labels, int]:
    plan = label_plan(tuple(kv.key for kv in attributes), fixed_names)
    texts = [_attribute_text(kv.value) for kv in attributes]
    labels = []
    size = 0
    for name, fixed_index, sources in plan:
        if fixed_index >= 0:
            value = fixed_values[fixed_index]
        elif len(sources) == 1:
            value = texts[sources[0]]
        else:
            value = ";".join(texts[i] for i in sources)
        if value:
            labels.append((name, value))
            size += len(name) + len(value) + _LABEL_OVERHEAD
    return tuple(labels), size


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
