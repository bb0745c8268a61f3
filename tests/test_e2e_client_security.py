"""End to end, outgoing TLS and credentials (issue 10, items 1 and 4), with the agent as a subprocess:
basic auth over TLS into a real Prometheus 2.42 behind `--web.config.file`; a bearer token file rotated while
the agent runs; and with debug logging, a wrong token and a wrong password, no secret in any log line,
`headwater status`, `/metrics` or `/status`. Certificates are made in the test (tests/client_certs.py)."""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.agent_process import REPO_ROOT
from tests.peers.prometheus import INSTALL_HINT, PROMETHEUS_BINARY, PrometheusServer
from tests.recording_receiver import RecordingReceiver, only
from tests.client_certs import make_ca, server_context

PROMETHEUS_PASSWORD = "prometheus-pa55word"
# bcrypt of PROMETHEUS_PASSWORD (cost 5), made once with libxcrypt:
#   perl -e 'print crypt("prometheus-pa55word", q($2b$05$HeadwaterTestSaltSaltSa))'
PROMETHEUS_PASSWORD_BCRYPT = "$2b$05$HeadwaterTestSaltSaltO9SuLY2KwtK8C3VEo0Jxx4ajR06OKak."


def record_counter(agent_http_url: str, service: str, value: int = 5) -> None:
    """One counter point, sent by the OpenTelemetry SDK over OTLP/HTTP to the agent."""
    exporter = OTLPMetricExporter(endpoint=agent_http_url + "/v1/metrics", timeout=10)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": service, "service.instance.id": "n1"}),
                             metric_readers=[reader])
    provider.get_meter("e2e").create_counter("secured.requests").add(value)
    assert provider.force_flush(10_000)
    provider.shutdown()


def post_spans(agent_http_url: str) -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes(range(1, 17)), span_id=b"\x02" * 8, name="secured-span")
    span.start_time_unix_nano, span.end_time_unix_nano = time.time_ns() - 1000, time.time_ns()
    http = urllib.request.Request(agent_http_url + "/v1/traces", data=request.SerializeToString(), method="POST",
                                  headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(http, timeout=10) as response:
        assert response.status == 200


def test_remote_write_with_basic_auth_over_tls_lands_in_prometheus_behind_its_web_config(tmp_path, start_agent):
    if not PROMETHEUS_BINARY.is_file():
        pytest.fail(f"Prometheus binary missing at {PROMETHEUS_BINARY}: {INSTALL_HINT}", pytrace=False)
    ca = make_ca(tmp_path / "pki", "test-ca")
    server = ca.issue(tmp_path / "pki", "prometheus")
    password = tmp_path / "password"
    password.write_text(PROMETHEUS_PASSWORD + "\n")
    web = {"tls_server_config": {"cert_file": str(server.cert), "key_file": str(server.key)},
           "basic_auth_users": {"agent": PROMETHEUS_PASSWORD_BCRYPT}}
    with PrometheusServer(tmp_path / "prometheus", web_config=web, ca_file=ca.cert,
                          basic_auth=("agent", PROMETHEUS_PASSWORD)) as prometheus:
        assert prometheus.url.startswith("https://")
        unauthenticated = urllib.request.Request(prometheus.remote_write_url, data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unauthenticated, timeout=5, context=ssl_context(ca.cert))
        assert refused.value.code == 401  # the receiver really checks

        agent = start_agent(extra_config={
            "exporters": {"remote_write": [{
                "name": "prom", "url": prometheus.remote_write_url, "protocol": "rw1",
                "tls": {"ca_file": str(ca.cert)},
                "basic_auth": {"username": "agent", "password_file": str(password)},
                "batch": {"flush_interval": "200ms"}}]},
            "pipelines": {"metrics": {"exporters": ["prom"]}}})
        record_counter(agent.http_url, "tls-basic-auth", 5)
        agent.stop_cleanly()
        [series] = prometheus.wait_for_query('secured_requests_total{job="tls-basic-auth"}', lambda r: len(r) == 1,
                                             timeout=20)
    assert float(series["value"][1]) == 5


def ssl_context(ca_file) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def test_a_rotated_bearer_token_file_is_picked_up_without_a_restart(tmp_path, start_agent):
    token = tmp_path / "token"
    token.write_text("old-token\n")
    with RecordingReceiver(accept=only("Bearer new-token")) as rx:
        agent = start_agent(extra_config={
            "exporters": {"remote_write": [{
                "name": "rw", "url": f"{rx.url}/api/v1/write", "protocol": "rw1", "bearer_token_file": str(token),
                "batch": {"flush_interval": "100ms"}}]},
            "pipelines": {"metrics": {"exporters": ["rw"]}},
            # the agent's own metrics go out every 200 ms: steady traffic through the exporter
            "telemetry": {"remote_write": "rw", "remote_write_interval": "200ms"}})
        refused = rx.wait_for(lambda a: not a.accepted, timeout=15)
        assert refused.headers["Authorization"] == "Bearer old-token"
        pid = agent.process.pid
        token.write_text("new-token\n")
        accepted = rx.wait_for(lambda a: a.accepted, timeout=15)
        assert accepted.headers["Authorization"] == "Bearer new-token"
        assert agent.process.poll() is None and agent.process.pid == pid  # the same process, not restarted
        agent.stop_cleanly()


def test_with_debug_logging_a_wrong_token_and_a_wrong_password_no_secret_is_shown_anywhere(tmp_path, start_agent):
    token, password = "tok-9f3a7c1e5b", "pw-c0ffee-d00d"
    basic = base64.b64encode(f"agent:{password}".encode()).decode()
    secrets = (token, password, basic)
    (tmp_path / "token").write_text(token)
    (tmp_path / "password").write_text(password)
    # Both receivers refuse everything and echo the Authorization header they got in their 401 body.
    with RecordingReceiver(accept=lambda _h: False) as traces_rx, \
            RecordingReceiver(accept=lambda _h: False) as metrics_rx:
        agent = start_agent(otlp_exporter_url=traces_rx.url, file_exporter=False, extra_config={
            "exporters": {
                "otlp": {"bearer_token_file": str(tmp_path / "token"), "headers": {"X-Scope-OrgID": "tenant-a"}},
                "remote_write": [{
                    "name": "rw", "url": f"{metrics_rx.url}/api/v1/write", "protocol": "rw1",
                    "basic_auth": {"username": "agent", "password_file": str(tmp_path / "password")},
                    "batch": {"flush_interval": "100ms"}}]},
            "pipelines": {"metrics": {"exporters": ["rw"]}},
            "telemetry": {"log_level": "debug", "remote_write": "rw", "remote_write_interval": "200ms"}})
        post_spans(agent.http_url)
        record_counter(agent.http_url, "secrets")
        traces_rx.wait_for(lambda a: a.headers.get("Authorization") == f"Bearer {token}", timeout=20)
        metrics_rx.wait_for(lambda a: a.headers.get("Authorization") == f"Basic {basic}", timeout=20)
        deadline = time.monotonic() + 20
        while agent.log_text().count("<redacted>") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # until both refusals, with the echoed secret, are logged
        shown = {
            "status": run_status("-c", str(agent.config_path)),
            "status --json": run_status("-c", str(agent.config_path), "--json"),
            "/metrics": fetch(f"{agent.telemetry_url}/metrics"),
            "/status": fetch(f"{agent.telemetry_url}/status"),
        }
        agent.stop_cleanly()
        shown["log"] = agent.log_text()
    assert "<redacted>" in shown["log"], "the receivers' refusals (which echo the secrets) were not logged"
    debug = [line for line in shown["log"].splitlines() if "level=debug" in line and "Authorization=" in line]
    assert debug and all("Authorization=<redacted>" in line for line in debug)
    assert json.loads(shown["/status"])  # served, and JSON
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"a secret shows in {where}"


def run_status(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "agent", "status", "--interval", "0.2", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode("utf-8", "replace")


def test_a_wrong_ca_is_logged_by_name_and_a_reload_uses_the_ca_file_renewed_at_the_same_path(tmp_path, start_agent):
    right, wrong = make_ca(tmp_path / "right", "right-ca"), make_ca(tmp_path / "wrong", "wrong-ca")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(wrong.cert.read_bytes())
    with RecordingReceiver(ssl_context=server_context(right.issue(tmp_path / "server", "receiver"))) as rx:
        agent = start_agent(extra_config={
            "exporters": {"remote_write": [{
                "name": "rw", "url": f"{rx.url}/api/v1/write", "protocol": "rw1", "tls": {"ca_file": str(ca_file)},
                "batch": {"flush_interval": "100ms"},
                "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "300ms"}}}]},
            "pipelines": {"metrics": {"exporters": ["rw"]}},
            "telemetry": {"remote_write": "rw", "remote_write_interval": "200ms"}})
        expected = f"verified against exporters.remote_write[0].tls.ca_file {ca_file}"
        deadline = time.monotonic() + 15
        while expected not in agent.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert expected in agent.log_text() and "certificate verify failed" in agent.log_text()
        assert rx.arrivals == []
        ca_file.write_bytes(right.cert.read_bytes())
        agent.process.send_signal(signal.SIGHUP)
        rx.wait_for(lambda a: a.accepted, timeout=15)
        agent.stop_cleanly()
