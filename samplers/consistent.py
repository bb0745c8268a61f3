"""Consistent probability sampling: keep decisions from trace randomness and an OpenTelemetry `th` threshold.

Why this shape: two agents that see spans of the same trace must decide the same way without talking to each
other, and a trace kept at a low rate must be kept at every higher one. The OpenTelemetry spec ("TraceState:
Probability Sampling", "TraceState Handling") gets both from one comparison: the trace's 56-bit randomness R
(the low 7 bytes of the trace ID, or an explicit `rv` in the `ot` tracestate entry) against a rejection
threshold T derived from the rate; keep iff R >= T. Writing T on every kept span (`ot=th:...`) tells whoever
counts the spans how many each one stands for (the adjusted count), and a later stage may only raise it.

Thresholds are integers in [0, 2**56]: 0 keeps everything, MAX_THRESHOLD keeps nothing (a rate of 0 is not a
probability the spec can encode, so it must never be written to a tracestate). Thresholds are rounded to a few
significant hex digits so that `th` stays short, and the rounded value is the one used for the decision: the
encoded `th` always decodes to exactly the T that decided.
"""

from __future__ import annotations

import functools
import math

__all__ = [
    "ALWAYS_KEEP",
    "DEFAULT_PRECISION",
    "MAX_THRESHOLD",
    "adjusted_count",
    "combine_th",
    "encode_th",
    "keep",
    "parse_ot",
    "parse_rv",
    "parse_th",
    "randomness",
    "rate_of",
    "set_th",
    "threshold_for",
]

MAX_THRESHOLD = 1 << 56
"""2**56: the number of distinct randomness values; as a threshold it means "never keep"."""

ALWAYS_KEEP = 0
"""The threshold of a 100% (or forced) keep, written as `th:0`."""

DEFAULT_PRECISION = 4
"""Significant hex digits of a threshold, as the spec recommends SDKs use by default."""

_DIGITS = 14  # 56 bits as hex digits
_HEX = frozenset("0123456789abcdefABCDEF")
_OT_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz")
_OT_KEY_REST = _OT_KEY_FIRST | frozenset("0123456789")
_OT_VALUE = _OT_KEY_REST | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ._-")
_MAX_MEMBERS = 32  # W3C trace context: at most 32 list members
_OWS = " \t"
_from_bytes = int.from_bytes  # bound once: keep() runs for every decided trace


def randomness(trace_id: bytes, rv: int | None = None) -> int:
    """The trace's 56-bit randomness: an explicit `rv` when the tracestate carries one, else the trace ID's low 7 bytes.

    W3C Trace Context level 2 promises that those 7 bytes are random; `rv` exists for trace IDs that are not.
    """
    if rv is not None:
        return rv
    return _from_bytes(trace_id[9:16], "big")


def keep(trace_id: bytes, threshold: int, rv: int | None = None) -> bool:
    """Whether a trace passes `threshold`: R >= T, with R from `rv` when given, else from the 16-byte trace ID.

    Pure and deterministic, so every node and every call agrees. This is the hot path (once per decided
    trace), hence no validation here: callers pass thresholds made by `threshold_for` or `parse_th`.
    """
    if rv is None:
        rv = _from_bytes(trace_id[9:16], "big")
    return rv >= threshold


def _leading_zero_digits(value: int) -> int:
    """Leading zero hex digits of a 56-bit value written with 14 digits."""
    return _DIGITS - (value.bit_length() + 3) // 4


@functools.lru_cache(maxsize=4096)
def threshold_for(rate: float, precision: int = DEFAULT_PRECISION) -> int:
    """The rejection threshold for keeping `rate` of traces, rounded to `precision` significant hex digits.

    T = 2**56 - round(rate * 2**56) (scaling the kept share keeps full precision for tiny rates), then rounded
    half up to a multiple of 16**k. The digit count grows by the leading zeros of T (rates near 1, as the
    Collector does) and by the leading zeros of 2**56 - T (rates near 0, as the spec's reference algorithm
    does), so both the threshold and the kept share keep `precision` significant digits: the spec's table of
    examples comes out exactly (0.5 -> "8", 0.1 -> "e666", 0.01 -> "fd70a", 0.001 -> "ffbe77").

    Rate 1 gives 0; rate 0 gives MAX_THRESHOLD (never keep); a positive rate never rounds to either, so a
    sampled span never claims 100% and a positive rate always keeps something. Cached: the controller hands
    out the same few rates many times.
    """
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if not 1 <= precision <= _DIGITS:
        raise ValueError(f"precision must be in [1, {_DIGITS}] hex digits, got {precision!r}")
    if rate == 1.0:
        return ALWAYS_KEEP
    if rate == 0.0:
        return MAX_THRESHOLD
    kept = max(1, round(rate * MAX_THRESHOLD))  # below 2**-56: the smallest probability the spec can express
    threshold = MAX_THRESHOLD - kept
    digits = precision + _leading_zero_digits(threshold) + _leading_zero_digits(kept)
    if digits < _DIGITS:
        shift = 4 * (_DIGITS - digits)
        # Rounding stays inside (0, MAX_THRESHOLD): the kept share has a nonzero digit above the shift.
        threshold = ((threshold + (1 << (shift - 1))) >> shift) << shift
    return threshold


@functools.lru_cache(maxsize=4096)
def encode_th(threshold: int) -> str:
    """The `th` value for a threshold: 14 hex digits with trailing zeros trimmed, "0" for a 100% keep.

    Cached per threshold: a node writes the same handful of values on millions of spans.
    MAX_THRESHOLD (never keep) has no encoding; nothing kept can carry it.
    """
    if not 0 <= threshold < MAX_THRESHOLD:
        raise ValueError(f"threshold must be in [0, 2**56), got {threshold!r}")
    if threshold == 0:
        return "0"
    return format(threshold, "014x").rstrip("0")


def parse_th(value: str) -> int | None:
    """The threshold a `th` value encodes (1-14 hex digits, padded with trailing zeros); None when invalid."""
    if not 1 <= len(value) <= _DIGITS or not _HEX.issuperset(value):
        return None
    return int(value, 16) << (4 * (_DIGITS - len(value)))


def parse_rv(value: str) -> int | None:
    """The randomness an `rv` value encodes (exactly 14 hex digits); None when invalid."""
    if len(value) != _DIGITS or not _HEX.issuperset(value):
        return None
    return int(value, 16)


def _ot_value(tracestate: str) -> str | None:
    """The value of the first `ot` list member of a W3C tracestate, if any."""
    for member in tracestate.split(","):
        key, sep, value = member.partition("=")
        if sep and key.strip(_OWS) == "ot":
            return value.strip(_OWS)
    return None


def parse_ot(tracestate: str) -> tuple[int | None, int | None]:
    """(th, rv) from a full W3C tracestate header value; either is None when absent or invalid.

    Tolerant, because it reads what other people's SDKs wrote: optional whitespace around members and
    sub-keys, unknown sub-keys and malformed entries are skipped; the first valid `th` and `rv` win.
    """
    if "ot" not in tracestate:  # most tracestates carry no `ot` entry: skip the split
        return None, None
    value = _ot_value(tracestate)
    if value is None:
        return None, None
    th: int | None = None
    rv: int | None = None
    for sub in value.split(";"):
        key, sep, raw = sub.partition(":")
        if not sep:
            continue
        key = key.strip(_OWS)
        if key == "th" and th is None:
            th = parse_th(raw.strip(_OWS))
        elif key == "rv" and rv is None:
            rv = parse_rv(raw.strip(_OWS))
    return th, rv


def _valid_ot_sub(key: str, value: str) -> bool:
    """Whether `key:value` follows the grammar of an `ot` sub-entry (TraceState Handling)."""
    return (
        bool(key)
        and key[0] in _OT_KEY_FIRST
        and _OT_KEY_REST.issuperset(key)
        and _OT_VALUE.issuperset(value)
    )


def set_th(tracestate: str, threshold: int) -> str:
    """The tracestate with the `ot` entry's `th` set to `threshold`, and that entry moved first.

    W3C requires a modified entry to move to the front. Everything else is kept in order: the `ot` entry's
    other sub-keys (`rv` above all: its value must be preserved), and other vendors' entries. Dropped: empty
    members, members without "=", duplicate `ot` entries and malformed `ot` sub-entries (which would make our
    output invalid), and entries past the 32 W3C allows, from the right. The caller decides the value (see
    `combine_th`); this function only writes it.
    """
    th = encode_th(threshold)
    subs: list[str] = []
    others: list[str] = []
    seen_ot = False
    for member in tracestate.split(","):
        member = member.strip(_OWS)
        key, sep, value = member.partition("=")
        if not sep:
            continue
        if key.strip(_OWS) != "ot":
            others.append(member)
            continue
        if seen_ot:
            continue
        seen_ot = True
        for sub in value.strip(_OWS).split(";"):
            sub_key, sub_sep, sub_value = sub.strip(_OWS).partition(":")
            if sub_sep and _valid_ot_sub(sub_key, sub_value):
                subs.append(f"{sub_key}:{sub_value}")
    ours = f"th:{th}"
    th_at = next((i for i, sub in enumerate(subs) if sub.startswith("th:")), None)
    if th_at is None:
        subs.insert(0, ours)
    else:
        subs[th_at] = ours
        subs[th_at + 1 :] = [sub for sub in subs[th_at + 1 :] if not sub.startswith("th:")]
    return ",".join([f"ot={';'.join(subs)}", *others[: _MAX_MEMBERS - 1]])


def combine_th(incoming: int | None, ours: int) -> int:
    """The threshold to write on a span we keep: an incoming `th` is only ever raised, never lowered.

    Lowering it would claim an earlier stage kept the span with a higher probability than it did, and every
    count derived from the adjusted count would be too low.
    """
    if incoming is None:
        return ours
    return max(incoming, ours)


def rate_of(threshold: int) -> float:
    """The keep probability a threshold stands for: (2**56 - T) / 2**56."""
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold must be in [0, 2**56], got {threshold!r}")
    return (MAX_THRESHOLD - threshold) / MAX_THRESHOLD


def adjusted_count(threshold: int) -> float:
    """How many spans a span kept at `threshold` stands for: 2**56 / (2**56 - T); inf for never-keep."""
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold must be in [0, 2**56], got {threshold!r}")
    if threshold == MAX_THRESHOLD:
        return math.inf
    return MAX_THRESHOLD / (MAX_THRESHOLD - threshold)
