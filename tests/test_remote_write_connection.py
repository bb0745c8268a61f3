"""The connection link: which format an endpoint gets, and what each answer means for the batch in hand.

A fake transport (a function of the request) and fake encoders at the encoder seam: no network, no real
format, so each test reads as the rule it checks. Real receivers are in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from exporters.errors import PermanentError, RetryableError, ThrottledError
from exporters.remote_write.connection import Connection
from exporters.remote_write.encoding import Encoded
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.transport import FunctionTransport, HttpRequest, HttpResponse, TransportError

WRITTEN = {"X-Prometheus-Remote-Write-Samples-Written": "1"}


class FakeEncoder:
    """Writes `<protocol>:<epoch>` as the body; counts commits and resets."""

    def __init__(self, protocol: str, log: list[str]) -> None:
        self.protocol = protocol
        self.epoch = 0
        self.log = log

    def encode(self, batch: SampleBatch) -> Encoded:
        return Encoded(f"{self.protocol}:{self.epoch}".encode(), {"X-Format": self.protocol}, len(batch.values),
                       commit=lambda: self.log.append(f"commit {self.protocol}:{self.epoch}"))

    def reset(self) -> None:
        self.epoch += 1
        self.log.append(f"reset {self.protocol}")


class Peer:
    """Answers each POST by `answer(format)`; GET handshakes by `handshakes`; records every request."""

    def __init__(self, answer: Callable[[str], HttpResponse], handshakes: dict[str, bytes] | None = None) -> None:
        self.answer = answer
        self.handshakes = handshakes or {}
        self.posts: list[str] = []
        self.gets: list[str] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET":
            self.gets.append(request.url)
            for query, body in self.handshakes.items():
                if query in request.url:
                    return HttpResponse(200, {}, body)
            return HttpResponse(405, {}, b"method not allowed")
        self.posts.append(request.body.decode())
        return self.answer(request.headers["X-Format"])


def connect(peer: Peer, protocols: tuple[str, ...] = ("compact", "rw2", "vm", "rw1"), **options: object
            ) -> tuple[Connection, list[str], list[str | None]]:
    log: list[str] = []
    changes: list[str | None] = []
    connection = Connection(
        "test", "http://receiver/api/v1/write", FunctionTransport(peer), protocols=protocols,
        new_encoder=lambda p: FakeEncoder(p, log),
        handshakes={"compact": "get_headwater_compact_version=1", "vm": "get_vm_proto_version=1"},
        on_protocol=changes.append, encode_in_thread=False, **options,  # type: ignore[arg-type]
    )
    return connection, log, changes


def batch() -> SampleBatch:
    return SampleBatch(labels=[(("__name__", "up"),)], values=[1.0], timestamps=[1000], sizes=[30])


def send(connection: Connection) -> object:
    return asyncio.run(connection.send(batch()))


def prometheus_2_42(fmt: str) -> HttpResponse:
    """Stores rw1; answers 204 to an rw2 body and stores nothing; refuses other bodies as corrupt snappy."""
    if fmt in ("rw1", "rw2"):
        return HttpResponse(204)
    return HttpResponse(400, {}, b"snappy: corrupt input")


def test_a_receiver_without_handshakes_is_tried_with_rw2_first_and_settles_on_rw1_when_rw2_is_not_counted() -> None:
    peer = Peer(prometheus_2_42)
    connection, log, _ = connect(peer)
    delivered = send(connection)
    assert peer.posts == ["rw2:0", "rw1:0"]  # the same batch, resent in the next format
    assert delivered.protocol == "rw1" and connection.confirmed
    assert log == ["commit rw1:0"]


def test_a_headwater_gateway_found_by_its_handshake_gets_compact() -> None:
    peer = Peer(lambda fmt: HttpResponse(204, WRITTEN), {"get_headwater_compact_version=1": b"1"})
    connection, _, changes = connect(peer)
    assert send(connection).protocol == "compact"
    assert peer.posts == ["compact:0"]
    assert changes == ["compact"]


def test_a_victoriametrics_that_answers_the_vm_handshake_gets_vm_after_rw2_is_not_counted() -> None:
    peer = Peer(lambda fmt: HttpResponse(204), {"get_vm_proto_version=1": b"1"})
    connection, _, _ = connect(peer)
    assert send(connection).protocol == "vm"
    assert peer.posts == ["rw2:0", "vm:0"]


def test_a_handshake_answer_other_than_1_rules_the_format_out() -> None:
    peer = Peer(prometheus_2_42, {"get_vm_proto_version=1": b"0", "get_headwater_compact_version=1": b"2"})
    connection, _, _ = connect(peer)
    assert send(connection).protocol == "rw1"
    assert peer.posts == ["rw2:0", "rw1:0"]


def test_a_400_while_the_format_is_unconfirmed_falls_back_and_resends_the_batch() -> None:
    peer = Peer(lambda fmt: HttpResponse(400, {}, b"snappy: corrupt input") if fmt == "vm" else HttpResponse(204),
                {"get_vm_proto_version=1": b"1"})
    connection, _, _ = connect(peer, protocols=("vm", "rw1"))
    assert send(connection).protocol == "rw1"
    assert peer.posts == ["vm:0", "rw1:0"]


def test_a_400_once_the_format_is_confirmed_drops_only_that_batch() -> None:
    peer = Peer(lambda fmt: HttpResponse(204, WRITTEN))
    connection, _, _ = connect(peer, protocols=("rw2", "rw1"))
    send(connection)
    peer.answer = lambda fmt: HttpResponse(400, {}, b"out of order sample")
    with pytest.raises(PermanentError, match="out of order"):
        send(connection)
    assert connection.protocol == "rw2" and connection.confirmed


def test_a_415_after_confirmation_falls_back_because_the_receiver_behind_the_url_changed() -> None:
    peer = Peer(lambda fmt: HttpResponse(204, WRITTEN))
    connection, _, _ = connect(peer, protocols=("rw2", "rw1"))
    send(connection)
    peer.answer = lambda fmt: HttpResponse(415, {}, b"unsupported") if fmt == "rw2" else HttpResponse(204)
    assert send(connection).protocol == "rw1"
    assert peer.posts == ["rw2:0", "rw2:0", "rw1:0"]


def test_a_receiver_that_refuses_every_format_makes_the_batch_a_permanent_failure() -> None:
    peer = Peer(lambda fmt: HttpResponse(415, {}, b"no"))
    connection, _, _ = connect(peer, protocols=("rw2", "rw1"))
    with pytest.raises(PermanentError, match="accepts none of rw2, rw1"):
        send(connection)


def test_a_compact_receiver_that_lost_the_session_gets_a_new_epoch_and_the_same_batch() -> None:
    answers = iter([HttpResponse(409, {}, b"compact session lost: unknown sender"), HttpResponse(204, WRITTEN)])
    peer = Peer(lambda fmt: next(answers), {"get_headwater_compact_version=1": b"1"})
    connection, log, _ = connect(peer, protocols=("compact", "rw1"))
    assert send(connection).protocol == "compact"
    assert peer.posts == ["compact:0", "compact:1"]
    assert log == ["reset compact", "commit compact:1"]


def test_state_moves_on_only_when_the_receiver_counted_the_write() -> None:
    peer = Peer(lambda fmt: HttpResponse(503, {}, b"busy"), {"get_headwater_compact_version=1": b"1"})
    connection, log, _ = connect(peer, protocols=("compact", "rw1"))
    with pytest.raises(RetryableError):
        send(connection)
    assert log == []


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 505, 507])
def test_every_5xx_is_retryable_as_the_remote_write_spec_says(status: int) -> None:
    connection, _, _ = connect(Peer(lambda fmt: HttpResponse(status)), protocols=("rw1",))
    with pytest.raises(RetryableError):
        send(connection)


def test_a_429_is_throttled_with_the_receivers_retry_after() -> None:
    connection, _, _ = connect(Peer(lambda fmt: HttpResponse(429, {"Retry-After": "7"})), protocols=("rw1",))
    with pytest.raises(ThrottledError) as caught:
        send(connection)
    assert caught.value.retry_after == 7.0


def test_no_answer_is_retryable() -> None:
    async def unreachable(request: HttpRequest) -> HttpResponse:
        raise TransportError("connection refused")

    connection = Connection("test", "http://x/api/v1/write", FunctionTransport(unreachable), protocols=("rw1",),
                            new_encoder=lambda p: FakeEncoder(p, []), encode_in_thread=False)
    with pytest.raises(RetryableError, match="connection refused"):
        send(connection)


def test_a_fallback_format_is_probed_again_from_the_best_after_the_reprobe_interval() -> None:
    now = [0.0]
    peer = Peer(prometheus_2_42)
    connection, _, _ = connect(peer, protocols=("rw2", "rw1"), reprobe_interval=3600.0, clock=lambda: now[0])
    send(connection)
    now[0] += 3599.0
    send(connection)
    assert peer.posts == ["rw2:0", "rw1:0", "rw1:0"]
    now[0] += 1.0
    assert send(connection).protocol == "rw1"
    assert peer.posts[3:] == ["rw2:0", "rw1:0"]


def test_the_written_headers_are_what_the_delivery_reports() -> None:
    headers = {"X-Prometheus-Remote-Write-Samples-Written": "5", "X-Prometheus-Remote-Write-Histograms-Written": "2",
               "X-Prometheus-Remote-Write-Exemplars-Written": "1"}
    connection, _, _ = connect(Peer(lambda fmt: HttpResponse(204, headers)), protocols=("rw2",))
    delivered = send(connection)
    assert (delivered.samples, delivered.histograms, delivered.exemplars) == (5, 2, 1)
