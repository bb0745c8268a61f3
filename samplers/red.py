"""RED metrics (calls, errors, duration) from every span, before any sampling decision.

    red = RedAggregator(buckets=(0.005, 0.01, 0.1, 1.0), dimensions=("http.route",), max_series=10_000)
    sampler.span_observer = red                   # observe() is called for every accepted span
    for series in red.snapshot():                 # cumulative since `red.created`
        series.service_name, series.span_name, series.calls, series.duration_sum, series.bucket_counts

A series is one (resource identity, span name, span kind, status code, dimension values), where the resource
identity is the text of `service.name`, `service.namespace` and `service.instance.id`: two resources that
differ only in other attributes (`host.name`, `process.pid`, ...) feed the same series. A configured
dimension is read from the span's attributes and, when the span does not have it, from the resource's (as
the Collector's spanmetrics connector does); absent from both, it is left out of the series.

observe() is the ingest hot path (every span, before sampling), so it does no per-span parsing:
- per distinct `resource_part` (the bytes, compared by content) the identity and the resource's dimension
  values are read once and cached, with an index `(name bytes, kind, code[, dimension values]) -> cell`;
  consecutive spans of one request pass the same bytes object, so switching resources is an `is` test;
- a series' cell is a flat list `[duration sum in ns, count in bucket 0, ..., count above the last bound]`
  shared by every index that points at it, updated with one bisect and two integer additions;
- span attributes are read only when dimensions are configured, and only for a key the span's bytes contain.

Bounds, all enforced:
- `max_series` series. Once reached, a span of a new series is not refused but folded, as the OpenTelemetry
  SDKs do past their cardinality limit, into an overflow series (`overflow=True`; exported with the point
  attribute `otel.metric.overflow=true`): one per resource identity that already has a series, so totals per
  service stay exact, and one without a resource for identities first seen past the limit. So at most
  2 * max_series + 1 series exist. `overflow_spans` counts the spans folded.
- the resource cache holds at most `max_resource_bytes` of resource_part bytes (oldest evicted first);
- the indexes hold at most 4 * max_series + 1024 entries in all; past that they are cleared and rebuilt from
  the series table as spans arrive (the series themselves are kept).
- a series (overflow series included) that counted no span for `idle_expiry` seconds is forgotten by
  `expire(now)`, which the caller runs once per flush: a client that sends endless new span names holds at
  most `max_series` places, and those it stopped using come free. A forgotten series that comes back starts
  from zero with a new start time (`RedSeries.start_time`), as the Collector's spanmetrics connector does with
  its `metrics_expiration`. `expired_series` counts them. Idleness is seen per call of `expire`, so a series
  goes between `idle_expiry` and `idle_expiry` plus one interval between calls after its last span.

Durations are end - start in integer nanoseconds (0 when the end is before the start), so sums are exact;
bucket i counts durations d with bounds[i-1] < d <= bounds[i] (OTLP explicit-bucket semantics, upper
bound inclusive), the last bucket those above the highest bound. Standard library only.
"""

from __future__ import annotations

import base64
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import NamedTuple

from samplers.wire import WireError, find_attribute, resource_attributes_bytes

__all__ = ["RESERVED_DIMENSIONS", "SPAN_KIND_NAMES", "STATUS_CODE_NAMES", "RedAggregator", "RedSeries",
           "attribute_text"]

SPAN_KIND_NAMES = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
                   "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")
STATUS_CODE_NAMES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")
RESERVED_DIMENSIONS = ("service.name", "span.name", "span.kind", "status.code")
"""Point attributes every series has; a configured dimension may not reuse one."""

Identity = tuple[str, str, str]
"""(service.name, service.namespace, service.instance.id) as text, "" when absent."""

_NO_RESOURCE: Identity = ("", "", "")
_SERVICE_NAME, _SERVICE_NAMESPACE, _SERVICE_INSTANCE = b"service.name", b"service.namespace", b"service.instance.id"
_RESOURCE_OVERHEAD = 200  # bytes a cached resource costs beyond its resource_part: entry, tuples, index dict


class RedSeries(NamedTuple):
    """One series, cumulative since the aggregator was created."""

    service_name: str
    service_namespace: str
    service_instance_id: str
    span_name: str
    kind: int
    """The span kind's number (SPAN_KIND_NAMES[kind] when in range)."""
    status_code: int
    """The status code's number (STATUS_CODE_NAMES[status_code] when in range)."""
    dimensions: tuple[tuple[str, str], ...]
    """(name, value as text) of the configured dimensions this series has, in configured order."""
    calls: int
    duration_sum: float
    """Seconds."""
    bucket_counts: tuple[int, ...]
    """len(buckets) + 1 counts, not cumulative; the last counts durations above the highest bound."""
    overflow: bool = False
    """True for a series that folds spans of series refused past max_series: then span_name is "", kind and
    status_code 0 and dimensions empty; the service fields are those of the resource (all "" for the series
    of resources first seen past the limit)."""
    start_time: float = 0.0
    """Seconds since the epoch when the series started counting, if after the aggregator's `created` (it was
    forgotten when idle and came back); 0.0: since `created`."""


def attribute_text(value: object) -> str:
    """An attribute value (as samplers.wire.find_attribute returns it) as text, the way the remote-write
    translation writes label values: strings as they are, booleans `true`/`false`, numbers in decimal, bytes
    (and array/kvlist values, which come back as their raw encoding) in base64."""
    if value.__class__ is str:
        return value  # type: ignore[return-value]
    if value.__class__ is bool:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


class _Resource:
    """What is cached per distinct resource_part."""

    __slots__ = ("identity", "dimensions", "index", "nbytes")

    def __init__(self, identity: Identity, dimensions: tuple[str | None, ...], nbytes: int) -> None:
        self.identity = identity
        self.dimensions = dimensions  # the resource's values of the configured dimensions (None: absent)
        self.index: dict[tuple, list[int]] = {}
        self.nbytes = nbytes


class RedAggregator:
    """Counts and duration histograms of every span it observes; see the module docstring.

    `buckets`: the histogram's upper bounds in seconds, ascending. `dimensions`: span attribute names added to
    the series identity. `max_series`: the series limit (see "Bounds"). `clock` gives `created`, the start
    time of every cumulative series (seconds since the epoch). Single-threaded: call it from one thread.
    """

    def __init__(self, buckets: Sequence[float], dimensions: Sequence[str] = (), max_series: int = 10_000, *,
                 max_resource_bytes: int = 4 << 20, idle_expiry: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        buckets = tuple(float(b) for b in buckets)
        for i, bound in enumerate(buckets):
            if not (math.isfinite(bound) and bound > 0):
                raise ValueError(f"buckets: expected positive, finite bounds in seconds, found {bound!r}")
            if i and bound <= buckets[i - 1]:
                raise ValueError(f"buckets: expected strictly ascending bounds, found {buckets[i - 1]!r} "
                                 f"then {bound!r}")
        bounds_ns = [round(b * 1e9) for b in buckets]
        if len(set(bounds_ns)) != len(bounds_ns):
            raise ValueError("buckets: bounds closer than a nanosecond")
        dimensions = tuple(dimensions)
        for name in dimensions:
            if not isinstance(name, str) or not name:
                raise ValueError(f"dimensions: expected attribute names, found {name!r}")
            if name in RESERVED_DIMENSIONS:
                raise ValueError(f"dimensions: {name!r} is always a dimension; leave it out")
        if len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions: expected unique names, found {list(dimensions)}")
        if max_series < 1:
            raise ValueError(f"max_series: expected at least 1, found {max_series}")
        if max_resource_bytes < 1:
            raise ValueError(f"max_resource_bytes: expected at least 1, found {max_resource_bytes}")
        if not idle_expiry > 0:
            raise ValueError(f"idle_expiry: expected more than 0 seconds, found {idle_expiry!r}")
        self.buckets = buckets
        self.dimensions = dimensions
        self.max_series = max_series
        self.max_resource_bytes = max_resource_bytes
        self.idle_expiry = idle_expiry
        self._clock = clock
        self.created = clock()
        self.expired_series = 0
        # Per series (overflow ones keyed by ("overflow", identity)): (calls when last looked, when they changed).
        self._activity: dict[tuple, tuple[int, float]] = {}
        self._started: dict[tuple, float] = {}  # series created after an expiry: their own start time
        self._expired_any = False
        # A leading sentinel below every duration (durations are >= 0), so bisect_left gives 1 + the bucket
        # index: the cell slot to count in, slot 0 being the duration sum.
        self._bounds = [-1, *bounds_ns]
        self._width = len(buckets) + 2
        self._dimension_keys = tuple(name.encode() for name in dimensions)
        self._series: dict[tuple, list[int]] = {}   # (identity, name text, kind, code, dimension pairs) -> cell
        self._overflow: dict[Identity, list[int]] = {}
        self._service_series: dict[Identity, int] = {}  # regular series per identity
        self._resources: dict[bytes, _Resource] = {}
        self._resource_bytes = 0
        self._index_entries = 0
        self._max_index_entries = 4 * max_series + 1024
        self._part: bytes | None = None
        self._resource = _Resource(_NO_RESOURCE, (), 0)
        self._index = self._resource.index
        if len(dimensions) == 1:
            self.observe = self._observe_dimension  # type: ignore[method-assign]
        elif dimensions:
            self.observe = self._observe_dimensions  # type: ignore[method-assign]

    # -- the hot path ------------------------------------------------------------------------------------

    def observe(self, resource_part: bytes, span: bytes, name: bytes, kind: int, status_code: int,
                start_ns: int, end_ns: int, _bisect: Callable = bisect_left) -> None:
        """Count one span (samplers.tail.SpanObserver). `_bisect` is a local-speed alias, not an argument."""
        if resource_part is not self._part:
            self._use(resource_part)
        cell = self._index.get((name, kind, status_code))
        if cell is None:
            cell = self._cell((name, kind, status_code), name, kind, status_code)
        d = end_ns - start_ns
        if d < 0:
            d = 0
        cell[0] += d
        cell[_bisect(self._bounds, d)] += 1

    def _observe_dimensions(self, resource_part: bytes, span: bytes, name: bytes, kind: int, status_code: int,
                            start_ns: int, end_ns: int, _bisect: Callable = bisect_left) -> None:
        """observe() when dimensions are configured: their values join the index key."""
        if resource_part is not self._part:
            self._use(resource_part)
        values = []
        for attribute, default in zip(self._dimension_keys, self._resource.dimensions):
            values.append(_span_value(span, attribute, default) if attribute in span else default)
        key = (name, kind, status_code, *values)
        cell = self._index.get(key)
        if cell is None:
            cell = self._cell(key, name, kind, status_code, values)
        d = end_ns - start_ns
        if d < 0:
            d = 0
        cell[0] += d
        cell[_bisect(self._bounds, d)] += 1

    def _observe_dimension(self, resource_part: bytes, span: bytes, name: bytes, kind: int, status_code: int,
                           start_ns: int, end_ns: int, _bisect: Callable = bisect_left) -> None:
        """observe() with exactly one dimension configured (the common case, unrolled)."""
        if resource_part is not self._part:
            self._use(resource_part)
        attribute = self._dimension_keys[0]
        default = self._resource.dimensions[0]
        key = (name, kind, status_code, _span_value(span, attribute, default) if attribute in span else default)
        cell = self._index.get(key)
        if cell is None:
            cell = self._cell(key, name, kind, status_code, key[3:])
        d = end_ns - start_ns
        if d < 0:
            d = 0
        cell[0] += d
        cell[_bisect(self._bounds, d)] += 1

    # -- once per resource, once per series ---------------------------------------------------------------

    def _use(self, resource_part: bytes) -> None:
        resource = self._resources.get(resource_part)
        if resource is None:
            resource = self._add_resource(resource_part)
        self._part = resource_part
        self._resource = resource
        self._index = resource.index

    def _add_resource(self, resource_part: bytes) -> _Resource:
        nbytes = len(resource_part) + _RESOURCE_OVERHEAD
        resources = self._resources
        while resources and self._resource_bytes + nbytes > self.max_resource_bytes:
            oldest = next(iter(resources))
            evicted = resources.pop(oldest)
            self._resource_bytes -= evicted.nbytes
            self._index_entries -= len(evicted.index)
        try:
            attributes = resource_attributes_bytes(resource_part)
            identity = (_text(attributes, _SERVICE_NAME), _text(attributes, _SERVICE_NAMESPACE),
                        _text(attributes, _SERVICE_INSTANCE))
            values = tuple(_text(attributes, key, None) for key in self._dimension_keys)
        except WireError:  # the sampler refuses nothing for a bad resource, so neither do we: count it bare
            identity, values = _NO_RESOURCE, (None,) * len(self._dimension_keys)
        resource = _Resource(identity, values, nbytes)
        if nbytes <= self.max_resource_bytes:  # a part larger than the whole cache is used once, not cached
            resources[resource_part] = resource
            self._resource_bytes += nbytes
        return resource

    def _cell(self, index_key: tuple, name: bytes, kind: int, status_code: int,
              values: Sequence[str | None] = ()) -> list[int]:
        """The cell for a series not in the current resource's index: found, created or the overflow's.
        `values` are the configured dimensions' values (None: absent)."""
        identity = self._resource.identity
        pairs = tuple((n, v) for n, v in zip(self.dimensions, values) if v is not None)
        key = (identity, name.decode("utf-8", "replace"), kind, status_code, pairs)
        cell = self._series.get(key)
        if cell is None:
            if len(self._series) < self.max_series:
                cell = self._series[key] = [0] * self._width
                self._service_series[identity] = self._service_series.get(identity, 0) + 1
                if self._expired_any:
                    self._started[key] = self._clock()
            else:
                home = identity if identity in self._service_series else _NO_RESOURCE
                cell = self._overflow.get(home)
                if cell is None:
                    cell = self._overflow[home] = [0] * self._width
                    if self._expired_any:
                        self._started[("overflow", home)] = self._clock()
        if self._index_entries >= self._max_index_entries:
            for resource in self._resources.values():
                resource.index.clear()
            self._resource.index.clear()  # the current one, even when it was too large to cache
            self._index_entries = 0
        self._index[index_key] = cell
        self._index_entries += 1
        return cell

    # -- idle expiry ---------------------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget every series that counted no span for `idle_expiry` seconds before `now` (seconds, the
        clock's); returns how many. O(series); run it once per flush, not per span."""
        limit = now - self.idle_expiry
        activity = self._activity
        seen: dict[tuple, tuple[int, float]] = {}
        gone: list[tuple] = []
        for table, prefix in ((self._series, None), (self._overflow, "overflow")):
            for key, cell in table.items():
                akey = key if prefix is None else (prefix, key)
                calls = sum(cell) - cell[0]
                last = activity.get(akey)
                if last is None or last[0] != calls:
                    seen[akey] = (calls, now)
                elif last[1] <= limit:
                    gone.append(akey)
                else:
                    seen[akey] = last
        self._activity = seen
        if not gone:
            return 0
        for akey in gone:
            self._started.pop(akey, None)
            if akey[0] == "overflow":
                del self._overflow[akey[1]]
                continue
            del self._series[akey]
            identity = akey[0]
            left = self._service_series[identity] - 1
            if left:
                self._service_series[identity] = left
            else:
                del self._service_series[identity]
        # Indexes point at the cells just dropped: clear them; they are rebuilt from the series as spans come.
        for resource in self._resources.values():
            resource.index.clear()
        self._resource.index.clear()
        self._index_entries = 0
        self._expired_any = True
        self.expired_series += len(gone)
        return len(gone)

    # -- reading -----------------------------------------------------------------------------------------

    def snapshot(self) -> list[RedSeries]:
        """Every series, cumulative since `created` (or its own `start_time`); overflow series last."""
        out = []
        started = self._started
        for key, cell in self._series.items():
            identity, name, kind, code, pairs = key
            counts = tuple(cell[1:])
            out.append(RedSeries(*identity, name, kind, code, pairs, sum(counts), cell[0] / 1e9, counts,
                                 start_time=started.get(key, 0.0) if started else 0.0))
        for identity, cell in self._overflow.items():
            counts = tuple(cell[1:])
            out.append(RedSeries(*identity, "", 0, 0, (), sum(counts), cell[0] / 1e9, counts, overflow=True,
                                 start_time=started.get(("overflow", identity), 0.0) if started else 0.0))
        return out

    @property
    def bounds_ns(self) -> tuple[int, ...]:
        """The bucket bounds in integer nanoseconds, as durations are compared with them."""
        return tuple(self._bounds[1:])

    @property
    def series_count(self) -> int:
        """Series held, overflow series included."""
        return len(self._series) + len(self._overflow)

    @property
    def overflow_spans(self) -> int:
        """Spans folded into overflow series because max_series was reached."""
        return sum(sum(cell[1:]) for cell in self._overflow.values())

    @property
    def cached_resources(self) -> int:
        return len(self._resources)


def _span_value(span: bytes, key: bytes, default: str | None) -> str | None:
    """Span attribute `key` as text, or `default` (the resource's value) when the span has none. Malformed
    attributes count as none: the sampler reports those, and the span is still counted."""
    try:
        value = find_attribute(span, key, 9)
    except WireError:
        return default
    if value is None:
        return default
    return value if value.__class__ is str else attribute_text(value)


def _text(attributes: bytes, key: bytes, missing: str | None = "") -> str | None:
    """Resource attribute `key` as text, or `missing`."""
    value = find_attribute(attributes, key, 1) if key in attributes else None
    return missing if value is None else attribute_text(value)
