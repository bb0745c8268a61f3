"""A request body whose HTTP framing breaks after its handler started reading fails that read with a 400,
instead of leaving the handler waiting for data that will never come.

Why: aiohttp's C parser (3.10 to 3.14 at least), meeting broken chunked framing (a chunk size that is not hex,
data without its CRLF) after the headers were parsed, queues an error for the *next* request on the connection
and leaves the body being read without end or error. The handler then waits until the client hangs up,
holding its admission lease, while the client (which sent bytes and waits for an answer) waits too: a stuck
connection that a single hostile client can repeat at will. aiohttp's pure-Python parser fails the body, as
the C parser does for errors inside chunk data. `install` wraps `RequestHandler.data_received` to do the same:
when feeding data queued a parser error while a request is being handled, that request's body read raises it.
It reads two attributes aiohttp keeps private (`_messages`, `_current_request`) and does nothing when they are
missing, so an aiohttp that renames them only brings the stall back (tests/test_malformed_http.py says so).
"""

from __future__ import annotations

from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

_MARK = "_headwater_fails_body_on_broken_framing"


def install() -> None:
    """Idempotent; the aiohttp receivers call it when built."""
    original = RequestHandler.data_received
    if getattr(original, _MARK, False):
        return

    def data_received(self: RequestHandler, data: bytes) -> None:
        messages: Any = getattr(self, "_messages", None)
        queued = len(messages) if messages is not None else 0
        original(self, data)
        if messages is None or len(messages) <= queued:
            return
        request = getattr(self, "_current_request", None)
        error = getattr(messages[-1][0], "exc", None)
        if request is not None and isinstance(error, HttpProcessingError):
            request.content.set_exception(error)

    setattr(data_received, _MARK, True)
    RequestHandler.data_received = data_received  # type: ignore[method-assign]
