"""The sender's control laws: concurrency and batch size as pure functions of one observed window, by tables of
cases, and concurrency driven against model receivers in plain arithmetic (no event loop, no sleeps)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from exporters.sending.control import (
    Decision,
    Window,
    batch_decision,
    concurrency_decision,
    next_batch_samples,
    next_concurrency,
)

BATCH = 500  # samples per request in the concurrency cases
LATENCY = 0.05  # seconds per request: one slot carries BATCH / LATENCY = 10,000 samples/s


def steady(**changes: object) -> Window:
    """One second keeping up without a backlog: 20,000 samples/s in and out at concurrency 4, of which Little's
    law needs 2 (20,000 x 0.05 / 500), so the slots are half busy. Inside the band: 4 stays 4."""
    base = Window(
        duration=1.0,
        delivered=20_000,
        requests=40,
        latency=LATENCY,
        errors=0,
        throttled=False,
        backlog=0,
        backlog_growth=0,
        incoming=20_000,
        concurrency=4,
        busy=0.5,
    )
    return replace(base, **changes)


def pushing(concurrency: int, latency: float = LATENCY, **changes: object) -> Window:
    """One second with every slot busy and a large backlog still growing: 100,000 samples/s arrive, and the
    receiver answers each BATCH-sample request in `latency` seconds."""
    delivered = round(concurrency * BATCH / latency)
    base = Window(
        duration=1.0,
        delivered=delivered,
        requests=delivered // BATCH,
        latency=latency,
        errors=0,
        throttled=False,
        backlog=1_000_000,
        backlog_growth=100_000 - delivered,
        incoming=100_000,
        concurrency=concurrency,
        busy=1.0,
    )
    return replace(base, **changes)


@dataclass(frozen=True)
class Case:
    current: int
    window: Window
    previous: Window | None
    expected: Decision
    maximum: int = 64
    minimum: int = 1


CONCURRENCY_CASES = {
    "a 429 in the window halves concurrency even with a backlog": Case(
        8, pushing(8, throttled=True), pushing(8), Decision(4, "throttled")
    ),
    "throttling at the minimum stays at the minimum": Case(
        1, pushing(1, throttled=True), None, Decision(1, "throttled")
    ),
    "retryable errors above five percent of attempts halve concurrency": Case(
        8, pushing(8, errors=10), pushing(8), Decision(4, "errors")  # 10 of 160 + 10 attempts
    ),
    "a lone error among many requests is noise, not a cut": Case(4, steady(errors=1), None, Decision(4, "in-band")),
    "with work waiting but no acknowledged request it holds rather than guess": Case(
        8, steady(delivered=0, requests=0, latency=None, backlog=50_000), None, Decision(8, "no-measurement")
    ),
    "an idle endpoint drifts down a quarter per interval": Case(
        8, steady(delivered=0, requests=0, latency=None, incoming=0, busy=0.0), None, Decision(6, "idle")
    ),
    "the first window with a backlog it cannot drain grows by one from the minimum": Case(
        1, pushing(1), None, Decision(2, "backlog")
    ),
    "at the same concurrency as before, growth is a quarter per interval": Case(
        8, pushing(8), pushing(8), Decision(10, "backlog")
    ),
    "growth stops at what Little's law asks to carry the input and drain the backlog in 20 s": Case(
        # (80,000 + 80,000 / 20) samples/s x 0.05 s / 500 samples = 8.4 requests in flight
        8, pushing(8, incoming=80_000, backlog=80_000), pushing(8), Decision(9, "backlog")
    ),
    "growth stops at the maximum": Case(
        16, pushing(16, backlog=10_000_000), pushing(16), Decision(16, "backlog"), maximum=16
    ),
    "a step up that did not raise throughput is undone (a serial receiver: latency grew with concurrency)": Case(
        5, pushing(5, latency=LATENCY * 5 / 4), pushing(4), Decision(4, "step-did-not-pay")
    ),
    "a step up that raised throughput by less than half of what its slots could add is undone": Case(
        8, pushing(8, latency=LATENCY * 8 / 5.5), pushing(4), Decision(4, "step-did-not-pay")  # +37.5% of +100%
    ),
    "a step up that paid keeps growing": Case(5, pushing(5), pushing(4), Decision(7, "backlog")),
    "after a step is undone, the lower concurrency that delivers as much holds": Case(
        4, pushing(4), pushing(5, latency=LATENCY * 5 / 4), Decision(4, "step-down-lost-nothing")
    ),
    "after a cut that lost throughput, it comes back one slot at a time": Case(
        16, pushing(16, backlog=10_000_000), pushing(32, backlog=10_000_000), Decision(17, "recover")
    ),
    "latency per sample that grew by half at the same concurrency holds": Case(
        8, pushing(8, latency=LATENCY * 2), pushing(8), Decision(8, "latency-grew")
    ),
    "longer requests from larger batches are not a slower receiver": Case(
        8,
        pushing(8, latency=LATENCY * 2, delivered=80_000, requests=80),  # 1,000 samples a request in 0.1 s
        pushing(8),
        Decision(10, "backlog"),
    ),
    "with a backlog but slots not full, the sender is the limit, not concurrency": Case(
        4, pushing(4, busy=0.5), pushing(4), Decision(4, "slots-not-full")
    ),
    "nothing grows in the window after a throttle": Case(
        4, pushing(4), pushing(8, throttled=True), Decision(4, "throttled-recently")
    ),
    "a backlog that drains in time at the current concurrency holds": Case(
        # (20,000 + 100,000 / 20) x 0.05 / 500 = 2.5 needed; 1.5 x 2.5 rounds up to 4
        4, steady(backlog=100_000, backlog_growth=-20_000), None, Decision(4, "in-band")
    ),
    "over-provisioned with nothing waiting drifts down a quarter per interval": Case(
        16, steady(concurrency=16, busy=0.125), None, Decision(12, "over-provisioned")
    ),
    "a backlog that grew keeps it from shrinking, however over-provisioned": Case(
        16, steady(concurrency=16, backlog=2_000, backlog_growth=2_000), None, Decision(16, "backlog-growing")
    ),
    "drifting down stops inside the band: 1.5x what Little's law needs is within 30% of the current value": Case(
        4, steady(), steady(concurrency=5), Decision(4, "in-band")
    ),
    "a current value below the minimum is raised to it": Case(0, steady(), None, Decision(3, "in-band"), minimum=3),
    "a current value above the maximum is lowered to it": Case(
        12, steady(concurrency=12, busy=1 / 6), None, Decision(3, "in-band"), maximum=3
    ),
}


@pytest.mark.parametrize("case", CONCURRENCY_CASES.values(), ids=CONCURRENCY_CASES.keys())
def test_concurrency(case: Case) -> None:
    decision = concurrency_decision(
        case.current, case.window, case.previous, minimum=case.minimum, maximum=case.maximum
    )
    assert decision == case.expected
    assert next_concurrency(
        case.current, case.window, case.previous, minimum=case.minimum, maximum=case.maximum
    ) == case.expected.value


def test_concurrency_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="maximum"):
        next_concurrency(1, steady(), None, minimum=4, maximum=2)
    with pytest.raises(ValueError, match="minimum"):
        next_concurrency(1, steady(), None, minimum=0, maximum=2)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"duration": 0.0}, "duration"),
        ({"duration": math.nan}, "duration"),
        ({"delivered": -1}, "delivered"),
        ({"latency": -0.1}, "latency"),
        ({"concurrency": 0}, "concurrency"),
        ({"busy": 1.5}, "busy"),
    ],
)
def test_a_window_that_cannot_be_right_is_refused_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        steady(**changes)


# --- concurrency against model receivers ----------------------------------------------------------------


def simulate(
    latency_of: Callable[[int], float],
    *,
    ingest: float,
    backlog: float,
    seconds: int,
    maximum: int = 64,
    throttle_above: int | None = None,
) -> list[tuple[int, float, bool]]:
    """(concurrency decided, backlog at the end, throttled) per one-second window. Each window, `concurrency`
    requests of BATCH samples are in flight whenever there is work, each answered in `latency_of(concurrency)`
    seconds. Past `throttle_above` requests in flight the receiver answers the extra ones with 429."""
    concurrency, previous, trace = 1, None, []
    for _ in range(seconds):
        latency = latency_of(concurrency)
        throttled = throttle_above is not None and concurrency > throttle_above
        accepted = min(concurrency, throttle_above) if throttled else concurrency
        capacity = accepted * BATCH / latency  # samples the slots carry in one second when always busy
        available = backlog + ingest
        delivered = min(available, capacity)
        window = Window(
            duration=1.0,
            delivered=round(delivered),
            requests=math.ceil(delivered / BATCH),
            latency=latency if delivered else None,
            errors=0,
            throttled=throttled,
            backlog=round(available - delivered),
            backlog_growth=round(available - delivered - backlog),
            incoming=round(ingest),
            concurrency=concurrency,
            busy=delivered / capacity,
        )
        backlog = available - delivered
        concurrency = next_concurrency(concurrency, window, previous, maximum=maximum)
        previous = window
        trace.append((concurrency, backlog, throttled))
    return trace


def test_a_parallel_receiver_gets_concurrency_until_the_backlog_drains_then_it_falls_back() -> None:
    # 50 ms per request whatever the concurrency; 20,000 samples/s need 2 requests in flight, and 2 million
    # samples wait at the start.
    trace = simulate(lambda concurrency: LATENCY, ingest=20_000, backlog=2_000_000, seconds=180)
    concurrencies = [c for c, _, _ in trace]
    drained = next(t for t, (_, backlog, _) in enumerate(trace) if backlog == 0)
    assert max(concurrencies) >= 10  # drains 20 s worth of backlog on top of the input
    assert drained <= 60
    assert 2 <= concurrencies[-1] <= 4  # 1.5x Little's law, within the 30% band
    assert len(set(concurrencies[-60:])) == 1  # settled: no flapping
    assert all(backlog == 0 for _, backlog, _ in trace[drained:])


@pytest.mark.parametrize(
    ("ingest", "backlog"),
    [(15_000, 0), (5_000, 200_000)],
    ids=["even while the backlog grows without end", "while a backlog drains"],
)
def test_a_serial_receiver_keeps_concurrency_low(ingest: float, backlog: float) -> None:
    # Latency grows with concurrency: 10,000 samples/s however many requests are in flight.
    trace = simulate(lambda concurrency: LATENCY * concurrency, ingest=ingest, backlog=backlog, seconds=300)
    assert max(c for c, _, _ in trace) <= 2


@pytest.mark.parametrize("knee", [5, 8, 13, 30])
def test_a_receiver_that_saturates_at_a_knee_settles_near_the_knee(knee: int) -> None:
    # Parallel up to `knee` requests, serial beyond: throughput stops growing there; the input is more than
    # it can take, so the backlog never runs out and something always asks for more.
    trace = simulate(
        lambda concurrency: LATENCY * max(1.0, concurrency / knee), ingest=15_000 * knee, backlog=0, seconds=300
    )
    tail = [c for c, _, _ in trace[-100:]]
    resting = max(set(tail), key=tail.count)
    assert 0.9 * knee - 1 <= resting <= 1.2 * knee
    assert max(tail) <= 1.6 * knee  # the probe one step up, undone the next interval


def test_a_receiver_that_throttles_past_a_limit_never_sees_concurrency_grow_while_it_asks_to_wait() -> None:
    # A rate-limited receiver: 429 for whatever goes past 10 requests in flight; the backlog never runs out.
    trace = simulate(lambda concurrency: LATENCY, ingest=200_000, backlog=0, seconds=300, throttle_above=10)
    concurrencies = [1] + [c for c, _, _ in trace]
    for t, (decided, _, throttled) in enumerate(trace):
        if throttled:
            assert decided < concurrencies[t]  # cut in the window of the 429
            if t + 1 < len(trace):
                assert trace[t + 1][0] <= decided  # and nothing grows in the window after it
    tail = concurrencies[-100:]
    assert max(tail) <= 13  # a limit is found by passing it, by one quarter step at most
    assert sum(tail) / len(tail) >= 7  # the sawtooth stays near the limit
    assert sum(throttled for _, _, throttled in trace[-100:]) <= 25  # one window in four at most sees a 429


# --- batch size -----------------------------------------------------------------------------------------


def acked(**changes: object) -> Window:
    """Full batches of 1,000 samples acknowledged in 0.3 s (the target is 1 s), 50,000 samples waiting."""
    base = Window(
        duration=1.0,
        delivered=20_000,
        requests=20,
        latency=0.3,
        errors=0,
        throttled=False,
        backlog=50_000,
        backlog_growth=0,
        incoming=20_000,
        concurrency=8,
        busy=0.75,
    )
    return replace(base, **changes)


@dataclass(frozen=True)
class BatchCase:
    current: int
    window: Window
    expected: Decision
    minimum: int = 100
    maximum: int = 10_000


BATCH_CASES = {
    "with a backlog, full batches and latency under half the target, batches double": BatchCase(
        1000, acked(), Decision(2000, "backlog-and-fast")
    ),
    "doubling stops at the maximum": BatchCase(
        8000, acked(delivered=160_000, requests=20, backlog=500_000), Decision(10_000, "backlog-and-fast")
    ),
    "between half the target and the target it holds": BatchCase(1000, acked(latency=0.7), Decision(1000, "in-band")),
    "at exactly the target it holds": BatchCase(1000, acked(latency=1.0), Decision(1000, "in-band")),
    "latency over the target shrinks batches in proportion": BatchCase(
        1000, acked(latency=2.0), Decision(500, "latency-over-target")
    ),
    "far over the target, one step shrinks to a quarter at most": BatchCase(
        1000, acked(latency=10.0), Decision(250, "latency-over-target")
    ),
    "shrinking never goes below the minimum": BatchCase(
        150, acked(delivered=3_000, latency=10.0), Decision(100, "latency-over-target")
    ),
    "over the target on batches smaller than the limit scales what was sent": BatchCase(
        1000, acked(delivered=8_000, latency=1.25), Decision(320, "latency-over-target")  # 400 x 0.8
    ),
    "without a backlog, fast answers do not grow batches": BatchCase(
        1000, acked(backlog=0), Decision(1000, "no-backlog")
    ),
    "a backlog smaller than one batch is no reason to grow": BatchCase(
        1000, acked(backlog=600), Decision(1000, "no-backlog")
    ),
    "batches well under the limit show the limit is not what binds": BatchCase(
        1000, acked(delivered=8_000), Decision(1000, "batches-not-full")
    ),
    "without an acknowledged request it holds": BatchCase(
        1000, acked(delivered=0, requests=0, latency=None), Decision(1000, "no-measurement")
    ),
    "a current value above the maximum is lowered to it, then judged": BatchCase(
        20_000, acked(latency=0.7), Decision(10_000, "in-band")
    ),
}


@pytest.mark.parametrize("case", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_batch_samples(case: BatchCase) -> None:
    kwargs = {"minimum": case.minimum, "maximum": case.maximum, "target_latency": 1.0}
    assert batch_decision(case.current, case.window, **kwargs) == case.expected
    assert next_batch_samples(case.current, case.window, **kwargs) == case.expected.value


def test_batch_size_climbs_while_cheap_and_settles_under_the_target() -> None:
    # 20 ms per request plus 10 us per sample; the target is 1 s; there is always a backlog.
    size, sizes = 1000, []
    for _ in range(30):
        requests = 10
        latency = 0.02 + 1e-5 * size
        window = acked(delivered=requests * size, requests=requests, latency=latency, backlog=10 * size)
        size = next_batch_samples(size, window, minimum=100, maximum=1_000_000, target_latency=1.0)
        sizes.append(size)
    assert 0.5 <= 0.02 + 1e-5 * sizes[-1] <= 1.0
    assert len(set(sizes[-10:])) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"minimum": 0, "maximum": 10, "target_latency": 1.0}, "minimum"),
        ({"minimum": 10, "maximum": 5, "target_latency": 1.0}, "maximum"),
        ({"minimum": 1, "maximum": 10, "target_latency": 0.0}, "target_latency"),
    ],
)
def test_batch_arguments_are_checked(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        next_batch_samples(5, acked(), **kwargs)
