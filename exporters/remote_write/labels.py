"""Labels of translated series and the limits they must keep: the `Labeler` that builds one metric's label
sets from data point attributes, the checks against `Limits`, and attribute values as label text.

Split from `translate` along its seam: what a series' labels are does not depend on the kind of point that
carries them, and `series_cache` builds them once per series through the same `Labeler`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from exporters.remote_write.naming import PlanEntry, label_plan
from exporters.remote_write.series import NAME_LABEL, Labels

EXEMPLAR_MAX_CHARS = 128  # OpenMetrics: names and values of an exemplar's labels together
LABEL_OVERHEAD = 6
"""Bytes a label costs in a remote-write 1.0 body beyond its text: tags and lengths. An estimate, for batch
sizing."""


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


class Labeler:
    """Builds the sorted labels of one metric's data points; built once per metric."""

    __slots__ = ("bare", "bare_error", "bare_size", "fixed_names", "limits", "reserved", "values", "weak_names")

    def __init__(self, name: str, scope: ScopeLabels, reserved: tuple[str, ...], limits: Limits) -> None:
        self.fixed_names = (NAME_LABEL, *scope.fixed_names)
        self.weak_names = scope.weak_names
        self.values = [name, *scope.fixed_values, *scope.weak_values]
        self.reserved = reserved
        self.limits = limits
        self.bare, self.bare_size, self.bare_error = self.build((), ())
        if self.bare_error is None:
            self.bare_error = scope.error or value_error(name, limits.max_label_value_length)

    def __call__(self, attributes: Sequence[KeyValue]) -> tuple[Labels, int, str | None]:
        """(labels, their size estimate, None), or ((), 0, the reason the point must be dropped)."""
        if not attributes:
            return self.bare, self.bare_size, self.bare_error
        if self.bare_error is not None:
            return (), 0, self.bare_error
        return self.build(tuple(kv.key for kv in attributes), [attribute_text(kv.value) for kv in attributes])

    def build(self, keys: tuple[str, ...], texts: Sequence[str]) -> tuple[Labels, int, str | None]:
        limits = self.limits
        plan, name_error = checked_plan(
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
                if len(value) * 4 > max_value and value_error(value, max_value):
                    return (), 0, "label_value_too_long"
            if value:
                labels.append((name, value))
                size += len(name) + len(value) + LABEL_OVERHEAD
        if len(labels) + (1 if self.reserved else 0) > limits.max_labels_per_series:
            return (), 0, "too_many_labels"
        return tuple(labels), size, None


class ScopeLabels(NamedTuple):
    """Labels every point of one scope carries: fixed (job, instance, scope) and weak (promoted)."""

    fixed_names: tuple[str, ...]
    fixed_values: tuple[str, ...]
    weak_names: tuple[str, ...]
    weak_values: tuple[str, ...]
    error: str | None  # why every point of the scope must be dropped, if one of these labels breaks a limit


@lru_cache(maxsize=4096)
def checked_plan(
    keys: tuple[str, ...],
    fixed_names: tuple[str, ...],
    weak_names: tuple[str, ...],
    reserved: tuple[str, ...],
    max_name_length: int,
) -> tuple[tuple[PlanEntry, ...], bool]:
    """The label plan, and whether one of its names is longer than `max_name_length` bytes."""
    plan = label_plan(keys, fixed_names, weak_names, reserved)
    return plan, any(len(name.encode()) > max_name_length for name, _, _ in plan)


def apply_plan(
    plan: Iterable[PlanEntry], fixed_values: Sequence[str], texts: Sequence[str]
) -> Iterable[tuple[str, str]]:
    for name, fixed_index, sources in plan:
        value = fixed_values[fixed_index] if fixed_index >= 0 else ";".join(texts[i] for i in sources)
        if value:
            yield name, value


def value_error(value: str, max_length: int) -> str | None:
    if len(value) * 4 > max_length and len(value.encode()) > max_length:
        return "label_value_too_long"
    return None


def fixed_error(names: Sequence[str], values: Sequence[str], limits: Limits) -> str | None:
    if any(len(name.encode()) > limits.max_label_name_length for name in names):
        return "label_name_too_long"
    for value in values:
        if value_error(value, limits.max_label_value_length):
            return "label_value_too_long"
    return None


def labels_error(labels: Labels, limits: Limits) -> str | None:
    """Why a complete label set breaks a limit, or None (for series built outside a `Labeler`)."""
    reason = fixed_error([n for n, _ in labels], [v for _, v in labels], limits)
    if reason is None and len(labels) > limits.max_labels_per_series:
        return "too_many_labels"
    return reason


def labels_size(labels: Labels) -> int:
    return sum(len(name) + len(value) + LABEL_OVERHEAD for name, value in labels)


def exemplar_labels(exemplar: object) -> Labels:
    ids = []
    if exemplar.span_id:  # type: ignore[attr-defined]
        ids.append(("span_id", exemplar.span_id.hex()))  # type: ignore[attr-defined]
    if exemplar.trace_id:  # type: ignore[attr-defined]
        ids.append(("trace_id", exemplar.trace_id.hex()))  # type: ignore[attr-defined]
    attributes = exemplar.filtered_attributes  # type: ignore[attr-defined]
    if not attributes:
        return tuple(ids)
    plan = label_plan(tuple(kv.key for kv in attributes), tuple(name for name, _ in ids))
    texts = [attribute_text(kv.value) for kv in attributes]
    labels = tuple(apply_plan(plan, [value for _, value in ids], texts))
    if sum(len(name) + len(value) for name, value in labels) > EXEMPLAR_MAX_CHARS:
        return tuple(ids)
    return labels


def attribute_text(value: AnyValue) -> str:
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
