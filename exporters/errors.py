"""Export errors carry their retry meaning as types, so no caller decides by matching strings."""

from __future__ import annotations


class ExportError(Exception):
    """Base of every error an exporter's send path raises."""


class PermanentError(ExportError):
    """The receiver refused the data for good (e.g. 400): retrying cannot help, so the batch is dropped and counted."""


class RetryableError(ExportError):
    """A transient failure (connection refused, 5xx, timeout): retry with backoff until the deadline."""


class ThrottledError(RetryableError):
    """The receiver asked us to wait (429, or 503 with Retry-After); `retry_after` is in seconds, or None."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NetworkError(RetryableError):
    """No answer came: connection refused or reset, DNS, timeout."""


class Duplicate(PermanentError):
    """The receiver refused the request because it already holds samples at those timestamps (Prometheus: 400
    "duplicate sample for timestamp" or "out of order sample"). For a request that may have been stored by an
    earlier attempt (no answer came, or it was queued before a restart) that means delivered; otherwise it is a
    refusal like any other 4xx."""
