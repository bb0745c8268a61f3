"""Outgoing TLS and credentials (issue 10, item 1): exporters built from config keys, against an in-test
receiver that records what it was sent. Certificates are made in the test (tests/client_certs.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics

from agent.build import build_exporter
from agent.config import load_text
from exporters.client_security import AuthSettings, ClientSecurity, TlsSettings
from exporters.remote_write.transport import AiohttpTransport, HttpRequest, TransportError
from tests.recording_receiver import RecordingReceiver, only
from tests.client_certs import Authority, Pair, make_ca, server_context

import yaml


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = make_ca(tmp_path / "ca", "test-ca")
    return {"ca": ca, "server": ca.issue(tmp_path / "server", "receiver"),
            "client": ca.issue(tmp_path / "client", "agent-client", client=True),
            "other_ca": make_ca(tmp_path / "other", "other-ca")}


def gauge(value: float = 1.0) -> ExportMetricsServiceRequest:
    point = NumberDataPoint(time_unix_nano=time.time_ns(), as_double=value)
    metric = Metric(name="tls_test_gauge", gauge=Gauge(data_points=[point]))
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[metric])])])


def spans() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(trace_id=bytes(range(16)), span_id=b"\x01" * 8, name="s")
    return request


def config_for(tmp_path: Path, kind: str, url: str, **security: Any) -> Any:
    """A config whose only exporter (`otlp`, or remote write `rw`) sends to `url` with `security`'s keys."""
    if kind == "otlp":
        exporters = {"otlp": {"endpoint": url, "compression": "none", "timeout": "5s", **security}}
        pipelines = {"traces": {"exporters": ["otlp"]}}
    else:
        exporters = {"remote_write": [{"name": "rw", "url": f"{url}/api/v1/write", "protocol": "rw1",
                                       "queue": {"max_disk": 0}, "batch": {"flush_interval": "100ms"},
                                       "sender": {"timeout": "5s"}, **security}]}
        pipelines = {"metrics": {"exporters": ["rw"]}}
    text = yaml.safe_dump({"state_dir": str(tmp_path / "state"), "exporters": exporters, "pipelines": pipelines})
    return load_text(text)


async def send_once(tmp_path: Path, kind: str, url: str, **security: Any) -> None:
    """Build the exporter from config, send one request through it, shut it down (delivering what it holds)."""
    name = "otlp" if kind == "otlp" else "rw"
    exporter = build_exporter(name, config_for(tmp_path, kind, url, **security))
    await exporter.start()
    if kind == "otlp":
        await exporter.consume_traces(spans())
    else:
        await exporter.consume_metrics(gauge())
    await exporter.shutdown(5.0)


def tls_keys(pki: dict[str, Any], ca: Authority | None = None, client: Pair | None = None, **more: Any) -> dict:
    keys: dict[str, Any] = {"ca_file": str((ca or pki["ca"]).cert), **more}
    if client is not None:
        keys.update(cert_file=str(client.cert), key_file=str(client.key))
    return keys


@pytest.mark.parametrize("kind", ["remote_write", "otlp"])
def test_an_exporter_reaches_a_tls_receiver_that_demands_a_client_certificate(kind, pki, tmp_path) -> None:
    context = server_context(pki["server"], client_ca=pki["ca"])
    with RecordingReceiver(ssl_context=context) as rx:
        asyncio.run(send_once(tmp_path, kind, rx.url, tls=tls_keys(pki, client=pki["client"])))
        [arrival] = rx.arrivals
    assert arrival.client_subject == "agent-client"
    assert arrival.accepted and arrival.body_bytes > 0


def test_a_receiver_whose_certificate_the_configured_ca_did_not_sign_fails_with_an_error_naming_the_ca_file(
        pki) -> None:
    security = ClientSecurity.build(TlsSettings(ca_file=str(pki["other_ca"].cert)), None, who="exporters.remote_write[0]")

    async def scenario() -> str:
        transport = AiohttpTransport(timeout=5.0, security=security)
        try:
            with pytest.raises(TransportError) as caught:
                await transport.send(HttpRequest("POST", f"{rx.url}/api/v1/write", {}, b"x"))
        finally:
            await transport.close()
        return str(caught.value)

    with RecordingReceiver(ssl_context=server_context(pki["server"])) as rx:
        message = asyncio.run(scenario())
        assert rx.arrivals == []
    assert "certificate verify failed" in message
    assert f"exporters.remote_write[0].tls.ca_file {pki['other_ca'].cert}" in message


def test_a_tls_receiver_without_the_client_certificate_it_demands_gets_no_request(pki, tmp_path) -> None:
    security = ClientSecurity.build(TlsSettings(ca_file=str(pki["ca"].cert)), None, who="exporters.otlp")

    async def scenario() -> None:
        transport = AiohttpTransport(timeout=5.0, security=security)
        try:
            with pytest.raises(TransportError):
                await transport.send(HttpRequest("POST", f"{rx.url}/v1/traces", {}, b""))
        finally:
            await transport.close()

    with RecordingReceiver(ssl_context=server_context(pki["server"], client_ca=pki["ca"])) as rx:
        asyncio.run(scenario())
        assert rx.arrivals == []


def test_server_name_checks_the_certificate_for_that_name_instead_of_the_url_host(pki, tmp_path) -> None:
    named = pki["ca"].issue(tmp_path / "named", "named", names=("receiver.internal",))
    with RecordingReceiver(ssl_context=server_context(named)) as rx:
        asyncio.run(send_once(tmp_path, "remote_write", rx.url, tls=tls_keys(pki, server_name="receiver.internal")))
        assert len(rx.arrivals) == 1


def test_insecure_skip_verify_sends_to_a_server_no_ca_vouches_for_and_warns_once(pki, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="headwater")
    keys = {"tls": {"insecure_skip_verify": True}}
    with RecordingReceiver(ssl_context=server_context(pki["server"])) as rx:
        asyncio.run(send_once(tmp_path / "a", "otlp", rx.url, **keys))
        asyncio.run(send_once(tmp_path / "b", "otlp", rx.url, **keys))  # rebuilt, as a reload does
        assert len(rx.arrivals) == 2
    warnings = [r for r in caplog.records if "TLS certificate checks are off" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("kind", ["remote_write", "otlp"])
def test_the_tenant_header_and_the_bearer_token_from_its_file_arrive_at_the_receiver(kind, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    with RecordingReceiver(accept=only("Bearer s3cret-token-value")) as rx:
        asyncio.run(send_once(tmp_path, kind, rx.url, headers={"X-Scope-OrgID": "tenant-a"},
                              bearer_token_file=str(token)))
        [arrival] = rx.arrivals
    assert arrival.accepted
    assert arrival.headers["X-Scope-OrgID"] == "tenant-a"


@pytest.mark.parametrize("kind", ["remote_write", "otlp"])
def test_basic_auth_sends_the_user_and_the_password_from_its_file(kind, tmp_path) -> None:
    password = tmp_path / "password"
    password.write_text("pa55-word")
    with RecordingReceiver(accept=only("Basic YWdlbnQ6cGE1NS13b3Jk")) as rx:  # base64("agent:pa55-word")
        asyncio.run(send_once(tmp_path, kind, rx.url,
                              basic_auth={"username": "agent", "password_file": str(password)}))
        [arrival] = rx.arrivals
    assert arrival.accepted


def test_a_rotated_token_file_is_read_again_at_most_once_a_second_and_used_for_the_next_request(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("old-token")
    now = [100.0]
    security = ClientSecurity.build(None, AuthSettings(bearer_token_file=str(token)), who="exporters.otlp",
                                    clock=lambda: now[0])

    async def send(url: str) -> int:
        transport = AiohttpTransport(timeout=5.0, security=security)
        try:
            return (await transport.send(HttpRequest("POST", f"{url}/v1/traces", {}, b""))).status
        finally:
            await transport.close()

    with RecordingReceiver(accept=only("Bearer new-token")) as rx:
        assert asyncio.run(send(rx.url)) == 401
        token.write_text("new-token")
        now[0] += 0.5
        assert asyncio.run(send(rx.url)) == 401  # within the second: the file is not looked at
        now[0] += 0.5
        assert asyncio.run(send(rx.url)) == 200
    assert [a.headers["Authorization"] for a in rx.arrivals] == ["Bearer old-token", "Bearer old-token",
                                                                   "Bearer new-token"]


def test_a_client_key_that_does_not_match_its_certificate_is_refused_when_the_exporter_is_built(pki, tmp_path) -> None:
    other = pki["ca"].issue(tmp_path / "other-client", "other", client=True)
    config = config_for(tmp_path, "otlp", "https://127.0.0.1:1",
                        tls={"cert_file": str(pki["client"].cert), "key_file": str(other.key)})
    with pytest.raises(ValueError) as caught:
        build_exporter("otlp", config)
    assert "exporters.otlp.tls.cert_file/key_file" in str(caught.value)
    assert str(pki["client"].cert) in str(caught.value) and str(other.key) in str(caught.value)


def test_a_ca_file_that_is_not_a_certificate_is_refused_when_the_exporter_is_built(tmp_path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    config = config_for(tmp_path, "remote_write", "https://127.0.0.1:1", tls={"ca_file": str(bogus)})
    with pytest.raises(ValueError, match=r"exporters\.remote_write\[0\]\.tls\.ca_file: cannot use .*ca\.pem"):
        build_exporter("rw", config)


def test_renewing_tls_with_a_ca_file_that_became_unusable_keeps_the_running_context(pki, tmp_path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki["ca"].cert.read_bytes())
    security = ClientSecurity.build(TlsSettings(ca_file=str(ca_file)), None, who="exporters.otlp")
    running = security.ssl
    ca_file.write_text("truncated")
    with pytest.raises(ValueError, match=r"^exporters\.otlp\.tls\.ca_file: cannot use"):
        security.reload_tls()
    assert security.ssl is running
