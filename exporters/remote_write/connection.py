"""The per-endpoint link of the sending chain (docs/architecture.md, "the sending chain", link 4): which wire
format this endpoint speaks, the encoder that holds this endpoint's state (the compact dictionary), and what each answer
means for the batch in hand.

Negotiation (`protocol: auto`) tries the best format first and falls back, resending the same batch in the
next format, until a receiver has *counted* a write:
- compact only where a handshake (`GET <url>?get_headwater_compact_version=1` answering `1`) shows a
  Headwater gateway; vm only where `GET <url>?get_vm_proto_version=1` answers `1` (VictoriaMetrics >= 1.88);
  rw2 and rw1 always;
- while the format is unconfirmed, 415, any 400 (Prometheus 2.42 answers a zstd body with "snappy: corrupt
  input", which never names zstd, and the spec forbids reading the message), and — for rw2 and compact — a
  2xx without `X-Prometheus-Remote-Write-Samples-Written` (a 1.x receiver answers 204 to an rw2 body and
  stores nothing; the rw2 spec says to treat that as 415) all mean: next format, same batch;
- once confirmed, a 400 drops only that batch; a 415 (or an rw2 2xx without the headers) still falls back,
  since the receiver behind the URL changed.
The result is kept for `reprobe_interval` and then probed again from the best format; a restart probes
afresh. A compact receiver that lost our session answers 409: the encoder starts a new epoch and the batch
is resent with its definitions.

Errors leave as the types the sender above decides retries by (`exporters.errors`): `NetworkError` when no
answer came, `ThrottledError` for 429 and 503, `RetryableError` for every other 5xx (the remote-write spec),
`Duplicate` for a 400 saying the samples are there already, `PermanentError` for other 4xx. This link never
waits or retries on its own, except for the immediate resends above, which lose nothing and are bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from exporters.errors import Duplicate, NetworkError, PermanentError, RetryableError, ThrottledError
from exporters.remote_write.encoding import Encoded, Encoder
from exporters.remote_write.series import SampleBatch
from exporters.remote_write.transport import HttpRequest, HttpResponse, Transport, TransportError
from exporters.retry import parse_retry_after

logger = logging.getLogger("headwater.exporters.remote_write")

COMPACT_HANDSHAKE = "get_headwater_compact_version=1"
VM_HANDSHAKE = "get_vm_proto_version=1"
SAMPLES_WRITTEN = "X-Prometheus-Remote-Write-Samples-Written"
_SELF_COUNTING = frozenset({"rw2", "compact"})  # formats whose receivers must say what they wrote
_MAX_RESENDS = 6  # fallbacks plus session restarts for one batch: each is a different request, never a loop
THREAD_SAMPLES = 20_000
"""Requests with more items than this (samples, histograms, exemplars) are encoded in a thread, smaller ones on
the event loop. Encoding is Python code holding the GIL, so a thread spares the loop little of it (the loop gets
the GIL back once per switch interval, 5 ms): only compression releases it. The hop itself costs CPU on both
sides (the worker's wake-up, the future's callbacks, the loop's self-pipe): ~0.1 ms in a tight loop, more in an
agent whose caches are cold between requests, per request and per sender, node and gateway. At the default
`max_samples` (10,000) an encode takes ~2-5 ms."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """What the receiver said it wrote (from the Written headers), or what was sent where it says nothing."""

    protocol: str
    samples: int
    histograms: int
    exemplars: int
    body_bytes: int


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


class Connection:
    """One remote-write endpoint as the sender sees it.

        connection = Connection("prometheus", url, transport, protocols=("rw2", "rw1"), new_encoder=factory)
        delivered = await connection.send(batch)   # raises PermanentError / RetryableError / ThrottledError

    `protocols` is the preference list (one entry for a fixed protocol); `handshakes` says which of them
    need a handshake first (`{"compact": query, "vm": query}`). `new_encoder(protocol)` builds the encoder
    for a format, once per negotiation. `on_protocol(protocol)` is told whenever the format in use changes
    (the exporter's gauge); `on_attempt(protocol, status)` of every POST, status `error` when no answer
    came; `on_sent(protocol, body_bytes)` of every delivered request. Sends may overlap once the format is
    confirmed, except for compact, whose session allows one request in flight (the sender asks).
    """

    def __init__(
        self,
        name: str,
        url: str,
        transport: Transport,
        *,
        protocols: Sequence[str],
        new_encoder: Callable[[str], Encoder],
        handshakes: Mapping[str, str] | None = None,
        reprobe_interval: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        on_protocol: Callable[[str | None], None] | None = None,
        on_attempt: Callable[[str, str], None] | None = None,
        on_sent: Callable[[str, int], None] | None = None,
        encode_in_thread: bool = True,
    ) -> None:
        if not protocols:
            raise ValueError("protocols must name at least one wire format")
        self.name = name
        self.url = url
        self._transport = transport
        self._protocols = tuple(protocols)
        self._new_encoder = new_encoder
        self._handshakes = dict(handshakes or {})
        self._reprobe_interval = reprobe_interval
        self._clock = clock
        self._on_protocol = on_protocol
        self._on_attempt = on_attempt
        self._on_sent = on_sent
        self._encode_in_thread = encode_in_thread
        # Encoders keep per-connection caches that are not thread-safe, and encoding holds the GIL anyway:
        # concurrent sends encode one at a time and overlap only on the network.
        self._encoding = asyncio.Lock()
        self._candidates: list[str] = []
        self._encoder: Encoder | None = None
        self._confirmed_at: float | None = None

    @property
    def protocol(self) -> str | None:
        """The format in use: confirmed, or being tried; None before the first send."""
        return self._encoder.protocol if self._encoder is not None else None

    @property
    def confirmed(self) -> bool:
        return self._confirmed_at is not None

    async def send(self, batch: SampleBatch) -> Delivered:
        await self._maybe_reprobe()
        if self._encoder is None:
            await self._negotiate()
        for _ in range(_MAX_RESENDS):
            encoder = self._encoder
            assert encoder is not None
            async with self._encoding:
                encoded = await self._encode(encoder, batch)
            try:
                response = await self._transport.send(
                    HttpRequest("POST", self.url, {**encoded.headers, "Content-Length": str(len(encoded.body))},
                                encoded.body)
                )
            except TransportError as exc:
                self._attempted(encoder.protocol, "error")
                raise NetworkError(str(exc)) from exc
            self._attempted(encoder.protocol, str(response.status))
            outcome = self._judge(encoder, encoded, response)
            if outcome is not None:
                if self._on_sent is not None:
                    self._on_sent(outcome.protocol, outcome.body_bytes)
                return outcome
        raise RetryableError(f"remote write {self.name}: no format settled after {_MAX_RESENDS} attempts")

    async def close(self) -> None:
        await self._transport.close()

    def _attempted(self, protocol: str, status: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(protocol, status)

    # -- what an answer means ---------------------------------------------------------------------------

    def _judge(self, encoder: Encoder, encoded: Encoded, response: HttpResponse) -> Delivered | None:
        """Delivered, None for "resend this batch as the encoder now stands", or raise the error's type."""
        status = response.status
        protocol = encoder.protocol
        if 200 <= status < 300:
            written = response.header(SAMPLES_WRITTEN)
            if protocol in _SELF_COUNTING and written is None:
                self._fall_back(f"HTTP {status} without {SAMPLES_WRITTEN}: the receiver did not store {protocol}")
                return None
            if encoded.commit is not None:
                encoded.commit()
            if self._confirmed_at is None:
                self._confirmed_at = self._clock()
                logger.info("remote write %s: receiver accepts %s", self.name, protocol)
            return Delivered(
                protocol,
                _int_header(response, SAMPLES_WRITTEN, encoded.samples),
                _int_header(response, "X-Prometheus-Remote-Write-Histograms-Written", encoded.histograms),
                _int_header(response, "X-Prometheus-Remote-Write-Exemplars-Written", encoded.exemplars),
                len(encoded.body),
            )
        detail = f"HTTP {status}: {response.text.strip()[:512]}" if response.body.strip() else f"HTTP {status}"
        if status == 409 and protocol == "compact" and _session_lost(response):
            logger.info("remote write %s: the receiver lost our compact session; starting a new one", self.name)
            encoder.reset()
            return None
        if status == 415 or (status == 400 and self._confirmed_at is None and len(self._candidates) > 1):
            self._fall_back(detail)
            return None
        if status in (429, 503):
            raise ThrottledError(detail, parse_retry_after(response.header("Retry-After")))
        if status >= 500 or status == 408:
            raise RetryableError(detail)  # the remote-write spec: retry every 5xx
        if status == 400 and _already_stored(response):
            raise Duplicate(detail)
        raise PermanentError(detail)

    def _fall_back(self, reason: str) -> None:
        assert self._encoder is not None
        failed = self._encoder.protocol
        if failed in self._candidates:
            self._candidates.remove(failed)
        if not self._candidates:
            self._set_encoder(None)
            raise PermanentError(f"the receiver accepts none of {', '.join(self._protocols)} (last: {reason})")
        logger.warning("remote write %s: %s refused (%s); trying %s", self.name, failed, reason, self._candidates[0])
        self._confirmed_at = None
        self._set_encoder(self._candidates[0])

    # -- negotiation -------------------------------------------------------------------------------------

    async def _negotiate(self) -> None:
        candidates = []
        for protocol in self._protocols:
            query = self._handshakes.get(protocol)
            if query is None or len(self._protocols) == 1 or await self._handshake(query):
                candidates.append(protocol)
        if not candidates:
            raise PermanentError(f"no handshake succeeded for any of {', '.join(self._protocols)}")
        self._candidates = candidates
        self._confirmed_at = None
        self._set_encoder(candidates[0])

    async def _handshake(self, query: str) -> bool:
        try:
            response = await self._transport.send(HttpRequest("GET", with_query(self.url, query)))
        except TransportError as exc:
            raise NetworkError(f"handshake: {exc}") from exc
        return 200 <= response.status < 300 and response.body.strip() == b"1"

    async def _maybe_reprobe(self) -> None:
        if (
            self._confirmed_at is not None
            and self._encoder is not None
            and self._encoder.protocol != self._protocols[0]
            and self._clock() - self._confirmed_at >= self._reprobe_interval
        ):
            logger.info("remote write %s: probing again for a better format than %s", self.name, self.protocol)
            self._set_encoder(None)
            self._confirmed_at = None

    def _set_encoder(self, protocol: str | None) -> None:
        before = self.protocol
        self._encoder = self._new_encoder(protocol) if protocol is not None else None
        if self._on_protocol is not None and protocol != before:
            self._on_protocol(protocol)

    async def _encode(self, encoder: Encoder, batch: SampleBatch) -> Encoded:
        items = len(batch.values) + len(batch.histograms) + len(batch.exemplars)
        if self._encode_in_thread and items > THREAD_SAMPLES:
            return await asyncio.to_thread(encoder.encode, batch)
        return encoder.encode(batch)


def _int_header(response: HttpResponse, name: str, default: int) -> int:
    value = response.header(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


_STORED_MARKERS = (b"duplicate sample for timestamp", b"out of order sample")


def _already_stored(response: HttpResponse) -> bool:
    """Whether a 400 says the receiver holds samples at these timestamps already. Prometheus (2.x and 3.x)
    rolls the whole request back on its first such sample and says so only in the message, so the message
    is all there is to go by."""
    body = response.body[:4096].lower()
    return any(marker in body for marker in _STORED_MARKERS)


def _session_lost(response: HttpResponse) -> bool:
    return response.body.lstrip().lower().startswith(b"compact session lost")
