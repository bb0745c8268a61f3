"""Live memory per buffered span in the tail sampler, two ways, on the load generator's workload.

    python bench/sampling_memory.py [--requests 600] [--mode both|tracemalloc|rss]

The spans are the load generator's (~350 serialized bytes each, 512 per request, 8 per trace, fresh trace
IDs per request); nothing is decided while they are measured (decision_wait and root_delay 1 h, max_memory
far above what is sent), so every span sent is buffered.

(a) tracemalloc, in process: a `samplers.tail.TailSampler` on a fake clock ingests the requests one by one;
    each request's bytes are released after ingest, then gc.collect(). Reported: bytes tracemalloc traces
    as allocated (and still live) after the ingest minus before, divided by the spans buffered. This is what
    the buffer itself holds: span bytes, their per-trace lists and headers, the trace dict, the schedule
    heap, the shared resource/scope parts. Beside it: the serialized size per span (request bytes / spans,
    and the mean length of a span's own bytes) and the sampler's own accounting (`buffered_bytes` / spans,
    which `max_memory` is enforced against).
(b) RSS, the agent process: `python -m agent run` pinned to core 0 with the same sampling settings; a
    warm-up of `--warmup-requests` requests, then VmRSS (from /proc/PID/status) before and after the
    load generator sends `--requests` more over OTLP/HTTP; the difference divided by the spans buffered
    meanwhile (from /metrics: headwater_sampling_spans_in_total minus kept and dropped spans;
    headwater_sampling_buffered_traces for traces). RSS also counts what the process keeps from handling
    the requests (allocator arenas, aiohttp buffers), so it reads higher than (a) and varies more.

The issue's target: at most 1.5 x the serialized size. Prints a table; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))

from ingest import RESULTS_DIR, Pinning, agent_config, rss_bytes, sampler_snapshot, start_agent  # noqa: E402
from loadgen import SPANS_PER_TRACE, make_payloads  # noqa: E402

TARGET = 1.5
HOUR = 3600.0
SAMPLING = {"decision_wait": "1h", "root_delay": "1h", "max_memory": "4GiB", "annotate": True}


def serialized_sizes(payloads: list) -> dict:
    from samplers.wire import scan_request

    spans = sum(p.spans for p in payloads)
    span_bytes = 0
    for p in payloads:
        for _resource, scopes in scan_request(p.body).groups:
            for _scope, span_list in scopes:
                span_bytes += sum(map(len, span_list))
    return {"request_bytes_per_span": sum(len(p.body) for p in payloads) / spans,
            "span_bytes_per_span": span_bytes / spans}


def measure_tracemalloc(requests: int) -> dict:
    """(a): bytes traced by tracemalloc per buffered span, the sampler in this process on a fake clock."""
    from samplers.settings import SamplingSettings
    from samplers.tail import TailSampler

    payloads = make_payloads()
    now = [1000.0]
    settings = SamplingSettings(decision_wait=HOUR, root_delay=HOUR, max_memory=1 << 40)
    sampler = TailSampler(settings, lambda: now[0])
    sampler.ingest(payloads[0].body.replace(payloads[0].marker, struct.pack(">Q", 1 << 63)))  # warm caches
    base_spans, base_traces, base_accounted = sampler.stats.spans_in, sampler.buffered_traces, sampler.buffered_bytes
    gc.collect()
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for n in range(requests):
        payload = payloads[n % len(payloads)]
        body = payload.body.replace(payload.marker, struct.pack(">Q", n))  # fresh trace IDs per request
        sampler.ingest(body)
        del body
        now[0] += 0.001
    elapsed = time.perf_counter() - started
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    spans = sampler.stats.spans_in - base_spans
    traces = sampler.buffered_traces - base_traces
    decided = sum(sampler.stats.kept_spans.values()) + sum(sampler.stats.dropped_spans.values())
    if decided:
        raise SystemExit(f"{decided} spans were decided during the measurement; nothing should be")
    return {
        "method": "tracemalloc (in process, samplers.tail.TailSampler, fake clock)",
        "requests": requests, "buffered_spans": spans, "buffered_traces": traces,
        "traced_bytes": after - before, "traced_peak_bytes": peak - before,
        "bytes_per_span": (after - before) / spans,
        "accounted_bytes_per_span": (sampler.buffered_bytes - base_accounted) / spans,
        "ingest_seconds_under_tracemalloc": elapsed,
        **serialized_sizes(payloads),
    }


def _buffered(snapshot: dict) -> float:
    return snapshot["spans_in"] - sum(snapshot["kept_spans"].values()) - sum(snapshot["dropped_spans"].values())


def _settle(pid: int, seconds: float = 1.5) -> int:
    """VmRSS once it has stopped moving (the agent may still be finishing the last requests)."""
    last = rss_bytes(pid)
    deadline = time.monotonic() + seconds * 5
    while time.monotonic() < deadline:
        time.sleep(seconds / 3)
        now = rss_bytes(pid)
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


def _send(pinning: Pinning, url: str, requests: int, connections: int) -> dict:
    command = [*pinning.prefix(pinning.load_core), sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", url,
               "--duration", "0", "--requests", str(requests), "--connections", str(connections)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def measure_rss(requests: int, warmup_requests: int, connections: int, pinning: Pinning) -> dict:
    """(b): VmRSS growth of the agent process per buffered span."""
    with tempfile.TemporaryDirectory(prefix="headwater-mem-") as tmp:
        workdir = Path(tmp)
        config, http_port, telemetry_port = agent_config(workdir, None, SAMPLING)
        agent, url, metrics_url = start_agent(pinning.prefix(pinning.agent_core), workdir, config, http_port,
                                              telemetry_port)
        pid = agent.process.pid
        try:
            idle_rss = _settle(pid)
            warm = _send(pinning, url, warmup_requests, connections)
            rss0 = _settle(pid)
            m0 = sampler_snapshot(metrics_url)
            sent = _send(pinning, url, requests, connections)
            rss1 = _settle(pid)
            m1 = sampler_snapshot(metrics_url)
            if agent.process.poll() is not None:
                raise SystemExit(f"the agent exited:\n{agent.log_tail()}")
        finally:
            agent.stop()
    spans = _buffered(m1) - _buffered(m0)
    if spans != sent["spans_accepted"]:
        print(f"warning: {sent['spans_accepted']} spans accepted but {spans} buffered", file=sys.stderr)
    return {
        "method": "RSS (agent process, VmRSS from /proc/PID/status, after - before)",
        "requests": requests, "warmup_requests": warmup_requests, "warmup_spans": warm["spans_accepted"],
        "buffered_spans": spans, "buffered_traces": m1["buffered_traces"] - m0["buffered_traces"],
        "rss_idle_bytes": idle_rss, "rss_before_bytes": rss0, "rss_after_bytes": rss1,
        "bytes_per_span": (rss1 - rss0) / spans,
        "accounted_bytes_per_span": (m1["buffered_bytes"] - m0["buffered_bytes"]) / spans,
        "refused_requests": sent["refused"], "errors": sent["errors"],
    }


def report(result: dict) -> str:
    serialized = result["serialized"]
    base = serialized["request_bytes_per_span"]
    rows = [f"workload: {serialized['request_bytes_per_span']:.1f} serialized B/span in the request "
            f"({serialized['span_bytes_per_span']:.1f} B of span message itself), 512 spans/request, "
            f"{SPANS_PER_TRACE} spans/trace; target <= {TARGET} x serialized = {TARGET * base:.0f} B/span",
            "",
            f"{'measurement':<46}  {'spans':>9}  {'B/span':>7}  {'range':>9}  {'x serialized':>12}  "
            f"{'sampler accounts':>16}"]
    for key in ("tracemalloc", "rss"):
        runs = result.get(key)
        if not runs:
            continue
        per_span = statistics.median(r["bytes_per_span"] for r in runs)
        accounted = statistics.median(r["accounted_bytes_per_span"] for r in runs)
        label = {"tracemalloc": "(a) tracemalloc: TailSampler in process",
                 "rss": "(b) VmRSS growth: agent process, OTLP/HTTP"}[key]
        values = [r["bytes_per_span"] for r in runs]
        rows.append(f"{label:<46}  {runs[0]['buffered_spans']:>9,.0f}  {per_span:>7.0f}  "
                    f"{min(values):>4.0f}-{max(values):<4.0f}  {per_span / base:>11.2f}x  {accounted:>11.0f} B/span")
    rows.append(f"(B/span: median of {result['settings']['repeats']} runs; 'sampler accounts': its buffered_bytes "
                f"per span, what max_memory is enforced against)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["both", "tracemalloc", "rss"], default="both")
    parser.add_argument("--requests", type=int, default=600, help="512-span requests buffered (default 307,200 spans)")
    parser.add_argument("--warmup-requests", type=int, default=40, help="(b) requests sent before the RSS baseline")
    parser.add_argument("--connections", type=int, default=4, help="(b) load-generator connections")
    parser.add_argument("--repeats", type=int, default=3, help="times each measurement runs (median reported)")
    parser.add_argument("--no-pin", action="store_true", help="(b) do not pin the agent and load generator")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON result")
    args = parser.parse_args(argv)

    result: dict = {"benchmark": "sampling_memory", "settings": {k: str(v) if isinstance(v, Path) else v
                                                                 for k, v in vars(args).items()},
                    "sampling": SAMPLING, "serialized": serialized_sizes(make_payloads())}
    if args.mode in ("both", "tracemalloc"):
        result["tracemalloc"] = []
        for i in range(args.repeats):
            print(f"(a) tracemalloc {i + 1}/{args.repeats}: {args.requests} requests ...", file=sys.stderr, flush=True)
            result["tracemalloc"].append(measure_tracemalloc(args.requests))
            gc.collect()
    if args.mode in ("both", "rss"):
        pinning = Pinning(not args.no_pin)
        result["rss"] = []
        for i in range(args.repeats):
            print(f"(b) agent RSS {i + 1}/{args.repeats}: {args.requests} requests ...", file=sys.stderr, flush=True)
            result["rss"].append(measure_rss(args.requests, args.warmup_requests, args.connections, pinning))
    print(report(result))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"sampling-memory-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
