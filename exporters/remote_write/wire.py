"""Reading the few fields translation needs from serialized OTLP data points, without upb objects.

Why: through upb, every field access of a parsed point builds a Python object (~0.1 us), and a point with
seven attributes costs ~5 us to read attribute by attribute. One `SerializeToString()` of a whole `Gauge` or
`Sum` (C, ~0.3 us per point) and a few slices and `struct` reads per point give the series key (the
attribute bytes), the timestamp and the value for a fraction of that. Only what the wire format guarantees is
assumed (tags, wire types, lengths); field order is not: a key always contains every attribute entry, so
an unusual order can only make keys longer (fewer cache hits), never map two series to one key.
"""

from __future__ import annotations

import struct

_DOUBLE = struct.Struct("<d").unpack_from
_FIXED64 = struct.Struct("<Q").unpack_from
_SFIXED64 = struct.Struct("<q").unpack_from
_FIXED32_SIZE = 4
_FIXED64_SIZE = 8


def varint_at(data: bytes, pos: int) -> tuple[int, int]:
    """(the varint at `pos`, the position after it)."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def skip_field(data: bytes, pos: int) -> int:
    """The position after the field (tag included) at `pos`."""
    tag, pos = varint_at(data, pos)
    wire_type = tag & 7
    if wire_type == 0:
        return varint_at(data, pos)[1]
    if wire_type == 1:
        return pos + _FIXED64_SIZE
    if wire_type == 2:
        length, pos = varint_at(data, pos)
        return pos + length
    if wire_type == 5:
        return pos + _FIXED32_SIZE
    raise ValueError(f"unsupported wire type {wire_type} at {pos}")  # groups: never in OTLP


def attributes_key(data: bytes, number: int) -> bytes:
    """Every entry (tag, length and payload) of length-delimited field `number` in a serialized message,
    in order: for a data point, the identity of its attributes whatever else the point carries."""
    wanted = (number << 3) | 2
    parts = []
    pos, end = 0, len(data)
    while pos < end:
        after = skip_field(data, pos)
        if data[pos] == wanted if wanted < 0x80 else varint_at(data, pos)[0] == wanted:
            parts.append(data[pos:after])
        pos = after
    return b"".join(parts)


# NumberDataPoint fields before the attributes (7): start time 2, time 3, as_double 4, exemplars 5, as_int 6.
_TIME, _AS_DOUBLE, _EXEMPLARS, _AS_INT = 0x19, 0x21, 0x2A, 0x31
_BEFORE_ATTRIBUTES = frozenset((0x11, _TIME, _AS_DOUBLE, _EXEMPLARS, _AS_INT))


def number_fields(data: bytes, start: int, end: int) -> tuple[int, float, int, bool]:
    """For the NumberDataPoint in `data[start:end]`: (time_unix_nano or 0, its value as a float (0.0 when it
    has none), where its key starts, whether it has exemplars).

    The key is everything from the first field that is not one of start time, time, value or exemplars:
    the attributes, flags (so a key also says whether the point is stale) and unknown fields.
    """
    time = 0
    value = 0.0
    key_start = -1
    exemplars = False
    pos = start
    while pos < end:
        tag = data[pos]
        if tag not in _BEFORE_ATTRIBUTES:
            if key_start < 0:
                key_start = pos
        elif tag == _TIME:
            time = _FIXED64(data, pos + 1)[0]
        elif tag == _AS_DOUBLE:
            value = _DOUBLE(data, pos + 1)[0]
        elif tag == _AS_INT:
            value = float(_SFIXED64(data, pos + 1)[0])
        elif tag == _EXEMPLARS:
            exemplars = True
        pos = skip_field(data, pos)
    return time, value, (end if key_start < 0 else key_start), exemplars
