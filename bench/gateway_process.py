"""A gateway agent process alone: CPU seconds per million samples of `python -m agent run` with the
remote-write receiver, taking one node's compact requests and forwarding them as rw1 to a receiver that
answers 204 at once.

    python bench/gateway_process.py [--flush 1] [--duration 60] [--repeats 3] [--protocol rw1]
    python bench/gateway_process.py --profile /tmp/gw   # py-spy of the gateway (alone on its core), not a result

Why: `bench/remote_write.py` measures node + gateway against a real Prometheus, but there the gateway shares
a core with the generator, the proxy and Prometheus, and a 20 s window at one request a second is ~0.1 CPU s
of gateway: too little and too noisy to see what a change to the gateway's path is worth. Here the gateway
has a core to itself (`taskset`), the driver and the null receiver share the other, and the window is as long
as you like. The requests are the ones `bench/gateway_bench.py` replays (one sender, the node-exporter-shaped
workload, `--nodes` nodes, one tick per request), posted one per `--interval` seconds, each after the
previous was answered; the gateway flushes every `--flush` seconds. CPU is the gateway's schedstat
(nanoseconds), minus its idle rate measured before the load for `--idle` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from remote_write import Pinning, free_ports, python_env, tree_cpu_ns, wait_ready, start, ensure_py_spy


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


async def drive(args: argparse.Namespace, workdir: Path) -> list[dict]:
    requests, warmup = requests_of(args.nodes, 1, args.requests, 10_000, 4 << 20, "compact")
    sink = NullReceiver()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/api/v1/write", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sink_port, gw_port, telemetry_port = free_ports(3)
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    pinning = Pinning(True)
    if pinning.enabled:
        os.sched_setaffinity(0, {pinning.other_core})
    config = {
        "state_dir": str(workdir / "state"),
        "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{gw_port}"}},
        "exporters": {"remote_write": [{"name": "out", "url": f"http://127.0.0.1:{sink_port}/api/v1/write",
                                        "protocol": args.protocol,
                                        "batch": {"flush_interval": f"{args.flush:g}s"},
                                        # the workload's timestamps start an hour back
                                        "sender": {"sample_age_limit": "1000h"}}]},
        "pipelines": {"metrics": {"exporters": ["out"]}},
        "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "log_level": "warning"},
    }
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10, help="523 series each, all in one sender's requests")
    parser.add_argument("--flush", type=float, default=1.0, help="the gateway's flush interval, seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between the node's requests")
    parser.add_argument("--requests", type=int, default=63, help="requests per run, the warm-up's included")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--warmup-requests", type=int, default=3, help="posted before the window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--protocol", default="rw1", help="the gateway's exporter protocol")
    parser.add_argument("--profile", help="py-spy raw output prefix (one file per repeat)")
    parser.add_argument("--profile-rate", type=int, default=1000, help="py-spy samples per second")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gateway-process-") as tmp:
        results = asyncio.run(drive(args, Path(tmp)))
    costs = sorted(r["cpu_per_1m"] for r in results)
    print(f"gateway CPU s per 1M samples (idle subtracted), median of {len(costs)}: {statistics.median(costs):.3f}"
          f" (range {costs[0]:.3f}-{costs[-1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
