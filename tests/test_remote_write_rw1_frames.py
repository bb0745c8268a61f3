"""Remote write 1.0 bodies written from a remembered request layout (rw1_frames.py): byte for byte what
protobuf writes, request after request, whatever the values and timestamps do."""

from __future__ import annotations

import random
import struct
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters.remote_write import rw1
from exporters.remote_write.rw1_frames import Frame, Frames
from exporters.remote_write.series import STALE_NAN
from tests.series_strategies import NAN_PAYLOAD, SPECIAL_FLOATS, copied, label_sets

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values that change a body's layout (+0.0 is left out; -0.0 is not) or must keep their bits.
values_ = st.one_of(
    st.sampled_from((0.0, -0.0, STALE_NAN, NAN_PAYLOAD, float("inf"), float("-inf"), 1.0)),
    st.sampled_from(SPECIAL_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
)
INT64 = st.integers(-(2**63), 2**63 - 1)
NOW = 1_700_000_000_000


def expected(labels: list, values: list[float], stamps: list[int]) -> bytes:
    return rw1.build_write_request(labels, values, stamps).SerializeToString()


def reserialized(body: bytes) -> bytes:
    """What protobuf writes for the message a body holds: the same for an explicit +0.0 and a left-out one,
    and every other value's bits as they are."""
    return rw1.WriteRequest.FromString(body).SerializeToString()


def frame_of(cache: rw1.LabelCache) -> list[Frame]:
    return [f for f in cache.frames.frames.values() if isinstance(f, Frame)]


@st.composite
def requests(draw: Any) -> tuple[list[tuple[list, list[float], list[int]]], bool]:
    """Requests of one label list (a fresh list object each time, the same tuples), as a batcher cuts them
    flush after flush: grouped runs of 1-3 samples per series in time order, or (not grouped) distinct series
    in any order. Timestamps mostly now-like with the same varint length (half the time the k-th samples of
    all series at one time), sometimes anything in int64."""
    runs_alike = draw(st.booleans())
    series = draw(st.lists(label_sets(), min_size=1, max_size=6, unique=True))
    grouped = draw(st.booleans())
    alike = draw(st.integers(1, 3))
    runs = [(alike if runs_alike else draw(st.integers(1, 3))) if grouped else 1 for _ in series]
    labels = [s for s, run in zip(series, runs) for _ in range(run)]
    out = []
    start = NOW
    for _ in range(draw(st.integers(2, 5))):
        wild = draw(st.integers(0, 4)) == 0
        # aligned: the k-th sample of every series at one time (a batcher's interleaved ticks)
        jitter = [draw(st.sampled_from((0, 0, 3))) for _ in range(max(runs))] if draw(st.booleans()) else None
        stamps: list[int] = []
        for run in runs:
            if wild:
                stamps += sorted(draw(st.lists(st.one_of(INT64, st.sampled_from((0, -1, -(2**63)))),
                                               min_size=run, max_size=run)))
            elif jitter is not None:
                stamps += [start + 1000 * j + jitter[j] for j in range(run)]
            else:
                stamps += [start + 1000 * j + draw(st.sampled_from((0, 0, 3))) for j in range(run)]
        start += 1000 * max(runs)
        # some series all +0.0 in a request (a counter that never moved), the others anything
        values = [0.0 if draw(st.integers(0, 3)) == 0 else None for _ in series]
        out.append((list(labels), [draw(values_) if values[i] is None else 0.0
                                   for i, run in enumerate(runs) for _ in range(run)], stamps))
    return out, grouped


@PROPERTY
@given(requests())
def test_a_label_list_sent_again_is_written_exactly_as_protobuf_writes_it(drawn: tuple) -> None:
    sent, grouped = drawn
    cache = rw1.LabelCache()
    for labels, values, stamps in sent:
        assert rw1.serialize(labels, values, stamps, cache=cache, grouped=grouped) == expected(labels, values, stamps)
    assert frame_of(cache), "a label list sent gets a frame"


@PROPERTY
@given(st.lists(st.lists(st.sampled_from((0.0, -0.0, 1.5, STALE_NAN)), min_size=6, max_size=6), min_size=3, max_size=8))
def test_zeros_coming_and_going_change_only_those_series_heads(rows: list[list[float]]) -> None:
    a, b, c = (("__name__", "a"),), (("__name__", "b"), ("x", "y")), (("__name__", "c"),)
    cache = rw1.LabelCache()
    for tick, row in enumerate(rows):
        labels = [a, a, b, b, c, c]
        stamps = [NOW + 2000 * tick, NOW + 2000 * tick + 1000] * 3
        assert rw1.serialize(labels, row, stamps, cache=cache, grouped=True) == expected(labels, row, stamps)


@pytest.mark.parametrize("explicit", [False, True], ids=["as protobuf writes it", "zeros explicit"])
def test_each_sample_keeps_its_own_timestamp_when_a_request_has_several(explicit: bool) -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    cache = rw1.LabelCache()
    for tick in range(4):
        base = NOW + 5000 * tick
        for stamps in ([base, base + 1000, base, base + 1000], [base, base + 7, base + 3, base + 1000]):
            labels, values = [a, a, b, b], [0.0, 1.0, 2.0, 0.0]
            body = rw1.serialize(labels, values, stamps, cache=cache, grouped=True, explicit_zeros=explicit)
            assert (reserialized(body) if explicit else body) == expected(labels, values, stamps)
    assert frame_of(cache)


def test_a_timestamp_of_another_length_is_written_without_the_frame() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    cache = rw1.LabelCache()
    for stamps in ([NOW, NOW], [NOW, NOW], [0, NOW], [-5, -5], [NOW, 127], [NOW + 1, NOW + 1]):
        labels, values = [a, b], [1.0, 0.0]
        assert rw1.serialize(labels, values, stamps, cache=cache) == expected(labels, values, stamps)


def test_series_longer_than_the_head_table_get_their_length_written_in_full() -> None:
    long = (("__name__", "m"), ("v", "x" * 5000))
    short = (("__name__", "s"),)
    cache = rw1.LabelCache()
    for tick in range(3):
        labels, values, stamps = [long, short], [float(tick), 0.0], [NOW + tick, NOW + tick]
        assert rw1.serialize(labels, values, stamps, cache=cache) == expected(labels, values, stamps)
    assert frame_of(cache)


def test_a_label_list_that_differs_inside_is_not_taken_for_the_remembered_one() -> None:
    a, b, c, d = ((("__name__", n),) for n in "abcd")
    cache = rw1.LabelCache()
    for middle in (b, b, c, c, copied(c), b):
        labels, values, stamps = [a, middle, d], [1.0, 2.0, 3.0], [NOW] * 3
        assert rw1.serialize(labels, values, stamps, cache=cache) == expected(labels, values, stamps)


def test_an_ungrouped_batch_with_repeated_series_is_grouped_by_the_general_path() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    cache = rw1.LabelCache()
    for _ in range(3):
        labels, values, stamps = [a, b, a], [1.0, 2.0, 3.0], [NOW + 5, NOW, NOW]
        assert rw1.serialize(labels, values, stamps, cache=cache) == expected(labels, values, stamps)
    assert not frame_of(cache)
    for grouped, stamps in ((True, [NOW, NOW + 1, NOW]), (True, [NOW, NOW + 1, NOW]), (False, [NOW + 1, NOW, NOW])):
        # The same list not grouped (a's samples out of time order): the frame built from it grouped must not
        # be used, or a's samples would be written in the wrong order.
        labels, values = [a, a, b], [1.0, 2.0, 3.0]
        assert rw1.serialize(labels, values, stamps, cache=cache, grouped=grouped) == expected(labels, values, stamps)
    assert frame_of(cache)


def test_frames_are_bounded_in_bytes_and_the_oldest_go_first() -> None:
    frames = Frames(max_bytes=10 * 120)  # ten samples' layouts
    series = [(("__name__", f"m{i}"),) for i in range(12)]
    encoded = rw1.LabelCache().encoded_all
    for start in (0, 4, 8):
        labels = series[start:start + 4]
        for _ in range(2):
            frames.pieces(labels, [1.0] * 4, [NOW] * 4, False, encoded)
    assert frames.nbytes <= 10 * 120
    assert [key[2] for key in frames.frames] == [4, 4]
    assert frames.pieces(series, [1.0] * 12, [NOW] * 12, False, encoded) is None  # larger than the bound


def test_a_frame_that_writes_whole_bodies_is_charged_for_its_format_within_the_bound() -> None:
    series = [(("__name__", f"m{i}"),) for i in range(12)]
    encoded = rw1.LabelCache().encoded_all
    frames = Frames(max_bytes=3000)  # two packed frames of four samples (1,320 bytes each)
    for start in (0, 4, 8):
        labels = series[start:start + 4]
        for _ in range(2):  # the second time, whole bodies
            body = frames.pieces(labels, [0.0] * 4, [NOW] * 4, False, encoded, explicit=True)
            assert b"".join(body) and reserialized(b"".join(body)) == expected(labels, [0.0] * 4, [NOW] * 4)
        assert frames.nbytes <= 3000
    assert len(frames.frames) == 2
    tight = Frames(max_bytes=4 * 120)  # room for the layout only: bodies as protobuf writes them
    for _ in range(3):
        body = tight.pieces(series[:4], [0.0] * 4, [NOW] * 4, False, encoded, explicit=True)
        assert b"".join(body) == expected(series[:4], [0.0] * 4, [NOW] * 4)
    assert tight.nbytes <= 4 * 120


def test_concurrent_encodes_of_one_label_list_stay_exact() -> None:
    series = [(("__name__", f"m{i}"), ("i", str(i))) for i in range(200)]
    cache = rw1.LabelCache()
    bodies: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []

    def encode(worker: int) -> None:
        try:
            for tick in range(40):
                values = [0.0 if (i + tick + worker) % 3 == 0 else float(i) for i in range(200)]
                stamps = [NOW + tick] * 200
                body = rw1.serialize(list(series), values, stamps, cache=cache)
                bodies.append((body, expected(series, values, stamps)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=encode, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(body == want for body, want in bodies)


def test_negative_zero_and_nan_payloads_keep_their_bits() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    cache = rw1.LabelCache()
    for values in ([0.0, 0.0], [-0.0, 0.0], [0.0, -0.0], [STALE_NAN, NAN_PAYLOAD], [0.0, 0.0], [-0.0, -0.0]):
        labels, stamps = [a, b], [NOW, NOW]
        body = rw1.serialize(labels, values, stamps, cache=cache)
        assert body == expected(labels, values, stamps)
    decoded = rw1.WriteRequest.FromString(body)
    assert [struct.pack("<d", ts.samples[0].value) for ts in decoded.timeseries] == [struct.pack("<d", -0.0)] * 2


def test_a_few_zeros_changing_among_many_series_are_written_exactly() -> None:
    rng = random.Random(5)
    series = [(("__name__", "m"), ("i", str(i))) for i in range(60)]
    for runs in ([1] * 60, [3] * 60, [rng.randint(1, 3) for _ in range(60)]):
        cache = rw1.LabelCache()
        labels = [s for s, run in zip(series, runs) for _ in range(run)]
        values = [0.0 if rng.random() < 0.3 else 1.5 for _ in labels]
        for tick in range(12):
            for _ in range(2):  # a zero comes or goes, sometimes as -0.0
                i = rng.randrange(len(values))
                values[i] = rng.choice((0.0, -0.0, 2.5)) if values[i] else 3.5
            stamps = [NOW + 10_000 * tick + 1000 * k for run in runs for k in range(run)]
            assert rw1.serialize(list(labels), values, stamps, cache=cache, grouped=True) == expected(
                labels, values, stamps)
        assert frame_of(cache)


@PROPERTY
@given(requests())
def test_a_label_list_sent_again_with_explicit_zeros_holds_exactly_the_message_protobuf_writes(drawn: tuple) -> None:
    sent, grouped = drawn
    cache = rw1.LabelCache()
    for labels, values, stamps in sent:
        body = rw1.serialize(labels, values, stamps, cache=cache, grouped=grouped, explicit_zeros=True)
        assert reserialized(body) == expected(labels, values, stamps)


def test_from_its_second_request_a_label_list_is_written_with_its_zeros_explicit() -> None:
    a, b = (("__name__", "a"),), (("__name__", "b"),)
    cache = rw1.LabelCache()
    labels, stamps = [a, b], [NOW, NOW]
    bodies = [rw1.serialize(labels, values, stamps, cache=cache, explicit_zeros=True)
              for values in ([0.0, 1.0], [0.0, -0.0], [STALE_NAN, 0.0])]
    assert bodies[0] == expected(labels, [0.0, 1.0], stamps)  # seen once: as protobuf writes it
    assert len(bodies[1]) == len(expected(labels, [0.0, -0.0], stamps)) + 9  # a's +0.0 written
    decoded = rw1.WriteRequest.FromString(bodies[1])
    assert [struct.pack("<d", ts.samples[0].value) for ts in decoded.timeseries] == [bytes(8), struct.pack("<d", -0.0)]
    assert reserialized(bodies[2]) == expected(labels, [STALE_NAN, 0.0], stamps)
