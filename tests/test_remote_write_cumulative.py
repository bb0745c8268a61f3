"""Delta to cumulative: which delta points are counted, what comes out, and how the state survives a restart."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporters.remote_write.cumulative import MAX_INTERVALS, DeltaToCumulative

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S
LOGGER = "headwater.exporters.remote_write"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def attrs(**values: str) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in values.items()]


def number(value: int | float, start: int, end: int, attributes=(), flags: int = 0) -> NumberDataPoint:
    kind = {"as_int": value} if isinstance(value, int) else {"as_double": value}
    return NumberDataPoint(start_time_unix_nano=start, time_unix_nano=end, attributes=attributes, flags=flags, **kind)


def delta_sum(*points: NumberDataPoint, name: str = "requests", monotonic: bool = True, temporality=DELTA) -> Metric:
    return Metric(name=name, sum=Sum(data_points=points, is_monotonic=monotonic, aggregation_temporality=temporality))


def histogram_point(start: int, end: int, counts, bounds=(1.0, 5.0), total: float | None = None, **extra):
    point = HistogramDataPoint(start_time_unix_nano=start, time_unix_nano=end, bucket_counts=counts,
                               explicit_bounds=bounds, count=sum(counts), **extra)
    if total is not None:
        point.sum = total
    return point


def delta_histogram(*points: HistogramDataPoint, name: str = "latency") -> Metric:
    return Metric(name=name, histogram=Histogram(data_points=points, aggregation_temporality=DELTA))


def request(*metrics: Metric, resource=attrs(**{"service.name": "app"}), scope_name: str = "lib"):
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
        resource=Resource(attributes=resource),
        scope_metrics=[ScopeMetrics(scope=InstrumentationScope(name=scope_name), metrics=list(metrics))])])


def points(req: ExportMetricsServiceRequest, index: int = 0):
    metric = req.resource_metrics[0].scope_metrics[0].metrics[index]
    return getattr(metric, metric.WhichOneof("data")).data_points


def values(req: ExportMetricsServiceRequest) -> list[tuple[int, int, int | float]]:
    return [(p.start_time_unix_nano, p.time_unix_nano, p.as_int if p.HasField("as_int") else p.as_double)
            for p in points(req)]


def run_sum(d2c: DeltaToCumulative, *pts: NumberDataPoint, **kwargs) -> tuple[list, dict[str, int]]:
    out, skipped = d2c.apply(request(delta_sum(*pts, **kwargs)))
    return values(out), skipped


# -- conversion ---------------------------------------------------------------------------------------------


def test_a_delta_counter_becomes_its_running_sum_with_the_first_deltas_start_time() -> None:
    d2c = DeltaToCumulative(None)
    out, skipped = run_sum(d2c, number(3, T0, T0 + S), number(4, T0 + S, T0 + 2 * S))
    more, _ = run_sum(d2c, number(5, T0 + 2 * S, T0 + 3 * S))
    assert out + more == [(T0, T0 + S, 3), (T0, T0 + 2 * S, 7), (T0, T0 + 3 * S, 12)]
    assert skipped == {}


def test_the_converted_metric_says_cumulative_and_keeps_its_monotonicity() -> None:
    out, _ = DeltaToCumulative(None).apply(request(delta_sum(number(1, T0, T0 + S), monotonic=False)))
    converted = out.resource_metrics[0].scope_metrics[0].metrics[0].sum
    assert converted.aggregation_temporality == CUMULATIVE
    assert converted.is_monotonic is False


def test_a_delta_up_down_counter_accumulates_negative_deltas() -> None:
    out, _ = run_sum(DeltaToCumulative(None), number(10, T0, T0 + S), number(-3, T0 + S, T0 + 2 * S),
                     monotonic=False)
    assert [v for _, _, v in out] == [10, 7]


def test_double_deltas_accumulate_as_doubles() -> None:
    out, _ = run_sum(DeltaToCumulative(None), number(0.5, T0, T0 + S), number(0.25, T0 + S, T0 + 2 * S))
    assert [v for _, _, v in out] == [0.5, 0.75]


def test_streams_differ_by_point_attributes_but_not_by_their_order() -> None:
    d2c = DeltaToCumulative(None)
    a_then_b = [KeyValue(key="a", value=AnyValue(string_value="1")), KeyValue(key="b", value=AnyValue(string_value="2"))]
    out, _ = run_sum(d2c, number(1, T0, T0 + S, a_then_b), number(10, T0, T0 + S, attrs(a="other")),
                     number(2, T0 + S, T0 + 2 * S, list(reversed(a_then_b))))
    assert [v for _, _, v in out] == [1, 10, 3]


def test_streams_differ_by_resource() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(delta_sum(number(1, T0, T0 + S)), resource=attrs(**{"service.name": "a"})))
    out, _ = d2c.apply(request(delta_sum(number(1, T0 + S, T0 + 2 * S)), resource=attrs(**{"service.name": "b"})))
    assert values(out) == [(T0 + S, T0 + 2 * S, 1)]


def test_delta_histogram_buckets_count_sum_min_and_max_accumulate() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(delta_histogram(histogram_point(T0, T0 + S, [1, 2, 0], total=6.0, min=0.5, max=4.0))))
    out, _ = d2c.apply(request(delta_histogram(histogram_point(T0 + S, T0 + 2 * S, [0, 1, 3], total=25.0,
                                                               min=2.0, max=9.0))))
    [point] = points(out)
    assert (point.start_time_unix_nano, point.time_unix_nano) == (T0, T0 + 2 * S)
    assert list(point.bucket_counts) == [1, 3, 3]
    assert list(point.explicit_bounds) == [1.0, 5.0]
    assert (point.count, point.sum, point.min, point.max) == (7, 31.0, 0.5, 9.0)
    assert out.resource_metrics[0].scope_metrics[0].metrics[0].histogram.aggregation_temporality == CUMULATIVE


def test_a_histogram_sum_stays_only_while_every_delta_has_one() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(delta_histogram(histogram_point(T0, T0 + S, [1, 0, 0], total=0.5))))
    out, _ = d2c.apply(request(delta_histogram(histogram_point(T0 + S, T0 + 2 * S, [1, 0, 0]))))
    assert not points(out)[0].HasField("sum")


def test_a_bucket_bounds_change_resets_the_stream_and_is_counted() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(delta_histogram(histogram_point(T0, T0 + S, [1, 2, 3]))))
    out, skipped = d2c.apply(request(delta_histogram(histogram_point(T0 + S, T0 + 2 * S, [4, 5], bounds=(2.0,)))))
    [point] = points(out)
    assert (point.start_time_unix_nano, list(point.bucket_counts), point.count) == (T0 + S, [4, 5], 9)
    assert skipped == {}
    assert d2c.stats()["bounds_resets"] == 1


def exponential(start: int, end: int, scale: int, offset: int, counts, zero_count: int = 0):
    point = ExponentialHistogramDataPoint(start_time_unix_nano=start, time_unix_nano=end, scale=scale,
                                          zero_count=zero_count, count=sum(counts) + zero_count)
    point.positive.offset = offset
    point.positive.bucket_counts.extend(counts)
    return Metric(name="size", exponential_histogram=ExponentialHistogram(data_points=[point], aggregation_temporality=DELTA))


def test_delta_exponential_histograms_accumulate_at_the_lower_scale() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(exponential(T0, T0 + S, scale=1, offset=2, counts=[1, 1, 1], zero_count=1)))  # idx 2,3,4
    out, _ = d2c.apply(request(exponential(T0 + S, T0 + 2 * S, scale=0, offset=1, counts=[5, 7])))  # idx 1,2
    [point] = points(out)
    # At scale 0, scale-1 indexes 2,3 -> 1 and 4 -> 2.
    assert (point.scale, point.positive.offset, list(point.positive.bucket_counts)) == (0, 1, [7, 8])
    assert (point.zero_count, point.count, point.start_time_unix_nano) == (1, 16, T0)


def test_exponential_buckets_within_a_wider_zero_threshold_move_into_the_zero_count() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(exponential(T0, T0 + S, scale=0, offset=0, counts=[1, 1, 1])))  # (1,2], (2,4], (4,8]
    wide = exponential(T0 + S, T0 + 2 * S, scale=0, offset=0, counts=[], zero_count=2)
    wide.exponential_histogram.data_points[0].zero_threshold = 4.0
    out, _ = d2c.apply(request(wide))
    [point] = points(out)
    assert (point.zero_threshold, point.zero_count, point.positive.offset, list(point.positive.bucket_counts)) == (
        4.0, 4, 2, [1])


def test_cumulative_sums_and_gauges_pass_through_untouched() -> None:
    gauge = Metric(name="temperature", gauge=Gauge(data_points=[number(21.5, 0, T0)]))
    cumulative = delta_sum(number(40, T0, T0 + S), temporality=CUMULATIVE)
    original = request(gauge, cumulative)
    out, skipped = DeltaToCumulative(None).apply(original)
    assert out == original
    assert skipped == {}


def test_the_input_request_is_not_modified() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(delta_sum(number(3, T0, T0 + S))))
    original = request(delta_sum(number(4, T0 + S, T0 + 2 * S), number(1, T0, T0 + S)))
    snapshot = original.SerializeToString(deterministic=True)
    d2c.apply(original)
    assert original.SerializeToString(deterministic=True) == snapshot


def test_a_point_with_no_recorded_value_passes_through_with_its_flag() -> None:
    d2c = DeltaToCumulative(None)
    run_sum(d2c, number(3, T0, T0 + S))
    flagged = number(0, T0 + S, T0 + 2 * S, flags=DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)
    out, _ = d2c.apply(request(delta_sum(flagged)))
    assert points(out)[0].flags == DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    after, _ = run_sum(d2c, number(2, T0 + 2 * S, T0 + 3 * S))
    assert after == [(T0, T0 + 3 * S, 5)]


# -- which points count -------------------------------------------------------------------------------------


def test_a_duplicate_point_is_counted_and_skipped() -> None:
    d2c = DeltaToCumulative(None)
    run_sum(d2c, number(3, T0, T0 + S), number(4, T0 + S, T0 + 2 * S))
    out, skipped = run_sum(d2c, number(4, T0 + S, T0 + 2 * S))
    assert (out, skipped) == ([], {"delta_duplicate": 1})
    assert run_sum(d2c, number(1, T0 + 2 * S, T0 + 3 * S))[0] == [(T0, T0 + 3 * S, 8)]


def test_a_partly_overlapping_point_is_counted_and_skipped() -> None:
    d2c = DeltaToCumulative(None)
    run_sum(d2c, number(3, T0, T0 + 2 * S))
    out, skipped = run_sum(d2c, number(9, T0 + S, T0 + 3 * S))
    assert (out, skipped) == ([], {"delta_overlap": 1})


def test_a_late_point_in_a_gap_is_added_and_shows_in_the_next_in_order_value() -> None:
    d2c = DeltaToCumulative(None)
    run_sum(d2c, number(1, T0, T0 + S), number(2, T0 + 2 * S, T0 + 3 * S))  # (T0+S, T0+2S] is missing
    late, skipped = run_sum(d2c, number(10, T0 + S, T0 + 2 * S))
    assert (late, skipped) == ([], {})  # not written out: an older timestamp than one already sent
    assert d2c.stats()["late_added"] == 1
    assert run_sum(d2c, number(4, T0 + 3 * S, T0 + 4 * S))[0] == [(T0, T0 + 4 * S, 17)]


def test_a_late_point_before_the_first_moves_the_start_time_back() -> None:
    d2c = DeltaToCumulative(None)
    run_sum(d2c, number(5, T0 + S, T0 + 2 * S))
    run_sum(d2c, number(1, T0, T0 + S))
    assert run_sum(d2c, number(1, T0 + 2 * S, T0 + 3 * S))[0] == [(T0, T0 + 3 * S, 7)]


def test_once_too_many_gaps_are_kept_the_oldest_counts_as_counted() -> None:
    d2c = DeltaToCumulative(None)
    gaps = [number(1, T0 + 2 * i * S, T0 + (2 * i + 1) * S) for i in range(MAX_INTERVALS + 1)]
    run_sum(d2c, *gaps)
    _, oldest = run_sum(d2c, number(1, T0 + S, T0 + 2 * S))
    _, newest = run_sum(d2c, number(1, T0 + (2 * MAX_INTERVALS - 1) * S, T0 + 2 * MAX_INTERVALS * S))
    assert (oldest, newest) == ({"delta_duplicate": 1}, {})


def test_a_late_histogram_point_with_other_bounds_is_skipped() -> None:
    d2c = DeltaToCumulative(None)
    d2c.apply(request(delta_histogram(histogram_point(T0, T0 + S, [1, 0, 0]),
                                      histogram_point(T0 + 2 * S, T0 + 3 * S, [1, 0, 0]))))
    _, skipped = d2c.apply(request(delta_histogram(histogram_point(T0 + S, T0 + 2 * S, [1, 0], bounds=(2.0,)))))
    assert skipped == {"delta_bounds_mismatch": 1}


def test_a_point_without_a_start_time_is_skipped() -> None:
    assert run_sum(DeltaToCumulative(None), number(3, 0, T0)) == ([], {"delta_invalid_interval": 1})


def test_new_streams_past_max_series_are_refused_and_counted() -> None:
    d2c = DeltaToCumulative(None, max_series=2)
    out, skipped = run_sum(d2c, *(number(1, T0, T0 + S, attrs(k=str(i))) for i in range(5)))
    assert (len(out), skipped, d2c.stats()["streams"]) == (2, {"delta_too_many_series": 3}, 2)
    assert len(run_sum(d2c, number(1, T0 + S, T0 + 2 * S, attrs(k="0")))[0]) == 1  # known streams go on


def test_a_stream_unseen_for_max_staleness_is_forgotten_and_starts_afresh() -> None:
    clock = Clock()
    d2c = DeltaToCumulative(None, max_staleness=60.0, clock=clock)
    run_sum(d2c, number(3, T0, T0 + S))
    clock.now += 59.0
    run_sum(d2c, number(1, T0, T0 + S, attrs(k="other")))
    clock.now += 2.0
    out, _ = run_sum(d2c, number(4, T0 + 70 * S, T0 + 71 * S))
    assert out == [(T0 + 70 * S, T0 + 71 * S, 4)]
    assert d2c.stats()["stale_forgotten"] == 1
    assert d2c.stats()["streams"] == 2


# -- persistence --------------------------------------------------------------------------------------------


def test_a_saved_state_loaded_by_a_new_instance_continues_the_sums_exactly(tmp_path: Path) -> None:
    path = tmp_path / "d2c.json"
    first = DeltaToCumulative(path)
    run_sum(first, number(3, T0, T0 + S), number(0.5, T0, T0 + S, attrs(kind="double")))
    d2c_hist = first.apply(request(delta_histogram(histogram_point(T0, T0 + S, [1, 2, 0], total=6.0))))
    assert points(d2c_hist[0])[0].count == 3
    first.save()
    second = DeltaToCumulative(path)
    out, skipped = run_sum(second, number(4, T0 + S, T0 + 2 * S), number(0.25, T0 + S, T0 + 2 * S, attrs(kind="double")))
    hist, _ = second.apply(request(delta_histogram(histogram_point(T0 + S, T0 + 2 * S, [0, 1, 1], total=9.0))))
    assert (out, skipped) == ([(T0, T0 + 2 * S, 7), (T0, T0 + 2 * S, 0.75)], {})
    assert (list(points(hist)[0].bucket_counts), points(hist)[0].sum) == ([1, 3, 1], 15.0)


def test_a_retry_of_a_point_counted_before_the_restart_is_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "d2c.json"
    first = DeltaToCumulative(path)
    run_sum(first, number(3, T0, T0 + S))
    first.save()
    assert run_sum(DeltaToCumulative(path), number(3, T0, T0 + S)) == ([], {"delta_duplicate": 1})


def test_save_clears_dirty_and_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "d2c.json"
    d2c = DeltaToCumulative(path, clock=clock, min_compact_bytes=1)  # a snapshot rewrite on every save
    run_sum(d2c, number(3, T0, T0 + S))
    assert d2c.dirty and d2c.saved_at is None
    d2c.save()
    assert (d2c.dirty, d2c.saved_at) == (False, clock.now)
    assert d2c.stats()["state_rewrites"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["d2c.json"]  # no temp file, no log left behind


def test_a_corrupt_state_file_is_set_aside_with_a_warning_and_the_state_starts_empty(tmp_path, caplog) -> None:
    path = tmp_path / "d2c.json"
    path.write_bytes(b'{"version": 1, "streams": [["s", "not base64!"')
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        d2c = DeltaToCumulative(path, clock=Clock(0.0))
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]
    assert d2c.stats() == {"state_load_failures": 1, "streams": 0}
    assert not path.exists()
    assert (tmp_path / "d2c.json.corrupt-19700101T000000Z").read_bytes().startswith(b'{"version"')


def test_a_state_file_of_another_version_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "d2c.json"
    path.write_text('{"version": 99, "streams": []}')
    assert DeltaToCumulative(path).stats()["state_load_failures"] == 1


def test_commit_returns_once_what_was_applied_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "d2c.json"
    d2c = DeltaToCumulative(path)

    async def apply_and_commit(value: int, start: int) -> bool:
        d2c.apply(request(delta_sum(number(value, start, start + S), name=f"m{value}")))
        return await d2c.commit()

    async def main() -> list[bool]:
        return await asyncio.gather(*(apply_and_commit(v, T0 + v * S) for v in range(1, 6)))

    assert asyncio.run(main()) == [True] * 5
    assert not d2c.dirty
    assert DeltaToCumulative(path).stats()["streams"] == 5


def test_a_failed_save_makes_commit_return_false_with_a_warning(tmp_path: Path, caplog) -> None:
    (tmp_path / "file").write_text("")
    d2c = DeltaToCumulative(tmp_path / "file" / "d2c.json")  # its directory is a file
    run_sum(d2c, number(3, T0, T0 + S))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert asyncio.run(d2c.commit()) is False
    assert d2c.dirty
    assert d2c.stats()["state_save_failures"] == 1
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER)


@pytest.mark.parametrize("kwargs, name", [({"max_series": 0}, "max_series"), ({"max_staleness": 0}, "max_staleness")])
def test_bad_limits_are_refused_by_name(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        DeltaToCumulative(None, **kwargs)


# -- persistence: change logs, batching, torn tails, hostile files ------------------------------------------


def logs(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".log-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))


def wave(d2c: DeltaToCumulative, index: int, streams) -> tuple[list, dict[str, int]]:
    """Delta 1 for window `index` of each stream in `streams`."""
    return run_sum(d2c, *(number(1, T0 + index * S, T0 + (index + 1) * S, attrs(k=str(k))) for k in streams))


def test_a_save_writes_the_rows_that_changed_not_the_whole_state(tmp_path: Path) -> None:
    d2c = DeltaToCumulative(tmp_path / "d2c.json", save_interval=0)
    wave(d2c, 0, range(1000))
    assert asyncio.run(d2c.commit())
    whole = d2c.stats()["state_bytes_appended"]
    for index in range(1, 11):
        wave(d2c, index, range(10 * index, 10 * index + 10))  # 10 of the 1,000 streams
        assert asyncio.run(d2c.commit())
    stats = d2c.stats()
    assert stats["state_appends"] == 11
    assert "state_rewrites" not in stats
    assert (stats["state_bytes_appended"] - whole) / 10 < whole / 50  # ~1 % of the state per wave, not all of it


class ManualSleep:
    """A `sleep` that returns when the test says so; remembers the delays asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._go = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self._go.wait()

    def wake(self) -> None:
        self._go.set()


def test_waves_committed_within_save_interval_of_a_save_share_the_next_write(tmp_path: Path) -> None:
    async def main() -> tuple[list[bool], ManualSleep, dict]:
        sleep = ManualSleep()
        d2c = DeltaToCumulative(tmp_path / "d2c.json", save_interval=1.0, sleep=sleep)
        wave(d2c, 0, range(3))
        assert await d2c.commit()  # no save in the last second: no wait
        commits = []
        for index in range(1, 6):  # five waves, one loop turn apart, while the next save waits
            wave(d2c, index, range(3))
            commits.append(asyncio.create_task(d2c.commit()))
            await asyncio.sleep(0)
        sleep.wake()
        return await asyncio.gather(*commits), sleep, d2c.stats()

    results, sleep, stats = asyncio.run(main())
    assert results == [True] * 5
    assert stats["state_appends"] == 2
    assert len(sleep.delays) == 1 and 0 < sleep.delays[0] <= 1.0


def test_after_many_waves_and_compactions_a_reload_continues_every_stream_as_the_live_state(tmp_path) -> None:
    clock = Clock()
    path = tmp_path / "d2c.json"
    live = DeltaToCumulative(path, clock=clock, max_staleness=20.0, save_interval=0, min_compact_bytes=4096)

    def traffic(index: int) -> ExportMetricsServiceRequest:
        """Window `index` of 900 sum streams, of which the first 300 stop at window 20 (to be forgotten), a
        double sum and a histogram."""
        sums = [number(index % 5 + 1, T0 + index * S, T0 + (index + 1) * S, attrs(k=str(k)))
                for k in range(0 if index < 20 else 300, 900)]
        return request(delta_sum(*sums), delta_sum(number(0.5, T0 + index * S, T0 + (index + 1) * S), name="ratio"),
                       delta_histogram(histogram_point(T0 + index * S, T0 + (index + 1) * S, [index % 3, 1, 0],
                                                       total=1.5)))

    async def waves() -> None:
        commits = []
        for index in range(40):
            clock.now += 7.0 if index % 10 == 9 else 1.0  # now and then a pause that forgets idle streams
            live.apply(traffic(index))
            commits.append(asyncio.create_task(live.commit()))
            await asyncio.sleep(0)  # the next wave arrives while this one's save is encoded or written
            if index % 10 == 9:  # every ten waves, one compaction at least has finished
                await live.drain()
        assert await asyncio.gather(*commits) == [True] * 40

    asyncio.run(waves())
    assert live.stats()["state_rewrites"] >= 4 and live.stats()["stale_forgotten"] > 0
    reloaded = DeltaToCumulative(path, clock=clock, max_staleness=20.0)
    assert reloaded.stats()["streams"] == live.stats()["streams"]
    assert reloaded.apply(traffic(39))[1] == live.apply(traffic(39))[1] == {"delta_duplicate": 602}
    assert reloaded.apply(traffic(40))[0] == live.apply(traffic(40))[0]


def save_twice(path: Path) -> int:
    """Save delta 3 for (T0, T0+S], then delta 4 for (T0+S, T0+2S]; return the second record's size."""
    d2c = DeltaToCumulative(path)
    run_sum(d2c, number(3, T0, T0 + S))
    d2c.save()
    before = d2c.stats()["state_bytes_appended"]
    run_sum(d2c, number(4, T0 + S, T0 + 2 * S))
    d2c.save()
    return d2c.stats()["state_bytes_appended"] - before


@pytest.mark.parametrize("tear", ["cut in its payload", "cut in its frame header", "zeros after it"])
def test_a_restart_after_a_save_cut_short_drops_the_torn_record_and_counts_the_resent_delta(tmp_path, caplog,
                                                                                               tear) -> None:
    path = tmp_path / "d2c.json"
    record = save_twice(path)
    [log] = logs(path)
    data = log.read_bytes()
    log.write_bytes({"cut in its payload": data[:-record // 2], "cut in its frame header": data[:-record + 5],
                     "zeros after it": data[:-record] + bytes(record)}[tear])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        restarted = DeltaToCumulative(path)
    assert restarted.stats() == {"state_torn_tails": 1, "streams": 1}
    assert any("not a whole record" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    # The client was not acknowledged for the torn save: it sends delta 4 again, and it counts once.
    assert run_sum(restarted, number(4, T0 + S, T0 + 2 * S)) == ([(T0, T0 + 2 * S, 7)], {})


def test_after_a_torn_tail_saves_and_restarts_go_on(tmp_path: Path) -> None:
    path = tmp_path / "d2c.json"
    record = save_twice(path)
    [log] = logs(path)
    log.write_bytes(log.read_bytes()[:-record // 2])
    restarted = DeltaToCumulative(path)
    run_sum(restarted, number(4, T0 + S, T0 + 2 * S))
    restarted.save()
    again = DeltaToCumulative(path)
    assert "state_torn_tails" not in again.stats()  # the tail was cut off the file at the first restart
    assert run_sum(again, number(1, T0 + 2 * S, T0 + 3 * S))[0] == [(T0, T0 + 3 * S, 8)]


def corrupt_first_record(path: Path) -> None:
    save_twice(path)
    [log] = logs(path)
    data = bytearray(log.read_bytes())
    data[data.index(b'["s","') + 10] ^= 1  # in the first record's payload: its CRC fails, the second is intact
    log.write_bytes(bytes(data))


def write_log(path: Path, number: int, *payloads: bytes, header: dict | None = None) -> None:
    from exporters.remote_write.cumulative_files import _pack

    head = json.dumps(header or {"version": 2, "log": number}).encode()
    path.with_name(f"{path.name}.log-{number}").write_bytes(b"".join(_pack(p) for p in (head, *payloads)))


def snapshot_with_a_wrong_trailer(path: Path) -> None:
    from exporters.remote_write.cumulative_files import _pack

    d2c = DeltaToCumulative(path, min_compact_bytes=1)
    run_sum(d2c, number(3, T0, T0 + S))
    d2c.save()
    data = path.read_bytes()
    trailer = _pack(json.dumps({"streams": 1}).encode())
    assert data.endswith(trailer)
    path.write_bytes(data[:-len(trailer)] + _pack(json.dumps({"streams": 2}).encode()))


HOSTILE = {
    "a damaged record followed by an intact one": corrupt_first_record,
    "a snapshot whose trailer miscounts its rows": snapshot_with_a_wrong_trailer,
    "a log whose header names another log": lambda path: write_log(path, 1, header={"version": 2, "log": 7}),
    "a log missing between two others": lambda path: (write_log(path, 1), write_log(path, 3)),
    "a log of another version": lambda path: write_log(path, 1, header={"version": 3, "log": 1}),
    "a row that is not a list": lambda path: write_log(path, 1, b'{"rows": 1}'),
    "a row whose key is not a digest": lambda path: write_log(path, 1, b'["s","bm90IGEgZGlnZXN0",1.0,[1,2],3]'),
    "a snapshot of random bytes": lambda path: path.write_bytes(bytes(range(256)) * 4),
    "a snapshot that is not whole": lambda path: (snapshot_with_a_wrong_trailer(path),
                                                  path.write_bytes(path.read_bytes()[:-3])),
}


@pytest.mark.parametrize("damage", HOSTILE.values(), ids=HOSTILE.keys())
def test_state_files_that_cannot_be_trusted_are_set_aside_with_the_reason_and_the_state_starts_empty(
        tmp_path, caplog, damage) -> None:
    path = tmp_path / "d2c.json"
    damage(path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        d2c = DeltaToCumulative(path, clock=Clock(0.0))
    [warning] = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert "unreadable" in warning and "starting empty" in warning
    assert d2c.stats() == {"state_load_failures": 1, "streams": 0}
    assert all(".corrupt-19700101T000000Z" in p.name for p in tmp_path.iterdir())
    run_sum(d2c, number(3, T0, T0 + S))
    d2c.save()  # and the state goes on from there
    assert DeltaToCumulative(path).stats() == {"streams": 1}


def write_version_1(path: Path, value: int) -> None:
    """What version 1 wrote: the whole state as one JSON document; here a stream counted to `value` over
    (T0, T0+S]."""
    from exporters.remote_write.cumulative_files import _log_payloads, _parse_rows

    scratch = path.with_name("scratch.json")
    d2c = DeltaToCumulative(scratch)
    run_sum(d2c, number(value, T0, T0 + S))
    d2c.save()
    [log] = logs(scratch)
    rows = [row for p in _log_payloads(log.read_bytes(), log.name, 1)[0] for row in _parse_rows(p)]
    log.unlink()
    path.write_text(json.dumps({"version": 1, "streams": rows}))


def test_a_version_1_state_file_is_loaded_and_rewritten_in_the_new_format(tmp_path: Path) -> None:
    path = tmp_path / "d2c.json"
    write_version_1(path, 3)
    upgraded = DeltaToCumulative(path)
    assert upgraded.stats()["state_rewrites"] == 1 and not path.read_bytes().startswith(b"{")
    assert run_sum(upgraded, number(4, T0 + S, T0 + 2 * S))[0] == [(T0, T0 + 2 * S, 7)]
    upgraded.save()
    assert run_sum(DeltaToCumulative(path), number(1, T0 + 2 * S, T0 + 3 * S))[0] == [(T0, T0 + 3 * S, 8)]


def test_logs_left_beside_a_version_1_file_by_a_downgrade_are_older_than_it_and_not_replayed(tmp_path) -> None:
    path = tmp_path / "d2c.json"
    write_version_1(path, 3)
    stale = DeltaToCumulative(tmp_path / "old.json")  # this version's log from before the downgrade: 1 counted
    run_sum(stale, number(1, T0, T0 + S))
    stale.save()
    [log] = logs(tmp_path / "old.json")
    log.rename(path.with_name(path.name + ".log-1"))
    upgraded_again = DeltaToCumulative(path)
    assert run_sum(upgraded_again, number(4, T0 + S, T0 + 2 * S))[0] == [(T0, T0 + 2 * S, 7)]
    assert logs(path) == []


def test_the_rows_of_a_failed_save_are_written_by_the_next_one(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    path = tmp_path / "state" / "d2c.json"
    d2c = DeltaToCumulative(path, save_interval=0)
    run_sum(d2c, number(3, T0, T0 + S))
    assert asyncio.run(d2c.commit()) is False  # its directory is a file
    (tmp_path / "state").unlink()
    run_sum(d2c, number(1, T0, T0 + S, attrs(k="other")))
    assert asyncio.run(d2c.commit()) is True
    assert DeltaToCumulative(path).stats()["streams"] == 2
