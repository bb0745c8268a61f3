"""How hard the sender pushes one endpoint: how many requests in flight, how many samples per request.

Why this shape: like Prometheus' resharding arithmetic, each decision is a small pure function of what the
sender observed over the last control interval (a `Window`), tested by a table of cases; the sender keeps
the previous window and calls `next_concurrency` and `next_batch_samples` once per interval (1-5 s). Time
is never read here, so a simulation runs minutes of traffic in milliseconds. Unlike Prometheus, a change
takes effect without stopping anything: the sender just lets more (or fewer) requests start.

Every decision carries a short reason ("step-did-not-pay", "throttled") for a debug log or a metric label.
When the sender may send at all (Retry-After pauses, a dead endpoint, a byte rate) is `breaker.py`'s part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Decision", "Window", "batch_decision", "concurrency_decision", "next_batch_samples", "next_concurrency"]

DRAIN_SECONDS = 20.0
"""A backlog should be gone within this long: it asks for backlog / DRAIN_SECONDS samples/s on top of the
incoming rate (Prometheus' backlog catch-up of 5% a second)."""

HEADROOM = 1.5
"""With nothing waiting, keep this many times the concurrency Little's law needs, so a burst (a whole batch
cut at once) finds free slots instead of queueing."""

BAND = 0.3
"""Shrink only when the target is more than 30% under the current concurrency (Prometheus' tolerance), so
small swings in the incoming rate do not make it flap."""

STEP_UP = 1.25
"""Grow by a quarter (at least one) per interval: small enough that a step which did not pay costs little,
large enough to reach 50 from 1 in about fifteen intervals."""

STEP_DOWN = 0.75
"""Drift down by at most a quarter per interval when idle capacity is not needed."""

CUT = 0.5
"""Multiplicative decrease on errors and throttling (TCP's halving): back off fast, grow back slowly."""

ERROR_SHARE = 0.05
"""Retryable failures above this share of attempts cut concurrency; below it a lone reset is noise."""

BUSY_FULL = 0.8
"""Slots count as full when on average this share of them had a request in flight."""

PAID = 0.5
"""A step up paid when throughput rose by at least half of what the extra slots could add."""

LOST = 0.1
"""A step down lost nothing when throughput stayed within 10% of the larger concurrency's."""

LATENCY_GREW = 1.5
"""Per-sample latency this many times the previous window's means the receiver is slowing: do not push."""


@dataclass(frozen=True, slots=True)
class Window:
    """What the sender observed over one control interval, for one endpoint.

    `duration`: seconds the window lasted. `delivered`: samples acknowledged. `requests`: requests acknowledged
    (2xx), the ones `delivered` counts. `latency`: median seconds of those requests, None when there were none.
    `errors`: requests that failed retryably (network error, timeout, 5xx without Retry-After). `throttled`: the
    receiver asked us to wait (429, or 503 with Retry-After) at least once in the window. `backlog`: samples
    waiting in the queue (not in flight) at the end. `backlog_growth`: `backlog` minus the backlog at the start
    (negative while draining). `incoming`: samples put into the queue during the window. `concurrency`: the
    limit in effect. `busy`: mean requests in flight divided by `concurrency`, in [0, 1] (the sender adds
    in_flight * elapsed at every change and divides by duration * concurrency): how full the slots were.
    """

    duration: float
    delivered: int
    requests: int
    latency: float | None
    errors: int
    throttled: bool
    backlog: int
    backlog_growth: int
    incoming: int
    concurrency: int
    busy: float

    def __post_init__(self) -> None:
        if not 0.0 < self.duration < math.inf:
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        for name in ("delivered", "requests", "errors", "backlog", "incoming"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.latency is not None and not 0.0 <= self.latency < math.inf:
            raise ValueError(f"latency must be None or a finite number of seconds >= 0, got {self.latency!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency!r}")
        if not 0.0 <= self.busy <= 1.0:  # also rejects NaN
            raise ValueError(f"busy must be in [0, 1], got {self.busy!r}")

    @property
    def throughput(self) -> float:
        """Samples acknowledged per second."""
        return self.delivered / self.duration

    @property
    def incoming_rate(self) -> float:
        """Samples queued per second."""
        return self.incoming / self.duration

    @property
    def samples_per_request(self) -> float | None:
        """Mean samples per acknowledged request; None without any."""
        return self.delivered / self.requests if self.requests and self.delivered else None

    @property
    def error_share(self) -> float:
        """Retryable failures as a share of attempts that ended (acknowledged or failed)."""
        attempts = self.requests + self.errors
        return self.errors / attempts if attempts else 0.0

    @property
    def measured(self) -> bool:
        """Whether the window says what a request costs: acknowledged samples with a latency."""
        return self.latency is not None and self.samples_per_request is not None


@dataclass(frozen=True, slots=True)
class Decision:
    """A controller's answer and the rule that gave it."""

    value: int
    reason: str


def _check_bounds(minimum: int, maximum: int) -> None:
    if minimum < 1:
        raise ValueError(f"minimum must be >= 1, got {minimum!r}")
    if maximum < minimum:
        raise ValueError(f"maximum ({maximum!r}) must be at least minimum ({minimum!r})")


def _needed(window: Window) -> float:
    """Little's law: requests in flight = request rate x latency. To carry the incoming rate plus the backlog
    within DRAIN_SECONDS, the sender needs (incoming_rate + backlog / DRAIN_SECONDS) x latency / samples per
    request requests in flight. Only called on a measured window."""
    assert window.latency is not None and window.samples_per_request is not None
    demand = window.incoming_rate + window.backlog / DRAIN_SECONDS
    return demand * window.latency / window.samples_per_request


def _saturated(window: Window) -> bool:
    """A window whose throughput says what its concurrency can do: work waiting, slots full, clean answers."""
    return (
        window.measured
        and window.backlog > 0
        and window.busy >= BUSY_FULL
        and not window.throttled
        and window.error_share <= ERROR_SHARE
    )


def _latency_per_sample(window: Window) -> float:
    assert window.latency is not None and window.samples_per_request is not None
    return window.latency / window.samples_per_request


def concurrency_decision(
    current: int, window: Window, previous: Window | None, *, minimum: int = 1, maximum: int
) -> Decision:
    """Requests in flight for the next interval, and why. The sender starts at `minimum`.

    Cut first: a 429 (or Retry-After) in the window, or retryable errors above 5% of attempts, halve it, and
    nothing grows in the window after a throttle. Grow only with a backlog Little's law says the current
    concurrency cannot drain within DRAIN_SECONDS, and only while growing pays: the slots are full, the last
    step up raised throughput by at least half of what its extra slots could add (a receiver whose latency
    grows with concurrency fails this, and the step is undone), the last step down did lose throughput, and
    latency per sample has not grown by half. Growth is a quarter per interval (one slot after a step down),
    not past what Little's law asks. With no backlog pressing, drift down by a quarter a step towards 1.5x
    the Little's-law need, once that is 30% under the current value (the band keeps it from flapping) and
    the backlog is not growing. Always within [minimum, maximum].

    Only the last window is remembered, so at a saturated receiver with work always waiting it probes one
    step up every third interval and undoes it: the price of noticing when the receiver gets faster.
    """
    _check_bounds(minimum, maximum)
    current = min(max(current, minimum), maximum)

    def to(value: int, reason: str) -> Decision:
        return Decision(min(max(value, minimum), maximum), reason)

    if window.throttled:
        return to(math.floor(current * CUT), "throttled")
    if window.error_share > ERROR_SHARE:
        return to(math.floor(current * CUT), "errors")
    if not window.measured:
        if window.backlog == 0 and window.incoming == 0:
            return to(math.floor(current * STEP_DOWN), "idle")
        return to(current, "no-measurement")

    needed = _needed(window)
    if window.backlog > 0 and needed > current:
        if previous is not None and previous.throttled:
            return to(current, "throttled-recently")
        if window.busy < BUSY_FULL:
            return to(current, "slots-not-full")
        step, reason = max(current + 1, math.ceil(current * STEP_UP)), "backlog"
        if previous is not None and _saturated(previous):
            ratio = window.concurrency / previous.concurrency
            gain = window.throughput / previous.throughput  # saturated: delivered > 0
            if ratio > 1.0 and gain - 1.0 < PAID * (ratio - 1.0):
                return to(min(current, previous.concurrency), "step-did-not-pay")
            if ratio < 1.0:
                if gain >= 1.0 - LOST:
                    return to(current, "step-down-lost-nothing")
                # Back from a cut or an undone step: one slot at a time (additive increase), so a receiver
                # saturating between two quarter steps finds its level instead of seesawing around it.
                step, reason = current + 1, "recover"
            if _latency_per_sample(window) > LATENCY_GREW * _latency_per_sample(previous):
                return to(current, "latency-grew")
        return to(min(step, math.ceil(needed)), reason)

    target = max(minimum, math.ceil(needed * HEADROOM))
    if target >= current * (1.0 - BAND):
        return to(current, "in-band")
    if window.backlog_growth > 0:
        return to(current, "backlog-growing")
    return to(max(target, math.floor(current * STEP_DOWN)), "over-provisioned")


def next_concurrency(
    current: int, window: Window, previous: Window | None, *, minimum: int = 1, maximum: int
) -> int:
    """`concurrency_decision(...).value`: the number alone."""
    return concurrency_decision(current, window, previous, minimum=minimum, maximum=maximum).value


FAST = 0.5
"""Requests acknowledged in under half the target latency may grow: doubling the batch at most doubles the
latency (per-request overhead only makes it less), so one step lands near the target at worst, not past it
by much (batches count as full at 90%, hence "near")."""

FULL = 0.9
"""Batches count as full at 90% of the limit; smaller ones show the limit is not what binds."""


def batch_decision(
    current: int, window: Window, *, minimum: int, maximum: int, target_latency: float
) -> Decision:
    """Samples per request for the next interval, and why.

    Acknowledgement latency above `target_latency` shrinks batches in proportion (latency is at most linear in
    batch size, so target/latency of the batch reaches the target), at most to a quarter per step: end-to-end
    delay matters more than per-request overhead. With a backlog, full batches and latency under half the
    target, double: larger requests amortize per-request overhead, and the doubled latency stays about under
    the target ("a backlog" is at least one batch at the current size waiting). Between half the target and
    the target it holds (the band that keeps it from flapping), and so it does with no backlog, where batches
    are as large as what arrives. Always within [minimum, maximum].
    """
    _check_bounds(minimum, maximum)
    if not 0.0 < target_latency < math.inf:
        raise ValueError(f"target_latency must be a positive number of seconds, got {target_latency!r}")
    current = min(max(current, minimum), maximum)

    def to(value: int, reason: str) -> Decision:
        return Decision(min(max(value, minimum), maximum), reason)

    if not window.measured:
        return to(current, "no-measurement")
    assert window.latency is not None and window.samples_per_request is not None
    if window.latency > target_latency:
        # The latency was measured on batches of samples_per_request; scale what was sent, not the limit.
        basis = min(current, window.samples_per_request)
        return to(max(current // 4, math.floor(basis * target_latency / window.latency)), "latency-over-target")
    if window.latency >= FAST * target_latency:
        return to(current, "in-band")
    if window.backlog < current:
        return to(current, "no-backlog")
    if window.samples_per_request < FULL * current:
        return to(current, "batches-not-full")
    return to(current * 2, "backlog-and-fast")


def next_batch_samples(current: int, window: Window, *, minimum: int, maximum: int, target_latency: float) -> int:
    """`batch_decision(...).value`: the number alone."""
    return batch_decision(current, window, minimum=minimum, maximum=maximum, target_latency=target_latency).value
