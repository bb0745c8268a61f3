"""The ingest benchmark: spans/s the agent delivers end to end on one core, against the protobuf floor.

    python bench/ingest.py [--duration 10] [--rounds 5] [--warmup 10] [--connections 8]

1. baseline.py pinned to core 0: parse + re-serialize the same payloads with protobuf alone (the floor).
2. sink.py pinned to core 1; the agent (`python -m agent run`, exporters.otlp -> sink) pinned to core 0.
3. loadgen.py pinned to core 1 posts 512-span OTLP/HTTP protobuf requests at full speed for
   warmup + rounds x duration seconds. After the warm-up, each round reads the sink's span counter (delivered)
   and the agent's CPU time at its start and end.
4. Prints a table (per round: accepted and delivered spans/s, agent CPU, core-1 CPU) and the summary: the
   MEDIAN delivered spans/s, the baseline, and their ratio. Writes everything as JSON to bench/results/.

Core 0 runs only the agent (its threads included); the load generator and the sink share core 1, so the
agent's CPU column should read close to 100 %: if it does not, core 1 was the bottleneck, not the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Pinning:
    """`taskset -c N` prefixes, or nothing when taskset or a second core is missing (reported)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
        cores = sorted(os.sched_getaffinity(0))
        self.agent_core, self.load_core = (cores[0], cores[1]) if len(cores) >= 2 else (cores[0], cores[0])

    def prefix(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if self.enabled else []


def run_baseline(pinning: Pinning, duration: float, repeats: int) -> dict:
    command = [*pinning.prefix(pinning.agent_core), sys.executable, str(BENCH_DIR / "baseline.py"),
               "--duration", str(duration), "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@dataclass
class Started:
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_sink(pinning: Pinning, workdir: Path) -> tuple[Started, int]:
    log_path = workdir / "sink.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*pinning.prefix(pinning.load_core), sys.executable, str(BENCH_DIR / "sink.py")],
                                   stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline()  # {"port": N} once it listens
    if not line:
        raise SystemExit(f"the sink did not start:\n{log_path.read_text()}")
    return Started(process, log_path), json.loads(line)["port"]


def start_agent(pinning: Pinning, workdir: Path, sink_port: int, compression: str, log_level: str,
                ready_timeout: float = 60.0) -> tuple[Started, str]:
    grpc_port, http_port, telemetry_port = free_ports(3)
    config = {
        "state_dir": str(workdir / "state"),
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                               "http": {"endpoint": f"127.0.0.1:{http_port}", "max_body_size": "16MiB"}}},
        "exporters": {"otlp": {"endpoint": f"http://127.0.0.1:{sink_port}", "compression": compression}},
        "pipelines": {"traces": {"exporters": ["otlp"]}},
        "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "log_level": log_level},
    }
    config_path = workdir / "agent.json"  # JSON is YAML
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    log_path = workdir / "agent.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*pinning.prefix(pinning.agent_core), sys.executable, "-m", "agent", "run",
                                    "-c", str(config_path)], cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    agent = Started(process, log_path)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the agent exited with status {process.returncode}:\n{agent.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{telemetry_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return agent, f"http://127.0.0.1:{http_port}"
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            agent.stop()
            raise SystemExit(f"the agent was not ready within {ready_timeout}s:\n{agent.log_tail()}")
        time.sleep(0.1)


def interpolate(progress: list[dict], t: float, key: str) -> float:
    """The load generator's cumulative counter `key` at time t, linearly between its progress lines."""
    before = [p for p in progress if p["t"] <= t]
    after = [p for p in progress if p["t"] >= t]
    if not before:
        return 0.0
    if not after:
        return float(before[-1][key])
    a, b = before[-1], after[0]
    if b["t"] == a["t"]:
        return float(a[key])
    return a[key] + (b[key] - a[key]) * (t - a["t"]) / (b["t"] - a["t"])


def measure(args: argparse.Namespace, pinning: Pinning, workdir: Path) -> dict:
    sink, sink_port = start_sink(pinning, workdir)
    agent = None
    loadgen = None
    try:
        agent, agent_url = start_agent(pinning, workdir, sink_port, args.exporter_compression, args.log_level)
        total = args.warmup + args.rounds * args.duration + 2
        loadgen_command = [*pinning.prefix(pinning.load_core), sys.executable, str(BENCH_DIR / "loadgen.py"),
                           "--url", agent_url, "--duration", str(total), "--connections", str(args.connections),
                           "--progress", "--interval", "0.5"]
        if args.gzip:
            loadgen_command.append("--gzip")
        loadgen = subprocess.Popen(loadgen_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sink_url = f"http://127.0.0.1:{sink_port}/stats"
        time.sleep(args.warmup)
        rounds = []
        for number in range(1, args.rounds + 1):
            s0, a0, l0 = get_json(sink_url), cpu_seconds(agent.process.pid), cpu_seconds(loadgen.pid)
            k0 = cpu_seconds(sink.process.pid)
            time.sleep(args.duration)
            s1, a1, l1 = get_json(sink_url), cpu_seconds(agent.process.pid), cpu_seconds(loadgen.pid)
            k1 = cpu_seconds(sink.process.pid)
            elapsed = s1["t"] - s0["t"]
            rounds.append({"round": number, "t0": s0["t"], "t1": s1["t"], "elapsed_s": elapsed,
                           "delivered_spans_per_s": (s1["spans"] - s0["spans"]) / elapsed,
                           "agent_cpu": (a1 - a0) / elapsed, "load_core_cpu": (l1 - l0 + k1 - k0) / elapsed})
            if agent.process.poll() is not None:
                raise SystemExit(f"the agent exited during the run:\n{agent.log_tail()}")
        out, err = loadgen.communicate(timeout=total + 60)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        progress = [line for line in lines if not line.get("summary")]
        summary = next((line for line in lines if line.get("summary")), {})
        for r in rounds:
            for key, name in (("spans_accepted", "accepted_spans_per_s"), ("refused", "refused_requests")):
                delta = interpolate(progress, r["t1"], key) - interpolate(progress, r["t0"], key)
                r[name] = delta / r["elapsed_s"] if name.endswith("_per_s") else round(delta)
        final_sink = get_json(sink_url)
        return {"rounds": rounds, "loadgen": summary, "loadgen_stderr": err[-2000:], "sink": final_sink}
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        agent_exit = agent.stop() if agent is not None else None
        sink.stop()
        if agent_exit not in (0, None):
            print(f"warning: the agent exited with status {agent_exit} after SIGTERM:\n{agent.log_tail()}",
                  file=sys.stderr)


def environment(pinning: Pinning) -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "pinned": pinning.enabled,
            "agent_core": pinning.agent_core, "load_core": pinning.load_core}


def report(result: dict) -> str:
    rows = [f"{'round':>5}  {'accepted/s':>12}  {'delivered/s':>12}  {'agent CPU':>9}  {'core-1 CPU':>10}  {'429s':>5}"]
    for r in result["rounds"]:
        rows.append(f"{r['round']:>5}  {r['accepted_spans_per_s']:>12,.0f}  {r['delivered_spans_per_s']:>12,.0f}  "
                    f"{r['agent_cpu']:>9.0%}  {r['load_core_cpu']:>10.0%}  {r['refused_requests']:>5}")
    s = result["summary"]
    b = result["baseline"]
    rows += [
        "",
        f"agent, delivered end to end (median)    {s['delivered_spans_per_s']:>12,.0f} spans/s",
        f"baseline: protobuf parse + serialize    {b['parse_serialize_spans_per_s']:>12,.0f} spans/s (one core)",
        f"ratio agent / baseline                  {s['ratio_to_baseline']:>12.1%}",
        f"  context: parse + read IDs + serialize {b['parse_read_ids_serialize_spans_per_s']:>12,.0f} spans/s;"
        f" parse only {b['parse_only_spans_per_s']:,.0f} spans/s",
        f"  payload: {b['bytes_per_span']:.0f} B/span, 512 spans/request; agent CPU median {s['agent_cpu']:.0%}",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first round")
    parser.add_argument("--connections", type=int, default=8, help="concurrent load-generator connections")
    parser.add_argument("--gzip", action="store_true", help="the load generator gzips its requests")
    parser.add_argument("--exporter-compression", choices=["none", "gzip"], default="none",
                        help="the agent's OTLP exporter compression (default none: measure the pipeline, not zlib)")
    parser.add_argument("--log-level", default="warning", help="the agent's log level during the run")
    parser.add_argument("--baseline-duration", type=float, default=2.0, help="seconds per baseline repeat")
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON result")
    args = parser.parse_args(argv)

    pinning = Pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        print("warning: not pinning (needs taskset and 2 cores); results are not comparable", file=sys.stderr)
    print(f"baseline: {args.baseline_repeats} x {args.baseline_duration}s on core {pinning.agent_core} ...",
          file=sys.stderr, flush=True)
    baseline = run_baseline(pinning, args.baseline_duration, args.baseline_repeats)
    print(f"agent: {args.warmup}s warm-up, {args.rounds} x {args.duration}s rounds ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="headwater-bench-") as tmp:
        result = measure(args, pinning, Path(tmp))
    delivered = statistics.median(r["delivered_spans_per_s"] for r in result["rounds"])
    result.update({
        "benchmark": "ingest",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(pinning),
        "baseline": baseline,
        "summary": {
            "delivered_spans_per_s": delivered,
            "accepted_spans_per_s": statistics.median(r["accepted_spans_per_s"] for r in result["rounds"]),
            "baseline_spans_per_s": baseline["parse_serialize_spans_per_s"],
            "ratio_to_baseline": delivered / baseline["parse_serialize_spans_per_s"],
            "agent_cpu": statistics.median(r["agent_cpu"] for r in result["rounds"]),
        },
    })
    print(report(result))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"ingest-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
