"""The remote-write benchmark: bytes on the wire per sample and sender CPU per million samples, for Headwater
in each wire format beside Prometheus 2.42 in agent mode and vmagent 1.79, on the same workload, in one run.

    python bench/remote_write.py [--protocols rw1,compact] [--flush 5,1] [--duration 60] [--warmup 15]
                                 [--senders headwater,prometheus,vmagent] [--repeats 1] [--profile]

Why this shape: the figures that decide whether Headwater earns its place on a node are what it costs in
network bytes and in CPU to ship a node's metrics, compared with the tools people would otherwise run. Those
only compare when every sender ships the same series with the same values, its bytes are counted the same
way outside of it, its CPU is read the same way, and the receiver proves it stored what was sent.

Per sender and flush interval, one after another (never two senders at once), with a fresh receiver each:
1. a real Prometheus 2.42 (`--web.enable-remote-write-receiver`, temporary storage) is started on core 1;
   `bench/rw_proxy.py` (one proxy for the whole run, one path per sender) forwards to it and counts bytes,
   requests and, for remote write 1.0 bodies, samples;
2. the sender starts on core 0, writing through the proxy:
   - Headwater (`python -m agent run`), fed OTLP/HTTP, `protocol: <p>`, `batch.flush_interval: <flush>`;
     formats Prometheus 2.42 cannot ingest (rw2, vm, compact) go node agent -> proxy -> a second Headwater
     in gateway mode (core 1; `receivers.remote_write`) -> proxy -> Prometheus as rw1. A protocol the agent
     refuses (its config validation fails) is reported "not available" and the run goes on;
   - Prometheus in agent mode scraping the workload every interval, `queue_config.batch_send_deadline: <flush>`;
   - vmagent scraping the same, `-remoteWrite.flushInterval=<flush>`;
   every other setting of each sender is its default;
3. idle: `--idle` seconds with the sender running and no workload (no OTLP pushes, nothing to scrape), for
   the sender's idle CPU;
4. `bench/node_workload.py` starts on core 1 (10 nodes x 523 node-exporter-like series, 1 s interval): it
   pushes OTLP to Headwater, or serves /metrics/<node> to the scrapers; `--warmup` seconds pass so that
   caches, dictionaries and queues reach steady state;
5. the measured window (`--duration`): CPU of the sender's process tree (utime+stime from /proc, children
   included) and the proxy's and generator's counters are read at its start and end;
6. the end: Headwater's load stops and it gets a flush interval (twice with a gateway) to drain; then the
   sender is stopped (SIGTERM) and the receiver is asked how many workload samples it stored
   (`sum(count_over_time({job="node-exporter"}[...]))`) and how many of one series (`node_load1` of
   node-00), compared with what the proxy saw accepted and what the generator produced.

Samples are counted as the proxy decoded them (rw1 bodies with `exporters.remote_write.rw1.decode`);
a format the proxy does not decode (rw2, compact) is counted with the node agent's own
`headwater_remote_write_samples_sent_total`, cross-checked against the gateway's forwarded rw1 traffic.
The scrapers' synthetic series (`up`, `scrape_*`) stay in both bytes and samples, as they are part of what
those senders ship; how many there were is reported. CPU per 1M samples = window CPU seconds / window samples
x 1e6; "per extra 1M" first subtracts the idle CPU rate over the window, as the peers' published figures do.

Output: a table on stdout and everything (settings, environment, every run's raw counters, the table) as JSON
in bench/results/remote-write-<time>.json. Exit status 2 when a sender lost samples (the proxy saw far fewer
than the generator produced) or the receiver stored fewer than the proxy saw accepted; 0 otherwise.
`--profile` records the Headwater sender (and its gateway) with py-spy during the window (installed into
the running interpreter's environment with pip if missing) as collapsed stacks, and prints where they went
(`python bench/profile_summary.py FILE` shows the hot functions); CPU figures of a profiled run are not
results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ingest import free_ports  # bench/ is this script's first import path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PEERS = REPO_ROOT / ".cache" / "peers"
PROMETHEUS_BINARY = PEERS / "prometheus" / "usr" / "bin" / "prometheus"
VMAGENT_BINARY = PEERS / "victoriametrics" / "usr" / "bin" / "vmagent"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

HEADWATER_PROTOCOLS = ("rw1", "rw2", "vm", "compact", "auto")
NEEDS_GATEWAY = ("rw2", "vm", "compact")
"""Formats Prometheus 2.42 cannot ingest: they reach it through a Headwater gateway that forwards rw1."""
SENDERS = ("headwater", "prometheus", "vmagent")
JOB = "node-exporter"
DEFAULT_GATEWAY_RECEIVER = '{"remote_write": {"endpoint": "127.0.0.1:{port}"}}'


# -- processes --------------------------------------------------------------------------------------------

class Pinning:
    """`taskset -c N` prefixes: senders on the first core, everything else on the second, so the sender's
    CPU is not inflated by the generator, proxy and receiver it is measured against. Without taskset or a
    second core, nothing is pinned (reported)."""

    def __init__(self, enabled: bool) -> None:
        cores = sorted(os.sched_getaffinity(0))
        self.enabled = enabled and shutil.which("taskset") is not None and len(cores) >= 2
        self.sender_core, self.other_core = (cores[0], cores[1]) if len(cores) >= 2 else (cores[0], cores[0])

    def sender(self) -> list[str]:
        return ["taskset", "-c", str(self.sender_core)] if self.enabled else []

    def other(self) -> list[str]:
        return ["taskset", "-c", str(self.other_core)] if self.enabled else []


@dataclass
class Proc:
    """A process the bench started, with its log; `stop` terminates, waits, then kills."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def start(name: str, command: Sequence[str], workdir: Path, *, env: dict[str, str] | None = None,
          announce: bool = False) -> tuple[Proc, dict]:
    """Starts a process with its stderr (and stdout unless `announce`) in `<workdir>/<name>.log`. With
    `announce`, waits for the JSON line the bench's own servers print once they listen and returns it."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(command), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE if announce else log, stderr=log,
                                   text=announce or None)
    proc = Proc(name, process, log_path)
    if not announce:
        return proc, {}
    line = process.stdout.readline()
    if not line:
        proc.stop()
        raise RuntimeError(f"{name} exited before it listened:\n{proc.log_tail()}")
    return proc, json.loads(line)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def answers_200(url: str) -> bool:
    """Whether `url` answers 200 now; False while nothing listens there yet."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(proc: Proc, url: str, timeout: float = 60.0) -> None:
    """Polls `url` until it answers 200; raises with the process's log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with status {proc.process.returncode}:\n{proc.log_tail()}")
        if answers_200(url):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready at {url} within {timeout}s:\n{proc.log_tail()}")
        time.sleep(0.1)


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime+stime+cutime+cstime in seconds) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, its threads, its live descendants and its reaped children
    so far: the whole sender, whatever it forks."""
    parents: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[0], []).append(int(entry.name))
                times[int(entry.name)] = stat[1]
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(parents.get(current, ()))
    return total


def tree_cpu_ns(pid: int) -> float:
    """On-CPU seconds of the live threads of a process and its live descendants, from schedstat (kernel
    nanoseconds). Why beside `tree_cpu`: utime and stime count 10 ms clock ticks, and a gateway spends only
    ~0.1 s in a 20 s window, so each of its readings is ~10 ticks and one tick is 10 %. Threads that ended
    are not counted (the agent's threads live as long as it does)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(Path(task.path, "schedstat").read_text().split()[0])
        todo.extend(children.get(current, ()))
    return total / 1e9


def http_json(url: str, data: bytes | None = None, method: str | None = None, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def counter_total(metrics_url: str, name: str) -> float | None:
    """The sum over label sets of one counter in a Prometheus text exposition; None if absent or unreachable."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
    values = [float(v) for v in pattern.findall(text)]
    return sum(values) if values else None


# -- the peers --------------------------------------------------------------------------------------------

def start_receiver(pinning: Pinning, workdir: Path) -> tuple[Proc, str]:
    """A fresh Prometheus 2.42 with the remote-write receiver on, temporary storage, nothing to scrape."""
    port = free_ports(1)[0]
    config = workdir / "receiver.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    proc, _ = start("receiver", [*pinning.other(), str(PROMETHEUS_BINARY), f"--config.file={config}",
                                 f"--storage.tsdb.path={workdir / 'receiver-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver",
                                 "--log.level=warn"], workdir)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/-/ready")
    return proc, url


def query(url: str, promql: str) -> list[dict]:
    payload = http_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=60)
    if payload.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {payload}")
    return payload["data"]["result"]


def query_value(url: str, promql: str) -> float | None:
    try:
        result = query(url, promql)
    except (RuntimeError, urllib.error.URLError, OSError):
        return None
    return float(result[0]["value"][1]) if result else 0.0


def stored_samples(url: str, window: str) -> float | None:
    """Samples of the workload's job the receiver stored within `window`, one metric name at a time:
    `count_over_time` drops `__name__`, so over every name at once series of different metrics with the
    same other labels collide and the query fails."""
    try:
        query_string = urllib.parse.urlencode({"match[]": "{job=" + json.dumps(JOB) + "}"})
        names = http_json(f"{url}/api/v1/label/__name__/values?{query_string}")["data"]
    except (urllib.error.URLError, OSError, KeyError):
        return None
    total = 0.0
    for name in names:
        value = query_value(url, f'sum(count_over_time({{__name__="{name}",job="{JOB}"}}[{window}]))')
        if value is None:
            return None
        total += value
    return total


def scrape_config(interval: float, generator_port: int, nodes: int) -> dict:
    """One target per node, `/metrics/<node>`, honoring the exposition's job/instance labels; the job name
    differs from the workload's `job` so the scrapers' synthetic series stay apart in queries."""
    seconds = f"{interval:g}s"
    return {
        "global": {"scrape_interval": seconds, "scrape_timeout": seconds},
        "scrape_configs": [{
            "job_name": "scrape",
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{generator_port}"],
                                "labels": {"__metrics_path__": f"/metrics/node-{i:02d}"}} for i in range(nodes)],
        }],
    }


@dataclass
class Spec:
    """One sender configuration of the comparison."""

    key: str  # the label in the table
    kind: str  # headwater | prometheus | vmagent
    protocol: str = ""
    via_gateway: bool = False


@dataclass
class Running:
    """A started sender: the process measured, the gateway (if any), and where its traffic is counted."""

    sender: Proc
    path: str  # proxy path of the sender's own requests
    receiver_path: str  # proxy path of the requests that reach the receiver (the gateway's, with one)
    gateway: Proc | None = None
    telemetry: str | None = None  # Headwater's /metrics
    gateway_telemetry: str | None = None
    otlp_url: str | None = None  # Headwater's OTLP/HTTP base URL, where the generator pushes
    extra: list[Proc] = field(default_factory=list)


def headwater_config(workdir: Path, name: str, url: str, protocol: str, flush: float, args: argparse.Namespace,
                     receivers_extra: dict | None = None) -> tuple[dict, int, int]:
    """A Headwater config with one remote-write exporter; returns it, its OTLP/HTTP port and telemetry port."""
    grpc_port, http_port, telemetry_port = free_ports(3)
    exporter: dict[str, Any] = {"name": "bench", "url": url, "protocol": protocol,
                                "batch": {"max_samples": args.max_samples, "max_bytes": args.max_bytes,
                                          "flush_interval": f"{flush:g}s"}}
    if args.compression and protocol != "rw1":
        exporter["compression"] = args.compression
    receivers: dict[str, Any] = {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                                          "http": {"endpoint": f"127.0.0.1:{http_port}", "max_body_size": "64MiB"}}}
    receivers.update(receivers_extra or {})
    config = {
        "state_dir": str(workdir / f"{name}-state"),
        "receivers": receivers,
        "exporters": {"remote_write": [exporter]},
        "pipelines": {"metrics": {"exporters": ["bench"]}},
        "telemetry": {"endpoint": f"127.0.0.1:{telemetry_port}", "log_level": args.log_level},
    }
    return config, http_port, telemetry_port


def validate(config: dict, path: Path) -> str | None:
    """None if `python -m agent validate` accepts the config, else its complaint (the protocol may not
    exist yet on this branch: that is "not available", not a failure of the run)."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "agent", "validate", "-c", str(path)], check=False,
                            cwd=REPO_ROOT,
                            env=python_env(), capture_output=True, text=True, timeout=60)
    if result.returncode == 0:
        return None
    return " ".join((result.stderr or result.stdout).split())[:400] or f"exit status {result.returncode}"


class NotAvailable(Exception):
    """The agent refused this sender's config: reported, and the run goes on."""


def start_headwater(spec: Spec, flush: float, args: argparse.Namespace, pinning: Pinning, workdir: Path,
                    proxy: str, path: str, receiver_url: str) -> Running:
    gateway_proc = None
    gateway_telemetry = None
    receiver_path = path
    if spec.via_gateway:
        receiver_path = f"{path}-gw"
        gateway_port = free_ports(1)[0]
        receiver = json.loads(args.gateway_receiver.replace("{port}", str(gateway_port)))
        gw_config, _, gw_telemetry_port = headwater_config(workdir, "gateway", f"{proxy}/{receiver_path}/api/v1/write",
                                                           "rw1", flush, args, receiver)
        problem = validate(gw_config, workdir / "gateway.yaml")
        if problem:
            raise NotAvailable(f"gateway: {problem}")
        set_route(proxy, path, f"http://127.0.0.1:{gateway_port}")
        set_route(proxy, receiver_path, receiver_url)
    else:
        set_route(proxy, path, receiver_url)
    config, http_port, telemetry_port = headwater_config(workdir, "node", f"{proxy}/{path}/api/v1/write",
                                                         spec.protocol, flush, args)
    problem = validate(config, workdir / "node.yaml")
    if problem:
        raise NotAvailable(problem)
    if spec.via_gateway:
        gateway_proc, _ = start("gateway", [*pinning.other(), sys.executable, "-m", "agent", "run", "-c",
                                            str(workdir / "gateway.yaml")], workdir, env=python_env())
        gateway_telemetry = f"http://127.0.0.1:{gw_telemetry_port}"
        try:
            wait_ready(gateway_proc, f"{gateway_telemetry}/readyz")
        except RuntimeError:
            gateway_proc.stop()
            raise
    node, _ = start("node", [*pinning.sender(), sys.executable, "-m", "agent", "run", "-c", str(workdir / "node.yaml")],
                    workdir, env=python_env())
    running = Running(node, path, receiver_path, gateway_proc, f"http://127.0.0.1:{telemetry_port}/metrics",
                      f"{gateway_telemetry}/metrics" if gateway_telemetry else None, f"http://127.0.0.1:{http_port}")
    try:
        wait_ready(node, f"http://127.0.0.1:{telemetry_port}/readyz")
    except RuntimeError:
        stop_running(running)
        raise
    return running


def start_prometheus_agent(flush: float, args: argparse.Namespace, pinning: Pinning, workdir: Path, proxy: str,
                           path: str, receiver_url: str, generator_port: int) -> Running:
    set_route(proxy, path, receiver_url)
    config = scrape_config(args.interval, generator_port, args.nodes)
    config["remote_write"] = [{"url": f"{proxy}/{path}/api/v1/write",
                               "queue_config": {"batch_send_deadline": f"{flush:g}s"}}]
    config_path = workdir / "prometheus-agent.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_ports(1)[0]
    proc, _ = start("prometheus-agent", [*pinning.sender(), str(PROMETHEUS_BINARY), "--enable-feature=agent",
                                         f"--config.file={config_path}",
                                         f"--storage.agent.path={workdir / 'prometheus-agent-data'}",
                                         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], workdir)
    running = Running(proc, path, path)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/-/ready")
    except RuntimeError:
        stop_running(running)
        raise
    return running


def start_vmagent(flush: float, args: argparse.Namespace, pinning: Pinning, workdir: Path, proxy: str, path: str,
                  receiver_url: str, generator_port: int) -> Running:
    set_route(proxy, path, receiver_url)
    config_path = workdir / "vmagent.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(args.interval, generator_port, args.nodes), sort_keys=False))
    port = free_ports(1)[0]
    proc, _ = start("vmagent", [*pinning.sender(), str(VMAGENT_BINARY), f"-promscrape.config={config_path}",
                                f"-remoteWrite.url={proxy}/{path}/api/v1/write",
                                f"-remoteWrite.flushInterval={flush:g}s",
                                f"-remoteWrite.tmpDataPath={workdir / 'vmagent-data'}",
                                f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"], workdir)
    running = Running(proc, path, path)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health")
    except RuntimeError:
        stop_running(running)
        raise
    return running


def stop_running(running: Running) -> dict[str, int | None]:
    """Sender first (it flushes what it holds on SIGTERM), then the gateway it may still be writing to."""
    codes = {"sender": running.sender.stop()}
    if running.gateway is not None:
        codes["gateway"] = running.gateway.stop()
    for proc in running.extra:
        proc.stop()
    return codes


def set_route(proxy: str, name: str, target: str) -> None:
    http_json(f"{proxy}/_routes/{name}", data=target.encode(), method="PUT")


def ensure_py_spy() -> str:
    """py-spy beside the interpreter running the bench, installed with pip if it is missing."""
    candidate = Path(sys.executable).parent / "py-spy"
    found = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return str(candidate)


# -- one measurement --------------------------------------------------------------------------------------

COUNTERS = ("requests", "errors", "upstream_errors", "wire_bytes", "uncompressed_bytes", "undecoded_requests",
            "decode_errors", "samples", "samples_accepted", "series_entries", "histograms", "exemplars",
            "stale_samples", "stale_samples_accepted", "synthetic_samples", "synthetic_samples_accepted")


def path_counters(stats: dict, path: str) -> dict[str, float]:
    c = stats["senders"].get(path, {})
    return {k: float(c.get(k, 0)) for k in COUNTERS}


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in b}


def snapshot(running: Running, proxy: str, generator: str | None) -> dict:
    """What every counter says at (about) one moment: CPU, proxy, generator, the agents' own counters."""
    t = time.monotonic()
    out = {
        "t": t,
        "wall": time.time(),
        "cpu": tree_cpu(running.sender.pid),
        "gateway_cpu": tree_cpu(running.gateway.pid) if running.gateway else None,
        "cpu_ns": tree_cpu_ns(running.sender.pid),
        "gateway_cpu_ns": tree_cpu_ns(running.gateway.pid) if running.gateway else None,
        "proxy": http_json(f"{proxy}/_stats"),
        "generator": http_json(f"{generator}/stats") if generator else None,
        "agent_sent": counter_total(running.telemetry, "headwater_remote_write_samples_sent_total")
        if running.telemetry else None,
        "gateway_sent": counter_total(running.gateway_telemetry, "headwater_remote_write_samples_sent_total")
        if running.gateway_telemetry else None,
    }
    # The agents' CPU again after their /metrics were read: a window runs from one snapshot's end to the next
    # one's start, so the bench's own scrapes (~5 ms of an agent's CPU each; vmagent and Prometheus are not
    # scraped) are not counted as sending.
    out["cpu_end"] = tree_cpu(running.sender.pid)
    out["gateway_cpu_end"] = tree_cpu(running.gateway.pid) if running.gateway else None
    out["cpu_ns_end"] = tree_cpu_ns(running.sender.pid)
    out["gateway_cpu_ns_end"] = tree_cpu_ns(running.gateway.pid) if running.gateway else None
    out["t_end"] = time.monotonic()
    return out


def spent(a: dict, b: dict, key: str) -> Any:
    """`key` (a CPU counter or "t") from the end of snapshot `a` to the start of snapshot `b`; None where a
    counter is missing."""
    start, end = a.get(f"{key}_end", a.get(key)), b.get(key)
    return None if start is None or end is None else end - start


def generated(gen: dict | None, kind: str) -> float:
    if not gen:
        return 0.0
    return float(gen["otlp_samples_accepted"] if kind == "headwater" else gen["scrape_samples"])


def measure(spec: Spec, flush: float, repeat: int, args: argparse.Namespace, pinning: Pinning, proxy: str,
            workdir: Path) -> dict:
    """One sender at one flush interval: idle, warm-up, window, drain, checks. Every process it starts is
    stopped before it returns."""
    workdir.mkdir(parents=True)
    path = f"{spec.key.replace(' ', '-')}-f{flush:g}-r{repeat}"
    result: dict[str, Any] = {"sender": spec.key, "kind": spec.kind, "protocol": spec.protocol, "flush": flush,
                              "repeat": repeat, "via_gateway": spec.via_gateway, "path": path}
    with contextlib.ExitStack() as stack:
        receiver, receiver_url = start_receiver(pinning, workdir)
        stack.callback(receiver.stop)
        generator_port = free_ports(1)[0]
        if spec.kind == "headwater":
            running = start_headwater(spec, flush, args, pinning, workdir, proxy, path, receiver_url)
        elif spec.kind == "prometheus":
            running = start_prometheus_agent(flush, args, pinning, workdir, proxy, path, receiver_url, generator_port)
        else:
            running = start_vmagent(flush, args, pinning, workdir, proxy, path, receiver_url, generator_port)
        stopped: dict[str, int | None] = {}
        stack.callback(lambda: stopped or stop_running(running))
        born = time.monotonic()

        # Idle: the sender up, no workload.
        i0 = snapshot(running, proxy, None)
        time.sleep(args.idle)
        i1 = snapshot(running, proxy, None)
        idle_s = spent(i0, i1, "t")

        def idle_rate(key: str) -> float | None:
            used = spent(i0, i1, key)
            return None if used is None else used / idle_s

        # schedstat: nanoseconds, where /proc's utime+stime count 10 ms ticks (one tick over a 10 s idle is
        # 0.1 % of a core, ~0.2 CPU s per 1M samples at this workload's rate)
        result["idle"] = {"seconds": idle_s, "cpu_rate": idle_rate("cpu"), "gateway_cpu_rate": idle_rate("gateway_cpu"),
                          "sched_rate": idle_rate("cpu_ns"), "gateway_sched_rate": idle_rate("gateway_cpu_ns")}

        command = [*pinning.other(), sys.executable, str(BENCH_DIR / "node_workload.py"), "--nodes", str(args.nodes),
                   "--interval", str(args.interval), "--port", str(generator_port)]
        if spec.kind == "headwater":
            command += ["--otlp-url", str(running.otlp_url)]
        gen_proc, announced = start("generator", command, workdir, announce=True)
        stack.callback(gen_proc.stop)
        generator = f"http://127.0.0.1:{announced['port']}"
        result["series"] = announced["series"]
        time.sleep(args.warmup)

        profiles: list[tuple[str, Proc]] = []
        if args.profile and spec.kind == "headwater":
            py_spy = ensure_py_spy()
            stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
            args.output.mkdir(parents=True, exist_ok=True)
            targets = [("", running.sender)] + ([("-gateway", running.gateway)] if running.gateway else [])
            for suffix, target in targets:
                profile_path = args.output / f"remote-write-{path}{suffix}-{stamp}.txt"
                proc, _ = start("py-spy" + suffix, [*pinning.other(), py_spy, "record", "--format", "raw",
                                                    "--rate", str(args.profile_rate), "-o", str(profile_path),
                                                    "--pid", str(target.pid),
                                                    "--duration", str(max(1, int(args.duration)))], workdir)
                profiles.append((str(profile_path), proc))
            result["profile"] = " ".join(p for p, _ in profiles)

        a = snapshot(running, proxy, generator)
        time.sleep(args.duration)
        b = snapshot(running, proxy, generator)
        for _, profile_proc in profiles:
            try:
                profile_proc.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profile_proc.stop()
            if profile_proc.process.returncode != 0:
                result["profile_error"] = profile_proc.log_tail(1000)

        # Drain and stop: Headwater's pushes stop and it gets its flush interval (twice through a gateway);
        # scrapers are stopped while their targets are still up, so no staleness markers for every series.
        if spec.kind == "headwater":
            http_json(f"{generator}/stop", data=b"", method="POST")
            time.sleep(flush * (2 if running.gateway else 1) + 2)
            result["agent_sent_before_stop"] = counter_total(running.telemetry,
                                                             "headwater_remote_write_samples_sent_total")
        stopped.update(stop_running(running))
        result["exit_status"] = stopped
        time.sleep(1)
        final_gen = http_json(f"{generator}/stats")
        final_proxy = http_json(f"{proxy}/_stats")
        lifetime = time.monotonic() - born
        window = f"{int(lifetime + 120)}s"
        result["stored"] = stored_samples(receiver_url, window)
        result["stored_one_series"] = query_value(receiver_url,
                                                  f'sum(count_over_time(node_load1{{instance="node-00"}}[{window}]))')
        result["logs"] = {p.name: p.log_tail(2000) for p in
                          (running.sender, running.gateway, receiver, gen_proc) if p is not None}

    result["window"] = {"seconds": spent(a, b, "t"), "snapshots": [a, b]}
    result["receiver_path"] = running.receiver_path
    result["final"] = {"generator": final_gen, "proxy_sender": final_proxy["senders"].get(path, {}),
                       "proxy_receiver_path": final_proxy["senders"].get(running.receiver_path, {})}
    result.update(summarize_run(spec, flush, args, running, a, b, final_gen, final_proxy, result))
    return result


def summarize_run(spec: Spec, flush: float, args: argparse.Namespace, running: Running, a: dict, b: dict,
                  final_gen: dict, final_proxy: dict, result: dict) -> dict:
    """The row's figures and the checks, from the window's two snapshots and the final counters."""
    seconds = spent(a, b, "t")
    sender = delta(path_counters(a["proxy"], running.path), path_counters(b["proxy"], running.path))
    forwarded = delta(path_counters(a["proxy"], running.receiver_path), path_counters(b["proxy"], running.receiver_path))
    decoded = sender["undecoded_requests"] == 0 and sender["requests"] > 0
    forwarded_decoded = forwarded["undecoded_requests"] == 0 and forwarded["requests"] > 0
    # Samples that arrived in the window (for bytes and samples per request: whole requests).
    if decoded:
        arrived, counted_by = sender["samples"], "proxy (decoded rw1)"
    elif a["agent_sent"] is not None and b["agent_sent"] is not None:
        arrived, counted_by = b["agent_sent"] - a["agent_sent"], "agent counter headwater_remote_write_samples_sent"
    else:
        arrived, counted_by = forwarded["samples"], "gateway's forwarded rw1 (decoded)"
    # The sample rate: samples whose timestamps fall in the window (whole seconds), counted after the drain,
    # so that where a batch boundary fell does not move it; arrivals where the proxy could not decode.
    by_second = final_proxy["senders"].get(running.path if decoded else running.receiver_path, {}).get(
        "samples_by_second") if (decoded or forwarded_decoded) else None
    first, last = math.ceil(a["wall"]), math.floor(b["wall"])
    if by_second and last > first:
        in_window = sum(n for second, n in by_second.items() if first <= int(second) < last)
        sample_rate, rate_by = in_window / (last - first), "sample timestamps in the window"
    else:
        sample_rate, rate_by = arrived / seconds, "arrivals in the window"
    cpu = spent(a, b, "cpu")
    gateway_cpu = spent(a, b, "gateway_cpu") if running.gateway else None
    idle = result["idle"]

    def per(cpu_seconds: float) -> float:
        """CPU seconds per million samples: CPU rate over the window / sample rate."""
        return cpu_seconds / seconds / sample_rate * 1e6 if sample_rate else float("nan")

    row = {
        "seconds": seconds,
        "samples": arrived,
        "samples_counted_by": counted_by,
        "sample_rate_by": rate_by,
        "samples_per_s": sample_rate,
        "generated_per_s": (generated(b["generator"], spec.kind) - generated(a["generator"], spec.kind)) / seconds,
        "requests": sender["requests"],
        "samples_per_request": arrived / sender["requests"] if sender["requests"] else float("nan"),
        "wire_bytes_per_sample": sender["wire_bytes"] / arrived if arrived else float("nan"),
        "uncompressed_bytes_per_sample": sender["uncompressed_bytes"] / arrived if arrived else float("nan"),
        "cpu_seconds": cpu,
        "cpu_share": cpu / seconds,
        "cpu_s_per_million": per(cpu),
        "idle_cpu_share": idle["cpu_rate"],
        "cpu_s_per_extra_million": per(cpu - idle["cpu_rate"] * seconds),
        "synthetic_samples": sender["synthetic_samples"],
        "stale_samples": sender["stale_samples"],
        "window_errors": sender["errors"] + (forwarded["errors"] if running.gateway else 0),
        "generator_late_ticks": b["generator"]["ticks_late"] - a["generator"]["ticks_late"],
        "generator_skipped_pushes": b["generator"].get("otlp_skipped", 0) - a["generator"].get("otlp_skipped", 0),
        "proxy_window": sender,
        "forwarded_window": forwarded if running.gateway else None,
    }
    node_ns = spent(a, b, "cpu_ns")
    if node_ns is not None:
        row["sched_cpu_s_per_million"] = per(node_ns)
        if idle.get("sched_rate") is not None:
            row["sched_cpu_s_per_extra_million"] = per(node_ns - idle["sched_rate"] * seconds)
    if running.gateway:
        gateway_ns = spent(a, b, "gateway_cpu_ns")
        if node_ns is not None and gateway_ns is not None:
            row["gateway_sched_cpu_s_per_million"] = per(gateway_ns)
            row["node_gateway_sched_cpu_s_per_million"] = per(node_ns + gateway_ns)
            if idle.get("sched_rate") is not None and idle.get("gateway_sched_rate") is not None:
                row["node_gateway_sched_cpu_s_per_extra_million"] = per(
                    node_ns + gateway_ns - (idle["sched_rate"] + idle["gateway_sched_rate"]) * seconds)
        row["gateway_cpu_seconds"] = gateway_cpu
        row["node_gateway_cpu_s_per_million"] = per(cpu + gateway_cpu)
        row["node_gateway_cpu_s_per_extra_million"] = per(
            cpu + gateway_cpu - (idle["cpu_rate"] + idle["gateway_cpu_rate"]) * seconds)
        row["forwarded_samples"] = forwarded["samples"]
        row["forwarded_wire_bytes_per_sample"] = forwarded["wire_bytes"] / forwarded["samples"] \
            if forwarded["samples"] else float("nan")

    # Checks over the sender's whole life: what the generator produced, what reached the receiver through the
    # proxy (accepted, without synthetic series and staleness markers), what the receiver stored.
    into_receiver = final_proxy["senders"].get(running.receiver_path, {})
    sender_total = final_proxy["senders"].get(running.path, {})
    workload = (into_receiver.get("samples_accepted", 0) - into_receiver.get("synthetic_samples_accepted", 0)
                - into_receiver.get("stale_samples_accepted", 0))
    made = generated(final_gen, spec.kind)
    series = final_gen["series"]
    allowed = max(0.01 * made, series * (flush / args.interval + 2) if spec.kind != "headwater" else 0.0)
    stored = result.get("stored")
    one = result.get("stored_one_series")
    one_expected = (final_gen["otlp_samples_accepted"] // series if spec.kind == "headwater"
                    else final_gen["scrapes_by_path"].get("/metrics/node-00", 0))
    lost = made == 0 or workload < made - allowed
    stored_ok = stored is not None and workload > 0 and stored >= 0.99 * workload
    row["checks"] = {
        "generated": made, "proxied_workload_accepted": workload, "allowed_shortfall": allowed,
        "stored": stored, "stored_one_series": one, "one_series_expected_about": one_expected,
        "errors_total": sender_total.get("errors", 0) + (into_receiver.get("errors", 0) if running.gateway else 0),
        "lost": lost, "stored_ok": stored_ok, "ok": (not lost) and stored_ok,
    }
    return row


# -- the run ----------------------------------------------------------------------------------------------

def specs(args: argparse.Namespace) -> list[Spec]:
    out = []
    for sender in args.senders:
        if sender == "headwater":
            for protocol in args.protocols:
                via = protocol in NEEDS_GATEWAY or (protocol == "auto" and args.auto_via_gateway)
                out.append(Spec(f"headwater {protocol}", "headwater", protocol, via))
        elif sender == "prometheus":
            out.append(Spec("prometheus-agent 2.42", "prometheus"))
        else:
            out.append(Spec("vmagent 1.79", "vmagent"))
    return out


NUMERIC = ("samples_per_s", "generated_per_s", "samples_per_request", "wire_bytes_per_sample",
           "uncompressed_bytes_per_sample", "cpu_share", "cpu_s_per_million", "idle_cpu_share",
           "cpu_s_per_extra_million", "requests", "synthetic_samples", "stale_samples", "samples",
           "node_gateway_cpu_s_per_million", "node_gateway_cpu_s_per_extra_million", "forwarded_wire_bytes_per_sample",
           "sched_cpu_s_per_million", "gateway_sched_cpu_s_per_million", "node_gateway_sched_cpu_s_per_million",
           "sched_cpu_s_per_extra_million", "node_gateway_sched_cpu_s_per_extra_million")


def median_rows(runs: list[dict]) -> list[dict]:
    """One row per (sender, flush): the median of each figure over its repeats."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["sender"], run["flush"]), []).append(run)
    rows = []
    for (sender, flush), members in groups.items():
        done = [m for m in members if "unavailable" not in m and "error" not in m]
        row: dict[str, Any] = {"sender": sender, "flush": flush, "repeats": len(done),
                               "via_gateway": members[0].get("via_gateway", False)}
        if not done:
            row["unavailable"] = members[0].get("unavailable") or members[0].get("error")
            rows.append(row)
            continue
        for key in NUMERIC:
            values = [m[key] for m in done if m.get(key) is not None]
            if values:
                row[key] = statistics.median(values)
        row["errors"] = sum(m["checks"]["errors_total"] for m in done)
        row["ok"] = all(m["checks"]["ok"] for m in done)
        row["samples_counted_by"] = done[0]["samples_counted_by"]
        rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return format(value, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'sender':<32} {'flush':>5} {'samples/s':>9} {'samples/req':>11} {'wire B/smp':>10} "
            f"{'uncompr B/smp':>13} {'CPU s/1M':>8} {'idle CPU':>8} {'CPU s/extra 1M':>14} {'requests':>8} "
            f"{'errors':>6}  check")
    lines = [head, "-" * len(head)]
    for r in rows:
        label = r["sender"] + (" (node)" if r.get("via_gateway") and "compact" in r["sender"] else "")
        if "unavailable" in r:
            lines.append(f"{label:<32} {r['flush']:>4g}s  not available: {r['unavailable'][:150]}")
            continue
        lines.append(
            f"{label:<32} {r['flush']:>4g}s {fmt(r.get('samples_per_s'), ',.0f'):>9} "
            f"{fmt(r.get('samples_per_request'), ',.0f'):>11} {fmt(r.get('wire_bytes_per_sample'), '.2f'):>10} "
            f"{fmt(r.get('uncompressed_bytes_per_sample'), '.1f'):>13} {fmt(r.get('cpu_s_per_million'), '.2f'):>8} "
            f"{fmt(r.get('idle_cpu_share'), '.1%'):>8} {fmt(r.get('cpu_s_per_extra_million'), '.2f'):>14} "
            f"{fmt(r.get('requests'), ',.0f'):>8} {r['errors']:>6}  {'ok' if r['ok'] else 'FAILED'}")
        if r.get("via_gateway") and "compact" in r["sender"]:
            lines.append(f"{r['sender'] + ' (node+gateway)':<32} {r['flush']:>4g}s {'':>9} {'':>11} {'':>10} {'':>13} "
                         f"{fmt(r.get('node_gateway_cpu_s_per_million'), '.2f'):>8} {'':>8} "
                         f"{fmt(r.get('node_gateway_cpu_s_per_extra_million'), '.2f'):>14}")
    return "\n".join(lines)


def notes(runs: list[dict], rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "unavailable" in r:
            continue
        extra = []
        if r.get("synthetic_samples"):
            extra.append(f"{r['synthetic_samples']:,.0f} synthetic samples (up, scrape_*) in the window "
                         f"({r['synthetic_samples'] / r['samples']:.1%}), counted in bytes and samples")
        if r.get("stale_samples"):
            extra.append(f"{r['stale_samples']:,.0f} staleness markers")
        extra.append(f"samples counted by {r['samples_counted_by']}")
        late = [(m["generator_late_ticks"], m["generator_skipped_pushes"]) for m in runs
                if m.get("sender") == r["sender"] and m.get("flush") == r["flush"] and "checks" in m]
        if any(t or k for t, k in late):
            extra.append(f"the generator ran late {sum(t for t, _ in late)} tick(s) and skipped "
                         f"{sum(k for _, k in late)} push(es) in the window (its core was busy)")
        if r.get("via_gateway"):
            extra.append(f"gateway forwards rw1 at {fmt(r.get('forwarded_wire_bytes_per_sample'), '.2f')} B/sample")
        if r.get("sched_cpu_s_per_million") is not None:
            precise = f"on-CPU time from schedstat (ns; medians): sender {fmt(r['sched_cpu_s_per_million'], '.2f')}"
            if r.get("node_gateway_sched_cpu_s_per_million") is not None:
                precise += (f", gateway {fmt(r.get('gateway_sched_cpu_s_per_million'), '.2f')}, node+gateway "
                            f"{fmt(r['node_gateway_sched_cpu_s_per_million'], '.2f')}")
            precise += " CPU s/1M"
            if r.get("sched_cpu_s_per_extra_million") is not None:
                precise += f"; per extra 1M: sender {fmt(r['sched_cpu_s_per_extra_million'], '.2f')}"
                if r.get("node_gateway_sched_cpu_s_per_extra_million") is not None:
                    precise += f", node+gateway {fmt(r['node_gateway_sched_cpu_s_per_extra_million'], '.2f')}"
            extra.append(precise)
        out.append(f"  {r['sender']} @{r['flush']:g}s: " + "; ".join(extra))
    for run in runs:
        c = run.get("checks")
        if not c:
            continue
        verdict = "ok" if c["ok"] else ("LOST SAMPLES" if c["lost"] else "RECEIVER STORED FEWER")
        out.append(f"  check {run['sender']} @{run['flush']:g}s #{run['repeat']}: {verdict}: generated "
                   f"{c['generated']:,.0f}, reached the receiver {c['proxied_workload_accepted']:,.0f} (allowed "
                   f"shortfall {c['allowed_shortfall']:,.0f}), stored {fmt(c['stored'], ',.0f')}; node_load1 of "
                   f"node-00 stored {fmt(c['stored_one_series'], ',.0f')} (~{c['one_series_expected_about']:,} "
                   f"produced)")
        if run.get("profile"):
            out.append(f"  py-spy profile of {run['sender']} @{run['flush']:g}s: {run['profile']}"
                       + (f" (py-spy failed: {run['profile_error'][-300:]})" if run.get("profile_error") else ""))
    return "\n".join(out)


def environment(pinning: Pinning) -> dict:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))

    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return repr(exc)
        return ((done.stdout or done.stderr).strip().splitlines() or [""])[0]

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "pinned": pinning.enabled, "sender_core": pinning.sender_core,
            "other_core": pinning.other_core, "loadavg": os.getloadavg(),
            "prometheus": version([str(PROMETHEUS_BINARY), "--version"]),
            "vmagent": version([str(VMAGENT_BINARY), "-version"])}


def csv_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda text: [kind(item.strip()) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", type=csv_list(str), default=["rw1", "compact"],
                        help=f"Headwater wire formats, comma-separated, of {', '.join(HEADWATER_PROTOCOLS)}")
    parser.add_argument("--senders", type=csv_list(str), default=list(SENDERS),
                        help=f"comma-separated, of {', '.join(SENDERS)}")
    parser.add_argument("--flush", type=csv_list(float), default=[5.0, 1.0], help="flush intervals, seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the measured window")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load before the window")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the sender's idle CPU measurement")
    parser.add_argument("--repeats", type=int, default=1, help="runs per sender and flush (the table shows medians)")
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes (523 series each)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between workload ticks and scrapes")
    parser.add_argument("--max-samples", type=int, default=10_000, help="Headwater batch.max_samples")
    parser.add_argument("--max-bytes", default="4MiB", help="Headwater batch.max_bytes")
    parser.add_argument("--compression", choices=["auto", "snappy", "zstd"],
                        help="Headwater compression for formats other than rw1 (default: the agent's default)")
    parser.add_argument("--gateway-receiver", default=DEFAULT_GATEWAY_RECEIVER,
                        help="the gateway's extra `receivers` entries as JSON; {port} is replaced by a free port")
    parser.add_argument("--auto-via-gateway", action="store_true",
                        help="send `auto` to a Headwater gateway (it negotiates compact) instead of straight to "
                             "Prometheus 2.42 (it must fall back to rw1)")
    parser.add_argument("--log-level", default="warning", help="the Headwater agents' log level")
    parser.add_argument("--profile", action="store_true",
                        help="record Headwater senders (and gateways) with py-spy in the window, as collapsed stacks "
                             "(read them with bench/profile_summary.py)")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, data)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for the JSON result")
    args = parser.parse_args(argv)
    for protocol in args.protocols:
        if protocol not in HEADWATER_PROTOCOLS:
            parser.error(f"unknown protocol {protocol!r}")
    for sender in args.senders:
        if sender not in SENDERS:
            parser.error(f"unknown sender {sender!r}")
    for binary in (PROMETHEUS_BINARY, *([VMAGENT_BINARY] if "vmagent" in args.senders else [])):
        if not os.access(binary, os.X_OK):
            parser.error(f"{binary} is missing: run tests/peers/install-prometheus.sh and "
                         f"tests/peers/install-victoriametrics.sh")

    pinning = Pinning(not args.no_pin)
    if not pinning.enabled and not args.no_pin:
        print("warning: not pinning (needs taskset and 2 cores); results are not comparable", file=sys.stderr)
    started_at = datetime.now(UTC)
    workroot = Path(tempfile.mkdtemp(prefix="headwater-rw-bench-"))
    runs: list[dict] = []
    proxy_proc = None
    try:
        proxy_proc, announced = start("proxy", [*pinning.other(), sys.executable, str(BENCH_DIR / "rw_proxy.py")],
                                      workroot, env=python_env(), announce=True)
        proxy = f"http://127.0.0.1:{announced['port']}"
        for flush in args.flush:
            for spec in specs(args):
                for repeat in range(1, args.repeats + 1):
                    print(f"{spec.key} @ flush {flush:g}s, run {repeat}/{args.repeats}: {args.idle:g}s idle, "
                          f"{args.warmup:g}s warm-up, {args.duration:g}s window ...", file=sys.stderr, flush=True)
                    workdir = workroot / f"{spec.key.replace(' ', '-')}-f{flush:g}-r{repeat}"
                    try:
                        runs.append(measure(spec, flush, repeat, args, pinning, proxy, workdir))
                    except NotAvailable as exc:
                        print(f"  not available: {exc}", file=sys.stderr)
                        runs.append({"sender": spec.key, "flush": flush, "repeat": repeat,
                                     "via_gateway": spec.via_gateway, "unavailable": str(exc)})
                        break  # the same config would be refused on every repeat
                    except (RuntimeError, OSError, urllib.error.URLError) as exc:
                        print(f"  failed: {exc}", file=sys.stderr)
                        runs.append({"sender": spec.key, "flush": flush, "repeat": repeat,
                                     "via_gateway": spec.via_gateway, "error": str(exc)[-3000:]})
    finally:
        if proxy_proc is not None:
            proxy_proc.stop()
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)

    rows = median_rows(runs)
    print()
    print(table(rows))
    print()
    print(notes(runs, rows))
    result = {"benchmark": "remote-write", "started_at": started_at.isoformat(timespec="seconds"),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "environment": environment(pinning), "rows": rows, "runs": runs}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"remote-write-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwritten to {path}" + (f" (work directory kept: {workroot})" if args.keep else ""), file=sys.stderr)
    failed = [r for r in runs if "checks" in r and not r["checks"]["ok"]]
    errored = [r for r in runs if "error" in r]
    if failed:
        print(f"error: {len(failed)} run(s) lost samples or the receiver stored fewer than were sent",
              file=sys.stderr)
        return 2
    if errored:
        print(f"error: {len(errored)} run(s) failed to run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
