"""exporters/remote_write/series_limit.py: max_series_per_metric across requests, with an idle expiry."""

from __future__ import annotations

import pytest

from exporters.remote_write.series import SampleBatch
from exporters.remote_write.series_limit import SeriesLimit


def labels(name: str, **pairs: str) -> tuple:
    return tuple(sorted([("__name__", name), *pairs.items()]))


def batch(*series: tuple) -> SampleBatch:
    out = SampleBatch()
    for i, s in enumerate(series):
        out.labels.append(s)
        out.values.append(float(i))
        out.timestamps.append(1000 + i)
        out.sizes.append(40)
    return out


def test_the_limit_holds_across_requests_and_refused_samples_are_counted():
    limit = SeriesLimit(max_series_per_metric=2, max_series=100, idle_expiry=60.0)
    first = limit.apply(batch(labels("up", pod="a")), 0.0)
    second = limit.apply(batch(labels("up", pod="b")), 1.0)
    third = limit.apply(batch(labels("up", pod="c"), labels("up", pod="a"), labels("other", pod="c")), 2.0)
    assert len(first) == len(second) == 1
    assert [dict(s)["pod"] + dict(s)["__name__"] for s in third.labels] == ["aup", "cother"]
    assert third.dropped == {"too_many_series": 1}
    assert limit.refused == 1 and limit.series == 3


def test_a_series_unseen_for_idle_expiry_frees_its_place():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    a, b = labels("up", pod="a"), labels("up", pod="b")
    limit.apply(batch(a), 0.0)
    assert len(limit.apply(batch(b), 30.0)) == 0  # "a" is still live
    assert len(limit.apply(batch(b), 90.0)) == 1  # "a" unseen for more than 60 s
    assert limit.expired == 1


def test_a_series_seen_in_every_interval_keeps_its_place():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    a, b = labels("up", pod="a"), labels("up", pod="b")
    for t in range(0, 600, 10):
        assert len(limit.apply(batch(a), float(t))) == 1
        assert len(limit.apply(batch(b), float(t))) == 0
    assert limit.expired == 0


def test_a_histograms_buckets_count_and_sum_are_one_series_of_its_family():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    one = [labels("lat_bucket", le=le, pod="a") for le in ("0.1", "1", "+Inf")]
    one += [labels("lat_count", pod="a"), labels("lat_sum", pod="a")]
    assert len(limit.apply(batch(*one), 0.0)) == 5
    assert len(limit.apply(batch(labels("lat_count", pod="b")), 0.0)) == 0


def test_max_series_bounds_all_families_together():
    limit = SeriesLimit(max_series_per_metric=10, max_series=3, idle_expiry=60.0)
    out = limit.apply(batch(*(labels(f"m{i}") for i in range(5))), 0.0)
    assert len(out) == 3 and out.dropped == {"too_many_series": 2}


def test_an_equal_label_set_in_a_new_tuple_is_the_same_series():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    limit.apply(batch(labels("up", pod="a")), 0.0)
    assert len(limit.apply(batch(labels("up", pod="a")), 1.0)) == 1


class Key:
    """A series key as a learnt shape is one: weakly referenceable."""


def keyed(key: object, *series: tuple) -> SampleBatch:
    out = batch(*series)
    out.series_key = key
    return out


def test_series_of_a_repeating_shape_seen_in_every_interval_keep_their_place():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    shape = Key()
    a, b = labels("up", pod="a"), labels("up", pod="b")
    for t in range(0, 600, 10):
        assert len(limit.apply(keyed(shape, a), float(t))) == 1
        assert len(limit.apply(batch(b), float(t))) == 0
    assert limit.expired == 0


def test_series_of_a_shape_that_stops_coming_free_their_place():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    shape = Key()
    for t in range(0, 60, 10):
        limit.apply(keyed(shape, labels("up", pod="a")), float(t))
    assert len(limit.apply(batch(labels("up", pod="b")), 200.0)) == 1
    assert limit.expired == 1


def test_a_shape_with_a_refused_series_is_limited_every_time():
    limit = SeriesLimit(max_series_per_metric=1, max_series=100, idle_expiry=60.0)
    shape = Key()
    for t in range(3):
        out = limit.apply(keyed(shape, labels("up", pod="a"), labels("up", pod="b")), float(t))
        assert len(out) == 1 and out.dropped == {"too_many_series": 1}
    assert limit.refused == 3


@pytest.mark.parametrize("kwargs", [dict(max_series_per_metric=0, max_series=1, idle_expiry=1.0),
                                    dict(max_series_per_metric=1, max_series=1, idle_expiry=0.0)])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        SeriesLimit(**kwargs)
