"""`make demo`: Prometheus, the agent and a small instrumented shop, started together and stopped together.

    python demo/run.py [--state-dir DIR] [--prometheus-port 9090] [--otlp-grpc-port 4317] [--otlp-http-port 4318]
                       [--telemetry-port 8888] [--rate 20] [--prometheus-binary PATH]

What runs (each with its log under `<state-dir>/logs/`):

1. Prometheus: Debian's package as the tests use it (tests/peers/install-prometheus.sh unpacks it into
   `.cache/peers/prometheus`; `make demo` runs that first), or `--prometheus-binary`, or one on PATH. It takes
   remote write and scrapes the agent's own `/metrics` every 5 s, so `headwater_*` series are there too.
2. The agent on demo/agent.yaml (the ports and state directory come from the options above, as DEMO_*
   variables): traces kept by tier to `<state-dir>/agent/traces.jsonl`; the app's metrics and span metrics to
   Prometheus and to `<state-dir>/agent/metrics.jsonl`.
3. demo/app.py: three services sending traces and metrics with the OpenTelemetry Python SDK, with tiers,
   errors and slow requests.

Once all three are up it prints where to look. Ctrl-C (or SIGTERM) stops them in order — the app first (its
SDK flushes), then the agent (it delivers what it holds to Prometheus), then Prometheus — and returns 0 only
when each exited cleanly. A second Ctrl-C kills what is left. The children run in their own session, so the
terminal's Ctrl-C reaches only this script, which keeps that order; and they get SIGTERM if it dies.

Options default to DEMO_STATE_DIR, DEMO_PROMETHEUS_PORT, DEMO_OTLP_GRPC_PORT, DEMO_OTLP_HTTP_PORT,
DEMO_TELEMETRY_PORT, DEMO_RATE when those are set, so `make demo` takes them from the environment.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLED_PROMETHEUS = REPO / ".cache" / "peers" / "prometheus" / "usr" / "bin" / "prometheus"
INSTALL_HINT = "run tests/peers/install-prometheus.sh (make demo does), or pass --prometheus-binary"
SCRAPE_INTERVAL = "5s"
_PR_SET_PDEATHSIG = 1


class DemoError(Exception):
    """Something the person running the demo must fix; the message says what."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text) or "    (empty)"


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM when the demo process dies, so nothing outlives a kill -9."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C still stops everything in order


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise DemoError(f"{name} must be a port number, found {value!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prometheus, the Headwater agent and an instrumented demo app; "
                                                 "Ctrl-C stops them all.")
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("DEMO_STATE_DIR") or "data/demo"),
                        help="where Prometheus' data, the agent's state and files, and the logs go (default data/demo)")
    parser.add_argument("--prometheus-port", type=int, default=_env_int("DEMO_PROMETHEUS_PORT", 9090))
    parser.add_argument("--otlp-grpc-port", type=int, default=_env_int("DEMO_OTLP_GRPC_PORT", 4317))
    parser.add_argument("--otlp-http-port", type=int, default=_env_int("DEMO_OTLP_HTTP_PORT", 4318))
    parser.add_argument("--telemetry-port", type=int, default=_env_int("DEMO_TELEMETRY_PORT", 8888))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_RATE") or 20),
                        help="the app's requests per second (default 20)")
    parser.add_argument("--prometheus-binary", type=Path, default=None,
                        help=f"default: {BUNDLED_PROMETHEUS.relative_to(REPO)}, else `prometheus` on PATH")
    return parser.parse_args(argv)


def find_prometheus(given: Path | None) -> Path:
    if given is not None:
        if not os.access(given, os.X_OK):
            raise DemoError(f"--prometheus-binary {given} is not an executable file")
        return given
    if os.access(BUNDLED_PROMETHEUS, os.X_OK):
        return BUNDLED_PROMETHEUS
    on_path = shutil.which("prometheus")
    if on_path:
        return Path(on_path)
    raise DemoError(f"no Prometheus binary at {BUNDLED_PROMETHEUS} nor on PATH: {INSTALL_HINT}")


def check_ports_free(ports: dict[str, int]) -> None:
    """Fail before starting anything when a port is taken (another Prometheus, or an agent from `make run`)."""
    if len(set(ports.values())) != len(ports):
        raise DemoError(f"each port must differ, got {ports}")
    for option, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise DemoError(f"port {port} is in use ({exc.strerror}): stop what holds it or pass "
                                f"--{option.replace('_', '-')} <port>") from None


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = args.state_dir.resolve()
        self.logs = self.state / "logs"
        self.agent_state = self.state / "agent"
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.interrupts = 0

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.args.prometheus_port}"

    @property
    def telemetry(self) -> str:
        return f"127.0.0.1:{self.args.telemetry_port}"

    def _spawn(self, name: str, command: list[str], stop_timeout: float, env: dict[str, str] | None = None) -> Child:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        child = Child(name, process, log, stop_timeout)
        self.children.append(child)
        return child

    def _wait_ready(self, child: Child, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not answers_200(url):
            if child.process.poll() is not None:
                raise DemoError(f"{child.name} exited with status {child.process.returncode} while starting; "
                                f"the end of {child.log}:\n{child.tail()}")
            if self.stop_requested.is_set():
                raise DemoError("stopped while starting")
            if time.monotonic() > deadline:
                raise DemoError(f"{child.name} did not answer {url} within {timeout:.0f}s; the end of "
                                f"{child.log}:\n{child.tail()}")
            time.sleep(0.1)

    def start(self) -> None:
        args = self.args
        check_ports_free({"prometheus_port": args.prometheus_port, "otlp_grpc_port": args.otlp_grpc_port,
                          "otlp_http_port": args.otlp_http_port, "telemetry_port": args.telemetry_port})
        binary = find_prometheus(args.prometheus_binary)
        self.logs.mkdir(parents=True, exist_ok=True)
        config = self.state / "prometheus.yml"
        config.write_text(
            "# Written by demo/run.py: scrape the agent's own telemetry; the app's data arrives by remote write.\n"
            f"global: {{scrape_interval: {SCRAPE_INTERVAL}}}\n"
            f"scrape_configs: [{{job_name: headwater, static_configs: [{{targets: ['{self.telemetry}']}}]}}]\n",
            encoding="utf-8")
        prometheus = self._spawn("prometheus", [
            str(binary), f"--config.file={config}", f"--storage.tsdb.path={self.state / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{args.prometheus_port}", "--web.enable-remote-write-receiver",
        ], stop_timeout=15)
        self._wait_ready(prometheus, f"{self.prometheus_url}/-/ready", timeout=60)

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.update(DEMO_STATE_DIR=str(self.agent_state), DEMO_PROMETHEUS_PORT=str(args.prometheus_port),
                   DEMO_OTLP_GRPC_PORT=str(args.otlp_grpc_port), DEMO_OTLP_HTTP_PORT=str(args.otlp_http_port),
                   DEMO_TELEMETRY_PORT=str(args.telemetry_port))
        agent = self._spawn("agent", [sys.executable, "-m", "agent", "run", "-c", str(REPO / "demo" / "agent.yaml")],
                            stop_timeout=20, env=env)
        self._wait_ready(agent, f"http://{self.telemetry}/readyz", timeout=30)

        self._spawn("app", [sys.executable, str(REPO / "demo" / "app.py"), "--rate", str(args.rate),
                            "--endpoint", f"http://127.0.0.1:{args.otlp_http_port}"], stop_timeout=15, env=env)

    def banner(self) -> str:
        pids = {c.name: c.process.pid for c in self.children}
        prom, logs = self.prometheus_url, self.logs
        queries = [
            ("requests/s by service and span, from every span before sampling (span metrics)",
             "sum by (service_name, span_name) (rate(traces_span_metrics_calls_total[1m]))"),
            ("errors/s by service",
             'sum by (service_name) (rate(traces_span_metrics_calls_total{status_code="STATUS_CODE_ERROR"}[1m]))'),
            ("p99 span duration by service, ms",
             "histogram_quantile(0.99, sum by (le, service_name) "
             "(rate(traces_span_metrics_duration_milliseconds_bucket[1m])))"),
            ("the app's own metrics: requests/s by route and status",
             "sum by (http_route, http_response_status_code) (rate(demo_requests_total[1m]))"),
            ("the app's p90 request duration by route, s",
             "histogram_quantile(0.9, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket[1m])))"),
            ("traces kept by tier (the agent's telemetry, scraped)",
             "sum by (tier) (rate(headwater_sampling_kept_traces_total[1m]))"),
        ]
        lines = [
            "",
            "Headwater demo is running. Ctrl-C stops everything.",
            "",
            f"  Prometheus  {prom}  (pid {pids['prometheus']}, log {logs / 'prometheus.log'})",
            f"  agent       OTLP http://127.0.0.1:{self.args.otlp_http_port} and grpc 127.0.0.1:{self.args.otlp_grpc_port}, "
            f"telemetry http://{self.telemetry}/metrics  (pid {pids['agent']}, log {logs / 'agent.log'})",
            f"  app         frontend, catalog, checkout at {self.args.rate:g} requests/s; VIPs are tier P0, checkouts "
            f"P1, the rest P2 (5 %); 4 % errors, 2 % slow  (pid {pids['app']}, log {logs / 'app.log'})",
            "",
            f"PromQL, at {prom}/graph (data from the first seconds on):",
        ]
        for what, query in queries:
            lines += [f"  # {what}", f"  {query}"]
        lines += [
            "",
            "Files the agent writes (OTLP/JSON, one request per line):",
            f"  kept traces  {self.agent_state / 'traces.jsonl'}",
            f"  metrics      {self.agent_state / 'metrics.jsonl'}",
            "",
            "The agent's own view:",
            f"  headwater status --endpoint {self.telemetry}    (`. .venv/bin/activate` puts headwater on PATH)",
            f"  curl -s http://{self.telemetry}/metrics | grep ^headwater_sampling",
            "",
        ]
        return "\n".join(lines)

    def watch(self) -> Child | None:
        """Until a stop is asked for (returns None) or a child exits on its own (returns it)."""
        while not self.stop_requested.wait(0.5):
            for child in self.children:
                if child.process.poll() is not None:
                    return child
        return None

    def stop(self) -> int:
        """The app, then the agent, then Prometheus: each gets SIGTERM and its own time; 0 when all exit 0."""
        status = 0
        for child in reversed(self.children):
            process = child.process
            if process.poll() is None:
                process.terminate()
                deadline = time.monotonic() + child.stop_timeout
                while process.poll() is None and time.monotonic() < deadline and self.interrupts < 2:
                    time.sleep(0.05)
                if process.poll() is None:
                    process.kill()
                    process.wait()
                    print(f"demo: {child.name} did not stop in time; killed it", file=sys.stderr, flush=True)
                    status = 1
                    continue
            code = process.returncode
            if code == 3 and child.name == "agent":
                print(f"demo: the agent dropped data at shutdown; see {child.log}", file=sys.stderr, flush=True)
                status = 1
            elif code != 0:
                print(f"demo: {child.name} exited with status {code}; the end of {child.log}:\n{child.tail()}",
                      file=sys.stderr, flush=True)
                status = 1
        return status

    def on_signal(self, _signum: int, _frame: object) -> None:
        self.interrupts += 1
        self.stop_requested.set()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    demo = Demo(args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, demo.on_signal)
    try:
        demo.start()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        demo.stop()
        return 1
    print(demo.banner(), flush=True)
    ended = demo.watch()
    if ended is not None:
        print(f"demo: {ended.name} exited with status {ended.process.returncode}; stopping the rest. The end of "
              f"{ended.log}:\n{ended.tail()}", file=sys.stderr, flush=True)
    else:
        print("demo: stopping the app, then the agent, then Prometheus", flush=True)
    status = demo.stop()
    if ended is None and status == 0:
        print("demo: everything stopped cleanly", flush=True)
    return 1 if ended is not None else status


if __name__ == "__main__":
    raise SystemExit(main())
