"""The agent as a real process under a notify socket the test owns, as systemd runs it with Type=notify and
WatchdogSec: READY=1 only once every receiver accepts, WATCHDOG=1 every half of WATCHDOG_USEC, RELOADING=1 then
READY=1 on SIGHUP, STOPPING=1 on SIGTERM. (The protocol details are tests/test_systemd_notify.py.)"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess, free_ports

WATCHDOG_USEC = 1_000_000  # pings expected every 0.5 s


class NotifyListener:
    """systemd's side of NOTIFY_SOCKET: a datagram socket in `workdir` that records every message with the
    time it arrived, and runs `on_ready` in its own thread the moment the first READY=1 arrives."""

    def __init__(self, workdir: Path, on_ready: Callable[[], object]) -> None:
        self.path = str(workdir / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self._on_ready = on_ready
        self.ready_result: object = None
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ready_seen = False
        while not self._closing:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            message = dict(line.split("=", 1) for line in data.decode().split("\n"))
            if message.get("READY") == "1" and not ready_seen:
                ready_seen = True
                self.ready_result = self._on_ready()
            with self._changed:
                self.messages.append((time.monotonic(), message))
                self._changed.notify_all()

    def wait_for(self, done: Callable[[list[dict[str, str]]], bool], timeout: float = 20.0) -> list[dict[str, str]]:
        """Wait until `done(messages so far)`; fail with what arrived if it does not within `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: done([m for _, m in self.messages]), timeout):
                pytest.fail(f"notify socket: expected messages did not arrive; got {self.messages}")
            return [m for _, m in self.messages]

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=5)
        self._sock.close()


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def agent_under_systemd(tmp_path: Path) -> Iterator[tuple[AgentProcess, NotifyListener, dict[str, int]]]:
    gateway_port, dead_port = free_ports(2)
    agent = AgentProcess(
        tmp_path / "agent",
        extra_config={
            "receivers": {"remote_write": {"endpoint": f"127.0.0.1:{gateway_port}"}},
            "exporters": {"remote_write": [{"name": "store", "url": f"http://127.0.0.1:{dead_port}/api/v1/write",
                                            "protocol": "rw1"}]},
            "pipelines": {"metrics": {"exporters": ["store"]}},
        },
        # systemd sets WATCHDOG_PID to the main process; the shell execs the agent, so `$$` is its pid.
        command_prefix=["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"],
    )
    receivers = {"grpc": agent.grpc_port, "http": agent.http_port, "remote_write": gateway_port}

    def connect_to_every_receiver() -> dict[str, bool]:
        return {name: accepts(port) for name, port in receivers.items()}

    listener = NotifyListener(tmp_path, connect_to_every_receiver)
    agent.env = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    try:
        agent.start()
        yield agent, listener, receivers
    finally:
        try:
            agent.stop()
        finally:
            listener.close()


def test_every_receiver_accepts_connections_when_ready_arrives(agent_under_systemd) -> None:
    agent, listener, receivers = agent_under_systemd
    messages = listener.wait_for(lambda ms: any(m.get("READY") == "1" for m in ms))
    assert listener.ready_result == {name: True for name in receivers}
    ready = next(m for m in messages if m.get("READY") == "1")
    assert ready["STATUS"].startswith("spans in 0, kept 0")
    with urllib.request.urlopen(f"{agent.telemetry_url}/readyz", timeout=5) as response:
        assert response.status == 200


def test_watchdog_pings_arrive_every_half_of_watchdog_usec(agent_under_systemd) -> None:
    _agent, listener, _receivers = agent_under_systemd
    listener.wait_for(lambda ms: sum(m.get("WATCHDOG") == "1" for m in ms) >= 8)
    pings = [t for t, m in listener.messages if m.get("WATCHDOG") == "1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    half = WATCHDOG_USEC / 2e6
    assert half * 0.8 <= statistics.median(gaps) <= half * 1.3, gaps
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"a gap reached the watchdog timeout: {gaps}"


def test_sighup_sends_reloading_then_ready(agent_under_systemd) -> None:
    agent, listener, _receivers = agent_under_systemd
    listener.wait_for(lambda ms: any(m.get("READY") == "1" for m in ms))
    before = len(listener.messages)
    agent.process.send_signal(signal.SIGHUP)
    after = listener.wait_for(lambda ms: any(m.get("READY") == "1" for m in ms[before:]))[before:]
    states = [m for m in after if "WATCHDOG" not in m]
    assert [("RELOADING" in m, "READY" in m) for m in states][:2] == [(True, False), (False, True)]
    assert int(states[0]["MONOTONIC_USEC"]) > 0


def test_sigterm_sends_stopping_and_the_agent_exits_cleanly(agent_under_systemd) -> None:
    agent, listener, _receivers = agent_under_systemd
    listener.wait_for(lambda ms: any(m.get("READY") == "1" for m in ms))
    assert agent.stop() == 0
    messages = listener.wait_for(lambda ms: any(m.get("STOPPING") == "1" for m in ms), timeout=5)
    stopping = messages.index(next(m for m in messages if m.get("STOPPING") == "1"))
    assert not any(m.get("READY") == "1" for m in messages[stopping:])
