"""What a receiver does with an exception nothing expected: log it with its traceback once per kind, count it,
and answer 500 / INTERNAL with a message that says it is the agent's fault.

Why once per kind: a bug that a client's requests trigger would otherwise log a traceback per request, and a
client sending thousands a second floods the journal. A kind is the exception's type and where it was raised
(file and line of the innermost frame); later ones of the same kind are logged at debug, without traceback,
and counted in `headwater_receiver_internal_errors_total`. The set of kinds seen is bounded (`MAX_KINDS`):
past it, every new kind is logged in full again, which is noisy but never grows memory.

A malformed HTTP message (a bad header line, broken chunked framing) never reaches a handler: aiohttp answers
400 itself, but logs each with a traceback at ERROR ("Error handling request"), so a client could fill the
journal; `quiet_malformed_http` turns those records into one debug line (`headwater` at debug shows them).

Client bytes must never get here: every refusal a client's bytes deserve is a 4xx with a message, decided
where the bytes are read (tests/test_fuzz_receivers.py holds the receivers to that).
"""

from __future__ import annotations

import logging
import os
import traceback

from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import metrics

from agent.logs import kv

log = logging.getLogger("headwater.receivers")

MAX_KINDS = 256
_seen: set[tuple[str, str]] = set()


def kind_of(exc: BaseException) -> tuple[str, str]:
    """(exception type, "file:line" of the innermost frame it was raised in)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"
    return type(exc).__qualname__, where


class InternalErrors:
    """One per receiver: `message = errors.report(exc, signal)` inside the receiver's catch-all."""

    def __init__(self, meter_name: str, transport: str, signals: tuple[str, ...]) -> None:
        self._transport = transport
        self._counter = metrics.get_meter(meter_name).create_counter(
            "headwater_receiver_internal_errors",
            description="Requests answered 500 / INTERNAL because of an unexpected exception in the agent (a bug; "
            "the first of each kind is logged with its traceback), by signal and transport")
        for signal in signals:  # 0 from the start
            self._counter.add(0, {"signal": signal, "transport": transport})

    def report(self, exc: BaseException, signal: str) -> str:
        """Log and count `exc`; the message to answer the client with."""
        kind = kind_of(exc)
        self._counter.add(1, {"signal": signal, "transport": self._transport})
        fields = kv(signal=signal, transport=self._transport, error=kind[0], where=kind[1])
        if kind in _seen:
            log.debug("unexpected error handling a request (logged before with its traceback)", **fields)
        else:
            if len(_seen) < MAX_KINDS:
                _seen.add(kind)
            log.error("unexpected error handling a request", exc_info=exc, **fields)
        return f"internal error in the agent ({kind[0]} at {kind[1]}); it is logged and counted"


class _MalformedHttp(logging.Filter):
    """On `aiohttp.server`: a client's malformed HTTP message (aiohttp answered 400) is its fault, not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or exc.code >= 500:
            return True
        if not log.isEnabledFor(logging.DEBUG):
            return False
        record.msg, record.args = "malformed HTTP request answered %s: %s", (exc.code, exc.message)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return True


_MALFORMED_HTTP = _MalformedHttp()


def quiet_malformed_http() -> None:
    """Install the filter (idempotent): the aiohttp receivers call it when built."""
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_HTTP)
