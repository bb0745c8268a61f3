"""A real Prometheus for end-to-end tests: started on a free local port, queried over its HTTP API, stopped.

The binary comes from `tests/peers/install-prometheus.sh` (Debian's 2.42, unpacked into
`.cache/peers/prometheus`). Each server gets its own temporary storage and an empty scrape config, and
accepts remote write at `remote_write_url`.

    with PrometheusServer(tmp_path) as prometheus:
        ...send to prometheus.remote_write_url...
        result = prometheus.wait_for_query('up_total{job="x"}', lambda r: len(r) == 1)
"""

from __future__ import annotations

import base64
import os
import ssl
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

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
        web_config: Mapping[str, Any] | None = None,
        ca_file: Path | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        """`web_config`: the `--web.config.file` document (`tls_server_config`, `basic_auth_users`); the
        helper's own readiness checks and queries then trust `ca_file` and send `basic_auth` (user, password)."""
        super().__init__(workdir, binary=binary, port=port, extra_flags=extra_flags, startup_timeout=startup_timeout)
        self.web_config = web_config
        self.scheme = "https" if web_config and "tls_server_config" in web_config else "http"
        self._context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
        self._authorization = ("Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()
                               if basic_auth is not None else None)

    def open_url(self, url: str, timeout: float) -> Any:
        request = urllib.request.Request(url)
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
        return urllib.request.urlopen(request, timeout=timeout, context=self._context)

    def start(self) -> None:
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise FileNotFoundError(f"Prometheus binary not found at {self.binary}: {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
        web = []
        if self.web_config is not None:
            (self.workdir / "web.yml").write_text(yaml.safe_dump(dict(self.web_config)))
            web = [f"--web.config.file={self.workdir / 'web.yml'}"]
        self._launch([
            *web,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
        ])
