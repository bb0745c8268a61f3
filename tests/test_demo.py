"""`make demo` end to end: demo/run.py, on the test's own ports and state directory, starts Prometheus, the agent
and the instrumented app, says where to look, gets span metrics and the app's metrics into Prometheus, and one
SIGINT stops every process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.agent_process import REPO_ROOT, free_ports
from tests.peers.prometheus import INSTALL_HINT, PROMETHEUS_BINARY

BANNER_END = "grep ^headwater_sampling"


def wait_for_output(process: subprocess.Popen[bytes], output: Path, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = output.read_text(encoding="utf-8", errors="replace") if output.exists() else ""
        if marker in text:
            return text
        assert process.poll() is None, f"the demo exited with status {process.returncode}:\n{text}"
        assert time.monotonic() < deadline, f"no {marker!r} from the demo within {timeout}s:\n{text}"
        time.sleep(0.1)


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def wait_for_labels(prometheus: str, expr: str, label: str, wanted: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = {series["metric"].get(label, "") for series in query(prometheus, expr)}
        if wanted <= found:
            return
        assert time.monotonic() < deadline, f"{expr}: {label} values {sorted(found)} after {timeout}s, wanted {sorted(wanted)}"
        time.sleep(0.5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_demo_fills_prometheus_and_one_sigint_stops_every_process_it_started(tmp_path):
    if not PROMETHEUS_BINARY.is_file():
        pytest.fail(f"Prometheus binary missing at {PROMETHEUS_BINARY}: {INSTALL_HINT}", pytrace=False)
    prometheus_port, grpc_port, http_port, telemetry_port = free_ports(4)
    state, output = tmp_path / "demo", tmp_path / "demo.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEMO_STATE_DIR": str(state),
           "DEMO_PROMETHEUS_PORT": str(prometheus_port), "DEMO_OTLP_GRPC_PORT": str(grpc_port),
           "DEMO_OTLP_HTTP_PORT": str(http_port), "DEMO_TELEMETRY_PORT": str(telemetry_port), "DEMO_RATE": "20"}
    # `make demo` itself, in a session of its own like a terminal's foreground job, so that SIGINT reaches make
    # and demo/run.py together as Ctrl-C would (run.py's children are in a session of their own).
    # A shell gives its foreground job SIGINT's default action; a suite started in the background (`make test &`)
    # inherits SIGINT ignored, and make would then ignore it and exit 0, so the child gets the default here.
    with open(output, "wb") as out:
        demo = subprocess.Popen(["make", "-s", "demo"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children: list[int] = []
    try:
        banner = wait_for_output(demo, output, BANNER_END, timeout=120)
        children = [int(pid) for pid in re.findall(r"\(pid (\d+),", banner)]
        assert len(children) == 3, banner  # Prometheus, the agent, the app
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        assert prometheus in banner and f"headwater status --endpoint 127.0.0.1:{telemetry_port}" in banner

        # Span metrics from the app's traces (every service), and the app's own metrics.
        wait_for_labels(prometheus, "sum by (service_name) (traces_span_metrics_calls_total)", "service_name",
                        {"frontend", "catalog", "checkout"})
        wait_for_labels(prometheus, "sum by (http_route) (demo_requests_total)", "http_route",
                        {"/products", "/checkout"})
        wait_for_labels(prometheus, "sum by (job) (http_server_request_duration_seconds_count)", "job", {"frontend"})
        for path in (state / "agent" / "traces.jsonl", state / "agent" / "metrics.jsonl"):
            assert str(path) in banner and path.stat().st_size > 0

        os.killpg(demo.pid, signal.SIGINT)
        # make waits for the recipe to finish its cleanup, then ends by the signal, as after Ctrl-C.
        assert demo.wait(timeout=90) in (-signal.SIGINT, 2), output.read_text()
        assert "everything stopped cleanly" in output.read_text()
        assert [pid for pid in children if alive(pid)] == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
