"""The ingest benchmark: spans/s the agent accepts through receive + tail sampling + export on one core,
against the protobuf floor measured in the same run.

    python bench/ingest.py [--mode sampling|passthrough] [--duration 10] [--rounds 5] [--warmup 10]

1. baseline.py pinned to core 0: parse + re-serialize the same payloads with protobuf alone (the floor).
2. sink.py pinned to core 1; the agent (`python -m agent run`, exporters.otlp -> sink) pinned to core 0, with
   `--mode sampling` (default): the default tiers (P0 0.99, P1 0.5, P2 0.05), decision_wait 2s,
   root_delay 500ms, annotate true; or `--mode passthrough`: one tier at rate 1.0 (every span is exported).
3. loadgen.py pinned to core 1 posts 512-span OTLP/HTTP protobuf requests at full speed (5 % P0, 15 % P1,
   3 % error traces) for warmup + rounds x duration seconds. After the warm-up, each round reads at its start
   and end: the load generator's accepted spans, the sink's delivered spans, the agent's /metrics (sampler
   spans in, kept and dropped per tier, buffered traces, decision lag) and every process's CPU time; during a
   round the agent's /metrics and RSS are sampled every `--sample-interval` seconds.
4. After the load stops, waits until the sampler's buffer is empty, then checks that the sink received
   exactly the spans the sampler kept and the sampler saw exactly the spans the load generator had accepted.
5. Prints a table per round and the summary: the MEDIAN accepted spans/s (the headline: the agent must keep
   up, so accepted = decided and delivered = kept), the baseline, their ratio, whether decisions kept up
   (buffer size, decision lag) and the kept fraction per tier. Writes everything as JSON to bench/results/.

Core 0 runs only the agent (its threads included); the load generator and the sink share core 1, so the
agent's CPU column should read close to 100 %: if it does not, core 1 was the bottleneck, not the agent.
`--profile FILE` runs the agent under cProfile (slower: not a result) and prints its top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import re
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

DECISION_WAIT = 2.0
ROOT_DELAY = 0.5
MODES = {
    # The default tiers (left out of the config, so the bench follows them), shorter waits than the
    # defaults so that a round sees steady state; everything else at its default.
    "sampling": {"decision_wait": f"{DECISION_WAIT:g}s", "root_delay": f"{ROOT_DELAY * 1000:g}ms", "annotate": True},
    # The same pipeline (buffer, decide, annotate, re-frame) with every trace kept.
    "passthrough": {"decision_wait": f"{DECISION_WAIT:g}s", "root_delay": f"{ROOT_DELAY * 1000:g}ms", "annotate": True,
                    "tiers": [{"name": "all", "rate": 1.0}]},
}


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


def core_times(core: int) -> tuple[float, float]:
    """(busy, steal) seconds of one core so far, from /proc/stat (busy: everything but idle and iowait)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            steal = v[7] if len(v) > 7 else 0
            return (sum(v[:8]) - idle - steal) / CLOCK_TICKS, steal / CLOCK_TICKS
    return 0.0, 0.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


# -- the agent's /metrics ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, timeout: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> {metric name: [(labels, value), ...]}."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), []).append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def _total(m: dict, name: str) -> float:
    return sum(v for _labels, v in m.get(name, ()))


def _by(m: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in m.get(name, ()):
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0.0) + v
    return out


def sampler_snapshot(metrics_url: str) -> dict:
    """What the agent's sampler reports, at (about) time t."""
    t0 = time.monotonic()
    m = scrape(metrics_url)
    t1 = time.monotonic()
    return {
        "t": (t0 + t1) / 2,
        "spans_in": _total(m, "headwater_sampling_spans_in_total"),
        "traces_in": _total(m, "headwater_sampling_traces_in_total"),
        "kept_spans": _by(m, "headwater_sampling_kept_spans_total", "tier"),
        "dropped_spans": _by(m, "headwater_sampling_dropped_spans_total", "tier"),
        "kept_traces": _by(m, "headwater_sampling_kept_traces_total", "tier"),
        "dropped_traces": _by(m, "headwater_sampling_dropped_traces_total", "tier"),
        "kept_spans_by_reason": _by(m, "headwater_sampling_kept_spans_by_reason_total", "reason"),
        "dropped_spans_by_reason": _by(m, "headwater_sampling_dropped_spans_by_reason_total", "reason"),
        "buffered_traces": _total(m, "headwater_sampling_buffered_traces"),
        "buffered_bytes": _total(m, "headwater_sampling_buffered_bytes"),
        "decision_lag_s": _total(m, "headwater_sampling_decision_lag_seconds"),
    }


# -- processes --------------------------------------------------------------------------------------------

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

    def stop(self, timeout: float = 30.0) -> int:
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


def agent_config(workdir: Path, sink_port: int | None, sampling: dict, compression: str = "none",
                 log_level: str = "warning") -> tuple[dict, int, int]:
    """The agent's config for a bench run, its OTLP/HTTP port and its telemetry port. Without a sink port the
    trace pipeline exports to a file exporter (nothing reaches it while nothing is decided)."""
    grpc_port, http_port, telemetry_port = free_ports(3)
    if sink_port is not None:
        exporters = {"otlp": {"endpoint": f"http://127.0.0.1:{sink_port}", "compression": compression}}
        pipeline = ["otlp"]
    else:
        exporters = {"file": {"path": str(workdir / "traces.jsonl")}}
        pipeline = ["file"]
    config = {
        "state_dir": str(workdir / "state"),
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                               "http": {"endpoint": f"127.0.0.1:{http_port}", "max_body_size": "16MiB"}}},
        "sampling": sampling,
        "exporters": exporters,
        "pipelines": {"traces": {"exporters": pipeline}},
        "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "log_level": log_level},
    }
    return config, http_port, telemetry_port


def start_agent(prefix: list[str], workdir: Path, config: dict, http_port: int, telemetry_port: int,
                profile: Path | None = None, ready_timeout: float = 60.0) -> tuple[Started, str, str]:
    """Starts the agent; returns it, its OTLP/HTTP base URL and its /metrics URL once /readyz says ready."""
    config_path = workdir / "agent.json"  # JSON is YAML
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    log_path = workdir / "agent.log"
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*prefix, *python, "-m", "agent", "run", "-c", str(config_path)],
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    agent = Started(process, log_path)
    telemetry = f"http://127.0.0.1:{telemetry_port}"
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the agent exited with status {process.returncode}:\n{agent.log_tail()}")
        try:
            with urllib.request.urlopen(f"{telemetry}/readyz", timeout=1) as response:
                if response.status == 200:
                    return agent, f"http://127.0.0.1:{http_port}", f"{telemetry}/metrics"
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


def _rate(a: dict, b: dict, key: str) -> float:
    va, vb = a[key], b[key]
    if isinstance(va, dict):
        va, vb = sum(va.values()), sum(vb.values())
    return (vb - va) / (b["t"] - a["t"])


# -- the run ----------------------------------------------------------------------------------------------

def measure(args: argparse.Namespace, pinning: Pinning, workdir: Path) -> dict:
    sink, sink_port = start_sink(pinning, workdir)
    agent = None
    loadgen = None
    try:
        config, http_port, telemetry_port = agent_config(workdir, sink_port, MODES[args.mode],
                                                         args.exporter_compression, args.log_level)
        agent, agent_url, metrics_url = start_agent(pinning.prefix(pinning.agent_core), workdir, config,
                                                    http_port, telemetry_port, args.profile)
        pid = agent.process.pid
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
            s0, m0 = get_json(sink_url), sampler_snapshot(metrics_url)
            a0, l0, k0 = cpu_seconds(pid), cpu_seconds(loadgen.pid), cpu_seconds(sink.process.pid)
            c0 = core_times(pinning.agent_core)
            samples = []
            end = time.monotonic() + args.duration
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(args.sample_interval, left))
                if end - time.monotonic() > 0.2:
                    snap = sampler_snapshot(metrics_url)
                    samples.append({"t": snap["t"], "buffered_traces": snap["buffered_traces"],
                                    "buffered_bytes": snap["buffered_bytes"], "decision_lag_s": snap["decision_lag_s"],
                                    "agent_rss": rss_bytes(pid)})
            s1, m1 = get_json(sink_url), sampler_snapshot(metrics_url)
            a1, l1, k1 = cpu_seconds(pid), cpu_seconds(loadgen.pid), cpu_seconds(sink.process.pid)
            c1 = core_times(pinning.agent_core)
            samples.append({"t": m1["t"], "buffered_traces": m1["buffered_traces"],
                            "buffered_bytes": m1["buffered_bytes"], "decision_lag_s": m1["decision_lag_s"],
                            "agent_rss": rss_bytes(pid)})
            elapsed = s1["t"] - s0["t"]
            rounds.append({
                "round": number, "t0": s0["t"], "t1": s1["t"], "elapsed_s": elapsed,
                "delivered_spans_per_s": (s1["spans"] - s0["spans"]) / elapsed,
                "sampler_in_spans_per_s": _rate(m0, m1, "spans_in"),
                "kept_spans_per_s": _rate(m0, m1, "kept_spans"),
                "decided_spans_per_s": _rate(m0, m1, "kept_spans") + _rate(m0, m1, "dropped_spans"),
                "buffered_traces": [s["buffered_traces"] for s in samples],
                "decision_lag_s": [s["decision_lag_s"] for s in samples],
                "agent_rss_mib": max(s["agent_rss"] for s in samples) / 2**20,
                "samples": samples,
                "agent_cpu": (a1 - a0) / elapsed, "load_core_cpu": (l1 - l0 + k1 - k0) / elapsed,
                # Core 0 time not spent by the agent (other processes, interrupts) plus hypervisor steal:
                # a round where this is large was disturbed, and its rate understates the agent.
                "agent_core_other": max(0.0, (c1[0] - c0[0]) - (a1 - a0)) / elapsed + (c1[1] - c0[1]) / elapsed,
            })
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
            r["agent_cpu_us_per_span"] = r["agent_cpu"] / max(1.0, r["accepted_spans_per_s"]) * 1e6
        # The load has stopped: everything buffered is decided within decision_wait; then delivered = kept.
        drain_started = time.monotonic()
        deadline = drain_started + DECISION_WAIT + args.drain_timeout
        while True:
            final = sampler_snapshot(metrics_url)
            final_sink = get_json(sink_url)
            done = final["buffered_traces"] == 0 and final_sink["spans"] >= sum(final["kept_spans"].values())
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        final["drain_s"] = time.monotonic() - drain_started
        final["drained"] = done
        final["agent_rss_mib"] = rss_bytes(pid) / 2**20
        return {"rounds": rounds, "loadgen": summary, "loadgen_stderr": err[-2000:], "sink": final_sink,
                "sampler": final, "agent_config": config}
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


def summarize(result: dict, baseline: dict) -> dict:
    rounds, final, loadgen = result["rounds"], result["sampler"], result["loadgen"]
    accepted = statistics.median(r["accepted_spans_per_s"] for r in rounds)
    lags = [lag for r in rounds for lag in r["decision_lag_s"]]
    first = statistics.mean(rounds[0]["buffered_traces"])
    last = statistics.mean(rounds[-1]["buffered_traces"])
    traces_per_s = accepted / 8  # loadgen: 8 spans per trace
    kept_total = sum(final["kept_spans"].values())
    dropped_total = sum(final["dropped_spans"].values())
    tiers = {}
    for tier in sorted(set(final["kept_traces"]) | set(final["dropped_traces"])):
        kt, dt = final["kept_traces"].get(tier, 0.0), final["dropped_traces"].get(tier, 0.0)
        ks, ds = final["kept_spans"].get(tier, 0.0), final["dropped_spans"].get(tier, 0.0)
        tiers[tier] = {"traces": kt + dt, "share_of_traces": (kt + dt) / max(1.0, final["traces_in"]),
                       "kept_traces": kt, "kept_fraction": kt / max(1.0, kt + dt),
                       "kept_spans": ks, "kept_span_fraction": ks / max(1.0, ks + ds)}
    bounded = last <= 1.25 * first + 2000
    on_time = max(lags, default=0.0) < 2 * ROOT_DELAY
    delivered_ok = result["sink"]["spans"] == kept_total and final["drained"]
    seen_ok = final["spans_in"] == loadgen.get("spans_accepted") == kept_total + dropped_total
    return {
        "accepted_spans_per_s": accepted,
        "delivered_spans_per_s": statistics.median(r["delivered_spans_per_s"] for r in rounds),
        "kept_spans_per_s": statistics.median(r["kept_spans_per_s"] for r in rounds),
        "decided_spans_per_s": statistics.median(r["decided_spans_per_s"] for r in rounds),
        "baseline_spans_per_s": baseline["parse_serialize_spans_per_s"],
        "ratio_to_baseline": accepted / baseline["parse_serialize_spans_per_s"],
        "agent_cpu": statistics.median(r["agent_cpu"] for r in rounds),
        "agent_cpu_us_per_span": statistics.median(r["agent_cpu_us_per_span"] for r in rounds),
        "load_core_cpu": statistics.median(r["load_core_cpu"] for r in rounds),
        "refused_requests": sum(r["refused_requests"] for r in rounds),
        "disturbed_rounds": sum(disturbed(r) for r in rounds),
        "accepted_spans_per_s_undisturbed": statistics.median(
            [r["accepted_spans_per_s"] for r in rounds if not disturbed(r)] or [0.0]),
        "buffered_traces_median": statistics.median(b for r in rounds for b in r["buffered_traces"]),
        "buffered_traces_max": max(b for r in rounds for b in r["buffered_traces"]),
        "buffered_traces_first_round": first, "buffered_traces_last_round": last,
        "buffered_traces_expected": traces_per_s * ROOT_DELAY,
        "decision_lag_median_s": statistics.median(lags) if lags else 0.0,
        "decision_lag_max_s": max(lags, default=0.0),
        "agent_rss_max_mib": max(r["agent_rss_mib"] for r in rounds),
        "kept_spans_total": kept_total, "dropped_spans_total": dropped_total,
        "delivered_spans_total": result["sink"]["spans"], "accepted_spans_total": loadgen.get("spans_accepted"),
        "sampler_spans_in_total": final["spans_in"],
        "kept_fraction": kept_total / max(1.0, kept_total + dropped_total),
        "kept_spans_by_reason": final["kept_spans_by_reason"],
        "dropped_spans_by_reason": final["dropped_spans_by_reason"],
        "tiers": tiers,
        "checks": {"delivered_equals_kept": delivered_ok, "decided_equals_accepted": seen_ok,
                   "buffer_bounded": bounded, "decisions_on_time": on_time,
                   "keeps_up": delivered_ok and seen_ok and bounded and on_time},
    }


def disturbed(r: dict) -> bool:
    """Something else ran on the agent's core (or the hypervisor took it) for over 5 % of the round."""
    return r["agent_core_other"] > 0.05


def report(result: dict) -> str:
    rows = [f"{'round':>5}  {'accepted/s':>10}  {'decided/s':>10}  {'kept/s':>9}  {'delivered/s':>11}  "
            f"{'buffered':>8}  {'lag max':>7}  {'agent CPU':>9}  {'µs/span':>7}  {'core-0 other':>12}  "
            f"{'core-1 CPU':>10}  {'RSS MiB':>7}  "
            f"{'429s':>4}"]
    for r in result["rounds"]:
        rows.append(f"{r['round']:>5}  {r['accepted_spans_per_s']:>10,.0f}  {r['decided_spans_per_s']:>10,.0f}  "
                    f"{r['kept_spans_per_s']:>9,.0f}  {r['delivered_spans_per_s']:>11,.0f}  "
                    f"{max(r['buffered_traces']):>8,.0f}  {max(r['decision_lag_s']) * 1000:>5.0f}ms  "
                    f"{r['agent_cpu']:>9.0%}  {r['agent_cpu_us_per_span']:>7.2f}  "
                    f"{r['agent_core_other']:>11.0%}{'*' if disturbed(r) else ' '}  "
                    f"{r['load_core_cpu']:>10.0%}  {r['agent_rss_mib']:>7.0f}  {r['refused_requests']:>4}")
    s, b, mode = result["summary"], result["baseline"], result["settings"]["mode"]
    c = s["checks"]
    yes = {True: "yes", False: "NO"}
    rows += [
        "",
        f"mode {mode}: {json.dumps(MODES[mode], separators=(', ', ': '))}",
        f"agent, accepted through receive + sample + export (median) {s['accepted_spans_per_s']:>10,.0f} spans/s",
        f"baseline: protobuf parse + serialize (same core, same run)  "
        f"{b['parse_serialize_spans_per_s']:>10,.0f} spans/s",
        f"ratio agent / baseline                                      {s['ratio_to_baseline']:>10.1%}",
        f"  context: parse + read IDs + serialize {b['parse_read_ids_serialize_spans_per_s']:,.0f} spans/s;"
        f" parse only {b['parse_only_spans_per_s']:,.0f} spans/s",
        f"  agent CPU per accepted span {s['agent_cpu_us_per_span']:.2f} µs (median), i.e."
        f" {1e6 / s['agent_cpu_us_per_span']:,.0f} spans/s per fully used core",
        f"  payload: {b['bytes_per_span']:.0f} B/span, 512 spans/request; agent CPU median {s['agent_cpu']:.0%},"
        f" core-1 CPU median {s['load_core_cpu']:.0%}, 429s {s['refused_requests']}",
        *([f"  * {s['disturbed_rounds']} of {len(result['rounds'])} rounds disturbed: something else used core "
           f"{result['environment']['agent_core']} (core-0 other > 5 %); their rates understate the agent, re-run",
           f"    (median accepted/s of the {len(result['rounds']) - s['disturbed_rounds']} undisturbed rounds: "
           f"{s['accepted_spans_per_s_undisturbed']:,.0f})"]
          if s["disturbed_rounds"] else []),
        f"keeps up: {yes[c['keeps_up']]}",
        f"  delivered = kept (after drain): {yes[c['delivered_equals_kept']]} "
        f"({s['delivered_spans_total']:,.0f} delivered, {s['kept_spans_total']:,.0f} kept, "
        f"{s['kept_fraction']:.1%} of {s['kept_spans_total'] + s['dropped_spans_total']:,.0f} decided)",
        f"  decided = accepted: {yes[c['decided_equals_accepted']]} "
        f"({s['sampler_spans_in_total']:,.0f} into the sampler, {s['accepted_spans_total']:,} accepted)",
        f"  buffer bounded: {yes[c['buffer_bounded']]} (traces buffered: median {s['buffered_traces_median']:,.0f},"
        f" max {s['buffered_traces_max']:,.0f}; mean first round {s['buffered_traces_first_round']:,.0f},"
        f" last {s['buffered_traces_last_round']:,.0f}; arrival x root_delay = {s['buffered_traces_expected']:,.0f})",
        f"  decisions on time: {yes[c['decisions_on_time']]} (decision lag median "
        f"{s['decision_lag_median_s'] * 1000:.0f} ms, max {s['decision_lag_max_s'] * 1000:.0f} ms); "
        f"agent RSS max {s['agent_rss_max_mib']:.0f} MiB",
        "",
        f"{'tier':>6}  {'traces':>10}  {'share':>6}  {'kept traces':>11}  {'kept fraction':>13}",
    ]
    for name, t in s["tiers"].items():
        rows.append(f"{name:>6}  {t['traces']:>10,.0f}  {t['share_of_traces']:>6.1%}  {t['kept_traces']:>11,.0f}"
                    f"  {t['kept_fraction']:>13.4f}")
    reasons = ", ".join(f"{k} {v:,.0f}" for k, v in s["kept_spans_by_reason"].items())
    rows.append(f"kept spans by reason: {reasons}")
    reasons = ", ".join(f"{k} {v:,.0f}" for k, v in s["dropped_spans_by_reason"].items())
    rows.append(f"dropped spans by reason: {reasons or '-'}")
    shed = [line for line in result.get("agent_log", []) if "shedding" in line]
    if shed:
        rows.append(f"the agent shed tiers {len(shed)} time(s) because its exporter fell behind (see agent_log in "
                    f"the JSON): spans dropped that way are counted as 'sampled'")
    return "\n".join(rows)


def print_profile(path: Path, top: int = 25) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="sampling",
                        help="sampling: default tiers, decision_wait 2s, root_delay 500ms; passthrough: keep all")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first round")
    parser.add_argument("--connections", type=int, default=8, help="concurrent load-generator connections")
    parser.add_argument("--gzip", action="store_true", help="the load generator gzips its requests")
    parser.add_argument("--exporter-compression", choices=["none", "gzip"], default="none",
                        help="the agent's OTLP exporter compression (default none: measure the pipeline, not zlib)")
    parser.add_argument("--log-level", default="warning", help="the agent's log level during the run")
    parser.add_argument("--sample-interval", type=float, default=2.0,
                        help="seconds between /metrics samples (buffer, decision lag) within a round")
    parser.add_argument("--drain-timeout", type=float, default=10.0,
                        help="seconds beyond decision_wait to wait for the buffer to empty after the load")
    parser.add_argument("--baseline-duration", type=float, default=2.0, help="seconds per baseline repeat")
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--profile", type=Path, help="run the agent under cProfile, write the stats here and "
                                                     "print the top functions (the rates are then not results)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON result")
    args = parser.parse_args(argv)

    pinning = Pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        print("warning: not pinning (needs taskset and 2 cores); results are not comparable", file=sys.stderr)
    print(f"baseline: {args.baseline_repeats} x {args.baseline_duration}s on core {pinning.agent_core} ...",
          file=sys.stderr, flush=True)
    baseline = run_baseline(pinning, args.baseline_duration, args.baseline_repeats)
    print(f"agent ({args.mode}): {args.warmup}s warm-up, {args.rounds} x {args.duration}s rounds ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="headwater-bench-") as tmp:
        result = measure(args, pinning, Path(tmp))
        log_lines = (Path(tmp) / "agent.log").read_text(errors="replace").splitlines()
    result["agent_log"] = log_lines[-200:]  # warnings and errors only (log_level warning by default)
    result.update({
        "benchmark": "ingest",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(pinning),
        "baseline": baseline,
    })
    result["summary"] = summarize(result, baseline)
    print(report(result))
    if args.profile:
        print(f"\nagent profile (cProfile: rates above are slowed by it), top by tottime, {args.profile}:")
        print_profile(args.profile)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"ingest-{args.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {path}", file=sys.stderr)
    checks = result["summary"]["checks"]
    if not (checks["delivered_equals_kept"] and checks["decided_equals_accepted"]):
        print("error: spans were lost or duplicated between accept, decision and delivery", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
