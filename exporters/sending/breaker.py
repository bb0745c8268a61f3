"""Whether and when the sender's next request may go: a circuit breaker that also keeps Retry-After pauses,
and a byte-rate token bucket.

`control.py` decides how hard to push; this decides when not to push at all. Both classes read time only
through an injected `clock` (monotonic seconds) and never sleep: they say how long to wait, and the sender
waits in its own loop (interruptibly, so shutdown never sits out a pause). They are not thread-safe; the
sender uses them from its event loop. Retry backoff per request is `exporters.retry.RetryPolicy.backoff`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["CircuitBreaker", "TokenBucket"]


class TokenBucket:
    """Limits the bytes sent to an endpoint to `rate_bytes_per_second` on average, with bursts of up to
    `burst_bytes`. Rate 0 means unlimited.

    Use: `await sleep(bucket.delay(len(body)))` before each request. `delay` reserves the bytes at once, so
    requests asking one after another are spaced out in the order they asked, even before the first has
    slept. The bucket starts full. A request larger than the burst waits for a full bucket and then goes,
    leaving the bucket in debt: the ones after it wait for the debt to be paid, so the average rate holds
    and no request size ever wedges the sender.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate_bytes_per_second: float, burst_bytes: int, clock: Callable[[], float]) -> None:
        if not 0.0 <= rate_bytes_per_second < math.inf:
            raise ValueError(f"rate_bytes_per_second must be >= 0 (0 = unlimited), got {rate_bytes_per_second!r}")
        if rate_bytes_per_second > 0 and burst_bytes < 1:
            raise ValueError(f"burst_bytes must be >= 1 when a rate is set, got {burst_bytes!r}")
        self._rate = float(rate_bytes_per_second)
        self._burst = float(burst_bytes)
        self._clock = clock
        self._tokens = self._burst  # may go negative: bytes reserved ahead of the refill
        self._last = clock()

    @property
    def unlimited(self) -> bool:
        return self._rate == 0.0

    def delay(self, nbytes: int) -> float:
        """Seconds to wait before sending `nbytes` (0.0 when it may go now, always 0.0 when unlimited); the
        bytes are reserved, so call it once per request, right before waiting and sending."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        if self.unlimited:
            return 0.0
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)
        self._last = max(self._last, now)
        wait = max(0.0, (min(float(nbytes), self._burst) - self._tokens) / self._rate)
        self._tokens -= nbytes
        return wait


class CircuitBreaker:
    """Stops sending to an endpoint that keeps failing, and holds every request while the receiver asked us
    to wait.

    Use: before each request, `if not breaker.allow(): await sleep(breaker.wait())`; after it,
    `record_success()` or `record_failure()` (retryable failures: network, timeout, 5xx). A 429 or a 503 with
    Retry-After is not a failure of the endpoint: call `pause_until(now + retry_after)` instead, however long.

    Closed, every request may go. After `failure_threshold` failures in a row it opens: then `allow()` grants
    one probe at most every `probe_interval` seconds and refuses the rest, so a dead endpoint costs one
    request per interval instead of a retry storm. Any success closes it. A pause overrides both states: no
    request before its end, and a later pause never shortens an earlier one.
    """

    __slots__ = ("_clock", "_failures", "_next_probe", "_open", "_paused_until", "_probe_interval", "_threshold")

    def __init__(self, failure_threshold: int, probe_interval: float, clock: Callable[[], float]) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if not 0.0 < probe_interval < math.inf:
            raise ValueError(f"probe_interval must be a positive number of seconds, got {probe_interval!r}")
        self._threshold = failure_threshold
        self._probe_interval = float(probe_interval)
        self._clock = clock
        self._failures = 0
        self._open = False
        self._next_probe = -math.inf
        self._paused_until = -math.inf

    @property
    def is_open(self) -> bool:
        """Whether the endpoint is treated as down (only probes go)."""
        return self._open

    @property
    def paused_until(self) -> float | None:
        """The clock time before which nothing goes, if a pause is still ahead."""
        return self._paused_until if self._paused_until > self._clock() else None

    def allow(self) -> bool:
        """Whether a request may go now. While open, True grants the probe and starts the next interval."""
        now = self._clock()
        if now < self._paused_until:
            return False
        if not self._open:
            return True
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval
        return True

    def wait(self) -> float:
        """Seconds until `allow()` can next be True: 0.0 when it can be now."""
        now = self._clock()
        until = max(self._paused_until, self._next_probe if self._open else -math.inf)
        return max(0.0, until - now)

    def record_success(self) -> None:
        """A request was acknowledged: the endpoint works. Closes the breaker."""
        self._failures = 0
        self._open = False

    def record_failure(self) -> None:
        """A request failed retryably. The `failure_threshold`-th in a row opens the breaker; the first probe
        goes `probe_interval` after it. A failed probe waits a whole interval from its failure."""
        self._failures += 1
        if self._failures < self._threshold:
            return
        # Opening, or a failed probe (or a request from before opening): a whole interval from now.
        self._next_probe = max(self._next_probe, self._clock() + self._probe_interval)
        self._open = True

    def pause_until(self, t: float) -> None:
        """No request before clock time `t`, open or closed (the receiver's Retry-After). Extends, never
        shortens, a pause already in effect."""
        self._paused_until = max(self._paused_until, t)
