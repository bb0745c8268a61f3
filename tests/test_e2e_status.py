"""`headwater status` as a person or a script runs it: against a running agent (a real process shipping to a real
Prometheus 2.42), against one that is stopped, and against a telemetry server that is not ready."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import agent as agent_package
from agent import status
from agent.telemetry import TelemetryServer
from tests.agent_process import REPO_ROOT, AgentProcess, free_ports
from tests.test_e2e_lifecycle import send_spans


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "status", "--interval", "0.2", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def shipping_to(prometheus) -> dict:
    return {
        "exporters": {"remote_write": [
            {"name": "prom", "url": prometheus.remote_write_url, "protocol": "rw1", "batch": {"flush_interval": "200ms"}},
            # Configured but in no pipeline: the agent warns at startup, so there is a known warning to show.
            {"name": "spare", "url": prometheus.remote_write_url},
        ]},
        "pipelines": {"metrics": {"exporters": ["prom"], "span_metrics": True}},
        "span_metrics": {"flush_interval": "200ms"},
    }


def wait_for_metrics(agent: AgentProcess, predicate, timeout: float = 20) -> None:
    """Poll /metrics until `predicate(reading)` holds; fail with the last text after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(agent.telemetry_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        if predicate(status.Reading.parse(text)):
            return
        assert time.monotonic() < deadline, f"/metrics never matched within {timeout}s:\n{text}"
        time.sleep(0.1)


def running_agent_with_traffic(start_agent, prometheus) -> AgentProcess:
    agent = start_agent(extra_config=shipping_to(prometheus))
    send_spans(agent, 5)
    # The spans decided and written to the file; span metrics delivered to Prometheus.
    wait_for_metrics(agent, lambda r: r.total("headwater_exporter_sent_spans_total", exporter="file") == 5
                     and r.total("headwater_remote_write_samples_sent_total", exporter="prom") > 0)
    return agent


def test_status_prints_one_screen_about_a_running_agent_and_exits_0(start_agent, prometheus):
    agent = running_agent_with_traffic(start_agent, prometheus)

    result = run_status("-c", str(agent.config_path))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"headwater {agent_package.__version__} at 127.0.0.1:{agent.telemetry_port}: ready, up ")
    assert lines[1] == f"config      {agent.config_path}"
    assert any(line.startswith("in ") and "spans/s" in line and "data points/s" in line for line in lines)
    [tier] = [line.split() for line in lines if line.split()[:1] == ["all"]]
    assert tier[-2:] == ["5", "5"]  # spans in and kept since start
    assert any(line.strip().startswith("prom") and "rw1, queue" in line for line in lines)
    assert any(line.strip().startswith("file") and "sent" in line for line in lines)
    assert any("exporter 'spare' is configured but no pipeline lists it" in line for line in lines), result.stdout


def test_status_json_gives_scripts_the_same_summary(start_agent, prometheus):
    agent = running_agent_with_traffic(start_agent, prometheus)

    result = run_status("--endpoint", f"127.0.0.1:{agent.telemetry_port}", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ready"] is True and summary["reachable"] is True
    assert summary["config"] == str(agent.config_path)
    assert summary["uptime_seconds"] > 0 and summary["window_seconds"] >= 0.2
    assert summary["ingest"]["spans"]["total"] == 5
    assert [(t["tier"], t["spans_kept"]["total"]) for t in summary["sampling"]["tiers"]] == [("all", 5)]
    [prom] = summary["remote_write"]
    assert prom["exporter"] == "prom" and prom["protocol"] == "rw1" and prom["samples_sent"]["total"] > 0
    assert prom["latency"]["mean_seconds"] > 0
    assert [(t["exporter"], t["spans_sent"]["total"]) for t in summary["trace_exporters"]] == [("file", 5)]
    assert any(p["level"] == "warning" and p["fields"].get("key") == "exporters.remote_write[1]"
               and "'spare'" in p["message"] for p in summary["recent_problems"])


def test_status_of_a_stopped_agent_exits_1_saying_it_cannot_reach_it(start_agent):
    agent = start_agent()
    agent.stop_cleanly()

    text, as_json = run_status("-c", str(agent.config_path)), run_status("-c", str(agent.config_path), "--json")

    assert text.returncode == 1 and text.stdout == ""
    assert f"cannot reach the agent at http://127.0.0.1:{agent.telemetry_port}/status" in text.stderr
    assert f"telemetry.endpoint in {agent.config_path}; is the agent running?" in text.stderr
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"endpoint": f"127.0.0.1:{agent.telemetry_port}", "reachable": False,
                                          "ready": False, "error": json.loads(as_json.stdout)["error"]}


@contextmanager
def telemetry_server(ready: bool) -> Iterator[int]:
    """The agent's own telemetry server, alone, in a thread; yields its port."""
    [port] = free_ports(1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = TelemetryServer(f"127.0.0.1:{port}", lambda: ready)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_status_of_an_agent_that_answers_but_is_not_ready_exits_3_and_says_so():
    out, err = io.StringIO(), io.StringIO()
    with telemetry_server(ready=False) as port:
        code = status.main(config=None, endpoint=f"127.0.0.1:{port}", as_json=False, interval=0, out=out, err=err)

    assert code == status.EXIT_NOT_READY == 3
    assert f"at 127.0.0.1:{port}: NOT READY" in out.getvalue()
    assert "not ready" in err.getvalue()
