"""The OTLP/JSON encoding, both ways, for any OTLP message type.

OTLP/JSON is protobuf's canonical JSON mapping with three differences that `json_format` does not know about
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): trace and span IDs are hex strings, not
base64; enums are integers; and unknown fields must be ignored. So both directions walk the message
descriptor themselves. That walk also lets a decoding error name the exact place it happened
(`resourceSpans[0].scopeSpans[0].spans[3].traceId: "zz12" is not hex`), which is what a user debugging their
exporter needs and what `json_format`'s messages lack; and encoding straight from `ListFields()` is about 1.5x
faster than `MessageToDict` (~24 us per span with 8 attributes), which matters to the file exporter.

Well-known types (`google.protobuf.*`, which OTLP does not use) are handed to `json_format` whole.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["OtlpJsonError", "decode_json", "encode_json", "ID_FIELDS"]

M = TypeVar("M", bound=Message)

ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
"""Bytes fields written as hex in OTLP/JSON, wherever they occur (spans, links, exemplars, log records)."""

_FD = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int, str]] = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1, "int32"),
    _FD.TYPE_SINT32: (-(2**31), 2**31 - 1, "int32"),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "int32"),
    _FD.TYPE_UINT32: (0, 2**32 - 1, "uint32"),
    _FD.TYPE_FIXED32: (0, 2**32 - 1, "uint32"),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1, "int64"),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1, "int64"),
    _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "int64"),
    _FD.TYPE_UINT64: (0, 2**64 - 1, "uint64"),
    _FD.TYPE_FIXED64: (0, 2**64 - 1, "uint64"),
}
_INT64_TYPES = frozenset({_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64})
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT32_MAX = 3.4028234663852886e38


class OtlpJsonError(ValueError):
    """The body is not valid OTLP/JSON; the message says what was wrong and at which field path."""


# ---------------------------------------------------------------------------------------------------- decoding


def decode_json(body: bytes | str, message_type: type[M]) -> M:
    """Parse an OTLP/JSON body into a new `message_type`.

    Accepts lowerCamelCase and original field names, 64-bit integers as strings or numbers, enums as integers or
    names; ignores unknown fields. IDs are hex; a hex ID of the wrong length decodes to the bytes it spells (the
    receiver rejects such a span on its own). Raises OtlpJsonError for anything else that is wrong.
    """
    if not body:
        raise OtlpJsonError("empty body: expected a JSON object")
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise OtlpJsonError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
    else:
        text = body
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OtlpJsonError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise OtlpJsonError("invalid JSON: nested too deeply") from None
    except ValueError:  # not a JSONDecodeError: the one other thing json.loads refuses
        raise OtlpJsonError(f"invalid JSON: an integer of more than {sys.get_int_max_str_digits()} digits") from None
    if not isinstance(obj, dict):
        raise OtlpJsonError(f"expected a JSON object at the top level, got {_kind(obj)}")
    message = message_type()
    try:
        _fill(message, obj, "")
    except RecursionError:
        raise OtlpJsonError("message nested too deeply") from None
    return message


def _fill(message: Message, obj: dict[str, Any], path: str) -> None:
    """Set `message`'s fields from the JSON object `obj`, found at `path`."""
    index = _field_index(message.DESCRIPTOR)
    seen: dict[int, str] = {}
    oneofs: dict[str, str] = {}
    for key, value in obj.items():
        field = index.get(key)
        if field is None:
            continue  # unknown fields are ignored, as the OTLP spec requires
        where = f"{path}.{key}" if path else key
        if field.number in seen:
            raise OtlpJsonError(f'{where}: field "{field.name}" is given twice (as "{seen[field.number]}" and "{key}")')
        seen[field.number] = key
        if value is None and not _is_null_value(field):
            continue  # null means the default
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs:
                raise OtlpJsonError(
                    f'{where}: oneof "{oneof.name}" is already set by "{oneofs[oneof.name]}"; only one may be given'
                )
            oneofs[oneof.name] = key
        _set_field(message, field, value, where)


def _set_field(message: Message, field: FieldDescriptor, value: Any, where: str) -> None:
    if _is_map(field):
        _fill_map(message, field, value, where)
    elif field.is_repeated:
        if not isinstance(value, list):
            raise OtlpJsonError(f"{where}: expected an array, got {_kind(value)}")
        target = getattr(message, field.name)
        if field.type == _FD.TYPE_MESSAGE:
            for i, item in enumerate(value):
                _fill_message(target.add(), item, f"{where}[{i}]")
        else:
            for i, item in enumerate(value):
                scalar = _scalar(field, item, f"{where}[{i}]")
                if scalar is not _SKIP:
                    target.append(scalar)
    elif field.type == _FD.TYPE_MESSAGE:
        sub = getattr(message, field.name)
        sub.SetInParent()
        _fill_message(sub, value, where)
    else:
        scalar = _scalar(field, value, where)
        if scalar is not _SKIP:
            try:
                setattr(message, field.name, scalar)
            except (TypeError, ValueError) as exc:
                raise OtlpJsonError(f"{where}: {exc}") from None


def _fill_message(message: Message, value: Any, where: str) -> None:
    if _is_well_known(message.DESCRIPTOR):
        try:
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise OtlpJsonError(f"{where}: {exc}") from None
        return
    if not isinstance(value, dict):
        raise OtlpJsonError(f"{where}: expected an object, got {_kind(value)}")
    _fill(message, value, where)


def _fill_map(message: Message, field: FieldDescriptor, value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise OtlpJsonError(f"{where}: expected an object (a map), got {_kind(value)}")
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    target = getattr(message, field.name)
    for raw_key, item in value.items():
        item_where = f"{where}[{json.dumps(raw_key)}]"
        if key_field.type == _FD.TYPE_BOOL:
            if raw_key not in ("true", "false"):
                raise OtlpJsonError(f'{item_where}: map key must be "true" or "false"')
            key: Any = raw_key == "true"
        elif key_field.type in _INT_RANGES:
            key = _integer(key_field, raw_key, item_where)
        else:
            key = raw_key
        if value_field.type == _FD.TYPE_MESSAGE:
            _fill_message(target[key], item, item_where)
        else:
            scalar = _scalar(value_field, item, item_where)
            if scalar is not _SKIP:
                target[key] = scalar


_SKIP = object()  # an enum name this schema does not know: ignored like an unknown field


def _scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    kind = field.type
    if value is None:
        raise OtlpJsonError(f"{where}: null is not allowed here")
    if kind == _FD.TYPE_STRING:
        if not isinstance(value, str):
            raise OtlpJsonError(f"{where}: expected a string, got {_kind(value)}")
        return value
    if kind == _FD.TYPE_BYTES:
        if not isinstance(value, str):
            raise OtlpJsonError(f"{where}: expected a string, got {_kind(value)}")
        return _hex(value, where) if field.name in ID_FIELDS else _base64(value, where)
    if kind in _INT_RANGES:
        return _integer(field, value, where)
    if kind in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return _float(value, where, kind == _FD.TYPE_FLOAT)
    if kind == _FD.TYPE_BOOL:
        if not isinstance(value, bool):
            raise OtlpJsonError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if kind == _FD.TYPE_ENUM:
        return _enum(field, value, where)
    raise OtlpJsonError(f"{where}: unsupported field type {kind}")


def _hex(value: str, where: str) -> bytes:
    """Any even number of hex digits, of any length: a wrong-length ID is for the receiver to reject per span."""
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        pass
    if len(value) % 2 and re.fullmatch(r"[0-9a-fA-F]*", value):
        raise OtlpJsonError(f"{where}: {_show(value)} is not hex: it has an odd number of digits")
    raise OtlpJsonError(f"{where}: {_show(value)} is not hex")


def _base64(value: str, where: str) -> bytes:
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise OtlpJsonError(f"{where}: {_show(value)} is not base64") from None


def _integer(field: FieldDescriptor, value: Any, where: str) -> int:
    lo, hi, name = _INT_RANGES[field.type]
    number: int | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if value.is_integer():
            number = int(value)
    elif isinstance(value, str):
        if _INTEGER_TEXT.fullmatch(value):
            number = int(value)
        elif _NUMBER_TEXT.fullmatch(value) and float(value).is_integer():
            number = int(float(value))
    if number is None:
        raise OtlpJsonError(f"{where}: {_show(value)} is not an integer")
    if not lo <= number <= hi:
        raise OtlpJsonError(f"{where}: {number} is out of range for {name}")
    return number


def _float(value: Any, where: str, single: bool) -> float:
    result: float | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:  # an integer literal past the largest double
            raise OtlpJsonError(f"{where}: {_show(value)} is out of range for {'float' if single else 'double'}"
                                ) from None
    elif isinstance(value, str):
        if value in _SPECIAL_FLOATS:
            result = _SPECIAL_FLOATS[value]
        elif _NUMBER_TEXT.fullmatch(value):
            result = float(value)
    if result is None:
        raise OtlpJsonError(f"{where}: {_show(value)} is not a number")
    if single and math.isfinite(result) and abs(result) > _FLOAT32_MAX:
        raise OtlpJsonError(f"{where}: {_show(value)} is out of range for float")
    return result


def _enum(field: FieldDescriptor, value: Any, where: str) -> Any:
    """An enum as its number (what OTLP/JSON sends) or its name; a name this schema lacks is ignored."""
    if isinstance(value, str):
        known = field.enum_type.values_by_name.get(value)
        if known is not None:
            return known.number
        if not _INTEGER_TEXT.fullmatch(value):
            return _SKIP
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OtlpJsonError(f"{where}: expected an enum number or name, got {_kind(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise OtlpJsonError(f"{where}: {_show(value)} is not an integer")
    number = int(value)
    if not -(2**31) <= number <= 2**31 - 1:
        raise OtlpJsonError(f"{where}: {number} is out of range for an enum")
    return number


# ---------------------------------------------------------------------------------------------------- encoding


def encode_json(message: Message) -> bytes:
    """The OTLP/JSON encoding of `message` on one line: hex IDs, lowerCamelCase keys, enums as integers,
    64-bit integers as strings, default values left out. `decode_json` reads it back to an equal message."""
    return json.dumps(
        _message_to_obj(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _message_to_obj(message: Message) -> Any:
    if _is_well_known(message.DESCRIPTOR):
        return json_format.MessageToDict(message, use_integers_for_enums=True)
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        key, convert = _encoders.get(field) or _encoder_for(field)
        out[key] = convert(value)
    return out


def _encoder_for(field: FieldDescriptor) -> tuple[str, Callable[[Any], Any]]:
    key = f"[{field.full_name}]" if field.is_extension else field.json_name
    convert: Callable[[Any], Any]
    if _is_map(field):
        key_convert = _map_key_encoder(field.message_type.fields_by_name["key"])
        value_convert = _single_encoder(field.message_type.fields_by_name["value"])
        convert = lambda m: {key_convert(k): value_convert(v) for k, v in m.items()}  # noqa: E731
    elif field.is_repeated:
        one = _single_encoder(field)
        convert = list if one is _same else (lambda seq: [one(item) for item in seq])
    else:
        convert = _single_encoder(field)
    _encoders[field] = (key, convert)
    return key, convert


_encoders: dict[FieldDescriptor, tuple[str, Callable[[Any], Any]]] = {}


def _same(value: Any) -> Any:
    return value


def _single_encoder(field: FieldDescriptor) -> Callable[[Any], Any]:
    kind = field.type
    if kind == _FD.TYPE_MESSAGE:
        return _message_to_obj
    if kind in _INT64_TYPES:
        return str
    if kind == _FD.TYPE_BYTES:
        return _bytes_to_hex if field.name in ID_FIELDS else _bytes_to_base64
    if kind == _FD.TYPE_DOUBLE:
        return _double_to_json
    if kind == _FD.TYPE_FLOAT:
        return _float32_to_json
    return _same  # strings, bools, 32-bit integers and enums (as integers) are JSON already


def _map_key_encoder(field: FieldDescriptor) -> Callable[[Any], str]:
    if field.type == _FD.TYPE_BOOL:
        return lambda k: "true" if k else "false"
    return str


def _bytes_to_hex(value: bytes) -> str:
    return value.hex()


def _bytes_to_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _double_to_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _float32_to_json(value: float) -> float | str:
    """The shortest decimal that reads back as the same float32 (0.1, not 0.10000000149011612)."""
    if not math.isfinite(value):
        return _double_to_json(value)
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


# ---------------------------------------------------------------------------------------------------- helpers

_indexes: dict[Descriptor, dict[str, FieldDescriptor]] = {}


def _field_index(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """Each field by its JSON (lowerCamelCase) name and by its original name."""
    index = _indexes.get(descriptor)
    if index is None:
        index = {}
        for field in descriptor.fields:
            index[field.name] = field
            index[field.json_name] = field
        _indexes[descriptor] = index
    return index


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.type == _FD.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def _is_well_known(descriptor: Descriptor) -> bool:
    return descriptor.full_name.startswith("google.protobuf.")


def _is_null_value(field: FieldDescriptor) -> bool:
    """`null` is a real value for google.protobuf.Value fields; everywhere else it means the default."""
    return field.type == _FD.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Value"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {_show(value)}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 64 else text[:61] + "..."
