"""agent.notify: the sd_notify protocol (datagrams to NOTIFY_SOCKET, the watchdog variables) and the event-loop
watchdog, in process. The agent as a real process under a notify socket is tests/test_systemd_service.py."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.notify import (
    Notifier,
    NotifySocketError,
    Watchdog,
    keep_watchdog,
    report_status,
    socket_address,
    watchdog_from_environment,
)
from agent.status_line import StatusLine, StatusSources
from tests.virtual_time import VirtualTime


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def _received(sock: socket.socket) -> list[dict[str, str]]:
    """Every datagram waiting on `sock` now, each parsed into its KEY=VALUE fields."""
    messages = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return messages
        messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = _listener(path)
    try:
        yield path, sock
    finally:
        sock.close()


# --- NOTIFY_SOCKET and the watchdog variables ---


def test_a_path_is_used_as_the_socket_address() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_a_leading_at_sign_names_an_abstract_socket() -> None:
    assert socket_address("@/org/freedesktop/systemd1/notify/123") == b"\0/org/freedesktop/systemd1/notify/123"


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_a_socket_value_that_is_neither_path_nor_abstract_name_is_refused_with_the_value(value: str) -> None:
    with pytest.raises(NotifySocketError, match="NOTIFY_SOCKET"):
        socket_address(value)


def test_watchdog_timeout_comes_from_watchdog_usec_and_pings_at_half_of_it() -> None:
    watchdog = watchdog_from_environment({"WATCHDOG_USEC": "30000000"}, pid=42)
    assert watchdog == Watchdog(30.0)
    assert watchdog.interval == 15.0


def test_watchdog_is_off_without_watchdog_usec() -> None:
    assert watchdog_from_environment({}, pid=42) is None


def test_watchdog_meant_for_another_process_is_not_ours() -> None:
    assert watchdog_from_environment({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "41"}, pid=42) is None


def test_watchdog_meant_for_this_process_is_ours() -> None:
    assert watchdog_from_environment({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, pid=42) == Watchdog(1.0)


@pytest.mark.parametrize("env", [{"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "10s"},
                                 {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"}])
def test_unusable_watchdog_variables_are_refused_with_their_name(env: dict[str, str]) -> None:
    with pytest.raises(NotifySocketError, match="WATCHDOG_"):
        watchdog_from_environment(env, pid=42)


def test_unusable_watchdog_variables_leave_notifications_on_and_the_watchdog_off(tmp_path: Path) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "soon"}, pid=1)
    assert notifier.enabled
    assert notifier.watchdog is None


# --- sending ---


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({}, pid=1)
    assert not notifier.enabled
    assert notifier.ready("running") is False


def test_ready_arrives_as_one_datagram_with_its_status(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path}, pid=1)
    assert notifier.ready("spans in 0, kept 0")
    assert _received(sock) == [{"READY": "1", "STATUS": "spans in 0, kept 0"}]


def test_messages_reach_an_abstract_socket() -> None:
    name = f"@headwater-test-{uuid.uuid4().hex}"
    sock = _listener(b"\0" + name[1:].encode())
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": name}, pid=1)
        assert notifier.stopping()
        assert [m["STOPPING"] for m in _received(sock)] == ["1"]
    finally:
        sock.close()


def test_reloading_carries_the_monotonic_time_systemd_253_asks_for(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    Notifier.from_environment({"NOTIFY_SOCKET": path}, pid=1).reloading()
    (message,) = _received(sock)
    assert message["RELOADING"] == "1"
    now_usec = int(message["MONOTONIC_USEC"])
    assert 0 < now_usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_a_status_with_a_newline_stays_one_field(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    Notifier.from_environment({"NOTIFY_SOCKET": path}, pid=1).status("line one\nREADY=1")
    assert _received(sock) == [{"STATUS": "line one READY=1"}]


def test_a_socket_nobody_listens_on_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")}, pid=1)
    assert notifier.ready("x") is False
    assert notifier.ping_watchdog() is False
    warnings = [r for r in caplog.records if r.name == "headwater.notify"]
    assert len(warnings) == 1  # logged once per kind of failure, not once per ping


# --- the watchdog, driven by virtual time ---


def _watchdog_notifier(path: str, timeout_usec: int = 4_000_000) -> Notifier:
    return Notifier.from_environment(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(timeout_usec), "WATCHDOG_PID": str(os.getpid())})


def test_watchdog_pings_at_once_and_then_every_half_timeout(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    vt = VirtualTime()

    async def scenario() -> list[int]:
        task = asyncio.create_task(keep_watchdog(_watchdog_notifier(path), sleep=vt.sleep))
        counts = []
        await vt.settle()
        counts.append(len(_received(sock)))
        for _ in range(3):
            await vt.advance(1.999)
            counts.append(len(_received(sock)))
            await vt.advance(0.001)
            counts.append(len(_received(sock)))
        task.cancel()
        return counts

    # WATCHDOG_USEC=4 s: one ping at start, then one each 2 s, none in between.
    assert asyncio.run(scenario()) == [1, 0, 1, 0, 1, 0, 1]


def test_no_watchdog_ping_while_the_event_loop_is_blocked(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    vt = VirtualTime()
    during_block: list[dict[str, str]] = []

    def stuck_callback() -> None:
        # Holds the loop while 10 s (five ping intervals) pass on the clock the watchdog sleeps by, and
        # looks at the socket before letting go.
        vt.now += 10.0
        during_block.extend(_received(sock))

    async def scenario() -> list[dict[str, str]]:
        task = asyncio.create_task(keep_watchdog(_watchdog_notifier(path), sleep=vt.sleep))
        await vt.settle()
        _received(sock)  # the ping at start
        asyncio.get_running_loop().call_soon(stuck_callback)
        await vt.settle()
        after = _received(sock)
        await vt.advance(0)  # the loop turns again: the overdue ping goes out
        after += _received(sock)
        task.cancel()
        return after

    after = asyncio.run(scenario())
    assert during_block == []
    assert after == [{"WATCHDOG": "1"}]


def test_no_watchdog_task_work_when_systemd_armed_none(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path}, pid=1)
    asyncio.run(keep_watchdog(notifier))  # returns at once instead of pinging forever
    assert _received(sock) == []


def test_status_lines_follow_the_interval(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    vt = VirtualTime()
    lines = iter(["first", "second"])

    async def scenario() -> list[list[dict[str, str]]]:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": path}, pid=1)
        task = asyncio.create_task(report_status(notifier, lambda: next(lines), every=5.0, sleep=vt.sleep))
        seen = []
        for step in (4.9, 0.1, 5.0):
            await vt.advance(step)
            seen.append(_received(sock))
        task.cancel()
        return seen

    assert asyncio.run(scenario()) == [[], [{"STATUS": "first"}], [{"STATUS": "second"}]]


# --- the status line ---


def test_status_line_gives_totals_first_then_rates_since_the_previous_line() -> None:
    counts = {"in": 0, "kept": 0}
    line = StatusLine(StatusSources(
        spans_in=lambda: counts["in"], spans_kept=lambda: counts["kept"],
        buffered_traces=lambda: 420, buffered_bytes=lambda: 3 * 1024 * 1024 + 100 * 1024,
        queued_bytes={"prometheus": lambda: 12 * 1024 * 1024, "otlp": lambda: 0}))
    assert line.line(100.0) == "spans in 0, kept 0; buffered 420 traces (3.1 MiB); queued prometheus 12.0 MiB, otlp 0 B"
    counts.update({"in": 6_000, "kept": 650})
    assert line.line(105.0).startswith("spans in 1.2k/s, kept 130/s;")


def test_status_line_without_a_trace_pipeline_says_traces_are_off() -> None:
    line = StatusLine(StatusSources(None, None, None, None, {"prometheus": lambda: 2048}))
    assert line.line(1.0) == "traces off; queued prometheus 2.0 KiB"
