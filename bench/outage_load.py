"""The outage benchmark's load: node-exporter-shaped series pushed as OTLP/HTTP at a given sample rate, each
sample stamped with the wall time at which it is sent.

    python bench/outage_load.py --otlp-url http://127.0.0.1:4318 [--rate 50000] [--nodes 10] [--layout combined]

It simulates `--nodes` nodes of `bench/node_workload.py`'s series (523 per node: the same families, labels
and value movements) and gives every series a sample every `nodes x 523 / rate` seconds (0.105 s for ten
nodes at 50,000 samples/s; about 1 s for 96 nodes). `--layout combined` sends each tick as one request
holding every node (one resource per node), as `node_workload.py` does and as a collector batching its nodes
would; `--layout per-node` sends one request per node, as each node's own SDK would, the nodes' turns spread
evenly over the tick so the agent sees a steady stream rather than a burst. Each push advances its nodes'
values, stamps every point with `int(time.time() * 1000)` ms (the point timestamp is the time of sending,
which is what lets the proxy behind the agent time each sample from here to the receiver's answer),
serializes the request and POSTs it. A request whose previous push is still unanswered skips its turn
(counted in `skipped`, never queued, never sent beside it: two pushes of the same series in flight could
reach the agent out of order), so a slow agent lowers the load instead of piling it up here.

`GET /stats` answers JSON: pushes, accepted samples (in requests the agent answered 2xx), errors, refusals
(429/503), late turns, skipped pushes, `accepted_by_second` (samples accepted per second of their
timestamp, so the bench can count what was generated in any window) and `push_ms` (per second of timestamp,
a histogram of milliseconds from the stamp to the agent's answer; `?push_ms=0` leaves it out). `POST /stop`
stops the pushes. It prints `{"port": N, "nodes": K, "series": S, "interval": I, "requests_per_interval": R}`
on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time

import aiohttp
from aiohttp import web
from node_workload import (  # bench/ is this script's first import path
    JOB,
    Series,
    Workload,
    advance,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
)

SERIES_PER_NODE = 523
"""What `node_workload.node_series` gives a node (checked at start)."""


class NodeRequests(Workload):
    """`Workload`'s nodes as OTLP requests: one per node (`per_node`) or one holding every node, each advanced
    and stamped when it is sent."""

    def __init__(self, nodes: int, seed: int, per_node: bool) -> None:
        self.per_node = per_node
        super().__init__(nodes, seed)

    def _build_otlp(self) -> None:
        self.requests: list[tuple[ExportMetricsServiceRequest, list[tuple[NumberDataPoint, Series]], int]] = []
        request = ExportMetricsServiceRequest()
        points: list[tuple[NumberDataPoint, Series]] = []
        for index, node in enumerate(self.node_names):
            if self.per_node and points:
                self.requests.append((request, points, len(points)))
                request, points = ExportMetricsServiceRequest(), []
            rm = request.resource_metrics.add()
            rm.resource.attributes.extend([
                KeyValue(key="service.name", value=AnyValue(string_value=JOB)),
                KeyValue(key="service.instance.id", value=AnyValue(string_value=node)),
            ])
            scope = rm.scope_metrics.add()
            families: dict[str, Metric] = {}
            for series in self.nodes[node]:
                metric = families.get(series.name)
                if metric is None:
                    metric = families[series.name] = scope.metrics.add(name=series.name)
                    if series.counter:
                        metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                        metric.sum.is_monotonic = True
                    else:
                        metric.gauge.SetInParent()
                point = (metric.sum.data_points if series.counter else metric.gauge.data_points).add()
                for key, value in sorted((*self.common(index), *series.labels)):
                    point.attributes.add(key=key, value=AnyValue(string_value=value))
                if series.counter:
                    point.start_time_unix_nano = self.start_ns
                points.append((point, series))
        self.requests.append((request, points, len(points)))

    def body(self, index: int) -> tuple[bytes, int]:
        """Request `index` advanced one tick and serialized, stamped now; (body, stamp in ms)."""
        request, points, _ = self.requests[index]
        now = time.time()
        rng = self.rng
        for _, series in points:
            advance(series, rng, now)
        stamp_ms = int(time.time() * 1000)
        stamp = stamp_ms * 1_000_000
        for point, series in points:
            point.as_double = series.value
            point.time_unix_nano = stamp
        return request.SerializeToString(), stamp_ms


class Pusher:
    def __init__(self, workload: NodeRequests, interval: float, url: str) -> None:
        self.workload = workload
        self.interval = interval
        self.url = url.rstrip("/") + "/v1/metrics"
        self.pushing = True
        self.in_flight: set[int] = set()
        self.stats: dict = {"nodes": len(workload.node_names), "series": workload.total_series,
                            "interval": interval, "pushes": 0, "accepted_samples": 0, "errors": 0,
                            "refused": 0, "last_error": "", "late": 0, "skipped": 0}
        self.accepted_by_second: collections.Counter = collections.Counter()
        self.push_ms: dict[int, collections.Counter] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stop", self.stop)
        return app

    async def get_stats(self, request: web.Request) -> web.Response:
        push_ms = None
        if request.query.get("push_ms", "1") != "0":
            push_ms = {str(s): {str(ms): n for ms, n in h.items()} for s, h in self.push_ms.items()}
        return web.json_response({**self.stats, "pushing": self.pushing, "time": time.time(),
                                  "in_flight": len(self.in_flight),
                                  "accepted_by_second": {str(s): n for s, n in self.accepted_by_second.items()},
                                  "push_ms": push_ms})

    async def stop(self, _request: web.Request) -> web.Response:
        self.pushing = False
        return web.json_response({"pushing": False, "time": time.time()})

    async def run(self) -> None:
        """Request i's turns at start + k x interval + i x interval / requests; a late turn is counted, not made
        up."""
        loop = asyncio.get_running_loop()
        nodes = len(self.workload.requests)
        step = self.interval / nodes
        tasks: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            due = loop.time()
            index = 0
            while self.pushing:
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -step:
                    self.stats["late"] += 1
                if not self.pushing:
                    break
                if index in self.in_flight:
                    self.stats["skipped"] += 1
                else:
                    self.in_flight.add(index)
                    task = asyncio.create_task(self.push(session, index))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                index = (index + 1) % nodes
                due += step
                if due < loop.time() - self.interval:  # far behind (a stalled loop): resynchronise
                    due = loop.time()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def push(self, session: aiohttp.ClientSession, index: int) -> None:
        try:
            body, stamp_ms = self.workload.body(index)
            count = self.workload.requests[index][2]
            self.stats["pushes"] += 1
            try:
                async with session.post(self.url, data=body,
                                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.stats["errors"] += 1
                self.stats["last_error"] = repr(exc)
                return
            if 200 <= status < 300:
                self.stats["accepted_samples"] += count
                second = stamp_ms // 1000
                self.accepted_by_second[second] += count
                histogram = self.push_ms.get(second)
                if histogram is None:
                    histogram = self.push_ms[second] = collections.Counter()
                histogram[round(time.time() * 1000 - stamp_ms)] += 1
            elif status in (429, 503):
                self.stats["refused"] += 1
                self.stats["last_error"] = f"HTTP {status}"
            else:
                self.stats["errors"] += 1
                self.stats["last_error"] = f"HTTP {status}"
        finally:
            self.in_flight.discard(index)


async def serve(args: argparse.Namespace) -> None:
    interval = args.nodes * SERIES_PER_NODE / args.rate
    workload = NodeRequests(args.nodes, args.seed, args.layout == "per-node")
    if workload.series_per_node[workload.node_names[0]] != SERIES_PER_NODE:
        raise SystemExit(f"node_workload gives {workload.series_per_node[workload.node_names[0]]} series per node, "
                         f"not {SERIES_PER_NODE}: update SERIES_PER_NODE")
    pusher = Pusher(workload, interval, args.otlp_url)
    runner = web.AppRunner(pusher.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1], "nodes": args.nodes, "series": workload.total_series,
                      "interval": interval, "requests_per_interval": len(workload.requests)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pushes = asyncio.create_task(pusher.run())
    try:
        await stop.wait()
    finally:
        pusher.pushing = False
        pushes.cancel()
        await asyncio.gather(pushes, return_exceptions=True)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--otlp-url", required=True, help="the agent's OTLP/HTTP base URL (POSTs to …/v1/metrics)")
    parser.add_argument("--rate", type=float, default=50_000, help="samples per second: every series gets a sample "
                        "every nodes x 523 / rate seconds")
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes, 523 series each")
    parser.add_argument("--layout", choices=["combined", "per-node"], default="combined",
                        help="one request per tick holding every node, or one request per node per tick")
    parser.add_argument("--port", type=int, default=0, help="port for /stats and /stop (0: any free one)")
    parser.add_argument("--seed", type=int, default=42)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
