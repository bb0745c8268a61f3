"""End to end: an app exporting DELTA counters through the agent into a real Prometheus keeps its totals across
an agent restart: the restarted agent continues the cumulative sums from its saved state, neither resetting
them nor counting the deltas it had already counted a second time.

Needs `DeltaToCumulative` wired into the remote-write exporter (state under `state_dir`)."""

from __future__ import annotations

import signal

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from tests.agent_process import AgentProcess

DELTA_PREFERENCE = {
    Counter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
}
SERVICE = "delta-restart-e2e"
SELECTOR = f'job="{SERVICE}",instance="node-1"'


def metrics_pipeline(prometheus) -> dict:
    return {
        "exporters": {"remote_write": [{
            "name": "prom", "url": prometheus.remote_write_url,
            "batch": {"flush_interval": "200ms"},
            "sender": {"retry": {"initial_backoff": "100ms", "max_backoff": "1s"}},
        }]},
        "pipelines": {"metrics": {"exporters": ["prom"]}},
    }


class RecordingExporter(MetricExporter):
    """The OTLP exporter, keeping each export's result: with delta temporality a failed export loses counts
    in the app itself, which must fail the test as such rather than look like the agent's doing."""

    def __init__(self, inner: OTLPMetricExporter) -> None:
        super().__init__(preferred_temporality=DELTA_PREFERENCE)
        self.inner = inner
        self.results: list[MetricExportResult] = []

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis)


def value(prometheus, promql: str) -> float:
    [sample] = prometheus.query(promql)
    return float(sample["value"][1])


def test_delta_counters_keep_their_totals_across_an_agent_restart(prometheus, start_agent):
    config = metrics_pipeline(prometheus)
    first = start_agent(extra_config=config)
    exporter = RecordingExporter(OTLPMetricExporter(
        endpoint=first.http_url + "/v1/metrics", timeout=10, preferred_temporality=DELTA_PREFERENCE))
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": SERVICE, "service.instance.id": "node-1"}),
                             metric_readers=[reader])
    meter = provider.get_meter("e2e.delta", "1.0.0")
    jobs = meter.create_counter("jobs.done", unit="{job}")
    depth = meter.create_up_down_counter("queue.depth", unit="{item}")

    jobs.add(3, {"queue": "a"})
    jobs.add(4, {"queue": "a"})
    jobs.add(5, {"queue": "b"})
    depth.add(10)
    assert provider.force_flush(10_000)
    first.stop_cleanly()  # SIGTERM: delivers the pending batch, saves the delta state
    prometheus.wait_for_query(f'jobs_done_total{{{SELECTOR},queue="a"}} == 7', lambda r: len(r) == 1, timeout=20)

    # The same state directory and the same OTLP port: the app does not know the agent restarted.
    second = AgentProcess(first.workdir, extra_config=config)
    second.grpc_port, second.http_port = first.grpc_port, first.http_port
    try:
        second.start()
        jobs.add(6, {"queue": "a"})
        jobs.add(1, {"queue": "b"})
        depth.add(-3)
        assert provider.force_flush(10_000)
        provider.shutdown()
        second.stop_cleanly()
    finally:
        second.stop()
    assert exporter.results == [MetricExportResult.SUCCESS] * 2, "the app's own exports failed"

    a = f'jobs_done_total{{{SELECTOR},queue="a"}}'
    prometheus.wait_for_query(f"{a} != 7", lambda r: len(r) == 1, timeout=20)
    assert value(prometheus, a) == 13  # 7 + 6: not 6 (reset) and not 20 (7 counted twice)
    assert value(prometheus, f'jobs_done_total{{{SELECTOR},queue="b"}}') == 6
    assert value(prometheus, f"queue_depth{{{SELECTOR}}}") == 7
    # Prometheus saw the counter only grow: no reset for rate() and increase() to paper over.
    assert value(prometheus, f"resets({a}[10m])") == 0


def test_delta_counters_keep_their_totals_across_a_sigkill_while_their_samples_wait_on_disk(prometheus, tmp_path):
    """The delta state and the queue agree after a crash: the state saved before the client was answered
    covers exactly the points whose samples were queued, so the restarted agent neither resets the counter
    nor adds a delta twice."""
    from tests.rw_fault_proxy import FaultProxy
    from tests.test_e2e_delivery_faults import (
        agent_config,
        sent,
        queue_dir,
        restarted,
        samples_waiting_on_disk,
        wait_until,
    )

    with FaultProxy(prometheus.remote_write_url) as proxy:
        first = AgentProcess(tmp_path / "agent", extra_config=agent_config(proxy.url))
        second = restarted(first)
        try:
            first.start()
            exporter = RecordingExporter(OTLPMetricExporter(
                endpoint=first.http_url + "/v1/metrics", timeout=10, preferred_temporality=DELTA_PREFERENCE))
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
            provider = MeterProvider(resource=Resource.create({"service.name": SERVICE,
                                                               "service.instance.id": "node-1"}),
                                     metric_readers=[reader])
            jobs = provider.get_meter("e2e.delta", "1.0.0").create_counter("jobs.done", unit="{job}")
            a = f'jobs_done_total{{{SELECTOR},queue="a"}}'

            jobs.add(3, {"queue": "a"})
            assert provider.force_flush(10_000)
            prometheus.wait_for_query(f"{a} == 3", lambda r: len(r) == 1, timeout=20)
            # Acknowledged and persisted as done (a request acknowledged late is written first; one acknowledged
            # within the write grace never is), so the records that wait after this are the next points'.
            wait_until(lambda: sent(first) >= 2 and samples_waiting_on_disk(queue_dir(first)) == 0,
                       "the 3 acknowledged on disk too")

            proxy.down()  # the store is away: the next points wait in the queue file
            jobs.add(4, {"queue": "a"})
            assert provider.force_flush(10_000)
            # The 7 and its target_info: on disk (a kill within flush_interval of the answer may lose them; the
            # delta state would then still hold them, so the next point is 13 either way: no jump, no double).
            wait_until(lambda: samples_waiting_on_disk(queue_dir(first)) == 2, "the 7 on disk")
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=10)

            second.start()  # same state directory and ports
            jobs.add(6, {"queue": "a"})
            assert provider.force_flush(10_000)
            provider.shutdown()
            proxy.up()
            prometheus.wait_for_query(f"{a} == 13", lambda r: len(r) == 1, timeout=30)
            second.stop_cleanly()
        finally:
            second.stop()
            first.stop()
    assert exporter.results == [MetricExportResult.SUCCESS] * 3, "the app's own exports failed"
    assert value(prometheus, f"max_over_time({a}[10m])") == 13  # 3, 7, 13: never 10 (reset) or 20 (7 twice)
    assert value(prometheus, f"resets({a}[10m])") == 0
    [series] = prometheus.query(f"{a}[10m]")
    assert [float(v) for _, v in series["values"]] == [3, 7, 13]
