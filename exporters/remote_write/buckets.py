"""Arithmetic on histogram buckets: pure functions of bounds, indexes and counts.

Kept apart from the two modules that use it so that each reads as what it decides, not how buckets are
counted: `translate` (OTLP points to Prometheus series) uses the explicit-bound `le` tables, the classic
layout of an exponential histogram and the native histogram span/delta encoding; `cumulative` (delta to
cumulative) adds exponential histograms of different scales and zero thresholds. No protobuf message, no
series labels (beyond the `le` label's text) and no limits of a receiver are known here.

Exponential buckets follow OTLP: at scale s the base is 2**(2**-s) and bucket `index` holds values in
(base**index, base**(index + 1)]; a bucket run is dense counts from an `offset` (the first bucket's index).
Lowering the scale by `by` maps index i to i >> by, exactly (the perfect-subsetting property), so a
downscale only adds neighbouring counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from exporters.remote_write.naming import float_label

LE = "le"
_INF_PAIR = (LE, "+Inf")
MAX_CLASSIC_BUCKETS = 160
"""Finite buckets (both signs together) an exponential histogram keeps when converted to classic buckets."""
MAX_EXPONENTIAL_BUCKETS = 160
"""Buckets per sign a cumulative exponential histogram keeps; past it, the sum of two is downscaled."""


# -- explicit bounds ----------------------------------------------------------------------------------------


class LeTable(NamedTuple):
    """The classic buckets of one set of explicit bounds."""

    given: int  # how many bounds the point carried
    bounds: tuple[float, ...]  # the finite ones (a last bound of +Inf is the +Inf bucket itself)
    le_pairs: tuple[tuple[str, str], ...]  # `le` labels for `bounds`, then +Inf
    le_lengths: tuple[int, ...]  # the characters of each label's name and value (for size estimates)


@lru_cache(maxsize=1024)
def le_table(given: tuple[float, ...]) -> LeTable | None:
    """The table for these bounds, or None unless they strictly increase (NaN never does)."""
    if any(not a < b for a, b in zip(given, given[1:])) or (given and given[0] != given[0]):
        return None
    bounds = given[:-1] if given and given[-1] == float("inf") else given
    pairs = tuple((LE, float_label(bound)) for bound in bounds) + (_INF_PAIR,)
    return LeTable(len(given), bounds, pairs, tuple(len(value) + len(LE) for _, value in pairs))


# -- exponential buckets as classic buckets -----------------------------------------------------------------


class Layout(NamedTuple):
    """Classic buckets for one exponential histogram shape."""

    shift: int  # scales merged away to stay within MAX_CLASSIC_BUCKETS
    keep: tuple[int, ...]  # which cumulative counts (negative buckets, zero bucket, positive buckets) get a series
    bounds: tuple[float, ...]  # their upper bounds, strictly increasing (+Inf not included)
    le_pairs: tuple[tuple[str, str], ...]  # their `le` labels, then +Inf
    le_lengths: tuple[int, ...]


def merged_length(offset: int, length: int, shift: int) -> int:
    """How many buckets `length` buckets from `offset` become when downscaled by `shift`."""
    return ((offset + length - 1) >> shift) - (offset >> shift) + 1 if length else 0


@lru_cache(maxsize=1024)
def exponential_layout(
    scale: int,
    zero_threshold: float,
    positive_offset: int,
    positive_length: int,
    negative_offset: int,
    negative_length: int,
    with_zero: bool = True,
) -> Layout:
    """The classic buckets of an exponential histogram of this shape: downscaled until both signs together
    fit in MAX_CLASSIC_BUCKETS, negative buckets first (most negative first), then the zero bucket, then
    the positive ones. Cached: a cumulative histogram's shape rarely changes between points."""
    shift = 0
    while (
        merged_length(positive_offset, positive_length, shift)
        + merged_length(negative_offset, negative_length, shift)
        > MAX_CLASSIC_BUCKETS
    ):
        shift += 1
    scale -= shift
    upper: list[float] = []
    first = negative_offset >> shift
    for index in range(first + merged_length(negative_offset, negative_length, shift) - 1, first - 1, -1):
        upper.append(-power(scale, index))  # a negative bucket's upper bound is -base**index
    if with_zero:
        upper.append(zero_threshold)
    first = positive_offset >> shift
    for index in range(first, first + merged_length(positive_offset, positive_length, shift)):
        upper.append(power(scale, index + 1))
    keep: list[int] = []
    bounds: list[float] = []
    for i, bound in enumerate(upper):
        # Bounds that overflow, or that rounding made equal to the one before, fold into the next bucket.
        if bound != float("inf") and (not bounds or bound > bounds[-1]):
            keep.append(i)
            bounds.append(bound)
    table = le_table(tuple(bounds))
    assert table is not None  # increasing by construction
    return Layout(shift, tuple(keep), table.bounds, table.le_pairs, table.le_lengths)


def power(scale: int, index: int) -> float:
    """base**index for base = 2**(2**-scale), as exactly as a float allows."""
    exponent = index * 2.0**-scale
    if exponent >= 1024:
        return float("inf")
    if exponent < -1074:
        return 0.0
    return 2.0**exponent


def trim(offset: int, counts: Sequence[int]) -> tuple[int, Sequence[int]]:
    """Dense buckets without the empty ones at either end (SDKs send their whole backing array)."""
    if not counts or (counts[0] and counts[-1]):
        return offset, counts
    counts = list(counts)
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    start = 0
    while start < end and not counts[start]:
        start += 1
    return offset + start, counts[start:end]


def downscale(offset: int, counts: Sequence[int], by: int) -> tuple[int, Sequence[int]]:
    """Buckets at scale s as buckets at scale s - by: index i becomes i >> by. Returns `counts` itself when
    there is nothing to merge (callers that keep or change the result copy it first)."""
    if by == 0 or not counts:
        return (offset >> by, counts)
    new_offset = offset >> by
    out = [0] * merged_length(offset, len(counts), by)
    for i, count in enumerate(counts):
        out[((offset + i) >> by) - new_offset] += count
    return new_offset, out


# -- exponential buckets as native histogram spans ----------------------------------------------------------


def sparse(offset: int, counts: Sequence[int], shift: int) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """OTLP's dense buckets (lower-boundary indexes from `offset`) as Prometheus spans and count deltas
    (upper-boundary indexes, one more); runs of more than two empty buckets start a new span."""
    if not counts:
        return (), ()
    if shift:
        offset, counts = downscale(offset, counts, shift)
    spans: list[list[int]] = []
    deltas: list[int] = []
    previous = zeros = 0
    span: list[int] | None = None
    for i, count in enumerate(counts):
        if not count:
            zeros += 1
            continue
        if span is None:
            span = [offset + 1 + i, 1]
            spans.append(span)
        elif zeros > 2:
            span = [zeros, 1]
            spans.append(span)
        else:
            if zeros:
                deltas.append(-previous)
                deltas.extend([0] * (zeros - 1))
                previous = 0
            span[1] += zeros + 1
        zeros = 0
        deltas.append(count - previous)
        previous = count
    return tuple((span_offset, length) for span_offset, length in spans), tuple(deltas)


# -- adding exponential histograms --------------------------------------------------------------------------


class ExponentialBuckets(NamedTuple):
    """An exponential histogram's buckets; `positive` and `negative` are (offset, dense counts)."""

    scale: int
    zero_threshold: float
    zero_count: int
    positive: tuple[int, list[int]]
    negative: tuple[int, list[int]]


def add_exponential(mine: ExponentialBuckets, theirs: ExponentialBuckets) -> ExponentialBuckets:
    """The bucket-wise sum of two exponential histograms: both aligned to the lower scale (exact) and to the
    wider zero threshold (buckets wholly inside it move into the zero count), then downscaled further
    while a sign needs more than MAX_EXPONENTIAL_BUCKETS buckets. The lists of `mine` may be reused."""
    scale = min(mine.scale, theirs.scale)
    sides = [
        [downscale(*mine.positive, mine.scale - scale), downscale(*mine.negative, mine.scale - scale)],
        [downscale(*theirs.positive, theirs.scale - scale), downscale(*theirs.negative, theirs.scale - scale)],
    ]
    zero_count = mine.zero_count + theirs.zero_count
    threshold = max(mine.zero_threshold, theirs.zero_threshold)
    for side in sides:
        for i, (offset, counts) in enumerate(side):
            moved, side[i] = widen_zero(scale, offset, counts, threshold)
            zero_count += moved
    (my_positive, my_negative), (their_positive, their_negative) = sides
    merged = [add_buckets(*my_positive, *their_positive), add_buckets(*my_negative, *their_negative)]
    extra = max(excess_scale(*merged[0]), excess_scale(*merged[1]))
    positive, negative = (downscale(*buckets, extra) for buckets in merged)
    return ExponentialBuckets(scale - extra, threshold, zero_count, positive, negative)


def add_buckets(a_offset: int, a: list[int], b_offset: int, b: list[int]) -> tuple[int, list[int]]:
    """Bucket-wise sum, trimmed of zero buckets at both ends."""
    if not a or not b:
        offset, counts = (b_offset, list(b)) if not a else (a_offset, list(a))
    else:
        offset = min(a_offset, b_offset)
        counts = [0] * (max(a_offset + len(a), b_offset + len(b)) - offset)
        for base, side in ((a_offset - offset, a), (b_offset - offset, b)):
            for i, count in enumerate(side):
                counts[base + i] += count
    lo, hi = 0, len(counts)
    while lo < hi and counts[lo] == 0:
        lo += 1
    while hi > lo and counts[hi - 1] == 0:
        hi -= 1
    return (offset + lo, counts[lo:hi]) if lo < hi else (0, [])


def excess_scale(offset: int, counts: list[int]) -> int:
    """How many scales to drop so these buckets fit in MAX_EXPONENTIAL_BUCKETS."""
    by = 0
    while counts and merged_length(offset, len(counts), by) > MAX_EXPONENTIAL_BUCKETS:
        by += 1
    return by


def widen_zero(scale: int, offset: int, counts: list[int], threshold: float) -> tuple[int, tuple[int, list[int]]]:
    """Move the buckets whose upper bound (base ** (index + 1)) is within `threshold` into the zero bucket."""
    moved = 0
    while counts and _upper_bound(scale, offset) <= threshold:
        moved += counts[0]
        offset, counts = offset + 1, counts[1:]
    return moved, (offset, counts)


def _upper_bound(scale: int, index: int) -> float:
    """base ** (index + 1). Not `power(scale, index + 1)`: that rounds bounds below 2**-1074 to 0, this keeps
    the smallest subnormal, and the delta state has always been merged with this one."""
    try:
        return 2.0 ** ((index + 1) * 2.0**-scale)
    except OverflowError:
        return math.inf
