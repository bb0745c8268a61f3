"""How long delta-to-cumulative's saves block the event loop, with 100k streams in the state.

    python bench/delta_state_bench.py [--streams 100000] [--waves 30] [--requests 10] [--points 1000] [--runs 3]
    python bench/delta_state_bench.py --tree /path/to/other/checkout     # the same against another tree's module

Setup: `--streams` delta sum streams are applied and committed once (the state the waves start from; on a
tree with change logs, the compaction this starts is waited for). Then a steady stream of requests of
`--points` delta points each, one every `--every` ms, handled as the remote-write exporter handles them:
a task per request, `apply(request)` then `await commit()` (the client would be acknowledged when it
returns), not waiting for one request's commit before the next request arrives. A wave is `--requests`
consecutive requests (10,000 points by default: a tenth of the streams); the waves walk round the streams,
each point the next interval of its stream.

What is measured: a probe task wakes every 1 ms (`asyncio.sleep`) and records how late it woke, minus the CPU
time `apply` used on the loop's thread in between (`time.thread_time` around each call: a request's own
conversion is not the save's doing). What is left is time the loop could not run for another reason:
waiting for a lock a save holds, waiting for the GIL while a save or compaction thread holds it, or save
work done on the loop itself. Per run: the worst such block in each wave's time, reported as the median over
waves and the worst; the time from `apply` to `commit` returning (what a client waits for the state to be on
disk), median and worst; bytes passed to write() per wave (`wchar` of /proc/self/io). The table gives the
median of each over `--runs` runs. One run takes ~10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

S = 1_000_000_000
T0 = 1_700_000_000 * S
PROBE_PERIOD = 0.001


def make_request(first: int, count: int, streams: int, window: int) -> ExportMetricsServiceRequest:
    """`count` points of streams `first`, `first + 1`, ... (mod `streams`), each the delta of window `window`."""
    start, end = T0 + window * S, T0 + (window + 1) * S
    points = [NumberDataPoint(start_time_unix_nano=start, time_unix_nano=end, as_int=1 + (i % 7), attributes=[
                  KeyValue(key="stream", value=AnyValue(string_value=str((first + i) % streams)))])
              for i in range(count)]
    metric = Metric(name="bench.requests", unit="{request}", sum=Sum(
        data_points=points, is_monotonic=True,
        aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA))
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
        resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="bench"))]),
        scope_metrics=[ScopeMetrics(scope=InstrumentationScope(name="bench"), metrics=[metric])])])


def written_bytes() -> int:
    with open("/proc/self/io") as file:
        return next(int(line.split()[1]) for line in file if line.startswith("wchar:"))


class Probe:
    """Wakes every PROBE_PERIOD and keeps the largest lateness not explained by `apply`'s own CPU time."""

    def __init__(self) -> None:
        self.apply_cpu = 0.0  # thread CPU seconds spent inside apply, on the loop's thread
        self.worst = 0.0
        self.running = True

    def timed_apply(self, d2c, request):
        cpu = time.thread_time()
        try:
            return d2c.apply(request)
        finally:
            self.apply_cpu += time.thread_time() - cpu

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            before, cpu_before = loop.time(), self.apply_cpu
            await asyncio.sleep(PROBE_PERIOD)
            late = loop.time() - before - PROBE_PERIOD - (self.apply_cpu - cpu_before)
            self.worst = max(self.worst, late)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


async def settle(d2c) -> None:
    drain = getattr(d2c, "drain", None)  # a tree before change logs has nothing running in the background
    if drain is not None:
        await drain()


async def one_run(module, args, directory: Path) -> dict:
    path = directory / "delta_to_cumulative" / "bench.json"
    d2c = module.DeltaToCumulative(path, max_series=args.streams)
    for first in range(0, args.streams, args.points):
        d2c.apply(make_request(first, min(args.points, args.streams - first), args.streams, 0))
    assert await d2c.commit()
    await settle(d2c)
    assert d2c.stats()["streams"] == args.streams, d2c.stats()

    per_wave = args.requests * args.points
    waves = [[make_request(w * per_wave + r * args.points, args.points, args.streams,
                           1 + (w * per_wave) // args.streams)
              for r in range(args.requests)] for w in range(args.waves)]
    probe = Probe()
    prober = asyncio.create_task(probe.run())
    loop = asyncio.get_running_loop()
    acks: list[float] = []

    async def handle(request) -> None:
        probe.timed_apply(d2c, request)
        applied = loop.time()
        assert await d2c.commit()
        acks.append(loop.time() - applied)

    await asyncio.sleep(0.05)
    probe.take()
    blocked: list[float] = []
    handlers: list[asyncio.Task] = []
    bytes_before, started = written_bytes(), time.perf_counter()
    next_at = loop.time()
    for wave in waves:
        for request in wave:
            handlers.append(asyncio.create_task(handle(request)))
            next_at += args.every / 1e3
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        blocked.append(probe.take())
    await asyncio.gather(*handlers)
    await asyncio.sleep(2 * PROBE_PERIOD)
    blocked[-1] = max(blocked[-1], probe.take())
    elapsed = time.perf_counter() - started
    bytes_written = written_bytes() - bytes_before
    probe.running = False
    await prober
    await settle(d2c)
    stats = d2c.stats()
    # What was saved is what a restart loads.
    assert module.DeltaToCumulative(path, max_series=args.streams).stats()["streams"] == args.streams
    return {"median_block_ms": 1e3 * statistics.median(blocked), "max_block_ms": 1e3 * max(blocked),
            "median_ack_ms": 1e3 * statistics.median(acks), "max_ack_ms": 1e3 * max(acks),
            "bytes_per_wave": bytes_written / len(waves), "waves_s": elapsed, "stats": stats,
            "per_wave_ms": [round(1e3 * b, 1) for b in blocked]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--waves", type=int, default=30)
    parser.add_argument("--requests", type=int, default=10, help="requests per wave")
    parser.add_argument("--points", type=int, default=1000, help="delta points per request")
    parser.add_argument("--every", type=float, default=20.0, help="ms between two requests")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout whose exporters/remote_write/cumulative.py is measured")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from exporters.remote_write import cumulative as module

    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="d2c-bench-") as directory:
            runs.append(asyncio.run(one_run(module, args, Path(directory))))
    keys = ("median_block_ms", "max_block_ms", "median_ack_ms", "max_ack_ms", "bytes_per_wave", "waves_s")
    summary = {key: statistics.median(run[key] for run in runs) for key in keys}
    if args.json:
        print(json.dumps({"module": module.__file__, "settings": {**vars(args), "tree": str(args.tree)},
                          "summary": summary, "runs": runs}))
        return
    print(f"{module.__file__}: {args.streams} streams, {args.waves} waves of {args.requests} requests x "
          f"{args.points} points, a request every {args.every:g} ms; medians of {args.runs} runs")
    print(f"  loop blocked by saving, worst in a wave: median {summary['median_block_ms']:.1f} ms, "
          f"worst {summary['max_block_ms']:.1f} ms")
    print(f"  apply -> commit returned: median {summary['median_ack_ms']:.1f} ms, worst {summary['max_ack_ms']:.1f} ms")
    print(f"  written per wave: {summary['bytes_per_wave'] / 1e6:.2f} MB; the waves took {summary['waves_s']:.2f} s")
    for i, run in enumerate(runs):
        print(f"  run {i}: blocked median {run['median_block_ms']:.1f} ms, worst {run['max_block_ms']:.1f} ms; "
              f"ack median {run['median_ack_ms']:.1f} ms, worst {run['max_ack_ms']:.1f} ms; "
              f"{run['bytes_per_wave'] / 1e6:.2f} MB/wave; {run['stats']}")
    if os.cpu_count() == 1:
        print("  (one CPU: the save thread and the loop share it; numbers are not comparable with more cores)")


if __name__ == "__main__":
    main()
