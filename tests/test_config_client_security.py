"""Config keys of outgoing TLS and credentials (issue 10, items 1 and 4): `tls`, `basic_auth`,
`bearer_token_file` and `headers` per exporter, as `headwater validate` (and so startup and a reload) checks
them: every problem at its key path, files loaded as the agent will load them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import ConfigError, check_file, load_text
from tests.client_certs import make_ca


def write(tmp_path: Path, exporters: dict, pipelines: dict | None = None) -> Path:
    if pipelines is None:
        pipelines = {}
        if "otlp" in exporters:
            pipelines["traces"] = {"exporters": ["otlp"]}
        if "remote_write" in exporters:
            pipelines["metrics"] = {"exporters": [rw["name"] for rw in exporters["remote_write"]]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "exporters": exporters,
                                    "pipelines": pipelines}))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        check_file(path)
    return [str(issue) for issue in caught.value.issues]


def otlp(**keys: object) -> dict:
    return {"otlp": {"endpoint": "https://collector:4318", **keys}}


def rw(**keys: object) -> dict:
    return {"remote_write": [{"name": "prom", "url": "https://mimir:443/api/v1/push", **keys}]}


def test_every_outgoing_security_key_loads_into_the_config(tmp_path) -> None:
    ca = make_ca(tmp_path, "ca")
    client = ca.issue(tmp_path, "client", client=True)
    token = tmp_path / "token"
    token.write_text("t0ken-value")
    password = tmp_path / "password"
    password.write_text("pa55word")
    path = write(tmp_path, {
        **otlp(tls={"ca_file": str(ca.cert), "cert_file": str(client.cert), "key_file": str(client.key),
                    "server_name": "collector.internal"}, bearer_token_file=str(token)),
        **rw(basic_auth={"username": "tenant", "password_file": str(password)}, headers={"X-Scope-OrgID": "a"})})
    config = check_file(path).config
    assert config.exporters.otlp.tls.server_name == "collector.internal"
    assert config.exporters.otlp.bearer_token_file == str(token)
    assert config.exporters.remote_write[0].basic_auth.username == "tenant"


def test_the_config_holds_secret_file_paths_never_their_content(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("never-in-a-repr")
    config = check_file(write(tmp_path, otlp(bearer_token_file=str(token)))).config
    assert "never-in-a-repr" not in repr(config)


@pytest.mark.parametrize("make", [otlp, rw], ids=["otlp", "remote_write"])
def test_an_authorization_header_is_refused_pointing_to_the_auth_keys(tmp_path, make) -> None:
    [problem] = problems(write(tmp_path, make(headers={"Authorization": "Bearer abc"})))
    assert ".headers.Authorization: expected basic_auth or bearer_token_file instead" in problem


def test_a_header_otlp_sets_itself_is_refused_at_its_key(tmp_path) -> None:
    assert problems(write(tmp_path, otlp(headers={"Content-Encoding": "br"}))) == [
        "exporters.otlp.headers.Content-Encoding: expected a header OTLP or HTTP does not set itself, found one it sets"]


def test_tls_towards_a_plain_http_url_is_refused(tmp_path) -> None:
    path = write(tmp_path, {"otlp": {"endpoint": "http://collector:4318", "tls": {"insecure_skip_verify": True}}})
    assert problems(path) == ["exporters.otlp.tls: expected an https:// endpoint with tls, found http://"]


def test_a_client_certificate_without_its_key_is_refused(tmp_path) -> None:
    [problem] = problems(write(tmp_path, rw(tls={"cert_file": "/etc/me.pem"})))
    assert problem.startswith("exporters.remote_write[0].tls.key_file: expected key_file beside cert_file")


def test_basic_auth_and_a_bearer_token_together_are_refused(tmp_path) -> None:
    secret = tmp_path / "s"
    secret.write_text("value")
    path = write(tmp_path, otlp(basic_auth={"username": "u", "password_file": str(secret)},
                                bearer_token_file=str(secret)))
    assert problems(path) == ["exporters.otlp.bearer_token_file: expected basic_auth or bearer_token_file, not "
                              "both: each sets Authorization"]


def test_a_missing_secret_file_is_a_problem_at_its_key_without_waiting_for_the_exporter(tmp_path) -> None:
    missing = tmp_path / "missing-token"
    [problem] = problems(write(tmp_path, rw(bearer_token_file=str(missing))))
    assert problem == (f"exporters.remote_write[0].bearer_token_file: cannot read {missing}: "
                       "No such file or directory")


def test_a_ca_file_that_is_no_certificate_is_a_problem_at_its_key(tmp_path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("hello")
    [problem] = problems(write(tmp_path, otlp(tls={"ca_file": str(bogus)})))
    assert problem.startswith(f"exporters.otlp.tls.ca_file: cannot use {bogus} as CA certificates")


def test_an_unknown_key_under_tls_is_refused_with_the_known_ones(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(yaml.safe_dump({"exporters": otlp(tls={"ca": "/x"})}))
    assert str(caught.value.issues[0]) == ("exporters.otlp.tls.ca: unknown key (known keys: ca_file, cert_file, "
                                           "key_file, server_name, insecure_skip_verify)")


def test_a_password_in_the_url_is_refused(tmp_path) -> None:
    path = write(tmp_path, {"remote_write": [{"name": "p", "url": "https://u:pw@mimir/api/v1/push"}]})
    [problem] = problems(path)
    assert problem.startswith("exporters.remote_write[0].url: expected no password in the URL")
    assert "pw@" not in problem


def test_validate_warns_that_insecure_skip_verify_checks_nothing(tmp_path, capsys) -> None:
    path = write(tmp_path, otlp(tls={"insecure_skip_verify": True}))
    assert main(["validate", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: exporters.otlp.tls.insecure_skip_verify: the receiver's certificate is not checked" in err
    assert err.count("not checked") + err.count("checks are off") == 1
