"""Secrets read from files (issue 10, item 4): re-read when the file changes, never shown in a repr, a log line,
`/status` or an error message."""

from __future__ import annotations

import logging
import os

import pytest

from agent.logs import LogfmtFormatter, RecentProblems
from exporters.client_security import AuthSettings, ClientSecurity
from exporters.secrets import REDACTED, SecretError, SecretFile, redact


def clock_at(start: float = 0.0) -> list[float]:
    return [start]


def test_a_secret_file_is_read_again_once_it_changed_and_the_check_interval_passed(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    now = clock_at()
    secret = SecretFile(str(path), key="k", clock=lambda: now[0])
    path.write_text("second-token")
    now[0] += 0.9
    assert secret.value() == "first-token"
    now[0] += 0.1
    assert secret.value() == "second-token"


def test_a_secret_file_replaced_by_an_empty_or_missing_one_keeps_the_last_value(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("kept-token")
    now = clock_at()
    secret = SecretFile(str(path), key="k", clock=lambda: now[0])
    path.write_text("")
    now[0] += 1
    assert secret.value() == "kept-token"
    os.unlink(path)
    now[0] += 1
    assert secret.value() == "kept-token"


@pytest.mark.parametrize("content", ["", "  \n", "two\nlines"])
def test_an_empty_or_multi_line_secret_file_is_refused_naming_the_key_and_path(tmp_path, content) -> None:
    path = tmp_path / "password"
    path.write_text(content)
    with pytest.raises(SecretError, match=rf"^exporters\.otlp\.basic_auth\.password_file: {path}"):
        SecretFile(str(path), key="exporters.otlp.basic_auth.password_file")


def test_a_missing_secret_file_is_refused_naming_the_key_and_path(tmp_path) -> None:
    with pytest.raises(SecretError, match=r"^exporters\.otlp\.bearer_token_file: cannot read .*nope"):
        SecretFile(str(tmp_path / "nope"), key="exporters.otlp.bearer_token_file")


def test_the_repr_of_a_secret_file_and_of_client_security_shows_no_secret(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("repr-token-value")
    secret = SecretFile(str(path), key="k")
    security = ClientSecurity.build(None, AuthSettings(bearer_token_file=str(path)), who="exporters.otlp")
    assert "repr-token-value" not in repr(secret) and REDACTED in repr(secret)
    assert "repr-token-value" not in repr(security)


def test_redact_hides_every_value_read_from_a_secret_file_including_rotated_ones(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("token-before-rotation")
    now = clock_at()
    secret = SecretFile(str(path), key="k", clock=lambda: now[0])
    path.write_text("token-after-rotation")
    now[0] += 1
    secret.value()
    text = "401: invalid token-before-rotation, expected token-after-rotation"
    assert redact(text) == f"401: invalid {REDACTED}, expected {REDACTED}"


def test_redact_hides_the_basic_auth_header_a_receiver_echoes(tmp_path) -> None:
    path = tmp_path / "password"
    path.write_text("echoed-password")
    security = ClientSecurity.build(None, AuthSettings(username="agent", password_file=str(path)), who="x")
    header = security.authorization()
    assert header is not None
    assert redact(f"refused Authorization: {header}") == f"refused Authorization: Basic {REDACTED}"


def test_a_log_line_and_a_status_entry_never_carry_a_secret_read_from_a_file(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("logged-token-value")
    SecretFile(str(path), key="k")
    record = logging.LogRecord("headwater.test", logging.ERROR, __file__, 1, "send failed: %s", ("logged-token-value",),
                               None)
    record.kv = {"answer": "invalid logged-token-value"}
    line = LogfmtFormatter().format(record)
    problems = RecentProblems()
    problems.emit(record)
    [entry] = problems.entries()
    assert "logged-token-value" not in line and REDACTED in line
    assert "logged-token-value" not in str(entry) and REDACTED in entry["message"]
