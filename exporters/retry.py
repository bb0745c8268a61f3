"""How long to wait before sending again: jittered exponential backoff and the server's Retry-After.

The sender (`exporters.sending.sender`) does the retrying for every exporter; this module only holds the
arithmetic, so it is tested without a clock.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff from `initial_backoff` doubling to `max_backoff` seconds. `max_elapsed` is the OTLP trace
    exporter's deadline for one batch (its queue lives in memory); remote write ignores it."""

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
