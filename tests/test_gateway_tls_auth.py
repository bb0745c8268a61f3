"""The gateway's remote-write receiver with TLS and a bearer token: a sender with the CA and the token writes;
one without the token gets 401 with `WWW-Authenticate: Bearer` (handshakes included) and nothing reaches the
pipeline or admission; with a client CA a sender without a certificate cannot connect.

Senders here are raw aiohttp clients with an ssl context and an Authorization header, posting remote write
1.0 as Prometheus does (no node agent yet has the outgoing TLS settings to act as the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import cramjam
import pytest

from agent.admission import Admission, Lease
from agent.config.schema import ReceiverAuthConfig, ReceiverTlsConfig
from agent.receivers.remote_write import RemoteWriteReceiver
from exporters.remote_write.proto.remote_write_v1_pb2 import WriteRequest
from exporters.remote_write.series import SampleBatch
from tests.tls_certs import Certs, make_certs

TOKEN = "gateway-token-for-tests"
RW1_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
               "X-Prometheus-Remote-Write-Version": "0.1.0"}


class RecordingAdmission(Admission):
    def __init__(self) -> None:
        super().__init__(64 << 20, retry_after=1.0)
        self.asked: list[int] = []

    def acquire(self, nbytes: int, signal: str) -> Lease:
        self.asked.append(nbytes)
        return super().acquire(nbytes, signal)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def auth(tmp_path: Path) -> ReceiverAuthConfig:
    (tmp_path / "gateway.token").write_text(TOKEN)
    return ReceiverAuthConfig(str(tmp_path / "gateway.token"))


@contextlib.asynccontextmanager
async def gateway(tls: ReceiverTlsConfig, auth: ReceiverAuthConfig | None,
                  admission: Admission) -> AsyncIterator[tuple[str, list[SampleBatch]]]:
    consumed: list[SampleBatch] = []

    async def consume(batch: SampleBatch) -> None:
        consumed.append(batch)

    receiver = RemoteWriteReceiver("127.0.0.1:0", 1 << 20, admission, consume, drain_timeout=1.0, tls=tls, auth=auth)
    await receiver.start()
    try:
        yield f"https://127.0.0.1:{receiver.bound_port}/api/v1/write", consumed
    finally:
        await receiver.shutdown(2.0)


def rw1_body(value: float = 1.0) -> bytes:
    request = WriteRequest()
    series = request.timeseries.add()
    for name, label in (("__name__", "up"), ("instance", "node-1"), ("job", "node")):
        series.labels.add(name=name, value=label)
    series.samples.add(value=value, timestamp=1_700_000_000_000)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def client_ssl(certs: Certs, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_certificate:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


async def request(method: str, url: str, context: ssl.SSLContext, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, data=body, headers=headers or {}, ssl=context,
                                   timeout=aiohttp.ClientTimeout(total=10)) as response:
            await response.read()
            return response.status, dict(response.headers)


def test_a_sender_with_the_ca_and_the_token_writes_over_tls(certs: Certs, auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key))
        async with gateway(tls, auth, RecordingAdmission()) as (url, consumed):
            status, headers = await request("POST", url, client_ssl(certs), rw1_body(),
                                            {**RW1_HEADERS, "Authorization": f"Bearer {TOKEN}"})
            assert status == 204
            assert headers["X-Prometheus-Remote-Write-Samples-Written"] == "1"
            assert [v for batch in consumed for v in batch.values] == [1.0]
    asyncio.run(go())


def test_a_write_without_the_token_is_401_unread_and_never_admitted(certs: Certs, auth: ReceiverAuthConfig) -> None:
    """A body of 2 MB of noise, twice the limit: read, it would be 413; decoded, 400."""
    async def go() -> None:
        admission = RecordingAdmission()
        tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key))
        async with gateway(tls, auth, admission) as (url, consumed):
            missing = await request("POST", url, client_ssl(certs), os.urandom(2 << 20), RW1_HEADERS)
            wrong = await request("POST", url, client_ssl(certs), rw1_body(),
                                  {**RW1_HEADERS, "Authorization": "Bearer not-the-token"})
            assert [status for status, _ in (missing, wrong)] == [401, 401]
            assert missing[1]["WWW-Authenticate"].startswith("Bearer")
            assert 'error="invalid_token"' in wrong[1]["WWW-Authenticate"]
            assert admission.asked == []
            assert consumed == []
    asyncio.run(go())


def test_a_handshake_without_the_token_is_401(certs: Certs, auth: ReceiverAuthConfig) -> None:
    async def go() -> None:
        tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key))
        async with gateway(tls, auth, RecordingAdmission()) as (url, _):
            refused, _ = await request("GET", f"{url}?get_headwater_compact_version=1", client_ssl(certs))
            answered, _ = await request("GET", f"{url}?get_headwater_compact_version=1", client_ssl(certs),
                                        headers={"Authorization": f"Bearer {TOKEN}"})
            assert (refused, answered) == (401, 200)
    asyncio.run(go())


def test_with_a_client_ca_only_a_sender_with_a_certificate_connects(certs: Certs) -> None:
    async def go() -> None:
        tls = ReceiverTlsConfig(str(certs.server_cert), str(certs.server_key), str(certs.ca))
        async with gateway(tls, None, RecordingAdmission()) as (url, consumed):
            status, _ = await request("POST", url, client_ssl(certs, with_certificate=True), rw1_body(2.0),
                                      RW1_HEADERS)
            assert status == 204
            with pytest.raises(aiohttp.ClientError):
                await request("POST", url, client_ssl(certs), rw1_body(3.0), RW1_HEADERS)
            assert [v for batch in consumed for v in batch.values] == [2.0]
    asyncio.run(go())
