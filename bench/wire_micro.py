"""Micro-benchmark of samplers/wire.py beside protobuf (upb) on the same payloads, in one run.

    python bench/wire_micro.py [--payloads 16] [--repeats 7] [--min-time 0.2]

The payloads are bench/loadgen.py's: 512-span ExportTraceServiceRequests of about 350 B/span. Each row is
microseconds per span, the fastest of `--repeats` timings, each looping over every payload for at least
`--min-time` seconds:

  wire: scan_request            cut the request into resource/scope/span bytes, check IDs
  wire: span_facts (all spans)  the nine decision fields of every span
  wire: scan + span_facts       the two together: what the sampler pays per span on ingest
  wire: find_attribute          a key no span has (the bytes prefilter answers), and request.id, which
                                every span has as its last attribute (the longest walk)
  wire: frame_request           re-frame every span of the request
  protobuf: FromString          parse only
  protobuf: FromString + per-span SerializeToString   what a pipeline buffering span bytes would pay
  protobuf: FromString + read facts + per-span Serialize   the same with the nine fields read in Python

Pin it to one core for steadier numbers: taskset -c 0 python bench/wire_micro.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import google.protobuf
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from loadgen import make_payloads  # noqa: E402

from samplers.wire import find_attribute, frame_request, scan_request, span_facts  # noqa: E402


def _time(work, bodies: list, spans: int, min_time: float, repeats: int) -> float:
    """µs per span of `work(body)` over all bodies: the fastest of `repeats` timings (as timeit advises,
    slower runs measure interference from other processes, not the code)."""
    results = []
    for _ in range(repeats):
        rounds = 0
        started = time.perf_counter()
        while True:
            for body in bodies:
                work(body)
            rounds += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_time:
                break
        results.append(elapsed * 1e6 / (rounds * spans))
    return min(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2)
    args = parser.parse_args(argv)

    payloads = make_payloads(args.payloads)
    bodies = [p.body for p in payloads]
    spans = sum(p.spans for p in payloads)
    scanned = {body: scan_request(body) for body in bodies}
    span_lists = {body: [sp for _r, scopes in s.groups for _s, sps in scopes for sp in sps]
                  for body, s in scanned.items()}
    groups = {body: s.groups for body, s in scanned.items()}
    parse = ExportTraceServiceRequest.FromString

    def facts_all(body):
        for span in span_lists[body]:
            span_facts(span)

    def scan_and_facts(body):
        for _r, scopes in scan_request(body).groups:
            for _s, sps in scopes:
                for span in sps:
                    span_facts(span)

    def find_absent(body):
        for span in span_lists[body]:
            find_attribute(span, b"sampling.priority")

    def find_last(body):
        for span in span_lists[body]:
            find_attribute(span, b"request.id")

    def pb_parse_serialize(body):
        for rs in parse(body).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.SerializeToString()

    def pb_parse_read_serialize(body):
        for rs in parse(body).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    (span.trace_id, span.span_id, span.parent_span_id, span.trace_state, span.name, span.kind,
                     span.start_time_unix_nano, span.end_time_unix_nano, span.status.code)
                    span.SerializeToString()

    rows = [
        ("wire: scan_request", scan_request),
        ("wire: span_facts (all spans)", facts_all),
        ("wire: scan + span_facts", scan_and_facts),
        ("wire: find_attribute, key absent", find_absent),
        ("wire: find_attribute, key is the last attribute", find_last),
        ("wire: frame_request", lambda body: frame_request(groups[body])),
        ("protobuf: FromString", parse),
        ("protobuf: FromString + per-span SerializeToString", pb_parse_serialize),
        ("protobuf: FromString + read facts + per-span Serialize", pb_parse_read_serialize),
    ]
    results = {}
    for label, work in rows:
        us = _time(work, bodies, spans, args.min_time, args.repeats)
        results[label] = us
        print(f"{label:<58} {us:7.3f} µs/span  {1 / us:6.2f} M spans/s", flush=True)
    print(json.dumps({"us_per_span": results, "bytes_per_span": sum(map(len, bodies)) / spans,
                      "spans_per_request": payloads[0].spans, "python": platform.python_version(),
                      "protobuf": google.protobuf.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
