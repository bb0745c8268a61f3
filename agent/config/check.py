"""What `headwater validate`, startup and a reload (SIGHUP) all ask of a config file: read it, refuse it with
every problem, or take it with the warnings a person should see.

One code path on purpose: a file `validate` passes is one a reload applies, and the warnings `validate`
prints are the ones the agent logs when it starts or reloads. Warnings do not refuse a file; they name what
it leaves off that a person probably did not mean to (a signal with no pipeline is answered 404 /
UNIMPLEMENTED, silently from the client's side).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from agent.config.loader import ConfigError, ConfigIssue, load_file
from agent.config.schema import Config, TierConfig, default_tiers


@dataclass(frozen=True)
class Checked:
    """A config that loaded, with its warnings (key path and what it means), in file order."""

    config: Config
    warnings: tuple[ConfigIssue, ...]


def check_file(path: str | os.PathLike[str] | None) -> Checked:
    """Load `path` (the shipped default when None); raise ConfigError with every problem, or return the config
    and its warnings."""
    config = load_file(path)
    issues = build_problems(config)
    if issues:
        raise ConfigError(issues, str(path) if path is not None else "(default config)")
    return Checked(config, tuple(warnings_for(config)))


def build_problems(config: Config) -> list[ConfigIssue]:
    """What the schema lets through but building the agent would refuse: checked here so `validate` says so
    instead of the start (or a reload) failing later."""
    from exporters.remote_write.exporter import RESERVED_HEADERS  # only here: it loads the sending chain

    issues = []
    for i, rw in enumerate(config.exporters.remote_write):
        for name in rw.headers:
            if name.lower() == "authorization":
                issues.append(ConfigIssue(f"exporters.remote_write[{i}].headers.{name}", AUTHORIZATION_HEADER))
            elif name.lower() in RESERVED_HEADERS:
                issues.append(ConfigIssue(f"exporters.remote_write[{i}].headers.{name}",
                                          "expected a header remote write or HTTP does not set itself, found one it sets"))
    issues += receiver_security_problems(config)
    issues += client_security_problems(config)
    return issues


# --- outgoing TLS and credentials (issue 10, items 1 and 4)

AUTHORIZATION_HEADER = ("expected basic_auth or bearer_token_file instead (their secrets are read from files, "
                        "never written in the config), found an Authorization header")


def client_security_problems(config: Config) -> list[ConfigIssue]:
    """Reserved OTLP headers, and each exporter's certificates, keys and secret files, loaded as the agent will
    load them (a file named but missing, unreadable, empty, or not PEM is a problem now, not at the reload)."""
    from agent.build import client_security
    from exporters.otlp_http import RESERVED_HEADERS as OTLP_RESERVED

    issues = []
    otlp = config.exporters.otlp
    for name in otlp.headers if otlp is not None else ():
        if name.lower() == "authorization":
            issues.append(ConfigIssue(f"exporters.otlp.headers.{name}", AUTHORIZATION_HEADER))
        elif name.lower() in OTLP_RESERVED:
            issues.append(ConfigIssue(f"exporters.otlp.headers.{name}",
                                      "expected a header OTLP or HTTP does not set itself, found one it sets"))
    exporters = [("exporters.otlp", otlp)] if otlp is not None else []
    exporters += [(f"exporters.remote_write[{i}]", rw) for i, rw in enumerate(config.exporters.remote_write)]
    for key, spec in exporters:
        try:
            client_security(spec, key, check_only=True)
        except ValueError as exc:
            path, _, message = str(exc).partition(": ")
            issues.append(ConfigIssue(path, message or str(exc)))
    return issues


def client_security_warnings(config: Config) -> list[ConfigIssue]:
    exporters = [("exporters.otlp", config.exporters.otlp)] if config.exporters.otlp is not None else []
    exporters += [(f"exporters.remote_write[{i}]", rw) for i, rw in enumerate(config.exporters.remote_write)]
    return [ConfigIssue(f"{key}.tls.insecure_skip_verify", "the receiver's certificate is not checked: anyone on "
                        "the path can read and change what is sent")
            for key, spec in exporters if spec.tls is not None and spec.tls.insecure_skip_verify]


# --- end of outgoing TLS and credentials


def warnings_for(config: Config) -> list[ConfigIssue]:
    """Signals with no pipeline (their exports are refused), exporters nothing uses (idle), and receivers open
    beyond loopback without TLS or client authentication."""
    pipelines = config.pipelines
    found = []
    if pipelines.traces is None and pipelines.metrics is None:
        found.append(ConfigIssue("pipelines", "no pipelines are configured: the agent takes no data, and every "
                                 "OTLP export is answered 404 (HTTP) / UNIMPLEMENTED (gRPC)"))
    else:
        for signal, pipeline in (("traces", pipelines.traces), ("metrics", pipelines.metrics)):
            if pipeline is None:
                found.append(ConfigIssue(f"pipelines.{signal}",
                                         f"{signal} are off: there is no pipelines.{signal}, so OTLP {signal} exports "
                                         "are answered 404 (HTTP) / UNIMPLEMENTED (gRPC)"))
    used = {name for p in (pipelines.traces, pipelines.metrics) if p is not None for name in p.exporters}
    used.add(config.telemetry.remote_write)  # the agent's own metrics go there
    ex = config.exporters
    configured = [(f"exporters.{n}", n) for n in ("otlp", "file") if getattr(ex, n) is not None]
    configured += [(f"exporters.remote_write[{i}]", rw.name) for i, rw in enumerate(ex.remote_write)]
    for path, name in configured:
        if name not in used:
            found.append(ConfigIssue(path, f"exporter {name!r} is configured but no pipeline lists it (nor telemetry.remote_write): "
                                               "it is not built"))
    found += receiver_security_warnings(config)
    found += client_security_warnings(config)
    return found


# --- incoming TLS and authentication (receivers.*.tls, receivers.*.auth) ---

def _listening_receivers(config: Config) -> list[tuple[str, Any]]:
    """(key path, section) of each receiver that listens."""
    otlp, gateway = config.receivers.otlp, config.receivers.remote_write
    sections = [("receivers.otlp.grpc", otlp.grpc), ("receivers.otlp.http", otlp.http),
                ("receivers.remote_write", gateway)]
    return [(path, section) for path, section in sections if section is not None and section.enabled]


def receiver_security_problems(config: Config) -> list[ConfigIssue]:
    """TLS files and token files a listening receiver could not use when it starts (missing, unreadable, a key
    that does not match its certificate, an empty token): read here as the receiver would read them, so
    `validate` (run as the agent's user) says so instead of the start or a reload failing later."""
    from agent.receivers.auth import BearerToken  # only here: the receivers load grpc and aiohttp
    from agent.receivers.tls import server_ssl_context

    issues = []
    for path, section in _listening_receivers(config):
        if section.tls is not None:
            try:
                server_ssl_context(section.tls)
            except OSError as exc:
                issues.append(ConfigIssue(f"{path}.tls", str(exc)))
        if section.auth is not None:
            try:
                BearerToken(section.auth.bearer_token_file)
            except OSError as exc:
                issues.append(ConfigIssue(f"{path}.auth.bearer_token_file", str(exc)))
    return issues


def receiver_security_warnings(config: Config) -> list[ConfigIssue]:
    """A receiver listening beyond loopback without TLS (data, and a token, cross the network in plain text)
    or without client authentication (a bearer token or a client CA: anyone who reaches it can send)."""
    found = []
    for path, section in _listening_receivers(config):
        if is_loopback(section.endpoint.rpartition(":")[0]):
            continue
        tls, authenticated = section.tls is not None, section.auth is not None or bool(
            section.tls is not None and section.tls.client_ca_file)
        where = f"listens on {section.endpoint}, beyond loopback,"
        if not tls and not authenticated:
            found.append(ConfigIssue(path, f"{where} without TLS or a bearer token: anyone who reaches it can send "
                                     f"data, in plain text (set {path}.tls and {path}.auth)"))
        elif not tls:
            found.append(ConfigIssue(path, f"{where} without TLS: the bearer token and the data cross the network "
                                     f"in plain text (set {path}.tls)"))
        elif not authenticated:
            found.append(ConfigIssue(path, f"{where} with TLS but no client authentication: anyone who reaches it "
                                     f"can send data (set {path}.auth.bearer_token_file or {path}.tls.client_ca_file)"))
    return found


def is_loopback(host: str) -> bool:
    """Whether a listen host is only reachable from this machine; a name other than `localhost`, an empty host
    or an unspecified address (0.0.0.0, ::) is taken as reachable from elsewhere."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

# --- end of incoming TLS and authentication ---


def describe_tiers(tiers: tuple[TierConfig, ...]) -> str:
    """The tiers as one line: `P0=0.99 (span sampling.priority=P0); ...; P2=0.05 (the rest)`."""
    parts = []
    for tier in tiers:
        when = tier.when
        conditions = []
        if when is not None:
            span_or_root = "root" if when.root_only else "span"
            conditions += [f"resource {k}={'|'.join(v)}" for k, v in when.resource_attributes.items()]
            conditions += [f"{span_or_root} {k}={'|'.join(v)}" for k, v in when.span_attributes.items()]
            if when.span_names:
                conditions.append(f"{span_or_root} name={'|'.join(when.span_names)}")
            if when.span_kinds:
                conditions.append(f"{span_or_root} kind={'|'.join(when.span_kinds)}")
        key = f", key {'+'.join(tier.key)}" if tier.key else ""
        parts.append(f"{tier.name}={tier.rate:g} ({', '.join(conditions) or 'the rest'}{key})")
    return "; ".join(parts)


def tiers_source(tiers: tuple[TierConfig, ...]) -> str:
    """`defaults` when the tiers are the built-in ones (`sampling.tiers` left out), else `config`."""
    return "defaults" if tiers == default_tiers() else "config"
