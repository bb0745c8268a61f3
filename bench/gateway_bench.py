"""The gateway's receive path on one core: decompress + decode (+ commit for compact), in microseconds per
sample, in the steady state (the session or decoder has already seen every series).

    taskset -c 0 python bench/gateway_bench.py [--nodes 10] [--per-request 1,5] [--flushes 12] [--repeats 7]
    taskset -c 0 python bench/gateway_bench.py --format compact,rw1,vm,rw2
    taskset -c 0 python bench/gateway_bench.py --profile /tmp/gateway.prof   # cProfile of one run, not a result

Why: the project's goal is node + gateway together <= 2.6 CPU seconds per million samples, and the gateway
pays for decoding every node's compact requests before its own batcher and encoder see a sample. This
measures that decoding alone, on the same node-exporter-shaped workload `bench/encode_bench.py` encodes:
`--nodes` nodes (`Workload(nodes, seed=1)`), translated with one `SeriesCache`, `--per-request` ticks per
flush (1 = one sample per series per request, as a 1 s flush; 5 = a 5 s flush), cut into requests by the
exporter's batcher at its defaults. One `CompactEncoder` (as one node connection) encodes every request in
order and each is committed as acknowledged, so the bodies are what a gateway receives from a sender.

`--format rw1,vm,rw2`: the same requests encoded by our own encoders of those formats, decoded by a decoder
from `new_decoder` (one per format, as the gateway holds), after the body's decompress (snappy, or zstd for vm).

Each repeat builds fresh `CompactSessions` (or a fresh decoder), replays the first flush's requests unmeasured (they define every
series), then measures the CPU time (`time.process_time`) of the remaining requests' decompress (the
receiver's `decompress`), `decode` and commit. Reported: the median of `--repeats` over the range, in
microseconds per sample, and the body bytes per sample of the measured requests.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_bench import cut, flushes

from exporters.remote_write.compact_session import CompactSessions
from exporters.remote_write.encoding import decompress
from exporters.remote_write.formats import codec_for, new_decoder, new_encoder

MAX_BODY = 32 << 20


def requests_of(nodes: int, per_request: int, count: int, max_samples: int, max_bytes: int, protocol: str = "compact"
                ) -> tuple[list[tuple[bytes, dict[str, str], int]], int]:
    """Every request one sender sends for `count` flushes, as (body, headers, samples), and how many of them
    belong to the first flush (the warm-up that defines the series)."""
    encoder = new_encoder(protocol)
    out: list[tuple[bytes, dict[str, str], int]] = []
    warmup = 0
    for index, flush in enumerate(flushes(nodes, per_request, count)):
        for batch in cut(flush, max_samples, max_bytes):
            encoded = encoder.encode(batch)
            if encoded.commit is not None:
                encoded.commit()
            out.append((encoded.body, dict(encoded.headers), batch.samples))
        if index == 0:
            warmup = len(out)
    return out, warmup


def measure_stateless(protocol: str, requests: list[tuple[bytes, dict[str, str], int]], warmup: int,
                      profiler: cProfile.Profile | None = None) -> float:
    """Microseconds of CPU per sample for decompress + decode of the requests after `warmup` by one fresh
    rw1 / vm / rw2 decoder (under `profiler` if given)."""
    decoder, codec = new_decoder(protocol), codec_for(protocol, "auto")
    for body, headers, _ in requests[:warmup]:
        decoder.decode(decompress(codec, body, MAX_BODY), headers)
    samples = sum(n for _, _, n in requests[warmup:])
    if profiler is not None:
        profiler.enable()
    started = time.process_time()
    for body, headers, _ in requests[warmup:]:
        decoder.decode(decompress(codec, body, MAX_BODY), headers)
    if profiler is not None:
        profiler.disable()
    return (time.process_time() - started) / samples * 1e6


def measure(requests: list[tuple[bytes, dict[str, str], int]], warmup: int,
            profiler: cProfile.Profile | None = None, protocol: str = "compact") -> float:
    """Microseconds of CPU per sample for decompress + decode + commit of the requests after `warmup` (under
    `profiler` if given)."""
    if protocol != "compact":
        return measure_stateless(protocol, requests, warmup, profiler)
    sessions = CompactSessions()
    for body, headers, _ in requests[:warmup]:
        _, commit = sessions.decode(decompress("zstd", body, MAX_BODY), headers)
        commit()
    samples = sum(n for _, _, n in requests[warmup:])
    if profiler is not None:
        profiler.enable()
    started = time.process_time()
    for body, headers, _ in requests[warmup:]:
        _, commit = sessions.decode(decompress("zstd", body, MAX_BODY), headers)
        commit()
    if profiler is not None:
        profiler.disable()
    return (time.process_time() - started) / samples * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--per-request", default="1,5", help="samples per series per request, comma-separated")
    parser.add_argument("--flushes", type=int, default=12, help="the first is the unmeasured warm-up")
    parser.add_argument("--max-samples", type=int, default=10_000, help="the batcher's limit (exporter default)")
    parser.add_argument("--max-bytes", type=int, default=4 << 20, help="the batcher's limit (exporter default)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--format", default="compact", help="wire formats, comma-separated: compact, rw1, vm, rw2")
    parser.add_argument("--profile", help="write a cProfile of one measured run here and print its top entries")
    args = parser.parse_args(argv)
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) != 1:
        print("note: not pinned to one core (taskset -c 0 ...): numbers are not comparable", file=sys.stderr)
    print(f"{'format':>8}{'samples/series/req':>18}{'requests':>10}{'samples/req':>12}{'us/sample (median)':>20}"
          f"{'range':>16}{'body B/sample':>15}")
    for protocol, per_request in ((f, int(p)) for f in args.format.split(",") for p in args.per_request.split(",")):
        requests, warmup = requests_of(args.nodes, per_request, args.flushes, args.max_samples, args.max_bytes,
                                       protocol)
        measured = requests[warmup:]
        samples = sum(n for _, _, n in measured)
        if args.profile:
            profiler = cProfile.Profile()
            measure(requests, warmup, profiler, protocol)
            profiler.dump_stats(f"{args.profile}.{protocol}.{per_request}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        costs = sorted(measure(requests, warmup, protocol=protocol) for _ in range(args.repeats))
        body = sum(len(b) for b, _, _ in measured) / samples
        print(f"{protocol:>8}{per_request:>18}{len(measured):>10}{samples / len(measured):>12,.0f}"
              f"{statistics.median(costs):>20.3f}{f'{costs[0]:.3f}-{costs[-1]:.3f}':>16}{body:>15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
