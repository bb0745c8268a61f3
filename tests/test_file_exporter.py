"""The file exporter: one replayable OTLP/JSON line per request (traces and metrics each in their file), on disk
within the flush interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exporters.file import FileExporter
from exporters.otlp_json import decode_json


def traces(n_spans: int = 2, name: str = "GET /") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "web"
    spans = rs.scope_spans.add().spans
    for i in range(n_spans):
        spans.add(trace_id=bytes(range(16)), span_id=bytes([i + 1]) * 8, name=name, start_time_unix_nano=10 + i)
    return request


def counter_values(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    """Every nonzero counter point as {(name, sorted attributes): value} (counters exported at 0 from the start
    are left out)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    if point.value:
                        out[(metric.name, tuple(sorted(point.attributes.items())))] = point.value
    return out


def exporter_with_reader(path: Path, flush_interval: float = 3600.0,
                         metrics_path: Path | None = None) -> tuple[FileExporter, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    return FileExporter(path, metrics_path, flush_interval=flush_interval, meter=meter), reader


async def wait_until(condition, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    """Poll `condition` until it holds or `timeout` passes; returns as soon as it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_a_consumed_request_becomes_one_json_line_that_decodes_to_the_same_request(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    request = traces()

    async def scenario() -> None:
        exporter = FileExporter(path)
        await exporter.start()
        await exporter.consume_traces(request)
        await exporter.shutdown(timeout=5)

    asyncio.run(scenario())
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith(b"\n")
    assert decode_json(lines[0], ExportTraceServiceRequest) == request


def test_each_request_gets_its_own_line_in_order(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"

    async def scenario() -> None:
        exporter = FileExporter(path)
        await exporter.start()
        for name in ("a", "b", "c"):
            await exporter.consume_traces(traces(name=name))
        await exporter.shutdown(timeout=5)

    asyncio.run(scenario())
    names = [
        decode_json(line, ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans[0].name
        for line in path.read_bytes().splitlines()
    ]
    assert names == ["a", "b", "c"]


def test_lines_reach_the_file_within_the_flush_interval_without_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"

    async def scenario() -> None:
        exporter = FileExporter(path, flush_interval=0.05)
        await exporter.start()
        await exporter.consume_traces(traces())
        await wait_until(lambda: path.exists() and path.read_bytes().endswith(b"\n"), timeout=1.0)
        assert exporter.queued_bytes == 0
        await exporter.shutdown(timeout=5)

    asyncio.run(scenario())


def test_queued_bytes_counts_the_buffered_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        exporter = FileExporter(tmp_path / "t.jsonl", flush_interval=3600)
        await exporter.start()
        await exporter.consume_traces(traces())
        assert exporter.queued_bytes > 0
        await exporter.shutdown(timeout=5)
        assert exporter.queued_bytes == 0

    asyncio.run(scenario())
    assert (tmp_path / "t.jsonl").stat().st_size > 0


def test_shutdown_writes_what_is_buffered_even_with_a_long_interval(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"

    async def scenario() -> None:
        exporter, reader = exporter_with_reader(path, flush_interval=3600)
        await exporter.start()
        await exporter.consume_traces(traces(n_spans=3))
        await exporter.shutdown(timeout=5)
        assert counter_values(reader) == {("headwater_exporter_sent_spans", (("exporter", "file"),)): 3}

    asyncio.run(scenario())
    assert len(path.read_bytes().splitlines()) == 1


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "traces.jsonl"

    async def scenario() -> None:
        exporter = FileExporter(path)
        await exporter.start()
        await exporter.consume_traces(traces())
        await exporter.shutdown(timeout=5)

    asyncio.run(scenario())
    assert path.is_file()


def test_a_write_error_is_counted_and_logged_not_raised(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    async def scenario() -> None:
        exporter, reader = exporter_with_reader(blocker / "traces.jsonl")
        await exporter.start()
        await exporter.consume_traces(traces(n_spans=2))
        await exporter.shutdown(timeout=5)
        assert counter_values(reader) == {
            ("headwater_exporter_failed_spans", (("exporter", "file"), ("reason", "write_error"))): 2
        }
        assert exporter.queued_bytes == 0

    asyncio.run(scenario())
    assert any(r.name == "headwater.exporters.file" and "dropped 2 spans" in r.getMessage() for r in caplog.records)


def test_shutdown_without_start_writes_what_was_consumed(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"

    async def scenario() -> None:
        exporter = FileExporter(path)
        await exporter.consume_traces(traces())
        await exporter.shutdown(timeout=5)

    asyncio.run(scenario())
    assert len(path.read_bytes().splitlines()) == 1


def test_shutdown_without_start_and_twice_is_safe(tmp_path: Path) -> None:
    async def scenario() -> None:
        idle = FileExporter(tmp_path / "idle.jsonl")
        await idle.shutdown(timeout=1)
        await idle.shutdown(timeout=1)
        started = FileExporter(tmp_path / "started.jsonl")
        await started.start()
        await started.shutdown(timeout=1)
        await started.shutdown(timeout=1)

    asyncio.run(scenario())
    assert not (tmp_path / "idle.jsonl").exists()


def test_data_consumed_after_shutdown_is_dropped_and_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        exporter, reader = exporter_with_reader(tmp_path / "t.jsonl")
        await exporter.start()
        await exporter.shutdown(timeout=1)
        await exporter.consume_traces(traces(n_spans=4))
        assert counter_values(reader) == {
            ("headwater_exporter_failed_spans", (("exporter", "file"), ("reason", "shut_down"))): 4
        }

    asyncio.run(scenario())


def test_consume_never_mutates_the_request(tmp_path: Path) -> None:
    request = traces()
    before = request.SerializeToString()

    async def scenario() -> None:
        exporter = FileExporter(tmp_path / "t.jsonl")
        await exporter.start()
        await exporter.consume_traces(request)
        await exporter.shutdown(timeout=5)

    asyncio.run(scenario())
    assert request.SerializeToString() == before


def test_a_non_positive_flush_interval_is_refused_naming_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_interval"):
        FileExporter(tmp_path / "t.jsonl", flush_interval=0)


def gauge_points(n_points: int = 3) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "web"
    metric = rm.scope_metrics.add().metrics.add(name="queue.depth")
    for i in range(n_points):
        metric.gauge.data_points.add(time_unix_nano=10 + i, as_int=i)
    return request


def test_a_metrics_request_becomes_one_line_of_the_metrics_file_and_traces_stay_in_theirs(tmp_path: Path) -> None:
    request = gauge_points()

    async def scenario() -> None:
        exporter, reader = exporter_with_reader(tmp_path / "traces.jsonl", metrics_path=tmp_path / "metrics.jsonl")
        await exporter.start()
        await exporter.consume_metrics(request)
        await exporter.consume_traces(traces(n_spans=1))
        await exporter.shutdown(timeout=5)
        assert counter_values(reader) == {("headwater_exporter_sent_data_points", (("exporter", "file"),)): 3,
                                          ("headwater_exporter_sent_spans", (("exporter", "file"),)): 1}

    asyncio.run(scenario())
    [line] = (tmp_path / "metrics.jsonl").read_bytes().splitlines()
    assert decode_json(line, ExportMetricsServiceRequest) == request
    assert len((tmp_path / "traces.jsonl").read_bytes().splitlines()) == 1


def test_metrics_are_refused_without_a_metrics_path(tmp_path: Path) -> None:
    async def scenario() -> None:
        exporter = FileExporter(tmp_path / "traces.jsonl")
        with pytest.raises(RuntimeError, match="metrics_path"):
            await exporter.consume_metrics(gauge_points())

    asyncio.run(scenario())


def test_what_shutdown_could_not_write_is_reported_as_dropped_per_unit(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    async def scenario() -> None:
        exporter = FileExporter(blocker / "traces.jsonl", blocker / "metrics.jsonl", flush_interval=3600)
        await exporter.start()
        await asyncio.sleep(0)  # the writer waits for its interval, as in a running agent
        await exporter.consume_traces(traces(n_spans=2))
        await exporter.consume_metrics(gauge_points(3))
        await exporter.shutdown(timeout=5)
        left = exporter.leftover()
        assert left.dropped == {"spans": 2, "data points": 3}
        assert left.lost

    asyncio.run(scenario())


def test_a_clean_shutdown_reports_nothing_left(tmp_path: Path) -> None:
    async def scenario() -> None:
        exporter = FileExporter(tmp_path / "traces.jsonl", tmp_path / "metrics.jsonl")
        await exporter.start()
        await exporter.consume_traces(traces())
        await exporter.consume_metrics(gauge_points())
        await exporter.shutdown(timeout=5)
        assert not exporter.leftover().lost

    asyncio.run(scenario())


def test_a_file_that_would_pass_max_file_size_is_rotated_and_one_old_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    line = len(traces(name="first").SerializeToString())  # a JSON line is longer than this

    async def write(name: str) -> None:
        exporter = FileExporter(path, max_file_size=line * 3)  # room for one JSON line, not two
        await exporter.start()
        await exporter.consume_traces(traces(name=name))
        await exporter.shutdown(timeout=5)

    for name in ("first", "second", "third"):
        asyncio.run(write(name))
    rotated = path.with_name("traces.jsonl.1")
    assert [decode_json(line, ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans[0].name
            for line in path.read_bytes().splitlines()] == ["third"]
    assert [decode_json(line, ExportTraceServiceRequest).resource_spans[0].scope_spans[0].spans[0].name
            for line in rotated.read_bytes().splitlines()] == ["second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traces.jsonl", "traces.jsonl.1"]
