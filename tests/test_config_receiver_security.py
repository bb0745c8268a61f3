"""Config for incoming TLS and authentication (`receivers.*.tls`, `receivers.*.auth`): the keys load, files a
receiver could not use are problems at their key, and `validate` warns about a receiver open beyond loopback
without TLS or client authentication (loopback, the default, is not warned about)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, check_file, load_text, warnings_for
from agent.config.check import is_loopback
from tests.tls_certs import make_certs

PIPELINE = "exporters: {file: {}}\npipelines: {traces: {exporters: [file]}}\n"
GATEWAY = ("exporters: {remote_write: [{name: p, url: 'http://127.0.0.1:9090/api/v1/write'}]}\n"
           "pipelines: {metrics: {exporters: [p]}}\n")


def security_warnings(text: str) -> list[str]:
    return [str(w) for w in warnings_for(load_text(text, env={})) if w.path.startswith("receivers")]


def test_tls_and_auth_load_on_every_receiver() -> None:
    config = load_text(GATEWAY + "receivers:\n"
                       "  otlp:\n"
                       "    grpc: {tls: {cert_file: s.crt, key_file: s.key, client_ca_file: ca.crt}}\n"
                       "    http: {auth: {bearer_token_file: t}}\n"
                       "  remote_write: {tls: {cert_file: s.crt, key_file: s.key}, auth: {bearer_token_file: g}}\n",
                       env={})
    receivers = config.receivers
    assert receivers.otlp.grpc.tls is not None and receivers.otlp.grpc.tls.client_ca_file == "ca.crt"
    assert receivers.otlp.http.auth is not None and receivers.otlp.http.auth.bearer_token_file == "t"
    assert receivers.remote_write is not None and receivers.remote_write.tls is not None
    assert receivers.otlp.http.tls is None and receivers.otlp.grpc.auth is None


def test_tls_without_a_key_file_is_refused_at_its_key() -> None:
    with pytest.raises(ConfigError) as refused:
        load_text("receivers: {otlp: {http: {tls: {cert_file: s.crt}}}}\n", env={})
    assert [str(i) for i in refused.value.issues] == ["receivers.otlp.http.tls.key_file: required key is missing"]


def test_an_unknown_key_under_auth_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_text("receivers: {otlp: {grpc: {auth: {bearer_token: abc}}}}\n", env={})
    issues = {i.path: i.message for i in refused.value.issues}
    assert issues["receivers.otlp.grpc.auth.bearer_token"] == "unknown key (known keys: bearer_token_file)"


def test_the_default_receivers_on_loopback_are_not_warned_about() -> None:
    assert security_warnings(PIPELINE) == []


def test_a_receiver_beyond_loopback_without_tls_or_a_token_is_warned_about() -> None:
    assert security_warnings(PIPELINE + "receivers: {otlp: {http: {endpoint: '0.0.0.0:4318'}}}\n") == [
        "receivers.otlp.http: listens on 0.0.0.0:4318, beyond loopback, without TLS or a bearer token: anyone who "
        "reaches it can send data, in plain text (set receivers.otlp.http.tls and receivers.otlp.http.auth)"]


def test_a_token_without_tls_beyond_loopback_is_warned_about() -> None:
    assert security_warnings(PIPELINE + "receivers: {otlp: {grpc: {endpoint: '10.0.0.5:4317', "
                             "auth: {bearer_token_file: t}}}}\n") == [
        "receivers.otlp.grpc: listens on 10.0.0.5:4317, beyond loopback, without TLS: the bearer token and the "
        "data cross the network in plain text (set receivers.otlp.grpc.tls)"]


def test_tls_without_client_authentication_beyond_loopback_is_warned_about() -> None:
    assert security_warnings(GATEWAY + "receivers: {remote_write: {endpoint: '[::]:9201', "
                             "tls: {cert_file: s.crt, key_file: s.key}}}\n") == [
        "receivers.remote_write: listens on [::]:9201, beyond loopback, with TLS but no client authentication: "
        "anyone who reaches it can send data (set receivers.remote_write.auth.bearer_token_file or "
        "receivers.remote_write.tls.client_ca_file)"]


def test_tls_with_a_token_or_a_client_ca_beyond_loopback_is_not_warned_about() -> None:
    assert security_warnings(PIPELINE + "receivers: {otlp: {"
                             "grpc: {endpoint: '0.0.0.0:4317', tls: {cert_file: a, key_file: b, client_ca_file: c}}, "
                             "http: {endpoint: '0.0.0.0:4318', tls: {cert_file: a, key_file: b}, "
                             "auth: {bearer_token_file: t}}}}\n") == []


def test_a_disabled_receiver_is_not_warned_about() -> None:
    assert security_warnings(PIPELINE + "receivers: {otlp: {http: {endpoint: '0.0.0.0:4318', enabled: false}}}\n") == []


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("[::1]", True),
                                          ("localhost", True), ("0.0.0.0", False), ("[::]", False),
                                          ("192.168.1.10", False), ("node-1.example", False)])
def test_which_listen_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_tls_files_and_token_files_a_receiver_cannot_use_are_problems_at_their_keys(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    (tmp_path / "empty.token").write_text("\n")
    path = tmp_path / "c.yaml"
    path.write_text(PIPELINE + "receivers: {otlp: {"
                    f"grpc: {{tls: {{cert_file: '{certs.server_cert}', key_file: '{certs.client_key}'}}}}, "
                    f"http: {{auth: {{bearer_token_file: '{tmp_path / 'empty.token'}'}}}}}}}}\n")
    with pytest.raises(ConfigError) as refused:
        check_file(path)
    issues = {i.path: i.message for i in refused.value.issues}
    assert set(issues) == {"receivers.otlp.grpc.tls", "receivers.otlp.http.auth.bearer_token_file"}
    assert "cannot load the TLS certificate" in issues["receivers.otlp.grpc.tls"]
    assert "empty.token is empty" in issues["receivers.otlp.http.auth.bearer_token_file"]


def test_validate_passes_usable_files_and_prints_the_exposure_warning(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    certs = make_certs(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(PIPELINE + "receivers: {otlp: {http: {endpoint: '0.0.0.0:4318', "
                    f"tls: {{cert_file: '{certs.server_cert}', key_file: '{certs.server_key}'}}}}}}}}\n")
    assert main(["validate", "--config", str(path)]) == 0
    assert "receivers.otlp.http: listens on 0.0.0.0:4318, beyond loopback, with TLS but no client authentication" \
        in capsys.readouterr().err
