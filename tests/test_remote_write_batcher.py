"""The batcher's cut: the requests it makes are those of the plain algorithm (group every series by hash, pack
whole series greedily, split only a series that alone passes a limit), whichever path it takes, and a batch
it marks `grouped` really is in the order encoders would put it in.

The reference below is that plain algorithm as it stood before the interleaving path; requests are compared
through what a receiver sees (the remote write 1.0 message protobuf builds, which groups and orders itself)
plus the columns remote write 1.0 does not carry (sizes, start timestamps) in that same order.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters.remote_write import rw1
from exporters.remote_write.batcher import Batcher
from exporters.remote_write.series import (
    Exemplar,
    Labels,
    NativeHistogram,
    SampleBatch,
    group_by_series,
)
from tests.series_strategies import bits, copied, floats, flushes, label_sets

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_cut(pending: SampleBatch, nbytes: int, max_samples: int, max_bytes: int) -> list[tuple[SampleBatch, int]]:
    if len(pending.values) <= max_samples - len(pending.histograms) and nbytes <= max_bytes:
        return [(pending, nbytes)]

    def take(indexes: list[int], size: int) -> tuple[SampleBatch, int]:
        batch = SampleBatch(
            labels=[pending.labels[i] for i in indexes],
            values=[pending.values[i] for i in indexes],
            timestamps=[pending.timestamps[i] for i in indexes],
            sizes=[pending.sizes[i] for i in indexes],
            start_timestamps=[pending.start_timestamps[i] for i in indexes] if pending.start_timestamps else [],
        )
        return batch, size

    requests: list[tuple[SampleBatch, int]] = []
    current: list[int] = []
    current_bytes = 0
    for members in group_by_series(pending.labels).values():
        group_bytes = sum(pending.sizes[i] for i in members)
        if current and (len(current) + len(members) > max_samples or current_bytes + group_bytes > max_bytes):
            requests.append(take(current, current_bytes))
            current, current_bytes = [], 0
        if len(members) <= max_samples and group_bytes <= max_bytes:
            current += members
            current_bytes += group_bytes
            continue
        members.sort(key=pending.timestamps.__getitem__)
        for i in members:
            if current and (len(current) >= max_samples or current_bytes + pending.sizes[i] > max_bytes):
                requests.append(take(current, current_bytes))
                current, current_bytes = [], 0
            current.append(i)
            current_bytes += pending.sizes[i]
    last, last_bytes = take(current, current_bytes) if current else (SampleBatch(), 0)
    last.histogram_labels, last.histograms = pending.histogram_labels, pending.histograms
    last.exemplar_labels, last.exemplars = pending.exemplar_labels, pending.exemplars
    last_bytes += sum(pending.histogram_sizes) + sum(pending.exemplar_sizes)
    if last:
        requests.append((last, last_bytes))
    return requests


def arranged(batch: SampleBatch) -> list[tuple[Labels, list[tuple[int, int, int, int]]]]:
    """Each series' float samples as (timestamp, value bits, size, start) in the order encoders put them."""
    out = []
    for series, members in group_by_series(batch.labels).items():
        members.sort(key=batch.timestamps.__getitem__)
        starts = batch.start_timestamps or [0] * len(batch.values)
        out.append((series, [(batch.timestamps[i], bits(batch.values[i]), batch.sizes[i], starts[i]) for i in members]))
    return out


def seen(batch: SampleBatch) -> tuple[bytes, Any]:
    message = rw1.build_write_request(
        batch.labels, batch.values, batch.timestamps,
        histogram_labels=batch.histogram_labels, histograms=batch.histograms,
        exemplar_labels=batch.exemplar_labels, exemplars=batch.exemplars,
    )
    return message.SerializeToString(), arranged(batch)


def pending_of(ticks: list[SampleBatch]) -> tuple[SampleBatch, int]:
    pending = SampleBatch()
    for batch in ticks:
        pending.extend(batch)
    return pending, pending.nbytes


@PROPERTY
@given(flushes())
def test_the_batches_added_are_left_as_they_were(flush: tuple[list[SampleBatch], int, int]) -> None:
    # The batcher takes a flush's first batch without copying its columns (they may be a learnt shape's):
    # neither the batches after it nor the cut may change them.
    ticks, max_samples, max_bytes = flush
    before = [(seen(batch), list(batch.sizes), batch.nbytes) for batch in ticks]
    batcher = Batcher(max_samples, max_bytes, 5.0, hold_factor=10**6)
    for batch in ticks:
        batcher.add(batch)
    batcher.cut()
    assert [(seen(batch), list(batch.sizes), batch.nbytes) for batch in ticks] == before


@PROPERTY
@given(flushes(), st.integers(1, 3))
def test_a_cut_makes_the_requests_of_the_plain_algorithm(flush: tuple[list[SampleBatch], int, int], times: int) -> None:
    ticks, max_samples, max_bytes = flush
    batcher = Batcher(max_samples, max_bytes, 5.0, hold_factor=10**6)
    expected = [(seen(batch), size) for batch, size in reference_cut(*pending_of(ticks), max_samples, max_bytes)]
    for _ in range(times):  # again: the series order proved distinct is remembered, not proved again
        for batch in ticks:
            assert batcher.add(batch) == []
        assert [(seen(batch), size) for batch, size in batcher.cut()] == expected


@PROPERTY
@given(flushes())
def test_a_batch_cut_as_grouped_is_in_the_order_encoders_put_it_in(flush: tuple[list[SampleBatch], int, int]) -> None:
    ticks, max_samples, max_bytes = flush
    batcher = Batcher(max_samples, max_bytes, 5.0, hold_factor=10**6)
    for batch in ticks:
        batcher.add(batch)
    for batch, _ in batcher.cut():
        if not batch.grouped:
            continue
        order = [i for members in group_by_series(batch.labels).values()
                 for i in sorted(members, key=batch.timestamps.__getitem__)]
        assert order == list(range(len(batch.values)))
        # Each series' run shares one tuple object: encoders find the runs by identity.
        runs = [len(members) for members in group_by_series(batch.labels).values()]
        changes = sum(1 for a, b in zip(batch.labels, batch.labels[1:]) if a is not b)
        assert changes == len(runs) - 1


def test_ticks_of_the_same_series_are_cut_interleaved_and_grouped() -> None:
    a, b, c = ((("__name__", n),) for n in "abc")
    batcher = Batcher(max_samples=4, max_bytes=1 << 20, flush_interval=5.0)
    for stamp in (1000, 2000):
        batcher.add(SampleBatch(labels=[a, b, c], values=[1.0, 2.0, 3.0], timestamps=[stamp] * 3, sizes=[10] * 3))
    (first, first_bytes), (second, second_bytes) = batcher.cut()
    assert first.grouped and second.grouped
    assert first.labels == [a, a, b, b] and first.timestamps == [1000, 2000, 1000, 2000] and first_bytes == 40
    assert second.labels == [c, c] and second.values == [3.0, 3.0] and second_bytes == 20


def test_a_flush_whose_ticks_differ_is_cut_as_before_and_not_marked_grouped() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    batcher = Batcher(max_samples=10, max_bytes=1 << 20, flush_interval=5.0)
    batcher.add(SampleBatch(labels=[a, b], values=[1.0, 2.0], timestamps=[1000, 1000], sizes=[1, 1]))
    batcher.add(SampleBatch(labels=[b, a], values=[3.0, 4.0], timestamps=[2000, 2000], sizes=[1, 1]))
    ((batch, _),) = batcher.cut()
    assert not batch.grouped
    assert batch.labels == [a, b, b, a]  # as it came: it fits in one request


@st.composite
def grouped_flushes(draw: Any) -> tuple[list[list[SampleBatch]], int, int]:
    """Flushes of `grouped` batches as a gateway decodes them (each series one run of one tuple object, in time
    order), one batcher's in a row: mostly series that no other batch of the flush has (a node's requests),
    sometimes one again (a gateway's flush spans two of a node's), an equal label set in another tuple (a
    sender's new session), a batch not grouped, or a series longer than a limit."""
    pool = draw(st.lists(label_sets(), min_size=1, max_size=8, unique=True))
    twins = {labels: copied(labels) for labels in pool}
    stamp = draw(st.integers(0, 10**9))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        flush = []
        unused = list(pool)
        for _ in range(draw(st.integers(1, 4))):
            repeat = draw(st.integers(0, 3)) == 0 or not unused
            source = pool if repeat else unused
            series = draw(st.lists(st.sampled_from(source), min_size=1, max_size=4, unique=True))
            unused = [s for s in unused if s not in series]
            batch = SampleBatch(grouped=draw(st.integers(0, 9)) > 0)
            with_starts = draw(st.booleans())
            for labels in series:
                if draw(st.integers(0, 4)) == 0:
                    labels = twins[labels]
                at = stamp + draw(st.integers(-3000, 3000))
                for _ in range(draw(st.integers(1, 4))):
                    batch.labels.append(labels)
                    batch.values.append(draw(floats))
                    batch.timestamps.append(at)
                    batch.sizes.append(draw(st.integers(0, 60)))
                    if with_starts:
                        batch.start_timestamps.append(draw(st.sampled_from((0, 5))))
                    at += draw(st.sampled_from((0, 1000, 1000)))
            if draw(st.integers(0, 5)) == 0:
                h = NativeHistogram(timestamp=stamp, count=3, sum=1.5, schema=0, zero_threshold=0.0, zero_count=1)
                batch.histogram_labels, batch.histograms, batch.histogram_sizes = [(("__name__", "h"),)], [h], [50]
                batch.exemplar_labels, batch.exemplars, batch.exemplar_sizes = [series[0]], [Exemplar((), 1.0, stamp)], [30]
            flush.append(batch)
        stamp += 5000
        out.append(flush)
    return out, draw(st.integers(1, 12)), draw(st.one_of(st.integers(1, 600), st.just(1 << 20)))


@PROPERTY
@given(grouped_flushes())
def test_grouped_batches_are_cut_as_the_plain_algorithm_cuts_them(flushes: tuple[list[list[SampleBatch]], int, int]) -> None:
    batches, max_samples, max_bytes = flushes
    batcher = Batcher(max_samples, max_bytes, 5.0, hold_factor=10**6)
    for _ in range(2):  # again: tuples proved distinct are remembered, not proved again
        for flush in batches:
            expected = [(seen(batch), size) for batch, size in reference_cut(*pending_of(flush), max_samples, max_bytes)]
            for batch in flush:
                assert batcher.add(batch) == []
            requests = batcher.cut()
            assert [(seen(batch), size) for batch, size in requests] == expected
            for batch, _ in requests:
                if batch.grouped:
                    assert_grouped(batch)


def assert_grouped(batch: SampleBatch) -> None:
    order = [i for members in group_by_series(batch.labels).values()
             for i in sorted(members, key=batch.timestamps.__getitem__)]
    assert order == list(range(len(batch.values)))
    runs = [len(members) for members in group_by_series(batch.labels).values()]
    changes = sum(1 for a, b in zip(batch.labels, batch.labels[1:]) if a is not b)
    assert changes == len(runs) - 1


def node_request(series: list[Labels], stamp: int) -> SampleBatch:
    """A decoded request of one node: five samples a series, each series one run of one tuple."""
    batch = SampleBatch(grouped=True)
    for labels in series:
        batch.labels += [labels] * 5
        batch.timestamps += [stamp + 1000 * i for i in range(5)]
        batch.values += [1.0] * 5
        batch.sizes += [10] * 5
    return batch


def test_a_gateways_flush_of_node_requests_is_cut_at_series_boundaries_as_it_stands() -> None:
    nodes = [[(("__name__", "m"), ("i", f"{node}-{k}")) for k in range(3)] for node in range(3)]
    batcher = Batcher(max_samples=22, max_bytes=1 << 20, flush_interval=5.0)
    batches = [node_request(series, 0) for series in nodes]
    for batch in batches:
        batcher.add(batch)
    requests = batcher.cut()
    assert [len(batch) for batch, _ in requests] == [20, 20, 5]
    assert all(batch.grouped for batch, _ in requests)
    assert [s for batch, _ in requests for s in batch.labels] == [s for batch in batches for s in batch.labels]
    assert all(a is b for (batch, _), start in zip(requests, (0, 20, 40)) for a, b in
               zip(batch.labels, (batches[0].labels + batches[1].labels + batches[2].labels)[start:]))


def test_a_series_in_two_node_requests_of_one_flush_is_cut_whole_and_in_time_order() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    batcher = Batcher(max_samples=12, max_bytes=1 << 20, flush_interval=5.0)
    batcher.add(node_request([a, b], 5000))  # a node's later flush reached the gateway first
    batcher.add(node_request([a, b], 0))
    (first, _), (second, _) = batcher.cut()
    assert first.grouped and second.grouped
    assert first.labels == [a] * 10 and first.timestamps == [1000 * i for i in range(10)]
    assert second.labels == [b] * 10 and second.timestamps == [1000 * i for i in range(10)]


def test_a_series_again_in_a_later_request_is_found_though_its_tuple_was_proved_in_an_earlier_flush() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    batcher = Batcher(max_samples=100, max_bytes=1 << 20, flush_interval=5.0)
    batcher.add(node_request([a, b], 0))
    ((proved, _),) = batcher.cut()
    assert proved.grouped
    batcher.add(node_request([a, b], 0))
    batcher.add(node_request([a], 5000))
    ((batch, _),) = batcher.cut()
    # a's two runs (one per request) put side by side, as one series, in time order
    assert batch.grouped
    assert batch.labels == [a] * 10 + [b] * 5
    assert batch.timestamps == [1000 * i for i in range(10)] + [1000 * i for i in range(5)]
    assert all(labels is a for labels in batch.labels[:10])


def test_an_equal_series_in_a_new_tuple_is_not_taken_for_another_series() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    batcher = Batcher(max_samples=12, max_bytes=1 << 20, flush_interval=5.0)
    batcher.add(node_request([a, b], 0))
    batcher.cut()
    batcher.add(node_request([a], 0))
    batcher.add(node_request([copied(a), b], 5000))  # the sender's new session: new tuples
    (first, _), (second, _) = batcher.cut()
    assert first.labels == [a] * 10 and first.timestamps == [1000 * i for i in range(10)]
    assert all(labels is first.labels[0] for labels in first.labels)
    assert second.labels == [b] * 5


class Counted(tuple):
    """A label set that counts how often it is hashed (what proving series distinct costs)."""

    hashed = 0

    def __hash__(self) -> int:
        Counted.hashed += 1
        return super().__hash__()


def test_a_node_alternating_between_one_tick_and_two_per_request_is_proved_distinct_once_per_list() -> None:
    # A node flushing every second as ticks arrive every second sends one tick per request, or two interleaved
    # and cut in two when its flush caught two: three label lists of the same series, as a gateway decodes them.
    series = [Counted((("__name__", "m"), ("i", str(i)))) for i in range(6)]
    one_tick = SampleBatch(labels=list(series), values=[1.0] * 6, timestamps=[0] * 6, sizes=[10] * 6, grouped=True)

    def two_ticks(part: list[Labels]) -> SampleBatch:
        return SampleBatch(labels=[s for s in part for _ in range(2)], values=[1.0] * 2 * len(part),
                           timestamps=[0, 1000] * len(part), sizes=[10] * 2 * len(part), grouped=True)

    batcher = Batcher(max_samples=100, max_bytes=1 << 20, flush_interval=1.0)
    for round_ in range(4):
        if round_ == 2:
            proved = Counted.hashed
        for batch in (one_tick, two_ticks(series[:4]), two_ticks(series[4:])):
            batcher.add(batch)
            ((cut, _),) = batcher.cut()
            assert cut.grouped and cut.labels == batch.labels
    assert Counted.hashed == proved, "the label sets of lists remembered are not hashed again"


def test_remembered_label_lists_are_bounded_and_a_forgotten_one_is_proved_again_correctly() -> None:
    series = [(("__name__", "m"), ("i", str(i))) for i in range(80)]
    lists = [series[start:start + 5] for start in range(0, 80, 5)]  # sixteen, more than two flushes' worth
    batcher = Batcher(max_samples=10, max_bytes=1 << 20, flush_interval=1.0, hold_factor=2)
    for round_ in range(3):
        for index, part in enumerate(lists):
            after = lists[(index + 1) % len(lists)]
            for values, labels in ((1.0, part), (2.0, after)):
                assert batcher.add(SampleBatch(labels=list(labels), values=[values] * 5, timestamps=[round_] * 5,
                                               sizes=[10] * 5, grouped=True)) == []
            requests = batcher.cut()
            assert [s for batch, _ in requests for s in batch.labels] == part + after
            assert all(batch.grouped for batch, _ in requests)
            assert batcher._known_samples <= 2 * 20  # two flushes' worth (max_samples x hold_factor)


def test_what_only_forgotten_label_lists_had_is_dropped() -> None:
    series = [(("__name__", "m"), ("i", str(i))) for i in range(6000)]
    lists = [series[start:start + 5] for start in range(0, 6000, 5)]
    batcher = Batcher(max_samples=10, max_bytes=1 << 20, flush_interval=1.0, hold_factor=2)
    for index in range(0, len(lists), 2):
        for part in lists[index:index + 2]:
            batcher.add(SampleBatch(labels=list(part), values=[1.0] * 5, timestamps=[0] * 5, sizes=[10] * 5,
                                    grouped=True))
        ((batch, _),) = batcher.cut()
        assert batch.grouped and batch.labels == lists[index] + lists[index + 1]
    assert len(batcher._tuples) <= 4 * 40 + 4096 + 5
    assert len(batcher._apart) <= 4 * len(batcher._known) ** 2 + 64 + 1


def test_a_batch_marked_grouped_with_a_series_in_two_runs_is_cut_as_the_plain_algorithm_cuts_it() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    liar = SampleBatch(labels=[a, b, a], values=[1.0, 2.0, 3.0], timestamps=[0, 0, 1000], sizes=[10] * 3, grouped=True)
    batcher = Batcher(max_samples=2, max_bytes=1 << 20, flush_interval=1.0)
    batcher.add(liar)
    expected = [(seen(batch), size) for batch, size in reference_cut(*pending_of([liar]), 2, 1 << 20)]
    assert [(seen(batch), size) for batch, size in batcher.cut()] == expected


def test_merges_of_overlapping_lists_are_remembered_for_the_last_few_combinations_only() -> None:
    series = [(("__name__", "m"), ("i", str(i))) for i in range(24)]
    batcher = Batcher(max_samples=100, max_bytes=1 << 20, flush_interval=1.0)
    for round_ in range(2):
        for start in range(12):  # twelve combinations: one tick of all, then two ticks of a part
            part = series[start:start + 12]
            one = SampleBatch(labels=list(series), values=[1.0] * 24, timestamps=[0] * 24, sizes=[10] * 24,
                              grouped=True)
            two = SampleBatch(labels=[s for s in part for _ in range(2)], values=[2.0] * 24,
                              timestamps=[1000, 2000] * 12, sizes=[10] * 24, grouped=True)
            batcher.add(one)
            batcher.add(two)
            ((batch, _),) = batcher.cut()
            assert batch.grouped
            expected = [s for s in series for _ in range(3 if s in part else 1)]
            assert batch.labels == expected
            assert batch.timestamps == [t for s in series for t in ((0, 1000, 2000) if s in part else (0,))]
            assert len(batcher._merges) <= 8
