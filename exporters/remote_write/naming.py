"""OTLP metric and attribute names to Prometheus names.

Follows OpenTelemetry's "Prometheus and OpenMetrics Compatibility" spec, section "OTLP Metric points to
Prometheus", so that a metric reaches Prometheus under the same name whichever path it takes (our agent, the
Collector's prometheusremotewrite exporter, Prometheus's own OTLP endpoint) and dashboards keep working.

Metric names (`[a-zA-Z_:][a-zA-Z0-9_:]*`):
- every invalid character becomes `_`, and runs of `_` become one `_` (both MUST in the spec);
- the unit is appended as words (`ms` -> `milliseconds`, `By` -> `bytes`, `foo/bar` -> `foo_per_bar`,
  `{packet}` annotations dropped), before the type suffix, unless the name already ends with it;
- monotonic sums end in `_total`; gauges with unit `1` end in `_ratio` (not sums: some receivers still
  use `1` for counts of things, the same choice as the Collector and Prometheus);
- a name that would start with a digit gets a leading `_`, since the regex forbids it.

Label names (`[a-zA-Z_][a-zA-Z0-9_]*`):
- invalid characters become `_` and runs of `_` collapse to one;
- a leading digit gets `key_`, and a leading `_` gets `key` (`_foo` -> `key_foo`), as Prometheus's OTLP
  endpoint does by default. With runs collapsed this also means an attribute can never produce a name
  beginning with `__`, which remote write reserves for the system (`__name__` is ours to set);
- attributes whose keys collide after that have their values joined with `;`, ordered by original key.

The unit tables are the Collector's (the spec gives only examples), except that a per-unit `m` is UCUM's
meter, not a minute (`min` is the minute).
"""

from __future__ import annotations

import enum
import math
import re
from decimal import Decimal
from functools import lru_cache

_INVALID_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_UNDERSCORE_RUNS = re.compile(r"__+")
_ANNOTATIONS = re.compile(r"\{[^}]*\}")

# UCUM units (as OpenTelemetry semantic conventions write them) to the plural words Prometheus uses.
UNIT_WORDS: dict[str, str] = {
    # time
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    # bytes
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tebibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    # SI
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    # misc
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
    "1": "",
}

# The denominator of `foo/bar` units, singular: `By/s` -> `bytes_per_second`.
PER_UNIT_WORDS: dict[str, str] = {
    "s": "second",
    "ms": "millisecond",
    "us": "microsecond",
    "ns": "nanosecond",
    "min": "minute",
    "h": "hour",
    "d": "day",
    "wk": "week",
    "w": "week",
    "mo": "month",
    "a": "year",
    "y": "year",
    "By": "byte",
    "m": "meter",
}


class MetricKind(enum.Enum):
    """The OTLP shape of a metric, which decides its type suffix."""

    GAUGE = "gauge"
    MONOTONIC_SUM = "monotonic_sum"
    NON_MONOTONIC_SUM = "non_monotonic_sum"
    HISTOGRAM = "histogram"
    SUMMARY = "summary"


def _collapse(name: str) -> str:
    return _UNDERSCORE_RUNS.sub("_", name)


def _unit_word(word: str) -> str:
    """A unit word usable inside a metric name: label-safe characters, no edge underscores."""
    return _collapse(_INVALID_LABEL_CHARS.sub("_", word)).strip("_")


@lru_cache(maxsize=1024)
def unit_suffix(unit: str, kind: MetricKind) -> str:
    """The words a unit adds to a metric name (`s` -> `seconds`, `By/s` -> `bytes_per_second`), or ""."""
    unit = unit.strip()
    if unit == "1":
        return "ratio" if kind is MetricKind.GAUGE else ""
    unit = _ANNOTATIONS.sub("", unit).strip()
    if not unit:
        return ""
    main, slash, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    main_word = _unit_word(UNIT_WORDS.get(main, main))
    per_word = _unit_word(PER_UNIT_WORDS.get(per, UNIT_WORDS.get(per, per))) if slash else ""
    if per_word:
        return f"{main_word}_per_{per_word}" if main_word else f"per_{per_word}"
    return main_word


@lru_cache(maxsize=4096)
def metric_name(name: str, unit: str, kind: MetricKind) -> str:
    """The Prometheus metric name for an OTLP metric; "" when `name` is empty."""
    if not name:
        return ""
    base = _collapse(_INVALID_METRIC_CHARS.sub("_", name))
    counter = kind is MetricKind.MONOTONIC_SUM
    if counter and base.endswith("_total"):
        base = base[: -len("_total")]  # the unit goes before it; added back below
    suffix = unit_suffix(unit, kind)
    if suffix and base != suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if counter:
        base += "_total"
    base = _collapse(base)
    return "_" + base if base[0].isdigit() else base


@lru_cache(maxsize=8192)
def label_name(key: str) -> str:
    """The Prometheus label name for an attribute key; "" when `key` is empty (such a label is not sent)."""
    if not key:
        return ""
    name = _collapse(_INVALID_LABEL_CHARS.sub("_", key))
    if name[0].isdigit():
        return "key_" + name
    if name[0] == "_":
        return "key" + name
    return name


# One label of a plan: its name, and where its value comes from. `fixed >= 0` takes the caller's fixed
# value number `fixed` (the fixed labels first, then the weak ones: job, instance, scope, __name__, promoted
# resource attributes); otherwise the value is the attribute values at `sources`, joined with ";".
PlanEntry = tuple[str, int, tuple[int, ...]]


@lru_cache(maxsize=4096)
def label_plan(
    keys: tuple[str, ...],
    fixed_names: tuple[str, ...],
    weak_names: tuple[str, ...] = (),
    reserved: tuple[str, ...] = (),
) -> tuple[PlanEntry, ...]:
    """How to build a sorted label set from attributes with these `keys` plus labels named `fixed_names`.

    Computed once per distinct key tuple, not per data point: data points of one metric nearly always
    share their attribute keys. A fixed label wins over an attribute that maps to the same name (the
    resource's `job` over a data point attribute `job`, as Prometheus's OTLP endpoint does). A weak label
    (a promoted resource attribute; its value index follows the fixed ones) is used only when neither a
    fixed label nor an attribute has its name: the data point is more specific than its resource. A
    `reserved` name (`le` on histograms, `quantile` on summaries: the caller adds it per series) is never
    produced from an attribute. Attributes whose sanitized keys collide are joined with ";" in the order of
    their original keys; an attribute key that repeats keeps its last value, as OTLP decoders do.
    """
    last_index: dict[str, int] = {}
    for index, key in enumerate(keys):
        last_index[key] = index
    groups: dict[str, list[tuple[str, int]]] = {}
    for key, index in last_index.items():
        name = label_name(key)
        if name and name not in fixed_names and name not in reserved:
            groups.setdefault(name, []).append((key, index))
    entries: list[PlanEntry] = [(name, i, ()) for i, name in enumerate(fixed_names)]
    taken = set(fixed_names).union(groups, reserved)
    for j, name in enumerate(weak_names):
        if name not in taken:
            taken.add(name)
            entries.append((name, len(fixed_names) + j, ()))
    for name, members in groups.items():
        entries.append((name, -1, tuple(index for _, index in sorted(members))))
    entries.sort(key=lambda entry: entry[0])
    return tuple(entries)


def float_label(value: float) -> str:
    """A float as Prometheus writes it in `le` and `quantile` labels: Go's `strconv.FormatFloat(v, 'g', -1,
    64)` with `+Inf`/`-Inf`/`NaN`, so `0.005`, `1`, `2.5`, `100000`, `1e+06`, `1e-05`.

    The same bound must always produce the same text, or one bucket becomes two series; matching what
    Prometheus client libraries write keeps the series identical to scraped ones.
    """
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:  # before the cache, which cannot tell 0.0 from -0.0 (they are equal)
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    return _nonzero_float_label(value)


@lru_cache(maxsize=8192)
def _nonzero_float_label(value: float) -> str:
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()  # repr: the shortest round-trip digits
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)  # type: ignore[operator]
    point = len(digits) + exponent  # digits before the decimal point
    scientific = point - 1
    prefix = "-" if sign else ""
    if scientific < -4 or scientific >= 6:  # Go's rule for the shortest 'g' format
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if scientific < 0 else '+'}{abs(scientific):02d}"
    if exponent >= 0:
        return prefix + digits + "0" * exponent
    if point > 0:
        return f"{prefix}{digits[:point]}.{digits[point:]}"
    return f"{prefix}0.{'0' * -point}{digits}"


def job_label(service_name: str, service_namespace: str) -> str:
    """`job` from the resource: `<service.namespace>/<service.name>`, or `<service.name>` alone."""
    if not service_name:
        return ""
    return f"{service_namespace}/{service_name}" if service_namespace else service_name
