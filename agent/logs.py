"""Logs are one line per event, `key=value`, so `grep` and Loki's logfmt parser read them alike.

Callers pass fields through `extra={"kv": {...}}`; values with spaces or quotes are quoted.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

_RESERVED = ("ts", "level", "logger", "msg")


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        fields: Mapping[str, Any] = getattr(record, "kv", None) or {}
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if k not in _RESERVED)
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure(level: str) -> None:
    """Route every `headwater.*` logger to stderr in logfmt at `level`; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("headwater").setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def kv(**fields: Any) -> dict[str, dict[str, Any]]:
    """`log.info("sent", **kv(spans=3))` reads better than spelling out `extra={"kv": ...}`."""
    return {"extra": {"kv": fields}}
