"""Dynamic sampling rates: hold kept spans near a budget, cutting the lowest tier first and P0 last.

Why this shape: like Prometheus' resharding arithmetic, the decisions are small pure functions of observed
rates (`allocate`, `key_rates`), tested by tables; the only state is a few moving averages
(`BudgetController`), and time is always passed in, never read, so a simulation runs ten minutes of traffic
in milliseconds.

- `Ewma` smooths arrivals over tens of seconds (not one-second buckets), so a burst does not whipsaw rates.
- `allocate` is the waterfall: forced keeps first, then P0 up to its configured rate, then P1, and so on;
  whatever a higher tier leaves unused flows down, never lifting a tier above its configured rate.
- `BudgetController` feeds the estimates to `allocate` and corrects its own estimation error (traces kept
  whole, late spans) by the ratio of the spans it expected to keep to the spans actually kept.
- `key_rates` spreads a tier's rate over keys so rare keys are kept more often while the tier average holds.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["BudgetController", "Ewma", "allocate", "key_rates"]

DEFAULT_WINDOW = 30.0
"""Seconds: the time constant of the moving averages; the issue asks for tens of seconds."""


def _check_window(window: float) -> None:
    if not 0.0 < window < math.inf:
        raise ValueError(f"window must be a positive number of seconds, got {window!r}")


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {rate!r}")


class Ewma:
    """An exponentially weighted moving average of an event rate (events per second) over irregular times.

    Call `observe(count, now)` with the events seen since the previous call; read `rate(now)`. Times come
    from the caller's clock (monotonic seconds), so tests inject them. Each interval of length dt blends in
    its own rate count/dt with weight alpha = 1 - exp(-dt / window): the continuous-time form, so the result
    does not depend on how often the caller observes. Batches stamped with the same time as the previous one
    (several in one clock tick) join the interval that ended then. The first call only starts the clock (its
    count belongs to an interval nobody saw) unless `start` is given. Until a full window has passed, the
    average is normalised by the share of the window seen so far, so a constant rate reads right from the
    first interval instead of creeping up from zero (the bias correction Adam uses for its moments).
    """

    __slots__ = ("_last", "_last_gain", "_pending", "_value", "_weight", "_window")

    def __init__(self, window: float = DEFAULT_WINDOW, start: float | None = None) -> None:
        _check_window(window)
        self._window = window
        self._last = start
        self._value = 0.0  # the weighted rate, not yet normalised by _weight
        self._weight = 0.0  # 1 - exp(-elapsed / window): how much of the window the history covers
        self._last_gain = 0.0  # alpha / dt of the last interval: what one more event in it adds to _value
        self._pending = 0.0  # events seen before any interval closed (same tick as the start)

    @property
    def window(self) -> float:
        """The time constant in seconds."""
        return self._window

    def observe(self, count: float, now: float) -> None:
        """Record `count` events seen since the previous observation, at time `now` (seconds)."""
        if not count >= 0.0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        if self._last is None:
            self._last = now
            return
        dt = now - self._last
        if dt <= 0.0:
            # Same tick as the last observation (or a clock that stepped back): add to the interval that ended.
            if self._last_gain:
                self._value += self._last_gain * count
            else:
                self._pending += count
            return
        alpha = -math.expm1(-dt / self._window)
        self._value += alpha * ((self._pending + count) / dt - self._value)
        self._weight += alpha * (1.0 - self._weight)
        self._last_gain = alpha / dt
        self._pending = 0.0
        self._last = now

    def rate(self, now: float) -> float:
        """The smoothed rate at `now`, counting the time since the last observation as quiet so far."""
        if self._last is None:
            return 0.0
        value, weight = self._value, self._weight
        dt = now - self._last
        if dt > 0.0:
            alpha = -math.expm1(-dt / self._window)
            value += alpha * (self._pending / dt - value)
            weight += alpha * (1.0 - weight)
        return value / weight if weight > 0.0 else 0.0


class _Arrivals:
    """An arrival rate that is quick to see a surge and slow to believe a lull: max(fast, slow average).

    A budget is a promise to whoever receives the kept spans. Smoothing over tens of seconds keeps rates from
    whipsawing, but a slow average alone would take a whole window to notice traffic jumping tenfold, and the
    sampler would overspend the budget several times over meanwhile. The fast average only ever raises the
    estimate, so a brief lull does not raise the rates.
    """

    __slots__ = ("_fast", "_slow")

    def __init__(self, window: float, attack_window: float, start: float | None) -> None:
        self._slow = Ewma(window, start)
        self._fast = Ewma(attack_window, start)

    def observe(self, count: float, now: float) -> None:
        self._slow.observe(count, now)
        self._fast.observe(count, now)

    def rate(self, now: float) -> float:
        return max(self._slow.rate(now), self._fast.rate(now))


def allocate(
    budget: float,
    demands: Sequence[tuple[float, float]],
    forced: float = 0.0,
    min_rate: float = 0.0,
) -> list[float]:
    """The effective sampling rate per tier, tiers in priority order (P0 first), for a budget of kept spans/s.

    `demands[i]` is tier i's (configured rate, arriving spans/s). `forced` is the spans/s kept regardless
    (errors, latency): they are paid first and cannot be cut. Then the waterfall: P0 takes what it needs to run
    at its configured rate, then P1, and so on; the first tier that cannot have all it wants gets
    remaining / arrivals, and the tiers below get nothing. So the lowest tier absorbs a cut first and P0 last,
    and budget a tier leaves unused flows down, never lifting a tier above its configured rate. A tier with no
    arrivals costs nothing: it gets its configured rate while budget remains above it (ready for traffic the
    estimate has not seen yet), and its floor once the tiers above have spent everything.

    `min_rate` is a floor (capped at each tier's configured rate) so that no tier starves: the floors are paid
    before the waterfall, and they hold even when they alone exceed the budget. Budget 0 or infinity means no
    budget: the configured rates.
    """
    if not budget >= 0.0:
        raise ValueError(f"budget must be >= 0 spans/s (0 = no budget), got {budget!r}")
    if not forced >= 0.0:
        raise ValueError(f"forced must be >= 0 spans/s, got {forced!r}")
    _check_rate("min_rate", min_rate)
    for configured, arrivals in demands:
        _check_rate("configured rate", configured)
        if not 0.0 <= arrivals < math.inf:
            raise ValueError(f"arrivals must be a finite number of spans/s >= 0, got {arrivals!r}")
    if budget == 0.0 or budget == math.inf:
        return [configured for configured, _ in demands]

    floors = [min(min_rate, configured) for configured, _ in demands]
    remaining = budget - forced - sum(floor * arrivals for floor, (_, arrivals) in zip(floors, demands))
    rates: list[float] = []
    for floor, (configured, arrivals) in zip(floors, demands):
        wanted = (configured - floor) * arrivals
        if remaining <= 0.0:
            rates.append(floor)
        elif wanted <= remaining:
            rates.append(configured)
            remaining -= wanted
        else:
            rates.append(min(configured, floor + remaining / arrivals))
            remaining = 0.0
    return rates


class BudgetController:
    """Rates per tier that hold kept spans near `budget` spans/s: `allocate` over smoothed arrivals, corrected.

    Tell it what happens: `observe(tier, spans, now)` for the spans of each trace a tier rule decided (kept
    or not), `observe_forced(spans, now)` for those a forced rule kept (not also counted in a tier), and
    `observe_kept(spans, now)` for every span actually kept, forced and late ones included: what the budget
    bounds. Ask `rates(now)` whenever the sampler wants fresh rates (each second, say).

    Arrivals and forced keeps are averaged over `window`, but read as the larger of that and an average over
    `attack_window` (window / 10 by default): a surge is seen within seconds, a lull is believed slowly.

    The feedback: what is kept differs from rate x arrivals in ways no arrival estimate sees: late spans
    follow a kept trace, traces are kept whole, keys are spread unevenly, randomness is random. So the
    controller also averages the spans it *expected* to keep (each observed span times the rate in effect
    for its tier, plus forced keeps) and divides the budget it hands to `allocate` by measured / expected,
    clamped to [1/max_correction, max_correction]. It compares measured kept spans with the same arrivals
    the rates were applied to, not with the budget, so the lag of a moving average never looks like an error:
    nothing winds up in a surge or a lull, there is no gain to tune, and with errors that scale with the
    traffic the kept rate converges to the budget within a couple of windows. Without `observe_kept` calls
    there is no correction, only the open-loop allocation.
    """

    def __init__(
        self,
        budget: float,
        configured_rates: Sequence[float],
        *,
        window: float = DEFAULT_WINDOW,
        attack_window: float | None = None,
        min_rate: float = 0.0,
        max_correction: float = 4.0,
        start: float | None = None,
    ) -> None:
        _check_window(window)
        attack_window = window / 10 if attack_window is None else attack_window
        _check_window(attack_window)
        _check_rate("min_rate", min_rate)
        if not 1.0 <= max_correction < math.inf:
            raise ValueError(f"max_correction must be >= 1, got {max_correction!r}")
        self._window = window
        self._attack_window = attack_window
        self._min_rate = min_rate
        self._max_correction = max_correction
        self._start = start
        self._now = start  # the latest time anyone told us
        self._budget = 0.0
        self.set_budget(budget)
        self._configured: list[float] = []
        self._rates: list[float] = []  # the rates in effect: what observed spans were sampled at
        self._arrivals: list[_Arrivals] = []
        self.set_tiers(configured_rates)
        self._forced = _Arrivals(window, attack_window, start)
        self._expected = Ewma(window, start)
        self._kept = Ewma(window, start)

    @property
    def budget(self) -> float:
        """Kept spans per second to aim for; 0 means no budget (rates as configured)."""
        return self._budget

    def correction(self, now: float) -> float:
        """The factor the budget is multiplied by: expected / measured kept spans, 1.0 with nothing measured."""
        kept = self._kept.rate(now)
        expected = self._expected.rate(now)
        if kept <= 0.0 or expected <= 0.0:
            return 1.0
        return min(self._max_correction, max(1.0 / self._max_correction, expected / kept))

    def set_budget(self, budget: float) -> None:
        """Change the budget (config reload); the averages carry over."""
        if not 0.0 <= budget <= math.inf:
            raise ValueError(f"budget must be >= 0 spans/s (0 = no budget), got {budget!r}")
        self._budget = budget

    def set_tiers(self, configured_rates: Sequence[float]) -> None:
        """Replace the configured rates (config reload); tiers that still exist, by index, keep their averages."""
        for rate in configured_rates:
            _check_rate("configured rate", rate)
        count = len(configured_rates)
        kept = self._arrivals[:count]
        fresh = [_Arrivals(self._window, self._attack_window, self._now) for _ in range(count - len(kept))]
        self._arrivals = kept + fresh
        self._configured = list(configured_rates)
        self._rates = [min(rate, configured) for rate, configured in zip(self._rates, configured_rates)]
        self._rates += self._configured[len(self._rates) :]

    def observe(self, tier: int, spans: float, now: float) -> None:
        """Spans of traces that tier `tier` decided, kept or not, since the last call for that tier."""
        self._arrivals[tier].observe(spans, now)
        self._expected.observe(spans * self._rates[tier], now)
        self._now = now

    def observe_forced(self, spans: float, now: float) -> None:
        """Spans kept by a forced rule (error, latency) since the last call."""
        self._forced.observe(spans, now)
        self._expected.observe(spans, now)
        self._now = now

    def observe_kept(self, spans: float, now: float) -> None:
        """Every span kept since the last call, forced and late ones included: what the budget bounds."""
        self._kept.observe(spans, now)
        self._now = now

    def rates(self, now: float) -> list[float]:
        """The effective rate per tier at `now`; they stay in effect (for `observe`) until the next call."""
        self._now = now
        if self._budget == 0.0 or self._budget == math.inf:
            self._rates = list(self._configured)
        else:
            self._rates = allocate(
                self._budget * self.correction(now),
                [(configured, tier.rate(now)) for configured, tier in zip(self._configured, self._arrivals)],
                self._forced.rate(now),
                self._min_rate,
            )
        return list(self._rates)

    def set_applied_rates(self, rates: Sequence[float]) -> None:
        """The rates the sampler actually applies, when they differ from `rates()` (tiers shed under pressure).

        Without this, spans of a shed tier would count as expected-but-not-kept, the correction would climb
        to its bound, and the budget would be overspent for a window once the pressure ends.
        """
        if len(rates) != len(self._configured):
            raise ValueError(f"rates must have one entry per tier ({len(self._configured)}), got {len(rates)}")
        for rate in rates:
            _check_rate("applied rate", rate)
        self._rates = list(rates)


def key_rates(tier_rate: float, counts: dict[Hashable, float]) -> dict[Hashable, float]:
    """Rates per key within a tier: rare keys higher, frequent ones lower, the count-weighted mean = `tier_rate`.

    rate_k = min(1, c / sqrt(count_k)), so the kept count of a key grows with the square root of its traffic:
    a key with 100x the traffic keeps 10x the traces, and a rare key is kept whole. c is solved exactly (water
    filling over the keys sorted by count: the rarest saturate at 1 first) so that
    sum(count_k * rate_k) = tier_rate * sum(count_k). A key with count 0 has not been seen: it gets rate 1
    (it costs nothing by the estimate). Tier rate 1 gives 1 everywhere, 0 gives 0 everywhere.
    """
    _check_rate("tier_rate", tier_rate)
    for key, count in counts.items():
        if not 0.0 <= count < math.inf:
            raise ValueError(f"count for key {key!r} must be finite and >= 0, got {count!r}")
    if tier_rate == 1.0 or tier_rate == 0.0:
        return dict.fromkeys(counts, tier_rate)

    seen = sorted(count for count in counts.values() if count > 0.0)
    roots = [math.sqrt(count) for count in seen]
    roots_above = [0.0] * (len(seen) + 1)  # roots_above[j] = sum of roots[j:]
    for j in range(len(seen) - 1, -1, -1):
        roots_above[j] = roots_above[j + 1] + roots[j]
    target = tier_rate * math.fsum(seen)
    saturated = 0.0  # traces kept from the keys already at rate 1
    scale = math.inf
    for j, root in enumerate(roots):
        scale = (target - saturated) / roots_above[j]
        if scale <= root:
            break
        saturated += seen[j]
    return {key: 1.0 if count == 0.0 else min(1.0, scale / math.sqrt(count)) for key, count in counts.items()}
