"""The floor for span ingest: parse and re-serialize the load generator's payloads with protobuf alone.

    taskset -c 0 python bench/baseline.py [--duration 3] [--repeats 3]

No network, no event loop, no sampling: for each 512-span ExportTraceServiceRequest, ParseFromString then
SerializeToString, back to back on one core. An agent that receives, buffers and re-exports every span can
hardly beat this; ingest.py reports the agent's throughput as a fraction of it. Two more figures for context:
parse only, and parse + read each span's three IDs from Python + serialize (the least a trace pipeline that
parses touches). Prints one JSON object: {"parse_serialize_spans_per_s": median, ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import google.protobuf
from google.protobuf.internal import api_implementation
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import DEFAULT_SEED, make_payloads  # noqa: E402


def _rate(payloads: list, duration: float, serialize: bool, touch: bool = False) -> float:
    spans = 0
    started = time.perf_counter()
    deadline = started + duration
    parse = ExportTraceServiceRequest.FromString
    while time.perf_counter() < deadline:
        for payload in payloads:
            message = parse(payload.body)
            if touch:  # what any trace pipeline reads: each span's trace ID, span ID and parent ID
                for resource_spans in message.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            span.trace_id, span.span_id, span.parent_span_id
            if serialize:
                message.SerializeToString()
            spans += payload.spans
    return spans / (time.perf_counter() - started)


def measure(duration: float, repeats: int, seed: int = DEFAULT_SEED) -> dict:
    payloads = make_payloads(seed=seed)
    _rate(payloads, min(duration, 0.5), serialize=True)  # warm up
    full = [_rate(payloads, duration, serialize=True) for _ in range(repeats)]
    parse_only = [_rate(payloads, duration, serialize=False) for _ in range(repeats)]
    touched = [_rate(payloads, duration, serialize=True, touch=True) for _ in range(repeats)]
    return {
        "parse_serialize_spans_per_s": statistics.median(full),
        "parse_only_spans_per_s": statistics.median(parse_only),
        "parse_read_ids_serialize_spans_per_s": statistics.median(touched),
        "parse_serialize_rounds": full,
        "parse_only_rounds": parse_only,
        "bytes_per_span": sum(len(p.body) for p in payloads) / sum(p.spans for p in payloads),
        "protobuf": google.protobuf.__version__,
        "protobuf_implementation": api_implementation.Type(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.duration, args.repeats, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
