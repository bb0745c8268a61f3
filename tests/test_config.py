"""Config loading: defaults, env substitution, units, and every problem reported with its key path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent
from agent.config import ConfigError, load_file, load_text

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_text(text, env or {})
    return [str(i) for i in exc.value.issues]


def test_the_shipped_default_config_loads():
    config = load_file(None, env={})
    assert config.receivers.otlp.http.endpoint == "127.0.0.1:4318"
    assert config.receivers.otlp.grpc.endpoint == "127.0.0.1:4317"
    assert config.pipelines.metrics.exporters == ("file",)  # needs nothing else running
    assert config.exporters.remote_write == ()


def test_every_example_config_in_configs_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files, "configs/ should hold documented examples"
    for path in files:
        load_file(path, env={})


def test_a_left_out_section_takes_its_defaults():
    config = load_text("state_dir: /tmp/x\n", env={})
    assert config.receivers.otlp.http.max_body_size == 16 * 2**20
    assert config.admission.retry_after == 1.0
    assert config.exporters.remote_write == ()


def test_durations_and_sizes_are_parsed():
    config = load_text("receivers: {otlp: {http: {max_body_size: 512KiB}}}\nshutdown_timeout: 1m30s\n", env={})
    assert config.receivers.otlp.http.max_body_size == 512 * 1024
    assert config.shutdown_timeout == 90.0


def test_env_references_are_substituted_with_defaults():
    text = "state_dir: ${env:SD:-/var/lib/hw}\ntelemetry: {endpoint: '127.0.0.1:${env:PORT}'}\n"
    config = load_text(text, env={"PORT": "9999"})
    assert config.state_dir == "/var/lib/hw"
    assert config.telemetry.endpoint == "127.0.0.1:9999"


def test_an_unset_env_reference_without_default_is_an_error_at_its_key():
    assert problems("state_dir: ${env:NOPE}\n") == [
        "state_dir: environment variable NOPE is not set and ${env:NOPE} gives no default"]


def test_an_unknown_key_is_an_error_naming_the_known_ones():
    assert problems("receivers: {otlp: {htp: {}}}\n") == ["receivers.otlp.htp: unknown key (known keys: grpc, http)"]


def test_a_bad_duration_is_an_error_at_its_key_path():
    [issue] = problems("exporters: {remote_write: [{name: p, url: 'http://h:9090/w', batch: {flush_interval: 5x}}]}\n")
    assert issue.startswith("exporters.remote_write[0].batch.flush_interval: expected a duration")
    assert "found '5x'" in issue


def test_a_bad_endpoint_is_an_error_at_its_key_path():
    assert problems("receivers: {otlp: {grpc: {endpoint: localhost}}}\n") == [
        "receivers.otlp.grpc.endpoint: expected host:port such as 127.0.0.1:4318, found 'localhost'"]


def test_an_unknown_remote_write_protocol_is_refused_naming_the_choices():
    [issue] = problems("exporters: {remote_write: [{name: p, url: 'http://h/w', protocol: rw3}]}\n")
    assert issue.startswith("exporters.remote_write[0].protocol") and "rw1, rw2, vm, compact, auto" in issue


@pytest.mark.parametrize("protocol", ["rw1", "rw2"])
def test_remote_write_1_and_2_with_zstd_are_refused_because_their_specs_allow_snappy_only(protocol):
    [issue] = problems(f"exporters: {{remote_write: [{{name: p, url: 'http://h/w', protocol: {protocol}, "
                       "compression: zstd}]}\n")
    assert issue.startswith("exporters.remote_write[0].compression") and "snappy only" in issue


def test_the_vm_protocol_with_snappy_is_refused_because_it_is_zstd_by_definition():
    [issue] = problems("exporters: {remote_write: [{name: p, url: 'http://h/w', protocol: vm, compression: snappy}]}\n")
    assert issue.startswith("exporters.remote_write[0].compression") and "zstd" in issue


def test_a_remote_write_endpoint_negotiates_its_format_unless_told_otherwise():
    config = load_text("exporters: {remote_write: [{name: p, url: 'http://h/w'}]}\n")
    assert config.exporters.remote_write[0].protocol == "auto"
    assert config.exporters.remote_write[0].compression == "auto"


def test_a_pipeline_naming_a_missing_exporter_is_an_error():
    assert problems("pipelines: {traces: {exporters: [otlp]}}\n") == [
        "pipelines.traces.exporters[0]: expected the name of a traces exporter (none is configured under exporters), found 'otlp'"]


def test_the_file_exporter_may_serve_the_metrics_pipeline():
    config = load_text("exporters: {file: {}}\npipelines: {metrics: {exporters: [file]}}\n", env={})
    assert config.pipelines.metrics.exporters == ("file",)


def test_a_remote_write_exporter_may_not_be_named_file():
    text = "exporters: {remote_write: [{name: file, url: 'http://127.0.0.1:9090/api/v1/write'}]}\n"
    assert problems(text) == [
        "exporters.remote_write[0].name: expected a name other than 'file', which names the file exporter in pipelines"]


def test_a_gateway_refuses_the_file_exporter_in_its_metrics_pipeline():
    text = ("receivers: {remote_write: {}}\nexporters: {file: {}}\n"
            "pipelines: {metrics: {exporters: [file]}}\n")
    [problem] = problems(text)
    assert problem.startswith("pipelines.metrics.exporters: expected remote-write exporters only with receivers.remote_write")


def test_the_agent_writes_its_own_telemetry_through_a_named_remote_write_exporter_every_15s_by_default():
    config = load_text("exporters: {remote_write: [{name: prom, url: 'http://h/w'}]}\ntelemetry: {remote_write: prom}\n")
    assert config.telemetry.remote_write == "prom"
    assert config.telemetry.remote_write_interval == 15.0
    assert load_text("state_dir: /tmp/x\n").telemetry.remote_write == ""


def test_telemetry_remote_write_naming_no_remote_write_exporter_is_an_error_listing_the_choices():
    text = "exporters: {remote_write: [{name: prom, url: 'http://h/w'}]}\ntelemetry: {remote_write: mimir}\n"
    assert problems(text) == [
        "telemetry.remote_write: expected the name of a remote-write exporter (prom), found 'mimir'"]


def test_telemetry_remote_write_naming_a_trace_exporter_is_an_error():
    assert problems("exporters: {file: {}}\ntelemetry: {remote_write: file}\n") == [
        "telemetry.remote_write: expected the name of a remote-write exporter (none is configured under "
        "exporters.remote_write), found 'file', a trace exporter"]


def test_a_telemetry_remote_write_interval_of_zero_is_refused():
    [issue] = problems("telemetry: {remote_write_interval: 0s}\n")
    assert issue.startswith("telemetry.remote_write_interval: expected a duration above 0")


def test_all_problems_are_reported_at_once():
    text = "bogus: 1\ntelemetry: {log_level: loud}\nadmission: {max_inflight: lots}\n"
    assert len(problems(text)) == 3


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=None if env is None else {**os.environ, **env})


def test_validate_prints_each_problem_with_its_key_path_and_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("receivers: {otlp: {http: {endpoint: nowhere, max_body_sise: 1MiB}}}\n"
                    "shutdown_timeout: soon\n")
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 1
    assert "receivers.otlp.http.endpoint: expected host:port" in result.stderr
    assert "receivers.otlp.http.max_body_sise: unknown key" in result.stderr
    assert "shutdown_timeout: expected a duration" in result.stderr


def test_validate_accepts_a_good_file(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("state_dir: /tmp/hw\n")
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 0, result.stderr


def test_validate_without_c_checks_the_default_config_that_run_uses():
    result = run_cli("validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "(default config): ok\n"


def test_version_prints_the_version():
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("headwater ")


def test_the_version_flag_prints_the_same_as_the_version_command():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_cli("version").stdout == f"headwater {agent.__version__}\n"
