"""The compact remote-write format: exact round trips, a session that survives lost requests, lost answers,
refusals and restarts, the bytes it saves, and the receiver's bounds and refusals."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters.remote_write.compact import (
    CONTENT_TYPE,
    EPOCH_HEADER,
    SEQUENCE_HEADER,
    SESSION_HEADER,
    SESSION_LOST_STATUS,
    VERSION_HEADER,
    CompactEncoder,
    SessionLost,
    is_session_lost,
)
from exporters.remote_write.compact_session import CompactSessions
from exporters.remote_write.encoding import DecodeError, Encoded, decompress
from exporters.remote_write.proto.compact_pb2 import HistogramSample, Request
from exporters.remote_write.series import STALE_NAN, Labels, Metadata, SampleBatch
from tests.series_strategies import batches, canonical, floats, label_sets

MAX_BODY = 64 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batch_of(rows: list[tuple[Labels, float, int]], **extra: Any) -> SampleBatch:
    batch = SampleBatch(**extra)
    for labels, value, stamp in rows:
        batch.labels.append(labels)
        batch.values.append(value)
        batch.timestamps.append(stamp)
        batch.sizes.append(0)
    return batch


def raw(encoded: Encoded) -> bytes:
    return decompress(encoded.headers["Content-Encoding"], encoded.body, MAX_BODY)


def deliver(encoder: CompactEncoder, receiver: CompactSessions, batch: SampleBatch) -> SampleBatch:
    """One request that goes through: encoded, decoded, accepted and acknowledged."""
    encoded = encoder.encode(batch)
    decoded, commit = receiver.decode(raw(encoded), encoded.headers)
    commit()
    assert encoded.commit is not None
    encoded.commit()
    return decoded


def assert_each_decodes_exactly_twice_over(sequence: list[SampleBatch]) -> None:
    """Every batch, sent in order through one session and then again (the second pass finds every series
    already defined), decodes to exactly what was encoded."""
    encoder, receiver = CompactEncoder(), CompactSessions()
    for batch in sequence + sequence:
        assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)


def node_series(count: int, host: str = "alpha") -> list[Labels]:
    return [
        (("__name__", f"node_metric_{i % 7}_total"), ("device", f"device-{i:04d}"), ("instance", f"instance-{host}"),
         ("job", "node-exporter"))
        for i in range(count)
    ]


A = (("__name__", "requests_total"), ("instance", "instance-alpha-01"), ("job", "api-server"))
B = (("__name__", "queue_depth"), ("instance", "instance-alpha-01"), ("job", "api-server"))


# Round trips


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_a_batch_decodes_to_exactly_what_was_encoded(batch: SampleBatch) -> None:
    decoded = deliver(CompactEncoder(), CompactSessions(), batch)
    assert canonical(decoded) == canonical(batch)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(batches(max_series=4), min_size=2, max_size=5))
def test_batches_decode_exactly_against_the_state_earlier_batches_left(sequence: list[SampleBatch]) -> None:
    assert_each_decodes_exactly_twice_over(sequence)


@st.composite
def ticks(draw: Any) -> list[SampleBatch]:
    """Batches as a node's scrapes make them: every sample of a batch stamped with one time (the same time
    again, later or earlier than the last batch's), series from one pool in any order and subset, now and
    then a series twice in a tick."""
    pool = node_series(12)
    out = []
    for _ in range(draw(st.integers(2, 6))):
        chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14))
        stamp = draw(st.sampled_from((1_700_000_000_000, 1_700_000_001_000, 1_700_000_002_000, 1_700_000_002_500)))
        out.append(batch_of([(labels, draw(floats), stamp) for labels in chosen]))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks())
def test_ticks_with_one_timestamp_each_decode_exactly(sequence: list[SampleBatch]) -> None:
    assert_each_decodes_exactly_twice_over(sequence)


@st.composite
def interleaved_flushes(draw: Any) -> list[SampleBatch]:
    """Batches as a batcher cuts a flush of several ticks: each series' samples side by side (`grouped`) at the
    flush's few times in time order, series in any order; now and then one series' times differ (a late
    scrape), a time repeats, or the batch is not marked grouped."""
    pool = node_series(9)
    out = []
    for flush in range(draw(st.integers(2, 5))):
        every = draw(st.integers(2, 4))
        times = sorted(draw(st.lists(st.sampled_from((0, 1000, 1003, 2000, 3000)), min_size=every, max_size=every)))
        chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=9, unique=True))
        late = draw(st.integers(-1, len(chosen) - 1))  # -1: none
        rows = []
        for i, labels in enumerate(chosen):
            for k, time in enumerate(times):
                stamp = 1_700_000_000_000 + 10_000 * flush + time + (7 * k if i == late else 0)
                rows.append((labels, draw(floats), stamp))
        out.append(batch_of(rows, grouped=draw(st.booleans())))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleaved_flushes())
def test_flushes_of_interleaved_ticks_decode_exactly(sequence: list[SampleBatch]) -> None:
    assert_each_decodes_exactly_twice_over(sequence)


def test_special_values_come_back_bit_for_bit() -> None:
    specials = [STALE_NAN, float("nan"), 0.0, -0.0, float("inf"), float("-inf"), 5e-324]
    batch = batch_of([(A, value, 1000 * i) for i, value in enumerate(specials)])
    encoder, receiver = CompactEncoder(), CompactSessions()
    assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)
    later = batch_of([(A, value, 100_000 + 1000 * i) for i, value in enumerate(reversed(specials))])
    assert canonical(deliver(encoder, receiver, later)) == canonical(later)


def test_samples_of_a_series_are_decoded_in_time_order_keeping_arrival_order_for_equal_times() -> None:
    batch = batch_of([(A, 3.0, 3000), (B, 9.0, 1000), (A, 1.0, 1000), (A, 2.0, 1000)])
    decoded = deliver(CompactEncoder(), CompactSessions(), batch)
    assert [(v, t) for labels, v, t in zip(decoded.labels, decoded.values, decoded.timestamps) if labels == A] == [
        (1.0, 1000), (2.0, 1000), (3.0, 3000)
    ]


def test_consecutive_scrapes_in_one_batch_decode_exactly() -> None:
    series = node_series(50)
    rows = [(labels, float(i * k), 1_700_000_000_000 + 1000 * k + (i % 3)) for k in range(5)
            for i, labels in enumerate(series)]
    batch = batch_of(rows, start_timestamps=[1_699_999_000_000] * len(rows))
    encoder, receiver = CompactEncoder(), CompactSessions()
    assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)
    assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)


def test_a_snappy_session_decodes_exactly() -> None:
    encoder, receiver = CompactEncoder(codec="snappy"), CompactSessions()
    batch = batch_of([(A, 1.5, 1000), (B, 2.5, 1000)])
    assert encoder.encode(batch).headers["Content-Encoding"] == "snappy"
    assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)


# A session through faults


@st.composite
def recurring_batches(draw: Any) -> list[SampleBatch]:
    """Batches over a small pool of series, so that later batches find earlier ones' definitions and values;
    now and then one with histograms, exemplars and metadata."""
    pool = draw(st.lists(label_sets(), min_size=1, max_size=5, unique=True))
    names = sorted({dict(labels)["__name__"] for labels in pool})
    metadata_choices = [{}, {name: Metadata("counter", "Counts.") for name in names},
                        {name: Metadata("gauge", "Levels.", "By") for name in names[:1]}]
    out = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(batches(max_series=3)))
            continue
        rows = []
        for labels in draw(st.lists(st.sampled_from(pool), min_size=1, unique=True)):
            for stamp in draw(st.lists(st.integers(0, 10_000_000), min_size=1, max_size=3, unique=True)):
                rows.append((labels, draw(floats), stamp))
        rows = draw(st.permutations(rows))
        starts = draw(st.sampled_from([None, 0, 5000]))
        out.append(batch_of(rows, start_timestamps=[starts] * len(rows) if starts is not None else [],
                            metadata=dict(draw(st.sampled_from(metadata_choices)))))
    return out


FAULTS = ("ok", "lost request", "lost answer", "lost answer, next batch", "refused", "receiver restart",
          "session too old")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recurring_batches(), st.lists(st.sampled_from(FAULTS), max_size=30), st.sampled_from([300, 4000, 32 << 20]))
def test_every_batch_is_decoded_exactly_whatever_is_lost_refused_or_restarted(
    sequence: list[SampleBatch], faults: list[str], max_dictionary_bytes: int
) -> None:
    clock = Clock()
    encoder = CompactEncoder(clock=clock, max_dictionary_bytes=max_dictionary_bytes, max_session_age=60.0)
    receiver = CompactSessions(clock=clock, idle_timeout=1e9)
    pending_faults = iter(faults)
    accepted: list[int] = []
    for number, batch in enumerate(sequence):
        for _attempt in range(len(faults) + 2):
            fault = next(pending_faults, "ok")
            if fault == "session too old":
                clock.now += 61.0
            if fault == "receiver restart":
                receiver = CompactSessions(clock=clock, idle_timeout=1e9)
            encoded = encoder.encode(batch)
            if fault == "lost request":
                continue
            try:
                decoded, commit = receiver.decode(raw(encoded), encoded.headers)
            except SessionLost as lost:
                assert is_session_lost(SESSION_LOST_STATUS, str(lost).encode())
                encoder.reset()
                continue
            assert canonical(decoded) == canonical(batch), "decoded differently"
            if fault == "refused":
                continue
            commit()
            accepted.append(number)
            if fault == "lost answer":
                continue  # the sender resends the same batch
            if fault == "lost answer, next batch":
                break  # the receiver has it; the sender moves on without having seen the answer
            assert encoded.commit is not None
            encoded.commit()
            break
        else:
            pytest.fail(f"batch {number} was never accepted")
    assert sorted(set(accepted)) == list(range(len(sequence))), "a batch was lost"


RUNS = st.tuples(st.integers(0, 5), st.integers(1, 6), st.integers(1, 3))
"""A request's samples: (first series, how many series, samples per series), over `node_series(6)`."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(RUNS, st.none() | RUNS), min_size=1, max_size=8))
def test_requests_over_overlapping_runs_of_series_decode_exactly_against_the_values_each_left(
    requests: list[tuple[tuple[int, int, int], tuple[int, int, int] | None]],
) -> None:
    series = node_series(6)

    def run(step: int, first: int, length: int, ticks: int) -> SampleBatch:
        return batch_of([(labels, step * 100.0 + 10 * index + tick, 1000 + 100 * step + tick)
                         for index, labels in enumerate(series[first : first + length]) for tick in range(ticks)])

    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(labels, 0.5, 1000) for labels in series]))
    for step, (sent, lost) in enumerate(requests, 1):
        if lost is not None:  # the receiver commits a request whose answer is lost; the sender sends another instead
            encoded = encoder.encode(run(-step, *lost))
            _, commit = receiver.decode(raw(encoded), encoded.headers)
            commit()
        batch = run(step, *sent)
        assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)


# What the session saves


def test_a_second_request_for_the_same_series_carries_no_label_strings() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000), (B, 2.0, 1000)]))
    second = raw(encoder.encode(batch_of([(A, 2.0, 2000), (B, 3.0, 2000)])))
    for labels in (A, B):
        for name, value in labels:
            assert name.encode() not in second
            assert value.encode() not in second


def test_metadata_strings_travel_once_per_session() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    metadata = {"requests_total": Metadata("counter", "Requests served by the api server.", "")}
    first = batch_of([(A, 1.0, 1000)], metadata=dict(metadata))
    assert b"Requests served" in raw(encoder.encode(first))
    deliver(encoder, receiver, first)
    second = batch_of([(A, 2.0, 2000)], metadata=dict(metadata))
    encoded = encoder.encode(second)
    assert b"Requests served" not in raw(encoded)
    decoded, _ = receiver.decode(raw(encoded), encoded.headers)
    assert decoded.metadata == metadata


def test_metadata_the_same_as_last_time_is_a_flag_and_decodes_to_what_was_sent() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    metadata = {"requests_total": Metadata("counter", "Requests served.", "")}
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)], metadata=dict(metadata)))
    encoded = encoder.encode(batch_of([(A, 2.0, 2000)], metadata=dict(metadata)))
    message = Request.FromString(raw(encoded))
    assert message.metadata_unchanged and not message.metadata
    decoded, _ = receiver.decode(raw(encoded), encoded.headers)
    assert decoded.metadata == metadata
    assert deliver(encoder, receiver, batch_of([(A, 3.0, 3000)])).metadata == {}


def test_a_resend_after_a_lost_answer_gets_the_metadata_from_before_the_lost_request() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    old = {"requests_total": Metadata("counter", "Old help.", "")}
    new = {"requests_total": Metadata("counter", "New help.", "")}
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)], metadata=dict(old)))
    lost = encoder.encode(batch_of([(A, 2.0, 2000)], metadata=dict(new)))
    receiver.decode(raw(lost), lost.headers)[1]()  # committed by the receiver; the answer is lost
    resend = encoder.encode(batch_of([(A, 2.0, 2000)], metadata=dict(old)))
    decoded, _ = receiver.decode(raw(resend), resend.headers)
    assert decoded.metadata == old


def test_values_unchanged_across_requests_cost_almost_nothing_after_zstd() -> None:
    series = node_series(1000)
    encoder, receiver = CompactEncoder(), CompactSessions()
    first = batch_of([(labels, 12345.678 + i, 1_700_000_000_000) for i, labels in enumerate(series)])
    deliver(encoder, receiver, first)
    steady = encoder.encode(batch_of([(labels, 12345.678 + i, 1_700_000_001_000) for i, labels in enumerate(series)]))
    assert len(steady.body) / len(series) < 0.1


def test_a_series_unchanged_since_the_last_request_has_an_all_zero_value_word() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 42.5, 1000)]))
    message = Request.FromString(raw(encoder.encode(batch_of([(A, 42.5, 2000)]))))
    assert list(message.values) == [0]
    assert list(message.timestamps) == [1000]


# The sender's side of the session


def test_a_request_names_its_session_in_headers() -> None:
    encoder = CompactEncoder(sender_id="node-7f3a")
    headers = encoder.encode(batch_of([(A, 1.0, 1000)])).headers
    assert headers == {
        "Content-Type": CONTENT_TYPE,
        "Content-Encoding": "zstd",
        VERSION_HEADER: "1",
        SESSION_HEADER: "node-7f3a",
        EPOCH_HEADER: "1",
        SEQUENCE_HEADER: "1",
    }
    assert CONTENT_TYPE == "application/x-protobuf;proto=headwater.compact.v1.Request"


def test_each_sender_process_gets_a_random_session_id() -> None:
    assert CompactEncoder().sender_id != CompactEncoder().sender_id


def test_an_unacknowledged_request_is_rebuilt_against_the_same_state_with_the_same_sequence() -> None:
    encoder = CompactEncoder()
    batch = batch_of([(A, 1.0, 1000)])
    first, again = encoder.encode(batch), encoder.encode(batch)
    assert raw(first) == raw(again)
    assert first.headers[SEQUENCE_HEADER] == again.headers[SEQUENCE_HEADER] == "1"


def test_an_acknowledged_request_moves_the_sequence_on() -> None:
    encoder = CompactEncoder()
    deliver(encoder, CompactSessions(), batch_of([(A, 1.0, 1000)]))
    assert encoder.encode(batch_of([(A, 1.0, 2000)])).headers[SEQUENCE_HEADER] == "2"


def test_reset_starts_a_new_epoch_at_sequence_one_with_every_series_defined_again() -> None:
    encoder = CompactEncoder()
    deliver(encoder, CompactSessions(), batch_of([(A, 1.0, 1000)]))
    encoder.reset()
    encoded = encoder.encode(batch_of([(A, 1.0, 2000)]))
    assert (encoded.headers[EPOCH_HEADER], encoded.headers[SEQUENCE_HEADER]) == ("2", "1")
    assert b"instance-alpha-01" in raw(encoded)


def test_a_commit_from_before_a_reset_changes_nothing() -> None:
    encoder = CompactEncoder()
    stale = encoder.encode(batch_of([(A, 1.0, 1000)]))
    encoder.reset()
    assert stale.commit is not None
    stale.commit()
    assert encoder.sequence == 1 and encoder.dictionary_bytes == 0


def test_a_session_older_than_max_session_age_starts_a_new_epoch() -> None:
    clock = Clock()
    encoder = CompactEncoder(clock=clock, max_session_age=60.0)
    deliver(encoder, CompactSessions(clock=clock), batch_of([(A, 1.0, 1000)]))
    clock.now += 60.5
    assert encoder.encode(batch_of([(A, 1.0, 2000)])).headers[EPOCH_HEADER] == "2"
    assert encoder.rotations == 1


def test_a_dictionary_past_max_dictionary_bytes_starts_a_new_epoch() -> None:
    encoder = CompactEncoder(max_dictionary_bytes=2000)
    receiver = CompactSessions()
    deliver(encoder, receiver, batch_of([(labels, 1.0, 1000) for labels in node_series(10)]))
    assert encoder.dictionary_bytes > 2000
    encoded = encoder.encode(batch_of([(A, 1.0, 2000)]))
    assert (encoded.headers[EPOCH_HEADER], encoded.headers[SEQUENCE_HEADER]) == ("2", "1")


def test_the_dictionary_estimate_counts_strings_and_entries() -> None:
    encoder = CompactEncoder()
    deliver(encoder, CompactSessions(), batch_of([(A, 1.0, 1000)]))
    strings = sum(len(text) for pair in A for text in pair)
    assert strings + 6 * 32 < encoder.dictionary_bytes < strings + 1000


def test_unsorted_labels_are_refused_by_the_encoder() -> None:
    with pytest.raises(ValueError, match="sorted"):
        CompactEncoder().encode(batch_of([((("job", "x"), ("__name__", "up")), 1.0, 1000)]))


# The receiver's side of the session


def test_an_unknown_session_past_sequence_one_is_lost() -> None:
    encoder, other_receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, other_receiver, batch_of([(A, 1.0, 1000)]))
    encoded = encoder.encode(batch_of([(A, 1.0, 2000)]))
    with pytest.raises(SessionLost, match="^compact session lost"):
        CompactSessions().decode(raw(encoded), encoded.headers)


def test_session_lost_is_a_decode_error_the_sender_recognises_in_a_409() -> None:
    assert issubclass(SessionLost, DecodeError)
    assert is_session_lost(409, b"compact session lost: sender x epoch 1 sequence 4: no such session here")
    assert not is_session_lost(409, b"conflict")
    assert not is_session_lost(400, b"compact session lost")


def test_a_gap_in_the_sequence_is_session_lost() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    encoded = encoder.encode(batch_of([(A, 1.0, 2000)]))
    headers = {**encoded.headers, SEQUENCE_HEADER: "3"}
    with pytest.raises(SessionLost, match="expected sequence 2"):
        receiver.decode(raw(encoded), headers)


def test_a_refused_batch_leaves_the_receiver_state_unchanged() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    before = receiver.bytes_used
    encoded = encoder.encode(batch_of([(A, 2.0, 2000), (B, 3.0, 2000)]))
    receiver.decode(raw(encoded), encoded.headers)  # the gateway answers 429 and never commits
    assert receiver.bytes_used == before
    again, _ = receiver.decode(raw(encoded), encoded.headers)
    assert again.values == [2.0, 3.0]


def test_a_resend_after_a_lost_answer_decodes_against_the_state_before_it_even_with_another_batch() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    lost = encoder.encode(batch_of([(A, 2.0, 2000), (B, 7.0, 2000)]))
    _, commit = receiver.decode(raw(lost), lost.headers)
    commit()  # the receiver has it, the answer never arrives
    other = batch_of([(B, 8.0, 3000), (A, 3.0, 3000)])
    resend = encoder.encode(other)
    assert resend.headers[SEQUENCE_HEADER] == lost.headers[SEQUENCE_HEADER]
    decoded, commit = receiver.decode(raw(resend), resend.headers)
    assert canonical(decoded) == canonical(other)
    commit()
    assert resend.commit is not None
    resend.commit()
    after = batch_of([(A, 4.0, 4000), (B, 9.0, 4000)])
    assert canonical(deliver(encoder, receiver, after)) == canonical(after)


def test_a_newer_epoch_at_sequence_one_replaces_the_session() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    encoder.reset()
    batch = batch_of([(B, 5.0, 2000)])
    assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)
    assert len(receiver) == 1


def test_an_older_epoch_is_session_lost() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    old = encoder.encode(batch_of([(A, 1.0, 1000)]))
    encoder.reset()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    with pytest.raises(SessionLost, match="replaced"):
        receiver.decode(raw(old), old.headers)


# Receiver bounds


def test_a_sender_past_max_bytes_per_sender_is_evicted_counted_and_then_told_its_session_is_lost() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions(max_bytes_per_sender=5000)
    deliver(encoder, receiver, batch_of([(labels, 1.0, 1000) for labels in node_series(40)]))
    assert receiver.evictions == 1 and receiver.bytes_used == 0 and len(receiver) == 0
    encoded = encoder.encode(batch_of([(A, 1.0, 2000)]))
    with pytest.raises(SessionLost):
        receiver.decode(raw(encoded), encoded.headers)


def test_least_recently_used_sessions_are_evicted_past_max_total_bytes() -> None:
    receiver = CompactSessions(max_total_bytes=14000)
    senders = [CompactEncoder(sender_id=f"node-{i}") for i in range(3)]
    for i, encoder in enumerate(senders):
        deliver(encoder, receiver, batch_of([(labels, 1.0, 1000) for labels in node_series(8, host=str(i))]))
    assert receiver.evictions >= 1
    assert receiver.bytes_used <= 14000
    survivor = senders[-1]
    deliver(survivor, receiver, batch_of([(labels, 2.0, 2000) for labels in node_series(8, host="2")]))
    first = senders[0].encode(batch_of([(A, 1.0, 2000)]))
    with pytest.raises(SessionLost):
        receiver.decode(raw(first), first.headers)


def test_bytes_used_grows_with_definitions_not_with_repeated_samples() -> None:
    encoder, receiver = CompactEncoder(), CompactSessions()
    deliver(encoder, receiver, batch_of([(labels, 1.0, 1000) for labels in node_series(20)]))
    used = receiver.bytes_used
    assert used > 20 * 100
    deliver(encoder, receiver, batch_of([(labels, 2.0, 2000) for labels in node_series(20)]))
    assert used <= receiver.bytes_used <= used + 20 * 200  # plus one step of undo


def test_an_idle_session_expires() -> None:
    clock = Clock()
    encoder, receiver = CompactEncoder(clock=clock), CompactSessions(clock=clock, idle_timeout=300.0)
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    clock.now += 301.0
    encoded = encoder.encode(batch_of([(A, 1.0, 2000)]))
    with pytest.raises(SessionLost):
        receiver.decode(raw(encoded), encoded.headers)
    assert receiver.expirations == 1 and receiver.bytes_used == 0


# Malformed requests


def headers_for(sequence: int = 1) -> dict[str, str]:
    return {"Content-Type": CONTENT_TYPE, VERSION_HEADER: "1", SESSION_HEADER: "node-1", EPOCH_HEADER: "1",
            SEQUENCE_HEADER: str(sequence)}


ONE_SERIES = {"symbols": ["__name__", "up"], "series_label_counts": [1], "series_label_refs": [1, 2]}
MALFORMED = {
    "samples of an undefined series": Request(sample_series_ref_deltas=[5], sample_counts=[1], timestamps=[5],
                                              values=[0]),
    "a label of an undefined symbol": Request(symbols=["__name__"], series_label_counts=[1],
                                              series_label_refs=[1, 9]),
    "label refs that do not make pairs": Request(symbols=["__name__", "up"], series_label_counts=[2],
                                                 series_label_refs=[1, 2]),
    "unsorted label names": Request(symbols=["job", "__name__", "x"], series_label_counts=[2],
                                    series_label_refs=[1, 3, 2, 3]),
    "an empty label name": Request(symbols=["x"], series_label_counts=[1], series_label_refs=[0, 1]),
    "more timestamps than the counts say": Request(**ONE_SERIES, sample_series_ref_deltas=[0], sample_counts=[1],
                                                   timestamps=[5, 6], values=[0, 0]),
    "fewer values than timestamps": Request(**ONE_SERIES, sample_series_ref_deltas=[0], sample_counts=[1],
                                            timestamps=[5], values=[]),
    "series refs that do not increase": Request(**ONE_SERIES, sample_series_ref_deltas=[0, 0], sample_counts=[1, 1],
                                                timestamps=[5, 6], values=[0, 0]),
    "a count of zero": Request(**ONE_SERIES, sample_series_ref_deltas=[0], sample_counts=[0], timestamps=[],
                               values=[]),
    "start timestamps for only some samples": Request(**ONE_SERIES, sample_series_ref_deltas=[0], sample_counts=[2],
                                                      timestamps=[5, 1], values=[0, 0], start_timestamps=[1]),
    "a histogram of an undefined series": Request(histograms=[HistogramSample(series_ref=3, count_int=1)]),
    "metadata as before in a session without any": Request(metadata_unchanged=True),
    "a series defined twice": Request(symbols=["__name__", "up"], series_label_counts=[1, 1],
                                      series_label_refs=[1, 2, 1, 2]),
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_a_malformed_body_is_refused(what: str) -> None:
    with pytest.raises(DecodeError, match="^compact: ") as refused:
        CompactSessions().decode(MALFORMED[what].SerializeToString(), headers_for())
    assert not isinstance(refused.value, SessionLost)


def test_a_body_that_is_not_protobuf_is_refused() -> None:
    with pytest.raises(DecodeError, match="not a headwater.compact.v1.Request"):
        CompactSessions().decode(b"\xff\xff\xff\xff", headers_for())


@pytest.mark.parametrize(
    "change",
    [
        {VERSION_HEADER: "2"},
        {SEQUENCE_HEADER: "one"},
        {EPOCH_HEADER: "-1"},
        {SEQUENCE_HEADER: "0"},
        {SESSION_HEADER: ""},
        {"Content-Type": "application/x-protobuf"},
    ],
)
def test_bad_session_headers_are_refused(change: dict[str, str]) -> None:
    with pytest.raises(DecodeError, match="^compact: "):
        CompactSessions().decode(b"", {**headers_for(), **change})


def test_headers_are_read_whatever_their_case() -> None:
    encoded = CompactEncoder().encode(batch_of([(A, 1.0, 1000)]))
    lowered = {name.lower(): value for name, value in encoded.headers.items()}
    decoded, _ = CompactSessions().decode(raw(encoded), lowered)
    assert decoded.values == [1.0]


def test_a_malformed_request_leaves_the_session_as_it_was() -> None:
    encoder, receiver = CompactEncoder(sender_id="node-1"), CompactSessions()
    deliver(encoder, receiver, batch_of([(A, 1.0, 1000)]))
    with pytest.raises(DecodeError):
        receiver.decode(MALFORMED["samples of an undefined series"].SerializeToString(), headers_for(sequence=2))
    batch = batch_of([(A, 2.0, 2000)])
    assert canonical(deliver(encoder, receiver, batch)) == canonical(batch)


def test_a_series_defined_again_in_a_later_request_is_refused_and_the_session_is_unchanged() -> None:
    receiver = CompactSessions()
    first = Request(**ONE_SERIES, sample_series_ref_deltas=[0], sample_counts=[1], timestamps=[5], values=[0])
    _, commit = receiver.decode(first.SerializeToString(), headers_for(1))
    commit()
    again = Request(series_label_counts=[1], series_label_refs=[1, 2])  # the same labels, a second ref
    used = receiver.bytes_used

    with pytest.raises(DecodeError, match="defined twice"):
        receiver.decode(again.SerializeToString(), headers_for(2))

    assert receiver.bytes_used == used
    later = Request(sample_series_ref_deltas=[0], sample_counts=[1], timestamps=[1], values=[0])
    decoded, _ = receiver.decode(later.SerializeToString(), headers_for(2))
    assert decoded.labels == [(("__name__", "up"),)]


def test_a_decoded_request_is_marked_grouped_one_run_per_series_in_time_order() -> None:
    decoded = deliver(CompactEncoder(), CompactSessions(),
                      batch_of([(A, 1.0, 2000), (B, 2.0, 1000), (A, 3.0, 1000), (B, 4.0, 2000)]))

    assert decoded.grouped
    runs = [labels for i, labels in enumerate(decoded.labels) if i == 0 or decoded.labels[i - 1] is not labels]
    assert len(runs) == len(set(runs)) == 2
    assert [t for labels, t in zip(decoded.labels, decoded.timestamps) if labels == A] == [1000, 2000]


def test_a_request_whose_series_falls_back_in_time_is_decoded_as_sent_but_not_marked_grouped() -> None:
    falling = Request(**ONE_SERIES, sample_series_ref_deltas=[0], sample_counts=[2], timestamps=[10, -15],
                      values=[0, 0])

    decoded, _ = CompactSessions().decode(falling.SerializeToString(), headers_for())

    assert decoded.timestamps == [10, 5]
    assert not decoded.grouped
