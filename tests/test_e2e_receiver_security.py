"""End to end, the agent as a process: both OTLP receivers with TLS and a bearer token. The Python SDK's
gRPC and HTTP exporters, given the CA and the token, deliver spans to the file exporter; a request without
the token is answered 401 and counted under `status="401"` on /metrics; the log says each receiver serves
TLS with a token, and never shows the token."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otlp_sink import wait_for_file_spans
from tests.tls_certs import make_certs

TOKEN = "e2e-receiver-token-0123456789"


def test_sdk_exporters_with_the_ca_and_token_deliver_and_a_request_without_the_token_is_401(
        start_agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they override certificate_file (psf/requests#3829)
        monkeypatch.delenv(name, raising=False)
    certs = make_certs(tmp_path / "certs")
    (tmp_path / "token").write_text(TOKEN + "\n")
    security = {"tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
                "auth": {"bearer_token_file": str(tmp_path / "token")}}
    agent = start_agent(extra_config={"receivers": {"otlp": {"grpc": security, "http": security}},
                                      "telemetry": {"log_level": "debug"}})
    https_url = agent.http_url.replace("http://", "https://")

    tracer = TracerProvider().get_tracer("e2e-security")
    spans = []
    for name in ("via-grpc", "via-http"):
        with tracer.start_as_current_span(name) as span:
            spans.append(span)
    via_grpc = GrpcSpanExporter(endpoint=agent.grpc_endpoint, insecure=False, timeout=10,
                                credentials=grpc.ssl_channel_credentials(certs.ca.read_bytes()),
                                headers=(("authorization", f"Bearer {TOKEN}"),))
    via_http = HttpSpanExporter(endpoint=f"{https_url}/v1/traces", certificate_file=str(certs.ca), timeout=10,
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert via_grpc.export(spans[:1]) == SpanExportResult.SUCCESS
    assert via_http.export(spans[1:]) == SpanExportResult.SUCCESS
    via_grpc.shutdown()
    via_http.shutdown()
    keys = [(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")) for s in spans]
    assert sorted(r.name for r in wait_for_file_spans(agent.file_path, keys, timeout=20)) == ["via-grpc", "via-http"]

    request = urllib.request.Request(f"{https_url}/v1/traces", data=b"", method="POST",
                                     headers={"Content-Type": "application/x-protobuf",
                                              "Authorization": "Bearer wrong-token-e2e"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=str(certs.ca)))
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")

    with urllib.request.urlopen(f"{agent.telemetry_url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert any(line.startswith("headwater_receiver_refused_requests_total{") and 'status="401"' in line
               and 'transport="http"' in line and line.endswith(" 1.0") for line in metrics.splitlines())
    log = agent.log_text()
    assert "receiver=otlp_grpc" in log and "receiver=otlp_http" in log
    assert [line for line in log.splitlines() if "msg=listening" in line and "receiver=otlp" in line
            and not ("tls=tls" in line and "auth=bearer" in line)] == []
    assert "reason=\"invalid bearer token\"" in log and "token=<redacted>" in log  # the refusal, at debug
    assert TOKEN not in log and "wrong-token-e2e" not in log
    assert TOKEN not in metrics
