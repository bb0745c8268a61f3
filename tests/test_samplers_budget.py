"""The kept-span budget (`max_spans_per_second`): simulated minutes of traffic through a TailSampler, fake clock.

Input arrives ten times over the budget in small clock steps, with a tick after each; the controller smooths over
tens of seconds, so the first minute is left to settle before anything is measured. The budget is scaled down
(200 spans/s against 2,000 in) so several simulated minutes run in a few seconds; the controller works on rates,
so the scale does not change what is tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from samplers.settings import DEFAULT_TIERS, SamplingSettings
from samplers.tail import TailSampler
from tests.sampler_workload import ALL, FakeClock, TraceGenerator, requests

CONFIGURED = [t.rate for t in DEFAULT_TIERS]  # P0 0.99, P1 0.5, P2 0.05
NAMES = [t.name for t in DEFAULT_TIERS]
BUDGET = 200.0
STEP = 0.1  # seconds between requests (and ticks)
SETTLE = 60.0  # seconds left to the controller before measuring
WINDOW = 30  # seconds per averaged window
SPANS = (2, 6)  # spans per trace


@dataclass
class Run:
    kept_per_second: list[int]                       # kept spans output in each simulated second
    rates: list[list[float]] = field(default_factory=list)  # effective rates, once a second after SETTLE
    kept: dict[str, int] = field(default_factory=dict)      # spans kept per tier after SETTLE
    seen: dict[str, int] = field(default_factory=dict)      # spans decided per tier after SETTLE

    def kept_share(self, tier: str) -> float:
        return self.kept.get(tier, 0) / self.seen[tier]

    def windows(self) -> list[float]:
        """Kept spans per second, averaged over consecutive WINDOW-second windows after SETTLE."""
        after = self.kept_per_second[int(SETTLE):]
        return [sum(after[i:i + WINDOW]) / WINDOW for i in range(0, len(after) - WINDOW + 1, WINDOW)]


def simulate(budget: float, mix: dict[str, float], spans_per_second: float, seconds: int, seed: str) -> Run:
    """Traffic at a steady `spans_per_second`, tiers drawn from `mix`, roots first, forced keeps off."""
    clock = FakeClock(0.0)
    settings = SamplingSettings(max_spans_per_second=budget, keep_errors=False, keep_http_5xx=False, latency=0.0)
    sampler = TailSampler(settings, clock)
    gen = TraceGenerator(seed=seed, mix=mix, spans=SPANS)
    traces_per_step = round(spans_per_second * STEP / (sum(SPANS) / 2))
    run = Run(kept_per_second=[0] * seconds)
    before: tuple[dict[str, int], dict[str, int]] | None = None
    for step in range(round(seconds / STEP)):
        sampler.ingest(requests(gen.traces(traces_per_step), per_request=traces_per_step)[0])
        clock.advance(STEP)
        sampler.tick(ALL)
        second = min(int(clock.now - 1e-9), seconds - 1)
        run.kept_per_second[second] += sum(count for _body, count in sampler.take_output())
        if before is None and clock.now >= SETTLE - 1e-9:
            before = (dict(sampler.stats.kept_spans), dict(sampler.stats.dropped_spans))
        if before is not None and step % round(1 / STEP) == 0:
            run.rates.append(sampler.effective_rates)
    kept, dropped = sampler.stats.kept_spans, sampler.stats.dropped_spans
    for name in NAMES:
        run.kept[name] = kept.get(name, 0) - before[0].get(name, 0)
        run.seen[name] = run.kept[name] + dropped.get(name, 0) - before[1].get(name, 0)
    return run


TEN_TIMES_OVER = {"P0": 0.05, "P1": 0.30, "P2": 0.65}
# Spans/s wanted at the configured rates: 2,000 x (0.05 x 0.99 + 0.30 x 0.5 + 0.65 x 0.05) = 464, against 200.


@pytest.fixture(scope="module")
def ten_times_over() -> Run:
    return simulate(BUDGET, TEN_TIMES_OVER, 10 * BUDGET, 300, "ten-times-over")


def test_kept_spans_stay_within_ten_percent_of_the_budget_over_every_30_second_window(ten_times_over: Run) -> None:
    windows = ten_times_over.windows()
    assert len(windows) >= 8
    for average in windows:
        assert abs(average - BUDGET) <= 0.1 * BUDGET, f"kept spans/s per {WINDOW}-s window: {windows}"


def test_the_lowest_tier_is_cut_first_and_p0_last(ten_times_over: Run) -> None:
    for rates in ten_times_over.rates:
        cuts = [1 - rate / configured for rate, configured in zip(rates, CONFIGURED)]
        assert cuts[2] >= cuts[1] >= cuts[0], f"cut per tier (P0, P1, P2): {cuts}"
        assert rates[0] >= 0.95 * CONFIGURED[0], f"P0 keeps (nearly) its configured rate: {rates}"
        assert 0.0 < rates[1] < CONFIGURED[1], f"P1 absorbs part of the cut: {rates}"
        assert rates[2] < 0.1 * CONFIGURED[2], f"P2 absorbs most of it: {rates}"
    run = ten_times_over
    shares = [run.kept_share(name) / configured for name, configured in zip(NAMES, CONFIGURED)]
    assert shares[0] > 0.95
    assert shares[0] > shares[1] > shares[2]
    assert shares[2] < 0.1


def test_with_an_ample_budget_the_rates_stay_as_configured() -> None:
    run = simulate(10_000.0, TEN_TIMES_OVER, 2000.0, 120, "ample")
    assert run.rates and all(rates == CONFIGURED for rates in run.rates)
    for name, configured in zip(NAMES, CONFIGURED):
        assert run.kept_share(name) == pytest.approx(configured, abs=0.03)


def test_budget_p0_leaves_unused_lets_lower_tiers_keep_more_but_never_above_their_configured_rate() -> None:
    # The same P1 and P2 traffic (200 and 1,650 spans/s), with P0 busy (150 spans/s) and then idle.
    busy = simulate(BUDGET, {"P0": 0.075, "P1": 0.10, "P2": 0.825}, 2000.0, 150, "p0-busy")
    idle = simulate(BUDGET, {"P1": 0.2 / 1.85, "P2": 1.65 / 1.85}, 1850.0, 150, "p0-idle")
    busy_p1 = sum(r[1] for r in busy.rates) / len(busy.rates)
    assert busy_p1 < 0.8 * CONFIGURED[1], "with P0 busy, P1 is cut"
    assert max(r[2] for r in busy.rates) < 0.1 * CONFIGURED[2], "with P0 busy, P2 is (nearly) shut"
    for rates in idle.rates:
        assert rates[1] == pytest.approx(CONFIGURED[1]) and rates[1] <= CONFIGURED[1]
        assert rates[2] <= CONFIGURED[2]
    idle_p2 = sum(r[2] for r in idle.rates) / len(idle.rates)
    assert idle_p2 > 0.5 * CONFIGURED[2], "P2 gets what P0 leaves"
    assert idle.kept_share("P1") > busy.kept_share("P1") and idle.kept_share("P2") > busy.kept_share("P2")
    assert idle.kept_share("P1") == pytest.approx(CONFIGURED[1], abs=0.03)
    assert idle.kept_share("P2") <= CONFIGURED[2] + 0.01
    assert max(idle.windows()) <= 1.1 * BUDGET
