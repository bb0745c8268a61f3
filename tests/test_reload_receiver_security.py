"""A reload and a receiver's `tls` / `auth`: kept as they run while the endpoint stays (the listener takes them
when it starts), taken along by a listener that moves."""

from __future__ import annotations

import pytest

from agent.config import load_text
from agent.reload import plan

BASE = """
receivers:
  otlp:
    http: {endpoint: 127.0.0.1:4318}
    grpc: {endpoint: 127.0.0.1:4317}
  remote_write: {endpoint: 127.0.0.1:9201}
exporters:
  remote_write:
    - {name: prom, url: http://127.0.0.1:9090/api/v1/write}
pipelines:
  metrics: {exporters: [prom]}
"""
TLS = "tls: {cert_file: s.crt, key_file: s.key}"
AUTH = "auth: {bearer_token_file: t}"


def config(old: str = "", new: str = ""):
    return load_text(BASE.replace(old, new) if old else BASE, env={})


@pytest.mark.parametrize("before, after, key", [
    ("http: {endpoint: 127.0.0.1:4318}", f"http: {{endpoint: 127.0.0.1:4318, {TLS}}}", "receivers.otlp.http.tls"),
    ("grpc: {endpoint: 127.0.0.1:4317}", f"grpc: {{endpoint: 127.0.0.1:4317, {AUTH}}}", "receivers.otlp.grpc.auth"),
    ("remote_write: {endpoint: 127.0.0.1:9201}", f"remote_write: {{endpoint: 127.0.0.1:9201, {AUTH}}}",
     "receivers.remote_write.auth"),
])
def test_tls_or_auth_changed_on_a_listener_that_stays_is_kept_until_a_restart(before: str, after: str,
                                                                               key: str) -> None:
    running = config()
    result = plan(running, config(before, after))
    assert [note.path for note in result.needs_restart] == [key]
    assert result.config == running


def test_a_listener_that_moves_takes_its_new_tls_and_auth_along() -> None:
    new = config("http: {endpoint: 127.0.0.1:4318}", f"http: {{endpoint: 127.0.0.1:14318, {TLS}, {AUTH}}}")
    result = plan(config(), new)
    assert result.needs_restart == ()
    assert result.config == new
