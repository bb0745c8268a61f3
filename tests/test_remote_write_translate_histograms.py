"""Histograms, exponential histograms, summaries, staleness markers and exemplars to Prometheus series."""

from __future__ import annotations

import struct

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    Exemplar,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Histogram,
    HistogramDataPoint,
    Metric,
    Summary,
    SummaryDataPoint,
)

from exporters.remote_write.translate import MAX_CLASSIC_BUCKETS, NativeHistogram, SampleBatch, translate
from tests.test_remote_write_translate import T_MS, T_NS, attrs, gauge, point, request, sum_metric

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
STALE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
STALE_BITS = struct.pack("<Q", 0x7FF0000000000002)
TRACE = bytes(range(16))
SPAN = bytes(range(8))


def histogram(name: str, *points: HistogramDataPoint, unit: str = "") -> Metric:
    return Metric(name=name, unit=unit, histogram=Histogram(data_points=points, aggregation_temporality=CUMULATIVE))


def exponential(name: str, *points: ExponentialHistogramDataPoint, unit: str = "") -> Metric:
    return Metric(
        name=name,
        unit=unit,
        exponential_histogram=ExponentialHistogram(data_points=points, aggregation_temporality=CUMULATIVE),
    )


def summary(name: str, *points: SummaryDataPoint) -> Metric:
    return Metric(name=name, summary=Summary(data_points=points))


def series(batch: SampleBatch) -> list[tuple[str, str | None, float]]:
    """(name, le or quantile, value) per float sample; staleness markers as the string "stale"."""
    out = []
    for labels, value in zip(batch.labels, batch.values):
        as_dict = dict(labels)
        stale = struct.pack("<d", value) == STALE_BITS
        out.append((as_dict["__name__"], as_dict.get("le", as_dict.get("quantile")), "stale" if stale else value))
    return out


def exemplar(value: float, *, trace: bytes = TRACE, span: bytes = SPAN, **filtered: object) -> Exemplar:
    return Exemplar(
        time_unix_nano=T_NS, as_double=value, trace_id=trace, span_id=span, filtered_attributes=attrs(**filtered)
    )


# -- explicit-bucket histograms ------------------------------------------------------------------------------

EXPLICIT_CASES = [
    pytest.param(
        dict(explicit_bounds=[0.005, 0.01, 1, 10], bucket_counts=[1, 2, 3, 4, 5], count=15, sum=42.5),
        [
            ("h_bucket", "0.005", 1.0),
            ("h_bucket", "0.01", 3.0),
            ("h_bucket", "1", 6.0),
            ("h_bucket", "10", 10.0),
            ("h_bucket", "+Inf", 15.0),
            ("h_count", None, 15.0),
            ("h_sum", None, 42.5),
        ],
        id="cumulative buckets, +Inf last, then _count and _sum",
    ),
    pytest.param(
        dict(explicit_bounds=[1], bucket_counts=[2, 1], count=3),
        [("h_bucket", "1", 2.0), ("h_bucket", "+Inf", 3.0), ("h_count", None, 3.0)],
        id="no _sum when the point has none (SDKs omit it for instruments that take negative values)",
    ),
    pytest.param(
        dict(explicit_bounds=[1], bucket_counts=[0, 0], count=0, sum=0.0),
        [("h_bucket", "1", 0.0), ("h_bucket", "+Inf", 0.0), ("h_count", None, 0.0), ("h_sum", None, 0.0)],
        id="a zero sum is still a sum",
    ),
    pytest.param(
        dict(count=4, sum=2.0),
        [("h_bucket", "+Inf", 4.0), ("h_count", None, 4.0), ("h_sum", None, 2.0)],
        id="no buckets: +Inf alone",
    ),
    pytest.param(
        dict(explicit_bounds=[1e-05, 0.1, 2.5, 100000, 1e6, 1234567], bucket_counts=[1] * 7, count=7),
        [
            ("h_bucket", "1e-05", 1.0),
            ("h_bucket", "0.1", 2.0),
            ("h_bucket", "2.5", 3.0),
            ("h_bucket", "100000", 4.0),
            ("h_bucket", "1e+06", 5.0),
            ("h_bucket", "1.234567e+06", 6.0),
            ("h_bucket", "+Inf", 7.0),
            ("h_count", None, 7.0),
        ],
        id="le written as Prometheus (Go) writes floats",
    ),
    pytest.param(
        dict(explicit_bounds=[-1, 0], bucket_counts=[1, 1, 1], count=3, flags=STALE),
        [
            ("h_bucket", "-1", "stale"),
            ("h_bucket", "0", "stale"),
            ("h_bucket", "+Inf", "stale"),
            ("h_count", None, "stale"),
            ("h_sum", None, "stale"),
        ],
        id="no recorded value: a staleness marker on every series",
    ),
    pytest.param(
        dict(explicit_bounds=[5], flags=STALE),
        [
            ("h_bucket", "5", "stale"),
            ("h_bucket", "+Inf", "stale"),
            ("h_count", None, "stale"),
            ("h_sum", None, "stale"),
        ],
        id="no recorded value without counts: the bounds still name the bucket series",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), EXPLICIT_CASES)
def test_an_explicit_histogram_point_becomes_classic_bucket_sum_and_count_series(fields: dict, expected: list) -> None:
    batch = translate(request(histogram("h", HistogramDataPoint(time_unix_nano=T_NS, **fields))))
    assert series(batch) == expected
    assert set(batch.timestamps) == {T_MS}
    assert not batch.dropped


def test_every_histogram_series_carries_the_point_labels_and_only_buckets_carry_le() -> None:
    point_ = HistogramDataPoint(
        time_unix_nano=T_NS,
        explicit_bounds=[1],
        bucket_counts=[1, 0],
        count=1,
        sum=0.5,
        attributes=attrs(route="/a", le="x"),
    )
    batch = translate(request(histogram("http.server.duration", point_, unit="s"), resource=attrs(service__name="svc")))
    assert [dict(labels) for labels in batch.labels] == [
        {"__name__": "http_server_duration_seconds_bucket", "job": "svc", "le": "1", "route": "/a"},
        {"__name__": "http_server_duration_seconds_bucket", "job": "svc", "le": "+Inf", "route": "/a"},
        {"__name__": "http_server_duration_seconds_count", "job": "svc", "route": "/a"},
        {"__name__": "http_server_duration_seconds_sum", "job": "svc", "route": "/a"},
    ]
    for labels in batch.labels:
        assert [name for name, _ in labels] == sorted(name for name, _ in labels)


def test_min_max_and_start_time_are_not_translated() -> None:
    point_ = HistogramDataPoint(
        time_unix_nano=T_NS, start_time_unix_nano=T_NS - 10**9, bucket_counts=[1], count=1, sum=3.0, min=3.0, max=3.0
    )
    names = {dict(labels)["__name__"] for labels in translate(request(histogram("h", point_))).labels}
    assert names == {"h_bucket", "h_count", "h_sum"}


def test_a_histogram_whose_bucket_counts_do_not_match_its_bounds_is_dropped_and_counted() -> None:
    bad = HistogramDataPoint(time_unix_nano=T_NS, explicit_bounds=[1, 2], bucket_counts=[1, 1], count=2)
    batch = translate(request(histogram("h", bad)))
    assert len(batch) == 0
    assert batch.dropped == {"invalid_histogram_buckets": 1}


@pytest.mark.parametrize(
    ("value", "le"),
    [(0.5, "1"), (1.0, "1"), (1.5, "10"), (10.0, "10"), (11.0, "+Inf"), (-3.0, "1")],
)
def test_a_histogram_exemplar_goes_on_the_one_bucket_whose_range_holds_its_value(value: float, le: str) -> None:
    point_ = HistogramDataPoint(
        time_unix_nano=T_NS, explicit_bounds=[1, 10], bucket_counts=[1, 1, 1], count=3, exemplars=[exemplar(value)]
    )
    batch = translate(request(histogram("h", point_)))
    (series_labels,) = batch.exemplar_labels
    assert dict(series_labels)["le"] == le
    assert series_labels in batch.labels
    (ex,) = batch.exemplars
    assert ex.value == value
    assert ex.timestamp == T_MS
    assert dict(ex.labels) == {"trace_id": TRACE.hex(), "span_id": SPAN.hex()}


# -- exponential histograms as classic buckets ----------------------------------------------------------------


def exp_point(**fields: object) -> ExponentialHistogramDataPoint:
    fields.setdefault("time_unix_nano", T_NS)
    return ExponentialHistogramDataPoint(**fields)


def buckets(offset: int, counts: list[int]) -> dict:
    return {"offset": offset, "bucket_counts": counts}


EXPONENTIAL_CLASSIC_CASES = [
    pytest.param(
        dict(scale=0, zero_count=4, positive=buckets(0, [1, 2, 3]), count=10, sum=30.0),
        [
            ("e_bucket", "0", 4.0),
            ("e_bucket", "2", 5.0),
            ("e_bucket", "4", 7.0),
            ("e_bucket", "8", 10.0),
            ("e_bucket", "+Inf", 10.0),
            ("e_count", None, 10.0),
            ("e_sum", None, 30.0),
        ],
        id="scale 0: le = 2**(index+1), zero bucket first",
    ),
    pytest.param(
        dict(
            scale=1, zero_count=1, zero_threshold=0.001, negative=buckets(0, [1, 1]), positive=buckets(-1, [2]), count=5
        ),
        [
            ("e_bucket", "-1.4142135623730951", 1.0),
            ("e_bucket", "-1", 2.0),
            ("e_bucket", "0.001", 3.0),
            ("e_bucket", "1", 5.0),
            ("e_bucket", "+Inf", 5.0),
            ("e_count", None, 5.0),
        ],
        id="negative buckets (le = -base**index) most negative first, zero bucket at its threshold",
    ),
    pytest.param(
        dict(scale=0, positive=buckets(3, [0, 0, 1, 0]), negative=buckets(0, [0]), count=1),
        [("e_bucket", "0", 0.0), ("e_bucket", "64", 1.0), ("e_bucket", "+Inf", 1.0), ("e_count", None, 1.0)],
        id="empty buckets at either end (SDKs send them) make no series",
    ),
    pytest.param(
        dict(scale=-2, positive=buckets(0, [1, 1]), count=2),
        [
            ("e_bucket", "0", 0.0),
            ("e_bucket", "16", 1.0),
            ("e_bucket", "256", 2.0),
            ("e_bucket", "+Inf", 2.0),
            ("e_count", None, 2.0),
        ],
        id="negative scale: base 2**4",
    ),
    pytest.param(
        dict(scale=-4, positive=buckets(62, [1, 1, 1]), count=3),
        [
            ("e_bucket", "0", 0.0),
            ("e_bucket", "2.7430620343968443e+303", 1.0),
            ("e_bucket", "+Inf", 3.0),
            ("e_count", None, 3.0),
        ],
        id="boundaries beyond the float range fold into +Inf",
    ),
    pytest.param(
        dict(scale=3, flags=STALE),
        [("e_bucket", "+Inf", "stale"), ("e_count", None, "stale"), ("e_sum", None, "stale")],
        id="no recorded value: +Inf, _count and _sum stale (a stale point has no buckets to name)",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), EXPONENTIAL_CLASSIC_CASES)
def test_an_exponential_histogram_becomes_classic_buckets_without_native_histograms(
    fields: dict, expected: list
) -> None:
    batch = translate(request(exponential("e", exp_point(**fields))))
    assert series(batch) == expected
    assert batch.histograms == []
    assert not batch.dropped


def test_an_exponential_histogram_with_too_many_buckets_is_merged_scale_by_scale_until_it_fits() -> None:
    batch = translate(request(exponential("e", exp_point(scale=3, positive=buckets(0, [1] * 200), count=200))))
    rows = series(batch)
    finite = [(le, value) for name, le, value in rows if name == "e_bucket" and le not in ("0", "+Inf")]
    assert len(finite) == 100 <= MAX_CLASSIC_BUCKETS  # merged pairwise once: scale 3 -> 2
    assert finite[0] == ("1.189207115002721", 2.0)  # 2 ** (1/4): two scale-3 buckets per scale-2 bucket
    assert finite[-1] == ("3.3554432e+07", 200.0)  # 2 ** (100/4), as Go writes it
    assert [value for _, value in finite] == sorted(value for _, value in finite)


def test_both_signs_together_stay_within_the_classic_bucket_limit() -> None:
    point_ = exp_point(scale=5, positive=buckets(-100, [1] * 150), negative=buckets(-100, [1] * 150), count=300)
    batch = translate(request(exponential("e", point_)))
    bucket_series = [labels for labels in batch.labels if dict(labels)["__name__"] == "e_bucket"]
    assert len(bucket_series) <= MAX_CLASSIC_BUCKETS + 2  # + zero bucket + +Inf
    les = [float(dict(labels)["le"]) for labels in bucket_series]
    assert les == sorted(les) and len(set(les)) == len(les)
    values = [value for labels, value in zip(batch.labels, batch.values) if dict(labels)["__name__"] == "e_bucket"]
    assert values == sorted(values) and values[-1] == 300.0


@pytest.mark.parametrize(("value", "le"), [(3.0, "4"), (1.5, "2"), (100.0, "+Inf"), (0.0, "0")])
def test_an_exponential_histogram_exemplar_goes_on_the_classic_bucket_that_holds_it(value: float, le: str) -> None:
    point_ = exp_point(scale=0, positive=buckets(0, [1, 1]), count=2, exemplars=[exemplar(value)])
    batch = translate(request(exponential("e", point_)))
    (series_labels,) = batch.exemplar_labels
    assert dict(series_labels)["le"] == le
    assert series_labels in batch.labels


# -- exponential histograms as native histograms --------------------------------------------------------------

NATIVE_CASES = [
    pytest.param(
        dict(scale=0, zero_count=1, positive=buckets(0, [1, 2, 0, 0, 0, 3]), count=7, sum=12.5),
        dict(
            schema=0,
            count=7,
            sum=12.5,
            zero_count=1,
            zero_threshold=1e-128,
            positive_spans=((1, 2), (3, 1)),
            positive_deltas=(1, 1, 1),
        ),
        id="index + 1, a gap of three empty buckets starts a new span, deltas between counts",
    ),
    pytest.param(
        dict(scale=2, positive=buckets(-3, [1, 0, 0, 4]), count=5),
        dict(
            schema=2,
            count=5,
            sum=0.0,
            zero_count=0,
            zero_threshold=1e-128,
            positive_spans=((-2, 4),),
            positive_deltas=(1, -1, 0, 4),
        ),
        id="a gap of two empty buckets stays inline",
    ),
    pytest.param(
        dict(scale=1, zero_threshold=0.5, negative=buckets(-2, [0, 5, 0]), count=5, sum=-4.0),
        dict(
            schema=1,
            count=5,
            sum=-4.0,
            zero_count=0,
            zero_threshold=0.5,
            negative_spans=((0, 1),),
            negative_deltas=(5,),
        ),
        id="negative buckets and an explicit zero threshold",
    ),
    pytest.param(
        dict(scale=10, positive=buckets(0, [1, 1, 1, 1, 1]), count=5),
        dict(
            schema=8,
            count=5,
            sum=0.0,
            zero_count=0,
            zero_threshold=1e-128,
            positive_spans=((1, 2),),
            positive_deltas=(4, -3),
        ),
        id="scale 10 downscaled to schema 8 by merging four buckets into one",
    ),
    pytest.param(
        dict(scale=9, negative=buckets(-3, [1, 2, 3]), count=6),
        dict(
            schema=8,
            count=6,
            sum=0.0,
            zero_count=0,
            zero_threshold=1e-128,
            negative_spans=((-1, 2),),
            negative_deltas=(1, 4),
        ),
        id="downscaling negative indexes rounds toward minus infinity",
    ),
    pytest.param(
        dict(scale=-4, positive=buckets(0, [2]), count=2),
        dict(
            schema=-4,
            count=2,
            sum=0.0,
            zero_count=0,
            zero_threshold=1e-128,
            positive_spans=((1, 1),),
            positive_deltas=(2,),
        ),
        id="scale -4 is the lowest schema",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), NATIVE_CASES)
def test_an_exponential_histogram_becomes_a_native_histogram_when_enabled(fields: dict, expected: dict) -> None:
    batch = translate(request(exponential("e", exp_point(**fields), unit="s")), native_histograms=True)
    assert len(batch) == 0
    assert batch.histogram_labels == [(("__name__", "e_seconds"),)]
    (native,) = batch.histograms
    assert native == NativeHistogram(timestamp=T_MS, **expected)
    assert not batch.dropped


def test_a_native_histogram_below_scale_minus_4_is_dropped_and_counted() -> None:
    batch = translate(request(exponential("e", exp_point(scale=-5, count=1))), native_histograms=True)
    assert batch.histograms == []
    assert batch.dropped == {"unsupported_histogram_scale": 1}


def test_a_native_histogram_with_no_recorded_value_is_a_staleness_marker() -> None:
    batch = translate(request(exponential("e", exp_point(scale=3, flags=STALE))), native_histograms=True)
    (native,) = batch.histograms
    assert struct.pack("<d", native.sum) == STALE_BITS
    assert isinstance(native.count, float) and struct.pack("<d", native.count) == STALE_BITS
    assert native.positive_spans == native.negative_spans == ()


def test_native_histogram_exemplars_go_on_the_histogram_series() -> None:
    point_ = exp_point(scale=0, positive=buckets(0, [1]), count=1, exemplars=[exemplar(1.5)], attributes=attrs(k="v"))
    batch = translate(request(exponential("e", point_)), native_histograms=True)
    assert batch.exemplar_labels == batch.histogram_labels == [(("__name__", "e"), ("k", "v"))]


def test_explicit_histograms_stay_classic_when_native_histograms_are_enabled() -> None:
    point_ = HistogramDataPoint(time_unix_nano=T_NS, bucket_counts=[1], count=1)
    batch = translate(request(histogram("h", point_)), native_histograms=True)
    assert series(batch) == [("h_bucket", "+Inf", 1.0), ("h_count", None, 1.0)]
    assert batch.histograms == []


# -- summaries --------------------------------------------------------------------------------------------------

QV = SummaryDataPoint.ValueAtQuantile


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            dict(
                quantile_values=[
                    QV(quantile=0.5, value=1.5),
                    QV(quantile=0.99, value=9.0),
                    QV(quantile=1.0, value=12.0),
                ],
                sum=30.0,
                count=10,
            ),
            [("s", "0.5", 1.5), ("s", "0.99", 9.0), ("s", "1", 12.0), ("s_sum", None, 30.0), ("s_count", None, 10.0)],
            id="quantile series, then _sum and _count",
        ),
        pytest.param(
            dict(sum=3.0, count=2),
            [("s_sum", None, 3.0), ("s_count", None, 2.0)],
            id="no quantiles: _sum and _count",
        ),
        pytest.param(
            dict(quantile_values=[QV(quantile=0.5, value=1.5)], sum=3.0, count=2, flags=STALE),
            [("s", "0.5", "stale"), ("s_sum", None, "stale"), ("s_count", None, "stale")],
            id="no recorded value: every series stale",
        ),
    ],
)
def test_a_summary_becomes_quantile_series_plus_sum_and_count(fields: dict, expected: list) -> None:
    batch = translate(request(summary("s", SummaryDataPoint(time_unix_nano=T_NS, **fields))))
    assert series(batch) == expected


def test_a_summary_attribute_named_quantile_never_replaces_the_quantile_label() -> None:
    point_ = SummaryDataPoint(
        time_unix_nano=T_NS, quantile_values=[QV(quantile=0.5, value=1.0)], attributes=attrs(quantile="x")
    )
    labels = translate(request(summary("s", point_))).labels
    assert dict(labels[0]) == {"__name__": "s", "quantile": "0.5"}
    assert dict(labels[1]) == {"__name__": "s_sum"}


# -- exemplars on counters and other points -----------------------------------------------------------------------


def test_counter_exemplars_go_on_the_counter_series_with_hex_ids_value_and_millisecond_timestamp() -> None:
    counter_point = point(3, attrs(k="v"))
    counter_point.exemplars.extend([exemplar(1.0), Exemplar(time_unix_nano=T_NS + 10**6, as_int=2, trace_id=TRACE)])
    batch = translate(request(sum_metric("c", counter_point)))
    assert batch.exemplar_labels == [batch.labels[0], batch.labels[0]]
    first, second = batch.exemplars
    assert first.labels == (("span_id", "0001020304050607"), ("trace_id", "000102030405060708090a0b0c0d0e0f"))
    assert (first.value, first.timestamp) == (1.0, T_MS)
    assert second.labels == (("trace_id", TRACE.hex()),)
    assert (second.value, second.timestamp) == (2.0, T_MS + 1)
    assert all(size > 0 for size in batch.exemplar_sizes)


@pytest.mark.parametrize(
    "metric",
    [
        pytest.param(gauge("g", point(1.0)), id="gauge"),
        pytest.param(sum_metric("u", point(1), monotonic=False), id="non-monotonic sum"),
    ],
)
def test_exemplars_of_gauges_and_non_monotonic_sums_are_dropped_as_the_spec_requires(metric: Metric) -> None:
    data = metric.gauge if metric.HasField("gauge") else metric.sum
    data.data_points[0].exemplars.append(exemplar(1.0))
    batch = translate(request(metric))
    assert len(batch) == 1
    assert batch.exemplars == []


def test_filtered_attributes_are_exemplar_labels_when_they_fit_in_128_characters() -> None:
    counter_point = point(1)
    counter_point.exemplars.append(exemplar(1.0, user__id="u-1"))
    (ex,) = translate(request(sum_metric("c", counter_point))).exemplars
    assert dict(ex.labels) == {"span_id": SPAN.hex(), "trace_id": TRACE.hex(), "user_id": "u-1"}


def test_filtered_attributes_that_do_not_fit_leave_the_trace_and_span_ids_alone() -> None:
    counter_point = point(1)
    counter_point.exemplars.append(exemplar(1.0, note="x" * 80))
    (ex,) = translate(request(sum_metric("c", counter_point))).exemplars
    assert dict(ex.labels) == {"span_id": SPAN.hex(), "trace_id": TRACE.hex()}


def test_a_last_bound_of_infinity_is_the_inf_bucket_itself() -> None:
    point_ = HistogramDataPoint(
        time_unix_nano=T_NS, explicit_bounds=[1, float("inf")], bucket_counts=[1, 2, 0], count=3
    )
    assert series(translate(request(histogram("h", point_)))) == [
        ("h_bucket", "1", 1.0),
        ("h_bucket", "+Inf", 3.0),
        ("h_count", None, 3.0),
    ]


@pytest.mark.parametrize("bounds", [[2, 1], [1, 1], [float("nan"), 1], [1, float("nan")]])
def test_bounds_that_do_not_strictly_increase_are_dropped_and_counted(bounds: list[float]) -> None:
    point_ = HistogramDataPoint(time_unix_nano=T_NS, explicit_bounds=bounds, bucket_counts=[1, 1, 1], count=3)
    batch = translate(request(histogram("h", point_)))
    assert len(batch) == 0
    assert batch.dropped == {"invalid_histogram_buckets": 1}
