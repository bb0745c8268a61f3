"""TLS and mutual TLS on the OTLP receivers: the OpenTelemetry Python SDK's exporters send over TLS to both
receivers, a client certificate is required when `client_ca_file` is set, and files that cannot serve TLS
stop the receiver from starting with an error naming them.

Certificates are made in each test with `openssl` (tests/tls_certs.py). The SDK exporters block, so they run
in a thread while the receiver serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from agent.config.schema import ReceiverTlsConfig
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from agent.receivers.tls import TlsSetupError
from tests.receiver_harness import Recorder, grpc_receiver, http_receiver, spans_request
from tests.tls_certs import Certs, make_certs

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Certs:
    # requests (under the SDK's HTTP exporter) lets these variables override the exporter's certificate_file
    # (psf/requests#3829); a machine that sets them would test its system CAs instead of ours.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return make_certs(tmp_path / "certs")


def server_tls(certs: Certs, mutual: bool = False) -> ReceiverTlsConfig:
    return ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key), str(certs.ca) if mutual else "")


def finished_spans(*names: str) -> list:  # type: ignore[type-arg]
    tracer = TracerProvider().get_tracer("tls-test")
    spans = []
    for name in names:
        with tracer.start_as_current_span(name) as span:
            spans.append(span)
    return spans


def test_the_sdk_grpc_exporter_sends_spans_over_tls(certs: Certs) -> None:
    async def go() -> None:
        async with grpc_receiver(tls=server_tls(certs)) as (target, traces, _):
            exporter = GrpcSpanExporter(endpoint=target, insecure=False, timeout=5,
                                        credentials=grpc.ssl_channel_credentials(certs.ca.read_bytes()))
            result = await asyncio.to_thread(exporter.export, finished_spans("checkout"))
            exporter.shutdown()
            assert result == SpanExportResult.SUCCESS
            assert traces.span_names() == ["checkout"]
    asyncio.run(go())


def test_the_sdk_http_exporter_sends_spans_over_tls(certs: Certs) -> None:
    async def go() -> None:
        async with http_receiver(tls=server_tls(certs)) as (url, traces, _, _admission):
            assert url.startswith("https://")
            exporter = HttpSpanExporter(endpoint=f"{url}/v1/traces", certificate_file=str(certs.ca), timeout=5)
            result = await asyncio.to_thread(exporter.export, finished_spans("checkout"))
            exporter.shutdown()
            assert result == SpanExportResult.SUCCESS
            assert traces.span_names() == ["checkout"]
    asyncio.run(go())


def test_with_a_client_ca_the_sdk_exporters_send_with_their_client_certificates(certs: Certs) -> None:
    async def go() -> None:
        tls = server_tls(certs, mutual=True)
        async with grpc_receiver(tls=tls) as (target, grpc_traces, _), \
                http_receiver(tls=tls) as (url, http_traces, _, _admission):
            credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes(), certs.client_key.read_bytes(),
                                                       certs.client_cert.read_bytes())
            via_grpc = GrpcSpanExporter(endpoint=target, insecure=False, timeout=5, credentials=credentials)
            via_http = HttpSpanExporter(endpoint=f"{url}/v1/traces", certificate_file=str(certs.ca), timeout=5,
                                        client_certificate_file=str(certs.client_cert),
                                        client_key_file=str(certs.client_key))
            assert await asyncio.to_thread(via_grpc.export, finished_spans("g")) == SpanExportResult.SUCCESS
            assert await asyncio.to_thread(via_http.export, finished_spans("h")) == SpanExportResult.SUCCESS
            via_grpc.shutdown()
            via_http.shutdown()
            assert grpc_traces.span_names() == ["g"]
            assert http_traces.span_names() == ["h"]
    asyncio.run(go())


def test_with_a_client_ca_an_https_client_without_a_certificate_is_refused(certs: Certs) -> None:
    async def go() -> None:
        async with http_receiver(tls=server_tls(certs, mutual=True)) as (url, traces, _, _admission):
            client_ssl = ssl.create_default_context(cafile=str(certs.ca))
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):
                    async with session.post(f"{url}/v1/traces", data=spans_request("x").SerializeToString(),
                                            headers={"Content-Type": "application/x-protobuf"}, ssl=client_ssl,
                                            timeout=aiohttp.ClientTimeout(total=5)) as response:
                        await response.read()
            assert traces.span_names() == []
    asyncio.run(go())


def test_with_a_client_ca_a_grpc_client_without_a_certificate_is_refused(certs: Certs) -> None:
    async def go() -> None:
        async with grpc_receiver(tls=server_tls(certs, mutual=True)) as (target, traces, _):
            credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
            async with grpc.aio.secure_channel(target, credentials) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await channel.unary_unary(TRACE_EXPORT)(spans_request("x").SerializeToString(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_client_certificate_from_another_ca_is_refused(certs: Certs, tmp_path: Path) -> None:
    from tests.tls_certs import make_ca, make_leaf
    other_ca = make_ca(tmp_path / "other", "other-ca")
    stranger = make_leaf(tmp_path / "other", "stranger", other_ca, "clientAuth")

    async def go() -> None:
        async with http_receiver(tls=server_tls(certs, mutual=True)) as (url, traces, _, _admission):
            client_ssl = ssl.create_default_context(cafile=str(certs.ca))
            client_ssl.load_cert_chain(str(stranger[0]), str(stranger[1]))
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):
                    async with session.post(f"{url}/v1/traces", data=spans_request("x").SerializeToString(),
                                            headers={"Content-Type": "application/x-protobuf"}, ssl=client_ssl,
                                            timeout=aiohttp.ClientTimeout(total=5)) as response:
                        await response.read()
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_key_that_does_not_match_its_certificate_stops_the_start_naming_both_files(certs: Certs) -> None:
    tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.client_key))
    receiver = OtlpGrpcReceiver("127.0.0.1:0", 1 << 20, None, Recorder().consume, None, tls=tls)  # type: ignore[arg-type]
    with pytest.raises(TlsSetupError) as failed:
        asyncio.run(receiver.start())
    assert str(certs.server_cert) in str(failed.value) and str(certs.client_key) in str(failed.value)


def test_a_missing_client_ca_file_stops_the_start_naming_it(certs: Certs, tmp_path: Path) -> None:
    tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key), str(tmp_path / "absent.crt"))

    async def go() -> None:
        async with http_receiver(tls=tls):
            pass
    with pytest.raises(TlsSetupError, match="absent.crt.*tls.client_ca_file"):
        asyncio.run(go())
