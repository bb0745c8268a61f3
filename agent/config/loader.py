"""Reading a config file: YAML, `${env:...}` substitution, validation, cross-references.

Every problem is reported with its key path (`exporters.remote_write[0].url`), what was expected and what
was found, and all of them at once, so one `headwater validate` run shows everything to fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import TypeAdapter, ValidationError

from agent.config.schema import Config

_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ADAPTER = TypeAdapter(Config)


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue], source: str = "") -> None:
        self.issues = issues
        self.source = source
        super().__init__("\n".join(str(i) for i in issues))


def default_config_text() -> str:
    return resources.files("agent").joinpath("default.yaml").read_text(encoding="utf-8")


def load_file(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Load `path`, or the default config shipped in the package when `path` is None."""
    if path is None:
        return load_text(default_config_text(), env, source="(default config)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file: {exc.strerror or exc}")], str(path)) from None
    return load_text(text, env, source=str(path))


def load_text(text: str, env: Mapping[str, str] | None = None, source: str = "(text)") -> Config:
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"not valid YAML: {exc}")], source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue("", f"expected a mapping of sections, found {type(raw).__name__}")], source)
    issues: list[ConfigIssue] = []
    raw = _substitute(raw, env, "", issues)
    if issues:
        raise ConfigError(issues, source)
    try:
        config = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError([_issue_from_pydantic(e) for e in exc.errors()], source) from None
    issues = _check_references(config)
    if issues:
        raise ConfigError(issues, source)
    return config


def _substitute(value: Any, env: Mapping[str, str], path: str, issues: list[ConfigIssue]) -> Any:
    """Replace `${env:NAME}` and `${env:NAME:-default}` inside string scalars (never in keys, never YAML)."""
    if isinstance(value, dict):
        return {k: _substitute(v, env, _join(path, k), issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, f"{path}[{i}]", issues) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        issues.append(ConfigIssue(path, f"environment variable {name} is not set and {match.group(0)} gives no default"))
        return ""

    return _ENV.sub(replace, value)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in ("tagged-union",):
            continue
        else:
            out = _join(out, part)
    return out


def _issue_from_pydantic(err: Mapping[str, Any]) -> ConfigIssue:
    loc = tuple(err.get("loc", ()))
    path = _format_loc(loc)
    kind = err.get("type", "")
    found = err.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(loc[:-1])
        hint = f" (known keys: {', '.join(known)})" if known else ""
        return ConfigIssue(path, f"unknown key{hint}")
    if kind == "missing":
        return ConfigIssue(path, "required key is missing")
    message = str(err.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if "found" not in message:
        message = f"{message[0].lower()}{message[1:]}, found {found!r}"
    return ConfigIssue(path, message)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at `loc`, for 'unknown key' messages."""
    cls: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return []
        cls = _dataclass_in(hints[part])
        if cls is None:
            return []
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls)]


def _dataclass_in(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _check_references(config: Config) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    tiers = config.sampling.tiers
    if not tiers:
        issues.append(ConfigIssue("sampling.tiers", "expected at least one tier"))
    else:
        last = tiers[-1].when
        if last is not None and any((last.resource_attributes, last.span_attributes, last.span_names, last.span_kinds)):
            issues.append(ConfigIssue(f"sampling.tiers[{len(tiers) - 1}].when",
                                      "expected no conditions on the last tier: it catches every trace the others do not"))
        names = [t.name for t in tiers]
        for i, name in enumerate(names):
            if name in names[:i]:
                issues.append(ConfigIssue(f"sampling.tiers[{i}].name", f"expected a unique name, found {name!r} twice"))
    if config.pipelines.traces is not None and config.pipelines.traces.span_metrics:
        issues.append(ConfigIssue("pipelines.traces.span_metrics",
                                  "expected span_metrics on the metrics pipeline, which exports them"))
    if config.pipelines.metrics is not None and config.pipelines.metrics.span_metrics and config.pipelines.traces is None:
        issues.append(ConfigIssue("pipelines.metrics.span_metrics",
                                  "expected a traces pipeline too: span metrics are counted from received spans"))
    if config.sampling.root_delay > config.sampling.decision_wait:
        issues.append(ConfigIssue("sampling.root_delay", "expected at most sampling.decision_wait, found "
                                  f"{config.sampling.root_delay:g}s > {config.sampling.decision_wait:g}s"))
    names = [rw.name for rw in config.exporters.remote_write]
    for i, name in enumerate(names):
        if name in names[:i]:
            issues.append(ConfigIssue(f"exporters.remote_write[{i}].name", f"expected a unique name, found {name!r} twice"))
        if name == "file":
            issues.append(ConfigIssue(f"exporters.remote_write[{i}].name",
                                      "expected a name other than 'file', which names the file exporter in pipelines"))
    allowed = {"rw1": ("snappy",), "rw2": ("snappy",), "vm": ("zstd",), "compact": ("snappy", "zstd")}
    for i, rw in enumerate(config.exporters.remote_write):
        if rw.protocol in allowed and rw.compression != "auto" and rw.compression not in allowed[rw.protocol]:
            why = {"rw1": "remote write 1.0 allows snappy only", "rw2": "remote write 2.0 allows snappy only",
                   "vm": "VictoriaMetrics' protocol is zstd"}[rw.protocol]
            issues.append(ConfigIssue(f"exporters.remote_write[{i}].compression",
                                      f"expected snappy or auto with protocol {rw.protocol} ({why}), found "
                                      f"{rw.compression!r}" if rw.protocol != "vm" else
                                      f"expected zstd or auto with protocol vm ({why}), found {rw.compression!r}"))
    issues += _check_client_security(config)
    gateway = config.receivers.remote_write
    if gateway is not None and gateway.enabled and config.pipelines.metrics is None:
        issues.append(ConfigIssue("receivers.remote_write",
                                  "expected a metrics pipeline: the gateway forwards through its exporters"))
    if gateway is not None and gateway.enabled and config.pipelines.metrics is not None \
            and "file" in config.pipelines.metrics.exporters:
        issues.append(ConfigIssue("pipelines.metrics.exporters",
                                  "expected remote-write exporters only with receivers.remote_write: the gateway "
                                  "forwards Prometheus series, which the file exporter does not write; found 'file'"))
    trace_exporters = [n for n in ("otlp", "file") if getattr(config.exporters, n) is not None]
    metric_exporters = names + (["file"] if config.exporters.file is not None else [])
    target = config.telemetry.remote_write
    if target and target not in names:
        choice = ", ".join(names) if names else "none is configured under exporters.remote_write"
        what = f"{target!r}, a trace exporter" if target in trace_exporters else repr(target)
        issues.append(ConfigIssue("telemetry.remote_write",
                                  f"expected the name of a remote-write exporter ({choice}), found {what}"))
    pipelines = (("traces", config.pipelines.traces, trace_exporters),
                 ("metrics", config.pipelines.metrics, metric_exporters))
    for signal, pipeline, available in pipelines:
        if pipeline is None:
            continue
        if not pipeline.exporters:
            issues.append(ConfigIssue(f"pipelines.{signal}.exporters",
                                      "expected at least one exporter; leave the pipeline out to refuse this signal"))
        for i, name in enumerate(pipeline.exporters):
            if name not in available:
                choice = ", ".join(available) if available else "none is configured under exporters"
                issues.append(ConfigIssue(f"pipelines.{signal}.exporters[{i}]",
                                          f"expected the name of a {signal} exporter ({choice}), found {name!r}"))
    return issues


def _check_client_security(config: Config) -> list[ConfigIssue]:
    """Outgoing TLS and credentials: what one section of the schema cannot check alone."""
    issues: list[ConfigIssue] = []
    exporters = [("exporters.otlp", config.exporters.otlp, "endpoint")] if config.exporters.otlp else []
    exporters += [(f"exporters.remote_write[{i}]", rw, "url") for i, rw in enumerate(config.exporters.remote_write)]
    for path, exporter, url_key in exporters:
        url = getattr(exporter, url_key)
        parts = urlsplit(url)
        if parts.password is not None:
            issues.append(ConfigIssue(f"{path}.{url_key}", "expected no password in the URL (logs and errors show "
                                      "URLs): use basic_auth.password_file; found a URL with user:password@"))
        tls = exporter.tls
        if tls is not None and parts.scheme != "https":
            issues.append(ConfigIssue(f"{path}.tls", f"expected an https:// {url_key} with tls, found {parts.scheme}://"))
        if tls is not None and bool(tls.cert_file) != bool(tls.key_file):
            given, missing = ("cert_file", "key_file") if tls.cert_file else ("key_file", "cert_file")
            issues.append(ConfigIssue(f"{path}.tls.{missing}", f"expected {missing} beside {given}: a client "
                                      "certificate needs its key"))
        if exporter.basic_auth is not None and exporter.bearer_token_file:
            issues.append(ConfigIssue(f"{path}.bearer_token_file",
                                      "expected basic_auth or bearer_token_file, not both: each sets Authorization"))
        if exporter.basic_auth is not None and not exporter.basic_auth.username:
            issues.append(ConfigIssue(f"{path}.basic_auth.username", "expected a user name, found ''"))
        if exporter.basic_auth is not None and not exporter.basic_auth.password_file:
            issues.append(ConfigIssue(f"{path}.basic_auth.password_file", "expected a file holding the password, "
                                      "found ''"))
    return issues
