"""The agent as a real subprocess, for end-to-end tests.

    agent = AgentProcess(tmp_path, otlp_exporter_url=sink.url)
    agent.start()              # writes config.yaml, starts `python -m agent run -c ...`, waits for /readyz
    ...send to agent.http_url / agent.grpc_endpoint, read agent.file_path...
    assert agent.stop() == 0   # SIGTERM, wait, kill after a timeout

Ports are picked free on 127.0.0.1. The agent's stdout and stderr go to `agent.log_path`; every failure
(exit before ready, never ready, not stopping after SIGTERM) raises `AgentFailed` with the end of that log.
`extra_config` is merged over the generated config (mappings recursively; a value of None removes a key).
`base_config` (e.g. a shipped file, loaded as YAML) replaces the generated config; only its state_dir, the OTLP
receivers' and the telemetry endpoints are set to this process's own, so the file is tested as users run it.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_CHARS = 8000


class AgentFailed(AssertionError):
    """The agent did not start, become ready or stop as expected; the message ends with its log."""


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago (held open together, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge recursively, None deletes the key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class AgentProcess:
    """One agent subprocess with its own config, state directory, ports and log file under `workdir`."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        otlp_exporter_url: str | None = None,
        file_exporter: bool = True,
        extra_config: Mapping[str, Any] | None = None,
        base_config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        command_prefix: Sequence[str] = (),
        ready_timeout: float = 30.0,
        stop_timeout: float = 20.0,
    ) -> None:
        if otlp_exporter_url is None and not file_exporter and base_config is None:
            raise ValueError("AgentProcess needs otlp_exporter_url, file_exporter=True, or both")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.config_path = self.workdir / "config.yaml"
        self.log_path = self.workdir / "agent.log"
        self.file_path = self.workdir / "traces.jsonl"
        self.grpc_port, self.http_port, self.telemetry_port = free_ports(3)
        self.otlp_exporter_url = otlp_exporter_url
        self.file_exporter = file_exporter
        self.extra_config = dict(extra_config or {})
        self.base_config = base_config
        self.env = env
        self.command_prefix = list(command_prefix)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # endpoints

    @property
    def http_url(self) -> str:
        """OTLP/HTTP base URL; POST to http_url + '/v1/traces'."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        """OTLP/gRPC target, host:port (insecure)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def telemetry_url(self) -> str:
        return f"http://127.0.0.1:{self.telemetry_port}"

    # config

    def config(self) -> dict[str, Any]:
        if self.base_config is not None:
            own = {"state_dir": str(self.state_dir),
                   "receivers": {"otlp": {"grpc": {"endpoint": self.grpc_endpoint},
                                          "http": {"endpoint": f"127.0.0.1:{self.http_port}"}}},
                   "telemetry": {"endpoint": f"127.0.0.1:{self.telemetry_port}"}}
            return merge_config(merge_config(self.base_config, own), self.extra_config)
        exporters: dict[str, Any] = {}
        if self.otlp_exporter_url is not None:
            exporters["otlp"] = {"endpoint": self.otlp_exporter_url, "compression": "none"}
        if self.file_exporter:
            exporters["file"] = {"path": str(self.file_path)}
        base = {
            "state_dir": str(self.state_dir),
            "receivers": {
                "otlp": {
                    "grpc": {"endpoint": self.grpc_endpoint},
                    "http": {"endpoint": f"127.0.0.1:{self.http_port}", "max_body_size": "16MiB"},
                }
            },
            # Keep every trace and decide quickly: these tests check delivery, not sampling.
            "sampling": {"decision_wait": "1s", "root_delay": "200ms", "annotate": False,
                         "tiers": [{"name": "all", "rate": 1.0}]},
            "exporters": exporters,
            "pipelines": {"traces": {"exporters": list(exporters)}},
            "telemetry": {"endpoint": f"127.0.0.1:{self.telemetry_port}", "log_level": "info"},
        }
        return merge_config(base, self.extra_config)

    # lifecycle

    def start(self) -> AgentProcess:
        """Write the config, start the agent and wait until /readyz answers 200."""
        if self.process is not None:
            raise RuntimeError("AgentProcess already started")
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8")
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = [*self.command_prefix, sys.executable, "-m", "agent", "run", "-c", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.process is not None
        url = f"{self.telemetry_url}/readyz"
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer"
        while True:
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise AgentFailed(f"the agent exited with status {code} before it was ready{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if time.monotonic() >= deadline:
                self.kill()
                raise AgentFailed(
                    f"the agent was not ready within {self.ready_timeout}s ({url}: {last}); killed it{self._log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM, wait up to `stop_timeout`, and return the exit status (None if never started).
        Raises AgentFailed (after killing it) if it does not exit in time. Safe twice."""
        if self.process is None:
            return None
        if self.returncode is not None:
            return self.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AgentFailed(
                    f"the agent did not exit within {self.stop_timeout}s of SIGTERM; killed it{self._log_tail()}"
                ) from None
        self.returncode = self.process.returncode
        return self.returncode

    def stop_cleanly(self) -> None:
        """stop(), asserting exit status 0."""
        code = self.stop()
        if code not in (0, None):
            raise AgentFailed(f"the agent exited with status {code} after SIGTERM (expected 0){self._log_tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None:
            self.returncode = self.process.returncode

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_cleanly()

    # diagnostics

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        text = self.log_text()
        if len(text) > LOG_TAIL_CHARS:
            text = "...\n" + text[-LOG_TAIL_CHARS:]
        return f"\n--- agent log ({self.log_path}) ---\n{text or '(empty)'}\n--- config ---\n{self._config_text()}"

    def _config_text(self) -> str:
        try:
            return self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return "(not written)"
