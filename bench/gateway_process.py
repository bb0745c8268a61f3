"""An agent process alone on its core: CPU seconds per million samples of `python -m agent run`, either a
gateway (`--side gateway`, the default: the remote-write receiver taking one node's compact requests and
forwarding them as rw1 to a receiver that answers 204 at once) or a node (`--side node`: OTLP/HTTP in from
`bench/node_workload.py`, compact out to a gateway that forwards rw1 to that receiver).

    python bench/gateway_process.py [--flush 1] [--requests 61] [--repeats 3] [--protocol rw1]
    python bench/gateway_process.py --profile /tmp/gw   # py-spy of the gateway (alone on its core), not a result
    python bench/gateway_process.py --side node [--flush 1] [--duration 60] [--repeats 3] [--node-repo DIR]
    python bench/gateway_process.py --side node --profile /tmp/node   # py-spy of the node agent

Why: `bench/remote_write.py` measures node + gateway against a real Prometheus, but there the gateway shares
a core with the generator, the proxy and Prometheus, and a 20 s window at one request a second is ~0.1 CPU s
of gateway: too little and too noisy to see what a change to the gateway's path is worth. Here the gateway
has a core to itself (`taskset`), the driver and the null receiver share the other, and the window is as long
as you like. The requests are the ones `bench/gateway_bench.py` replays (one sender, the node-exporter-shaped
workload, `--nodes` nodes, one tick per request), posted one per `--interval` seconds, each after the
previous was answered; the gateway flushes every `--flush` seconds. CPU is the gateway's schedstat
(nanoseconds), minus its idle rate measured before the load for `--idle` seconds.

`--side node`: the node agent (OTLP/HTTP receiver, one remote-write exporter `protocol: compact`, flushing every
`--flush` seconds, every other setting at its default) has core 0 to itself; `bench/node_workload.py`
(`--nodes` x 523 series, one OTLP/HTTP protobuf request of every node per `--interval`), the gateway agent
(compact in, rw1 out) and the 204 receiver share core 1. After `--warmup` seconds of load the window is
`--duration` seconds; samples are the workload's accepted OTLP samples in the window (counted when the node's
200 arrives), CPU is the node's schedstat in it, minus its idle rate. Each repeat starts every process afresh.
`--node-repo DIR` runs the node agent from another checkout (the gateway and everything else from this one),
so old and new node code can be compared in alternating runs. The JSON line per repeat also gives what the
node reported delivered (`headwater_remote_write_samples_sent_total`) and the files its state directory wrote
once the load ran (`node_queue_writes`; none when the disk queue's write grace held: no segment, no position).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import requests_of
from remote_write import Pinning, free_ports, python_env, tree_cpu_ns, wait_ready, start, ensure_py_spy, REPO_ROOT


class NullReceiver:
    """Answers every write with 204 and counts bodies; it never decodes (its CPU is not measured, but it
    shares a core with the driver)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        self.bytes += len(body)
        return web.Response(status=204)


async def start_sink() -> tuple[NullReceiver, web.AppRunner, int]:
    """The null receiver, listening on a free port: it, its runner (to clean up) and the port."""
    sink = NullReceiver()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/api/v1/write", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return sink, runner, port


def gateway_config(state_dir: Path, args: argparse.Namespace, sink_port: int,
                   **exporter: object) -> tuple[dict, int, int]:
    """A gateway agent's config, its remote-write port and its telemetry port: the remote-write receiver and its
    OTLP receivers on free ports (the default ones may be another bench's on a shared machine), one exporter to the
    null receiver in `args.protocol` flushing every `args.flush` (`exporter`: more of its settings)."""
    gw_port, telemetry_port, gw_grpc, gw_http = free_ports(4)
    config = {
        "state_dir": str(state_dir),
        "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{gw_port}"},
                      "otlp": {"grpc": {"endpoint": f"127.0.0.1:{gw_grpc}"},
                               "http": {"endpoint": f"127.0.0.1:{gw_http}"}}},
        "exporters": {"remote_write": [{"name": "out", "url": f"http://127.0.0.1:{sink_port}/api/v1/write",
                                        "protocol": args.protocol,
                                        "batch": {"flush_interval": f"{args.flush:g}s"}, **exporter}]},
        "pipelines": {"metrics": {"exporters": ["out"]}},
        "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "log_level": "warning"},
    }
    return config, gw_port, telemetry_port


async def drive(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """The gateway side: one gateway agent on its core fed pre-encoded compact requests."""
    requests, warmup = requests_of(args.nodes, 1, args.requests, 10_000, 4 << 20, "compact")
    sink, runner, sink_port = await start_sink()
    pinning = Pinning(True)
    if pinning.enabled:
        os.sched_setaffinity(0, {pinning.other_core})
    # the workload's timestamps start an hour back
    config, gw_port, telemetry_port = gateway_config(workdir / "state", args, sink_port,
                                                     sender={"sample_age_limit": "1000h"})
    (workdir / "gateway.yaml").write_text(json.dumps(config))
    results = []
    for repeat in range(args.repeats):
        gateway, _ = start(f"gateway-{repeat}", [*pinning.sender(), sys.executable, "-m", "agent", "run", "-c",
                                                 str(workdir / "gateway.yaml")], workdir, env=python_env())
        profiler = None
        try:
            await asyncio.to_thread(wait_ready, gateway, f"http://127.0.0.1:{telemetry_port}/readyz")
            idle_start, t0 = tree_cpu_ns(gateway.pid), time.monotonic()
            await asyncio.sleep(args.idle)
            idle_rate = (tree_cpu_ns(gateway.pid) - idle_start) / (time.monotonic() - t0)
            url = f"http://127.0.0.1:{gw_port}/api/v1/write"
            samples = 0
            async with aiohttp.ClientSession() as session:
                async def post(body: bytes, headers: dict[str, str]) -> None:
                    async with session.post(url, data=body, headers=headers) as response:
                        if response.status >= 300:
                            raise RuntimeError(f"gateway answered {response.status}: {await response.text()}")

                # Warm-up: the series are defined, and the gateway's encoder has made and used its request
                # layouts (rw1_frames.py: the first use of a label list makes one, the second packs it), which
                # costs ~0.1 CPU s once: a third of a 60-request window's CPU if it fell inside.
                warm = max(warmup, args.warmup_requests)
                for body, headers, _ in requests[:warm]:
                    await post(body, headers)
                    await asyncio.sleep(args.flush)
                await asyncio.sleep(args.flush + 1.0)
                measured = requests[warm:]
                if args.profile:
                    profiler, _ = start(f"py-spy-{repeat}", [*pinning.other(), ensure_py_spy(), "record", "--format",
                                                             "raw", "--nonblocking", "--rate", str(args.profile_rate), "-o",
                                                             f"{args.profile}.{repeat}.txt", "--pid",
                                                             str(gateway.pid)], workdir)
                cpu0, wall0 = tree_cpu_ns(gateway.pid), time.monotonic()
                deadline = wall0
                for body, headers, n in measured:
                    deadline += args.interval
                    await post(body, headers)
                    samples += n
                    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(args.flush + 0.5)
                cpu1, wall1 = tree_cpu_ns(gateway.pid), time.monotonic()
            cpu = cpu1 - cpu0 - idle_rate * (wall1 - wall0)
            results.append({"samples": samples, "seconds": wall1 - wall0, "cpu": cpu1 - cpu0, "idle_rate": idle_rate,
                            "cpu_per_1m": cpu / samples * 1e6, "sink_requests": sink.requests})
            print(json.dumps(results[-1]), flush=True)
            if sink.requests == 0:
                raise RuntimeError(f"the gateway forwarded nothing:\n{gateway.log_tail()}")
        finally:
            if profiler is not None:  # py-spy writes its output on SIGINT
                profiler.process.send_signal(signal.SIGINT)
                profiler.process.wait(timeout=60)
            gateway.stop()
    await runner.cleanup()
    return results


def counter_total(text: str, name: str) -> float:
    """Sum of a counter's series in Prometheus text exposition (every label set)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def fetch_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        return await response.text()


async def fetch_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as response:
        return await response.json()


async def drive_node(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """The node side: the node agent on its core, OTLP/HTTP in from the workload, compact out to a gateway
    agent that forwards rw1 to the 204 receiver (those three on the other core)."""
    sink, runner, sink_port = await start_sink()
    node_http, node_grpc, node_telemetry = free_ports(3)
    pinning = Pinning(True)
    if pinning.enabled:
        os.sched_setaffinity(0, {pinning.other_core})
    gw_config, gw_port, gw_telemetry = gateway_config(workdir / "gateway-state", args, sink_port)
    node_config = {
        "state_dir": str(workdir / "node-state"),
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{node_grpc}"},
                               "http": {"endpoint": f"127.0.0.1:{node_http}", "max_body_size": "64MiB"}}},
        "exporters": {"remote_write": [{"name": "gateway", "url": f"http://127.0.0.1:{gw_port}/api/v1/write",
                                        "protocol": "compact",
                                        "batch": {"flush_interval": f"{args.flush:g}s"}}]},
        "pipelines": {"metrics": {"exporters": ["gateway"]}},
        "telemetry": {"endpoint": f"127.0.0.1:{node_telemetry}", "log_level": "warning"},
    }
    (workdir / "gateway.yaml").write_text(json.dumps(gw_config))
    (workdir / "node.yaml").write_text(json.dumps(node_config))
    node_repo = (args.node_repo or REPO_ROOT).resolve()
    # -P: the node's `agent` package comes from PYTHONPATH (node_repo), not from the working directory
    node_env = {**python_env(), "PYTHONPATH": str(node_repo)}
    node_metrics = f"http://127.0.0.1:{node_telemetry}/metrics"
    results = []
    for repeat in range(args.repeats):
        for stale in ("node-state", "gateway-state"):
            shutil.rmtree(workdir / stale, ignore_errors=True)
        gateway, _ = start(f"gateway-{repeat}", [*pinning.other(), sys.executable, "-m", "agent", "run", "-c",
                                                 str(workdir / "gateway.yaml")], workdir, env=python_env())
        node, _ = start(f"node-{repeat}", [*pinning.sender(), sys.executable, "-P", "-m", "agent", "run", "-c",
                                           str(workdir / "node.yaml")], workdir, env=node_env)
        procs = [node, gateway]
        profiler = None
        try:
            await asyncio.to_thread(wait_ready, gateway, f"http://127.0.0.1:{gw_telemetry}/readyz")
            await asyncio.to_thread(wait_ready, node, f"http://127.0.0.1:{node_telemetry}/readyz")
            idle_start, t0 = tree_cpu_ns(node.pid), time.monotonic()
            await asyncio.sleep(args.idle)
            idle_rate = (tree_cpu_ns(node.pid) - idle_start) / (time.monotonic() - t0)
            load_at = time.time()
            load, announced = await asyncio.to_thread(
                start, f"workload-{repeat}", [*pinning.other(), sys.executable, str(Path(__file__).with_name(
                    "node_workload.py")), "--nodes", str(args.nodes), "--interval", f"{args.interval:g}",
                    "--otlp-url", f"http://127.0.0.1:{node_http}"], workdir, env=python_env(), announce=True)
            procs.append(load)
            stats_url = f"http://127.0.0.1:{announced['port']}/stats"
            async with aiohttp.ClientSession() as session:
                await asyncio.sleep(args.warmup)
                if args.profile:
                    profiler, _ = start(f"py-spy-{repeat}", [*pinning.other(), ensure_py_spy(), "record", "--format",
                                                             "raw", "--nonblocking", "--rate", str(args.profile_rate),
                                                             "-o", f"{args.profile}.{repeat}.txt", "--pid",
                                                             str(node.pid)], workdir)
                stats0, sent0 = await fetch_json(session, stats_url), await fetch_text(session, node_metrics)
                cpu0, wall0 = tree_cpu_ns(node.pid), time.monotonic()
                await asyncio.sleep(args.duration)
                cpu1, wall1 = tree_cpu_ns(node.pid), time.monotonic()
                stats1, sent1 = await fetch_json(session, stats_url), await fetch_text(session, node_metrics)
            samples = stats1["otlp_samples_accepted"] - stats0["otlp_samples_accepted"]
            sent_name = "headwater_remote_write_samples_sent_total"
            # what the node's disk queue wrote once the load ran (segments, position): nothing while the write
            # grace holds, as every request is acknowledged before it would be written
            queue_writes = sorted(str(p.relative_to(workdir / "node-state")) for p in
                                  (workdir / "node-state").rglob("*") if p.is_file() and p.stat().st_mtime >= load_at)
            cpu = cpu1 - cpu0 - idle_rate * (wall1 - wall0)
            results.append({"samples": samples, "seconds": wall1 - wall0, "cpu": cpu1 - cpu0, "idle_rate": idle_rate,
                            "cpu_per_1m": cpu / max(samples, 1) * 1e6, "node_repo": str(node_repo),
                            "node_sent": counter_total(sent1, sent_name) - counter_total(sent0, sent_name),
                            "otlp_errors": stats1["otlp_errors"], "otlp_skipped": stats1["otlp_skipped"],
                            "ticks_late": stats1["ticks_late"], "sink_requests": sink.requests,
                            "node_queue_writes": queue_writes})
            print(json.dumps(results[-1]), flush=True)
            if samples == 0 or sink.requests == 0 or stats1["otlp_errors"]:
                raise RuntimeError(f"the load did not go through (accepted {samples}, forwarded {sink.requests}, "
                                   f"OTLP errors {stats1['otlp_errors']}: {stats1['otlp_last_error']}):\n"
                                   f"{node.log_tail()}\n{gateway.log_tail()}")
        finally:
            if profiler is not None:  # py-spy writes its output on SIGINT
                profiler.process.send_signal(signal.SIGINT)
                profiler.process.wait(timeout=60)
            for proc in reversed(procs):
                proc.stop()
    await runner.cleanup()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("gateway", "node"), default="gateway", help="which agent is measured")
    parser.add_argument("--nodes", type=int, default=10, help="523 series each, all in one sender's requests")
    parser.add_argument("--flush", type=float, default=1.0, help="the agents' flush interval, seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between the node's requests")
    parser.add_argument("--requests", type=int, default=63,
                        help="gateway side: requests per run, the warm-up's included")
    parser.add_argument("--warmup", type=float, default=10.0, help="node side: seconds of load before the window")
    parser.add_argument("--duration", type=float, default=60.0, help="node side: seconds measured")
    parser.add_argument("--node-repo", type=Path, help="node side: checkout to run the node agent from")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--warmup-requests", type=int, default=3, help="posted before the window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--protocol", default="rw1", help="the gateway's exporter protocol")
    parser.add_argument("--profile", help="py-spy raw output prefix (one file per repeat)")
    parser.add_argument("--profile-rate", type=int, default=1000, help="py-spy samples per second")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"{args.side}-process-") as tmp:
        results = asyncio.run((drive_node if args.side == "node" else drive)(args, Path(tmp)))
    costs = sorted(r["cpu_per_1m"] for r in results)
    print(f"{args.side} CPU s per 1M samples (idle subtracted), median of {len(costs)}: {statistics.median(costs):.3f}"
          f" (range {costs[0]:.3f}-{costs[-1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
