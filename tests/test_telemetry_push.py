"""agent/telemetry_push.py and the SDK setup it relies on (agent/telemetry.py, agent/process_metrics.py): the
agent's own metrics handed to a remote-write exporter as OTLP, on a timer and at shutdown, translated to the
names a scrape of /metrics shows. Async tests run with `asyncio.run` inside plain functions."""

from __future__ import annotations

import asyncio
import socket

from opentelemetry import metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from agent.config import load_text
from agent.process_metrics import register_process_metrics, resident_bytes
from agent.service import build_exporters
from agent.telemetry import agent_resource
from agent.telemetry_push import TelemetryPush
from exporters.remote_write.translate import translate


class Recorder:
    """An exporter's consume_metrics that keeps what it is given; `fail` makes it raise instead."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.fail: Exception | None = None

    async def consume(self, request: ExportMetricsServiceRequest) -> None:
        if self.fail is not None:
            raise self.fail
        self.requests.append(request)


class Ticks:
    """A `sleep` for TelemetryPush that returns only when the test lets one interval pass."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._permits: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._permits.get()

    async def pass_one(self) -> None:
        self._permits.put_nowait(None)
        for _ in range(5):  # the push after the sleep runs within a few loop turns
            await asyncio.sleep(0)


def sdk(instance: str = "node-a") -> tuple[metrics.Meter, InMemoryMetricReader]:
    """A private SDK shaped like the agent's: the resource agent.telemetry gives, a reader collected on demand."""
    reader = InMemoryMetricReader()
    resource = Resource.create({"service.name": "headwater", "service.instance.id": instance})
    return MeterProvider(metric_readers=[reader], resource=resource).get_meter("headwater.test"), reader


def series(request: ExportMetricsServiceRequest) -> dict[str, dict[str, str]]:
    """Prometheus name -> labels (of the last sample of that name), as remote write translates them."""
    batch = translate(request)
    return {dict(labels)["__name__"]: dict(labels) for labels in batch.labels}


def test_a_push_hands_the_agents_metrics_over_as_otlp_that_translates_to_the_names_a_scrape_shows():
    meter, reader = sdk()
    meter.create_counter("headwater_sender_retries", unit="{request}").add(2, {"exporter": "prom", "reason": "network"})
    meter.create_histogram("headwater_sender_latency_seconds", unit="s").record(0.25, {"exporter": "prom"})
    meter.create_observable_gauge("headwater_queue_bytes", unit="By",
                                  callbacks=[lambda _o: [metrics.Observation(512, {"exporter": "prom"})]])
    recorder = Recorder()
    assert asyncio.run(TelemetryPush(reader.get_metrics_data, recorder.consume, 15.0).push()) is True

    [request] = recorder.requests
    found = series(request)
    assert {"headwater_sender_retries_total", "headwater_sender_latency_seconds_bucket",
            "headwater_sender_latency_seconds_sum", "headwater_sender_latency_seconds_count",
            "headwater_queue_bytes"} <= set(found)
    assert {k: found["headwater_sender_retries_total"][k] for k in ("job", "instance", "exporter", "reason")} == {
        "job": "headwater", "instance": "node-a", "exporter": "prom", "reason": "network"}


def test_pushes_repeat_every_interval_and_carry_cumulative_totals():
    meter, reader = sdk()
    counter = meter.create_counter("headwater_receiver_accepted_items")
    recorder = Recorder()

    async def run() -> list[float]:
        ticks = Ticks()
        push = TelemetryPush(reader.get_metrics_data, recorder.consume, 2.5, sleep=ticks.sleep)
        await push.start()
        counter.add(3)
        await ticks.pass_one()
        counter.add(4)
        await ticks.pass_one()
        await push.shutdown(1.0)
        return ticks.asked

    asked = asyncio.run(run())
    assert asked[:2] == [2.5, 2.5]
    totals = [v for r in recorder.requests for labels, v in zip(translate(r).labels, translate(r).values)
              if dict(labels)["__name__"] == "headwater_receiver_accepted_items_total"]
    assert totals == [3.0, 7.0, 7.0]  # two on the timer, one at shutdown


def test_shutdown_without_start_pushes_nothing_and_is_safe_twice():
    _meter, reader = sdk()
    recorder = Recorder()
    push = TelemetryPush(reader.get_metrics_data, recorder.consume, 15.0)

    async def run() -> None:
        await push.shutdown(1.0)
        await push.shutdown(1.0)

    asyncio.run(run())
    assert recorder.requests == []


def test_a_refused_push_is_counted_and_the_next_push_carries_what_it_held():
    meter, reader = sdk()
    meter.create_counter("headwater_sampling_spans_in").add(5)
    recorder = Recorder()
    push = TelemetryPush(reader.get_metrics_data, recorder.consume, 15.0)
    recorder.fail = RuntimeError("remote write exporter 'prom' is shut down")
    assert asyncio.run(push.push()) is False
    recorder.fail = None
    assert asyncio.run(push.push()) is True
    assert (push.pushes, push.failed_pushes) == (1, 1)
    batch = translate(recorder.requests[0])
    assert [v for labels, v in zip(batch.labels, batch.values)
            if dict(labels)["__name__"] == "headwater_sampling_spans_in_total"] == [5.0]


def test_a_push_interval_of_zero_is_refused():
    try:
        TelemetryPush(lambda: None, Recorder().consume, 0.0)
    except ValueError as exc:
        assert "interval" in str(exc)
    else:
        raise AssertionError("an interval of 0 was accepted")


def test_the_agent_is_its_host_by_name_unless_the_environment_names_the_instance(monkeypatch):
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert agent_resource().attributes["service.instance.id"] == socket.gethostname()
    assert agent_resource().attributes["service.name"] == "headwater"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=edge-7")
    assert agent_resource().attributes["service.instance.id"] == "edge-7"


def test_process_cpu_and_resident_memory_are_instruments_that_push_like_any_other():
    meter, reader = sdk()
    register_process_metrics(meter)
    recorder = Recorder()
    asyncio.run(TelemetryPush(reader.get_metrics_data, recorder.consume, 15.0).push())
    batch = translate(recorder.requests[0])
    values = {dict(labels)["__name__"]: value for labels, value in zip(batch.labels, batch.values)}
    assert values["headwater_process_cpu_seconds_total"] > 0
    assert values["headwater_process_resident_memory_bytes"] > 10 << 20  # a Python process with the SDK loaded
    assert resident_bytes() > 10 << 20


def test_the_exporter_telemetry_writes_through_is_built_even_when_no_pipeline_lists_it(tmp_path):
    config = load_text(f"state_dir: {tmp_path}\n"
                       "exporters: {remote_write: [{name: self, url: 'http://127.0.0.1:9/api/v1/write'}]}\n"
                       "telemetry: {remote_write: self}\n", env={})
    assert list(build_exporters(config)) == ["self"]
