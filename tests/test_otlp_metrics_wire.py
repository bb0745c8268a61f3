"""The OTLP receivers offer a protobuf metrics request to the metrics pipeline as bytes first
(`MetricsFanOut.consume_wire`): requests of a shape the remote-write exporter learnt skip parsing. Seen from
outside, nothing changes: every sample is delivered once, counts and partial successes are what they were."""

from __future__ import annotations

import asyncio

import aiohttp
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from agent.admission import Admission
from agent.pipeline import MetricsFanOut
from agent.receivers.otlp_grpc import OtlpGrpcReceiver
from agent.receivers.otlp_http import OtlpHttpReceiver
from exporters.remote_write import rw1
from exporters.remote_write.exporter import RemoteWriteExporter
from exporters.remote_write.transport import FunctionTransport, HttpRequest, HttpResponse
from exporters.retry import RetryPolicy
from tests.test_remote_write_shapes import T0, node

RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_elapsed=5.0)


class Storage:
    """A remote-write 1.0 receiver at the transport seam: keeps every (series, value, timestamp) it is sent."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, float, int]] = []

    async def handle(self, request: HttpRequest) -> HttpResponse:
        for series in rw1.decode(request.body).timeseries:
            labels = ",".join(f"{label.name}={label.value}" for label in series.labels)
            self.samples += [(labels, sample.value, sample.timestamp) for sample in series.samples]
        return HttpResponse(204, {}, b"")


def exporter(name: str, storage: Storage) -> RemoteWriteExporter:
    return RemoteWriteExporter(name, "http://storage.test/api/v1/write", {}, 5.0, RETRY, 10_000, 1 << 20, 60.0,
                               protocol="rw1", transport=FunctionTransport(storage.handle),
                               wall_clock=lambda: T0 / 1e9 + 600.0)  # the test data is ten minutes old


async def post(session: aiohttp.ClientSession, url: str, request: ExportMetricsServiceRequest) -> tuple[int, int]:
    """(HTTP status, rejected data points in the partial success)."""
    async with session.post(url, data=request.SerializeToString(),
                            headers={"Content-Type": "application/x-protobuf"}) as response:
        body = ExportMetricsServiceResponse.FromString(await response.read())
        return response.status, body.partial_success.rejected_data_points


def send_over_http(requests: list[ExportMetricsServiceRequest], storages: int = 1):
    """Each request POSTed in turn to an HTTP receiver whose pipeline has `storages` exporters; returns the
    answers, the stored samples of each storage and the receiver's accepted-items total."""

    async def run():
        stores = [Storage() for _ in range(storages)]
        exporters = [exporter(f"rw{i}", store) for i, store in enumerate(stores)]
        pipeline = MetricsFanOut([(e.name, e) for e in exporters])
        receiver = OtlpHttpReceiver("127.0.0.1:0", 1 << 20, Admission(64 << 20, 1.0), None, pipeline.consume,
                                    metrics_wire=pipeline)
        for e in exporters:
            await e.start()
        await receiver.start()
        try:
            url = f"http://127.0.0.1:{receiver.bound_port}/v1/metrics"
            async with aiohttp.ClientSession() as session:
                answers = [await post(session, url, request) for request in requests]
        finally:
            await receiver.shutdown(1.0)
            for e in exporters:
                await e.shutdown(5.0)
        return answers, [store.samples for store in stores]

    return asyncio.run(run())


def values(samples: list[tuple[str, float, int]]) -> list[float]:
    return [value for labels, value, _ in samples if "target_info" not in labels]


def test_every_request_of_a_repeating_shape_is_stored_once_with_its_own_values() -> None:
    requests = [node([1.0 + i, 2.0 + i, 3.0 + i], [T0 + i * 10**9] * 3) for i in range(4)]

    answers, [stored] = send_over_http(requests)

    assert answers == [(200, 0)] * 4
    assert sorted(values(stored)) == sorted(v for i in range(4) for v in [1.0 + i, 2.0 + i, 3.0 + i] * 2)
    assert len(stored) == len(set(stored))


def test_a_request_with_an_invalid_metric_is_answered_with_a_partial_success_every_time() -> None:
    def with_unnamed(i: int) -> ExportMetricsServiceRequest:
        request = node([1.0 + i, 2.0, 3.0], [T0 + i * 10**9] * 3)
        request.resource_metrics[0].scope_metrics[0].metrics.append(Metric(name="", gauge={"data_points": [
            {"time_unix_nano": T0, "as_double": 1.0}]}))
        return request

    answers, [stored] = send_over_http([with_unnamed(i) for i in range(3)])

    assert answers == [(200, 1)] * 3
    assert sorted(values(stored)) == sorted(v for i in range(3) for v in [1.0 + i, 2.0, 3.0] * 2)


def test_every_exporter_of_the_pipeline_stores_every_request_once() -> None:
    requests = [node([1.0 + i, 2.0, 3.0], [T0 + i * 10**9] * 3) for i in range(3)]

    answers, stored = send_over_http(requests, storages=2)

    assert answers == [(200, 0)] * 3
    assert stored[0] == stored[1]
    assert sorted(values(stored[0])) == sorted(v for i in range(3) for v in [1.0 + i, 2.0, 3.0] * 2)


def test_grpc_requests_of_a_repeating_shape_are_stored_once_each() -> None:
    import grpc

    async def run():
        store = Storage()
        e = exporter("rw", store)
        pipeline = MetricsFanOut([(e.name, e)])
        receiver = OtlpGrpcReceiver("127.0.0.1:0", 1 << 20, Admission(64 << 20, 1.0), None, pipeline.consume,
                                    metrics_wire=pipeline)
        await e.start()
        await receiver.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as channel:
                export = channel.unary_unary(
                    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                    request_serializer=ExportMetricsServiceRequest.SerializeToString,
                    response_deserializer=ExportMetricsServiceResponse.FromString)
                for i in range(3):
                    await export(node([1.0 + i, 2.0, 3.0], [T0 + i * 10**9] * 3))
        finally:
            await receiver.shutdown(1.0)
            await e.shutdown(5.0)
        return store.samples

    stored = asyncio.run(run())

    assert sorted(values(stored)) == sorted(v for i in range(3) for v in [1.0 + i, 2.0, 3.0] * 2)
