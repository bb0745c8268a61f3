"""agent.config.check: what `headwater validate`, startup and a reload ask of a file; warnings for what it
leaves off, printed by `validate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, check_file, load_text, warnings_for
from agent.config.check import describe_tiers, tiers_source

RW = "exporters: {remote_write: [{name: prom, url: 'http://127.0.0.1:9090/api/v1/write'}]}\n"


def warned(text: str) -> list[str]:
    return [str(w) for w in warnings_for(load_text(text, env={}))]


def test_a_config_without_pipelines_warns_that_every_export_is_refused():
    assert warned("state_dir: /tmp/x\n") == [
        "pipelines: no pipelines are configured: the agent takes no data, and every OTLP export is answered "
        "404 (HTTP) / UNIMPLEMENTED (gRPC)"]


def test_a_signal_left_without_a_pipeline_is_named_as_off():
    assert warned(RW + "pipelines: {metrics: {exporters: [prom]}}\n") == [
        "pipelines.traces: traces are off: there is no pipelines.traces, so OTLP traces exports are answered 404 "
        "(HTTP) / UNIMPLEMENTED (gRPC)"]


def test_an_exporter_no_pipeline_lists_is_named():
    assert warned("exporters: {file: {}, remote_write: [{name: prom, url: 'http://h:9090/w'}]}\n"
                  "pipelines: {traces: {exporters: [file]}}\n") == [
        "pipelines.metrics: metrics are off: there is no pipelines.metrics, so OTLP metrics exports are answered "
        "404 (HTTP) / UNIMPLEMENTED (gRPC)",
        "exporters.remote_write[0]: exporter 'prom' is configured but no pipeline lists it (nor "
        "telemetry.remote_write): it is not built"]


def test_the_exporter_telemetry_remote_write_names_is_not_unused():
    assert warned("exporters: {remote_write: [{name: self, url: 'http://h:9090/w'}]}\n"
                  "telemetry: {remote_write: self}\n") == [
        "pipelines: no pipelines are configured: the agent takes no data, and every OTLP export is answered "
        "404 (HTTP) / UNIMPLEMENTED (gRPC)"]


def test_a_header_remote_write_sets_itself_is_a_problem_at_its_key(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("exporters: {remote_write: [{name: p, url: 'http://h:9/w', headers: {content-type: x}}]}\n"
                    "pipelines: {metrics: {exporters: [p]}}\n")
    with pytest.raises(ConfigError) as exc:
        check_file(path)
    assert [i.path for i in exc.value.issues] == ["exporters.remote_write[0].headers.content-type"]


def test_validate_prints_each_warning_and_still_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "empty.yaml"
    path.write_text("state_dir: /tmp/x\n")
    assert main(["validate", "-c", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == f"{path}: ok\n"
    assert out.err == f"{path}: warning: pipelines: no pipelines are configured: the agent takes no data, and " \
                      "every OTLP export is answered 404 (HTTP) / UNIMPLEMENTED (gRPC)\n"


def test_the_default_tiers_are_described_and_known_as_defaults():
    tiers = load_text("state_dir: /tmp/x\n", env={}).sampling.tiers
    assert describe_tiers(tiers) == "P0=0.99 (span sampling.priority=P0); P1=0.5 (span sampling.priority=P1); " \
                                    "P2=0.05 (the rest)"
    assert tiers_source(tiers) == "defaults"


def test_configured_tiers_are_described_with_every_condition():
    tiers = load_text("sampling: {tiers: [{name: slow, rate: 0.5, key: [service.name], when: {root_only: true, "
                      "span_kinds: [server], span_names: [GET, POST], resource_attributes: {env: [prod, stage]}}}, "
                      "{name: rest, rate: 0.01}]}\n", env={}).sampling.tiers
    assert describe_tiers(tiers) == ("slow=0.5 (resource env=prod|stage, root name=GET|POST, root kind=server, "
                                     "key service.name); rest=0.01 (the rest)")
    assert tiers_source(tiers) == "config"
