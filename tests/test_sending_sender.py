"""The sender link alone: a memory queue, a scripted `deliver` in place of the connection, virtual time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exporters.errors import Duplicate, NetworkError, PermanentError, RetryableError, ThrottledError
from exporters.retry import RetryPolicy
from exporters.sending.memory_queue import MemoryQueue
from exporters.sending.queue import Entry
from exporters.sending.sender import Sender, SenderSettings
from tests.virtual_time import VirtualTime

EPOCH = 1_700_000_000.0
BACKOFF = RetryPolicy(initial_backoff=1.0, max_backoff=8.0)


@dataclass
class Endpoint:
    """A scripted receiver: answers from `script` (an exception to raise, or None for success) in order, then
    succeeds; records what arrived when, and how many requests were in flight at once."""

    time: VirtualTime
    script: list[Exception | None] = field(default_factory=list)
    latency: float = 0.0
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    overlaps: list[tuple[str, str]] = field(default_factory=list)
    _flying: set[str] = field(default_factory=set)

    async def deliver(self, item: str) -> str:
        self.arrivals.append((self.time.now, item))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.overlaps += [(other, item) for other in self._flying]
        self._flying.add(item)
        try:
            if self.latency:
                await self.time.sleep(self.latency)
            answer = self.script.pop(0) if self.script else None
            if answer is not None:
                raise answer
            return f"ok {item}"
        finally:
            self.in_flight -= 1
            self._flying.discard(item)


@dataclass
class Harness:
    time: VirtualTime
    endpoint: Endpoint
    queue: MemoryQueue[str]
    sender: Sender[str]
    outcomes: list[tuple[str, str, str]]
    reader: InMemoryMetricReader
    groups: dict[int, int]

    def put(self, item: str, *, age: float = 0.0, group: int = 0, count: int = 10) -> Entry[str]:
        entry = self.queue.put(item, len(item), EPOCH + self.time.now - age, count)
        if group:
            self.groups[entry.seq] = group
        return entry

    def done(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.outcomes) >= n

    def metric(self, name: str, **attributes: str) -> float:
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for point in m.data.data_points:
                            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                                return point.value
        raise KeyError(name)


class SlowReadQueue(MemoryQueue[str]):
    """A memory queue whose `get` takes `read_time` of virtual time once it has entries to hand out, as a disk
    queue reading an outage's backlog back does."""

    def __init__(self, time: VirtualTime, read_time: float) -> None:
        super().__init__(1 << 20)
        self.time = time
        self.read_time = read_time

    async def get(self, max_entries: int, max_bytes: int) -> list[Entry[str]]:
        entries = await super().get(max_entries, max_bytes)
        if entries:
            await self.time.sleep(self.read_time)
        return entries


def harness(settings: SenderSettings | None = None, *, restored_below: int = 0,
            concurrency: int | None = None, read_time: float = 0.0) -> Harness:
    time = VirtualTime()
    endpoint = Endpoint(time)
    queue: MemoryQueue[str] = SlowReadQueue(time, read_time) if read_time else MemoryQueue(1 << 20)
    outcomes: list[tuple[str, str, str]] = []
    groups: dict[int, int] = {}
    reader = InMemoryMetricReader()
    sender = Sender(
        "test", queue, deliver=endpoint.deliver,
        settings=settings or SenderSettings(retry=BACKOFF, control_interval=1e9),
        on_outcome=lambda entry, outcome, reason, _answer: outcomes.append((entry.item, outcome, reason)),
        backlog=lambda: queue.count, group_of=lambda entry: groups.get(entry.seq, 0),
        restored_below=restored_below, clock=time.clock, wall_clock=lambda: EPOCH + time.now, sleep=time.sleep,
        meter=MeterProvider(metric_readers=[reader]).get_meter("test"))
    if concurrency is not None:
        sender.concurrency = concurrency
    return Harness(time, endpoint, queue, sender, outcomes, reader, groups)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


# -- delivery and order --------------------------------------------------------------------------------------


def test_entries_are_delivered_in_order_and_acknowledged() -> None:
    async def scenario() -> None:
        h = harness()
        for item in "abc":
            h.put(item)
        await h.sender.start()
        await h.time.run_until(h.done(3))
        assert [item for _, item in h.endpoint.arrivals] == ["a", "b", "c"]
        assert h.outcomes == [("a", "sent", ""), ("b", "sent", ""), ("c", "sent", "")]
        assert len(h.queue) == 0
        await h.sender.stop(0)
    run(scenario)


def test_entries_of_one_group_are_in_flight_together_and_the_next_group_waits_for_them() -> None:
    async def scenario() -> None:
        h = harness(concurrency=4)
        h.endpoint.latency = 1.0
        for item in ("a1", "a2", "a3"):
            h.put(item, group=1)
        for item in ("b1", "b2"):
            h.put(item, group=2)
        await h.sender.start()
        await h.time.run_until(h.done(5))
        assert h.endpoint.most_in_flight == 3
        assert all(x[0] == y[0] for x, y in h.endpoint.overlaps), h.endpoint.overlaps  # never a1 with b1
        assert [item for _, item in h.endpoint.arrivals][3:] == ["b1", "b2"]
        await h.sender.stop(0)
    run(scenario)


def test_entries_without_a_group_go_one_at_a_time_whatever_the_concurrency() -> None:
    async def scenario() -> None:
        h = harness(concurrency=4)
        h.endpoint.latency = 1.0
        for item in "abcd":
            h.put(item)
        await h.sender.start()
        await h.time.run_until(h.done(4))
        assert h.endpoint.most_in_flight == 1
        await h.sender.stop(0)
    run(scenario)


# -- retry classes ---------------------------------------------------------------------------------------------


def test_a_refused_request_is_dropped_and_counted_and_the_rest_is_delivered() -> None:
    async def scenario() -> None:
        h = harness()
        h.endpoint.script = [None, PermanentError("HTTP 400: bad label")]
        for item in "abc":
            h.put(item)
        await h.sender.start()
        await h.time.run_until(h.done(3))
        assert h.outcomes == [("a", "sent", ""), ("b", "dropped", "rejected"), ("c", "sent", "")]
        assert h.metric("headwater_sender_dropped_samples", reason="rejected") == 10
        await h.sender.stop(0)
    run(scenario)


def test_network_errors_and_5xx_are_retried_for_as_long_as_the_data_is_young_enough() -> None:
    async def scenario() -> None:
        h = harness()
        h.endpoint.script = [NetworkError("refused")] * 30 + [RetryableError("HTTP 500: oops")] * 30
        h.put("a")
        await h.sender.start()
        await h.time.run_until(h.done(1))
        assert h.outcomes == [("a", "sent", "")]
        assert len(h.endpoint.arrivals) == 61
        assert h.metric("headwater_sender_retries", reason="network") == 30
        assert h.metric("headwater_sender_retries", reason="server") == 30
        await h.sender.stop(0)
    run(scenario)


def test_data_older_than_the_sample_age_limit_is_dropped_instead_of_retried_further() -> None:
    async def scenario() -> None:
        h = harness(SenderSettings(retry=BACKOFF, sample_age_limit=60.0, control_interval=1e9))
        h.endpoint.script = [NetworkError("refused")] * 1000
        h.put("old", age=30.0)
        await h.sender.start()
        await h.time.run_until(h.done(1))
        assert h.outcomes == [("old", "dropped", "too_old")]
        assert all(at - 1_000.0 <= 30.0 + 8.0 for at, _ in h.endpoint.arrivals)
        assert h.metric("headwater_sender_dropped_samples", reason="too_old") == 10
        await h.sender.stop(0)
    run(scenario)


def test_no_request_goes_before_a_retry_after_however_long_and_nothing_is_lost() -> None:
    async def scenario() -> None:
        h = harness()
        h.endpoint.script = [ThrottledError("HTTP 429", retry_after=120.0)]
        for item in "abc":
            h.put(item)
        await h.sender.start()
        await h.time.run_until(h.done(3))
        first, *rest = h.endpoint.arrivals
        assert all(at >= first[0] + 120.0 - 1e-9 for at, _ in rest)
        assert [item for _, item in h.endpoint.arrivals] == ["a", "a", "b", "c"]
        assert [o for _, o, _ in h.outcomes] == ["sent"] * 3
        assert h.metric("headwater_sender_retries", reason="throttled") == 1
        await h.sender.stop(0)
    run(scenario)


def test_after_repeated_failures_the_circuit_opens_and_the_endpoint_is_probed_every_max_backoff() -> None:
    async def scenario() -> None:
        h = harness(SenderSettings(retry=RetryPolicy(initial_backoff=0.1, max_backoff=8.0), breaker_failures=3,
                                   control_interval=1e9))
        h.endpoint.script = [NetworkError("refused")] * 8
        h.put("a")
        await h.sender.start()
        await h.time.run_until(lambda: len(h.endpoint.arrivals) >= 6)
        assert h.metric("headwater_sender_circuit_open") == 1
        probes = [at for at, _ in h.endpoint.arrivals[3:]]
        assert all(b - a >= 8.0 - 1e-9 for a, b in zip(probes, probes[1:]))
        await h.time.run_until(h.done(1))
        assert h.metric("headwater_sender_circuit_open") == 0
        await h.sender.stop(0)
    run(scenario)


def test_a_duplicate_refusal_after_an_attempt_that_got_no_answer_counts_as_delivered() -> None:
    async def scenario() -> None:
        h = harness()
        h.endpoint.script = [NetworkError("timeout"), Duplicate("HTTP 400: duplicate sample for timestamp")]
        h.put("a")
        await h.sender.start()
        await h.time.run_until(h.done(1))
        assert h.outcomes == [("a", "sent", "")]
        await h.sender.stop(0)
    run(scenario)


def test_a_duplicate_refusal_of_a_request_queued_before_a_restart_counts_as_delivered() -> None:
    async def scenario() -> None:
        h = harness(restored_below=1)
        h.endpoint.script = [Duplicate("HTTP 400: out of order sample"), Duplicate("HTTP 400: out of order sample")]
        h.put("restored")
        h.put("fresh")
        await h.sender.start()
        await h.time.run_until(h.done(2))
        assert h.outcomes == [("restored", "sent", ""), ("fresh", "dropped", "rejected")]
        await h.sender.stop(0)
    run(scenario)


def test_a_byte_rate_limit_spaces_requests_out() -> None:
    async def scenario() -> None:
        h = harness(SenderSettings(retry=BACKOFF, max_bytes_per_second=1000, batch_bytes=1000, control_interval=1e9))
        for item in ("x" * 1000, "y" * 1000, "z" * 1000):
            h.put(item)
        await h.sender.start()
        await h.time.run_until(h.done(3))
        times = [at for at, _ in h.endpoint.arrivals]
        assert times[2] - times[0] >= 1.0 - 1e-9
        await h.sender.stop(0)
    run(scenario)


# -- shutdown -------------------------------------------------------------------------------------------------


def test_stop_drains_what_the_queue_holds_before_the_deadline() -> None:
    async def scenario() -> None:
        h = harness()
        for item in "ab":
            h.put(item)
        await h.sender.start()
        await h.sender.stop(5.0)
        assert [o for _, o, _ in h.outcomes] == ["sent", "sent"]
        assert len(h.queue) == 0
    run(scenario)


def test_stop_at_the_deadline_gives_unfinished_entries_back_to_the_queue_in_order() -> None:
    async def scenario() -> None:
        h = harness()
        h.endpoint.script = [NetworkError("refused")] * 100
        for item in "abc":
            h.put(item)
        await h.sender.start()
        await h.time.run_until(lambda: len(h.endpoint.arrivals) >= 2)
        await h.sender.stop(0.01)
        assert h.outcomes == []
        assert len(h.queue) == 3
        assert [e.item for e in await h.queue.get(10, 1 << 20)] == ["a", "b", "c"]
    run(scenario)


# -- control --------------------------------------------------------------------------------------------------


def test_concurrency_rises_while_a_backlog_waits_on_a_slow_parallel_receiver_and_falls_once_it_drained() -> None:
    async def scenario() -> None:
        h = harness(SenderSettings(retry=BACKOFF, max_concurrency=8, control_interval=1.0))
        h.endpoint.latency = 0.5
        group = 1
        for i in range(400):  # 400 requests of 10 samples, 8 per cut: a backlog a single request at a time drains in 200 s
            if i % 8 == 0:
                group += 1
            h.put(f"r{i}", group=group)
        await h.sender.start()
        peak = 0

        def drained() -> bool:
            nonlocal peak
            peak = max(peak, h.sender.concurrency)
            return len(h.outcomes) >= 400

        await h.time.run_until(drained)
        assert peak >= 4
        assert h.endpoint.most_in_flight >= 4
        await h.time.advance(30.0)
        assert h.sender.concurrency <= 2
        await h.sender.stop(0)
    run(scenario)


def test_concurrency_rises_while_a_backlog_waits_even_when_each_round_is_read_back_slowly() -> None:
    """After an outage the backlog is read back from disk between rounds. At one request at a time that reading
    leaves the slot without a request in flight for a while (here 0.2 s of every 0.7 s), which is not a lack of
    work: it must count as busy, or the controller sees the slots "not full" and never grows (it stayed at 1
    through a 9M-sample backlog in bench/outage.py with a 50 ms receiver)."""
    async def scenario() -> None:
        h = harness(SenderSettings(retry=BACKOFF, max_concurrency=8, control_interval=1.0), read_time=0.2)
        h.endpoint.latency = 0.5
        group = 1
        for i in range(400):
            if i % 8 == 0:
                group += 1
            h.put(f"r{i}", group=group)
        await h.sender.start()
        peak = 0

        def drained() -> bool:
            nonlocal peak
            peak = max(peak, h.sender.concurrency)
            return len(h.outcomes) >= 400

        await h.time.run_until(drained)
        assert peak >= 4
        assert h.endpoint.most_in_flight >= 4
        await h.sender.stop(0)
    run(scenario)


def test_reading_waiting_entries_back_counts_as_busy_and_waiting_for_a_put_does_not() -> None:
    async def scenario() -> None:
        h = harness(SenderSettings(retry=BACKOFF, control_interval=1e9), read_time=0.2)
        h.endpoint.latency = 0.3
        h.put("a")
        h.put("b")
        await h.sender.start()
        h.sender.adapt()  # the window starts with two entries waiting
        await h.time.run_until(h.done(2))  # each: 0.2 s read back, 0.3 s in flight
        await h.time.advance(10.0 - 1.0)  # then waiting for a put: idle
        h.sender.adapt()
        window = h.sender._previous
        assert window is not None
        assert window.duration == pytest.approx(10.0)
        assert window.busy == pytest.approx(0.1)
        h.put("c")  # arrives while the sender waits in get: only its 0.3 s in flight is busy
        await h.time.run_until(h.done(3))
        await h.time.advance(10.0 - 0.5)
        h.sender.adapt()
        assert h.sender._previous.busy == pytest.approx(0.03)
        await h.sender.stop(0)
    run(scenario)


def test_each_control_decision_is_logged_at_debug_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        h = harness(SenderSettings(retry=BACKOFF, control_interval=1e9))
        h.put("a")
        with caplog.at_level(logging.DEBUG, logger="headwater.exporters.sender"):
            h.sender.adapt()
        await h.sender.stop(0)
    run(scenario)
    assert any("concurrency 1 -> 1 (no-measurement)" in r.getMessage() and "batch 10000 -> 10000 (no-measurement)"
               in r.getMessage() for r in caplog.records)
