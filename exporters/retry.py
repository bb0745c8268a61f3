"""Retrying a send: one deadline, jittered exponential backoff, the server's Retry-After honoured.

Shared by every exporter that sends over HTTP. The wait is interruptible: `stop` (an asyncio.Event) ends a
backoff early, so shutdown never sits out a 30 s sleep.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from exporters.errors import PermanentError, RetryableError, ThrottledError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff from `initial_backoff` doubling to `max_backoff` seconds; give up `max_elapsed` seconds after the
    first attempt."""

    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_elapsed: float = 300.0

    def __post_init__(self) -> None:
        if self.initial_backoff <= 0:
            raise ValueError(f"initial_backoff must be positive, got {self.initial_backoff}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(f"max_backoff ({self.max_backoff}) must be at least initial_backoff ({self.initial_backoff})")
        if self.max_elapsed < 0:
            raise ValueError(f"max_elapsed must not be negative, got {self.max_elapsed}")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before retry number `attempt` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return (rng or random).uniform(cap / 2, cap)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def raise_for_status(status: int, headers: Mapping[str, str], body: str) -> None:
    """Map an HTTP answer to the error type that says what to do with the batch; 2xx returns."""
    if 200 <= status < 300:
        return
    detail = f"HTTP {status}: {body.strip()[:512]}" if body.strip() else f"HTTP {status}"
    if status in (429, 503):
        raise ThrottledError(detail, parse_retry_after(headers.get("Retry-After")))
    if status in RETRYABLE_STATUSES:
        raise RetryableError(detail)
    raise PermanentError(detail)


async def send_with_retry(
    attempt: Callable[[], Awaitable[None]],
    policy: RetryPolicy,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[RetryableError, float], None] | None = None,
) -> None:
    """Call `attempt` until it succeeds. Raises PermanentError at once; raises the last RetryableError once the
    next wait would pass `max_elapsed`, or when `stop` is set."""
    start = clock()
    n = 0
    while True:
        n += 1
        try:
            await attempt()
            return
        except PermanentError:
            raise
        except RetryableError as exc:
            delay = policy.backoff(n)
            if isinstance(exc, ThrottledError) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            if clock() - start + delay > policy.max_elapsed or (stop is not None and stop.is_set()):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
                if stop.is_set():
                    raise
