"""The agent raises its open-file limit to what the receivers' max_connections need (agent/open_files.py).
Each case runs in a child process started with the limits under test, so this process's limits stay."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from agent.config import load_text
from agent.open_files import RESERVE, wanted

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource
from agent.open_files import raise_soft_limit
short = raise_soft_limit({needed})
print(json.dumps([short, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
"""


def run_with_limits(soft: int, hard: int, needed: int) -> tuple[list[int] | None, int]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run([sys.executable, "-c", PROBE.format(needed=needed)], preexec_fn=limit, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60).stdout
    short, now = json.loads(out)
    return short, now


def test_the_soft_limit_is_raised_to_what_is_needed_when_the_hard_limit_allows() -> None:
    short, now = run_with_limits(256, 2048, needed=1500)
    assert (short, now) == (None, 1500)


def test_a_hard_limit_below_the_need_raises_the_soft_limit_to_it_and_reports_the_shortfall() -> None:
    short, now = run_with_limits(256, 512, needed=1500)
    assert (short, now) == ([512, 512], 512)


def test_a_soft_limit_already_high_enough_is_left_alone() -> None:
    short, now = run_with_limits(2048, 4096, needed=1500)
    assert (short, now) == (None, 2048)


def test_what_is_needed_counts_every_listening_http_receiver_s_max_connections() -> None:
    config = load_text("""
receivers:
  otlp: {http: {max_connections: 100}, grpc: {enabled: false}}
  remote_write: {max_connections: 50}
exporters: {remote_write: [{name: p, url: http://127.0.0.1:9090/api/v1/write}]}
pipelines: {metrics: {exporters: [p]}}
""", env={})
    assert wanted(config) == RESERVE + 150
