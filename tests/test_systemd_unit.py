"""systemd/headwater.service: systemd 252 accepts it (`systemd-analyze verify`), and the agent keeps working
under the sandbox it asks for (system call allow-list, MemoryDenyWriteExecute, no capabilities...), with
grpcio, gzip, snappy and zstd, the compact format and the disk queue all in use.

The shipped unit names /opt/headwater; verify runs on a copy pointed at this test's own `headwater` (the one
beside the interpreter running the tests), since verify checks that the executables exist."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

from tests.agent_process import REPO_ROOT, AgentProcess, free_ports
from tests.peers.prometheus import PrometheusServer
from tests.systemd_sandbox import INSTALL_HINT, SYSTEMD_ANALYZE
from tests.test_e2e_remote_write_formats import SERIES, counts, gauge_request, post_metrics
from tests.test_e2e_traces import SPAN_COUNT, send_with_python_sdk

UNIT = REPO_ROOT / "systemd" / "headwater.service"
SANDBOX = REPO_ROOT / "tests" / "systemd_sandbox.py"


def systemd_analyze() -> str:
    if not Path(SYSTEMD_ANALYZE).is_file():
        pytest.fail(f"{SYSTEMD_ANALYZE} is missing: {INSTALL_HINT}", pytrace=False)
    return SYSTEMD_ANALYZE


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    headwater = Path(sys.executable).parent / "headwater"
    if not headwater.is_file():
        pytest.fail(f"{headwater} is missing: install the package into this environment (make venv)", pytrace=False)
    text = UNIT.read_text()
    assert "/opt/headwater/bin/headwater" in text
    copy = tmp_path / "headwater.service"
    copy.write_text(text.replace("/opt/headwater/bin/headwater", str(headwater)))
    result = subprocess.run([systemd_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify prints problems on stderr and may exit 0 on warnings: both must be clean.
    assert (result.returncode, result.stderr.strip()) == (0, ""), result.stderr


def sandboxed(workdir: Path, **kwargs) -> AgentProcess:
    """An agent under the unit's sandbox, as far as it can be had without systemd: a private /proc mounted as
    ProtectProc=invisible mounts it; a user namespace that maps only the user it runs as (PrivateUsers=); no
    capabilities at all (CapabilityBoundingSet=, NoNewPrivileges=); then tests/systemd_sandbox.py loads the
    unit's seccomp filters, strict: a call outside the allow-list kills the agent instead of failing it."""
    systemd_analyze()  # the sandbox expands the unit's system call groups with it
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t proc -o hidepid=invisible proc /proc && exec "$@"', "sh",
              "unshare", "--user", "--map-current-user",
              "setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
              sys.executable, str(SANDBOX), "--unit", str(UNIT), "--strict", "--"]
    return AgentProcess(workdir, command_prefix=prefix, **kwargs)


def test_the_agent_works_under_the_units_sandbox(tmp_path: Path, otlp_sink, prometheus: PrometheusServer) -> None:
    (gateway_port,) = free_ports(1)
    retry = {"retry": {"initial_backoff": "100ms", "max_backoff": "500ms"}}
    # The gateway writes rw1 + snappy into Prometheus; the node sends compact + zstd to the gateway and its
    # traces upstream with gzip; both queue on disk.
    gateway = sandboxed(tmp_path / "gateway", extra_config={
        "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{gateway_port}"}},
        "exporters": {"remote_write": [{
            "name": "store", "url": prometheus.remote_write_url, "protocol": "rw1", "compression": "snappy",
            "queue": {"max_disk": "64MiB"}, "batch": {"flush_interval": "100ms"}, "sender": retry}]},
        "pipelines": {"metrics": {"exporters": ["store"]}},
    })
    node = sandboxed(tmp_path / "node", otlp_exporter_url=otlp_sink.url, extra_config={
        "exporters": {"otlp": {"compression": "gzip"}, "remote_write": [{
            "name": "gateway", "url": f"http://127.0.0.1:{gateway_port}/api/v1/write", "protocol": "compact",
            "compression": "zstd", "queue": {"max_disk": "64MiB"}, "batch": {"flush_interval": "100ms"},
            "sender": retry}]},
        "pipelines": {"metrics": {"exporters": ["gateway"]}},
    })
    with gateway, node:
        steps = 10
        for step in range(steps):
            post_metrics(node, gauge_request("e2e_sandbox", step))
            time.sleep(0.02)
        grpc = send_with_python_sdk(GrpcSpanExporter(endpoint=node.grpc_endpoint, insecure=True,
                                                     compression=Compression.Gzip, timeout=10), "sandbox-grpc")
        http = send_with_python_sdk(HttpSpanExporter(endpoint=f"{node.http_url}/v1/traces", timeout=10),
                                    "sandbox-http")
        received = otlp_sink.wait_for_span_count(2 * SPAN_COUNT, timeout=30)
        assert {s.key for s in received} == {s.key for s in grpc + http}
        assert counts(prometheus, "e2e_sandbox", steps) == [steps] * SERIES
        for agent in (gateway, node):
            assert "systemd_sandbox: SystemCallFilter" in agent.log_text()  # the filters were in force
