"""A real Prometheus for end-to-end tests: started on a free local port, queried over its HTTP API, stopped.

The binary comes from `tests/peers/install-prometheus.sh` (Debian's 2.42, unpacked into
`.cache/peers/prometheus`). Each server gets its own temporary storage and an empty scrape config, and
accepts remote write at `remote_write_url`.

    with PrometheusServer(tmp_path) as prometheus:
        ...send to prometheus.remote_write_url...
        result = prometheus.wait_for_query('up_total{job="x"}', lambda r: len(r) == 1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tests.peers.server import PeerServer
from tests.peers.server import free_port as free_port  # re-exported: tests import it from here

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_BINARY = REPO_ROOT / ".cache" / "peers" / "prometheus" / "usr" / "bin" / "prometheus"
INSTALL_HINT = "run `make test` (or tests/peers/install-prometheus.sh) to install the Prometheus test peer"


class PrometheusServer(PeerServer):
    """One Prometheus process with the remote-write receiver enabled; a context manager."""

    name = "Prometheus"
    ready_path = "/-/ready"
    log_name = "prometheus.log"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binary: Path = PROMETHEUS_BINARY,
        port: int | None = None,
        extra_flags: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(workdir, binary=binary, port=port, extra_flags=extra_flags, startup_timeout=startup_timeout)

    def start(self) -> None:
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise FileNotFoundError(f"Prometheus binary not found at {self.binary}: {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
        self._launch([
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
        ])
