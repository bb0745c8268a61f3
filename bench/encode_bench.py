"""Batching, encoding and compression on one core: the CPU a sample costs from translated columns to the bytes
on the wire, for every wire format, on the node-exporter-shaped workload of `bench/remote_write.py`.

    taskset -c 0 python bench/encode_bench.py [--nodes 10] [--per-request 1,5] [--duration 3] [--repeats 5]

The ticks are translated once up front (translation is not measured here: `bench/translate_bench.py`
does that) from the workload's OTLP requests, `--per-request` ticks per flush (1 = one sample per series
per request, as a 1 s flush at a 1 s interval; 5 = a 5 s flush). Two stages are measured apart:

- batcher: `Batcher.add` of a flush's ticks plus `Batcher.cut` into requests, at the exporter's defaults
  (`--max-samples` 10,000, `--max-bytes` 4 MiB), in microseconds per sample;
- encoders: each format's encoder on the requests that cut produced. Each encoder is one connection's: its
  state (the compact dictionary, caches) persists across requests, and every request is committed as if the
  receiver acknowledged it, so the steady state is what is measured.

`--pieces N --decoded` makes each piece what a gateway's batcher gets from one node: the node's flush of
that piece (its `--per-request` ticks) cut by a node's batcher, encoded by the node's own compact encoder and
decoded by the gateway's `CompactSessions` (each request committed on both sides), so each batch is grouped
as a decoded compact request is (series contiguous, in time order, one tuple object per series from the
session dictionary) and marked `grouped`; `--shuffle` then changes the order of the nodes every flush.

Reported: medians over `--repeats` runs of `--duration` seconds of CPU time (samples/s and microseconds per
sample), and body bytes per sample in the steady state.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_workload import Workload
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from exporters.remote_write import encoding
from exporters.remote_write.batcher import Batcher
from exporters.remote_write.compact_session import CompactSessions
from exporters.remote_write.formats import new_encoder
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.series_cache import SeriesCache
from exporters.remote_write.translate import translate

FORMATS = ("compact", "rw2", "vm", "rw1")


def flushes(
    nodes: int, per_request: int, count: int, pieces: int = 1, shuffle: bool = False, decoded: bool = False,
    node_ticks: Sequence[int] = (),
) -> list[list[SampleBatch]]:
    """`count` flushes of `per_request` translated ticks each, as the exporter hands them to its batcher;
    `pieces` > 1 hands each tick over in that many batches (a gateway receives one request per node), in an
    order that changes from tick to tick if `shuffle` (as requests from many nodes race). `decoded`: each
    piece's ticks of a flush reach the batcher as a gateway gets them, through a node's batcher and compact
    encoder and the gateway's decoder (`node_requests`), in an order that changes every flush if `shuffle`;
    each node's flushes take `node_ticks` ticks in turn (a flush of the gateway's ends one early; default: the
    gateway's `per_request`), so with `per_request` 2 and `node_ticks` (1, 1, 2) a gateway's flush holds two of
    each node's one-tick requests, then one flush of two ticks (two interleaved ticks, cut in two requests):
    what a gateway gets at a 1 s flush on both sides, as the node's flushes catch one tick or two."""
    cycle = itertools.cycle(node_ticks or (per_request,))
    rng = random.Random(7)
    workload = Workload(nodes, seed=1)
    cache = SeriesCache()
    now = time.time() - 3600
    senders = [new_encoder("compact") for _ in range(pieces)] if decoded else []
    sessions = CompactSessions()
    out = []
    for flush in range(count):
        ticks = []
        for tick in range(per_request):
            workload.tick(now + (flush * per_request + tick) + 0.003 * (tick % 3))
            otlp = ExportMetricsServiceRequest.FromString(workload.otlp_body())
            batch = translate(otlp, cache=cache)
            step = -(-len(batch.values) // pieces)
            parts = [
                SampleBatch(
                    labels=batch.labels[start:start + step],
                    values=batch.values[start:start + step],
                    timestamps=batch.timestamps[start:start + step],
                    sizes=batch.sizes[start:start + step],
                    start_timestamps=batch.start_timestamps[start:start + step],
                    metadata=batch.metadata,
                )
                for start in range(0, len(batch.values), step)
            ]
            if shuffle and not decoded:
                rng.shuffle(parts)
            ticks += parts
        if decoded:
            node_flushes, start = [], 0
            while start < len(ticks):
                step = next(cycle) * pieces  # the parts of one node flush
                node_flushes.append(ticks[start:start + step])
                start += step
            ticks = [batch for parts in node_flushes for batch in node_requests(parts, pieces, senders, sessions)]
            if shuffle:
                rng.shuffle(ticks)
        out.append(ticks)
    return out


def node_requests(
    parts: list[SampleBatch], pieces: int, senders: list[encoding.Encoder], sessions: CompactSessions
) -> list[SampleBatch]:
    """What a gateway decodes from one flush of `pieces` nodes, given each tick's `parts` (piece p of every tick
    is node p's): each node's flush cut by its own batcher at the exporter's defaults, compact-encoded by its
    sender and decoded by `sessions`, both sides committed. The decoder marks each batch `grouped` (series
    contiguous per reference, in time order, one session tuple per series)."""
    if len(parts) % pieces:
        raise ValueError(f"a tick came in {len(parts)} parts, not a multiple of {pieces} nodes")
    out = []
    for node, sender in enumerate(senders):
        node_flush = parts[node::pieces]
        for request in cut(node_flush, 10_000, 4 << 20):
            encoded = sender.encode(request)
            data = encoding.decompress(encoded.headers["Content-Encoding"], encoded.body, 1 << 30)
            batch, commit = sessions.decode(data, encoded.headers)
            commit()
            if encoded.commit is not None:
                encoded.commit()
            assert batch.grouped, "the gateway's decoder marks its batches grouped"
            out.append(batch)
    return out


def cut(ticks: list[SampleBatch], max_samples: int, max_bytes: int) -> list[SampleBatch]:
    batcher = Batcher(max_samples, max_bytes, 5.0)
    requests = []
    for tick in ticks:
        requests.extend(batch for batch, _ in batcher.add(tick))
    requests.extend(batch for batch, _ in batcher.cut())
    return requests


def measure_batcher(flushes: list[list[SampleBatch]], max_samples: int, max_bytes: int, duration: float) -> float:
    """Microseconds of CPU per sample for `Batcher.add` of every tick of a flush plus its `cut`, one batcher
    for every flush as the exporter keeps one."""
    samples = 0
    batcher = Batcher(max_samples, max_bytes, 5.0)
    started = time.process_time()
    while True:
        for ticks in flushes:
            for tick in ticks:
                batcher.add(tick)
                samples += tick.samples
            batcher.cut()
        elapsed = time.process_time() - started
        if elapsed >= duration:
            break
    return elapsed / samples * 1e6


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
    parser.add_argument("--flushes", type=int, default=12)
    parser.add_argument("--max-samples", type=int, default=10_000, help="the batcher's limit (exporter default)")
    parser.add_argument("--max-bytes", type=int, default=4 << 20, help="the batcher's limit (exporter default)")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument(
        "--pieces", type=int, default=1,
        help="batches each tick reaches the batcher in (10: one per node, as a gateway gets them)",
    )
    parser.add_argument("--shuffle", action="store_true", help="those batches in a different order every tick")
    parser.add_argument(
        "--decoded", action="store_true",
        help="each piece is a node's flush as the gateway decodes it from compact requests (grouped batches)",
    )
    parser.add_argument(
        "--node-ticks", default="",
        help="with --decoded: ticks per node flush, comma-separated, taken in turn (default: --per-request); "
             "1,1,2 with --per-request 2 is a gateway whose 1 s flush holds two of a node's 1 s requests, or one "
             "that caught two ticks",
    )
    args = parser.parse_args(argv)
    print(
        f"{'stage':<10}{'ticks/flush':>12}{'samples/req':>12}{'samples/s (median)':>20}{'range':>24}"
        f"{'us/sample':>10}{'body B/sample':>15}"
    )
    for per_request in (int(p) for p in args.per_request.split(",")):
        ticks = flushes(args.nodes, per_request, args.flushes, args.pieces, args.shuffle, args.decoded,
                        [int(t) for t in args.node_ticks.split(",") if t])
        requests = [batch for flush in ticks for batch in cut(flush, args.max_samples, args.max_bytes)]
        per_batch = statistics.median(b.samples for b in requests)
        stages = ["batcher", *filter(None, args.formats.split(","))]  # --formats "": the batcher only
        for stage in stages:
            if stage == "batcher":
                costs = [measure_batcher(ticks, args.max_samples, args.max_bytes, args.duration)
                         for _ in range(args.repeats)]
                rates = sorted(1e6 / cost for cost in costs)
                body = ""
            else:
                runs = [measure(stage, requests, args.duration) for _ in range(args.repeats)]
                rates = sorted(rate for rate, _ in runs)
                body = f"{runs[0][1]:.2f}"
            rng = f"{rates[0]:,.0f}-{rates[-1]:,.0f}"
            median = statistics.median(rates)
            print(
                f"{stage:<10}{per_request:>12}{per_batch:>12,.0f}{median:>20,.0f}{rng:>24}{1e6 / median:>10.3f}"
                f"{body:>15}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
