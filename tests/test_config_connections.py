"""Connection management keys of the receivers: their defaults, refusals with the key path, what a reload does
with them, and that the receivers built from a config follow them."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from agent.admission import Admission
from agent.build import build_gateway, build_grpc, build_http, http_connections
from agent.config import ConfigError, load_text
from agent.reload import plan
from tests.raw_http import closed_by_peer, read_response
from tests.test_grpc_connections import MAX_CONCURRENT_STREAMS, SETTINGS, Http2Peer

BOUND = 5.0

CONFIG = """
receivers:
  otlp:
    http: {endpoint: 127.0.0.1:0%s}
    grpc: {endpoint: 127.0.0.1:0%s}
  remote_write: {endpoint: 127.0.0.1:0%s}
exporters:
  remote_write: [{name: prom, url: http://127.0.0.1:9090/api/v1/write}]
pipelines:
  metrics: {exporters: [prom]}
"""


def config(http: str = "", grpc: str = "", gateway: str = ""):
    return load_text(CONFIG % (http, grpc, gateway), env={})


def test_the_defaults_bound_every_phase_of_a_connection_and_allow_thousands_of_clients() -> None:
    receivers = config().receivers
    for http in (receivers.otlp.http, receivers.remote_write):
        assert (http.read_header_timeout, http.read_timeout, http.idle_timeout) == (10.0, 60.0, 60.0)
        assert http.max_connections == 4096
    grpc = receivers.otlp.grpc
    assert (grpc.keepalive.time, grpc.keepalive.timeout) == (60.0, 20.0)
    assert (grpc.max_connection_idle, grpc.max_connection_age, grpc.max_connection_age_grace) == (300.0, 3600.0, 30.0)
    assert grpc.max_concurrent_streams == 100


@pytest.mark.parametrize("http, grpc, gateway, path, words", [
    (", read_header_timeout: 0s", "", "", "receivers.otlp.http.read_header_timeout", "above 0"),
    (", max_connections: 0", "", "", "receivers.otlp.http.max_connections", "greater than 0"),
    ("", "", ", idle_timeout: soon", "receivers.remote_write.idle_timeout", "expected a duration"),
    ("", ", keepalive: {time: 0s}", "", "receivers.otlp.grpc.keepalive.time", "above 0"),
    ("", ", max_connection_age: 30d", "", "receivers.otlp.grpc.max_connection_age", "at most"),
    ("", ", max_concurrent_streams: 0", "", "receivers.otlp.grpc.max_concurrent_streams", "greater than or equal"),
    ("", ", keepalive: {interval: 1s}", "", "receivers.otlp.grpc.keepalive.interval", "unknown key"),
])
def test_a_bad_value_is_refused_with_its_key_path(http: str, grpc: str, gateway: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(http, grpc, gateway)
    assert [issue.path for issue in caught.value.issues] == [path]
    assert words in caught.value.issues[0].message


@pytest.mark.parametrize("grpc", [", keepalive: {time: 30s}", ", max_connection_age: 10m",
                                  ", max_concurrent_streams: 10"])
def test_a_reload_keeps_the_grpc_connection_settings_until_a_restart(grpc: str) -> None:
    running = config()
    result = plan(running, config(grpc=grpc))
    assert [note.path.rsplit(".", 1)[-1] for note in result.needs_restart] == [grpc.split(":")[0][2:]]
    assert result.config == running


@pytest.mark.parametrize("http, gateway", [(", read_timeout: 5s", ""), ("", ", max_connections: 10")])
def test_a_reload_applies_the_http_connection_settings_live(http: str, gateway: str) -> None:
    new = config(http, "", gateway)
    result = plan(config(), new)
    assert result.needs_restart == ()
    assert result.config == new


def _in_a_thread(coro_factory):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread, asyncio.run_coroutine_threadsafe(coro_factory(), loop).result(10)


@pytest.mark.parametrize("which", ["otlp_http", "remote_write"])
def test_an_http_receiver_built_from_the_config_closes_idle_connections_after_its_idle_timeout(which: str) -> None:
    cfg = config(", idle_timeout: 300ms", "", ", idle_timeout: 300ms")
    admission = Admission(1 << 20, retry_after=1.0)

    async def start():
        async def consume(batch) -> None:
            pass
        receiver = build_http(cfg, admission) if which == "otlp_http" else build_gateway(cfg, admission, consume)
        await receiver.start()
        return receiver

    loop, thread, receiver = _in_a_thread(start)
    try:
        with socket.create_connection(("127.0.0.1", receiver.bound_port), timeout=BOUND) as sock:
            start_time = time.monotonic()
            assert closed_by_peer(sock, within=BOUND)
            assert time.monotonic() - start_time >= 0.25
    finally:
        asyncio.run_coroutine_threadsafe(receiver.shutdown(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_max_connections_set_after_start_applies_to_the_next_client() -> None:
    cfg = config()
    admission = Admission(1 << 20, retry_after=3.0)

    async def start():
        receiver = build_http(cfg, admission)
        await receiver.start()
        return receiver

    loop, thread, receiver = _in_a_thread(start)
    try:
        reloaded = config(", max_connections: 1")
        loop.call_soon_threadsafe(receiver.set_connections, http_connections(reloaded.receivers.otlp.http, 3.0))
        with socket.create_connection(("127.0.0.1", receiver.bound_port), timeout=BOUND) as held:
            held.sendall(b"GET /v1/logs HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(held).status == 404  # served, so it counts
            with socket.create_connection(("127.0.0.1", receiver.bound_port), timeout=BOUND) as extra:
                extra.sendall(b"GET /v1/logs HTTP/1.1\r\nHost: t\r\n\r\n")
                response = read_response(extra)
                assert (response.status, response.headers["retry-after"]) == (503, "3")
    finally:
        asyncio.run_coroutine_threadsafe(receiver.shutdown(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_the_grpc_receiver_built_from_the_config_announces_its_max_concurrent_streams() -> None:
    cfg = config("", ", max_concurrent_streams: 9")

    async def start():
        receiver = build_grpc(cfg, Admission(1 << 20, retry_after=1.0))
        await receiver.start()
        return receiver

    loop, thread, receiver = _in_a_thread(start)
    try:
        peer = Http2Peer(receiver.bound_port, answer_pings=True)
        try:
            got = peer.next_frame(BOUND)
            assert got is not None and got[0] == SETTINGS
            values = {int.from_bytes(got[2][i:i + 2], "big"): int.from_bytes(got[2][i + 2:i + 6], "big")
                      for i in range(0, len(got[2]), 6)}
            assert values[MAX_CONCURRENT_STREAMS] == 9
        finally:
            peer.close()
    finally:
        asyncio.run_coroutine_threadsafe(receiver.shutdown(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
