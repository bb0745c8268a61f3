"""VictoriaMetrics 1.79 (Debian's) as a remote-write peer: what it stores, and what it answers to the formats
it does not speak — the answers `protocol: auto` has to read correctly.

1.79 predates VictoriaMetrics' own protocol (1.88) and remote write 2.0: it decodes every body as snappy
whatever the headers say, takes the result as a remote write 1.0 `WriteRequest`, and skips fields it does
not know. So an rw2 body "succeeds" with 204 and stores nothing, while zstd is refused outright.
"""

from __future__ import annotations

import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import zstandard

from exporters.remote_write import rw1, vm
from tests.peers.victoriametrics import (
    VMAGENT_BINARY,
    VictoriaMetricsServer,
    require_binary,
)


@pytest.fixture
def victoriametrics() -> Iterator[VictoriaMetricsServer]:
    """A fresh VictoriaMetrics 1.79 on a free local port, stopped (and its storage removed) after the test.
    A missing binary raises FileNotFoundError naming the install script: the test fails, never skips."""
    with VictoriaMetricsServer() as server:
        yield server


def send(url: str, body: bytes | None, headers: Mapping[str, str], method: str = "POST") -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; an HTTP error status is an answer here, not an exception."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def now_ms() -> int:
    return int(time.time() * 1000)


def write_rw1(server: VictoriaMetricsServer, name: str, stamps: list[int]) -> int:
    labels = (("__name__", name), ("job", "peer"))
    body = rw1.encode([labels] * len(stamps), [float(i) for i in range(len(stamps))], stamps)
    status, _, _ = send(server.remote_write_url, body, rw1.HEADERS)
    return status


def test_a_remote_write_1_0_body_is_stored_and_every_distinct_timestamp_is_counted(
    victoriametrics: VictoriaMetricsServer,
) -> None:
    start = now_ms() - 30_000
    assert write_rw1(victoriametrics, "vm_peer_rw1", [start, start + 10_000, start + 20_000]) == 204
    result = victoriametrics.wait_for_query(
        'count_over_time(vm_peer_rw1{job="peer"}[5m])', lambda r: len(r) == 1 and r[0]["value"][1] == "3"
    )
    assert result[0]["metric"] == {"job": "peer"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def rw2_body(name: str, stamp: int) -> bytes:
    """An `io.prometheus.write.v2.Request` written by hand (symbols = field 4, timeseries = field 5), so the
    test does not depend on Headwater's own rw2 encoder being right."""
    symbols = ["", "__name__", name, "job", "peer"]
    refs = b"".join(_varint(i) for i in (1, 2, 3, 4))
    sample = b"\x09" + struct.pack("<d", 42.0) + b"\x10" + _varint(stamp)
    series = _field(1, refs) + _field(2, sample)
    request = b"".join(_field(4, s.encode()) for s in symbols) + _field(5, series)
    return rw1.compress(request)


RW2_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    "X-Prometheus-Remote-Write-Version": "2.0.0",
}


def test_a_remote_write_2_0_body_is_answered_204_without_a_samples_written_header_and_nothing_is_stored(
    victoriametrics: VictoriaMetricsServer,
) -> None:
    stamp = now_ms() - 10_000
    status, headers, _ = send(victoriametrics.remote_write_url, rw2_body("vm_peer_rw2", stamp), RW2_HEADERS)
    assert status == 204
    assert not any(name.lower().startswith("x-prometheus-remote-write-") for name in headers)
    # Absence shows only once a later write is visible: the rw2 write, had it stored anything, came first.
    assert write_rw1(victoriametrics, "vm_peer_sentinel", [stamp]) == 204
    victoriametrics.wait_for_query("vm_peer_sentinel", lambda r: len(r) == 1)
    assert victoriametrics.query('{__name__=~"vm_peer_rw2.*"}') == []
    assert victoriametrics.query("count(last_over_time({job=\"peer\"}[5m]))")[0]["value"][1] == "1"


def test_a_zstd_body_is_refused_with_400_because_every_body_is_decoded_as_snappy(
    victoriametrics: VictoriaMetricsServer,
) -> None:
    raw = rw1.serialize([(("__name__", "vm_peer_zstd"),)], [1.0], [now_ms()])
    status, _, answer = send(victoriametrics.remote_write_url, zstandard.ZstdCompressor().compress(raw), vm.HEADERS)
    assert status == 400
    assert b"snappy: corrupt input" in answer


def test_the_vm_protocol_handshake_is_answered_400_so_a_sender_keeps_to_remote_write_1_0(
    victoriametrics: VictoriaMetricsServer,
) -> None:
    status, _, answer = send(vm.handshake_url(victoriametrics.remote_write_url), None, {}, method="GET")
    assert (status, b"snappy: corrupt input" in answer) == (400, True)
    assert not vm.supports_vm(status, answer)


def test_a_missing_binary_fails_with_the_install_script_named_instead_of_skipping(tmp_path: Path) -> None:
    server = VictoriaMetricsServer(tmp_path / "vm", binary=tmp_path / "absent" / "victoria-metrics")
    with pytest.raises(FileNotFoundError, match="install-victoriametrics.sh"):
        server.start()
    assert server._process is None


def test_the_peer_package_also_provides_a_vmagent_that_runs_for_the_benchmarks() -> None:
    binary = str(require_binary(VMAGENT_BINARY))
    assert subprocess.run([binary, "-version"], check=False, capture_output=True, timeout=30).returncode == 0
