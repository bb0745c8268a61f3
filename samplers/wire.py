"""OTLP trace requests read straight from their protobuf wire bytes, never parsed into messages.

    scanned = scan_request(body)                  # WireError if the framing is malformed
    for resource_part, scopes in scanned.groups:
        for scope_part, spans in scopes:
            for span in spans:
                trace_id, span_id, parent, trace_state, name, kind, start, end, code = span_facts(span)
    body = frame_request(kept_groups)             # the inverse, for the spans that were kept

The tail sampler buffers each span as its own encoded bytes (docs/architecture.md, "Traces"). This module is the
only place that knows the encoding: it cuts a request into resource, scope and span bytes, reads the few span
fields a decision needs, finds one attribute by key, and frames kept spans into a request again. It is the
per-span hot path, so it is written for CPython speed: canonical layouts (fields in field-number order, as
every protobuf serializer writes them) take inline fast paths with 1- and 2-byte lengths, and everything else
falls back to a general field walk that follows protobuf's rules (last value wins for singular fields,
repeated occurrences of a message field merge, a known field number with the wrong wire type is an unknown
field). Errors are detected cheaply and then explained by a slower walk, so the common path pays nothing
for good messages.

Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. Groups (3, 4) are not used by OTLP and are
reported as malformed, as are wire types 6 and 7 and field number 0. Standard library only.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "Scanned",
    "WireError",
    "encode_len_field",
    "find_attribute",
    "frame_request",
    "resource_attributes_bytes",
    "scan_request",
    "scope_name",
    "span_facts",
    "with_attributes",
    "with_trace_state",
]


class WireError(ValueError):
    """Malformed protobuf bytes: truncated, a bad wire type, or a length past the end of its message.
    The message says what and where ("span 3 of scope 0 of resource 1: length 200 runs past the end ...")."""


class Scanned(NamedTuple):
    """One ExportTraceServiceRequest, cut into its parts.

    `groups` holds, per ResourceSpans, `(resource_part, [(scope_part, [span, ...]), ...])`: `resource_part`
    is every ResourceSpans field except the scope_spans entries, as encoded on the wire (tag and length
    included); `scope_part` likewise for ScopeSpans minus its spans; each span is the Span's own encoding
    (no tag, no length). Scopes and resources left without a kept span are not listed.
    """

    groups: list[tuple[bytes, list[tuple[bytes, list[bytes]]]]]
    spans: int
    """Spans kept (in `groups`)."""
    rejected: int
    """Spans left out for bad IDs."""
    reject_message: str
    """The first rejected span's problem, e.g. "span 'GET /x': trace ID of 8 bytes (expected 16)"."""


_ZERO16 = bytes(16)
_ZERO8 = bytes(8)
_MASK64 = (1 << 64) - 1
_HEAD = struct.Struct("<H16sH8sH8sBB")  # 0a 10 <trace_id> 12 08 <span_id> 22 08 <parent> 2a <name length>
_KIND_TIMES = struct.Struct("<BBBQBQ")  # 30 <kind> 39 <start_time_unix_nano> 41 <end_time_unix_nano>
_TIMES = struct.Struct("<xQxQ")  # 39 <start_time_unix_nano> 41 <end_time_unix_nano>
_IDS = struct.Struct("<H16sH8sH")  # 0a 10 <trace_id> 12 08 <span_id> <the next tag and its first byte>
_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")


# -- decoding primitives -----------------------------------------------------------------------------------


def _varint(s: bytes, p: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at p, which must end before `end`; 64-bit wraparound."""
    result = 0
    shift = 0
    start = p
    while True:
        if p >= end:
            raise WireError(f"varint at byte {start} runs past the end")
        b = s[p]
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, p
        shift += 7
        if shift >= 70:
            raise WireError(f"varint at byte {start} is longer than 10 bytes")


def _read_field(s: bytes, p: int, end: int) -> tuple[int, int, int]:
    """(tag, a, b) for the field at p (p < end): its tag, where its value starts and where it ends.
    For a length-delimited field [a, b) is the payload; for the others, the value's bytes. b <= end."""
    t = s[p]
    if t < 0x80:
        a = p + 1
    else:
        t, a = _varint(s, p, end)
        if t > 0xFFFFFFFF:
            raise WireError(f"tag at byte {p} is larger than 32 bits")
    wire_type = t & 7
    if t < 8:
        raise WireError(f"field number 0 at byte {p}")
    if wire_type == 2:
        size, a = _varint(s, a, end)
        b = a + size
        if b > end:
            raise WireError(f"field {t >> 3} at byte {p}: length {size} runs past the end "
                            f"({end - a} bytes left)")
        return t, a, b
    if wire_type == 0:
        return t, a, _varint(s, a, end)[1]
    if wire_type == 1:
        b = a + 8
    elif wire_type == 5:
        b = a + 4
    elif wire_type in (3, 4):
        raise WireError(f"field {t >> 3} at byte {p}: group wire type {wire_type} (not used by OTLP)")
    else:
        raise WireError(f"field {t >> 3} at byte {p}: invalid wire type {wire_type}")
    if b > end:
        raise WireError(f"field {t >> 3} at byte {p}: fixed{(b - a) * 8} value runs past the end "
                        f"({end - a} bytes left)")
    return t, a, b


def _int32(v: int) -> int:
    """An enum/int32 varint as protobuf reads it: the low 32 bits, signed."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _payloads(s: bytes, tag: int, start: int = 0, end: int | None = None) -> list[bytes]:
    """The payloads of every length-delimited field `tag` in s[start:end], in order (validating framing)."""
    end = len(s) if end is None else end
    found = []
    p = start
    while p < end:
        t, a, b = _read_field(s, p, end)
        if t == tag:
            found.append(s[a:b])
        p = b
    return found


# -- scanning a request ------------------------------------------------------------------------------------


def scan_request(data: bytes) -> Scanned:
    """Cut an ExportTraceServiceRequest into resource, scope and span bytes (see `Scanned`), leaving out
    spans whose trace ID is not 16 nonzero bytes, whose span ID is not 8 nonzero bytes, or whose parent
    span ID is neither empty nor 8 bytes. Raises WireError if the framing is malformed.

    IDs are checked on the canonical layout (trace_id, span_id first, parent_span_id after an optional
    trace_state) without walking the rest of the span; any other layout is checked by a full walk. Fields
    inside a span beyond its IDs are not validated here: span_facts raises WireError for a span whose own
    fields are malformed. Unknown fields of the request itself are dropped; unknown fields of a
    ResourceSpans or ScopeSpans stay in its part.
    """
    s = data if data.__class__ is bytes else bytes(data)
    n = len(s)
    groups: list = []
    kept = rejected = 0
    message = ""
    zero16, zero8 = _ZERO16, _ZERO8
    ids = _IDS.unpack_from
    read_field, varint = _read_field, _varint
    p = 0
    resource_index = -1
    while p < n:
        try:
            t, ra, rb = read_field(s, p, n)
        except WireError as e:
            raise WireError(f"request: {e}") from None
        p = rb
        if t != 0x0A:
            continue  # an unknown field of ExportTraceServiceRequest
        resource_index += 1
        resource_parts = []
        scopes = []
        q = ra
        scope_index = -1
        while q < rb:
            try:
                t, sa, sb = read_field(s, q, rb)
            except WireError as e:
                raise WireError(f"resource {resource_index}: {e}") from None
            if t != 0x12:
                resource_parts.append(s[q:sb])
                q = sb
                continue
            q = sb
            scope_index += 1
            scope_parts = []
            spans: list[bytes] = []
            append = spans.append
            dropped = 0
            r = sa
            while r < sb:
                if s[r] != 0x12:
                    try:
                        t, a, b = read_field(s, r, sb)
                    except WireError as e:
                        raise WireError(f"scope {scope_index} of resource {resource_index}: {e}") from None
                    scope_parts.append(s[r:b])
                    r = b
                    continue
                try:
                    size = s[r + 1]
                    if size < 0x80:
                        a = r + 2
                    else:
                        size2 = s[r + 2]
                        if size2 < 0x80:
                            size = (size & 0x7F) | (size2 << 7)
                            a = r + 3
                        else:
                            size, a = varint(s, r + 1, sb)
                    r = a + size
                    if r > sb:
                        raise WireError(f"length {size} runs past the end ({sb - a} bytes left)")
                    # Fast ID check on the canonical layout: 0a 10 <trace_id> 12 08 <span_id>
                    # [1a <trace_state>] [22 08 <parent_span_id>] <fields 5..>.
                    if size >= 30:
                        h1, tid, h2, sid, h3 = ids(s, a)
                        if h1 == 0x100A and h2 == 0x0812 and tid != zero16 and sid != zero8:
                            if h3 == 0x0822 or (h3 & 0xFF) > 0x22:
                                append(s[a:r])
                                continue
                            if (h3 & 0xFF) == 0x1A and h3 < 0x8000:
                                c = a + 30 + (h3 >> 8)
                                if c == r:
                                    append(s[a:r])
                                    continue
                                if c < r:
                                    t = s[c]
                                    if t > 0x22 or (t == 0x22 and c + 10 <= r and s[c + 1] == 8):
                                        append(s[a:r])
                                        continue
                    # Any other layout, or a bad ID: the full walk decides.
                    span = s[a:r]
                    problem = _id_problem(span)
                    if problem is None:
                        append(span)
                    else:
                        dropped += 1
                        if not message:
                            message = problem
                except WireError as e:
                    raise WireError(f"span {len(spans) + dropped} of scope {scope_index} of resource "
                                    f"{resource_index}: {str(e).removeprefix('span: ')}") from None
                except IndexError:
                    raise WireError(f"span {len(spans) + dropped} of scope {scope_index} of resource "
                                    f"{resource_index}: length runs past the end") from None
            rejected += dropped
            if spans:
                kept += len(spans)
                scopes.append((b"".join(scope_parts), spans))
        if scopes:
            groups.append((b"".join(resource_parts), scopes))
    return Scanned(groups, kept, rejected, message)


def _id_problem(span: bytes) -> str | None:
    """What is wrong with this span's IDs, or None. Raises WireError if the span is malformed."""
    trace_id, span_id, parent, _ts, name, *_ = span_facts(span)
    if len(trace_id) != 16:
        problem = f"trace ID of {len(trace_id)} bytes (expected 16)"
    elif trace_id == _ZERO16:
        problem = "trace ID is all zeros"
    elif len(span_id) != 8:
        problem = f"span ID of {len(span_id)} bytes (expected 8)"
    elif span_id == _ZERO8:
        problem = "span ID is all zeros"
    elif parent and len(parent) != 8:
        problem = f"parent span ID of {len(parent)} bytes (expected 8, or none for a root span)"
    else:
        return None
    return f"span {name.decode('utf-8', 'replace')!r}: {problem}"


# -- reading a span ----------------------------------------------------------------------------------------


def span_facts(span: bytes) -> tuple[bytes, bytes, bytes, str, bytes, int, int, int, int]:
    """(trace_id, span_id, parent_span_id, trace_state, name, kind, start_ns, end_ns, status_code) of one
    encoded Span, b"" / "" / 0 for absent fields, in one pass over its top-level fields (attributes, events
    and links are skipped by length; Status is entered only for its code). The last occurrence of a field
    wins, as in protobuf. trace_state is decoded as UTF-8 with invalid bytes replaced; name stays bytes.
    Raises WireError if the span is malformed."""
    s = span
    n = len(s)
    trace_id = span_id = parent = name = b""
    trace_state = ""
    kind = start = end = code = 0
    p = 0
    # The canonical prefix, read with two struct calls: 0a 10 <trace_id> 12 08 <span_id>
    # [1a <trace_state>] [22 08 <parent>] 2a <name> | 30 <kind> 39 <start> 41 <end>.
    # Whatever does not fit is left to the general loop below, which reads any layout.
    if n >= 40:
        h1, tid, h2, sid, h3, x, t, size = _HEAD.unpack_from(s)
        if h1 == 0x100A and h2 == 0x0812:
            trace_id, span_id = tid, sid
            if h3 == 0x0822:  # parent_span_id, then (usually) the name
                parent = x
                p = 38
                if t == 0x2A and size < 0x80:
                    p = 40 + size
                    name = s[40:p]
            else:
                p = 28
                t = h3 & 0xFF
                if h3 < 0x8000:
                    if t == 0x2A:  # no parent: a root span
                        p = 30 + (h3 >> 8)
                        name = s[30:p]
                    elif t == 0x1A:
                        p = 30 + (h3 >> 8)
                        trace_state = s[30:p].decode("utf-8", "replace")
                        if p + 10 <= n and s[p] == 0x22 and s[p + 1] == 8:
                            parent = s[p + 2:p + 10]
                            p += 10
                        if p + 2 <= n and s[p] == 0x2A and s[p + 1] < 0x80:
                            size = p + 2 + s[p + 1]
                            name = s[p + 2:size]
                            p = size
            if p + 20 <= n:
                t, x, h1, h2, h3, size = _KIND_TIMES.unpack_from(s, p)
                if t == 0x30 and h1 == 0x39 and h3 == 0x41 and x < 0x80:
                    kind, start, end = x, h2, size
                    p += 20
                elif t == 0x39 and s[p + 9] == 0x41:  # kind 0 (unspecified) is not written
                    start, end = _TIMES.unpack_from(s, p)
                    p += 18
    try:
        while p < n:
            if s[p] == 0x4A and (size := s[p + 1]) < 0x80:  # attributes: skipped by length
                p += 2 + size
                continue
            t = s[p]
            if t == 0x4A:  # ... with a longer length
                size = s[p + 1]
                x = s[p + 2]
                if x < 0x80:
                    p += 3 + ((size & 0x7F) | (x << 7))
                else:
                    size, p = _varint(s, p + 1, n)
                    p += size
            elif t == 0x7A:  # status: only its code
                size = s[p + 1]
                if size < 0x80:
                    x = p + 2
                else:
                    size, x = _varint(s, p + 1, n)
                p = x + size
                if p > n:
                    break
                if size == 2 and s[x] == 0x18 and s[x + 1] < 0x80:
                    code = s[x + 1]
                elif size:
                    code = _status_code(s, x, p, code)
            elif t == 0x85 and s[p + 1] == 0x01:  # flags, fixed32
                p += 6
            elif t == 0x5A or t == 0x6A:  # events, links: skipped by length
                size = s[p + 1]
                if size < 0x80:
                    p += 2 + size
                else:
                    x = s[p + 2]
                    if x < 0x80:
                        p += 3 + ((size & 0x7F) | (x << 7))
                    else:
                        size, p = _varint(s, p + 1, n)
                        p += size
            else:
                t, x, size = _read_field(s, p, n)
                p = size
                if t == 0x0A:
                    trace_id = s[x:p]
                elif t == 0x12:
                    span_id = s[x:p]
                elif t == 0x1A:
                    trace_state = s[x:p].decode("utf-8", "replace")
                elif t == 0x22:
                    parent = s[x:p]
                elif t == 0x2A:
                    name = s[x:p]
                elif t == 0x30:
                    kind = _int32(_varint(s, x, p)[0])
                elif t == 0x39:
                    start = _FIXED64.unpack_from(s, x)[0]
                elif t == 0x41:
                    end = _FIXED64.unpack_from(s, x)[0]
                elif t == 0x7A:  # status with an unusual tag encoding
                    code = _status_code(s, x, p, code)
        if p == n:
            return trace_id, span_id, parent, trace_state, name, kind, start, end, code
    except IndexError:  # a length or tag cut off at the very end
        pass
    except WireError as e:
        raise WireError(f"span: {e}") from None
    raise _span_error(s)


def _status_code(s: bytes, a: int, b: int, code: int) -> int:
    """The code in the Status message s[a:b], or `code` if it has none (Status occurrences merge)."""
    p = a
    while p < b:
        t, c, p = _read_field(s, p, b)
        if t == 0x18:
            code = _int32(_varint(s, c, p)[0])
    return code


def _span_error(s: bytes) -> WireError:
    """Why this span is malformed, found by a careful walk (only ever called once something is wrong)."""
    try:
        p, n = 0, len(s)
        while p < n:
            t, a, p = _read_field(s, p, n)
            if t == 0x7A:
                _status_code(s, a, p, 0)
    except WireError as e:
        return WireError(f"span: {e}")
    return WireError(f"span of {len(s)} bytes is malformed")


# -- attributes and parts ----------------------------------------------------------------------------------


def find_attribute(message: bytes, key: bytes, field: int = 9) -> str | int | float | bool | bytes | None:
    """The value of attribute `key` among the repeated KeyValue field number `field` of `message` (9: a
    Span's attributes; 1: a Resource's, on resource_attributes_bytes()), or None if it is absent or has no
    value. Strings come back as str, bool/int/double as bool/int/float, bytes as bytes, and array or kvlist
    values as their raw encoded bytes. With duplicate keys, the first wins (as the Collector's pdata does).
    Raises WireError if the part of `message` walked to find it is malformed."""
    if key.__class__ is str:
        key = key.encode()
    s = message
    i = s.find(key)  # C-speed prefilter; a hit may still be inside a value or a name, so walk
    if i < 0:
        return None
    n = len(s)
    klen = len(key)
    want = (field << 3) | 2
    p = 0
    if field == 9 and n >= 40:  # a span: jump over its canonical prefix (fields 1, 2, 4, 5, 6, 7, 8)
        h1, _t, h2, _s, h3, _x, t, size = _HEAD.unpack_from(s)
        if h1 == 0x100A and h2 == 0x0812:
            if h3 == 0x0822:
                p = 40 + size if t == 0x2A and size < 0x80 else 38
            else:
                p = 30 + (h3 >> 8) if (h3 & 0xFF) == 0x2A and h3 < 0x8000 else 28
            if p + 20 <= n and s[p] == 0x30 and s[p + 1] < 0x80 and s[p + 2] == 0x39 and s[p + 11] == 0x41:
                p += 20
            if i < p:
                i = s.find(key, p)
                if i < 0:
                    return None
    try:
        while p < n:
            t = s[p]
            if t == want and (size := s[p + 1]) < 0x80:  # a KeyValue with a 1-byte length
                a = p + 2
                p = a + size
                if p > i:  # it holds (or passed) the next occurrence of the key
                    if p > n:
                        break
                    c = a + 2 + klen  # canonical: 0a <klen> <key> 12 <vlen> <AnyValue>, ending at p
                    if c + 2 <= p and s[a] == 0x0A and s[a + 1] == klen and s[c] == 0x12 and c + 2 + s[c + 1] == p:
                        if s.startswith(key, a + 2):
                            return _any_value(s, c + 2, p)
                    else:
                        found, value = _match_kv(s, a, p, key)
                        if found:
                            return value
                    i = s.find(key, p)
                    if i < 0:
                        return None
                continue
            if t < 0x80:
                a = p + 1
            else:
                t, a = _varint(s, p, n)
            wire_type = t & 7
            if wire_type == 2:
                size = s[a]
                if size < 0x80:
                    a += 1
                else:
                    size, a = _varint(s, a, n)
                p = a + size
                if p > i:  # this field holds (or passed) the next occurrence of the key
                    if p > n:
                        break
                    if t == want:
                        found, value = _match_kv(s, a, p, key)
                        if found:
                            return value
                    i = s.find(key, p)
                    if i < 0:
                        return None
                continue
            if wire_type == 0:
                p = _varint(s, a, n)[1]
            elif wire_type == 1:
                p = a + 8
            elif wire_type == 5:
                p = a + 4
            else:
                break
            if t < 8:
                break
            if p > i:
                i = s.find(key, p)
                if i < 0:
                    return None
        if p == n:
            return None
    except IndexError:
        pass
    raise _message_error(s, want)


def _message_error(s: bytes, want: int) -> WireError:
    """Why find_attribute could not walk this message, found by a careful walk of it and its KeyValues."""
    try:
        p, n = 0, len(s)
        while p < n:
            t, a, p = _read_field(s, p, n)
            if t == want:
                q = a
                while q < p:
                    t, c, q = _read_field(s, q, p)
                    if t == 0x12:
                        r = c
                        while r < q:
                            r = _read_field(s, r, q)[2]
    except WireError as e:
        return WireError(f"attributes: {e}")
    return WireError(f"attributes: message of {len(s)} bytes is malformed")


def _match_kv(s: bytes, a: int, b: int, key: bytes) -> tuple[bool, object]:
    """(True, value) if the KeyValue s[a:b] has this key, else (False, None)."""
    klen = len(key)
    # Canonical: 0a <klen> <key> 12 <vlen> <AnyValue>, ending exactly at b.
    if a + 1 < b and s[a] == 0x0A and s[a + 1] < 0x80:
        c = a + 2 + s[a + 1]
        if c == b:
            if s[a + 1] == klen and s.startswith(key, a + 2):
                return True, None
            return False, None
        if c < b and s[c] == 0x12:
            vs = s[c + 1]
            if vs < 0x80:
                va = c + 2
                if va + vs == b:
                    if s[a + 1] == klen and s.startswith(key, a + 2):
                        return True, _any_value(s, va, b)
                    return False, None
    # Any other layout: the last key wins; value occurrences merge (their encodings concatenate).
    found_key = b""
    values = []
    p = a
    while p < b:
        t, c, p = _read_field(s, p, b)
        if t == 0x0A:
            found_key = s[c:p]
        elif t == 0x12:
            values.append(s[c:p])
    if found_key != key:
        return False, None
    merged = b"".join(values)
    return True, _any_value(merged, 0, len(merged))


def _any_value(s: bytes, a: int, b: int) -> str | int | float | bool | bytes | None:
    """The AnyValue encoded in s[a:b]; its oneof's last member wins, array/kvlist occurrences in a row merge."""
    # The common case: a single field filling the message.
    t = s[a] if a < b else 0
    if t == 0x0A or t == 0x2A or t == 0x32 or t == 0x3A:
        size = s[a + 1]
        if size < 0x80 and a + 2 + size == b:
            return s[a + 2:b].decode("utf-8", "replace") if t == 0x0A else s[a + 2:b]
    elif t == 0x18 and a + 2 == b and s[a + 1] < 0x80:
        return s[a + 1]
    elif t == 0x10 and a + 2 == b:
        return s[a + 1] != 0
    elif t == 0x21 and a + 9 == b:
        return _DOUBLE.unpack_from(s, a + 1)[0]
    kind = 0
    value: object = None
    parts: list[bytes] = []
    p = a
    while p < b:
        t, c, p = _read_field(s, p, b)
        if t == 0x0A:
            kind, value = t, s[c:p].decode("utf-8", "replace")
        elif t == 0x10:
            kind, value = t, _varint(s, c, p)[0] != 0
        elif t == 0x18:
            v = _varint(s, c, p)[0]
            kind, value = t, v - (1 << 64) if v >= 1 << 63 else v
        elif t == 0x21:
            kind, value = t, _DOUBLE.unpack_from(s, c)[0]
        elif t == 0x2A or t == 0x32:
            if kind == t:
                parts.append(s[c:p])
            else:
                kind, parts = t, [s[c:p]]
        elif t == 0x3A:
            kind, value = t, s[c:p]
    if kind == 0x2A or kind == 0x32:
        return b"".join(parts)
    return value


def resource_attributes_bytes(resource_part: bytes) -> bytes:
    """The Resource message inside a resource_part (from scan_request), for find_attribute(..., field=1).
    b"" if there is none. Raises WireError if the part is malformed."""
    s = resource_part
    # Common case: the part is exactly one Resource field.
    if s[:1] == b"\x0a" and len(s) > 1 and s[1] < 0x80 and 2 + s[1] == len(s):
        return s[2:]
    try:
        return b"".join(_payloads(s, 0x0A))  # several occurrences merge
    except WireError as e:
        raise WireError(f"resource: {e}") from None


def scope_name(scope_part: bytes) -> bytes:
    """The InstrumentationScope name inside a scope_part (from scan_request); b"" if it has none."""
    try:
        scope = b"".join(_payloads(scope_part, 0x0A))
        names = _payloads(scope, 0x0A)
    except WireError as e:
        raise WireError(f"scope: {e}") from None
    return names[-1] if names else b""


# -- encoding ----------------------------------------------------------------------------------------------


def _varint_bytes(value: int) -> bytes:
    """The varint encoding of a non-negative value below 2**64."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


read_varint = _varint
"""For the trace buffer's own records (samplers.tail), which share this module's varints."""
varint_bytes = _varint_bytes


def encode_len_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return b"".join((_varint_bytes((field << 3) | 2), _varint_bytes(len(payload)), payload))


_HEADER_CACHE = 4096
_SPAN_HEADERS = [b"\x12" + _varint_bytes(size) for size in range(_HEADER_CACHE)]  # tag 2, length


def frame_request(groups) -> bytes:
    """An ExportTraceServiceRequest holding these groups, shaped as Scanned.groups:
    `[(resource_part, [(scope_part, [span, ...]), ...]), ...]` (any iterable of pairs works). The inverse of
    scan_request for the spans kept: protobuf parses the result into the same resources, scopes and spans
    (each part's fields come before its spans; field order does not change what protobuf reads)."""
    headers = _SPAN_HEADERS
    cached = _HEADER_CACHE
    varint_bytes = _varint_bytes
    out: list[bytes] = []
    append = out.append
    for resource_part, scopes in groups:
        resource_at = len(out)
        append(b"")
        append(resource_part)
        resource_size = len(resource_part)
        for scope_part, spans in scopes:
            scope_at = len(out)
            append(b"")
            append(scope_part)
            size = len(scope_part)
            for span in spans:
                length = len(span)
                header = headers[length] if length < cached else b"\x12" + varint_bytes(length)
                append(header)
                append(span)
                size += len(header) + length
            header = b"\x12" + varint_bytes(size)
            out[scope_at] = header
            resource_size += len(header) + size
        out[resource_at] = b"\x0a" + varint_bytes(resource_size)
    return b"".join(out)


def with_trace_state(span: bytes, trace_state: str) -> bytes:
    """The span with its trace_state set to `trace_state`: a new field 3 appended, which protobuf reads
    instead of any earlier one (the last occurrence of a singular field wins). with_trace_state(b"", ts) is
    the suffix alone, for appending to many spans."""
    encoded = trace_state.encode()
    return b"".join((span, b"\x1a", _varint_bytes(len(encoded)), encoded))


def _any_value_bytes(value: str | int | float | bool) -> bytes:
    if value.__class__ is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return encode_len_field(1, value.encode())
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 63:
            raise ValueError(f"attribute value {value} does not fit in 64 bits")
        return b"\x18" + _varint_bytes(value & _MASK64)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    raise TypeError(f"attribute value must be str, int, float or bool, not {type(value).__name__}")


def with_attributes(span: bytes, attributes: list[tuple[str, str | int | float | bool]]) -> bytes:
    """The span with these attributes appended after its own (repeated field 9). with_attributes(b"", ...)
    is the suffix alone."""
    parts = [span]
    for key, value in attributes:
        kv = encode_len_field(1, key.encode()) + encode_len_field(2, _any_value_bytes(value))
        parts.append(b"\x4a")
        parts.append(_varint_bytes(len(kv)))
        parts.append(kv)
    return b"".join(parts)
