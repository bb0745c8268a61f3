"""A real VictoriaMetrics for end-to-end tests: started on a free local port, queried over its HTTP API, stopped.

The binaries come from `tests/peers/install-victoriametrics.sh` (Debian's 1.79, unpacked into
`.cache/peers/victoriametrics`); the same package carries `vmagent`, which benchmarks run as a sender.
1.79 predates VictoriaMetrics' own protocol (1.88): it takes remote write 1.0 with snappy only, which is
what makes it the peer that shows a sender falling back.

Each server gets its own temporary storage. VictoriaMetrics hides the last 30 s of data from queries and
caches results, so the server runs with `-search.latencyOffset=0s -search.disableCache`. A new series still
becomes visible to queries over the current hour only when the storage moves it into its hour index, every
10 s in 1.79 (`currHourMetricIDsUpdateInterval`, no flag), so tests poll with `wait_for_query`.

    with VictoriaMetricsServer() as vm:
        ...send to vm.remote_write_url...
        result = vm.wait_for_query('count_over_time(up_total[5m])', lambda r: len(r) == 1)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.peers.prometheus import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_DIR = REPO_ROOT / ".cache" / "peers" / "victoriametrics" / "usr" / "bin"
VICTORIAMETRICS_BINARY = PEER_DIR / "victoria-metrics"
VMAGENT_BINARY = PEER_DIR / "vmagent"
INSTALL_HINT = "run `make peers` (or tests/peers/install-victoriametrics.sh) to install the VictoriaMetrics test peer"


def require_binary(binary: Path) -> Path:
    """The binary, or a FileNotFoundError that says how to install it: a peer test must fail, never skip."""
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise FileNotFoundError(f"VictoriaMetrics binary not found at {binary}: {INSTALL_HINT}")
    return binary


class VictoriaMetricsServer:
    """One single-node VictoriaMetrics process accepting remote write at `remote_write_url`; a context manager."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binary: Path = VICTORIAMETRICS_BINARY,
        port: int | None = None,
        extra_flags: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.extra_flags = tuple(extra_flags)
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="victoriametrics-")) if workdir is None else workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def log_path(self) -> Path:
        return self.workdir / "victoriametrics.log"

    def start(self) -> None:
        require_binary(self.binary)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process; stop() closes it
        self._process = subprocess.Popen(
            [
                str(self.binary),
                f"-storageDataPath={self.workdir / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                *self.extra_flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"VictoriaMetrics exited with {self._process.returncode} on start:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"VictoriaMetrics not healthy after {self.startup_timeout}s:\n{self.log_tail()}")
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

    def query(self, expr: str, time: float | None = None) -> list[dict]:
        """Instant query; the `result` list of /api/v1/query (each item has `metric` and `value`)."""
        params = {"query": expr}
        if time is not None:
            params["time"] = repr(time)
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10.0) as response:
            payload = json.load(response)
        if payload.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {payload}")
        return payload["data"]["result"]

    def wait_for_query(
        self,
        expr: str,
        predicate: Callable[[list[dict]], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.2,
    ) -> list[dict]:
        """Poll `query(expr)` until `predicate(result)` holds (a new series shows up only after up to 10 s);
        AssertionError with the last result if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} did not match within {timeout}s; last result: {result}")
            time.sleep(interval)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
