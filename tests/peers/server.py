"""What every real storage peer in the end-to-end tests shares: a process on a free local port with its own
work directory and log, readiness polled over HTTP, instant queries over the Prometheus query API (both
Prometheus and VictoriaMetrics serve it), and a stop that always cleans up. Each peer's module says only how
its binary is started.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_200(url: str, open_url: Callable[..., Any] = urllib.request.urlopen) -> bool:
    """Whether `url` answers 200 now; False while nothing listens there yet."""
    try:
        with open_url(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class PeerServer(ABC):
    """One peer process; a context manager. Subclasses set `name`, `ready_path`, `log_name` and implement
    `start()` by calling `_launch(arguments)`."""

    name = "peer"
    ready_path = "/"
    log_name = "peer.log"
    query_timeout = 10.0
    query_interval = 0.1

    def __init__(
        self,
        workdir: Path | None,
        *,
        binary: Path,
        port: int | None = None,
        extra_flags: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.extra_flags = tuple(extra_flags)
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name.lower()}-")) if workdir is None else workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    scheme = "http"

    def open_url(self, url: str, timeout: float) -> Any:
        """Open `url` on this peer (readiness, queries); a peer behind TLS or auth overrides it."""
        return urllib.request.urlopen(url, timeout=timeout)

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    @abstractmethod
    def start(self) -> None:
        """Check the binary is there, then `_launch` it with this peer's arguments."""

    def _launch(self, arguments: Sequence[str]) -> None:
        """Start the binary with `arguments` (then `extra_flags`) and wait until it answers `ready_path`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process; stop() closes it
        self._process = subprocess.Popen(
            [str(self.binary), *arguments, *self.extra_flags],
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
                raise RuntimeError(f"{self.name} exited with {self._process.returncode} on start:\n{self.log_tail()}")
            if answers_200(f"{self.url}{self.ready_path}", self.open_url):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {self.startup_timeout}s:\n{self.log_tail()}")
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
        with self.open_url(url, timeout=10.0) as response:
            payload = json.load(response)
        if payload.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {payload}")
        return payload["data"]["result"]

    def wait_for_query(
        self,
        expr: str,
        condition: Callable[[list[dict]], bool] = bool,
        timeout: float | None = None,
        interval: float | None = None,
    ) -> list[dict]:
        """Poll `query(expr)` until `condition(result)` holds; AssertionError with the last result if not."""
        timeout = self.query_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if condition(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} did not match within {timeout}s; last result: {result}")
            time.sleep(self.query_interval if interval is None else interval)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
