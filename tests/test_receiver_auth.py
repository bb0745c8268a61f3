"""Bearer-token authentication on the OTLP receivers: a request without the token, or with another, is
answered 401 with `WWW-Authenticate: Bearer` (HTTP) or UNAUTHENTICATED (gRPC), and costs nothing else: its
body is not read, decompressed, decoded or admitted. The right token passes; a rotated token file counts from
the next request; the token never reaches a log line.

Receivers run in process (tests/receiver_harness.py) with an admission that records what it was asked.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from agent.admission import Admission, Lease
from agent.config.schema import ReceiverAuthConfig, ReceiverTlsConfig
from agent.logs import LogfmtFormatter
from agent.receivers.auth import TokenFileError
from agent.receivers.proto.rpc_status_pb2 import Status
from tests.receiver_harness import grpc_receiver, http_receiver, spans_request
from tests.tls_certs import make_certs

TOKEN = "s3cr3t-token-for-tests"
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
UNAUTHENTICATED = 16


class RecordingAdmission(Admission):
    """A real admission that also records the bytes each request asked for."""

    def __init__(self) -> None:
        super().__init__(64 << 20, retry_after=1.0)
        self.asked: list[int] = []

    def acquire(self, nbytes: int, signal: str) -> Lease:
        self.asked.append(nbytes)
        return super().acquire(nbytes, signal)


@pytest.fixture
def auth(tmp_path: Path) -> ReceiverAuthConfig:
    path = tmp_path / "receiver.token"
    path.write_text(TOKEN + "\n")
    return ReceiverAuthConfig(str(path))


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, dict(response.headers), await response.read()


async def grpc_call(target: str, body: bytes, token: str | None) -> bytes:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    async with grpc.aio.insecure_channel(target) as channel:
        return await channel.unary_unary(TRACE_EXPORT)(body, metadata=metadata, timeout=5)


def test_an_http_request_without_the_token_is_401_with_a_bearer_challenge(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with http_receiver(auth=auth) as (url, traces, _, _admission):
            status, headers, body = await post(f"{url}/v1/traces", spans_request("a").SerializeToString(), PROTOBUF)
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Bearer realm="headwater"'
            assert Status.FromString(body).code == UNAUTHENTICATED
            assert "missing bearer token" in Status.FromString(body).message
            assert traces.span_names() == []
    asyncio.run(go())


def test_an_http_request_with_another_token_is_401_naming_an_invalid_token(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with http_receiver(auth=auth) as (url, traces, _, _admission):
            status, headers, body = await post(f"{url}/v1/traces", spans_request("a").SerializeToString(),
                                               {**PROTOBUF, "Authorization": "Bearer not-the-token"})
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Bearer realm="headwater", error="invalid_token"'
            assert Status.FromString(body).message == "invalid bearer token"
            assert traces.span_names() == []
    asyncio.run(go())


def test_an_http_request_with_the_token_is_accepted(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with http_receiver(auth=auth) as (url, traces, _, _admission):
            status, _, _ = await post(f"{url}/v1/traces", spans_request("a").SerializeToString(),
                                      {**PROTOBUF, "Authorization": f"Bearer {TOKEN}"})
            assert status == 200
            assert traces.span_names() == ["a"]
    asyncio.run(go())


def test_a_huge_invalid_body_without_the_token_is_401_unread_and_never_admitted(auth: ReceiverAuthConfig) -> None:
    """2 MB that claim to be gzip, eight times the limit: a receiver that read, inflated or sized it would
    answer 413 or 400."""
    async def go() -> None:
        admission = RecordingAdmission()
        async with http_receiver(max_body_size=256 << 10, auth=auth, admission=admission) as (url, traces, _, _a):
            status, _, _ = await post(f"{url}/v1/traces", os.urandom(2 << 20),
                                      {**PROTOBUF, "Content-Encoding": "gzip"})
            assert status == 401
            assert admission.asked == []
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_grpc_call_without_the_token_is_unauthenticated(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with grpc_receiver(auth=auth) as (target, traces, _):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await grpc_call(target, spans_request("a").SerializeToString(), token=None)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "missing bearer token" in refused.value.details()
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_grpc_call_with_another_token_is_unauthenticated(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with grpc_receiver(auth=auth) as (target, traces, _):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await grpc_call(target, spans_request("a").SerializeToString(), token="not-the-token")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == "invalid bearer token"
            assert traces.span_names() == []
    asyncio.run(go())


def test_a_grpc_call_with_the_token_is_accepted(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with grpc_receiver(auth=auth) as (target, traces, _):
            await grpc_call(target, spans_request("a").SerializeToString(), token=TOKEN)
            assert traces.span_names() == ["a"]
    asyncio.run(go())


def test_an_oversized_grpc_message_without_the_token_is_unauthenticated_unread_and_never_admitted(
        auth: ReceiverAuthConfig) -> None:
    """A gzip message that inflates to 4 MiB past the 1 MiB limit: grpc would answer RESOURCE_EXHAUSTED had it
    read it, and admission would have been asked had it been decoded."""
    async def go() -> None:
        admission = RecordingAdmission()
        async with grpc_receiver(max_message_size=1 << 20, auth=auth, admission=admission) as (target, traces, _):
            async with grpc.aio.insecure_channel(target) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await channel.unary_unary(TRACE_EXPORT)(b"\xff" * (4 << 20), compression=grpc.Compression.Gzip,
                                                            timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert admission.asked == []
            assert traces.span_names() == []
    asyncio.run(go())


def test_the_sdk_exporters_send_over_tls_with_the_token(auth: ReceiverAuthConfig, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they override certificate_file (psf/requests#3829)
        monkeypatch.delenv(name, raising=False)
    certs = make_certs(tmp_path / "certs")
    tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key))

    async def go() -> None:
        async with grpc_receiver(tls=tls, auth=auth) as (target, grpc_traces, _), \
                http_receiver(tls=tls, auth=auth) as (url, http_traces, _, _admission):
            via_grpc = GrpcSpanExporter(endpoint=target, insecure=False, timeout=5,
                                        credentials=grpc.ssl_channel_credentials(certs.ca.read_bytes()),
                                        headers=(("authorization", f"Bearer {TOKEN}"),))
            via_http = HttpSpanExporter(endpoint=f"{url}/v1/traces", certificate_file=str(certs.ca), timeout=5,
                                        headers={"Authorization": f"Bearer {TOKEN}"})
            tracer = TracerProvider().get_tracer("auth-test")
            with tracer.start_as_current_span("checkout") as span:
                pass
            assert await asyncio.to_thread(via_grpc.export, [span]) == SpanExportResult.SUCCESS
            assert await asyncio.to_thread(via_http.export, [span]) == SpanExportResult.SUCCESS
            via_grpc.shutdown()
            via_http.shutdown()
            assert grpc_traces.span_names() == ["checkout"]
            assert http_traces.span_names() == ["checkout"]
    asyncio.run(go())


def test_a_rotated_token_file_counts_from_the_next_request_without_a_restart(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with http_receiver(auth=auth) as (url, traces, _, _admission), \
                grpc_receiver(auth=auth) as (target, grpc_traces, _):
            rotated = Path(auth.bearer_token_file).with_suffix(".new")
            rotated.write_text("rotated-token")
            os.replace(rotated, auth.bearer_token_file)  # as a secret is rotated: a new file renamed over
            old, _, _ = await post(f"{url}/v1/traces", spans_request("old").SerializeToString(),
                                   {**PROTOBUF, "Authorization": f"Bearer {TOKEN}"})
            new, _, _ = await post(f"{url}/v1/traces", spans_request("new").SerializeToString(),
                                   {**PROTOBUF, "Authorization": "Bearer rotated-token"})
            assert (old, new) == (401, 200)
            assert traces.span_names() == ["new"]
            with pytest.raises(grpc.aio.AioRpcError):
                await grpc_call(target, spans_request("old").SerializeToString(), token=TOKEN)
            await grpc_call(target, spans_request("new").SerializeToString(), token="rotated-token")
            assert grpc_traces.span_names() == ["new"]
    asyncio.run(go())


def test_a_token_file_that_is_emptied_keeps_the_last_token(auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        async with http_receiver(auth=auth) as (url, traces, _, _admission):
            Path(auth.bearer_token_file).write_text("")  # a rotation caught half-way
            status, _, _ = await post(f"{url}/v1/traces", spans_request("a").SerializeToString(),
                                      {**PROTOBUF, "Authorization": f"Bearer {TOKEN}"})
            assert status == 200
    asyncio.run(go())


def test_the_token_never_appears_in_a_log_line(auth: ReceiverAuthConfig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with http_receiver(auth=auth) as (url, _, _, _admission), grpc_receiver(auth=auth) as (target, _, _):
            await post(f"{url}/v1/traces", gzip.compress(b"x"), {**PROTOBUF, "Authorization": "Bearer wrong-token"})
            with pytest.raises(grpc.aio.AioRpcError):
                await grpc_call(target, b"", token="wrong-token")
            Path(auth.bearer_token_file).write_text("next-token")
            await post(f"{url}/v1/traces", b"", {**PROTOBUF, "Authorization": "Bearer next-token"})
            Path(auth.bearer_token_file).unlink()
            await post(f"{url}/v1/traces", b"", {**PROTOBUF, "Authorization": "Bearer next-token"})
    asyncio.run(go())
    lines = [LogfmtFormatter().format(record) for record in caplog.records]
    assert any("token=<redacted>" in line for line in lines)
    for secret in (TOKEN, "wrong-token", "next-token"):
        assert not [line for line in lines if secret in line]


def test_a_missing_token_file_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    async def go() -> None:
        async with http_receiver(auth=ReceiverAuthConfig(str(tmp_path / "absent.token"))):
            pass
    with pytest.raises(TokenFileError, match="auth.bearer_token_file.*absent.token"):
        asyncio.run(go())
