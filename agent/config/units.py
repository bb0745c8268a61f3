"""Durations (`10s`, `1m30s`), sizes (`64MiB`), endpoints and log levels as config field types.

They are `Annotated` types: the dataclasses hold plain floats (seconds), ints (bytes) and strings, and the
validators run only when a file is loaded.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_duration(value: object) -> float:
    """Seconds from `1h30m`, `250ms`, `10s` or a bare number of seconds; never negative."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10s or 250ms, found {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a duration that is not negative, found {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 10s or 250ms, found {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 10s, 1m30s or 250ms (units ns, us, ms, s, m, h, d), found {value!r}")
    return total


def parse_size(value: object) -> int:
    """Bytes from `64MiB`, `1GB`, `512KiB` or a bare number of bytes; never negative."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 64MiB, found {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size that is not negative, found {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 64MiB or 1GB, found {value!r}")
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"expected a size such as 64MiB, 1GB or 4096 (units B, KB, MB, GB, KiB, MiB, GiB), found {value!r}")
    unit = (match.group(2) or "b").lower()
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def check_host_port(value: str) -> str:
    """A listen address `host:port`, with the port in 1..65535 (0 is allowed: the OS picks one, for tests)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:4318, found {value!r}")
    return value


def check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, found {value!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"expected a URL whose port is a number in 1..65535, found {value!r}") from None
    return value


def check_log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, found {value!r}")
    return value.lower()


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
HostPort = Annotated[str, AfterValidator(check_host_port)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
LogLevel = Annotated[str, AfterValidator(check_log_level)]
