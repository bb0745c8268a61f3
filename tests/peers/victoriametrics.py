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

import os
from collections.abc import Sequence
from pathlib import Path

from tests.peers.server import PeerServer

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


class VictoriaMetricsServer(PeerServer):
    """One single-node VictoriaMetrics process accepting remote write at `remote_write_url`; a context manager.
    Queries poll for up to 20 s by default: a new series shows up only after up to 10 s."""

    name = "VictoriaMetrics"
    ready_path = "/health"
    log_name = "victoriametrics.log"
    query_timeout = 20.0
    query_interval = 0.2

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binary: Path = VICTORIAMETRICS_BINARY,
        port: int | None = None,
        extra_flags: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(workdir, binary=binary, port=port, extra_flags=extra_flags, startup_timeout=startup_timeout)

    def start(self) -> None:
        require_binary(self.binary)
        self._launch([
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-search.latencyOffset=0s",
            "-search.disableCache",
        ])
