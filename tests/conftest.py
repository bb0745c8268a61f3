"""Shared pytest fixtures. Each block below belongs to one area; keep them small and headed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The agent as a subprocess, an OTLP sink and the Node client (tests/conftest_agent.py).
pytest_plugins = ["tests.conftest_agent"]

# ---------------------------------------------------------------------------------------------------------
# Real peers: Prometheus (tests/peers/prometheus.py, installed by tests/peers/install-prometheus.sh).
# A missing binary fails the test, never skips it: an end-to-end test that silently does not run is a hole.
# The repository root is on sys.path (`tests` is a package), so peers import as `tests.peers.*`.
# ---------------------------------------------------------------------------------------------------------

from tests.peers.prometheus import INSTALL_HINT, PROMETHEUS_BINARY, PrometheusServer  # noqa: E402


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A fresh Prometheus 2.42 with the remote-write receiver on a free local port, stopped after the test."""
    if not PROMETHEUS_BINARY.is_file():
        pytest.fail(f"Prometheus binary missing at {PROMETHEUS_BINARY}: {INSTALL_HINT}", pytrace=False)
    with PrometheusServer(tmp_path / "prometheus") as server:
        yield server
