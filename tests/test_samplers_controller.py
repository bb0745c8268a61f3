"""The dynamic rate controller: moving averages, the tier waterfall, the budget loop and per-key rates."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samplers.controller import BudgetController, Ewma, allocate, key_rates

CONFIGURED = [0.99, 0.5, 0.05]  # the default tiers P0, P1, P2
BUDGET = 1000.0


# --- Ewma -----------------------------------------------------------------------------------------------


def regular(rate: float, seconds: int) -> list[tuple[float, float]]:
    """(time, count) observations: one batch a second."""
    return [(float(t), rate) for t in range(1, seconds + 1)]


def irregular(rate: float, seconds: int) -> list[tuple[float, float]]:
    """(time, count) observations at jittered times from 1 ms to 3 s apart, each carrying rate * elapsed."""
    generator = random.Random("irregular")
    now, out = 0.0, []
    while now < seconds:
        dt = generator.choice([0.001, 0.05, 0.3, 1.0, 2.5, 3.0])
        now += dt
        out.append((now, rate * dt))
    return out


def same_tick_batches(rate: float, seconds: int) -> list[tuple[float, float]]:
    """(time, count) observations: four batches stamped with the same clock reading each second."""
    return [(float(t), rate / 4) for t in range(1, seconds + 1) for _ in range(4)]


@pytest.mark.parametrize("pattern", [regular, irregular, same_tick_batches])
@pytest.mark.parametrize("window", [5.0, 30.0, 120.0])
def test_the_average_of_a_constant_rate_is_that_rate_whatever_the_observation_times(pattern, window: float) -> None:
    ewma = Ewma(window, start=0.0)
    observations = pattern(250.0, 300)
    for now, count in observations:
        ewma.observe(count, now)
    assert ewma.rate(observations[-1][0]) == pytest.approx(250.0, rel=1e-9)


def test_a_constant_rate_reads_right_from_the_first_interval_not_creeping_up_from_zero() -> None:
    ewma = Ewma(30.0, start=0.0)
    ewma.observe(100.0, 1.0)
    assert ewma.rate(1.0) == pytest.approx(100.0)


def test_without_a_start_time_the_first_observation_only_starts_the_clock() -> None:
    ewma = Ewma(30.0)
    ewma.observe(1_000_000.0, 50.0)  # a backlog from before anyone was counting
    ewma.observe(100.0, 51.0)
    assert ewma.rate(51.0) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("windows_after_step", "low", "high"),
    [
        (1 / 30, 100.0, 110.0),  # one second after: smoothed, not a one-second bucket
        (1.0, 100.0 + 100.0 * (1 - math.exp(-1)) - 1, 100.0 + 100.0 * (1 - math.exp(-1)) + 1),
        (3.0, 195.0, 200.0),  # within 5% after three windows
        (5.0, 199.0, 200.0),
    ],
)
def test_the_average_follows_a_step_within_a_few_windows(windows_after_step: float, low: float, high: float) -> None:
    ewma = Ewma(30.0, start=0.0)
    for now, count in regular(100.0, 300):
        ewma.observe(count, now)
    for now, count in regular(200.0, round(windows_after_step * 30)):
        ewma.observe(count, 300.0 + now)
    assert low <= ewma.rate(300.0 + windows_after_step * 30) <= high


def test_a_silent_source_decays_instead_of_holding_its_last_rate() -> None:
    ewma = Ewma(30.0, start=0.0)
    for now, count in regular(100.0, 300):
        ewma.observe(count, now)
    assert ewma.rate(330.0) == pytest.approx(100.0 * math.exp(-1), rel=1e-3)


@pytest.mark.parametrize(("window", "count"), [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (30.0, -1.0)])
def test_a_bad_window_or_count_is_rejected_naming_it(window: float, count: float) -> None:
    with pytest.raises(ValueError, match="window" if count >= 0 else "count"):
        Ewma(window).observe(count, 1.0)


# --- allocate -------------------------------------------------------------------------------------------

# Tier demands used below: P0 wants 99 spans/s, P1 100, P2 100 (299 in all).
DEMANDS = [(0.99, 100.0), (0.5, 200.0), (0.05, 2000.0)]


@pytest.mark.parametrize(
    ("budget", "demands", "forced", "min_rate", "expected"),
    [
        # ample budget: the configured rates
        (1000.0, DEMANDS, 0.0, 0.0, [0.99, 0.5, 0.05]),
        (299.0, DEMANDS, 0.0, 0.0, [0.99, 0.5, 0.05]),
        # tight budget: P2 is cut first ...
        (250.0, DEMANDS, 0.0, 0.0, [0.99, 0.5, 51 / 2000]),
        (199.0, DEMANDS, 0.0, 0.0, [0.99, 0.5, 0.0]),
        # ... then P1 ...
        (150.0, DEMANDS, 0.0, 0.0, [0.99, 51 / 200, 0.0]),
        # ... and P0 last
        (50.0, DEMANDS, 0.0, 0.0, [0.5, 0.0, 0.0]),
        # budget P0 leaves unused flows down, but never above a tier's configured rate
        (250.0, [(0.99, 1.0), (0.5, 200.0), (0.05, 2000.0)], 0.0, 0.0, [0.99, 0.5, 0.05]),
        (150.0, [(0.99, 1.0), (0.5, 200.0), (0.05, 2000.0)], 0.0, 0.0, [0.99, 0.5, 49.01 / 2000]),
        # forced keeps are paid first and cannot be cut
        (250.0, DEMANDS, 100.0, 0.0, [0.99, 51 / 200, 0.0]),
        (250.0, DEMANDS, 300.0, 0.0, [0.0, 0.0, 0.0]),
        # zero arrivals: costs nothing, configured rate while budget remains above it, floor once it is gone
        (150.0, [(0.99, 0.0), (0.5, 200.0), (0.05, 2000.0)], 0.0, 0.0, [0.99, 0.5, 0.025]),
        (50.0, [(0.99, 100.0), (0.5, 0.0), (0.05, 2000.0)], 0.0, 0.0, [0.5, 0.0, 0.0]),
        (1000.0, [(0.99, 0.0), (0.5, 0.0), (0.05, 0.0)], 0.0, 0.0, [0.99, 0.5, 0.05]),
        # budget 0 or infinity: no budget, the configured rates whatever the load
        (0.0, DEMANDS, 500.0, 0.0, [0.99, 0.5, 0.05]),
        (math.inf, DEMANDS, 0.0, 0.0, [0.99, 0.5, 0.05]),
        # a floor keeps every tier alive; floors are paid before the waterfall and capped at configured
        (50.0, DEMANDS, 0.0, 0.01, [0.01 + 27 / 100, 0.01, 0.01]),
        (50.0, DEMANDS, 0.0, 0.1, [0.1, 0.1, 0.05]),
        # no tiers: nothing to allocate
        (50.0, [], 0.0, 0.0, []),
    ],
)
def test_the_budget_flows_down_the_tiers_in_priority_order(
    budget: float, demands: list[tuple[float, float]], forced: float, min_rate: float, expected: list[float]
) -> None:
    assert allocate(budget, demands, forced, min_rate) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("budget", "demands", "forced", "min_rate", "name"),
    [
        (-1.0, DEMANDS, 0.0, 0.0, "budget"),
        (math.nan, DEMANDS, 0.0, 0.0, "budget"),
        (100.0, DEMANDS, -1.0, 0.0, "forced"),
        (100.0, DEMANDS, 0.0, 1.5, "min_rate"),
        (100.0, [(1.5, 10.0)], 0.0, 0.0, "configured rate"),
        (100.0, [(0.5, -10.0)], 0.0, 0.0, "arrivals"),
        (100.0, [(0.5, math.inf)], 0.0, 0.0, "arrivals"),
    ],
)
def test_a_bad_allocation_input_is_rejected_naming_it(
    budget: float, demands: list[tuple[float, float]], forced: float, min_rate: float, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        allocate(budget, demands, forced, min_rate)


TIER_DEMANDS = st.lists(
    st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1e6)),
    min_size=1,
    max_size=6,
)


@given(budget=st.floats(1e-3, 1e6), demands=TIER_DEMANDS, forced=st.floats(0.0, 1e6))
def test_an_allocation_never_exceeds_the_budget_nor_a_configured_rate_and_cuts_from_the_bottom(
    budget: float, demands: list[tuple[float, float]], forced: float
) -> None:
    rates = allocate(budget, demands, forced)
    kept = forced + sum(rate * arrivals for rate, (_, arrivals) in zip(rates, demands))
    assert kept <= max(budget, forced) * (1 + 1e-9)
    assert all(0.0 <= rate <= configured for rate, (configured, _) in zip(rates, demands))
    cut = [i for i, (rate, (configured, arrivals)) in enumerate(zip(rates, demands)) if rate < configured]
    if cut:  # everything below the first tier that was cut gets nothing
        assert all(rates[i] == 0.0 for i in range(cut[0] + 1, len(demands)))


# --- BudgetController -----------------------------------------------------------------------------------


def simulate(
    controller: BudgetController,
    arrivals: list[float],
    seconds: int,
    *,
    start: float = 0.0,
    seen: float = 1.0,
    late: float = 1.0,
    report_kept: bool = True,
) -> list[tuple[float, list[float]]]:
    """Run `seconds` of traffic, one simulated second at a time: (kept spans/s, rates) for each second.

    Each second the sampler asks for rates, thins that second's arrivals by them (the expected value: no
    randomness needed), and reports what it saw and kept. Two kinds of systematic error the rates alone do
    not see: `seen` < 1 reports fewer arrivals than there were; `late` > 1 keeps more than rate x arrivals
    (late spans following kept traces).
    """
    history = []
    for second in range(seconds):
        now = start + second
        rates = controller.rates(now)
        for tier, spans in enumerate(arrivals):
            controller.observe(tier, spans * seen, now + 1)
        kept = late * sum(rate * spans for rate, spans in zip(rates, arrivals))
        if report_kept:
            controller.observe_kept(kept, now + 1)
        history.append((kept, rates))
    return history


def within_ten_percent(kept: float) -> bool:
    return abs(kept - BUDGET) <= 0.1 * BUDGET


@pytest.mark.parametrize(
    ("arrivals", "expected_rates"),
    [
        # 10x the budget in every case; the cut lands where the waterfall puts it
        ([200.0, 1000.0, 8800.0], [0.99, 0.5, 302 / 8800]),  # only P2 is cut
        ([400.0, 4000.0, 5600.0], [0.99, 604 / 4000, 0.0]),  # P2 gone, then P1 cut, P0 untouched
        ([2000.0, 3000.0, 5000.0], [0.5, 0.0, 0.0]),  # P0 is cut last
    ],
)
def test_ten_times_the_budget_for_ten_minutes_settles_within_ten_percent_cutting_p2_then_p1_then_p0(
    arrivals: list[float], expected_rates: list[float]
) -> None:
    controller = BudgetController(BUDGET, CONFIGURED, start=0.0)
    history = simulate(controller, arrivals, 600)
    assert sum(arrivals) == 10 * BUDGET
    settled = history[60:]
    assert all(within_ten_percent(kept) for kept, _ in settled)
    final_rates = settled[-1][1]
    assert final_rates == pytest.approx(expected_rates, rel=0.01, abs=1e-6)
    shares = [rate / configured for rate, configured in zip(final_rates, CONFIGURED)]
    assert shares[2] <= shares[1] <= shares[0]


@pytest.mark.parametrize(
    ("seen", "late"),
    [
        (1.0, 1.3),  # late spans of kept traces add 30% to what the rates keep
        (0.8, 1.0),  # a fifth of the arrivals are never reported to the controller
    ],
)
@pytest.mark.parametrize("report_kept", [True, False])
def test_measuring_kept_spans_corrects_a_systematic_estimation_error(
    seen: float, late: float, report_kept: bool
) -> None:
    controller = BudgetController(BUDGET, CONFIGURED, start=0.0)
    history = simulate(controller, [400.0, 4000.0, 5600.0], 600, seen=seen, late=late, report_kept=report_kept)
    settled = [kept for kept, _ in history[60:]]
    # open loop, the error lands in full on the budget (+25% or +30%); measured, it is corrected
    assert all(within_ten_percent(kept) for kept in settled) is report_kept
    if report_kept:
        assert settled[-1] == pytest.approx(BUDGET, rel=0.01)


def test_a_long_lull_winds_nothing_up_and_a_surge_after_it_is_absorbed_within_seconds() -> None:
    controller = BudgetController(BUDGET, CONFIGURED, start=0.0)
    simulate(controller, [10.0, 100.0, 1000.0], 600)  # 109.9 kept spans/s wanted, 1000 allowed
    assert controller.correction(600.0) == pytest.approx(1.0)
    history = simulate(controller, [400.0, 4000.0, 5600.0], 600, start=600.0)
    assert all(within_ten_percent(kept) for kept, _ in history[10:])


def test_forced_keeps_are_paid_before_any_tier() -> None:
    controller = BudgetController(BUDGET, CONFIGURED, start=0.0)
    for second in range(1, 61):
        controller.observe_forced(600.0, float(second))
        for tier, spans in enumerate([400.0, 4000.0, 5600.0]):
            controller.observe(tier, spans, float(second))
    assert controller.rates(60.0) == pytest.approx([0.99, 4 / 4000, 0.0])


def test_without_a_budget_the_rates_are_as_configured() -> None:
    controller = BudgetController(0.0, CONFIGURED, start=0.0)
    history = simulate(controller, [4000.0, 40000.0, 56000.0], 60)
    assert all(rates == CONFIGURED for _, rates in history)


def test_a_config_reload_keeps_the_averages_of_tiers_that_still_exist() -> None:
    controller = BudgetController(BUDGET, CONFIGURED, start=0.0)
    simulate(controller, [400.0, 4000.0, 5600.0], 120)
    controller.set_tiers([0.99, 0.25])
    # P1 now wants 1000 of the 604 left: cut at once, from the average it already had
    assert controller.rates(120.0) == pytest.approx([0.99, 604 / 4000])
    controller.set_tiers([0.99, 0.25, 0.1, 0.01])
    assert len(controller.rates(120.0)) == 4


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"budget": -1.0}, "budget"),
        ({"configured_rates": [1.5]}, "configured rate"),
        ({"window": 0.0}, "window"),
        ({"min_rate": -0.1}, "min_rate"),
        ({"attack_window": -1.0}, "window"),
        ({"max_correction": 0.5}, "max_correction"),
    ],
)
def test_a_bad_controller_setting_is_rejected_naming_it(kwargs: dict[str, object], name: str) -> None:
    settings: dict[str, object] = {"budget": BUDGET, "configured_rates": CONFIGURED, **kwargs}
    with pytest.raises(ValueError, match=name):
        BudgetController(**settings)  # type: ignore[arg-type]


# --- key_rates ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier_rate", "counts", "expected"),
    [
        # sqrt spread: a key with 100x the traffic keeps 10x the traces; the rarest saturate at 1
        (0.1, {"a": 10000.0, "b": 100.0, "c": 1.0}, {"a": 1009.1 / 110 / 100, "b": 1009.1 / 110 / 10, "c": 1.0}),
        (0.5, {"a": 100.0, "b": 100.0}, {"a": 0.5, "b": 0.5}),  # equal counts: the tier rate
        (0.3, {"only": 42.0}, {"only": 0.3}),
        (0.2, {"seen": 100.0, "unseen": 0.0}, {"seen": 0.2, "unseen": 1.0}),  # an unseen key costs nothing
        (0.2, {"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 1.0}),
        (1.0, {"a": 10000.0, "b": 0.0}, {"a": 1.0, "b": 1.0}),
        (0.0, {"a": 10000.0, "b": 0.0}, {"a": 0.0, "b": 0.0}),
        (0.5, {}, {}),
    ],
)
def test_key_rates_favour_rare_keys(
    tier_rate: float, counts: dict[Hashable, float], expected: dict[Hashable, float]
) -> None:
    assert key_rates(tier_rate, counts) == pytest.approx(expected)


KEY_COUNTS = st.dictionaries(st.integers(0, 50), st.floats(0.0, 1e6), min_size=1, max_size=30)


@given(tier_rate=st.floats(0.0, 1.0), counts=KEY_COUNTS)
def test_key_rates_preserve_the_tier_average(tier_rate: float, counts: dict[Hashable, float]) -> None:
    rates = key_rates(tier_rate, counts)
    total = sum(counts.values())
    kept = sum(counts[key] * rates[key] for key in counts)
    assert kept == pytest.approx(tier_rate * total, rel=1e-9, abs=1e-9)
    assert all(0.0 <= rate <= 1.0 for rate in rates.values())


@given(tier_rate=st.floats(0.0, 1.0), counts=KEY_COUNTS)
def test_a_rarer_key_never_gets_a_lower_rate(tier_rate: float, counts: dict[Hashable, float]) -> None:
    rates = key_rates(tier_rate, counts)
    by_count = sorted(counts, key=counts.__getitem__)
    assert all(rates[rare] >= rates[frequent] for rare, frequent in zip(by_count, by_count[1:]))


@pytest.mark.parametrize(("tier_rate", "counts", "name"), [(1.5, {"a": 1.0}, "tier_rate"), (0.5, {"a": -1.0}, "'a'")])
def test_a_bad_key_rate_input_is_rejected_naming_it(tier_rate: float, counts: dict[Hashable, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        key_rates(tier_rate, counts)


def test_rates_applied_instead_of_the_returned_ones_do_not_distort_the_correction() -> None:
    controller = BudgetController(BUDGET, CONFIGURED, start=0.0)
    arrivals = [400.0, 4000.0, 5600.0]
    for second in range(120):  # under memory pressure the sampler sheds P1 and P2
        applied = controller.rates(float(second))[:1] + [0.0, 0.0]
        controller.set_applied_rates(applied)
        for tier, spans in enumerate(arrivals):
            controller.observe(tier, spans, second + 1.0)
        controller.observe_kept(sum(rate * spans for rate, spans in zip(applied, arrivals)), second + 1.0)
    assert controller.correction(120.0) == pytest.approx(1.0)
    assert controller.rates(120.0) == pytest.approx([0.99, 604 / 4000, 0.0])
