"""Consistent probability sampling, per OpenTelemetry "TraceState: Probability Sampling" and "TraceState Handling"."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samplers.consistent import (
    ALWAYS_KEEP,
    MAX_THRESHOLD,
    adjusted_count,
    combine_th,
    encode_th,
    keep,
    parse_ot,
    parse_rv,
    parse_th,
    randomness,
    rate_of,
    set_th,
    threshold_for,
)

RATES = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
POSITIVE_RATES = st.floats(min_value=2.0**-56, max_value=1.0, allow_nan=False)
PRECISIONS = st.integers(min_value=1, max_value=14)
TRACE_IDS = st.binary(min_size=16, max_size=16)
THRESHOLDS = st.integers(min_value=0, max_value=MAX_THRESHOLD - 1)


def trace_id_with_randomness(r: int) -> bytes:
    """A trace ID whose low 56 bits are `r` (the high bytes are arbitrary but fixed)."""
    return bytes.fromhex("0af7651916cd43dd84") + r.to_bytes(7, "big")


# --- thresholds from rates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "at_precision_3", "at_precision_4", "at_precision_5"),
    [
        # The spec's table for 1-in-N sampling (section "Converting floating-point probability to threshold").
        (1.0, "0", "0", "0"),
        (1 / 2, "8", "8", "8"),
        (1 / 3, "aab", "aaab", "aaaab"),
        (1 / 4, "c", "c", "c"),
        (1 / 5, "ccd", "cccd", "ccccd"),
        (1 / 8, "e", "e", "e"),
        (1 / 10, "e66", "e666", "e6666"),
        (1 / 16, "f", "f", "f"),
        (1 / 100, "fd71", "fd70a", "fd70a4"),
        (1 / 1000, "ffbe7", "ffbe77", "ffbe76d"),
        (1 / 10000, "fff972", "fff9724", "fff97247"),
        (1 / 100000, "ffff584", "ffff583a", "ffff583a5"),
        (1 / 1000000, "ffffef4", "ffffef39", "ffffef391"),
    ],
)
def test_thresholds_match_the_spec_examples(
    rate: float, at_precision_3: str, at_precision_4: str, at_precision_5: str
) -> None:
    assert [encode_th(threshold_for(rate, p)) for p in (3, 4, 5)] == [at_precision_3, at_precision_4, at_precision_5]


@pytest.mark.parametrize(
    ("rate", "th"),
    [
        (0.99, "028f6"),  # leading zeros of T do not count as precision (as the Collector does)
        (0.999, "004189"),
        (0.05, "f3333"),  # a leading "f" does not count either (as the spec's reference algorithm does)
        (0.95, "0cccd"),
    ],
)
def test_leading_zeros_and_leading_fs_add_digits_so_both_rate_and_threshold_keep_their_precision(
    rate: float, th: str
) -> None:
    assert encode_th(threshold_for(rate)) == th


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (1.0, ALWAYS_KEEP),
        (0.0, MAX_THRESHOLD),
        (2.0**-56, MAX_THRESHOLD - 1),
        (2.0**-60, MAX_THRESHOLD - 1),  # below the smallest probability: still keeps something
        (0.5, 1 << 55),
    ],
)
def test_the_extreme_rates_have_exact_thresholds(rate: float, expected: int) -> None:
    assert threshold_for(rate) == expected


def test_a_rate_just_below_one_never_claims_a_hundred_percent() -> None:
    assert threshold_for(math.nextafter(1.0, 0.0)) > 0


@pytest.mark.parametrize(
    ("rate", "precision"),
    [(-0.1, 4), (1.1, 4), (math.nan, 4), (math.inf, 4), (0.5, 0), (0.5, 15)],
)
def test_an_out_of_range_rate_or_precision_is_rejected_naming_the_argument(rate: float, precision: int) -> None:
    name = "rate" if not 0 <= rate <= 1 else "precision"
    with pytest.raises(ValueError, match=name):
        threshold_for(rate, precision)


@given(rate=POSITIVE_RATES, precision=PRECISIONS)
def test_the_rounded_threshold_keeps_the_rate_to_its_precision(rate: float, precision: int) -> None:
    kept = rate_of(threshold_for(rate, precision))
    assert abs(kept - rate) <= 0.5 * 16.0 ** (1 - precision) * rate + 2.0**-56


@given(rate=RATES, precision=PRECISIONS)
def test_the_encoded_threshold_decodes_to_exactly_the_threshold_that_decides(rate: float, precision: int) -> None:
    threshold = threshold_for(rate, precision)
    if threshold == MAX_THRESHOLD:
        assert rate == 0.0  # never-keep is only for rate 0, and it is never written
        return
    assert parse_th(encode_th(threshold)) == threshold


@given(threshold=THRESHOLDS)
def test_any_threshold_survives_encode_and_parse(threshold: int) -> None:
    encoded = encode_th(threshold)
    assert 1 <= len(encoded) <= 14
    assert encoded == "0" or not encoded.endswith("0")
    assert parse_th(encoded) == threshold


@given(low=RATES, high=RATES, precision=PRECISIONS)
def test_a_higher_rate_never_has_a_higher_threshold(low: float, high: float, precision: int) -> None:
    low, high = sorted((low, high))
    assert threshold_for(high, precision) <= threshold_for(low, precision)


def test_the_never_keep_threshold_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="threshold"):
        encode_th(MAX_THRESHOLD)


# --- th and rv values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("8", 1 << 55),
        ("c", 0xC << 52),
        ("C", 0xC << 52),  # the grammar allows upper-case hex digits
        ("fd70a", 0xFD70A << 36),
        ("00000000000001", 1),
        ("ffffffffffffff", MAX_THRESHOLD - 1),
        ("", None),
        ("fffffffffffffff", None),  # 15 digits
        ("g", None),
        ("+8", None),
        ("8_0", None),
        (" 8", None),
        ("0x8", None),
    ],
)
def test_a_th_value_is_one_to_fourteen_hex_digits_padded_with_trailing_zeros(value: str, expected: int | None) -> None:
    assert parse_th(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0123456789abcd", 0x0123456789ABCD),
        ("FFFFFFFFFFFFFF", MAX_THRESHOLD - 1),
        ("0123456789abc", None),  # rv is exactly 14 digits: no padding
        ("0123456789abcde", None),
        ("0123456789abcg", None),
    ],
)
def test_an_rv_value_is_exactly_fourteen_hex_digits(value: str, expected: int | None) -> None:
    assert parse_rv(value) == expected


@pytest.mark.parametrize(
    ("tracestate", "expected"),
    [
        ("", (None, None)),
        ("vendor=x", (None, None)),
        ("ot=th:8", (1 << 55, None)),
        ("ot=rv:0123456789abcd", (None, 0x0123456789ABCD)),
        ("vendor=x,ot=th:c;rv:0123456789abcd,other=y", (0xC << 52, 0x0123456789ABCD)),
        (" vendor=x , ot=th:c;rv:0123456789abcd , other=y ", (0xC << 52, 0x0123456789ABCD)),
        ("ot= th : c ; rv : 0123456789abcd", (0xC << 52, 0x0123456789ABCD)),
        ("ot=p:8;th:0;k1:13", (0, None)),
        ("ot=th:zz;rv:short", (None, None)),  # invalid entries are ignored
        ("ot=th:zz;th:8", (1 << 55, None)),  # ... and the first valid one wins
        ("ot=garbage;th:8", (1 << 55, None)),
        ("ot,ot=th:8", (1 << 55, None)),
        ("other=ot,bot=th:8", (None, None)),  # only the `ot` key counts
        ("ot=th:8,ot=th:c", (1 << 55, None)),  # duplicate keys: the first entry wins
    ],
)
def test_th_and_rv_are_read_from_the_ot_entry_of_a_w3c_tracestate(
    tracestate: str, expected: tuple[int | None, int | None]
) -> None:
    assert parse_ot(tracestate) == expected


# --- writing th -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tracestate", "threshold", "expected"),
    [
        ("", 1 << 55, "ot=th:8"),
        ("vendor=x", 1 << 55, "ot=th:8,vendor=x"),
        ("vendor=x,ot=th:c;rv:0123456789abcd,other=y", 1 << 55, "ot=th:8;rv:0123456789abcd,vendor=x,other=y"),
        ("vendor=x,ot=rv:0123456789abcd;p:8,other=y", 0, "ot=th:0;rv:0123456789abcd;p:8,vendor=x,other=y"),
        ("a=1,ot=rv:0123456789abcd;th:c;k1:13,b=2", 0xE << 52, "ot=rv:0123456789abcd;th:e;k1:13,a=1,b=2"),
        (" a=1 , ot = th:c , b=2 ", 1 << 55, "ot=th:8,a=1,b=2"),
        ("a=1,,b=2", 1 << 55, "ot=th:8,a=1,b=2"),  # empty members are dropped
        ("ot=th:c;bad entry;Up:x;k:ok,ot=th:1", 1 << 55, "ot=th:8;k:ok"),  # malformed and duplicate ot dropped
        ("ot=th:c;th:d", 1 << 55, "ot=th:8"),  # duplicate th sub-keys collapse
    ],
)
def test_setting_th_keeps_other_entries_in_order_and_moves_ot_first(
    tracestate: str, threshold: int, expected: str
) -> None:
    assert set_th(tracestate, threshold) == expected


def test_setting_th_keeps_at_most_the_32_members_w3c_allows_dropping_from_the_right() -> None:
    tracestate = ",".join(f"v{i}=x" for i in range(32))
    members = set_th(tracestate, 1 << 55).split(",")
    assert len(members) == 32
    assert members[0] == "ot=th:8"
    assert members[-1] == "v30=x"


@given(threshold=THRESHOLDS, rv=st.one_of(st.none(), st.integers(0, MAX_THRESHOLD - 1)))
def test_a_written_th_reads_back_with_the_rv_untouched(threshold: int, rv: int | None) -> None:
    tracestate = "vendor=x" if rv is None else f"vendor=x,ot=rv:{rv:014x};th:1"
    assert parse_ot(set_th(tracestate, threshold)) == (threshold, rv)


@pytest.mark.parametrize(
    ("incoming", "ours", "expected"),
    [
        (None, 1 << 55, 1 << 55),
        (0, 1 << 55, 1 << 55),  # raised: we sampled further
        (0xE << 52, 1 << 55, 0xE << 52),  # never lowered: an earlier stage kept fewer
        (1 << 55, 1 << 55, 1 << 55),
        (0xE << 52, 0, 0xE << 52),  # a forced keep does not undo an earlier stage's sampling
    ],
)
def test_an_incoming_threshold_is_only_ever_raised(incoming: int | None, ours: int, expected: int) -> None:
    assert combine_th(incoming, ours) == expected


@given(incoming=THRESHOLDS, ours=THRESHOLDS)
def test_combining_never_lowers_either_threshold(incoming: int, ours: int) -> None:
    combined = combine_th(incoming, ours)
    assert combined >= incoming and combined >= ours


@pytest.mark.parametrize(
    ("threshold", "rate", "count"),
    [
        (0, 1.0, 1.0),
        (1 << 55, 0.5, 2.0),
        (0xC << 52, 0.25, 4.0),
        (0xF << 52, 0.0625, 16.0),
        (MAX_THRESHOLD - 1, 2.0**-56, 2.0**56),
        (MAX_THRESHOLD, 0.0, math.inf),
    ],
)
def test_a_threshold_stands_for_a_rate_and_an_adjusted_count(threshold: int, rate: float, count: float) -> None:
    assert (rate_of(threshold), adjusted_count(threshold)) == (rate, count)


# --- decisions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "threshold", "kept"),
    [
        (0, 0, True),  # th 0 keeps everything
        (MAX_THRESHOLD - 1, MAX_THRESHOLD, False),  # never-keep keeps nothing
        ((1 << 55) - 1, 1 << 55, False),
        (1 << 55, 1 << 55, True),  # keep iff R >= T
    ],
)
def test_a_trace_is_kept_when_its_randomness_reaches_the_threshold(r: int, threshold: int, kept: bool) -> None:
    assert keep(trace_id_with_randomness(r), threshold) is kept


def test_randomness_is_the_low_56_bits_of_the_trace_id() -> None:
    assert randomness(bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")) == 0xCE929D0E0E4736


@given(trace_id=TRACE_IDS, low=RATES, high=RATES)
def test_a_trace_kept_at_one_rate_is_kept_at_every_higher_rate(trace_id: bytes, low: float, high: float) -> None:
    low, high = sorted((low, high))
    if keep(trace_id, threshold_for(low)):
        assert keep(trace_id, threshold_for(high))


@given(trace_id=TRACE_IDS, rate=RATES)
def test_two_independent_deciders_agree(trace_id: bytes, rate: float) -> None:
    first = keep(trace_id, threshold_for(rate))
    threshold_for.cache_clear()
    second = keep(bytes(bytearray(trace_id)), threshold_for(rate))
    assert first == second


@pytest.mark.parametrize(
    ("trace_randomness", "rv", "kept"),
    [
        (MAX_THRESHOLD - 1, 0, False),  # the trace ID alone would keep it
        (0, MAX_THRESHOLD - 1, True),  # the trace ID alone would drop it
    ],
)
def test_an_explicit_rv_overrides_the_trace_id_randomness(trace_randomness: int, rv: int, kept: bool) -> None:
    trace_id = trace_id_with_randomness(trace_randomness)
    assert keep(trace_id, threshold_for(0.5), rv=rv) is kept
    assert randomness(trace_id, rv) == rv


@pytest.mark.parametrize("rate", [0.99, 0.5, 0.05, 0.001])
def test_the_kept_fraction_of_random_trace_ids_is_within_three_sigma_of_the_rate(rate: float) -> None:
    n = 200_000
    generator = random.Random(f"consistent-{rate}")
    threshold = threshold_for(rate)
    kept = sum(keep(generator.randbytes(16), threshold) for _ in range(n))
    assert abs(kept - n * rate) <= 3 * math.sqrt(n * rate * (1 - rate))
