"""What a reload (SIGHUP) may change while the agent runs, decided from the running config and the new one.

Pure functions, so the rules read as a table in the tests; `agent.service.Agent.reload` carries them out.

Applied live: sampling, admission, span metrics, log level, `shutdown_timeout`, exporters (added, removed, or
replaced on the same queue when any of their settings changed), pipelines, receivers and the telemetry
server (rebound when their endpoint changes, turned on or off with `enabled`), body size limits.
Not live, said in the log, and kept as they run until a restart (`needs_restart`):

- `state_dir`: the queues and the delta-to-cumulative state live there;
- an endpoint whose port stays the same while the host changes: the new socket cannot be bound beside the
  old one on that port, and closing the old one first would leave nothing listening if the bind failed;
- `receivers.otlp.grpc.max_message_size` while the gRPC endpoint stays (a gRPC server fixes it when it
  starts; a changed endpoint takes it along);
- `receivers.remote_write.max_dictionary_per_sender` / `max_dictionary_total` while the gateway's endpoint
  stays (the compact sessions were sized with them; a changed endpoint takes them along);
- a receiver's `tls` and `auth` settings while its endpoint stays (the listener takes them when it starts; a
  changed endpoint takes them along). What the token file holds is read again at every change of the file,
  without any reload.
- the gRPC receiver's connection management (`keepalive`, `max_connection_idle`, `max_connection_age`,
  `max_connection_age_grace`, `max_concurrent_streams`) while its endpoint stays: server options, fixed when
  the server starts. The aiohttp receivers' (`read_header_timeout`, `read_timeout`, `idle_timeout`,
  `max_connections`) apply live.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config, ConfigIssue


@dataclass(frozen=True)
class Plan:
    """`config`: what will run, the new config with the settings in `needs_restart` kept as they run."""

    config: Config
    needs_restart: tuple[ConfigIssue, ...]


GRPC_CONNECTION_KEYS = ("keepalive", "max_connection_idle", "max_connection_age", "max_connection_age_grace",
                        "max_concurrent_streams")
"""The gRPC receiver's connection management: server options, fixed when its server starts."""

LISTENERS = ("receivers.otlp.http", "receivers.otlp.grpc", "receivers.remote_write", "telemetry")
"""The config sections that each hold one listening socket (`enabled`, `endpoint`)."""


def plan(running: Config, new: Config) -> Plan:
    notes: list[ConfigIssue] = []
    config = new
    if new.state_dir != running.state_dir:
        notes.append(ConfigIssue("state_dir", f"the queues and delta-to-cumulative state live there; "
                                 f"{running.state_dir!r} stays until a restart"))
        config = dataclasses.replace(config, state_dir=running.state_dir)
    for path in LISTENERS:
        before, after = get_at(running, path), get_at(config, path)
        if listens(before) and listens(after) and before.endpoint != after.endpoint and \
                port_of(before.endpoint) == port_of(after.endpoint):
            notes.append(ConfigIssue(f"{path}.endpoint", f"the host changes on the same port, where the new socket "
                                     f"cannot be bound beside the old; {before.endpoint} stays until a restart"))
            config = replace_at(config, f"{path}.endpoint", before.endpoint)
    grpc_before, grpc_after = running.receivers.otlp.grpc, config.receivers.otlp.grpc
    if listens(grpc_before) and listens(grpc_after) and grpc_before.endpoint == grpc_after.endpoint and \
            grpc_before.max_message_size != grpc_after.max_message_size:
        notes.append(ConfigIssue("receivers.otlp.grpc.max_message_size",
                                 "the gRPC server fixes it when it starts (a changed endpoint takes it along); "
                                 f"{grpc_before.max_message_size} stays until a restart"))
        config = replace_at(config, "receivers.otlp.grpc.max_message_size", grpc_before.max_message_size)
    if listens(grpc_before) and listens(grpc_after) and grpc_before.endpoint == grpc_after.endpoint:
        for key in GRPC_CONNECTION_KEYS:
            if getattr(grpc_before, key) != getattr(grpc_after, key):
                notes.append(ConfigIssue(f"receivers.otlp.grpc.{key}",
                                         "a gRPC server option, fixed when the server starts (a changed endpoint "
                                         f"takes it along); {getattr(grpc_before, key)} stays until a restart"))
                config = replace_at(config, f"receivers.otlp.grpc.{key}", getattr(grpc_before, key))
    gw_before, gw_after = running.receivers.remote_write, config.receivers.remote_write
    if listens(gw_before) and listens(gw_after) and gw_before.endpoint == gw_after.endpoint:
        for key in ("max_dictionary_per_sender", "max_dictionary_total"):
            if getattr(gw_before, key) != getattr(gw_after, key):
                notes.append(ConfigIssue(f"receivers.remote_write.{key}",
                                         "the compact sessions were sized with it (a changed endpoint takes it "
                                         f"along); {getattr(gw_before, key)} stays until a restart"))
                config = replace_at(config, f"receivers.remote_write.{key}", getattr(gw_before, key))
    config = _keep_receiver_security(running, config, notes)
    return Plan(config, tuple(notes))


def _keep_receiver_security(running: Config, config: Config, notes: list[ConfigIssue]) -> Config:
    """Incoming TLS and authentication: kept as they run while the listener stays where it is."""
    for path in ("receivers.otlp.http", "receivers.otlp.grpc", "receivers.remote_write"):
        before, after = get_at(running, path), get_at(config, path)
        if not (listens(before) and listens(after) and before.endpoint == after.endpoint):
            continue
        for key in ("tls", "auth"):
            if getattr(before, key) != getattr(after, key):
                notes.append(ConfigIssue(f"{path}.{key}", "the listener takes it when it starts (a changed endpoint "
                                         "takes it along); the running setting stays until a restart"))
                config = replace_at(config, f"{path}.{key}", getattr(before, key))
    return config


def exporter_specs(config: Config) -> dict[str, Any]:
    """The exporters `config` builds (those a pipeline lists, and the one `telemetry.remote_write` names), each
    with what it is built from: an exporter is rebuilt when its spec changes. In the order `agent.build` builds
    them."""
    wanted = {name for p in (config.pipelines.traces, config.pipelines.metrics) if p is not None for name in p.exporters}
    if config.telemetry.remote_write:
        wanted.add(config.telemetry.remote_write)  # the agent's own metrics go there, pipeline or not
    ex = config.exporters
    specs: dict[str, Any] = {}
    if ex.otlp is not None and "otlp" in wanted:
        specs["otlp"] = ex.otlp
    if ex.file is not None and "file" in wanted:
        # Relative paths land under state_dir, with the agent's other files.
        state = Path(config.state_dir)
        specs["file"] = FileSpec(state / (ex.file.path or "traces.jsonl"), state / (ex.file.metrics_path or "metrics.jsonl"),
                                 ex.file.max_file_size)
    for rw in ex.remote_write:
        if rw.name in wanted:
            specs[rw.name] = rw
    return specs


@dataclass(frozen=True)
class FileSpec:
    """What the file exporter is built from: where traces and metrics go."""

    traces: Path
    metrics: Path
    max_file_size: int = 128 << 20


@dataclass(frozen=True)
class ExporterChanges:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    replaced: tuple[str, ...]  # same name, another spec: stopped and rebuilt on the same queue


def exporter_changes(running: dict[str, Any], new: dict[str, Any]) -> ExporterChanges:
    """From the specs of the exporters running and those the new config builds (`exporter_specs`)."""
    return ExporterChanges(
        added=tuple(n for n in new if n not in running),
        removed=tuple(n for n in running if n not in new),
        replaced=tuple(n for n in new if n in running and new[n] != running[n]))


def listens(section: Any) -> bool:
    """Whether a listener section (see LISTENERS) is present and enabled."""
    return section is not None and section.enabled


def port_of(endpoint: str) -> str:
    return endpoint.rpartition(":")[2]


def get_at(config: Any, path: str) -> Any:
    for key in path.split("."):
        config = getattr(config, key) if config is not None else None
    return config


def replace_at(config: Any, path: str, value: Any) -> Any:
    """`config` with the field at the dotted `path` set to `value` (frozen dataclasses, rebuilt on the way)."""
    key, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{key: value})
    return dataclasses.replace(config, **{key: replace_at(getattr(config, key), rest, value)})
