"""Limits: a data point past a limit is dropped whole and counted by reason, never truncated."""

from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint

from exporters.remote_write.translate import DEFAULT_LIMITS, Limits, translate
from tests.test_remote_write_translate import T_NS, any_value, attrs, gauge, point, request, sum_metric
from tests.test_remote_write_translate_histograms import histogram


def many(n: int) -> list[KeyValue]:
    return [KeyValue(key=f"k{i:02d}", value=any_value("v")) for i in range(n)]


def test_the_defaults_are_mimirs_distributor_limits() -> None:
    assert DEFAULT_LIMITS == Limits(
        max_label_name_length=1024, max_label_value_length=2048, max_labels_per_series=30, max_series_per_metric=10_000
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_label_name_length=0),
        dict(max_label_value_length=-1),
        dict(max_labels_per_series=1),
        dict(max_series_per_metric=0),
        dict(max_series_per_metric=1.5),
    ],
)
def test_a_limit_must_be_a_positive_integer(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Limits(**kwargs)


LIMIT_CASES = [
    # (limits, point attributes, resource, kept, dropped)
    pytest.param(Limits(max_label_name_length=10), attrs(short="x"), [], 1, {}, id="a name at the limit passes"),
    pytest.param(
        Limits(max_label_name_length=10),
        [KeyValue(key="a_long_label_name", value=any_value("x"))],
        [],
        0,
        {"label_name_too_long": 1},
        id="a name past the limit",
    ),
    pytest.param(Limits(max_label_value_length=5), attrs(k="12345"), [], 1, {}, id="a value at the limit passes"),
    pytest.param(
        Limits(max_label_value_length=5), attrs(k="123456"), [], 0, {"label_value_too_long": 1}, id="a value past"
    ),
    pytest.param(
        Limits(max_label_value_length=8),
        attrs(k="éééé"),
        [],
        1,
        {},
        id="lengths are UTF-8 bytes: 4 characters, 8 bytes",
    ),
    pytest.param(
        Limits(max_label_value_length=8),
        attrs(k="ééééé"),
        [],
        0,
        {"label_value_too_long": 1},
        id="5 characters, 10 bytes",
    ),
    pytest.param(
        DEFAULT_LIMITS, attrs(k="x" * 2049), [], 0, {"label_value_too_long": 1}, id="the default value limit (2048)"
    ),
    pytest.param(
        Limits(max_label_value_length=5),
        [],
        attrs(service__name="a-long-service"),
        0,
        {"label_value_too_long": 1},
        id="a resource label past the limit drops the point",
    ),
    pytest.param(DEFAULT_LIMITS, many(29), [], 1, {}, id="30 labels with __name__ pass"),
    pytest.param(DEFAULT_LIMITS, many(30), [], 0, {"too_many_labels": 1}, id="31 labels"),
    pytest.param(
        Limits(max_labels_per_series=3),
        attrs(a="1", b=""),
        attrs(service__name="s"),
        1,
        {},
        id="empty values are not labels",
    ),
]


@pytest.mark.parametrize(("limits", "point_attrs", "resource", "kept", "dropped"), LIMIT_CASES)
def test_a_point_past_a_label_limit_is_dropped_and_counted(
    limits: Limits, point_attrs: list[KeyValue], resource: list[KeyValue], kept: int, dropped: dict
) -> None:
    batch = translate(request(gauge("g", point(1.0, point_attrs)), resource=resource), limits=limits)
    assert len(batch) == kept
    assert batch.dropped == dropped
    for labels in batch.labels:  # never truncated: what is sent is whole
        assert dict(labels).get("k", "") in ("", "12345", "éééé", "1", "x", "v")


def test_a_histogram_counts_its_le_label_toward_the_limit_and_drops_every_series_of_the_point() -> None:
    point_ = HistogramDataPoint(
        time_unix_nano=T_NS, explicit_bounds=[1], bucket_counts=[1, 1], count=2, attributes=many(28)
    )
    assert len(translate(request(histogram("h", point_)))) == 3  # 28 + __name__ + le = 30
    point_ = HistogramDataPoint(
        time_unix_nano=T_NS, explicit_bounds=[1], bucket_counts=[1, 1], count=2, attributes=many(29)
    )
    batch = translate(request(histogram("h", point_)))
    assert len(batch) == 0
    assert batch.dropped == {"too_many_labels": 1}


def test_series_past_the_per_metric_limit_are_dropped_and_counted_per_data_point() -> None:
    points = [point(float(i), attrs(k=str(i))) for i in range(5)]
    batch = translate(request(gauge("g", *points)), limits=Limits(max_series_per_metric=3))
    assert batch.values == [0.0, 1.0, 2.0]
    assert batch.dropped == {"too_many_series": 2}


def test_a_series_already_seen_in_the_call_is_not_a_new_one() -> None:
    points = [point(1.0, attrs(k="a")), point(2.0, attrs(k="b")), point(3.0, attrs(k="a"), time_unix_nano=T_NS + 10**9)]
    batch = translate(request(gauge("g", *points)), limits=Limits(max_series_per_metric=2))
    assert batch.values == [1.0, 2.0, 3.0]
    assert not batch.dropped


def test_the_series_limit_spans_every_scope_and_resource_of_the_call_for_one_metric_name() -> None:
    req = request(gauge("g", point(1.0), point(2.0, attrs(k="x"))), scope=InstrumentationScope(name="a"))
    req.resource_metrics.add().CopyFrom(req.resource_metrics[0])
    req.resource_metrics[1].scope_metrics[0].scope.name = "b"
    req.resource_metrics[0].scope_metrics[0].metrics.add().CopyFrom(sum_metric("other", point(1)))
    batch = translate(req, limits=Limits(max_series_per_metric=3))
    assert [dict(labels)["__name__"] for labels in batch.labels] == ["g", "g", "other_total", "g"]
    assert batch.dropped == {"too_many_series": 1}


def test_a_histogram_point_is_one_series_for_the_limit_however_many_buckets_it_has() -> None:
    points = [
        HistogramDataPoint(
            time_unix_nano=T_NS,
            explicit_bounds=[1, 2, 3],
            bucket_counts=[1, 1, 1, 1],
            count=4,
            attributes=attrs(k=str(i)),
        )
        for i in range(3)
    ]
    batch = translate(request(histogram("h", *points)), limits=Limits(max_series_per_metric=2))
    assert len(batch) == 2 * (4 + 1)  # two points: four buckets and _count each
    assert batch.dropped == {"too_many_series": 1}


def test_a_target_info_past_a_limit_is_dropped_and_counted() -> None:
    resource = attrs(service__name="s") + many(40)
    batch = translate(request(gauge("g", point(1.0)), resource=resource))
    assert [dict(labels)["__name__"] for labels in batch.labels] == ["g"]
    assert batch.dropped == {"too_many_labels": 1}
