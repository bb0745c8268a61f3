"""What a reload applies live and what it keeps until a restart (agent/reload.py), as a table of config
changes; and which exporters it adds, removes or rebuilds."""

from __future__ import annotations

import pytest

from agent.config import load_text
from agent.reload import exporter_changes, exporter_specs, plan

BASE = """
state_dir: /var/lib/a
receivers:
  otlp:
    http: {endpoint: 127.0.0.1:4318}
    grpc: {endpoint: 127.0.0.1:4317, max_message_size: 16MiB}
  remote_write: {endpoint: 127.0.0.1:9201}
exporters:
  file: {}
  remote_write:
    - {name: prom, url: http://127.0.0.1:9090/api/v1/write}
pipelines:
  traces: {exporters: [file]}
  metrics: {exporters: [prom]}
"""


def config(**changes: str):
    """BASE with the lines that contain a key replaced: `changes` maps the old text to the new."""
    text = BASE
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    return load_text(text, env={})


@pytest.mark.parametrize("before, after, key", [
    ("state_dir: /var/lib/a", "state_dir: /var/lib/b", "state_dir"),
    ("http: {endpoint: 127.0.0.1:4318}", "http: {endpoint: 0.0.0.0:4318}", "receivers.otlp.http.endpoint"),
    ("max_message_size: 16MiB", "max_message_size: 32MiB", "receivers.otlp.grpc.max_message_size"),
    ("remote_write: {endpoint: 127.0.0.1:9201}",
     "remote_write: {endpoint: 127.0.0.1:9201, max_dictionary_total: 1GiB}", "receivers.remote_write.max_dictionary_total"),
])
def test_a_change_that_needs_a_restart_is_named_and_the_running_value_stays(before, after, key):
    running = config()
    result = plan(running, config(**{before: after}))
    assert [note.path for note in result.needs_restart] == [key]
    assert result.config == running


@pytest.mark.parametrize("before, after", [
    ("http: {endpoint: 127.0.0.1:4318}", "http: {endpoint: 127.0.0.1:5318}"),
    ("grpc: {endpoint: 127.0.0.1:4317, max_message_size: 16MiB}",
     "grpc: {endpoint: 127.0.0.1:5317, max_message_size: 32MiB}"),  # a new endpoint takes the size along
    ("http: {endpoint: 127.0.0.1:4318}", "http: {endpoint: 127.0.0.1:4318, max_body_size: 1MiB}"),
    ("http: {endpoint: 127.0.0.1:4318}", "http: {enabled: false}"),
    ("url: http://127.0.0.1:9090/api/v1/write", "url: http://127.0.0.1:9091/api/v1/write"),
    ("pipelines:", "sampling: {tiers: [{name: all, rate: 1}]}\nadmission: {max_inflight: 1MiB}\npipelines:"),
])
def test_a_change_that_applies_live_is_taken_whole(before, after):
    new = config(**{before: after})
    result = plan(config(), new)
    assert result.needs_restart == ()
    assert result.config == new


def test_exporters_are_added_removed_or_rebuilt_by_name_and_settings():
    running = exporter_specs(config())
    new = exporter_specs(config(**{
        "url: http://127.0.0.1:9090/api/v1/write": "url: http://127.0.0.1:9091/api/v1/write}\n"
        "    - {name: vm, url: http://127.0.0.1:8428/api/v1/write",
        "metrics: {exporters: [prom]}": "metrics: {exporters: [prom, vm]}",
        "traces: {exporters: [file]}\n": "",
    }))
    changes = exporter_changes(running, new)
    assert (changes.added, changes.removed, changes.replaced) == (("vm",), ("file",), ("prom",))


def test_an_exporter_no_pipeline_lists_is_not_built():
    specs = exporter_specs(config(**{"traces: {exporters: [file]}\n": ""}))
    assert list(specs) == ["prom"]
