"""When the sender may send: the byte-rate token bucket and the circuit breaker with Retry-After pauses, on an
injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from exporters.sending.breaker import CircuitBreaker, TokenBucket


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- TokenBucket ----------------------------------------------------------------------------------------


def test_rate_zero_is_unlimited_whatever_the_size() -> None:
    bucket = TokenBucket(0, 0, FakeClock())
    assert bucket.unlimited
    assert [bucket.delay(10**9) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_the_bucket_starts_full_so_a_first_burst_goes_at_once() -> None:
    bucket = TokenBucket(1000, 5000, FakeClock())
    assert [bucket.delay(1000) for _ in range(5)] == [0.0] * 5


def test_past_the_burst_each_request_waits_for_its_bytes_in_the_order_asked() -> None:
    bucket = TokenBucket(1000, 5000, FakeClock())
    assert bucket.delay(5000) == 0.0
    assert bucket.delay(1000) == pytest.approx(1.0)
    assert bucket.delay(500) == pytest.approx(1.5)  # reserved behind the first, before anyone slept


def test_the_bucket_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, 5000, clock)
    bucket.delay(5000)
    clock.advance(2.0)
    assert bucket.delay(2000) == 0.0
    assert bucket.delay(1000) == pytest.approx(1.0)
    clock.advance(3600.0)
    assert bucket.delay(5000) == 0.0
    assert bucket.delay(1) == pytest.approx(0.001)


def test_a_request_larger_than_the_burst_goes_once_the_bucket_is_full() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, 5000, clock)
    assert bucket.delay(20_000) == 0.0  # full now: it goes, never wedged
    assert bucket.delay(20_000) == pytest.approx(20.0)  # 15,000 of debt, then a full bucket again
    clock.advance(20.0)
    assert bucket.delay(1000) == pytest.approx(16.0)  # the second one's 15,000 of debt, then its own 1,000


def test_over_many_requests_the_average_rate_holds() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10_000, 20_000, clock)
    sizes = [3_000, 50_000, 700, 12_000, 9_999] * 40
    for size in sizes:
        clock.advance(bucket.delay(size))  # the sender sleeps, then sends
    sent_after_burst = sum(sizes) - 20_000
    assert clock.now - 1000.0 == pytest.approx(sent_after_burst / 10_000, rel=0.01)


def test_a_clock_stepping_back_adds_no_bytes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, 1000, clock)
    bucket.delay(1000)
    clock.advance(-50.0)
    assert bucket.delay(1000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rate", "burst", "field"),
    [(-1.0, 100, "rate_bytes_per_second"), (float("inf"), 100, "rate_bytes_per_second"), (100.0, 0, "burst_bytes")],
)
def test_bucket_arguments_are_checked_naming_the_argument(rate: float, burst: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TokenBucket(rate, burst, FakeClock())


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="nbytes"):
        TokenBucket(100, 100, FakeClock()).delay(-1)


# --- CircuitBreaker -------------------------------------------------------------------------------------


def opened(clock: FakeClock, threshold: int = 3, probe_interval: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, probe_interval, clock)
    for _ in range(threshold):
        breaker.record_failure()
    return breaker


def test_a_closed_breaker_lets_every_request_go() -> None:
    breaker = CircuitBreaker(3, 10.0, FakeClock())
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(100))
    assert breaker.wait() == 0.0


def test_failures_below_the_threshold_or_not_in_a_row_keep_it_closed() -> None:
    breaker = CircuitBreaker(3, 10.0, FakeClock())
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert not breaker.is_open
    assert breaker.allow()


def test_the_threshold_of_failures_in_a_row_opens_it_and_the_first_probe_waits_an_interval() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    assert breaker.is_open
    assert not breaker.allow()
    assert breaker.wait() == pytest.approx(10.0)
    clock.advance(4.0)
    assert not breaker.allow()
    assert breaker.wait() == pytest.approx(6.0)


def test_while_open_one_probe_goes_per_interval() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    granted = []
    for _ in range(100):  # 50 s in steps of half a second
        clock.advance(0.5)
        granted.append(breaker.allow())
    assert sum(granted) == 5
    assert not breaker.allow()
    assert 0.0 < breaker.wait() <= 10.0


def test_a_failed_probe_waits_a_whole_interval_from_its_failure() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(10.0)
    assert breaker.allow()
    clock.advance(7.0)  # the probe took 7 s to fail
    breaker.record_failure()
    assert breaker.is_open
    assert breaker.wait() == pytest.approx(10.0)


def test_a_success_closes_it() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(10))
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.is_open  # the count starts again


def test_a_pause_holds_every_request_even_when_closed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.pause_until(clock.now + 120.0)  # Retry-After: 120, longer than any backoff
    assert not breaker.is_open
    assert not breaker.allow()
    assert breaker.wait() == pytest.approx(120.0)
    assert breaker.paused_until == pytest.approx(clock.now + 120.0)
    clock.advance(119.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.paused_until is None


def test_a_pause_longer_than_the_probe_interval_holds_the_probe_too() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    breaker.pause_until(clock.now + 30.0)
    clock.advance(10.0)
    assert not breaker.allow()
    assert breaker.wait() == pytest.approx(20.0)
    clock.advance(20.0)
    assert breaker.allow()  # the probe, once the pause is over
    assert not breaker.allow()


def test_a_later_shorter_pause_never_shortens_one_in_effect() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.pause_until(clock.now + 60.0)
    breaker.pause_until(clock.now + 5.0)
    assert breaker.wait() == pytest.approx(60.0)


def test_a_pause_in_the_past_changes_nothing() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.pause_until(clock.now - 5.0)
    assert breaker.allow()
    assert breaker.wait() == 0.0


@pytest.mark.parametrize(
    ("threshold", "interval", "field"),
    [(0, 10.0, "failure_threshold"), (3, 0.0, "probe_interval"), (3, float("nan"), "probe_interval")],
)
def test_breaker_arguments_are_checked_naming_the_argument(threshold: int, interval: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CircuitBreaker(threshold, interval, FakeClock())
