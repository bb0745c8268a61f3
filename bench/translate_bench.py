"""Samples translated per second on one core, beside parsing the same OTLP metrics requests alone.

    taskset -c 0 python bench/translate_bench.py [--duration 3] [--repeats 3] [--requests 20]
    taskset -c 0 python bench/translate_bench.py --workload node [--nodes 10] [--requests 10]

`--workload app` (the default) is an instrumented HTTP service; `--workload node` is node-exporter-shaped
(see `make_node_requests`): ~510 gauge and counter series per node, one point per series per request.

The requests are what the OpenTelemetry Python SDK exports for an instrumented HTTP service (deterministic
seed), collected every "interval" after more recordings, so values change between requests as they would:

| instrument | streams per request | shape |
|---|---|---|
| counter `http.server.requests` | 120 | route (20) x method (2) x status (3), exemplars on ~10 % |
| up-down counter `db.client.connections.usage` | 8 | pool x state |
| gauge (observable) `process.memory.usage` etc. | 30 | 3 gauges x 10 CPUs/devices |
| histogram `http.server.duration` (s), 14 explicit bounds | 40 | route x method; 17 classic series each |
| exponential histogram `http.server.response.size` (By) | 20 | route; SDK default max_size 160 |
| summary `rpc.latency` (hand-built: the Python SDK has none) | 10 | 3 quantiles |

on a resource with service.name/namespace/instance.id and six other attributes (one `target_info`).

The node workload: `--nodes` resources (one per host) per request, each with ~510 series of node
exporter's usual metrics (`node_cpu_seconds_total{cpu,mode}`, `node_filesystem_avail_bytes{device,fstype,
mountpoint}`, `node_network_receive_bytes_total{device}`, `node_disk_*{device}`, `node_memory_*`, ...) as the
Collector's Prometheus receiver hands them over: counters as cumulative monotonic sums with a start time,
gauges without, every point with its metric's labels plus four target labels (5-7 attributes), values
moving every request. Stages: parse; parse + translate with a warm `SeriesCache` (when `translate` takes
one; without it, what `translate` did before); translate from the wire bytes once the requests' shapes
are learnt (`translate_wire`, no parse: see exporters/remote_write/shapes.py); parse + translate + rw1 encode
and compress. Reported as us
per sample (node samples are float samples: one per point).

Each stage runs back to back over the same serialized requests for `--duration` seconds, `--repeats`
times (median reported):
- parse: `ExportMetricsServiceRequest.FromString` alone (the floor: any translation must parse);
- parse + translate, exponential histograms as classic buckets (`native_histograms=False`);
- parse + translate with native histograms;
- parse + translate + rw1 encode (protobuf build + serialize + snappy), both ways.

"samples" are what remote write carries: float samples plus native histograms (each counts as one, as
receivers count them); data points are OTLP points. Prints a table and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google.protobuf
from google.protobuf.internal import api_implementation
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Summary, SummaryDataPoint
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exporters.remote_write import rw1
from exporters.remote_write.translate import translate

try:
    from exporters.remote_write.series_cache import SeriesCache
except ImportError:  # a tree from before the cache: the bench measures it as it was
    SeriesCache = None  # type: ignore[assignment,misc]
try:
    from exporters.remote_write.translate import translate_wire
except ImportError:  # a tree from before shapes
    translate_wire = None  # type: ignore[assignment]

BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
ROUTES = [f"/api/v1/resource{i}/{{id}}" for i in range(20)]


def make_requests(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create(
            {
                "service.name": "checkout",
                "service.namespace": "shop",
                "service.instance.id": "checkout-7d9f8-xk2p4",
                "service.version": "1.42.0",
                "deployment.environment": "production",
                "host.name": "node-17.eu-west-1.internal",
                "k8s.namespace.name": "shop",
                "k8s.pod.name": "checkout-7d9f8-xk2p4",
                "cloud.region": "eu-west-1",
            }
        ),
        views=[
            View(instrument_name="http.server.duration", aggregation=ExplicitBucketHistogramAggregation(BOUNDS)),
            View(instrument_name="http.server.response.size", aggregation=ExponentialBucketHistogramAggregation()),
        ],
    )
    meter = provider.get_meter("io.opentelemetry.aiohttp-server", "0.66b2")
    tracer = TracerProvider().get_tracer("bench")
    requests_counter = meter.create_counter("http.server.requests", unit="{request}")
    connections = meter.create_up_down_counter("db.client.connections.usage", unit="{connection}")
    duration = meter.create_histogram("http.server.duration", unit="s")
    size = meter.create_histogram("http.server.response.size", unit="By")
    for name in ("process.memory.usage", "system.cpu.utilization", "system.disk.io"):
        meter.create_observable_gauge(
            name,
            callbacks=[
                lambda options, n=name: [Observation(rng.random() * 100, {"device": f"d{i}"}) for i in range(10)]
            ],
            unit="By" if "memory" in name or "disk" in name else "1",
        )
    bodies = []
    for _ in range(count):
        for route in ROUTES:
            for method in ("GET", "POST"):
                for status in (200, 404, 500):
                    attributes = {
                        "http.route": route,
                        "http.request.method": method,
                        "http.response.status_code": status,
                    }
                    if rng.random() < 0.1:
                        with tracer.start_as_current_span("request"):  # a sampled span: the SDK keeps an exemplar
                            requests_counter.add(rng.randint(1, 20), attributes)
                    else:
                        requests_counter.add(rng.randint(1, 20), attributes)
                for _ in range(5):
                    duration.record(rng.lognormvariate(-3, 1.2), {"http.route": route, "http.request.method": method})
            for _ in range(10):
                size.record(rng.lognormvariate(8, 1.5), {"http.route": route})
        for pool in ("primary", "replica", "analytics", "cache"):
            for state in ("idle", "used"):
                connections.add(rng.randint(-2, 3), {"pool.name": pool, "state": state})
        request = encode_metrics(reader.get_metrics_data())
        scope = request.resource_metrics[0].scope_metrics.add()
        scope.scope.name = "legacy.rpc"
        metric = scope.metrics.add(name="rpc.latency", unit="ms")
        now = time.time_ns()
        metric.summary.CopyFrom(
            Summary(
                data_points=[
                    SummaryDataPoint(
                        time_unix_nano=now,
                        count=1000,
                        sum=12345.0,
                        quantile_values=[
                            SummaryDataPoint.ValueAtQuantile(quantile=q, value=rng.random() * 100)
                            for q in (0.5, 0.9, 0.99)
                        ],
                        attributes=[KeyValue(key="rpc.method", value=AnyValue(string_value=f"Method{i}"))],
                    )
                    for i in range(10)
                ]
            )
        )
        bodies.append(request.SerializeToString())
    provider.shutdown()
    return bodies


def _points(request: ExportMetricsServiceRequest) -> int:
    return sum(
        len(getattr(metric, metric.WhichOneof("data")).data_points)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )


def _run(bodies: list[bytes], duration: float, work: Callable[[ExportMetricsServiceRequest], int]) -> float:
    """Requests per second for `work` after parsing each body."""
    parse = ExportMetricsServiceRequest.FromString
    done = 0
    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline:
        for body in bodies:
            work(parse(body))
            done += 1
    return done / (time.perf_counter() - started)


def _run_bytes(bodies: list[bytes], duration: float, work: Callable[[bytes], object]) -> float:
    """Requests per second for `work` on each body as bytes (no parse)."""
    done = 0
    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline:
        for body in bodies:
            work(body)
            done += 1
    return done / (time.perf_counter() - started)


def _encode(native: bool) -> Callable[[ExportMetricsServiceRequest], int]:
    def work(request: ExportMetricsServiceRequest) -> int:
        batch = translate(request, native_histograms=native)
        rw1.encode(
            batch.labels,
            batch.values,
            batch.timestamps,
            histogram_labels=batch.histogram_labels,
            histograms=batch.histograms,
            exemplar_labels=batch.exemplar_labels,
            exemplars=batch.exemplars,
        )
        return len(batch)

    return work


# -- the node-exporter workload ---------------------------------------------------------------------------

_CPUS = [str(i) for i in range(8)]
_CPU_MODES = ["idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"]
_MOUNTS = [
    ("/dev/nvme0n1p1", "ext4", "/"),
    ("/dev/nvme0n1p2", "ext4", "/var"),
    ("/dev/nvme1n1", "xfs", "/data"),
    ("tmpfs", "tmpfs", "/run"),
    ("tmpfs", "tmpfs", "/dev/shm"),
    ("tmpfs", "tmpfs", "/run/lock"),
    ("/dev/nvme0n1p15", "vfat", "/boot/efi"),
    ("overlay", "overlay", "/var/lib/containerd"),
]
_NET_DEVICES = ["eth0", "eth1", "lo", "docker0", "cni0", "flannel.1"]
_DISKS = ["nvme0n1", "nvme1n1", "dm-0", "dm-1", "sda", "sdb"]
_INTERRUPTS = ["LOC", "RES", "CAL", "TLB", "NMI", "PMI", "IWI", "MCP", "ERR", "SPU", "THR", "DFR", "MCE", "HYP", "PIN"]


def _node_series() -> list[tuple[str, bool, list[dict[str, str]]]]:
    """(metric name, is a counter, the label sets of its series) of one node, ~510 series."""
    series: list[tuple[str, bool, list[dict[str, str]]]] = [
        ("node_cpu_seconds_total", True, [{"cpu": c, "mode": m} for c in _CPUS for m in _CPU_MODES]),
        ("node_cpu_guest_seconds_total", True, [{"cpu": c, "mode": m} for c in _CPUS for m in ("nice", "user")]),
    ]
    mounts = [{"device": d, "fstype": f, "mountpoint": m} for d, f, m in _MOUNTS]
    for name in ("avail_bytes", "free_bytes", "size_bytes", "files", "files_free", "readonly", "device_error"):
        series.append((f"node_filesystem_{name}", False, mounts))
    devices = [{"device": d} for d in _NET_DEVICES]
    for direction in ("receive", "transmit"):
        for what in ("bytes", "packets", "errs", "drop"):
            series.append((f"node_network_{direction}_{what}_total", True, devices))
    for name in ("up", "mtu_bytes", "speed_bytes"):
        series.append((f"node_network_{name}", False, devices))
    disks = [{"device": d} for d in _DISKS]
    for name in ("reads_completed", "writes_completed", "read_bytes", "written_bytes", "io_time_seconds"):
        series.append((f"node_disk_{name}_total", True, disks))
    for name in ("read_time_seconds", "write_time_seconds"):
        series.append((f"node_disk_{name}_total", True, disks))
    series.append(("node_disk_io_now", False, disks))
    for i in range(40):
        series.append((f"node_memory_field{i:02d}_bytes", False, [{}]))
    for i in range(40):
        series.append((f"node_vmstat_field{i:02d}", True, [{}]))
    cpus = [{"cpu": c} for c in _CPUS]
    for name in ("processed", "dropped", "times_squeezed"):
        series.append((f"node_softnet_{name}_total", True, cpus))
    series.append(
        ("node_interrupts_total", True, [{"cpu": c, "type": t, "devices": ""} for c in _CPUS for t in _INTERRUPTS])
    )
    for name in ("running_seconds", "waiting_seconds", "timeslices"):
        series.append((f"node_schedstat_{name}_total", True, cpus))
    for name in ("load1", "load5", "load15", "boot_time_seconds", "time_seconds", "procs_running", "procs_blocked"):
        series.append((f"node_{name}", False, [{}]))
    for name in ("context_switches_total", "forks_total", "intr_total", "entropy_available_bits", "nf_conntrack"):
        series.append((f"node_{name}", not name.endswith("bits") and name != "nf_conntrack", [{}]))
    return series


def make_node_requests(count: int, nodes: int, seed: int = 11) -> list[bytes]:
    """`count` requests, each carrying one scrape of `nodes` node exporters, 15 s apart."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

    rng = random.Random(seed)
    shape = _node_series()
    start = 1_764_000_000_000_000_000
    totals: dict[tuple[int, str, int], float] = {}
    bodies = []
    for r in range(count):
        now = start + (r + 1) * 15_000_000_000
        request = ExportMetricsServiceRequest()
        for node in range(nodes):
            host = f"node-{node:03d}.eu-west-1.internal"
            resource_metrics = request.resource_metrics.add()
            for key, value in (
                ("service.name", "node-exporter"),
                ("service.instance.id", f"{host}:9100"),
                ("server.address", host),
                ("server.port", "9100"),
                ("url.scheme", "http"),
            ):
                resource_metrics.resource.attributes.add(key=key, value=AnyValue(string_value=value))
            scope = resource_metrics.scope_metrics.add()
            scope.scope.name = "otelcol/prometheusreceiver"
            scope.scope.version = "0.115.0"
            target = {"cluster": "prod-eu", "region": "eu-west-1", "zone": f"eu-west-1{'abc'[node % 3]}"}
            target["env"] = "production"
            for name, counter, label_sets in shape:
                metric = scope.metrics.add(name=name)
                if counter:
                    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                    metric.sum.is_monotonic = True
                    points = metric.sum.data_points
                else:
                    points = metric.gauge.data_points
                for i, labels in enumerate(label_sets):
                    point = points.add(time_unix_nano=now)
                    if counter:
                        point.start_time_unix_nano = start
                        total = totals.get((node, name, i), 0.0) + rng.randint(0, 5000) / 8
                        totals[(node, name, i)] = total
                        point.as_double = total
                    else:
                        point.as_double = rng.random() * 1e9
                    for key, value in (*labels.items(), *target.items()):
                        point.attributes.add(key=key, value=AnyValue(string_value=value))
        bodies.append(request.SerializeToString())
    return bodies


def _translator(cache: object | None) -> Callable[[ExportMetricsServiceRequest], Any]:
    if cache is None:
        return translate
    return lambda request: translate(request, cache=cache)


def measure_node(duration: float, repeats: int, count: int, nodes: int) -> dict:
    bodies = make_node_requests(count, nodes)
    parsed = [ExportMetricsServiceRequest.FromString(body) for body in bodies]
    points = statistics.mean(_points(r) for r in parsed)
    cache = SeriesCache() if SeriesCache is not None else None
    translator = _translator(cache)
    batches = [translator(r) for r in parsed]  # warms the cache
    samples = statistics.mean(b.samples for b in batches)

    def encode(request: ExportMetricsServiceRequest) -> int:
        batch = translator(request)
        rw1.encode(batch.labels, batch.values, batch.timestamps)
        return len(batch)

    stages: dict[str, Callable[[ExportMetricsServiceRequest], object]] = {
        "parse": lambda r: 0,
        "parse+translate": translator,
        "parse+translate+rw1 encode": encode,
    }
    _run(bodies, min(duration, 0.5), encode)
    results = {}
    if translate_wire is not None:
        for request, body in zip(parsed, bodies):  # learn the requests' shapes
            translate(request, cache=cache, wire=body)
        replayed = [translate_wire(body, cache=cache) for body in bodies]
        if all(found is not None for found in replayed):
            rounds = [_run_bytes(bodies, duration, lambda body: translate_wire(body, cache=cache))
                      for _ in range(repeats)]
            per_s = statistics.median(rounds)
            results["translate from wire (learnt shape)"] = {
                "requests_per_s": per_s, "us_per_request": 1e6 / per_s, "us_per_sample": 1e6 / per_s / samples}
    for name, work in stages.items():
        rounds = [_run(bodies, duration, work) for _ in range(repeats)]
        per_s = statistics.median(rounds)
        results[name] = {"requests_per_s": per_s, "us_per_request": 1e6 / per_s, "us_per_sample": 1e6 / per_s / samples}
    return {
        "stages": results,
        "request": {
            "bytes": statistics.mean(len(b) for b in bodies),
            "data_points": points,
            "samples": samples,
            "nodes": nodes,
            "dropped": sum((b.dropped for b in batches), start=type(batches[0].dropped)()),
            "cache": {"bytes": cache.nbytes, "entries": len(cache)} if cache is not None else None,
        },
        "environment": _environment(),
    }


def measure(duration: float, repeats: int, count: int) -> dict:
    bodies = make_requests(count)
    parsed = [ExportMetricsServiceRequest.FromString(body) for body in bodies]
    points = statistics.mean(_points(r) for r in parsed)
    classic = [translate(r) for r in parsed]
    native = [translate(r, native_histograms=True) for r in parsed]
    samples_classic = statistics.mean(len(b) + len(b.histograms) for b in classic)
    samples_native = statistics.mean(len(b) + len(b.histograms) for b in native)
    stages: dict[str, tuple[Callable, float]] = {
        "parse": (lambda r: 0, samples_classic),
        "parse+translate classic": (lambda r: translate(r), samples_classic),
        "parse+translate native": (lambda r: translate(r, native_histograms=True), samples_native),
        "parse+translate+encode classic": (_encode(False), samples_classic),
        "parse+translate+encode native": (_encode(True), samples_native),
    }
    _run(bodies, min(duration, 0.5), stages["parse+translate+encode classic"][0])  # warm caches
    results = {}
    for name, (work, samples) in stages.items():
        rounds = [_run(bodies, duration, work) for _ in range(repeats)]
        per_s = statistics.median(rounds)
        results[name] = {
            "requests_per_s": per_s,
            "samples_per_s": per_s * samples,
            "points_per_s": per_s * points,
            "us_per_request": 1e6 / per_s,
        }
    parse_us = results["parse"]["us_per_request"]
    for name, row in results.items():
        row["us_per_sample_beyond_parse"] = (row["us_per_request"] - parse_us) / (
            samples_native if "native" in name else samples_classic
        )
    return {
        "stages": results,
        "request": {
            "bytes": statistics.mean(len(b) for b in bodies),
            "data_points": points,
            "samples_classic": samples_classic,
            "samples_native": samples_native,
            "exemplars": statistics.mean(len(b.exemplars) for b in classic),
            "dropped": sum((b.dropped for b in classic), start=type(classic[0].dropped)()),
        },
        "environment": _environment(),
    }


def _environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "protobuf": google.protobuf.__version__,
        "protobuf_implementation": api_implementation.Type(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gc_enabled": gc.isenabled(),
        "series_cache": SeriesCache is not None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="distinct requests cycled through")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--workload", choices=("app", "node"), default="app")
    parser.add_argument("--nodes", type=int, default=10, help="node workload: hosts (resources) per request")
    args = parser.parse_args(argv)
    if args.workload == "node":
        result = measure_node(args.duration, args.repeats, args.requests, args.nodes)
        if args.json:
            print(json.dumps(result, default=dict))
            return 0
        request = result["request"]
        print(
            f"request: {request['bytes']:,.0f} B, {request['nodes']} nodes, {request['data_points']:,.0f} data points"
            f" -> {request['samples']:,.0f} samples; dropped {dict(request['dropped']) or 'none'}; "
            f"cache {request['cache']}"
        )
        print(f"{'stage':28} {'us/request':>11} {'us/sample':>10}")
        for name, row in result["stages"].items():
            print(f"{name:28} {row['us_per_request']:>11,.0f} {row['us_per_sample']:>10.3f}")
        env = result["environment"]
        print(
            f"python {env['python']}, protobuf {env['protobuf']} ({env['protobuf_implementation']}), "
            f"cpus {env['cpu_affinity']}, series cache {env['series_cache']}"
        )
        return 0
    result = measure(args.duration, args.repeats, args.requests)
    if args.json:
        print(json.dumps(result, default=dict))
        return 0
    request = result["request"]
    print(
        f"request: {request['bytes']:,.0f} B, {request['data_points']:,.0f} data points -> "
        f"{request['samples_classic']:,.0f} samples (classic) / {request['samples_native']:,.0f} (native), "
        f"{request['exemplars']:.0f} exemplars; dropped {dict(request['dropped']) or 'none'}"
    )
    print(f"{'stage':34} {'samples/s':>12} {'points/s':>10} {'us/request':>11} {'us/sample beyond parse':>23}")
    for name, row in result["stages"].items():
        print(
            f"{name:34} {row['samples_per_s']:>12,.0f} {row['points_per_s']:>10,.0f} {row['us_per_request']:>11,.0f} "
            f"{row['us_per_sample_beyond_parse']:>23.2f}"
        )
    env = result["environment"]
    print(
        f"python {env['python']}, protobuf {env['protobuf']} ({env['protobuf_implementation']}), cpus {env['cpu_affinity']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
