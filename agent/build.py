"""Building the agent's components from a Config: exporters and listeners, each from its own section.

The composition root (`agent.service`) calls these at startup and again on a reload for what changed; they
only construct (no socket is bound, no file opened until `start`), so a reload can build everything first
and refuse the new config before touching what runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.admission import Admission
from agent.config import Config
from agent.config.schema import GrpcReceiverConfig, HttpReceiverConfig, OtlpExporterConfig, RemoteWriteConfig, \
    RemoteWriteReceiverConfig
from agent.receivers.grpc_connections import GrpcConnectionSettings
from agent.receivers.http_connections import HttpConnectionSettings
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from agent.receivers.otlp_http import OtlpHttpReceiver
from agent.reload import FileSpec, exporter_specs
from exporters.client_security import AuthSettings, ClientSecurity, TlsSettings
from exporters.file import FileExporter
from exporters.otlp_http import OtlpHttpTraceExporter
from exporters.remote_write.cumulative import DeltaToCumulative
from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.remote_write.series_limit import SeriesLimit
from exporters.remote_write.translate import Limits
from exporters.retry import RetryPolicy
from exporters.sending.queue import QueueSettings
from exporters.sending.sender import SenderSettings


def _policy(retry: Any) -> RetryPolicy:
    return RetryPolicy(initial_backoff=retry.initial_backoff, max_backoff=retry.max_backoff, max_elapsed=retry.max_elapsed)


def build_exporters(config: Config) -> dict[str, Any]:
    """Only exporters that a pipeline lists (or `telemetry.remote_write` names) are built; the rest of the file is
    validated but idle."""
    return {name: build_exporter(name, config) for name in exporter_specs(config)}


def build_exporter(name: str, config: Config, delta: DeltaToCumulative | None = None) -> Any:
    """The exporter `name` as `config` describes it. `delta`: a remote-write exporter's delta-to-cumulative
    state to go on with (a reload replacing the exporter keeps its streams); read from `state_dir` when None."""
    spec = exporter_specs(config)[name]
    if isinstance(spec, OtlpExporterConfig):
        return OtlpHttpTraceExporter(endpoint=spec.endpoint, headers=dict(spec.headers), compression=spec.compression,
                                     timeout=spec.timeout, retry=_policy(spec.retry),
                                     security=client_security(spec, exporter_key(name, config)))
    if isinstance(spec, FileSpec):
        return FileExporter(spec.traces, spec.metrics, max_file_size=spec.max_file_size)
    rw: RemoteWriteConfig = spec
    backoff = RetryPolicy(initial_backoff=rw.sender.retry.initial_backoff, max_backoff=rw.sender.retry.max_backoff)
    return RemoteWriteExporter(
        name=rw.name, url=rw.url, headers=dict(rw.headers), timeout=rw.sender.timeout,
        retry=backoff, max_samples=rw.batch.max_samples, max_bytes=rw.batch.max_bytes,
        flush_interval=rw.batch.flush_interval,
        delta_to_cumulative=delta or DeltaToCumulative(Path(config.state_dir) / "delta_to_cumulative" / f"{rw.name}.json"),
        native_histograms=rw.native_histograms,
        limits=Limits(max_label_name_length=rw.limits.max_label_name_length,
                      max_label_value_length=rw.limits.max_label_value_length,
                      max_labels_per_series=rw.limits.max_labels_per_series,
                      max_series_per_metric=rw.limits.max_series_per_metric),
        series_limit=SeriesLimit(rw.limits.max_series_per_metric, rw.limits.max_series, rw.limits.idle_expiry),
        promote=rw.promote_resource_attributes, protocol=rw.protocol, compression=rw.compression,
        compression_level=rw.compression_level, security=client_security(rw, exporter_key(name, config)),
        queue=queue_settings(rw, config.state_dir),
        sender=SenderSettings(
            max_concurrency=rw.sender.max_concurrency, retry=backoff,
            sample_age_limit=rw.sender.sample_age_limit, max_bytes_per_second=rw.sender.max_bytes_per_second,
            batch_samples=rw.batch.max_samples, min_batch_samples=min(500, rw.batch.max_samples),
            batch_bytes=rw.batch.max_bytes))


# --- outgoing TLS and credentials (issue 10, items 1 and 4)


def client_security(spec: OtlpExporterConfig | RemoteWriteConfig, key: str, *, check_only: bool = False
                    ) -> ClientSecurity | None:
    """TLS context (made here, once per build of the exporter) and credentials of an exporter; None when its
    section sets neither. ValueError naming `key` and the file when a certificate or secret cannot be used."""
    if spec.tls is None and spec.basic_auth is None and not spec.bearer_token_file:
        return None
    tls = spec.tls
    auth = spec.basic_auth
    return ClientSecurity.build(
        TlsSettings(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file, server_name=tls.server_name,
                    insecure_skip_verify=tls.insecure_skip_verify) if tls is not None else None,
        AuthSettings(username=auth.username if auth else "", password_file=auth.password_file if auth else "",
                     bearer_token_file=spec.bearer_token_file),
        who=key, check_only=check_only)


def exporter_key(name: str, config: Config) -> str:
    """The key path of exporter `name` in the config file, for messages: `exporters.remote_write[1]`."""
    for i, rw in enumerate(config.exporters.remote_write):
        if rw.name == name:
            return f"exporters.remote_write[{i}]"
    return f"exporters.{name}"


# --- end of outgoing TLS and credentials


def queue_settings(rw: RemoteWriteConfig, state_dir: str) -> QueueSettings:
    return QueueSettings(max_memory=rw.queue.max_memory, max_disk=rw.queue.max_disk, when_full=rw.queue.when_full,
                         directory=Path(state_dir) / "queue" / rw.name)


def build_http(config: Config, admission: Admission) -> OtlpHttpReceiver:
    """The OTLP/HTTP receiver, with no pipelines yet (`set_consumers`)."""
    http = config.receivers.otlp.http
    return OtlpHttpReceiver(http.endpoint, http.max_body_size, admission, None, None,
                            drain_timeout=config.shutdown_timeout / 2,
                            tls=http.tls, auth=http.auth,
                            connections=http_connections(http, config.admission.retry_after))


def build_grpc(config: Config, admission: Admission) -> OtlpGrpcReceiver:
    """The OTLP/gRPC receiver, with no pipelines yet (`set_consumers`)."""
    grpc = config.receivers.otlp.grpc
    return OtlpGrpcReceiver(grpc.endpoint, grpc.max_message_size, admission, None, None,
                            tls=grpc.tls, auth=grpc.auth,
                            connections=grpc_connections(grpc))


def build_gateway(config: Config, admission: Admission, consume: Any, sessions: Any = None) -> Any:
    """The gateway's remote-write receiver; `sessions`: compact sessions to keep (a rebind on the same bounds)."""
    from agent.receivers.remote_write import RemoteWriteReceiver  # only gateways load every decoder
    from exporters.remote_write.compact_session import CompactSessions

    gateway = config.receivers.remote_write
    assert gateway is not None
    if sessions is None:
        sessions = CompactSessions(max_bytes_per_sender=gateway.max_dictionary_per_sender,
                                   max_total_bytes=gateway.max_dictionary_total)
    return RemoteWriteReceiver(gateway.endpoint, gateway.max_body_size, admission, consume, sessions=sessions,
                               drain_timeout=config.shutdown_timeout / 2,
                               tls=gateway.tls, auth=gateway.auth,
                               connections=http_connections(gateway, config.admission.retry_after))


# -- connection management of the receivers (issue 10, item 3) -----------------------------------------------


def http_connections(section: HttpReceiverConfig | RemoteWriteReceiverConfig, retry_after: float) -> HttpConnectionSettings:
    """An aiohttp receiver's timeouts and connection bound; a 503 past it asks for `admission.retry_after`."""
    return HttpConnectionSettings(read_header_timeout=section.read_header_timeout, read_timeout=section.read_timeout,
                                  idle_timeout=section.idle_timeout, max_connections=section.max_connections,
                                  retry_after=max(retry_after, 1.0))


def grpc_connections(section: GrpcReceiverConfig) -> GrpcConnectionSettings:
    return GrpcConnectionSettings(keepalive_time=section.keepalive.time, keepalive_timeout=section.keepalive.timeout,
                                  max_connection_idle=section.max_connection_idle,
                                  max_connection_age=section.max_connection_age,
                                  max_connection_age_grace=section.max_connection_age_grace,
                                  max_concurrent_streams=section.max_concurrent_streams)
