"""A real Prometheus for end-to-end tests: started on a free local port, queried over its HTTP API, stopped.

The binary comes from `tests/peers/install-prometheus.sh` (Debian's 2.42, unpacked into
`.cache/peers/prometheus`). Each server gets its own temporary storage and an empty scrape config, and
accepts remote write at `remote_write_url`.

    with PrometheusServer(tmp_path) as prometheus:
        ...send to prometheus.remote_write_url...
        result = prometheus.wait_for_query('up_total{job="x"}', lambda r: len(r) == 1)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_BINARY = REPO_ROOT / ".cache" / "peers" / "prometheus" / "usr" / "bin" / "prometheus"
INSTALL_HINT = "run `make test` (or tests/peers/install-prometheus.sh) to install the Prometheus test peer"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """One Prometheus process with the remote-write receiver enabled; a context manager."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binary: Path = PROMETHEUS_BINARY,
        port: int | None = None,
        extra_flags: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.extra_flags = tuple(extra_flags)
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="prometheus-")) if workdir is None else workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self) -> None:
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise FileNotFoundError(f"Prometheus binary not found at {self.binary}: {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
        self._log = open(self.log_path, "wb")
        self._process = subprocess.Popen(
            [
                str(self.binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-remote-write-receiver",
                *self.extra_flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"Prometheus exited with {self._process.returncode} on start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus not ready after {self.startup_timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate, wait, kill if it lingers; remove the work directory if this object made it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def query(self, promql: str, time: float | None = None) -> list[dict]:
        """Instant query; the `result` list of /api/v1/query (each item has `metric` and `value`)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = repr(time)
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10.0) as response:
            payload = json.load(response)
        if payload.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {payload}")
        return payload["data"]["result"]

    def wait_for_query(
        self,
        promql: str,
        condition: Callable[[list[dict]], bool] = bool,
        timeout: float = 10.0,
        interval: float = 0.1,
    ) -> list[dict]:
        """Poll `query(promql)` until `condition(result)` holds; AssertionError with the last result if not."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if condition(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} did not match within {timeout}s; last result: {result}")
            time.sleep(interval)

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
