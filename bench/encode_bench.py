"""Encoding plus compression on one core: samples/s from the columns the batcher holds to the bytes on the
wire, for every wire format, on the node-exporter-shaped workload of `bench/remote_write.py`.

    taskset -c 0 python bench/encode_bench.py [--nodes 10] [--per-request 1,5] [--duration 3] [--repeats 5]

The batches are translated once up front (translation is not measured here: `bench/translate_bench.py`
does that) from the workload's OTLP requests, `--per-request` ticks per request (1 = one sample per series
per request, as a 1 s flush at a 1 s interval; 5 = a 5 s flush). Each format's encoder is one connection's:
its state (the compact dictionary, caches) persists across requests, and every request is committed as if
the receiver acknowledged it, so the steady state is what is measured. Reported: median samples/s over
`--repeats` runs of `--duration` seconds of CPU time, and body bytes per sample in the steady state.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_workload import Workload
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from exporters.remote_write.batcher import Batcher
from exporters.remote_write.formats import new_encoder
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.series_cache import SeriesCache
from exporters.remote_write.translate import translate

FORMATS = ("compact", "rw2", "vm", "rw1")


def batches(nodes: int, per_request: int, count: int) -> list[SampleBatch]:
    workload = Workload(nodes, seed=1)
    cache = SeriesCache()
    now = time.time() - 3600
    out = []
    for request in range(count):
        batcher = Batcher(10**9, 1 << 40, 5.0)
        for tick in range(per_request):
            workload.tick(now + (request * per_request + tick) + 0.003 * (tick % 3))
            otlp = ExportMetricsServiceRequest.FromString(workload.otlp_body())
            batcher.add(translate(otlp, cache=cache))
        out.extend(batch for batch, _ in batcher.cut())
    return out


def measure(protocol: str, requests: list[SampleBatch], duration: float) -> tuple[float, float]:
    """(samples/s of CPU time, body bytes per sample after the first request)."""
    encoder = new_encoder(protocol)
    samples = body = 0
    started = time.process_time()
    rounds = 0
    while True:
        for i, batch in enumerate(requests):
            encoded = encoder.encode(batch)
            if encoded.commit is not None:
                encoded.commit()
            if rounds == 0 and i > 0:
                body += len(encoded.body)
            samples += batch.samples
        rounds += 1
        elapsed = time.process_time() - started
        if elapsed >= duration:
            break
    steady = sum(b.samples for b in requests[1:])
    return samples / elapsed, body / steady if steady else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--per-request", default="1,5", help="samples per series per request, comma-separated")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args(argv)
    print(f"{'format':<10}{'samples/req':>12}{'samples/s (median)':>20}{'range':>24}{'body B/sample':>15}")
    for per_request in (int(p) for p in args.per_request.split(",")):
        requests = batches(args.nodes, per_request, args.requests)
        per_batch = statistics.median(b.samples for b in requests)
        for protocol in args.formats.split(","):
            runs = [measure(protocol, requests, args.duration) for _ in range(args.repeats)]
            rates = sorted(rate for rate, _ in runs)
            rng = f"{rates[0]:,.0f}-{rates[-1]:,.0f}"
            print(f"{protocol:<10}{per_batch:>12,.0f}{statistics.median(rates):>20,.0f}{rng:>24}{runs[0][1]:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
