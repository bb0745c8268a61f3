"""The disk queue's record format for remote-write batches (exporters/remote_write/records.py) on one core: CPU
to encode and decode a record per sample, and its bytes per sample, on the node-exporter-shaped workload.

    taskset -c 0 python bench/records_bench.py [--nodes 10] [--per-request 1,5] [--duration 1] [--repeats 3]

The batches are what the exporter's batcher cuts from the workload's translated flushes (`flushes` and `cut`
of bench/encode_bench.py, at the exporter's defaults), `--per-request` samples per series per batch (1: every
series once per batch, the hard case; 5: a 5 s flush). One writer encodes them all over and over, as one
segment would (so every label set is defined by the first pass and referred to after it); one reader that
learnt the first pass decodes the second over and over.

Reported per case, medians over `--repeats` runs of `--duration` seconds of CPU time:

- encode, decode: microseconds per sample in that steady state; `--memo 0` also measures the writer without
  its memory of recent label columns (every label looked up by identity, as for batches that do not repeat
  a recent column: a gateway's, or a node's whose series changed);
- B/sample: record bytes per sample in the steady state;
- first: the segment's first record (a new writer; it defines every label set and metadata entry it uses):
  microseconds per sample to encode it, to `learn` it, and its bytes per sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_bench import cut, flushes

from exporters.remote_write.records import SampleBatchCodec
from exporters.remote_write.series import SampleBatch


def per_sample(work: Callable[[], int], duration: float) -> float:
    """Microseconds of CPU per sample of `work` (which returns the samples it handled), run for `duration`."""
    samples = 0
    started = time.process_time()
    while True:
        samples += work()
        elapsed = time.process_time() - started
        if elapsed >= duration:
            return elapsed / samples * 1e6


def measure(codec: SampleBatchCodec, batches: list[SampleBatch], duration: float) -> dict[str, float]:
    samples = sum(len(b) for b in batches)
    writer = codec.writer()
    first_pass = [writer.encode(b) for b in batches]
    steady = [writer.encode(b) for b in batches]

    def encode() -> int:
        for batch in batches:
            writer.encode(batch)
        return samples

    reader = codec.reader()
    for record in first_pass:
        reader.learn(record)

    def decode() -> int:
        for record in steady:
            reader.decode(record)
        return samples

    def encode_first() -> int:
        codec.writer().encode(batches[0])
        return len(batches[0])

    def learn_first() -> int:
        codec.reader().learn(first_pass[0])
        return len(batches[0])

    return {
        "encode": per_sample(encode, duration),
        "decode": per_sample(decode, duration),
        "bytes": sum(map(len, steady)) / samples,
        "first_encode": per_sample(encode_first, duration / 4),
        "first_learn": per_sample(learn_first, duration / 4),
        "first_bytes": len(first_pass[0]) / len(batches[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--per-request", default="1,5", help="samples per series per batch, comma-separated")
    parser.add_argument("--flushes", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default="2", help="zstd levels to measure, comma-separated (2: the default)")
    parser.add_argument("--memo", default="8,0", help="label columns a writer remembers, comma-separated cases")
    args = parser.parse_args(argv)
    print(
        f"{'per series':>10}{'samples/batch':>14}{'level':>6}{'memo':>5}{'encode us':>10}{'decode us':>10}"
        f"{'B/sample':>9}{'first: encode us':>17}{'learn us':>9}{'B/sample':>9}"
    )
    for per_request in (int(p) for p in args.per_request.split(",")):
        batches = [b for flush in flushes(args.nodes, per_request, args.flushes) for b in cut(flush, 10_000, 4 << 20)]
        per_batch = statistics.median(len(b) for b in batches)
        for level in (int(v) for v in args.levels.split(",")):
            for memo in (int(m) for m in args.memo.split(",")):
                runs = [measure(SampleBatchCodec(level, memo), batches, args.duration) for _ in range(args.repeats)]
                m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                print(
                    f"{per_request:>10}{per_batch:>14,.0f}{level:>6}{memo:>5}{m['encode']:>10.3f}{m['decode']:>10.3f}"
                    f"{m['bytes']:>9.2f}{m['first_encode']:>17.3f}{m['first_learn']:>9.3f}{m['first_bytes']:>9.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
