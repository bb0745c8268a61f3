"""The outage benchmark: a receiver that goes away for minutes under a steady load, then comes back. How fast
the agent catches up, how much memory the backlog costs, how long until it is gone, what a sample's delay is
at steady state, and whether every sample arrived.

    python bench/outage.py [--rate 50000] [--outage 180] [--flush 5] [--protocol rw1] [--repeats 1]
    python bench/outage.py --quick                 # a smoke test, about a minute
    python bench/outage.py --profile               # py-spy stacks of the agent, steady state and catch-up

Why this shape: an agent is judged on its worst day (issue 8). A real Prometheus 2.42 stores what arrives;
between it and the agent, `bench/outage_proxy.py` is the switch (during the outage the agent's connections
are refused, or with `--refuse-with 503` answered 503) and the stopwatch (every sample it forwards is timed
from its timestamp to Prometheus's 2xx; `--receiver-latency` makes it a receiver across a network). The load,
`bench/outage_load.py`, pushes node-exporter-shaped OTLP, every sample stamped with the wall time at which
it was sent, so that stopwatch
reads the delay from the agent receiving a sample to the receiver acknowledging it. The default load is the
issue's "ten node-exporter-sized hosts' worth of series" (10 x 523 = 5,230 series) at 50,000 samples/s,
so every series gets a sample every 0.105 s, each tick one request holding every node; `--nodes 96
--layout per-node` spreads the same rate over 50,208 series at about one sample per second each, one request
per node (see bench/README.md: the agent does not keep up with that many series today).

One run, every process fresh:
1. Prometheus 2.42 (`--web.enable-remote-write-receiver`, storage in a temporary directory), the proxy in
   front of it, the agent (`python -m agent run`: OTLP/HTTP in, one remote-write exporter `protocol: <p>`,
   `batch.flush_interval: <flush>`, `queue.max_memory: <max-memory>`, its disk queue under the temporary
   state_dir, everything else at its default) writing to the proxy, and the load generator at `--rate`
   samples/s (`--nodes` x 523 series, `--layout`);
2. `--warmup` s, so shapes are learnt and the sender's concurrency and batch size settle;
3. steady state, `--steady` s: CPU of the agent per million samples, and the delay of every sample stamped
   in the window up to `flush + 2` s before its end (so that each was delivered before the outage); the
   99th percentile is the figure the goal reads (< flush interval + 100 ms);
4. the outage, `--outage` s: the proxy refuses; the load goes on;
5. recovery: the proxy forwards again; the backlog is drained when the proxy has forwarded, acknowledged,
   every sample stamped before the receiver came back (as many as the generator had accepted by then);
   catch-up throughput is the samples acknowledged per second from the first acknowledgement after the
   return to that moment, as a multiple of the ingest rate (also from the return itself, which includes the
   agent's wait before it retries);
6. `--settle` s more, then the load stops, the agent gets up to `2 x flush + 30` s to deliver the rest, and
   Prometheus is asked how many samples it stored (`count_over_time` per metric name over the whole run):
   it must be every sample the generator had accepted, none lost; the proxy must have seen each accepted
   once (none sent twice) and Prometheus must have refused nothing.

Throughout, every `--sample-every` s: the agent's RSS (VmRSS) and CPU, its `headwater_queue_bytes{medium}`,
`headwater_queue_oldest_age_seconds`, `headwater_sender_concurrency`, `headwater_sender_batch_samples`,
and the CPU of Prometheus, the proxy and the generator (to tell whether the agent or its surroundings limit
the catch-up). Peak memory is read against `queue.max_memory`: the queue gauge, which counts the pending
flush too, beside its steady-state peak (the pending flush at its largest) and their difference, and the RSS
growth over the steady state.

Pinning: the agent on the first core, everything else on the second (`--no-pin` to turn off), so that the
agent's CPU is its own. The machine has two cores, so Prometheus, the proxy and the generator share one;
their CPU per phase is in the results.

Output: a table (medians over `--repeats`, with the range) on stdout, every run's figures, timelines and
settings in bench/results/outage-<time>.json; `--profile` adds py-spy collapsed stacks of the agent at steady
state and during catch-up next to it (`python bench/profile_summary.py FILE`; profiled runs' CPU figures are
not results). Exit status 2 when a run lost samples, sent some twice, Prometheus refused some or the backlog
did not drain, 1 when a run failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ingest import free_ports  # bench/ is this script's first import path
from remote_write import (
    PROMETHEUS_BINARY,
    Pinning,
    Proc,
    ensure_py_spy,
    http_json,
    python_env,
    query_value,
    start,
    start_receiver,
    stored_samples,
    wait_ready,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
EXPORTER = "outage"
GAUGES = {
    "queue_memory": ("headwater_queue_bytes", 'medium="memory"'),
    "queue_disk": ("headwater_queue_bytes", 'medium="disk"'),
    "oldest_age": ("headwater_queue_oldest_age_seconds", ""),
    "concurrency": ("headwater_sender_concurrency", ""),
    "batch_samples": ("headwater_sender_batch_samples", ""),
    "circuit_open": ("headwater_sender_circuit_open", ""),
    "sent_total": ("headwater_remote_write_samples_sent_total", ""),
}


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in units:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MiB)")
    return int(float(match.group(1)) * units[match.group(2).upper()])


# -- measuring processes ----------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float | None:
    """utime + stime of a process and its threads, seconds; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def scrape_gauges(url: str) -> dict[str, float]:
    """The agent's queue and sender figures from its /metrics (Prometheus text)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for key, (name, selector) in GAUGES.items():
        for match in re.finditer(rf"^{name}(?:{{([^}}]*)}})?\s+(\S+)", text, re.MULTILINE):
            labels = match.group(1) or ""
            if selector and selector not in labels:
                continue
            out[key] = out.get(key, 0.0) + float(match.group(2))
    return out


class Sampler(threading.Thread):
    """Every `every` seconds: the agent's RSS, CPU and gauges, and the CPU of the other processes."""

    def __init__(self, every: float, agent: Proc, metrics_url: str, others: dict[str, Proc]) -> None:
        super().__init__(daemon=True, name="sampler")
        self.every = every
        self.agent = agent
        self.metrics_url = metrics_url
        self.others = others
        self.samples: list[dict] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            self.samples.append(self.sample())
            next_at = max(next_at + self.every, time.monotonic() + self.every / 2)  # late: never a burst
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def sample(self) -> dict:
        row: dict[str, Any] = {"t": time.time(), "rss": proc_rss(self.agent.pid), "cpu": proc_cpu(self.agent.pid)}
        for name, proc in self.others.items():
            row[f"cpu_{name}"] = proc_cpu(proc.pid)
        row.update(scrape_gauges(self.metrics_url))
        return row

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def at(samples: list[dict], t: float, key: str) -> float | None:
    """The value of `key` in the sample nearest to wall time `t` (linear between the two around it)."""
    before = [s for s in samples if s["t"] <= t and s.get(key) is not None]
    after = [s for s in samples if s["t"] >= t and s.get(key) is not None]
    if not before and not after:
        return None
    if not before:
        return after[0][key]
    if not after:
        return before[-1][key]
    a, b = before[-1], after[0]
    if b["t"] == a["t"]:
        return a[key]
    return a[key] + (b[key] - a[key]) * (t - a["t"]) / (b["t"] - a["t"])


def cpu_between(samples: list[dict], key: str, t0: float, t1: float) -> float | None:
    a, b = at(samples, t0, key), at(samples, t1, key)
    return None if a is None or b is None else b - a


def peak(samples: list[dict], key: str, t0: float = -math.inf, t1: float = math.inf) -> float | None:
    values = [s[key] for s in samples if t0 <= s["t"] <= t1 and s.get(key) is not None]
    return max(values) if values else None


# -- the run ----------------------------------------------------------------------------------------------

def agent_config(workdir: Path, url: str, args: argparse.Namespace) -> tuple[dict, int, int]:
    grpc_port, http_port, telemetry_port = free_ports(3)
    exporter: dict[str, Any] = {
        "name": EXPORTER, "url": url, "protocol": args.protocol,
        "batch": {"flush_interval": f"{args.flush:g}s"},
        "queue": {"max_memory": args.max_memory},
    }
    if args.max_concurrency:
        exporter["sender"] = {"max_concurrency": args.max_concurrency}
    config = {
        "state_dir": str(workdir / "agent-state"),
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                               "http": {"endpoint": f"127.0.0.1:{http_port}"}}},
        "exporters": {"remote_write": [exporter]},
        "pipelines": {"metrics": {"exporters": [EXPORTER]}},
        "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "log_level": args.log_level},
    }
    return config, http_port, telemetry_port


def set_mode(control: str, mode: str) -> float:
    """Switch the proxy; the wall time it switched."""
    return float(http_json(f"{control}/mode", data=mode.encode(), method="PUT")["time"])


def proxy_stats(control: str, records_from: int = 0, delays: bool = False) -> dict:
    return http_json(f"{control}/stats?records={records_from}&delays={int(delays)}", timeout=60)


def gen_stats(generator: str, push_ms: bool = False) -> dict:
    return http_json(f"{generator}/stats?push_ms={int(push_ms)}", timeout=60)


def count_before(by_second: dict[str, int], second: int) -> int:
    return sum(n for s, n in by_second.items() if int(s) < second)


def delay_counts(delays: dict[str, dict[str, int]]) -> Counter:
    """Samples the proxy saw acknowledged, per second of their timestamp."""
    return Counter({int(s): sum(h.values()) for s, h in delays.items()})


def percentiles(histogram: Counter, qs: tuple[float, ...]) -> dict[float, float | None]:
    total = sum(histogram.values())
    out: dict[float, float | None] = {q: None for q in qs}
    if not total:
        return out
    running = 0
    wanted = sorted(qs)
    items = sorted(histogram.items())
    index = 0
    for value, n in items:
        running += n
        while index < len(wanted) and running >= wanted[index] * total:
            out[wanted[index]] = float(value)
            index += 1
    for q in wanted[index:]:
        out[q] = float(items[-1][0])
    return out


def merged_delays(delays: dict[str, dict[str, int]], first: int, last: int) -> Counter:
    """One delay histogram (ms) over samples stamped in seconds [first, last)."""
    merged: Counter = Counter()
    for second, histogram in delays.items():
        if first <= int(second) < last:
            for ms, n in histogram.items():
                merged[int(ms)] += n
    return merged


def start_profile(py_spy: str, pid: int, path: Path, workdir: Path, pinning: Pinning, rate: int,
                  duration: float, name: str) -> Proc:
    proc, _ = start(name, [*pinning.other(), py_spy, "record", "--format", "raw", "--rate", str(rate), "-o",
                           str(path), "--pid", str(pid), "--duration", str(max(1, int(duration)))], workdir)
    return proc


def end_profile(proc: Proc | None, early: bool) -> str | None:
    """Wait for py-spy (or stop it early with SIGINT, which makes it write what it has); its error, if any."""
    if proc is None:
        return None
    if early and proc.alive():
        proc.process.send_signal(signal.SIGINT)
    try:
        proc.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.stop()
    return None if proc.process.returncode == 0 else proc.log_tail(600)


def run_once(repeat: int, args: argparse.Namespace, pinning: Pinning, workroot: Path) -> dict:
    """One outage from fresh processes; every process it starts is stopped before it returns."""
    workdir = workroot / f"run-{repeat}"
    workdir.mkdir(parents=True)
    result: dict[str, Any] = {"repeat": repeat, "loadavg_start": os.getloadavg()}
    log = lambda message: print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        receiver, receiver_url = start_receiver(pinning, workdir)
        stack.callback(receiver.stop)
        proxy, announced = start("proxy", [*pinning.other(), sys.executable, str(BENCH_DIR / "outage_proxy.py"),
                                           "--upstream", receiver_url, "--latency", str(args.receiver_latency / 1000)],
                        workdir, env=python_env(), announce=True)
        stack.callback(proxy.stop)
        control = f"http://127.0.0.1:{announced['control_port']}"
        config, http_port, telemetry_port = agent_config(
            workdir, f"http://127.0.0.1:{announced['port']}/api/v1/write", args)
        config_path = workdir / "agent.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        agent, _ = start("agent", [*pinning.sender(), sys.executable, "-m", "agent", "run", "-c", str(config_path)],
                         workdir, env=python_env())
        stack.callback(agent.stop)
        wait_ready(agent, f"http://127.0.0.1:{telemetry_port}/readyz")
        metrics_url = f"http://127.0.0.1:{telemetry_port}/metrics"
        gen, announced = start("generator", [*pinning.other(), sys.executable, str(BENCH_DIR / "outage_load.py"),
                                             "--otlp-url", f"http://127.0.0.1:{http_port}", "--rate", str(args.rate),
                                             "--nodes", str(args.nodes), "--layout", args.layout],
                               workdir, env=python_env(), announce=True)
        stack.callback(gen.stop)
        generator = f"http://127.0.0.1:{announced['port']}"
        result.update(nodes=announced["nodes"], series=announced["series"], tick_s=announced["interval"],
                      requests_per_tick=announced["requests_per_interval"])
        sampler = Sampler(args.sample_every, agent, metrics_url, {"receiver": receiver, "proxy": proxy, "generator": gen})
        sampler.start()
        stack.callback(sampler.stop)
        py_spy = ensure_py_spy() if args.profile else None
        profiles: dict[str, str] = {}
        profile_errors: dict[str, str | None] = {}
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

        log(f"{announced['series']:,} series, a sample each every {announced['interval']:.3f}s in "
            f"{announced['requests_per_interval']} request(s); warm-up {args.warmup:g}s")
        time.sleep(args.warmup)
        t_steady = time.time()
        steady_profile = None
        if py_spy:
            path = args.output / f"outage-r{repeat}-steady-{stamp}.txt"
            steady_profile = start_profile(py_spy, agent.pid, path, workdir, pinning, args.profile_rate,
                                           args.steady, "py-spy-steady")
            profiles["steady"] = str(path)
        log(f"steady state {args.steady:g}s")
        time.sleep(args.steady)
        profile_errors["steady"] = end_profile(steady_profile, early=False)
        t_outage = set_mode(control, args.refuse_with)
        log(f"outage {args.outage:g}s ({args.refuse_with})")
        time.sleep(args.outage)
        catch_profile = None
        if py_spy:
            path = args.output / f"outage-r{repeat}-catchup-{stamp}.txt"
            catch_profile = start_profile(py_spy, agent.pid, path, workdir, pinning, args.profile_rate,
                                          args.recovery_timeout, "py-spy-catchup")
            profiles["catchup"] = str(path)
        t_return = set_mode(control, "forward")
        log("receiver back; waiting for the backlog to drain")

        # Drained: every sample stamped before the return (whole seconds) is acknowledged at the proxy.
        cut = math.floor(t_return)
        records: list[dict] = []
        t_drained = None
        deadline = time.monotonic() + args.recovery_timeout
        while time.monotonic() < deadline:
            time.sleep(1.0)
            stats = proxy_stats(control, len(records))
            records.extend(stats["records"])
            backlog = count_before(gen_stats(generator)["accepted_by_second"], cut)
            delivered = sum(r.get("samples", 0) for r in records
                            if 200 <= r["status"] < 300 and r.get("min_ts", math.inf) < cut * 1000)
            # Samples of requests holding anything from before the cut include some stamped after it: the
            # exact count comes from the delay histogram, read only once the rough one says done.
            if delivered >= backlog:
                counts = delay_counts(proxy_stats(control, len(records), delays=True)["delays"])
                if sum(n for s, n in counts.items() if s < cut) >= backlog:
                    t_drained = max(r["answered"] for r in records
                                    if 200 <= r["status"] < 300 and r.get("min_ts", math.inf) < cut * 1000)
                    break
        profile_errors["catchup"] = end_profile(catch_profile, early=True)
        log(f"drained {t_drained - t_return:.1f}s after the return" if t_drained else
            f"NOT drained within {args.recovery_timeout:g}s")
        time.sleep(args.settle)
        t_stop = float(http_json(f"{generator}/stop", data=b"", method="POST")["time"])
        final_deadline = time.monotonic() + 2 * args.flush + 30
        while time.monotonic() < final_deadline:
            time.sleep(1.0)
            if proxy_stats(control)["samples_accepted"] >= gen_stats(generator)["accepted_samples"] and \
                    gen_stats(generator)["in_flight"] == 0:
                break
        time.sleep(1.0)
        sampler.stop()
        final_gen = gen_stats(generator, push_ms=True)
        final_proxy = proxy_stats(control, 0, delays=True)
        t_end = time.time()
        log("counting what Prometheus stored")
        window = f"{int(t_end - t_steady + args.warmup + 120)}s"
        stored = stored_samples(receiver_url, window)
        stored_one = query_value(receiver_url, f'sum(count_over_time(node_load1{{instance="node-00"}}[{window}]))')
        result["exit_status"] = {"agent": agent.stop(), "generator": gen.stop()}
        result["logs"] = {p.name: p.log_tail(2000) for p in (agent, gen, proxy, receiver)}

    result.update(summarize(args, sampler.samples, final_gen, final_proxy, t_steady, t_outage, t_return,
                            t_drained, t_stop, stored, stored_one))
    result["loadavg_end"] = os.getloadavg()
    result["profiles"] = profiles
    result["profile_errors"] = {k: v for k, v in profile_errors.items() if v}
    result["timeline"] = sampler.samples
    result["proxy_records"] = final_proxy["records"]
    result["proxy_counters"] = {k: v for k, v in final_proxy.items() if k not in ("records", "delays")}
    result["generator"] = {k: v for k, v in final_gen.items() if k not in ("push_ms",)}
    return result


def summarize(args: argparse.Namespace, samples: list[dict], gen: dict, proxy: dict, t_steady: float,
              t_outage: float, t_return: float, t_drained: float | None, t_stop: float, stored: float | None,
              stored_one: float | None) -> dict:
    """Every figure of one run, from the sampler's timeline and the final counters."""
    accepted = {int(s): n for s, n in gen["accepted_by_second"].items()}
    delays = proxy["delays"]
    ok_records = [r for r in proxy["records"] if 200 <= r["status"] < 300]
    # Ingest: samples stamped in whole seconds of the steady window.
    s0, s1 = math.ceil(t_steady), math.floor(t_outage)
    ingest = sum(n for s, n in accepted.items() if s0 <= s < s1) / max(1, s1 - s0)
    # Steady-state delay: samples stamped in the window, up to flush + 2 s before the outage.
    d1 = math.floor(t_outage - args.flush - 2)
    steady_hist = merged_delays(delays, s0, d1)
    steady_expected = sum(n for s, n in accepted.items() if s0 <= s < d1)
    p = percentiles(steady_hist, (0.5, 0.9, 0.99, 0.999, 1.0))
    push = Counter()
    for second, histogram in (gen.get("push_ms") or {}).items():
        if s0 <= int(second) < d1:
            for ms, n in histogram.items():
                push[int(ms)] += n
    push_p = percentiles(push, (0.5, 0.99))
    out: dict[str, Any] = {
        "ingest_per_s": ingest,
        "steady_window": [s0, s1],
        "steady_delay_ms": {"p50": p[0.5], "p90": p[0.9], "p99": p[0.99], "p999": p[0.999], "max": p[1.0],
                            "samples": sum(steady_hist.values()), "samples_stamped": steady_expected},
        "push_ms": {"p50": push_p[0.5], "p99": push_p[0.99]},
        "t": {"steady": t_steady, "outage": t_outage, "return": t_return, "drained": t_drained, "stop": t_stop},
    }
    # Catch-up.
    cut = math.floor(t_return)
    after = sorted((r for r in ok_records if r["answered"] >= t_return), key=lambda r: r["answered"])
    first_ack = after[0]["answered"] if after else None
    out["outage_s"] = t_return - t_outage
    out["backlog_samples_at_return"] = sum(n for s, n in accepted.items() if s < cut) - sum(
        r["samples"] for r in ok_records if r["answered"] < t_return)
    out["first_ack_after_return_s"] = first_ack - t_return if first_ack else None
    if t_drained is not None and first_ack is not None:
        acked = sum(r["samples"] for r in after if r["answered"] <= t_drained)
        drain = t_drained - first_ack
        out["drain_s"] = t_drained - t_return
        out["catchup_per_s"] = acked / drain if drain > 0 else None
        out["catchup_x"] = out["catchup_per_s"] / ingest if out["catchup_per_s"] and ingest else None
        out["catchup_from_return_per_s"] = acked / (t_drained - t_return)
        out["catchup_from_return_x"] = out["catchup_from_return_per_s"] / ingest if ingest else None
        # The best 10 s of acknowledgements while draining.
        best = 0.0
        for r in after:
            if r["answered"] > t_drained:
                break
            window = sum(q["samples"] for q in after if r["answered"] <= q["answered"] < r["answered"] + 10)
            best = max(best, window / 10)
        out["catchup_best_10s_per_s"] = best
        # Requests in flight at the proxy, and their size, while draining.
        draining = [r for r in after if r["answered"] <= t_drained]
        out["catchup_requests"] = len(draining)
        out["catchup_samples_per_request"] = acked / len(draining) if draining else None
        out["catchup_in_flight_median"] = statistics.median(r["in_flight"] for r in draining) if draining else None
        out["catchup_in_flight_max"] = max((r["in_flight"] for r in draining), default=None)
        out["catchup_receiver_latency_median_s"] = statistics.median(
            r["answered"] - r["start"] for r in draining) if draining else None
    # The gauge's view: the first sample after the return whose oldest age is back to the steady level.
    steady_age = peak(samples, "oldest_age", t_steady, t_outage)
    back = [s for s in samples if s["t"] > t_return and s.get("oldest_age") is not None
            and steady_age is not None and s["oldest_age"] <= steady_age + 1.0]
    out["gauge_steady_oldest_age_s"] = steady_age
    out["gauge_drained_s"] = back[0]["t"] - t_return if back else None
    # Memory.
    rss_steady = [s["rss"] for s in samples if t_steady <= s["t"] <= t_outage and s.get("rss")]
    out["rss_steady_mib"] = statistics.median(rss_steady) / 2**20 if rss_steady else None
    out["rss_peak_mib"] = (peak(samples, "rss") or 0) / 2**20
    out["rss_growth_mib"] = out["rss_peak_mib"] - out["rss_steady_mib"] if rss_steady else None
    out["queue_memory_peak_mib"] = (peak(samples, "queue_memory") or 0) / 2**20
    # The gauge counts the pending flush too (up to four requests' worth before it is cut); at steady state
    # the queue holds next to nothing, so the gauge's steady peak is the pending flush at its largest.
    out["queue_memory_steady_peak_mib"] = (peak(samples, "queue_memory", t_steady, t_outage) or 0) / 2**20
    out["queue_memory_over_pending_mib"] = out["queue_memory_peak_mib"] - out["queue_memory_steady_peak_mib"]
    out["queue_disk_peak_mib"] = (peak(samples, "queue_disk") or 0) / 2**20
    out["max_memory_mib"] = args.max_memory / 2**20
    out["memory_within_bound"] = (out["queue_memory_over_pending_mib"] <= out["max_memory_mib"]
                                  and (out["rss_growth_mib"] or 0) <= out["max_memory_mib"])
    out["concurrency_peak"] = peak(samples, "concurrency", t_return, t_drained or math.inf)
    out["batch_samples_min_catchup"] = min((s["batch_samples"] for s in samples if s.get("batch_samples") is not None
                                            and t_return <= s["t"] <= (t_drained or math.inf)), default=None)
    # CPU per million samples, per phase.
    cpu_rates: dict[str, dict] = {}
    phases = {"steady": (t_steady, t_outage), "outage": (t_outage, t_return)}
    if t_drained is not None:
        phases["catchup"] = (t_return, t_drained)
    for phase, (a, b) in phases.items():
        seconds = b - a
        cpu = {k: cpu_between(samples, k, a, b) for k in ("cpu", "cpu_receiver", "cpu_proxy", "cpu_generator")}
        cpu_rates[phase] = {k: (v / seconds if v is not None else None) for k, v in cpu.items()}
        if phase == "catchup":
            moved = sum(r["samples"] for r in after if r["answered"] <= b)
        else:
            moved = sum(n for s, n in accepted.items() if math.ceil(a) <= s < math.floor(b)) * seconds / max(
                1, math.floor(b) - math.ceil(a))
        cpu_rates[phase]["samples"] = moved
        cpu_rates[phase]["agent_cpu_s_per_million"] = cpu["cpu"] / moved * 1e6 if cpu["cpu"] and moved else None
    if "catchup" in cpu_rates and cpu_rates["steady"]["cpu"] is not None and t_drained is not None:
        # What draining the backlog cost on top of carrying the live load: the steady CPU rate taken out.
        a, b = t_return, t_drained
        extra_cpu = cpu_between(samples, "cpu", a, b) - cpu_rates["steady"]["cpu"] * (b - a)
        extra_samples = cpu_rates["catchup"]["samples"] - ingest * (b - a)
        cpu_rates["catchup"]["agent_cpu_s_per_extra_million"] = extra_cpu / extra_samples * 1e6 \
            if extra_samples > 0 else None
    out["cpu"] = cpu_rates
    # Correctness.
    generated = gen["accepted_samples"]
    proxied = proxy["samples_accepted"]
    out["check"] = {
        "generated": generated, "proxied_accepted": proxied, "stored": stored, "stored_node_load1_node00": stored_one,
        "receiver_refusals": proxy["errors"], "decode_errors": proxy["decode_errors"],
        "generator_errors": gen["errors"], "generator_refused": gen["refused"], "generator_skipped": gen["skipped"],
        "generator_late": gen["late"], "steady_samples_timed": sum(steady_hist.values()),
        "steady_samples_stamped": steady_expected,
        "lost": stored is None or stored < generated,
        "sent_twice": proxied > generated,
    }
    out["check"]["ok"] = (not out["check"]["lost"] and stored == generated and proxied == generated
                          and proxy["errors"] == 0 and t_drained is not None)
    return out


# -- the report -------------------------------------------------------------------------------------------

ROWS = (
    # key, label, format, goal text, goal check
    ("ingest_per_s", "ingest rate, samples/s", ",.0f", "", None),
    ("steady_p50_ms", "steady delay p50, ms", ",.0f", "", None),
    ("steady_p99_ms", "steady delay p99, ms", ",.0f", "< flush + 100", lambda v, a: v < a.flush * 1000 + 100),
    ("steady_max_ms", "steady delay max, ms", ",.0f", "", None),
    ("push_p99_ms", "generator push p99 (stamp to agent's 200), ms", ",.0f", "", None),
    ("backlog_samples_at_return", "backlog at the return, samples", ",.0f", "", None),
    ("first_ack_after_return_s", "first acknowledgement after the return, s", ".1f", "", None),
    ("drain_s", "backlog drained after the return, s", ".1f", "", None),
    ("gauge_drained_s", "oldest-age gauge back to steady, s after return", ".1f", "", None),
    ("catchup_per_s", "catch-up, samples/s acknowledged", ",.0f", "", None),
    ("catchup_x", "catch-up / ingest rate", ".2f", ">= 3", lambda v, a: v >= 3.0),
    ("catchup_from_return_x", "  same, from the return (incl. retry wait)", ".2f", "", None),
    ("catchup_best_10s_x", "  best 10 s / ingest rate", ".2f", "", None),
    ("catchup_samples_per_request", "catch-up samples/request", ",.0f", "", None),
    ("catchup_in_flight_median", "catch-up requests in flight at the proxy (median)", ".1f", "", None),
    ("concurrency_peak", "headwater_sender_concurrency peak in catch-up", ".0f", "", None),
    ("catchup_receiver_latency_ms", "catch-up receiver latency median, ms", ",.0f", "", None),
    ("queue_memory_peak_mib", "queue memory gauge peak, MiB", ".1f", "<= max_memory",
     lambda v, a: v <= a.max_memory / 2**20),
    ("queue_memory_steady_peak_mib", "  its steady-state peak (the pending flush), MiB", ".1f", "", None),
    ("queue_memory_over_pending_mib", "  peak - steady peak (the queue itself), MiB", ".1f", "<= max_memory",
     lambda v, a: v <= a.max_memory / 2**20),
    ("queue_disk_peak_mib", "queue disk peak, MiB", ".1f", "", None),
    ("rss_steady_mib", "agent RSS at steady state, MiB", ".0f", "", None),
    ("rss_peak_mib", "agent RSS peak, MiB", ".0f", "", None),
    ("rss_growth_mib", "agent RSS peak - steady, MiB", ".0f", "<= max_memory", lambda v, a: v <= a.max_memory / 2**20),
    ("cpu_steady", "agent CPU s / 1M samples, steady", ".2f", "", None),
    ("cpu_outage", "agent CPU s / 1M samples, outage (queued)", ".2f", "", None),
    ("cpu_catchup", "agent CPU s / 1M samples, catch-up (acknowledged)", ".2f", "", None),
    ("cpu_catchup_extra", "  per extra 1M (steady CPU rate taken out)", ".2f", "", None),
    ("cpu_share_catchup", "agent CPU share in catch-up, of one core", ".0%", "", None),
    ("others_share_catchup", "Prometheus + proxy + generator CPU share in catch-up", ".0%", "", None),
)


def flat(run: dict) -> dict[str, float | None]:
    """The table's figures of one run."""
    cpu = run.get("cpu", {})

    def c(phase: str, key: str) -> float | None:
        return cpu.get(phase, {}).get(key)

    others = None
    if "catchup" in cpu and all(c("catchup", k) is not None for k in ("cpu_receiver", "cpu_proxy", "cpu_generator")):
        others = c("catchup", "cpu_receiver") + c("catchup", "cpu_proxy") + c("catchup", "cpu_generator")
    latency = run.get("catchup_receiver_latency_median_s")
    best = run.get("catchup_best_10s_per_s")
    return {
        **{k: run.get(k) for k in ("ingest_per_s", "backlog_samples_at_return", "first_ack_after_return_s", "drain_s",
                                   "gauge_drained_s", "catchup_per_s", "catchup_x", "catchup_from_return_x",
                                   "catchup_samples_per_request", "catchup_in_flight_median", "concurrency_peak",
                                   "queue_memory_peak_mib", "queue_memory_steady_peak_mib",
                                   "queue_memory_over_pending_mib", "queue_disk_peak_mib", "rss_steady_mib", "rss_peak_mib",
                                   "rss_growth_mib")},
        "steady_p50_ms": run["steady_delay_ms"]["p50"], "steady_p99_ms": run["steady_delay_ms"]["p99"],
        "steady_max_ms": run["steady_delay_ms"]["max"], "push_p99_ms": run["push_ms"]["p99"],
        "catchup_best_10s_x": best / run["ingest_per_s"] if best and run.get("ingest_per_s") else None,
        "catchup_receiver_latency_ms": latency * 1000 if latency is not None else None,
        "cpu_steady": c("steady", "agent_cpu_s_per_million"), "cpu_outage": c("outage", "agent_cpu_s_per_million"),
        "cpu_catchup": c("catchup", "agent_cpu_s_per_million"),
        "cpu_catchup_extra": c("catchup", "agent_cpu_s_per_extra_million"),
        "cpu_share_catchup": c("catchup", "cpu"), "others_share_catchup": others,
    }


def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(runs: list[dict], args: argparse.Namespace) -> tuple[str, dict]:
    done = [flat(r) for r in runs if "error" not in r]
    medians: dict[str, float | None] = {}
    head = f"{'figure':<52} {'median':>10} {'min':>10} {'max':>10}  {'goal':<14} met"
    lines = [head, "-" * len(head)]
    for key, label, spec, goal, check in ROWS:
        values = [d[key] for d in done if d.get(key) is not None]
        median = statistics.median(values) if values else None
        medians[key] = median
        met = ("yes" if check(median, args) else "NO") if check and median is not None else ""
        lines.append(f"{label:<52} {fmt(median, spec):>10} {fmt(min(values) if values else None, spec):>10} "
                     f"{fmt(max(values) if values else None, spec):>10}  {goal:<14} {met}")
    checks = [r["check"] for r in runs if "check" in r]
    for i, c in enumerate(checks, 1):
        verdict = "ok" if c["ok"] else ("LOST SAMPLES" if c["lost"] else "CHECK FAILED")
        lines.append(f"check run {i}: {verdict}: generated {c['generated']:,}, acknowledged at the proxy "
                     f"{c['proxied_accepted']:,}, stored {fmt(c['stored'], ',.0f')}, receiver refusals "
                     f"{c['receiver_refusals']}, generator errors/refused/skipped/late {c['generator_errors']}/"
                     f"{c['generator_refused']}/{c['generator_skipped']}/{c['generator_late']}")
    return "\n".join(lines), medians


def environment(pinning: Pinning) -> dict:
    version = subprocess.run([str(PROMETHEUS_BINARY), "--version"], check=False, capture_output=True, text=True)
    return {"python": sys.version.split()[0], "cores": os.cpu_count(), "pinned": pinning.enabled,
            "agent_core": pinning.sender_core, "other_core": pinning.other_core,
            "prometheus": ((version.stdout or version.stderr).splitlines() or [""])[0],
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, check=False,
                                     capture_output=True, text=True).stdout.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50_000, help="samples/s the load generator sends")
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes of 523 series; each series gets a "
                        "sample every nodes x 523 / rate seconds")
    parser.add_argument("--layout", choices=["combined", "per-node"], default="combined",
                        help="one OTLP request per tick holding every node, or one per node")
    parser.add_argument("--outage", type=float, default=180.0, help="seconds the receiver is away")
    parser.add_argument("--flush", type=float, default=5.0, help="the agent's batch.flush_interval, seconds")
    parser.add_argument("--protocol", default="rw1", choices=["rw1", "auto"],
                        help="the agent's wire format (Prometheus 2.42 and the proxy's timing read rw1; auto "
                             "negotiates down to it)")
    parser.add_argument("--max-memory", type=parse_size, default=parse_size("64MiB"),
                        help="the agent's queue.max_memory (its default: 64MiB)")
    parser.add_argument("--max-concurrency", type=int, default=0,
                        help="the agent's sender.max_concurrency (0: its default)")
    parser.add_argument("--refuse-with", choices=["refuse", "503"], default="refuse",
                        help="how the proxy is away: connections refused, or 503 answers")
    parser.add_argument("--receiver-latency", type=float, default=0.0,
                        help="ms the proxy holds every request before forwarding it (a remote receiver: slow per "
                             "request, parallel)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the steady window")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of the steady-state window")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of load after the backlog drained")
    parser.add_argument("--recovery-timeout", type=float, default=0.0,
                        help="longest wait for the backlog to drain (0: 4 x outage + 60 s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs (the table shows medians)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test of about a minute: warm-up 5 s, steady 12 s, outage 20 s, settle 2 s")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between RSS/CPU/gauge samples")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the agent at steady state and during catch-up (collapsed stacks)")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--log-level", default="warning", help="the agent's log level")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, data)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steady, args.outage, args.settle = 5.0, 12.0, 20.0, 2.0
    if not args.recovery_timeout:
        args.recovery_timeout = 4 * args.outage + 60
    if args.steady < args.flush + 5:
        parser.error(f"--steady must be at least flush + 5 s ({args.flush + 5:g}) to time any sample")
    if not os.access(PROMETHEUS_BINARY, os.X_OK):
        parser.error(f"{PROMETHEUS_BINARY} is missing: run tests/peers/install-prometheus.sh")
    pinning = Pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        print("warning: not pinning (needs taskset and 2 cores)", file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    workroot = Path(tempfile.mkdtemp(prefix="headwater-outage-bench-"))
    runs: list[dict] = []
    try:
        for repeat in range(1, args.repeats + 1):
            print(f"run {repeat}/{args.repeats}: rate {args.rate:,.0f}/s, flush {args.flush:g}s, outage "
                  f"{args.outage:g}s ({args.refuse_with}), {args.protocol}", file=sys.stderr, flush=True)
            try:
                runs.append(run_once(repeat, args, pinning, workroot))
            except (RuntimeError, OSError, urllib.error.URLError, KeyError, ValueError) as exc:
                print(f"  failed: {exc!r}", file=sys.stderr)
                runs.append({"repeat": repeat, "error": repr(exc)[-3000:]})
    finally:
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    done = [r for r in runs if "error" not in r]
    text, medians = table(runs, args) if done else ("no run finished", {})
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    head = (f"outage bench, {len(done)} run(s), medians: {args.nodes} nodes x 523 series ({args.layout}), "
            f"{args.rate:,.0f} samples/s; flush {args.flush:g}s, {args.protocol}, outage {args.outage:g}s "
            f"({args.refuse_with}), queue.max_memory {args.max_memory / 2**20:g} MiB"
            + (f", receiver latency +{args.receiver_latency:g} ms" if args.receiver_latency else "")
            + ("; PROFILED" if args.profile else ""))
    print(f"\n{head}\n{text}")
    result = {"benchmark": "outage", "started_at": started_at.isoformat(timespec="seconds"), "settings": settings,
              "environment": environment(pinning), "medians": medians, "table": text, "runs": runs}
    path = args.output / f"outage-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwritten to {path}" + (f" (work directory kept: {workroot})" if args.keep else ""), file=sys.stderr)
    for r in done:
        for kind, p in r.get("profiles", {}).items():
            print(f"py-spy {kind} profile of run {r['repeat']}: {p}", file=sys.stderr)
    if any(not r["check"]["ok"] for r in done):
        print("error: a run lost samples, sent some twice, or the receiver refused some", file=sys.stderr)
        return 2
    return 1 if len(done) < len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
