"""A compact request's sample columns decoded without a per-series Python loop: the part of the gateway's
decode that touches every sample (compact_session.py keeps the sessions and calls these).

Why a module of its own: these are pure functions of a parsed request, its raw body and the state columns
they read, each with a plain equivalent that tests/test_remote_write_compact_decode.py compares it with,
while compact_session.py is about session lifetimes, undo and bounds.

Per-series state is read and written through `gather` and `scatter`: by slice when refs are a `range`
(the steady state: a sender names every series it has, in ref order), by C-level map otherwise.
"""

from __future__ import annotations

import operator
import sys
from array import array
from collections import deque
from itertools import accumulate, chain, repeat
from typing import Any

from exporters.remote_write.compact import is_uniform, last_of_each, running, varint
from exporters.remote_write.encoding import DecodeError
from exporters.remote_write.proto.compact_pb2 import Request
from exporters.remote_write.wire import varint_at

Refs = range | list[int]
"""Series refs in increasing order; a range when contiguous, which turns per-series work into slices."""


def gather(state: Any, refs: Refs) -> Any:
    """`state[ref]` for each ref, as the state's own type (list or array)."""
    if isinstance(refs, range) and refs.step == 1:
        return state[refs.start : refs.stop]
    values = map(state.__getitem__, refs)
    return array(state.typecode, values) if isinstance(state, array) else list(values)


def scatter(state: Any, refs: Refs, values: Any) -> None:
    """`state[ref] = value` for each pair; values of the state's own type."""
    if isinstance(refs, range) and refs.step == 1:
        state[refs.start : refs.stop] = values
    else:
        deque(map(state.__setitem__, refs, values), 0)


# The sample columns of a request in the steady state repeat one pattern: every series has the same count
# (1, or the ticks of a flush), refs run 0, 1, 2 ... (deltas 1), and at a fixed interval every series has the
# same delta-of-delta timestamps. Protobuf turns each into a list of ints at ~20-70 ns apiece; the fast paths
# below compare the field's raw bytes with the canonical encoding of that pattern instead (one memcmp) and
# build the lists by repetition. A body that matches is exactly that pattern; anything else takes the parsed
# fields.


def sample_counts(message: Request, raw: dict[int, bytes] | None) -> list[int]:
    """The sample counts; by repetition when every series has the same count below 128."""
    size = len(message.sample_counts)
    if raw is not None and size:
        first = message.sample_counts[0]
        if 0 < first < 0x80 and raw[5] == bytes((first,)) * size:
            return [first] * size
    return list(message.sample_counts)


def sample_refs(message: Request, raw: dict[int, bytes] | None) -> Refs:
    """The sample series refs: a range when they are consecutive (deltas after the first are all 1)."""
    size = len(message.sample_series_ref_deltas)
    if not size:
        return range(0)
    first = message.sample_series_ref_deltas[0]
    if raw is not None and raw[4] == varint(first) + b"\x01" * (size - 1):
        return range(first, first + size)
    deltas = list(message.sample_series_ref_deltas)
    rest = deltas[1:]
    if rest.count(1) == len(rest):
        return range(first, first + size)
    if 0 in rest:
        raise DecodeError("compact: sample series refs are not increasing")
    return list(accumulate(deltas))


def sample_timestamps(message: Request, raw: dict[int, bytes] | None, counts: list[int], uniform: bool,
                bases: list[int]) -> list[int]:
    """Each sample's timestamp. With uniform counts, when every series' delta-of-deltas are the same and so are
    their last timestamps (a fixed interval in the steady state), one series is decoded and repeated."""
    return sample_timestamps_repeated(message, raw, counts, uniform, bases)[0]


def sample_timestamps_repeated(message: Request, raw: dict[int, bytes] | None, counts: list[int], uniform: bool,
                               bases: list[int]) -> tuple[list[int], list[int] | None]:
    """`sample_timestamps`, and the one series' timestamps when every series has them (None: not known to), so
    that whether each series is in time order is a question about that one."""
    every = counts[0]
    encoded: list[int] | None = None
    if uniform and raw is not None:
        pattern = list(message.timestamps[:every])
        if raw[6] == b"".join(varint((e << 1) ^ (e >> 63)) for e in pattern) * len(counts):
            if bases.count(bases[0]) == len(bases):
                one = running(running(pattern, [every], [0], operator.add), [every], bases[:1], operator.add)
                check_int64(one, "a timestamp")
                return one * len(counts), one
            encoded = pattern * len(counts)
    if encoded is None:
        encoded = list(message.timestamps)
    intervals = encoded if uniform and every == 1 else running(encoded, counts, [0] * len(counts), operator.add)
    stamps = running(intervals, counts, bases, operator.add)
    check_int64(stamps, "a timestamp")
    return stamps, None


def check_int64(column: list[int], what: str) -> None:
    """Refuse a column with a value beyond int64 (array's conversion checks each in C, cheaper than min + max)."""
    try:
        array("q", column)
    except OverflowError:
        raise DecodeError(f"compact: {what} decodes beyond int64") from None


def spread(per_series: list[Any], counts: list[int], uniform: bool) -> list[Any]:
    """Each series' item repeated for each of its samples, as the batch's per-sample columns hold them."""
    if uniform:
        every = counts[0]
        if every == 1:
            return per_series
        out: list[Any] = [None] * (every * len(per_series))
        for k in range(every):
            out[k::every] = per_series
        return out
    return list(chain.from_iterable(map(repeat, per_series, counts)))


def xor_words(a: array, b: array) -> array:
    """Two arrays of words XOR'd, as one big-integer operation rather than per word."""
    size = 8 * len(a)
    return array("Q", (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(size, "little"))


def running_xor(xored: array, counts: list[int], bases: array | int, uniform: bool) -> array:
    """Each sample's value bits: within a series, XOR'd with the previous sample's (the first with the base)."""
    return running_xor_last(xored, counts, bases, uniform)[0]


def running_xor_last(xored: array, counts: list[int], bases: array | int, uniform: bool) -> tuple[array, int | None]:
    """`running_xor`, and with uniform counts each series' last value bits as one int (the words' bytes read
    as `int.from_bytes(words, "little")` reads them; None otherwise). `bases` may be given that way: a gateway
    keeps the last request's, which saves converting the state's words (big-integer conversion, ~5 ns a word,
    is most of this function's cost).

    Why the int is carried from one position to the next: position k of every series is position k-1 XOR'd
    with the words at k, so each position costs one conversion in and one out."""
    if not uniform:
        bases = bases if isinstance(bases, array) else _int_words(bases, len(counts))
        return array("Q", running(xored.tolist(), counts, bases.tolist(), operator.xor)), None
    every, size = counts[0], 8 * len(counts)
    acc = int.from_bytes(xored if every == 1 else xored[::every], "little")
    acc ^= bases if isinstance(bases, int) else int.from_bytes(bases, "little")
    if every == 1:
        return array("Q", acc.to_bytes(size, "little")), acc
    out = array("Q", bytes(8 * len(xored)))
    out[::every] = array("Q", acc.to_bytes(size, "little"))
    for k in range(1, every):
        acc ^= int.from_bytes(xored[k::every], "little")
        out[k::every] = array("Q", acc.to_bytes(size, "little"))
    return out, acc


def _int_words(value: int, count: int) -> array:
    return array("Q", value.to_bytes(8 * count, "little"))


def last_words(bits: array, counts: list[int]) -> array:
    """Each series' last value bits, as words for the state."""
    if is_uniform(counts):
        return bits[counts[0] - 1 :: counts[0]]
    return array("Q", last_of_each(bits, counts))


def value_words(raw: bytes | None, message: Request) -> array:
    """The request's values column as words, from the body's raw bytes of field 7 (`raw_columns`): protobuf's
    repeated field turned into ints costs ~70 ns a sample, this a copy. The parsed field when the raw bytes are
    missing or do not hold as many words."""
    if raw is None or len(raw) != 8 * len(message.values):
        return array("Q", list(message.values))
    out = array("Q")
    out.frombytes(raw)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


_BIG_ENDIAN = sys.byteorder == "big"
_ELEMENT_WIRE_TYPE = {4: 0, 5: 0, 6: 0, 7: 1}
"""The sample columns (fields 4-7 of Request) and the wire type each one's unpacked elements have."""


def raw_columns(body: bytes, budget: int) -> dict[int, bytes] | None:
    """The raw bytes of each sample column (fields 4-7) at the top level of a body protobuf parsed already (so
    its records are well-formed): packed records' payloads and unpacked elements' bytes, in order, which is
    the byte string protobuf read the field's elements from. None where the walk meets a group, or past
    `budget` records: the walk is Python, and a body of millions of tiny records (unknown fields, unpacked
    columns) must cost what protobuf's parse costs, not a second per request."""
    chunks: dict[int, list[bytes]] = {4: [], 5: [], 6: [], 7: []}
    position, end = 0, len(body)
    while position < end:
        budget -= 1
        if budget < 0:
            return None
        tag = body[position]
        if tag < 0x80:
            position += 1
        else:
            tag, position = varint_at(body, position)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, position = varint_at(body, position)
            if number in chunks:
                chunks[number].append(body[position : position + length])
            position += length
        elif wire == 0:
            start = position
            _, position = varint_at(body, position)
            if _ELEMENT_WIRE_TYPE.get(number) == 0:
                chunks[number].append(body[start:position])
        elif wire == 1:
            if number == 7:
                chunks[7].append(body[position : position + 8])
            position += 8
        elif wire == 5:
            position += 4
        else:
            return None
    return {number: b"".join(parts) for number, parts in chunks.items()}
