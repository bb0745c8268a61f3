"""An unexpected exception in a receiver's handler (a bug behind it, not a client's bytes): answered 500 /
INTERNAL with a message saying so, logged with its traceback once per kind, counted from 0, and the receiver
keeps serving.

The receivers run in process with a consumer that raises (a test double of the pipeline they hand data to).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import grpc
import pytest

from agent.admission import Admission
from agent.receivers.internal_errors import kind_of
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from agent.receivers.otlp_http import OtlpHttpReceiver
from agent.receivers.remote_write import RemoteWriteReceiver
from agent.telemetry import collect_metrics, install_meter_provider
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.vm import Rw1Encoder
from samplers.tail import Ingested
from tests.receiver_harness import spans_request

COUNTER = "headwater_receiver_internal_errors"


class Bug(Exception):
    """What the failing consumer raises: a stand-in for a bug behind the receiver."""


class Consumer:
    def __init__(self) -> None:
        self.failing = True

    async def __call__(self, batch: Any) -> Ingested | None:
        if self.failing:
            raise Bug("the pipeline broke")
        return Ingested(1, 0, "") if isinstance(batch, bytes) else None  # traces are answered as the sampler does


def counted(signal: str, transport: str) -> int | None:
    """The counter's value for these attributes, or None when it has no such series."""
    data = collect_metrics()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == COUNTER:
                    for point in metric.data.data_points:
                        if dict(point.attributes) == {"signal": signal, "transport": transport}:
                            return point.value
    return None


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "headwater.receivers" and r.exc_info]


def scrape_batch() -> SampleBatch:
    batch = SampleBatch()
    batch.labels.append((("__name__", "up"),))
    batch.values.append(1.0)
    batch.timestamps.append(1_700_000_000_000)
    batch.sizes.append(0)
    return batch


def test_the_counter_starts_at_0_for_each_signal_and_transport() -> None:
    install_meter_provider()
    consumer = Consumer()
    OtlpHttpReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consumer, consumer)
    OtlpGrpcReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consumer, consumer)
    RemoteWriteReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consumer)
    for signal, transport in (("traces", "http"), ("metrics", "http"), ("traces", "grpc"), ("metrics", "grpc"),
                              ("metrics", "remote_write")):
        assert counted(signal, transport) is not None, (signal, transport)


def test_an_http_handler_bug_is_answered_500_logged_with_its_traceback_once_and_counted_each_time(
        caplog: pytest.LogCaptureFixture) -> None:
    install_meter_provider()
    consumer = Consumer()
    caplog.set_level(logging.DEBUG, logger="headwater.receivers")

    async def go() -> None:
        receiver = OtlpHttpReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consumer, consumer)
        await receiver.start()
        before = counted("traces", "http") or 0
        url = f"http://127.0.0.1:{receiver.bound_port}/v1/traces"
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.post(url, data=json.dumps({}).encode(),
                                            headers={"Content-Type": "application/json"}) as response:
                        assert response.status == 500
                        assert "internal error in the agent (Bug at " in json.loads(await response.read())["message"]
                consumer.failing = False
                async with session.post(url, data=spans_request("ok").SerializeToString(),
                                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    assert response.status == 200
        finally:
            await receiver.shutdown(1.0)
        assert (counted("traces", "http") or 0) - before == 3

    asyncio.run(go())
    logged = tracebacks(caplog)
    assert len(logged) == 1 and logged[0].exc_info is not None and logged[0].exc_info[0] is Bug


def test_a_grpc_handler_bug_is_answered_internal_with_a_message_and_counted() -> None:
    install_meter_provider()
    consumer = Consumer()

    async def go() -> None:
        receiver = OtlpGrpcReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consumer, consumer)
        await receiver.start()
        before = counted("traces", "grpc") or 0
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as channel:
                call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(spans_request("a").SerializeToString(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.INTERNAL
                assert "internal error in the agent (Bug at " in (refused.value.details() or "")
                consumer.failing = False
                await call(spans_request("b").SerializeToString(), timeout=5)
        finally:
            await receiver.shutdown(1.0)
        assert (counted("traces", "grpc") or 0) - before == 1

    asyncio.run(go())


def test_a_gateway_handler_bug_is_answered_500_with_a_message_and_counted() -> None:
    install_meter_provider()
    consumer = Consumer()

    async def go() -> None:
        receiver = RemoteWriteReceiver("127.0.0.1:0", 1 << 20, Admission(1 << 20, 1.0), consumer)
        await receiver.start()
        before = counted("metrics", "remote_write") or 0
        url = f"http://127.0.0.1:{receiver.bound_port}/api/v1/write"
        try:
            async with aiohttp.ClientSession() as session:
                encoded = Rw1Encoder().encode(scrape_batch())
                async with session.post(url, data=encoded.body, headers=dict(encoded.headers)) as response:
                    assert response.status == 500
                    assert "internal error in the agent (Bug at " in await response.text()
                consumer.failing = False
                async with session.post(url, data=encoded.body, headers=dict(encoded.headers)) as response:
                    assert response.status == 204
        finally:
            await receiver.shutdown(1.0)
        assert (counted("metrics", "remote_write") or 0) - before == 1

    asyncio.run(go())


def test_a_kind_is_the_exception_type_and_the_place_it_was_raised() -> None:
    def fail(n: int) -> None:
        raise Bug(str(n))

    kinds = []
    for n in range(2):
        try:
            fail(n)
        except Bug as exc:
            kinds.append(kind_of(exc))
    assert kinds[0] == kinds[1]
    assert kinds[0][0] == "Bug" and kinds[0][1].startswith("test_receiver_internal_errors.py:")
