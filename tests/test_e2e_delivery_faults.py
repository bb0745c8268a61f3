"""End to end, the agent's delivery promises under the faults a node agent meets on its worst day (issue 8,
"Done when"): the store down for a while, the agent killed with SIGKILL in the middle and a torn queue file,
429 with a long Retry-After, a slow receiver, a rejected batch, and a full queue.

Every test runs the agent as a subprocess sending remote write 1.0 to a real Prometheus 2.42 through
`tests.rw_fault_proxy.FaultProxy`, which decodes every request (so it can say which samples Prometheus
accepted, and whether one came twice or out of order) and fails on cue. A client posts OTLP/HTTP gauges, one
point per series per step, each step with its own timestamp, and remembers the steps the agent answered 200
for; what Prometheus holds is read back per series (`count_over_time`, and the raw samples) and compared
with that. Waits poll for what must happen, with a deadline; nothing sleeps to prove that something did not.
"""

from __future__ import annotations

import email.utils
import math
import random
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
    MetricsServiceStub,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client.parser import text_string_to_metric_families

from exporters.remote_write.exporter import SPILL_REQUESTS
from exporters.sending.segments import HEADER, read_position, unpack_header
from tests.agent_process import AgentProcess, merge_config
from tests.peers.prometheus import PrometheusServer
from tests.rw_fault_proxy import Answer, Exchange, FaultProxy, Sample, answer_once

EXPORTER = "prom"
STEP_MS = 10  # timestamps of successive steps, so a test's samples fit in a few seconds of one series
DEADLINE = 30.0  # seconds any single wait may take before the test fails


# ---------------------------------------------------------------------------------------------------------
# The agent's config, its self-telemetry, its queue files
# ---------------------------------------------------------------------------------------------------------


def agent_config(url: str, **exporter: object) -> dict:
    """One remote-write exporter, rw1 (what the proxy decodes), short flushes and backoffs; `exporter` is
    merged over its settings."""
    base = {
        "name": EXPORTER, "url": url, "protocol": "rw1",
        "batch": {"flush_interval": "200ms"},
        "sender": {"retry": {"initial_backoff": "50ms", "max_backoff": "1s"}},
    }
    return {
        "exporters": {"remote_write": [merge_config(base, exporter)]},
        "pipelines": {"metrics": {"exporters": [EXPORTER]}},
        "shutdown_timeout": "3s",
    }


def telemetry(agent: AgentProcess, name: str, **labels: str) -> float:
    """The sum of the agent's self-telemetry samples called `name` whose labels include `labels`."""
    with urllib.request.urlopen(f"{agent.telemetry_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
             if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    if not found:
        raise AssertionError(f"the agent does not export {name}{labels or ''}")
    return sum(found)


def dropped(agent: AgentProcess, reason: str | None = None) -> float:
    labels = {"exporter": EXPORTER, **({"reason": reason} if reason else {})}
    return telemetry(agent, "headwater_remote_write_samples_dropped_total", **labels)


def sent(agent: AgentProcess) -> float:
    return telemetry(agent, "headwater_remote_write_samples_sent_total", exporter=EXPORTER)


def queue_dir(agent: AgentProcess) -> Path:
    return agent.state_dir / "queue" / EXPORTER


@dataclass(frozen=True)
class Record:
    path: Path
    offset: int
    length: int  # header and payload
    seq: int
    count: int


def records_on_disk(directory: Path) -> list[Record]:
    """Every whole record in the queue's segment files, oldest first (headers only)."""
    records = []
    for path in sorted(directory.glob("*.seg")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # every entry in it done: deleted meanwhile
            continue
        offset = 0
        while offset + HEADER.size <= len(data):
            header = unpack_header(data[offset:offset + HEADER.size])
            end = offset + HEADER.size + (header.length if header else 0)
            if header is None or end > len(data):
                break
            records.append(Record(path, offset, end - offset, header.seq, header.count))
            offset = end
    return records


def samples_waiting_on_disk(directory: Path) -> int:
    """Samples in records the persisted position says are not done: what a restart would send."""
    progress, _ = read_position(directory)
    return sum(r.count for r in records_on_disk(directory) if progress is None or not progress.is_done(r.seq))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def restarted(agent: AgentProcess, **overrides: object) -> AgentProcess:
    """Another agent process on the same state directory and ports (the client does not notice)."""
    again = AgentProcess(agent.workdir, extra_config=agent.extra_config, **overrides)
    again.grpc_port, again.http_port, again.telemetry_port = agent.grpc_port, agent.http_port, agent.telemetry_port
    return again


# ---------------------------------------------------------------------------------------------------------
# The client: OTLP gauges, one point per series per step
# ---------------------------------------------------------------------------------------------------------


@dataclass
class GaugeClient:
    """Posts `series` gauge points per step as OTLP/HTTP protobuf; step k's points are at start + k * STEP_MS,
    with values that do not repeat (so the queue's files grow as real data makes them). Remembers the steps
    the agent answered 200 for."""

    metric: str
    series: int
    start_ms: int = field(default_factory=lambda: (int(time.time()) - 300) * 1000)
    accepted: list[int] = field(default_factory=list)

    def timestamp(self, step: int) -> int:
        return self.start_ms + step * STEP_MS

    def request(self, step: int) -> ExportMetricsServiceRequest:
        points = [
            NumberDataPoint(time_unix_nano=self.timestamp(step) * 10**6, as_double=random.Random(step << 20 | i).random(),
                            attributes=[KeyValue(key="series", value=AnyValue(string_value=str(i)))])
            for i in range(self.series)
        ]
        resource = Resource(attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value="faults")),
            KeyValue(key="service.instance.id", value=AnyValue(string_value="node-1"))])
        return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[
            ScopeMetrics(metrics=[Metric(name=self.metric, gauge=Gauge(data_points=points))])])])

    def post_grpc(self, agent: AgentProcess, step: int) -> grpc.StatusCode:
        """Export step `step` over OTLP/gRPC; the status code (OK remembers the step)."""
        with grpc.insecure_channel(agent.grpc_endpoint) as channel:
            try:
                MetricsServiceStub(channel).Export(self.request(step), timeout=10)
            except grpc.RpcError as exc:
                return exc.code()
        self.accepted.append(step)
        return grpc.StatusCode.OK

    def post(self, agent: AgentProcess, step: int) -> int:
        """POST step `step`; the HTTP status (200 remembers the step)."""
        request = urllib.request.Request(
            f"{agent.http_url}/v1/metrics", data=self.request(step).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        if status == 200:
            self.accepted.append(step)
        return status

    def post_until_taken(self, agent: AgentProcess, step: int, timeout: float = DEADLINE) -> int:
        """POST step `step` again while the agent answers 429 (as OTLP clients retry); the refusals."""
        refusals, deadline = 0, time.monotonic() + timeout
        while (status := self.post(agent, step)) != 200:
            assert status == 429, f"the agent answered {status} to step {step}"
            assert time.monotonic() < deadline, f"the agent refused step {step} for {timeout}s"
            refusals += 1
            time.sleep(0.05)
        return refusals

    def send(self, agent: AgentProcess, steps: Iterable[int], pause: float = 0.0) -> None:
        """POST each step, `pause` seconds apart; each must be accepted."""
        for step in steps:
            status = self.post(agent, step)
            assert status == 200, f"the agent answered {status} to step {step}"
            if pause:
                time.sleep(pause)

    def expected(self, leave_out: Iterable[int] = ()) -> dict[str, list[int]]:
        """Timestamps per series (the `series` label) of every accepted step, less `leave_out`."""
        steps = sorted(set(self.accepted) - set(leave_out))
        return {str(i): [self.timestamp(s) for s in steps] for i in range(self.series)}

    def samples(self, steps: Iterable[int]) -> int:
        return self.series * len(list(steps))


# ---------------------------------------------------------------------------------------------------------
# What Prometheus and the proxy saw
# ---------------------------------------------------------------------------------------------------------


def stored(prometheus: PrometheusServer, client: GaugeClient, total: int) -> dict[str, list[int]]:
    """Wait until Prometheus counts `total` samples of the client's metric (`count_over_time`), then return
    its raw samples' timestamps per series."""
    expr = f'sum(count_over_time({client.metric}{{job="faults"}}[1h]))'
    prometheus.wait_for_query(expr, lambda r: bool(r) and int(float(r[0]["value"][1])) >= total, timeout=DEADLINE)
    counts = {s["metric"]["series"]: int(float(s["value"][1]))
              for s in prometheus.query(f'count_over_time({client.metric}{{job="faults"}}[1h])')}
    raw = {s["metric"]["series"]: [round(float(t) * 1000) for t, _ in s["values"]]
           for s in prometheus.query(f'{client.metric}{{job="faults"}}[1h]')}
    assert counts == {series: len(timestamps) for series, timestamps in raw.items()}
    return raw


def series_label(sample: Sample) -> str:
    return dict(sample[0])["series"]


def stored_exchanges(exchanges: Iterable[Exchange]) -> list[Exchange]:
    return [e for e in exchanges if e.stored and e.samples]


def assert_no_sample_twice(exchanges: Iterable[Exchange]) -> None:
    """No (series, timestamp) in two requests Prometheus accepted."""
    seen = Counter(sample for e in stored_exchanges(exchanges) for sample in e.samples)
    twice = [sample for sample, n in seen.items() if n > 1]
    assert not twice, f"{len(twice)} samples reached Prometheus twice, e.g. {twice[:3]}"


def assert_in_order(exchanges: Iterable[Exchange]) -> None:
    """Each series' timestamps only grow over the requests Prometheus accepted, in the order they arrived."""
    last: dict = {}
    for exchange in stored_exchanges(exchanges):
        for series, timestamp in exchange.samples:
            assert timestamp > last.get(series, -math.inf), (
                f"series {dict(series)} went back from {last[series]} to {timestamp} in request #{exchange.index}")
            last[series] = timestamp


def assert_nothing_refused(exchanges: Iterable[Exchange]) -> None:
    """Prometheus answered every request it got with 2xx."""
    refused = [e for e in exchanges if e.upstream_status is not None and not e.stored]
    assert not refused, f"Prometheus refused {len(refused)} requests, e.g. #{refused[0].index}: {refused[0].upstream_status}"


def assert_nothing_dropped(agent: AgentProcess) -> None:
    assert dropped(agent) == 0, {r: dropped(agent, r) for r in ("rejected", "too_old", "queue_full", "corrupt", "error")}
    assert telemetry(agent, "headwater_sender_dropped_samples_total", exporter=EXPORTER) == 0


# ---------------------------------------------------------------------------------------------------------
# 1. The receiver is down for a while and comes back
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["connection-refused", "503"])
def test_an_outage_of_the_receiver_loses_nothing_and_stores_each_sample_once(outage, prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        agent = start_agent(extra_config=agent_config(proxy.url))
        client = GaugeClient(f"fault_outage_{outage.replace('-', '_')}", series=20)
        client.send(agent, range(0, 10))
        proxy.wait_for(lambda ex: sum(len(e.samples) for e in stored_exchanges(ex)) == client.samples(range(10)),
                       DEADLINE, "the first steps delivered")

        if outage == "503":
            proxy.rule = lambda exchange: Answer(503, {}, b"unavailable for a while")
        else:
            proxy.down()
        failures_before = telemetry(agent, "headwater_sender_retries_total", exporter=EXPORTER)
        client.send(agent, range(10, 40), pause=0.02)  # accepted and queued while the store is away
        wait_until(lambda: telemetry(agent, "headwater_sender_retries_total", exporter=EXPORTER) >= failures_before + 3,
                   "the sender retried through the outage")
        proxy.rule = None
        proxy.up()
        client.send(agent, range(40, 50), pause=0.02)

        assert stored(prometheus, client, client.samples(client.accepted)) == client.expected()
        assert_nothing_dropped(agent)
        wait_until(lambda: sent(agent) == client.samples(range(50)), "every sample counted as sent")
        assert_nothing_refused(proxy.exchanges())
        assert_no_sample_twice(proxy.exchanges())
        assert_in_order(proxy.exchanges())


# ---------------------------------------------------------------------------------------------------------
# 2. SIGKILL during the outage, then a torn tail
# ---------------------------------------------------------------------------------------------------------


def assert_resent_only_as_it_was(exchanges: list[Exchange], before: str, after: str) -> list[Exchange]:
    """No sample twice among the requests Prometheus accepted within each phase; across them, a request of
    phase `after` may carry samples Prometheus accepted in phase `before` only if it is that very request,
    sent again as it was. Returns those resends."""
    earlier = [e for e in exchanges if e.phase == before]
    later = [e for e in exchanges if e.phase == after]
    assert_no_sample_twice(earlier)
    assert_no_sample_twice(later)
    stored_before = {s for e in stored_exchanges(earlier) for s in e.samples}
    requests_before = {tuple(e.samples) for e in stored_exchanges(earlier)}
    resends = [e for e in later if stored_before.intersection(e.samples)]
    for e in resends:
        assert tuple(e.samples) in requests_before, (
            f"request #{e.index} after the restart carries samples stored before it, but is not a request sent before")
    return resends


def test_a_sigkill_during_an_outage_loses_nothing_and_only_the_request_in_flight_comes_again(prometheus, tmp_path):
    client = GaugeClient("fault_kill", series=20)
    with FaultProxy(prometheus.remote_write_url) as proxy:
        first = AgentProcess(tmp_path / "agent", extra_config=agent_config(proxy.url))
        second = restarted(first)
        third = restarted(first)
        try:
            first.start()
            proxy.phase = "first"
            client.send(first, range(0, 10))
            wait_until(lambda: sent(first) == client.samples(range(10)), "the first steps delivered")
            wait_until(lambda: samples_waiting_on_disk(queue_dir(first)) == 0, "their position persisted")

            # Prometheus stores the next request, but its answer never reaches the agent: in flight at the kill.
            proxy.hold()
            client.send(first, range(10, 30), pause=0.02)
            proxy.wait_for(lambda ex: any(e.phase == "first" and e.stored and e.status is None for e in ex),
                           DEADLINE, "a request stored with its answer held back")
            wait_until(lambda: samples_waiting_on_disk(queue_dir(first)) == client.samples(range(10, 30)),
                       "every accepted step on disk")
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=10)
            proxy.down()

            proxy.phase = "second"
            second.start()
            client.send(second, range(30, 40), pause=0.02)  # while the store is still away
            proxy.up()
            assert stored(prometheus, client, client.samples(range(40))) == client.expected()
            wait_until(lambda: sent(second) == client.samples(range(10, 40)), "the second agent counted all as sent")
            assert_nothing_dropped(second)
            resends = assert_resent_only_as_it_was(proxy.exchanges(), "first", "second")
            assert resends, "the request held at the kill was not sent again"
            assert_in_order(e for e in proxy.exchanges() if e.phase == "second" and e not in resends)

            # A torn tail: the newest record cut in the middle while no agent runs.
            wait_until(lambda: samples_waiting_on_disk(queue_dir(second)) == 0, "the second agent's position persisted")
            proxy.down()
            client.send(second, range(40, 45))
            wait_until(lambda: samples_waiting_on_disk(queue_dir(second)) == client.samples(range(40, 45)),
                       "steps 40-44 on disk")
            client.send(second, [45])  # alone in the newest record
            wait_until(lambda: samples_waiting_on_disk(queue_dir(second)) == client.samples(range(40, 46)),
                       "step 45 on disk")
            second.process.send_signal(signal.SIGKILL)
            second.process.wait(timeout=10)
            last = records_on_disk(queue_dir(second))[-1]
            assert last.count == client.series
            with open(last.path, "r+b") as segment:
                segment.truncate(last.offset + HEADER.size + (last.length - HEADER.size) // 2)

            proxy.phase = "third"
            third.start()
            proxy.up()
            assert stored(prometheus, client, client.samples(range(45))) == client.expected(leave_out=[45])
            assert dropped(third, "corrupt") == client.series
            assert dropped(third) == client.series
            client.send(third, [46])  # it keeps running: a new step goes through after the torn one
            assert stored(prometheus, client, client.samples(range(45)) + client.series) == client.expected(leave_out=[45])
            assert not assert_resent_only_as_it_was(proxy.exchanges(), "second", "third")
            assert_in_order(e for e in proxy.exchanges() if e.phase == "third")
            third.stop_cleanly()
        finally:
            for agent in (first, second, third):
                agent.kill()


# ---------------------------------------------------------------------------------------------------------
# 3. 429 with a Retry-After longer than max_backoff
# ---------------------------------------------------------------------------------------------------------

PAUSE = 2  # seconds the receiver asks for: twice max_backoff


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_429_with_a_long_retry_after_holds_every_request_until_it_expires_and_loses_nothing(
    form, prometheus, start_agent
):
    expires: list[float] = []

    def retry_after() -> dict[str, str]:
        if form == "seconds":
            expires.append(time.time() + PAUSE)  # at the latest the agent reads the answer after this
            return {"Retry-After": str(PAUSE)}
        when = math.floor(time.time()) + PAUSE + 1  # whole seconds: between 2 and 3 s from now
        expires.append(when)
        return {"Retry-After": email.utils.formatdate(when, usegmt=True)}

    with FaultProxy(prometheus.remote_write_url) as proxy:
        agent = start_agent(extra_config=agent_config(proxy.url))
        client = GaugeClient(f"fault_429_{form.replace('-', '_')}", series=20)
        client.send(agent, range(0, 5), pause=0.05)
        proxy.wait_for(lambda ex: len(stored_exchanges(ex)) >= 1, DEADLINE, "a first delivery")
        proxy.rule = answer_once(429, retry_after, b"slow down")

        step = 5
        deadline = time.monotonic() + DEADLINE
        while not expires or time.time() < expires[0] + 0.5:  # clients keep sending through the pause
            assert time.monotonic() < deadline, "the proxy never answered 429"
            client.send(agent, [step])
            step += 1
            time.sleep(0.05)

        assert stored(prometheus, client, client.samples(client.accepted)) == client.expected()
        exchanges = proxy.exchanges()
        [throttled] = [e for e in exchanges if e.status == 429]
        later = [e for e in exchanges if e.arrived > throttled.answered]
        assert later, "nothing was sent after the 429"
        early = [e for e in later if e.arrived < expires[0] - 0.01]  # 10 ms for the two clocks' readings
        assert not early, f"{len(early)} requests came {expires[0] - early[0].arrived:.2f}s before the Retry-After expired"
        assert_nothing_dropped(agent)
        assert telemetry(agent, "headwater_sender_retries_total", exporter=EXPORTER, reason="throttled") >= 1
        assert_no_sample_twice(exchanges)
        assert_in_order(exchanges)


# ---------------------------------------------------------------------------------------------------------
# 4. Slow receivers: concurrency follows what pays, series stay in order
# ---------------------------------------------------------------------------------------------------------

SLOW_SERIES = 800  # with batch.max_samples 100, each step is a cut of 8 requests that may go in parallel


@dataclass(frozen=True)
class Observed:
    at: float
    concurrency: float
    backlog: float  # samples the agent accepted and has not counted as sent


def drive(agent: AgentProcess, client: GaugeClient, steps: range, pause: float) -> list[Observed]:
    """Send `steps` `pause` apart, then wait until the agent counts every sample as sent, reading the sender's
    concurrency and the backlog every 0.1 s throughout."""
    observed: list[Observed] = []
    start = time.monotonic()

    def observe() -> float:
        backlog = client.samples(client.accepted) - sent(agent)
        concurrency = telemetry(agent, "headwater_sender_concurrency", exporter=EXPORTER)
        observed.append(Observed(time.monotonic() - start, concurrency, backlog))
        return backlog

    for step in steps:
        client.send(agent, [step])
        next_step = time.monotonic() + pause
        while time.monotonic() < next_step:
            observe()
            time.sleep(0.1)
    wait_until(lambda: observe() == 0, "the backlog drained", interval=0.1)
    return observed


def slow_config(url: str) -> dict:
    return agent_config(url, batch={"max_samples": 100}, sender={"max_concurrency": 8})


def assert_delivered_in_order(prometheus: PrometheusServer, proxy: FaultProxy, agent: AgentProcess,
                              client: GaugeClient) -> None:
    assert stored(prometheus, client, client.samples(client.accepted)) == client.expected()
    assert_nothing_dropped(agent)
    assert_nothing_refused(proxy.exchanges())  # nothing as out of order
    assert_no_sample_twice(proxy.exchanges())
    assert_in_order(proxy.exchanges())


def test_a_slow_but_parallel_receiver_draws_the_concurrency_above_one_while_a_backlog_waits(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        proxy.latency = lambda in_flight: 0.2  # however many are in flight
        agent = start_agent(extra_config=slow_config(proxy.url))
        client = GaugeClient("fault_parallel", series=SLOW_SERIES)
        observed = drive(agent, client, range(0, 8), pause=0.4)  # 1,600 samples/s, 500/s per request in flight

        trace = [(round(o.at, 1), o.concurrency, o.backlog) for o in observed]
        assert max(o.concurrency for o in observed if o.backlog > 0) >= 2, trace
        assert max(e.in_flight for e in proxy.exchanges()) >= 2, "the proxy never had two requests at once"
        assert_delivered_in_order(prometheus, proxy, agent, client)


def test_send_latency_is_exported_in_buckets_of_seconds(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        proxy.latency = lambda in_flight: 0.2
        agent = start_agent(extra_config=agent_config(proxy.url))
        client = GaugeClient("fault_latency", series=10)
        drive(agent, client, range(0, 2), pause=0.3)

        answered = telemetry(agent, "headwater_sender_latency_seconds_count", exporter=EXPORTER)
        assert answered > 0
        assert telemetry(agent, "headwater_sender_latency_seconds_bucket", exporter=EXPORTER, le="0.1") == 0
        assert telemetry(agent, "headwater_sender_latency_seconds_bucket", exporter=EXPORTER, le="1.0") == answered


def test_a_receiver_whose_latency_grows_with_concurrency_makes_the_concurrency_fall_back(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        proxy.latency = lambda in_flight: 0.1 * in_flight  # one request at a time, whatever is sent
        agent = start_agent(extra_config=slow_config(proxy.url))
        client = GaugeClient("fault_serial", series=SLOW_SERIES)
        observed = drive(agent, client, range(0, 8), pause=0.4)

        trace = [(round(o.at, 1), o.concurrency, o.backlog) for o in observed]
        waiting = [o for o in observed if o.backlog > 0]
        assert max(o.concurrency for o in waiting) <= 2, trace  # one step up at most, which did not pay...
        raised = next((i for i, o in enumerate(waiting) if o.concurrency == 2), None)
        assert raised is not None, trace
        assert any(o.concurrency == 1 for o in waiting[raised:]), trace  # ...and was undone with work waiting
        assert waiting[-1].concurrency <= 2, trace
        assert_delivered_in_order(prometheus, proxy, agent, client)


# ---------------------------------------------------------------------------------------------------------
# 5. A batch rejected with 400
# ---------------------------------------------------------------------------------------------------------


def test_a_batch_rejected_with_400_is_dropped_and_counted_and_everything_else_arrives(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        proxy.rule = answer_once(400, body=b"test: this batch is refused on purpose", after=2)
        agent = start_agent(extra_config=agent_config(proxy.url))
        client = GaugeClient("fault_rejected", series=20)
        client.send(agent, range(0, 10), pause=0.25)  # one flush, so one request, per step

        exchanges = proxy.wait_for(lambda ex: any(e.status == 400 for e in ex), DEADLINE, "the 400")
        [rejected] = [e for e in exchanges if e.status == 400]
        assert not rejected.forwarded
        assert {series_label(s) for s in rejected.samples} == {str(i) for i in range(client.series)}
        lost_steps = [s for s in client.accepted if client.timestamp(s) in {t for _, t in rejected.samples}]
        assert len(rejected.samples) == client.samples(lost_steps)  # whole steps: one flush each

        kept = client.expected(leave_out=lost_steps)
        assert stored(prometheus, client, client.samples(client.accepted) - len(rejected.samples)) == kept
        wait_until(lambda: dropped(agent, "rejected") == len(rejected.samples), "the rejected samples counted")
        assert telemetry(agent, "headwater_sender_dropped_samples_total", exporter=EXPORTER, reason="rejected") == len(
            rejected.samples)
        assert dropped(agent) == len(rejected.samples)  # for that reason only
        rejected_samples = set(rejected.samples)
        assert not [e for e in proxy.exchanges() if e is not rejected and rejected_samples & set(e.samples)], (
            "the rejected batch was sent again")
        wait_until(lambda: sent(agent) == client.samples(client.accepted) - len(rejected.samples), "the rest sent")


# ---------------------------------------------------------------------------------------------------------
# 6. The queue's bounds reached while the receiver is down
# ---------------------------------------------------------------------------------------------------------

MAX_MEMORY = 64 << 10
MAX_BYTES = 8 << 10  # batch.max_bytes: a request, and the margin the queue keeps before it reports full
FULL_SERIES = 100  # a step is ~10 KB in memory (two requests), ~1 KB on disk


def bounded_config(url: str, when_full: str) -> dict:
    return agent_config(url, queue={"max_memory": MAX_MEMORY, "max_disk": "32KiB", "when_full": when_full},
                        batch={"max_bytes": MAX_BYTES})


def memory_bytes(agent: AgentProcess) -> float:
    return telemetry(agent, "headwater_queue_bytes", exporter=EXPORTER, medium="memory")


def post_traces(agent: AgentProcess) -> int:
    request = urllib.request.Request(
        f"{agent.http_url}/v1/traces", data=ExportTraceServiceRequest().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_a_full_queue_under_refuse_makes_clients_retry_with_429_and_resource_exhausted_and_loses_nothing(
    prometheus, start_agent
):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        proxy.down()
        agent = start_agent(extra_config=bounded_config(proxy.url, "refuse"))
        client = GaugeClient("fault_refuse", series=FULL_SERIES)
        memory: list[float] = []
        step, refused_since, deadline = 0, None, time.monotonic() + DEADLINE
        while refused_since is None or time.monotonic() - refused_since < 1.5:  # refused past a disk write cycle
            assert time.monotonic() < deadline, f"the queue never filled up; {step} steps accepted"
            status = client.post(agent, step)  # a client that retries a refused request until it is taken
            memory.append(memory_bytes(agent))
            if status == 200:
                step, refused_since = step + 1, None
            else:
                assert status == 429, f"the agent answered {status} to a full queue"
                refused_since = refused_since or time.monotonic()
            time.sleep(0.02)

        assert client.post_grpc(agent, step) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert post_traces(agent) == 200  # a metrics store that is down does not make the agent refuse traces
        assert telemetry(agent, "headwater_admission_refused_requests_total", signal="metrics", reason="queue_full") > 0
        assert dropped(agent) == 0, "the agent accepted samples and then dropped them"
        # The queue's own bound, the pending flush (cut at four requests' worth) and what was admitted before
        # the queue reported full (SPILL_REQUESTS requests' worth at most).
        assert max(memory) <= MAX_MEMORY + 4 * MAX_BYTES + SPILL_REQUESTS * MAX_BYTES, max(memory)

        proxy.up()
        for later in range(step, step + 4):
            client.post_until_taken(agent, later)
        assert stored(prometheus, client, client.samples(client.accepted)) == client.expected()
        assert_nothing_dropped(agent)
        assert_no_sample_twice(proxy.exchanges())
        assert_in_order(proxy.exchanges())


def test_a_full_queue_under_drop_oldest_drops_and_counts_the_oldest_and_the_newest_arrive(prometheus, start_agent):
    with FaultProxy(prometheus.remote_write_url) as proxy:
        proxy.down()
        agent = start_agent(extra_config=bounded_config(proxy.url, "drop_oldest"))
        client = GaugeClient("fault_drop_oldest", series=FULL_SERIES)
        memory: list[float] = []
        step = 0
        while dropped(agent, "queue_full") < client.samples(range(20)):  # well past the disk bound
            assert step < 1000, "nothing was dropped"
            client.send(agent, [step])  # never refused under drop_oldest
            memory.append(memory_bytes(agent))
            step += 1
        client.send(agent, range(step, step + 5), pause=0.05)
        assert max(memory) <= MAX_MEMORY + 4 * MAX_BYTES, max(memory)  # the queue's bound, the pending flush

        proxy.up()
        accepted = client.samples(client.accepted)
        wait_until(lambda: sent(agent) + dropped(agent, "queue_full") == accepted, "every sample has its outcome")
        lost = int(dropped(agent, "queue_full"))
        held = stored(prometheus, client, accepted - lost)
        expected = client.expected()
        assert sum(len(t) for t in held.values()) == accepted - lost
        newest = client.timestamp(client.accepted[-1])
        for series, timestamps in expected.items():
            kept = set(held.get(series, ()))
            assert kept <= set(timestamps) and newest in kept, series
            missing = [t for t in timestamps if t not in kept]
            # What is missing is one run of the oldest waiting: only what was in flight (the head) is older.
            assert not [t for t in kept if missing and missing[0] < t < missing[-1]], (series, missing)
        assert lost > 0 and dropped(agent) == lost  # queue_full only
        assert_no_sample_twice(proxy.exchanges())
        assert_in_order(proxy.exchanges())
