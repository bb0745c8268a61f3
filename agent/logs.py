"""Logs are one line per event, `key=value`, so `grep` and Loki's logfmt parser read them alike.

Callers pass fields through `extra={"kv": {...}}`; values with spaces or quotes are quoted.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from exporters.secrets import redact

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
        return redact(" ".join(parts))  # a secret read from a file never reaches a log line


class RecentProblems(logging.Handler):
    """The last warnings and errors the agent logged, kept in memory for `/status`, so `headwater status` can say
    why a queue grows or a send fails without access to the journal.

    A ring bounded in bytes, each entry measured as the JSON `/status` serves: an entry over `max_entry_bytes` has
    its message and fields shortened; the oldest entries go first when the ring passes `max_bytes`. The same event
    logged again right after itself (a retry loop) replaces its predecessor and counts it in `repeated`.
    """

    def __init__(self, max_bytes: int = 16 * 1024, max_entry_bytes: int = 1024) -> None:
        super().__init__(logging.WARNING)
        if max_entry_bytes < 256 or max_bytes < max_entry_bytes:
            raise ValueError(f"need 256 <= max_entry_bytes <= max_bytes, got {max_entry_bytes} and {max_bytes}")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: deque[tuple[dict[str, Any], int]] = deque()
        self._bytes = 0
        self._guard = threading.Lock()  # records come from worker threads too; /status reads on the loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = self._entry(record)
        except Exception:  # a log call must never fail because of this copy
            self.handleError(record)
            return
        with self._guard:
            if self._entries and _same_event(self._entries[-1][0], entry):  # a retry loop fills no ring
                previous, previous_size = self._entries.pop()
                self._bytes -= previous_size
                entry["repeated"] = previous.get("repeated", 1) + 1
            size = _json_size(entry)
            self._entries.append((entry, size))
            self._bytes += size
            while self._bytes > self.max_bytes:
                _old, old_size = self._entries.popleft()
                self._bytes -= old_size

    def entries(self) -> list[dict[str, Any]]:
        """Oldest first."""
        with self._guard:
            return [entry for entry, _size in self._entries]

    def _entry(self, record: logging.LogRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        fields: Mapping[str, Any] = getattr(record, "kv", None) or {}
        entry["fields"] = {str(k): str(v) for k, v in fields.items() if k not in _RESERVED}
        if record.exc_info and record.exc_info[1] is not None:
            entry["fields"]["error"] = repr(record.exc_info[1])
        entry["message"] = redact(entry["message"])  # a secret read from a file never reaches /status
        entry["fields"] = {k: redact(v) for k, v in entry["fields"].items()}
        return self._bounded(entry)

    def _bounded(self, entry: dict[str, Any]) -> dict[str, Any]:
        """`entry` with its message, logger and field names and values cut (halving each pass) until it fits
        `max_entry_bytes` (room for `repeated` included); fields go when not even 8 characters each fit."""
        original, budget, limit = entry, self.max_entry_bytes, self.max_entry_bytes - len(', "repeated": 1234567890')
        while _json_size(entry) > limit and budget > 0:
            budget //= 2
            fields = original["fields"] if budget >= 8 else {}
            entry = {**original, "logger": _shorten(original["logger"], budget),
                     "message": _shorten(original["message"], budget),
                     "fields": {_shorten(k, budget): _shorten(v, budget) for k, v in fields.items()}}
        return entry


def _same_event(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["level"] == b["level"] and a["logger"] == b["logger"] and a["message"] == b["message"]


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max(0, max_chars - 1)] + "…"


RECENT_PROBLEMS = RecentProblems()


def configure(level: str) -> None:
    """Route every `headwater.*` logger to stderr in logfmt at `level`; quiet chatty libraries. Warnings and errors
    are also kept in `RECENT_PROBLEMS` for `/status`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler, RECENT_PROBLEMS]
    root.setLevel(logging.WARNING)
    set_level(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    """`telemetry.log_level` for every `headwater.*` logger; a reload calls it again."""
    logging.getLogger("headwater").setLevel(level.upper())


def kv(**fields: Any) -> dict[str, dict[str, Any]]:
    """`log.info("sent", **kv(spans=3))` reads better than spelling out `extra={"kv": ...}`."""
    return {"extra": {"kv": fields}}
