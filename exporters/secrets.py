"""Secrets read from files (a password, a bearer token), re-read when the file changes, never shown.

Secrets live in files rather than in the config so that a config can be printed, diffed and checked in; a
token that a sidecar rotates (Vault agent, a Kubernetes projected volume) is picked up without a restart:
`SecretFile.value()` looks at the file's inode, size and modification time at most once per `check_every`
seconds and reads it again when one changed. Every value ever read is remembered (a bounded number per file),
so `redact` can take it out of any text before it is shown: logs, `/status`, exception messages. A receiver
that echoes a rejected token in its error body must not put that token into the agent's log.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

REDACTED = "<redacted>"
MAX_SECRET_BYTES = 64 * 1024
"""A secret file larger than this is refused: a token or a password is a few hundred bytes at most."""
REMEMBERED_PER_FILE = 8
"""Past values of one file kept for `redact` after a rotation (an old token still shows up in late errors)."""
MIN_REDACTED_LENGTH = 4
"""Shorter values are not searched for in text: replacing every 'ab' would make logs unreadable, and no
credential worth the name is that short."""

log = logging.getLogger("headwater.exporters.secrets")

_known_lock = threading.Lock()
_known: dict[str, deque[str]] = {}  # a slot (a key and a path) -> its recent values; slots come from the config
_patterns: tuple[str, ...] = ()  # every remembered value, longest first


class SecretError(ValueError):
    """A secret file cannot be read, or is empty: the message names the file and the key, never its content."""


def remember(slot: str, value: str) -> None:
    """Have `redact` hide `value`, kept as one of the recent values of `slot` (say, a config key and a path)."""
    global _patterns
    if len(value) < MIN_REDACTED_LENGTH:
        return
    with _known_lock:
        values = _known.setdefault(slot, deque(maxlen=REMEMBERED_PER_FILE))
        if value not in values:
            values.append(value)
        every = {v for vs in _known.values() for v in vs}
        _patterns = tuple(sorted(every, key=len, reverse=True))


def redact(text: str) -> str:
    """`text` with every remembered secret replaced by `<redacted>`."""
    patterns = _patterns
    for value in patterns:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def headers_for_log(headers: Mapping[str, str]) -> str:
    """`headers` as one `Name=value, ...` string for a debug line, the Authorization value shown as `<redacted>`."""
    return ", ".join(f"{k}={REDACTED if k.lower() == 'authorization' else redact(v)}" for k, v in headers.items())


def basic_credentials(username: str, password: str) -> str:
    """The `Authorization` value for HTTP basic auth (RFC 7617); its base64 part is remembered for `redact`
    (a receiver may echo the header it refused)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    remember(f"basic {username}", token)
    return f"Basic {token}"


class SecretFile:
    """The content of `path` (surrounding whitespace stripped), checked for changes at most once per
    `check_every` seconds of `clock`.

        token = SecretFile("/run/secrets/token", key="exporters.otlp.bearer_token_file")
        headers["Authorization"] = f"Bearer {token.value()}"

    The first read happens here, so a missing, unreadable or empty file is refused when the exporter is
    built (`SecretError`, naming `key` and the path). Later a file that cannot be read, or is empty, while
    being replaced keeps the last value, with a warning. `repr` never shows the value.
    """

    def __init__(self, path: str, *, key: str, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.key = key
        self._check_every = check_every
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""
        self._checked_at = clock()
        self._failing = False  # the last check failed: warned already
        stamp, value = self._read()
        self._stamp, self._value = stamp, value
        remember(f"{self.key} {self.path}", value)

    def __repr__(self) -> str:
        return f"SecretFile({self.path!r}, value={REDACTED})"

    def value(self) -> str:
        now = self._clock()
        if now - self._checked_at < self._check_every:
            return self._value
        with self._lock:
            self._checked_at = now
            try:
                stat = os.stat(self.path)
            except OSError as exc:
                self._warn_once("secret file cannot be read; the last value read stays in use",
                                exc.strerror or str(exc))
                return self._value
            if _stamp(stat) == self._stamp:
                self._failing = False
                return self._value
            try:
                stamp, value = self._read()
            except SecretError as exc:
                self._warn_once("secret file changed but cannot be used; the last value read stays in use", str(exc))
                return self._value
            self._failing = False
            remember(f"{self.key} {self.path}", value)
            self._stamp, self._value = stamp, value
            log.info("secret file changed; the new value is in use", extra={"kv": {"key": self.key, "path": self.path}})
            return value

    def _warn_once(self, message: str, error: str) -> None:
        """One warning per failure, not one per check: a receiver checks its token file at every request."""
        if not self._failing:
            log.warning(message, extra={"kv": {"key": self.key, "path": self.path, "error": error}})
        self._failing = True

    def _read(self) -> tuple[tuple[int, int, int], str]:
        try:
            with open(self.path, "rb") as file:
                stamp = _stamp(os.fstat(file.fileno()))
                data = file.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise SecretError(f"{self.key}: cannot read {self.path}: {exc.strerror or exc}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise SecretError(f"{self.key}: {self.path} holds more than {MAX_SECRET_BYTES} bytes; expected one "
                              "password or token")
        try:
            value = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SecretError(f"{self.key}: {self.path} is not UTF-8 text") from None
        if not value:
            raise SecretError(f"{self.key}: {self.path} is empty")
        if any(c in value for c in "\r\n\0"):
            raise SecretError(f"{self.key}: {self.path} holds more than one line; expected one password or token")
        return stamp, value


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
