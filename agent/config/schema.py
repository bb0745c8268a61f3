"""The config file's shape: frozen dataclasses, one per section, validated by pydantic on load.

Every field here is wired to behaviour; a key that belongs to later work is absent, so it is refused as
unknown rather than accepted and ignored. Every key and default is in README.md's config reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

from agent.config.units import Duration, HostPort, HttpUrl, LogLevel, Size

_FORBID_UNKNOWN = ConfigDict(extra="forbid")
MiB = 1 << 20

REMOTE_WRITE_PROTOCOLS = ("rw1", "rw2", "vm", "compact", "auto")
COMPRESSIONS = ("auto", "snappy", "zstd")


def _check_protocol(value: str) -> str:
    if value not in REMOTE_WRITE_PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(REMOTE_WRITE_PROTOCOLS)}, found {value!r}")
    return value


def _check_compression(value: str) -> str:
    if value not in COMPRESSIONS:
        raise ValueError(f"expected one of {', '.join(COMPRESSIONS)}, found {value!r}")
    return value


def _check_name(value: str) -> str:
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"expected a name of letters, digits, '-', '_' or '.', found {value!r}")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Positive = Annotated[int, Field(gt=0)]


# --- incoming TLS and authentication (receivers.*.tls, receivers.*.auth) ---

def _check_path(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a file path, found an empty one")
    return value


FilePath = Annotated[str, AfterValidator(_check_path)]


@dataclass(frozen=True)
class ReceiverTlsConfig:
    """Serve TLS with the certificate chain `cert_file` (PEM) and its key `key_file`. With `client_ca_file`, a
    client must present a certificate signed by one of its CAs (mutual TLS); without, any client may connect.
    The files are read when the listener starts (a changed endpoint, or a restart, reads them again)."""

    __pydantic_config__ = _FORBID_UNKNOWN
    cert_file: FilePath
    key_file: FilePath
    client_ca_file: str = ""


@dataclass(frozen=True)
class ReceiverAuthConfig:
    """Every request must carry `Authorization: Bearer <token>`, the token being the content of
    `bearer_token_file` (surrounding whitespace ignored). The file is read again when it changes (a rotated
    token counts from the next request); otherwise 401 (HTTP) / UNAUTHENTICATED (gRPC), before the body is read."""

    __pydantic_config__ = _FORBID_UNKNOWN
    bearer_token_file: FilePath

# --- end of incoming TLS and authentication ---
# -- connection management of the receivers (issue 10, item 3) -----------------------------------------------


def _above_zero(value: float) -> float:
    if value <= 0:
        raise ValueError(f"expected a duration above 0, found {value!r}s")
    return value


def _grpc_duration(value: float) -> float:
    if value > _GRPC_MAX_SECONDS:
        raise ValueError(f"expected at most {_GRPC_MAX_SECONDS}s (grpc counts milliseconds in a C int), found {value!r}s")
    return value


_GRPC_MAX_SECONDS = (2**31 - 1) // 1000
Timeout = Annotated[Duration, AfterValidator(_above_zero)]
GrpcTimeout = Annotated[Duration, AfterValidator(_above_zero), AfterValidator(_grpc_duration)]
GrpcLifetime = Annotated[Duration, AfterValidator(_grpc_duration)]  # 0 = never


@dataclass(frozen=True)
class GrpcKeepaliveConfig:
    """The server pings a connection after `time` without activity (also when no call is open) and closes it
    when the ack does not come within `timeout`."""

    __pydantic_config__ = _FORBID_UNKNOWN
    time: GrpcTimeout = 60.0
    timeout: GrpcTimeout = 20.0


# -- end of connection management ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReceiverConfig:
    """OTLP/HTTP on `endpoint`; `max_body_size` bounds a request body both as sent and after decompression."""

    __pydantic_config__ = _FORBID_UNKNOWN
    enabled: bool = True
    endpoint: HostPort = "127.0.0.1:4318"
    max_body_size: Size = 16 * MiB
    tls: ReceiverTlsConfig | None = None
    auth: ReceiverAuthConfig | None = None
    # connection management: a request head must arrive within read_header_timeout of its first byte, its body
    # within read_timeout of the head (else 408); a connection without a byte for idle_timeout is closed;
    # past max_connections a new client is answered 503 with Retry-After (admission.retry_after).
    read_header_timeout: Timeout = 10.0
    read_timeout: Timeout = 60.0
    idle_timeout: Timeout = 60.0
    max_connections: Positive = 4096


@dataclass(frozen=True)
class GrpcReceiverConfig:
    """OTLP/gRPC on `endpoint`; `max_message_size` bounds one message after decompression."""

    __pydantic_config__ = _FORBID_UNKNOWN
    enabled: bool = True
    endpoint: HostPort = "127.0.0.1:4317"
    max_message_size: Size = 16 * MiB
    tls: ReceiverTlsConfig | None = None
    auth: ReceiverAuthConfig | None = None
    # connection management: keepalive pings; a GOAWAY after max_connection_idle without a call and after
    # max_connection_age (0 = never), calls in flight then get max_connection_age_grace; calls per connection.
    keepalive: GrpcKeepaliveConfig = field(default_factory=GrpcKeepaliveConfig)
    max_connection_idle: GrpcLifetime = 300.0
    max_connection_age: GrpcLifetime = 3600.0
    max_connection_age_grace: GrpcLifetime = 30.0
    max_concurrent_streams: Annotated[int, Field(ge=1, le=2**31 - 1)] = 100


@dataclass(frozen=True)
class OtlpReceiversConfig:
    __pydantic_config__ = _FORBID_UNKNOWN
    grpc: GrpcReceiverConfig = field(default_factory=GrpcReceiverConfig)
    http: HttpReceiverConfig = field(default_factory=HttpReceiverConfig)


@dataclass(frozen=True)
class RemoteWriteReceiverConfig:
    """Gateway mode: `POST /api/v1/write` in any remote-write format (rw1, rw2, vm, compact), forwarded through
    the metrics pipeline's remote-write exporters. Present in the file = on; `max_body_size` bounds a body as
    sent and after decompression; the compact format's dictionaries are bounded per sender and in total."""

    __pydantic_config__ = _FORBID_UNKNOWN
    enabled: bool = True
    endpoint: HostPort = "127.0.0.1:9201"
    max_body_size: Size = 32 * MiB
    max_dictionary_per_sender: Size = 64 * MiB
    max_dictionary_total: Size = 256 * MiB
    tls: ReceiverTlsConfig | None = None
    auth: ReceiverAuthConfig | None = None
    # connection management, as receivers.otlp.http's
    read_header_timeout: Timeout = 10.0
    read_timeout: Timeout = 60.0
    idle_timeout: Timeout = 60.0
    max_connections: Positive = 4096


@dataclass(frozen=True)
class ReceiversConfig:
    __pydantic_config__ = _FORBID_UNKNOWN
    otlp: OtlpReceiversConfig = field(default_factory=OtlpReceiversConfig)
    remote_write: RemoteWriteReceiverConfig | None = None


SPAN_KINDS = ("internal", "server", "client", "producer", "consumer")
AttributeValues = dict[str, Annotated[tuple[str, ...], BeforeValidator(lambda v: (v,) if not isinstance(v, (list, tuple)) else v)]]


def _check_kind(value: str) -> str:
    if value.lower() not in SPAN_KINDS:
        raise ValueError(f"expected a span kind ({', '.join(SPAN_KINDS)}), found {value!r}")
    return value.lower()


@dataclass(frozen=True)
class TierMatchConfig:
    """Every listed condition must hold; an attribute lists the values it accepts (compared as text)."""

    __pydantic_config__ = _FORBID_UNKNOWN
    resource_attributes: AttributeValues = field(default_factory=dict)
    span_attributes: AttributeValues = field(default_factory=dict)
    span_names: tuple[str, ...] = ()
    span_kinds: tuple[Annotated[str, AfterValidator(_check_kind)], ...] = ()
    root_only: bool = False


@dataclass(frozen=True)
class TierConfig:
    __pydantic_config__ = _FORBID_UNKNOWN
    name: Name
    rate: Annotated[float, Field(ge=0.0, le=1.0)]
    when: TierMatchConfig | None = None
    # Resource attributes of the root span's resource and/or `root.name`: each combination gets its own rate,
    # rare ones higher, while the tier keeps its average rate (decisions then differ between agents).
    key: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlwaysKeepConfig:
    """Forced keeps: the whole trace is kept, with th:0 (adjusted count 1). `latency: 0s` turns that one off."""

    __pydantic_config__ = _FORBID_UNKNOWN
    errors: bool = True
    http_5xx: bool = True
    latency: Duration = 5.0


def default_tiers() -> tuple[TierConfig, ...]:
    return (
        TierConfig("P0", 0.99, TierMatchConfig(span_attributes={"sampling.priority": ("P0",)})),
        TierConfig("P1", 0.50, TierMatchConfig(span_attributes={"sampling.priority": ("P1",)})),
        TierConfig("P2", 0.05),
    )


@dataclass(frozen=True)
class SamplingConfig:
    """Tail sampling. Tiers are tried in order, first match wins, the last (without `when`) catches the rest."""

    __pydantic_config__ = _FORBID_UNKNOWN
    decision_wait: Duration = 10.0
    root_delay: Duration = 2.0
    max_memory: Size = 256 * MiB
    max_trace_size: Size = 8 * MiB
    decision_cache_size: Size = 32 * MiB
    max_spans_per_second: Annotated[float, Field(ge=0.0)] = 0.0
    always_keep: AlwaysKeepConfig = field(default_factory=AlwaysKeepConfig)
    annotate: bool = True
    tiers: tuple[TierConfig, ...] = field(default_factory=default_tiers)


@dataclass(frozen=True)
class AdmissionConfig:
    """Bytes of data the agent holds in flight (being decoded, queued, being exported) before receivers refuse.

    Past `max_inflight`, OTLP/HTTP answers 429 and OTLP/gRPC RESOURCE_EXHAUSTED, both asking the client to
    retry after `retry_after`.
    """

    __pydantic_config__ = _FORBID_UNKNOWN
    max_inflight: Size = 128 * MiB
    retry_after: Duration = 1.0


@dataclass(frozen=True)
class RetryConfig:
    """Jittered exponential backoff from `initial_backoff` up to `max_backoff`; a batch still failing after
    `max_elapsed` is dropped and counted. A server's Retry-After is honoured."""

    __pydantic_config__ = _FORBID_UNKNOWN
    initial_backoff: Duration = 0.5
    max_backoff: Duration = 30.0
    max_elapsed: Duration = 300.0


# --- outgoing TLS and credentials (issue 10, items 1 and 4): per exporter `tls`, `basic_auth`, `bearer_token_file`


@dataclass(frozen=True)
class ClientTlsConfig:
    """TLS towards an https:// receiver: trust `ca_file` (PEM; empty: the system's CAs), present `cert_file`
    and `key_file` (PEM, the key unencrypted) for mTLS, check the certificate for `server_name` (empty: the
    URL's host). `insecure_skip_verify: true` checks nothing and logs a warning."""

    __pydantic_config__ = _FORBID_UNKNOWN
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class BasicAuthConfig:
    """HTTP basic auth: `username`, and the password in `password_file` (re-read when the file changes; the
    password itself is never in the config, a log or `/status`)."""

    __pydantic_config__ = _FORBID_UNKNOWN
    username: str
    password_file: str


# --- end of outgoing TLS and credentials


@dataclass(frozen=True)
class OtlpExporterConfig:
    """OTLP/HTTP protobuf upstream: spans are POSTed to `endpoint` + `/v1/traces`."""

    __pydantic_config__ = _FORBID_UNKNOWN
    endpoint: HttpUrl
    headers: dict[str, str] = field(default_factory=dict)
    compression: Literal["none", "gzip"] = "gzip"
    timeout: Duration = 10.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    tls: ClientTlsConfig | None = None
    basic_auth: BasicAuthConfig | None = None
    bearer_token_file: str = ""  # re-read when the file changes; excludes basic_auth


@dataclass(frozen=True)
class FileExporterConfig:
    """One OTLP JSON request per line: traces to `path` (empty: `<state_dir>/traces.jsonl`), metrics to
    `metrics_path` (empty: `<state_dir>/metrics.jsonl`) when a metrics pipeline lists `file`. A relative
    path is taken under `state_dir`, so an example config writes where the agent keeps its other files
    whatever directory it was started from (a service's is `/`). Every node runs the default config, which
    writes here: without `max_file_size` the files would grow until the disk is full."""

    __pydantic_config__ = _FORBID_UNKNOWN
    path: str = ""
    metrics_path: str = ""
    # Each file is bounded: one that would pass max_file_size is renamed to `<name>.1` (replacing the previous
    # one) and a new file begun, so a file exporter holds at most twice this on disk per file.
    max_file_size: Size = 128 * MiB


@dataclass(frozen=True)
class BatchConfig:
    """A remote-write request is sent when it holds `max_samples` or `max_bytes`, or `flush_interval` after
    its first sample, whichever comes first."""

    __pydantic_config__ = _FORBID_UNKNOWN
    max_samples: Positive = 10_000
    max_bytes: Size = 4 * MiB
    flush_interval: Duration = 5.0


@dataclass(frozen=True)
class BackoffConfig:
    """Jittered exponential backoff from `initial_backoff` up to `max_backoff`; a server's Retry-After is
    honoured however long it is. Remote write never gives up on time alone: only `sample_age_limit` drops."""

    __pydantic_config__ = _FORBID_UNKNOWN
    initial_backoff: Duration = 0.5
    max_backoff: Duration = 30.0


@dataclass(frozen=True)
class SenderConfig:
    """How requests leave: `timeout` per attempt; up to `max_concurrency` in flight (adapted from 1);
    `max_bytes_per_second` of body (0: unlimited); data older than `sample_age_limit` is dropped and counted
    instead of retried further."""

    __pydantic_config__ = _FORBID_UNKNOWN
    timeout: Duration = 30.0
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    max_bytes_per_second: Size = 0
    sample_age_limit: Duration = 3600.0
    retry: BackoffConfig = field(default_factory=BackoffConfig)


@dataclass(frozen=True)
class QueueConfig:
    """The endpoint's queue: segment files under `<state_dir>/queue/<name>` up to `max_disk` (0: memory only,
    lost at a restart), at most `max_memory` of it held in memory. When both are full, `refuse` makes the
    receivers answer 429 / RESOURCE_EXHAUSTED for metrics; `drop_oldest` drops the oldest queued data, counted."""

    __pydantic_config__ = _FORBID_UNKNOWN
    max_memory: Size = 64 * MiB
    max_disk: Size = 1024 * MiB
    when_full: Literal["refuse", "drop_oldest"] = "refuse"


@dataclass(frozen=True)
class LimitsConfig:
    """Past a limit the data point is dropped and counted by reason, never truncated (defaults: Mimir's)."""

    __pydantic_config__ = _FORBID_UNKNOWN
    max_label_name_length: Positive = 1024
    max_label_value_length: Positive = 2048
    max_labels_per_series: Positive = 30
    max_series_per_metric: Positive = 10_000
    # bounded state (issue 10, item 6): max_series_per_metric holds across requests; a series unseen for
    # idle_expiry frees its place; max_series bounds all metrics of the exporter together
    idle_expiry: Annotated[Duration, Field(gt=0)] = 600.0
    max_series: Positive = 200_000


@dataclass(frozen=True)
class RemoteWriteConfig:
    __pydantic_config__ = _FORBID_UNKNOWN
    name: Name
    url: HttpUrl
    protocol: Annotated[str, AfterValidator(_check_protocol)] = "auto"
    compression: Annotated[str, AfterValidator(_check_compression)] = "auto"
    compression_level: Annotated[int, Field(ge=1, le=22)] = 3
    headers: dict[str, str] = field(default_factory=dict)
    native_histograms: bool = False  # true only where the receiver ingests native histograms
    promote_resource_attributes: tuple[str, ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    tls: ClientTlsConfig | None = None
    basic_auth: BasicAuthConfig | None = None
    bearer_token_file: str = ""  # re-read when the file changes; excludes basic_auth


@dataclass(frozen=True)
class ExportersConfig:
    """Only the exporters a file names exist."""

    __pydantic_config__ = _FORBID_UNKNOWN
    otlp: OtlpExporterConfig | None = None
    file: FileExporterConfig | None = None
    remote_write: tuple[RemoteWriteConfig, ...] = ()


DEFAULT_SPAN_METRICS_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0)


RESERVED_SPAN_METRICS_DIMENSIONS = ("service.name", "span.name", "span.kind", "status.code")


def _check_buckets(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value:
        raise ValueError("expected at least one bucket bound")
    for i, bound in enumerate(value):
        if bound <= 0:
            raise ValueError(f"expected durations above 0, found {bound!r}s at position {i}")
        if i and bound <= value[i - 1]:
            raise ValueError(f"expected strictly ascending durations, found {value[i - 1]!r}s then {bound!r}s")
    return value


def _check_dimensions(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not name:
            raise ValueError("expected attribute names, found an empty one")
        if name in RESERVED_SPAN_METRICS_DIMENSIONS:
            raise ValueError(f"{name!r} is always a dimension; leave it out")
    if len(set(value)) != len(value):
        raise ValueError(f"expected unique attribute names, found {list(value)}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"expected a duration above 0, found {value!r}s")
    return value


@dataclass(frozen=True)
class SpanMetricsConfig:
    """RED metrics from every span, before sampling, named as the Collector's spanmetrics connector names
    them (`traces.span.metrics.calls`, `traces.span.metrics.duration` in ms), cumulative, written every
    `flush_interval` through the metrics pipeline that sets `span_metrics: true`. A series is one service
    (name, namespace, instance), span name, kind, status code and the values of `dimensions` (span attribute
    names, falling back to resource attributes). Past `max_series` series, new ones are folded into one
    `otel.metric.overflow=true` series per service, so totals stay exact. A series without a span for
    `idle_expiry` is forgotten (its place comes free; it starts again from 0 if it comes back)."""

    __pydantic_config__ = _FORBID_UNKNOWN
    flush_interval: Annotated[Duration, AfterValidator(_positive)] = 5.0
    dimensions: Annotated[tuple[str, ...], AfterValidator(_check_dimensions)] = ()
    buckets: Annotated[tuple[Duration, ...], AfterValidator(_check_buckets)] = DEFAULT_SPAN_METRICS_BUCKETS
    max_series: Positive = 10_000
    # bounded state (issue 10, item 6)
    idle_expiry: Annotated[Duration, AfterValidator(_positive)] = 300.0


@dataclass(frozen=True)
class PipelineConfig:
    __pydantic_config__ = _FORBID_UNKNOWN
    exporters: tuple[str, ...] = ()
    span_metrics: bool = False  # metrics pipeline only: also export span metrics through these exporters


@dataclass(frozen=True)
class PipelinesConfig:
    """`traces` lists trace exporters (`otlp`, `file`); `metrics` lists remote-write exporters by name, and
    `file`.
    A signal without a pipeline is refused by the receivers (404 / UNIMPLEMENTED), never silently dropped."""

    __pydantic_config__ = _FORBID_UNKNOWN
    traces: PipelineConfig | None = None
    metrics: PipelineConfig | None = None


@dataclass(frozen=True)
class TelemetryConfig:
    """Self-telemetry: Prometheus text at `endpoint`/metrics, `/healthz`, `/readyz` (served while `enabled`);
    logs at `log_level`. `remote_write` names a remote-write exporter that the agent's own metrics are also
    written through, every `remote_write_interval`, so dashboards need no scrape job ("" = off)."""

    __pydantic_config__ = _FORBID_UNKNOWN
    enabled: bool = True
    endpoint: HostPort = "127.0.0.1:8888"
    log_level: LogLevel = "info"
    remote_write: str = ""
    remote_write_interval: Annotated[Duration, AfterValidator(_positive)] = 15.0


@dataclass(frozen=True)
class Config:
    __pydantic_config__ = _FORBID_UNKNOWN
    state_dir: str = "./data"
    receivers: ReceiversConfig = field(default_factory=ReceiversConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    span_metrics: SpanMetricsConfig = field(default_factory=SpanMetricsConfig)
    exporters: ExportersConfig = field(default_factory=ExportersConfig)
    pipelines: PipelinesConfig = field(default_factory=PipelinesConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    shutdown_timeout: Duration = 10.0
