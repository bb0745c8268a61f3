"""Connection management of the aiohttp receivers (OTLP/HTTP and the gateway's remote write), with raw sockets:
slow and idle clients are cut off at their timeouts and do not delay others; past max_connections a client
is answered 503 with Retry-After, not reset."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from agent.receivers.http_connections import HttpConnectionSettings
from tests.raw_http import (RECEIVERS, closed_by_peer, ensure_file_descriptors, read_response, serving, trickle)

PATIENT = dict(read_header_timeout=30.0, read_timeout=30.0, idle_timeout=30.0)
BOUND = 5.0  # seconds: generous, for a loaded CI machine; the timeouts under test are far below


def normal_request_answered(served, within: float = BOUND) -> float:
    """Send the receiver's normal request on a new connection; the seconds until its answer came."""
    start = time.monotonic()
    with served.connect() as sock:
        sock.settimeout(within)
        sock.sendall(served.normal_request)
        response = read_response(sock)
    assert response.status == served.normal_status, response
    return time.monotonic() - start


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_client_trickling_its_request_head_is_cut_off_at_read_header_timeout(kind: str) -> None:
    settings = HttpConnectionSettings(read_header_timeout=0.5, read_timeout=30.0, idle_timeout=30.0)
    head = b"POST /v1/traces HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 4000
    with serving(kind, settings) as served, served.connect() as sock:
        took = trickle(sock, head, interval=0.02)
        assert took is not None, "the server read a head for 80 s without closing the connection"
        assert 0.5 <= took < 0.5 + BOUND


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_client_trickling_its_body_is_answered_408_at_read_timeout_and_closed(kind: str) -> None:
    settings = HttpConnectionSettings(read_header_timeout=30.0, read_timeout=0.5, idle_timeout=30.0)
    with serving(kind, settings) as served, served.connect() as sock:
        head, _, body = served.normal_request.partition(b"\r\n\r\n")
        head = head.replace(b"Content-Length: %d" % len(body), b"Content-Length: 100000")
        sock.sendall(head + b"\r\n\r\n")
        start = time.monotonic()
        sock.settimeout(BOUND)
        answered = threading.Event()
        statuses: list[int] = []

        def read() -> None:
            try:
                statuses.append(read_response(sock).status)
            finally:
                answered.set()

        reader = threading.Thread(target=read)
        reader.start()
        while not answered.is_set() and time.monotonic() - start < BOUND:
            try:
                sock.sendall(b"x")
            except OSError:
                break
            answered.wait(0.02)
        reader.join(BOUND)
        took = time.monotonic() - start
        assert statuses == [408]
        assert 0.5 <= took < 0.5 + BOUND
        assert closed_by_peer(sock, within=BOUND)


@pytest.mark.parametrize("kind", RECEIVERS)
def test_an_idle_connection_is_closed_after_idle_timeout(kind: str) -> None:
    settings = HttpConnectionSettings(read_header_timeout=30.0, read_timeout=30.0, idle_timeout=0.5)
    with serving(kind, settings) as served, served.connect() as sock:
        start = time.monotonic()
        assert closed_by_peer(sock, within=0.5 + BOUND)
        assert time.monotonic() - start >= 0.5


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_kept_alive_connection_is_closed_after_idle_timeout_once_answered(kind: str) -> None:
    settings = HttpConnectionSettings(read_header_timeout=30.0, read_timeout=30.0, idle_timeout=0.5)
    with serving(kind, settings) as served, served.connect() as sock:
        sock.sendall(served.normal_request)
        assert read_response(sock).status == served.normal_status
        answered = time.monotonic()
        assert closed_by_peer(sock, within=0.5 + BOUND)
        assert time.monotonic() - answered >= 0.4  # timer granularity


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_kept_alive_connection_serves_request_after_request(kind: str) -> None:
    settings = HttpConnectionSettings(read_header_timeout=1.0, read_timeout=1.0, idle_timeout=1.0)
    with serving(kind, settings) as served, served.connect() as sock:
        for _ in range(3):
            sock.sendall(served.normal_request)
            assert read_response(sock).status == served.normal_status
        sock.sendall(served.normal_request * 2)  # pipelined
        assert [read_response(sock).status for _ in range(2)] == [served.normal_status] * 2


@pytest.mark.parametrize("kind", RECEIVERS)
def test_past_max_connections_a_new_client_gets_503_with_retry_after_and_no_reset(kind: str) -> None:
    settings = HttpConnectionSettings(**PATIENT, max_connections=3, retry_after=7.0)
    with serving(kind, settings) as served:
        held = [served.connect() for _ in range(3)]
        try:
            for sock in held:  # each one served: answered and kept alive, so it counts
                sock.sendall(served.normal_request)
                assert read_response(sock).status == served.normal_status
            with served.connect() as extra:
                extra.sendall(served.normal_request)
                response = read_response(extra)  # a reset raises here
                assert response.status == 503
                assert response.headers["retry-after"] == "7"
                assert b"max_connections" in response.body
                assert closed_by_peer(extra, within=BOUND)
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_connection_closed_below_max_connections_makes_room_for_a_new_client(kind: str) -> None:
    settings = HttpConnectionSettings(**PATIENT, max_connections=1)
    with serving(kind, settings) as served:
        first = served.connect()
        first.sendall(served.normal_request)
        assert read_response(first).status == served.normal_status
        first.close()
        deadline = time.monotonic() + BOUND
        while True:  # the server learns of the close a moment later
            with served.connect() as sock:
                sock.settimeout(BOUND)
                sock.sendall(served.normal_request)
                status = read_response(sock).status
            if status != 503 or time.monotonic() > deadline:
                break
        assert status == served.normal_status


@pytest.mark.parametrize("kind", RECEIVERS)
def test_a_trickler_and_a_thousand_idle_connections_do_not_delay_a_normal_request(kind: str) -> None:
    ensure_file_descriptors(2 * 1000 + 500)  # both ends of each idle connection, plus the test's own
    settings = HttpConnectionSettings(**PATIENT, max_connections=2000)
    with serving(kind, settings) as served:
        idle: list[socket.socket] = []
        trickler = served.connect()
        stop = threading.Event()

        def trickle_head() -> None:
            try:
                trickler.sendall(b"POST /v1/traces HTTP/1.1\r\n")
                while not stop.is_set():
                    trickler.sendall(b"a")
                    stop.wait(0.05)
            except OSError:
                pass

        sender = threading.Thread(target=trickle_head)
        sender.start()
        try:
            for _ in range(1000):
                idle.append(served.connect())
            half = served.normal_request[: len(served.normal_request) // 2]
            for sock in idle[:100]:  # some of them stuck half way through a request
                sock.sendall(half)
            took = normal_request_answered(served)
            assert took < 2.0
            still_open = [s for s in idle[::100] if not closed_by_peer(s, within=0.0)]
            assert len(still_open) == 10  # nobody was dropped to make room
        finally:
            stop.set()
            sender.join(BOUND)
            trickler.close()
            for sock in idle:
                sock.close()
